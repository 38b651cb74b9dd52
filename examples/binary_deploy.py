"""Train with real weights, convert to binary (Bernoulli) weights, fine-tune, and deploy bit-packed.

Run:  python examples/binary_deploy.py [--tiny] [--out model.npz]

The conversion recipe of the user guide (docs/guide/binary.md): a real-weight, batch-normalized MLP
is trained first, ``to_bernoulli`` turns every weight into a binary one with latent ``eta = 3 W / std(W)``,
training continues on ``eta``, and ``PackedNetwork.from_network`` folds batch norm into integer
thresholds of an XNOR-popcount network whose predictions equal the deterministic sign network's.
"""
import argparse

import numpy as np

import sbnnumba as sb
from sbnnumba import architectures, datasets, training


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="400 images, 1 + 1 epochs (for tests)")
    parser.add_argument("--out", default="model.npz", help="where the packed network is saved")
    args = parser.parse_args(argv)
    n, epochs, hidden = (400, 1, (64, 64)) if args.tiny else (None, 3, (512, 512))

    data = datasets.load_fashion_mnist(verbose=False)
    train = (data.x_train[:n], data.y_train[:n])
    net = architectures.build("mlp", (1, 28, 28), 10, rng=1, hidden=hidden, normalize=True)
    training.fit(net, train, estimator="st", epochs=epochs, lr=1e-2, progress=False)
    net.to_bernoulli("bernoulli", scale=3.0)
    training.fit(net, train, estimator="st", epochs=epochs, lr=1e-2, data_init=False, progress=False)
    net.recalibrate_normalization(datasets.normalize(data.x_train[:2000]))   # statistics of the sign network

    packed = sb.PackedNetwork.from_network(net, input_quantization=(1 / 255, 8))  # pixels x = q / 255
    packed.save(args.out)
    packed = sb.PackedNetwork.load(args.out)
    x_test = datasets.normalize(data.x_test[:n])
    pred = packed.predict(x_test)
    agree = np.mean(pred == net.predict(x_test, mode="deterministic"))
    print(f"packed network saved to {args.out}; test accuracy {np.mean(pred == data.y_test[:n]):.3f}, "
          f"agreement with the float sign network {agree:.4f}")
    packed.size_report(print_fn=print)
    return agree


if __name__ == "__main__":
    main()
