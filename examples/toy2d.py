"""Train the 2-5-5-5 SBN of the PSA paper on its 2-D toy data with PSA and plot the decision boundary.

Run:  python examples/toy2d.py [--epochs 300] [--out toy2d.png] [--tiny]

The network has three stochastic binary layers of 5 logistic units and a 1-logit head (logistic
loss). Training uses the PSA estimator and Adam; the figure shows the ensemble probability of
class +1 over the plane with the training points.
"""
import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import sbnnumba as sb  # noqa: E402
from sbnnumba.datasets import iterate_minibatches, toy2d  # noqa: E402
from sbnnumba.optim import Adam  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--estimator", default="psa")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="toy2d.png")
    parser.add_argument("--tiny", action="store_true", help="3 epochs (for tests)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs = 3

    rng = np.random.default_rng(args.seed)
    x_train, y_train = toy2d(200, rng=rng)
    x_test, y_test = toy2d(1000, rng=rng)
    net = sb.Network.dense([2, 5, 5, 5], 1, rng=rng, dtype=np.float64)
    net.initialize_from_data(x_train)
    opt = Adam(lr=0.01)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for xb, yb in iterate_minibatches(x_train, y_train, 10, rng=rng):
            _, grads = sb.estimate(args.estimator, net, xb, yb, rng=rng)
            opt.update(net.params, grads)
        if epoch % max(1, args.epochs // 5) == 0:
            loss, _ = sb.estimate("exact", net, x_train, y_train)
            print(f"epoch {epoch:4d}  exact expected training loss {loss:.4f}")
    elapsed = time.perf_counter() - start

    acc = {name: (net.predict(x, samples=20, rng=rng) == y).mean()
           for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test))}
    print(f"{args.estimator}: {args.epochs} epochs in {elapsed:.1f} s; 20-sample ensemble accuracy "
          f"train {acc['train']:.3f}, test {acc['test']:.3f}")

    g1, g2 = np.meshgrid(np.linspace(-1.8, 1.8, 120), np.linspace(-1.2, 1.2, 80))
    grid = np.stack([g1.ravel(), g2.ravel()], axis=1)
    prob = net.predict_proba(grid, samples=50, rng=rng)[:, 1].reshape(g1.shape)
    fig, ax = plt.subplots(figsize=(6, 4))
    cs = ax.contourf(g1, g2, prob, levels=20, cmap="RdBu_r", vmin=0, vmax=1)
    fig.colorbar(cs, ax=ax, label="P(class +1)")
    ax.scatter(*x_train[y_train == 1].T, s=10, c="darkred", label="+1")
    ax.scatter(*x_train[y_train == 0].T, s=10, c="navy", label="-1")
    ax.set_title(f"2-5-5-5 SBN, {args.estimator}: test accuracy {acc['test']:.3f}")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"decision boundary saved to {args.out}")
    return acc


if __name__ == "__main__":
    main()
