"""Train a stochastic binary MLP on Fashion-MNIST from Python and evaluate it in the three modes.

Run:  python examples/train_mlp.py [--tiny]      (--tiny: 600 images, 1 epoch, a few seconds)
"""
import argparse

import sbnnumba  # noqa: F401  (first: its thread settings must precede NumPy's BLAS)
from sbnnumba import architectures, datasets, training

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="a few hundred images and one epoch (for tests)")
args = parser.parse_args()

data = datasets.load_fashion_mnist(verbose=False)          # the full data if installed, else the embedded subset
n, epochs, hidden = (600, 1, (64, 64)) if args.tiny else (len(data.x_train), 3, (256, 256))
net = architectures.build("mlp", (1, 28, 28), 10, rng=1, hidden=hidden)
training.fit(net, (data.x_train[:n], data.y_train[:n]), estimator="psa", epochs=epochs, lr=1e-3, progress=False)

m = training.evaluate(net, data.x_test[:n], data.y_test[:n], samples=10, rng=0)
print(f"test accuracy: 1 sample {m['acc1']:.3f}, ensemble of 10 {m['eacc']:.3f}, deterministic {m['det_acc']:.3f}")
