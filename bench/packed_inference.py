"""Benchmark: packed (XNOR-popcount) inference of a binary MLP vs the float deterministic network.

End to end on Fashion-MNIST:

1. a fully binary MLP 784-1024-1024-10 (``weight="hidden"``: real first layer on the real-valued
   pixels, Bernoulli weights in the hidden layer, batch normalization, real head) is trained briefly
   with :func:`sbnnumba.train.fit` (default: 2 epochs of the ST estimator on the 60,000 training
   images, about a minute on 2 cores) or loaded from ``--checkpoint``; its normalization statistics
   are re-estimated for the deterministic mode on 10,000 training images;
2. it is converted with :meth:`sbnnumba.packed.PackedNetwork.from_network`, saved and re-loaded;
3. test accuracy of the float deterministic network (``net.forward_deterministic``) and of the
   packed network on the 10,000 test images: the predictions must be identical for every image
   (the script exits with status 1 otherwise);
4. images/s, interleaved in the same run (medians, ``bench.common.interleaved_medians``), at batch
   sizes 256 and 10,000 (the whole test set) of

   * ``packed``: ``PackedNetwork.predict_logits``;
   * ``float det``: ``net.forward_deterministic`` (float32 OpenBLAS; recomputes ``sign(eta)`` on every
     call, as the library's deterministic forward does);
   * ``float lean``: a minimal float32 forward of the same network (weights ``sign(eta)`` and the
     folded normalization precomputed once: GEMM, scale/shift, sign per stage), the strongest float
     baseline;

   plus a per-stage breakdown (first stage = float GEMM + threshold + pack; binary stages; head);
5. model size: packed vs float32 (``size_report``), for this network and, since a real-valued
   784x1024 first layer alone is 3.2 MB of float32, for the same architecture with a binary first
   layer (``weight="bernoulli"``; sizes do not depend on the trained values, so that network is
   converted untrained).

Speed does not depend on the trained values either (the same kernels run on any weights); the
training only makes the accuracies meaningful.

Usage::

    python bench/packed_inference.py [--checkpoint runs/x/checkpoint.npz] [--epochs 2] [--estimator st]
        [--hidden 1024,1024] [--batch-sizes 256,10000] [--repeats 15] [--settle 0.05] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import sbnnumba  # noqa: F401
except ImportError:  # run from a source checkout without installation
    sys.path.insert(0, os.path.dirname(HERE))

from common import interleaved_medians, machine_info  # noqa: E402

import sbnnumba as sb  # noqa: E402
from sbnnumba import datasets, train  # noqa: E402
from sbnnumba.packed import PackedNetwork  # noqa: E402


def _int_list(text):
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def lean_forward(net):
    """A minimal float32 forward of the deterministic network (for timing): per stage
    ``h <- sign((h W^T) * s + t)`` with ``W = sign(eta)`` and ``s, t`` folding bias and normalization."""
    layers = []
    for stage in net.stages:
        inner = getattr(stage, "layer", stage)
        w = inner.latent.mode(inner.eta) if inner.latent is not None else inner.weight
        if isinstance(stage, sb.Normalized):
            mean, var = stage.running.get("deterministic") or stage.running["stochastic"]
            s = stage.gamma / np.sqrt(var + stage.eps)
            t = (inner.bias - mean) * s + stage.beta
        else:
            s, t = np.ones_like(inner.bias), inner.bias
        layers.append((np.ascontiguousarray(w, np.float32), s.astype(np.float32), t.astype(np.float32)))
    head_w, head_b = net.head.weight.astype(np.float32), net.head.bias.astype(np.float32)

    def forward(x):
        h = x.reshape(x.shape[0], -1)
        for w, s, t in layers:
            a = h @ w.T
            a *= s
            a += t
            h = np.where(a >= 0, np.float32(1), np.float32(-1))
        return h @ head_w.T + head_b

    return forward, layers


def get_network(args, data):
    if args.checkpoint:
        net = train.load_network(args.checkpoint)
        print(f"network: loaded from {args.checkpoint}: {net!r}")
        return net, None
    net = train.build_network("mlp", (1, 28, 28), 10, seed=args.seed, hidden=args.hidden, weight="hidden",
                              normalize=True)
    x_tr, y_tr = data.x_train, data.y_train
    if args.train_subset:
        x_tr, y_tr = x_tr[:args.train_subset], y_tr[:args.train_subset]
    print(f"training {net!r} (weight='hidden', normalize=True) with fit: estimator {args.estimator!r}, "
          f"{args.epochs} epoch(s), batch 64, Adam lr 1e-3, on {len(y_tr)} images (10% held out) ...", flush=True)
    t0 = time.perf_counter()
    result = train.fit(net, (x_tr, y_tr), estimator=args.estimator, epochs=args.epochs, batch_size=64,
                       eval_samples=4, train_eval_size=0, progress=False, plots=False, out=args.out, seed=args.seed)
    seconds = time.perf_counter() - t0
    last = result.history[-1]
    print(f"trained in {seconds:.0f} s; validation: single-sample acc {100 * last['val_acc1']:.2f}%, "
          f"deterministic acc {100 * last['val_det_acc']:.2f}%"
          + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))
    return net, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="load the trained network from this sbnnumba checkpoint instead")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--estimator", default="st")
    parser.add_argument("--hidden", type=_int_list, default=[1024, 1024])
    parser.add_argument("--train-subset", type=int, default=0, help="train on the first N images (0: all)")
    parser.add_argument("--batch-sizes", type=_int_list, default=[256, 10000])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timing rounds per batch size")
    parser.add_argument("--settle", type=float, default=0.05,
                        help="seconds each contender runs untimed before each timed call (steady state)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="directory for the training checkpoint (default: none written)")
    args = parser.parse_args(argv)

    info = machine_info()
    import numba
    print(f"numba threading layer: {numba.config.THREADING_LAYER} (active after the first parallel call)\n")

    data = datasets.load_fashion_mnist()
    x_test = datasets.normalize(data.x_test)
    y_test = data.y_test
    net, _ = get_network(args, data)
    net.recalibrate_normalization(datasets.normalize(data.x_train[:10000]), mode="deterministic")

    # ---------------------------------------------------------------- conversion, file round trip
    t0 = time.perf_counter()
    packed = PackedNetwork.from_network(net, calibration_x=x_test[:500])
    print(f"\nconverted in {time.perf_counter() - t0:.2f} s: {packed!r}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "packed.npz")
        packed.save(path)
        file_bytes = os.path.getsize(path)
        packed = PackedNetwork.load(path)
    print(f"saved and re-loaded: {file_bytes:,d} bytes on disk (.npz)")

    # ---------------------------------------------------------------- accuracy: must be identical
    logits_float = net.forward_deterministic(x_test)
    logits_packed = packed.predict_logits(x_test)
    pred_float, pred_packed = np.argmax(logits_float, 1), np.argmax(logits_packed, 1)
    acc_float, acc_packed = np.mean(pred_float == y_test), np.mean(pred_packed == y_test)
    same = int(np.sum(pred_float == pred_packed))
    max_diff = np.max(np.abs(logits_float - logits_packed))
    print(f"\ntest accuracy ({len(y_test)} images): float deterministic {100 * acc_float:.2f}%, "
          f"packed {100 * acc_packed:.2f}%; identical predictions {same}/{len(y_test)}; logits bitwise equal: "
          f"{np.array_equal(logits_float, logits_packed)} (max |diff| {max_diff:.2g})")
    exact = same == len(y_test)

    # ---------------------------------------------------------------- speed
    lean, lean_layers = lean_forward(net)
    first_w = lean_layers[0][0]
    print(f"\nimages/s, medians of {args.repeats} interleaved rounds (settle {args.settle} s); "
          "ratio = packed images/s / float images/s")
    header = f"{'batch':>6s} {'packed':>10s} {'float det':>10s} {'float lean':>10s} " \
             f"{'vs det':>7s} {'vs lean':>7s}   per stage (packed: first | binary | head; lean: first GEMM)"
    print(header)
    ratios, hidden_times = {}, {}
    stages = packed.stages
    for batch in args.batch_sizes:
        xb = np.ascontiguousarray(x_test[np.arange(batch) % len(x_test)])
        x2 = xb.reshape(batch, -1)
        for fn in (lambda: packed.predict_logits(xb), lambda: net.forward_deterministic(xb), lambda: lean(xb)):
            fn()  # compile / warm up
        times = interleaved_medians({"packed": lambda: packed.predict_logits(xb),
                                     "det": lambda: net.forward_deterministic(xb),
                                     "lean": lambda: lean(xb)}, args.repeats, settle=args.settle)
        # per-stage breakdown (timed separately, interleaved)
        acts = [xb]
        for stage in stages:
            acts.append(stage.forward(acts[-1], packed.dtype))
        float_inputs = [packed.forward_states(xb)[k].reshape(batch, -1) for k in range(len(stages) - 1)]
        parts = {"first": lambda: stages[0].forward(xb, packed.dtype),
                 "binary": lambda: [s.forward(a, packed.dtype) for s, a in zip(stages[1:], acts[1:])],
                 "head": lambda: _head(packed, acts[-1]),
                 "lean_first": lambda: x2 @ first_w.T,
                 "lean_rest": lambda: [h @ w.T for h, (w, _, _) in zip(float_inputs, lean_layers[1:])]}
        part_times = interleaved_medians(parts, max(5, args.repeats // 2), settle=args.settle)
        ips = {k: batch / v for k, v in times.items()}
        ratios[batch] = (ips["packed"] / ips["det"], ips["packed"] / ips["lean"])
        hidden_times[batch] = (part_times["binary"], part_times["lean_rest"])
        print(f"{batch:>6d} {ips['packed']:>10,.0f} {ips['det']:>10,.0f} {ips['lean']:>10,.0f} "
              f"{ratios[batch][0]:>6.2f}x {ratios[batch][1]:>6.2f}x   "
              f"{1e3 * part_times['first']:.2f} | {1e3 * part_times['binary']:.2f} | {1e3 * part_times['head']:.2f} ms;"
              f" {1e3 * part_times['lean_first']:.2f} ms of {1e3 * times['lean']:.2f} ms "
              f"(Amdahl bound with a float first layer: {times['lean'] / part_times['lean_first']:.1f}x vs lean)")

    # ---------------------------------------------------------------- size
    print("\nmodel size (packed arrays vs the float32 deterministic network: weights, biases, gamma, beta, "
          "running mean/var):")
    rows = packed.size_report(print_fn=print)
    ratio_hidden = rows[-1]["ratio"]
    binary_first = sb.Network.dense([784] + list(args.hidden), 10, weight="bernoulli", normalize=True, rng=0)
    binary_first.recalibrate_normalization(x_test[:256], mode="deterministic")
    print("\nsame architecture with a binary first layer (weight='bernoulli'; untrained, sizes only):")
    rows_b = PackedNetwork.from_network(binary_first).size_report(print_fn=print)
    ratio_bin = rows_b[-1]["ratio"]

    # ---------------------------------------------------------------- summary
    print("\nsummary")
    print(f"  accuracy: float deterministic {100 * acc_float:.2f}% = packed {100 * acc_packed:.2f}% "
          f"({'identical predictions' if exact else 'PREDICTIONS DIFFER'})")
    for batch, (vs_det, vs_lean) in ratios.items():
        print(f"  speed, batch {batch}: {vs_det:.2f}x forward_deterministic, {vs_lean:.2f}x the lean float forward "
              f"(target >= 8x: {'met' if vs_det >= 8 else 'not met'} vs forward_deterministic)")
    print(f"  size: {ratio_hidden:.1f}x smaller with the real first layer (target >= 25x: "
          f"{'met' if ratio_hidden >= 25 else 'not met'}: its 784x{args.hidden[0]} float32 weights alone are "
          f"{4 * 784 * args.hidden[0]:,d} bytes); {ratio_bin:.1f}x with a binary first layer "
          f"({'met' if ratio_bin >= 25 else 'not met'})")
    print("  the real first layer runs as a float32 GEMM in both networks (it must, to give the same signs), "
          "so it bounds the speed-up (Amdahl, see the per-stage column).")
    for batch, (binary, float_gemms) in hidden_times.items():
        print(f"  binary hidden stage(s) alone, batch {batch}: {1e3 * binary:.2f} ms packed (XNOR-popcount + "
              f"threshold) vs {1e3 * float_gemms:.2f} ms for their float32 GEMMs = {float_gemms / binary:.1f}x")
    print(f"  load average (1 min) at the start: {info['load_average']}, at the end: {os.getloadavg()[0]:.2f}")
    return 0 if exact else 1


def _head(packed, words):
    """The packed network's head alone (unpack + float GEMM), for the per-stage breakdown."""
    from sbnnumba.packed import _fetch_input

    h = _fetch_input(packed.head_in[0], packed.head_in[1], words, packed.dtype)
    return h.reshape(h.shape[0], -1) @ packed.head_weight.T + packed.head_bias


if __name__ == "__main__":
    sys.exit(main())
