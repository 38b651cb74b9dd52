"""How close is each estimator to the true gradient? The PSA paper's toy study in a few lines.

Run:  python examples/gradient_accuracy.py [--tiny] [--draws 2000]

On the 2-5-5-5 network and the 2-D toy data, the exact gradient of the expected loss is computed by
enumeration (``estimate("exact", ...)``); each estimator is then drawn ``--draws`` times and its
single-sample relative error ``||g_1 - g|| / ||g||`` and bias ``||mean(g_1) - g|| / ||g||`` printed,
over all parameters. PSA has the lowest single-sample error; REINFORCE and ARM are unbiased but
noisy; ST is cheap and biased. The full study (per layer, against the number of samples averaged,
during training): ``python -m sbnnumba gradcheck``.
"""
import argparse

import numpy as np

import sbnnumba as sb


def flat(grads, names):
    return np.concatenate([grads[k].ravel() for k in names])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="50 draws (for tests)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--methods", default="psa,st,reinforce,arm")
    args = parser.parse_args(argv)
    draws = 50 if args.tiny else args.draws

    rng = np.random.default_rng(1)
    x, y = sb.datasets.toy2d(200, rng=rng)
    net = sb.Network.dense([2, 5, 5, 5], 1, rng=rng, dtype=np.float64, backend="reference")
    net.initialize_from_data(x)
    names = sorted(net.params)
    g = flat(sb.estimate("exact", net, x, y)[1], names)
    results = {}
    for method in args.methods.split(","):
        samples = np.stack([flat(sb.estimate(method, net, x, y, rng=rng)[1], names) for _ in range(draws)])
        rmse = np.sqrt(np.mean(np.sum((samples - g) ** 2, axis=1))) / np.linalg.norm(g)
        bias = np.linalg.norm(samples.mean(axis=0) - g) / np.linalg.norm(g)
        results[method] = (rmse, bias)
        print(f"{method:>10}: single-sample relative RMSE {rmse:7.3f}   relative bias (mean of {draws}) {bias:.3f}")
    return results


if __name__ == "__main__":
    main()
