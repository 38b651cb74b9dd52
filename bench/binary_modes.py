"""Where the randomness of a trained binary-weight SBN lives, and what the deterministic network loses.

For a checkpoint with Bernoulli weights (e.g. a ``bench/binary_weights.py`` run) this prints, on the
test images:

1. per stage: the weight entropy ``H(F(eta))`` in bits (mean over the weights), the share of
   weights that are (near-)deterministic (entropy below 0.01 bit), and the mean entropy of the
   binary activations of one sampled pass (:func:`sbnnumba.training.unit_entropy`);
2. accuracy in four modes, each an ensemble of ``--samples`` passes averaging the softmax (the first
   also as a single sample), with the normalization statistics re-estimated for each mode over
   ``--calibration`` training images:

   * ``stochastic``: weights and activations sampled (the SBN's own mode);
   * ``weights sign(eta)``: weights at their mode, activations sampled;
   * ``activations sign(a)``: weights sampled, activations at zero noise;
   * ``deterministic``: both at their mode (one pass; spec st.md section 6).

The two middle modes split the ensemble-to-deterministic gap between the two sources of noise.
A weight at its mode is a sample with ``u = 1/2`` (``sign(eta - F^-1(1/2)) = sign(eta)``).

Usage: python bench/binary_modes.py CHECKPOINT [--samples 10] [--calibration 2000] [--n 10000]
"""
import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info  # noqa: E402

from sbnnumba import datasets, losses, runtime, training  # noqa: E402

MODES = ("stochastic", "weights sign(eta)", "activations sign(a)", "deterministic")
NEAR_DETERMINISTIC_BITS = 0.01


def mode_pass(net, x, mode, rng):
    """Logits of one pass of ``net`` on ``x`` in ``mode`` (weights/activations sampled or at their mode)."""
    half = None if mode in ("stochastic", "activations sign(a)") else {
        prefix: np.full(layer.latent.eta.shape, 0.5, dtype=layer.latent.eta.dtype)
        for prefix, layer in net.latent_layers()}
    h = x
    for layer in net.stage_layers(net.sample_weights(rng, half)):
        a = layer.forward(h)
        if mode in ("stochastic", "weights sign(eta)"):
            h = net.noise.sample(a, rng.random(a.shape, dtype=a.dtype))
        else:
            h = np.where(a >= 0, 1, -1).astype(a.dtype)  # sign(0) = +1
    return net.head.forward(h)


def recalibrate(net, x, mode, rng, batch_size=250):
    """Normalization statistics of ``mode``, exact averages over ``x``, stored in the 'stochastic' slot
    that evaluation below reads."""
    net.recalibrate_normalization(x, "stochastic", batch_size, forward=lambda xb: mode_pass(net, xb, mode, rng))
    net.eval("stochastic")


def mode_accuracy(net, x, y, mode, samples, rng, batch_size=500):
    """(ensemble accuracy, mean single-pass accuracy) of ``mode`` over ``samples`` passes."""
    passes = 1 if mode == "deterministic" else samples
    correct_e = correct_1 = 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        acc = 0.0
        for _ in range(passes):
            probs = losses.probabilities(mode_pass(net, xb, mode, rng)).astype(np.float64)
            correct_1 += int(np.sum(np.argmax(probs, axis=1) == yb))
            acc = acc + probs
        correct_e += int(np.sum(np.argmax(acc, axis=1) == yb))
    return correct_e / x.shape[0], correct_1 / (x.shape[0] * passes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--samples", type=int, default=10, help="passes per ensemble")
    p.add_argument("--calibration", type=int, default=2000, help="training images for the statistics of each mode")
    p.add_argument("--n", type=int, default=10000, help="test images scored")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.samples < 1 or args.calibration < 1 or args.n < 1:
        p.error("--samples, --calibration, --n: expected positive integers")
    runtime.retain_freed_memory()  # reuse the pages of freed temporaries (sbnnumba/runtime.py)
    machine_info()
    ds = datasets.load_fashion_mnist()
    x_cal = datasets.normalize(ds.x_train[np.random.default_rng(args.seed).permutation(ds.y_train.shape[0])
                                          [:args.calibration]])
    x, y = datasets.normalize(ds.x_test[:args.n]), ds.y_test[:args.n]
    net = training.load_network(args.checkpoint)
    if not net.latent_layers():
        p.error(f"checkpoint: {args.checkpoint} has no Bernoulli weights")
    rng = np.random.default_rng(args.seed)

    print(f"\n1) randomness per stage (test images: {args.n}, one sampled pass for the activations)")
    m = training.evaluate(net, x, y, samples=1, rng=rng, deterministic=False, entropy=True)
    latent = dict(net.latent_layers())
    print("   stage   weights   H(w) bits   near-deterministic (< 0.01 bit)   H(x) bits")
    for k, h_x in enumerate(m["entropy_stages"]):
        layer = latent.get(f"stages.{k}")
        if layer is None:
            print(f"   {k:5d}   real                                                     {h_x:8.3f}")
            continue
        h_w = training.unit_entropy(layer.latent.eta, layer.latent.noise)
        print(f"   {k:5d}   {h_w.size:7d}   {float(h_w.mean()):9.3f}   "
              f"{100 * float(np.mean(h_w < NEAR_DETERMINISTIC_BITS)):30.1f} %   {h_x:8.3f}")

    print(f"\n2) test accuracy by mode (ensembles of {args.samples}, statistics re-estimated per mode "
          f"on {args.calibration} training images)")
    for mode in MODES:
        net = training.load_network(args.checkpoint)  # fresh statistics for every mode
        recalibrate(net, x_cal, mode, rng)
        e, s = mode_accuracy(net, x, y, mode, args.samples, rng)
        single = "" if mode == "deterministic" else f"   single pass {100 * s:6.2f} %"
        print(f"   {mode:22s} ensemble {100 * e:6.2f} %{single}", flush=True)


if __name__ == "__main__":
    main()
