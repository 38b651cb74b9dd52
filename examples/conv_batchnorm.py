"""Train the PSA paper's all-conv SBN with batch normalization, then evaluate the ensemble.

Run:  python examples/conv_batchnorm.py [--tiny] [--width 0.5] [--epochs 3]

The network is ``architectures.build("conv", ...)``: eight stochastic binary 3x3/1x1 conv stages
(``width`` times the paper's 96/192 channels), each normalized before its noise (``normalize=True``,
gamma starting at the noise's std), and a real linear head. The test accuracy of the ensemble grows
with the number of samples averaged; the script prints that curve.
"""
import argparse

import sbnnumba  # noqa: F401  (first: its thread settings must precede NumPy's BLAS)
from sbnnumba import architectures, datasets, training


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="width 1/16, 300 images, 1 epoch (for tests)")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    width, n, epochs = (1 / 16, 300, 1) if args.tiny else (args.width, None, args.epochs)

    data = datasets.load_fashion_mnist(verbose=False)
    x, y = data.x_train[:n], data.y_train[:n]
    net = architectures.build("conv", (1, 28, 28), 10, rng=1, width=width, normalize=True, bn_gamma="noise-std")
    training.fit(net, (x, y), estimator="psa", epochs=epochs, lr=1e-3, progress=not args.tiny)  # minutes at width 0.5

    samples = 4 if args.tiny else 16
    m = training.evaluate(net, data.x_test[:n], data.y_test[:n], samples=samples, rng=0)
    curve = ", ".join(f"{k + 1}: {acc:.3f}" for k, acc in enumerate(m["curve"]))
    print(f"test accuracy of the ensemble by number of samples: {curve}")
    print(f"deterministic (sign) network: {m['det_acc']:.3f}; mean unit entropy {m['entropy']:.3f} bits")
    return m


if __name__ == "__main__":
    main()
