"""Benchmark: packed (XNOR-popcount) inference of the fully binary MLP vs the float deterministic network.

End to end on Fashion-MNIST (the full data if :func:`sbnnumba.datasets.find_fashion_mnist` finds it,
else the embedded subset):

1. the fully binary MLP 784-1024-1024-10 (``weight="bernoulli"``: Bernoulli weights in **every**
   stage, the first included, on the real-valued pixels ``x = q/255``; batch normalization; real
   head) is trained briefly with :func:`sbnnumba.training.fit` (default: 2 epochs of the ST estimator, Adam lr 1e-2)
   or loaded from ``--checkpoint``; its normalization statistics are re-estimated for the
   deterministic mode on 10,000 training images;
2. it is converted twice with :meth:`sbnnumba.packed.PackedNetwork.from_network`:

   * ``packed``: ``input_quantization=(1/255, 8)``, a **bit-plane first stage** (exact integer
     ``z = q @ sign(eta).T`` from the 8 bit-planes of the pixels with XNOR-popcount kernels,
     integer thresholds, packed output), saved and re-loaded;
   * ``packed f1``: the default conversion, whose first stage is a float32 GEMM on ``x`` (bit-exact
     with ``forward_deterministic``);

3. agreement on the 10,000 test images: ``packed f1`` must predict exactly as
   ``net.forward_deterministic``; ``packed`` computes the first layer exactly instead of with float32
   rounding, so its first-layer states / predictions may differ where that rounding crosses a
   threshold: the script exits with status 1 if fewer than 99.9% of the predictions agree (or if
   ``packed f1`` is not identical);
4. images/s, interleaved in the same run (medians, ``bench.common.interleaved_medians``), at batch
   sizes 256 and 10,000 (the whole test set) of

   * ``packed``: ``PackedNetwork.predict_logits(x)`` on the float32 pixels (packing the bit-planes
     includes rounding ``x * 255`` and checking that ``x`` is on the grid);
   * ``packed u8``: the same on the uint8 pixels (``codes=True``);
   * ``packed f1``: the float-first-layer packed network;
   * ``float det``: ``net.forward_deterministic`` (float32 OpenBLAS; recomputes ``sign(eta)`` on every
     call, as the library's deterministic forward does);
   * ``float lean``: a minimal float32 forward of the same network (weights ``sign(eta)`` and the
     folded normalization precomputed once: GEMM, scale/shift, sign per stage), the strongest float
     baseline;

   plus a per-stage breakdown: the bit-plane first stage (its plane packing alone in brackets),
   the float first stage of ``packed f1``, the lean float first GEMM, the binary hidden stage, the head;
5. model size: packed vs float32 (``size_report``) of the fully binary MLP.

Speed does not depend on the trained values (the same kernels run on any weights); the training
only makes the accuracies meaningful.

``OPENBLAS_THREAD_TIMEOUT`` defaults to 4 here (see the comment at the top of the script; pass
``OPENBLAS_THREAD_TIMEOUT=28`` for OpenBLAS's default, under which the packed network's Numba kernels
share the cores with spinning BLAS workers).

Usage::

    python bench/packed_inference.py [--checkpoint runs/x/checkpoint.npz] [--epochs 2] [--estimator st]
        [--train-subset N] [--hidden 1024,1024] [--batch-sizes 256,10000] [--repeats 15] [--settle 0.05]
        [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# OpenBLAS's worker threads keep spinning for 2^28 cycles (~0.1 s, OPENBLAS_THREAD_TIMEOUT=28) after
# every BLAS call. On few cores the worker that finished the packed network's head GEMM then shares a
# core with the Numba kernels of the next batch's first stage, which run at half speed (measured on 2
# cores: the bit-plane stage of a 10,000-image batch 34 ms instead of 17 ms, the whole packed network
# 46 ms instead of 27 ms), while a chain of BLAS calls (the float baselines) gains nothing from the
# spinning (forward_deterministic 326 vs 324 ms). 2^4 cycles lets the workers sleep at once. It must be
# set before NumPy loads OpenBLAS; a value given by the caller wins (OPENBLAS_THREAD_TIMEOUT=28
# reproduces OpenBLAS's default).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import sbnnumba  # noqa: F401
except ImportError:  # run from a source checkout without installation
    sys.path.insert(0, os.path.dirname(HERE))

from common import interleaved_medians, machine_info  # noqa: E402

from sbnnumba import architectures, bitpack, datasets, training  # noqa: E402
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
        inner = stage.inner
        w = inner.weight_param.mode()
        if stage.normalization is not None:
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
        net = training.load_network(args.checkpoint)
        print(f"network: loaded from {args.checkpoint}: {net!r}")
        return net, None
    net = architectures.build("mlp", (1, 28, 28), 10, rng=args.seed, hidden=args.hidden, weight="bernoulli",
                              normalize=True)
    x_tr, y_tr = data.x_train, data.y_train
    if args.train_subset:
        x_tr, y_tr = x_tr[:args.train_subset], y_tr[:args.train_subset]
    print(f"training {net!r} (weight='bernoulli': binary weights in every stage, normalize=True) with fit: "
          f"estimator {args.estimator!r}, {args.epochs} epoch(s), batch 64, Adam lr {args.lr:g}, on {len(y_tr)} images "
          "(10% held out) ...", flush=True)
    t0 = time.perf_counter()
    result = training.fit(net, (x_tr, y_tr), estimator=args.estimator, epochs=args.epochs, batch_size=64,
                          eval_samples=4, train_eval_size=0, progress=False, plots=False, out=args.out, seed=args.seed,
                          lr=args.lr)
    seconds = time.perf_counter() - t0
    last = result.history[-1]
    print(f"trained in {seconds:.0f} s; validation: single-sample acc {100 * last['val_acc1']:.2f}%, "
          f"deterministic acc {100 * last['val_det_acc']:.2f}%"
          + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))
    return net, seconds


def first_layer_states(net, x):
    """+-1 first-layer states of the float deterministic network (its own layer arithmetic)."""
    with net.evaluating("deterministic"):  # Bernoulli stages compute with sign(eta)
        return net.stages[0].forward(net.check_input(x)) >= 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="load the trained network from this sbnnumba checkpoint instead")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--estimator", default="st")
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="Adam learning rate (latent weights eta move on the scale of U[-1, 1]: 1e-2 as in "
                             "bench/binary_weights.py)")
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
    print(f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')} (2^n cycles OpenBLAS workers spin "
          "after a call; this script's default 4, OpenBLAS's own 28: see the comment at the top)")
    import numba
    print(f"numba threading layer: {numba.config.THREADING_LAYER} (active after the first parallel call)\n")

    data = datasets.load_fashion_mnist()
    q_test = np.ascontiguousarray(data.x_test)  # uint8 pixels
    x_test = datasets.normalize(q_test)  # x = q / 255, float32: on the grid of input_quantization (1/255, 8)
    y_test = data.y_test
    net, _ = get_network(args, data)
    if net.stages[0].latent is None:
        print("the network's first layer has real weights: the bit-plane first stage needs binary weights "
              "(train without --checkpoint, or a weight='bernoulli' checkpoint)")
        return 2
    net.recalibrate_normalization(datasets.normalize(data.x_train[:10000]), mode="deterministic")

    # ---------------------------------------------------------------- conversion, file round trip
    quantization = (1 / 255, 8)
    t0 = time.perf_counter()
    packed = PackedNetwork.from_network(net, calibration_x=x_test[:500], input_quantization=quantization)
    print(f"\nconverted in {time.perf_counter() - t0:.2f} s: {packed!r} (input_quantization={quantization})")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "packed.npz")
        packed.save(path)
        file_bytes = os.path.getsize(path)
        packed = PackedNetwork.load(path)
    print(f"saved and re-loaded: {file_bytes:,d} bytes on disk (.npz)")
    packed_f1 = PackedNetwork.from_network(net, calibration_x=x_test[:500])
    print(f"float-first-layer variant: {packed_f1!r}")

    # ---------------------------------------------------------------- accuracy and agreement
    logits_float = net.forward_deterministic(x_test)
    pred_float = np.argmax(logits_float, 1)
    pred_packed = packed.predict(x_test)
    np.testing.assert_array_equal(packed.predict(q_test, codes=True), pred_packed)
    acc_float, acc_packed = np.mean(pred_float == y_test), np.mean(pred_packed == y_test)
    agree = int(np.sum(pred_float == pred_packed))
    f1_exact = np.array_equal(packed_f1.predict_logits(x_test), logits_float)
    states_float = first_layer_states(net, x_test)
    states_packed = packed.forward_states(x_test)[0] > 0
    state_diff = int(np.sum(states_float != states_packed))
    n = len(y_test)
    print(f"\ntest accuracy ({n} images): float deterministic {100 * acc_float:.2f}%, packed (bit-plane first "
          f"layer) {100 * acc_packed:.2f}%; predictions agree on {agree}/{n} ({100 * agree / n:.2f}%); first-layer "
          f"states differ in {state_diff} of {states_float.size:,d} ({100 * (1 - state_diff / states_float.size):.4f}% "
          f"agree); packed f1 (float first layer): logits bitwise equal to forward_deterministic: {f1_exact}")
    agreement_ok = agree >= 0.999 * n and f1_exact

    # ---------------------------------------------------------------- speed
    lean, lean_layers = lean_forward(net)
    first_w = lean_layers[0][0]
    print(f"\nimages/s, medians of {args.repeats} interleaved rounds (settle {args.settle} s); "
          "ratio = packed images/s / float images/s")
    print(f"{'batch':>6s} {'packed':>9s} {'packed u8':>9s} {'packed f1':>9s} {'float det':>9s} {'float lean':>10s} "
          f"{'vs det':>7s} {'vs lean':>7s} {'u8/det':>7s} {'f1/det':>7s}")
    ratios, breakdown = {}, {}
    stages = packed.stages
    for batch in args.batch_sizes:
        index = np.arange(batch) % n
        xb, qb = np.ascontiguousarray(x_test[index]), np.ascontiguousarray(q_test[index])
        x2 = xb.reshape(batch, -1)
        contenders = {"packed": lambda: packed.predict_logits(xb),
                      "packed_u8": lambda: packed.predict_logits(qb, codes=True),
                      "packed_f1": lambda: packed_f1.predict_logits(xb),
                      "det": lambda: net.forward_deterministic(xb),
                      "lean": lambda: lean(xb)}
        for fn in contenders.values():
            fn()  # compile / warm up
        times = interleaved_medians(contenders, args.repeats, settle=args.settle)
        # per-stage breakdown (timed separately, interleaved)
        acts = [xb]
        for stage in stages:
            acts.append(stage.forward(acts[-1], packed.dtype))
        parts = {"bitplane_first": lambda: stages[0].forward(xb, packed.dtype),
                 "planes": lambda: bitpack.pack_planes(x2, 8, 1 / 255),
                 "float_first": lambda: packed_f1.stages[0].forward(xb, packed.dtype),
                 "lean_first": lambda: x2 @ first_w.T,
                 "binary": lambda: [s.forward(a, packed.dtype) for s, a in zip(stages[1:], acts[1:])],
                 "head": lambda: _head(packed, acts[-1])}
        part_times = interleaved_medians(parts, max(5, args.repeats // 2), settle=args.settle)
        ips = {k: batch / v for k, v in times.items()}
        ratios[batch] = {"det": ips["packed"] / ips["det"], "lean": ips["packed"] / ips["lean"],
                         "u8_det": ips["packed_u8"] / ips["det"], "f1_det": ips["packed_f1"] / ips["det"],
                         "u8_lean": ips["packed_u8"] / ips["lean"], "f1_lean": ips["packed_f1"] / ips["lean"]}
        breakdown[batch] = part_times
        r = ratios[batch]
        print(f"{batch:>6d} {ips['packed']:>9,.0f} {ips['packed_u8']:>9,.0f} {ips['packed_f1']:>9,.0f} "
              f"{ips['det']:>9,.0f} {ips['lean']:>10,.0f} {r['det']:>6.2f}x {r['lean']:>6.2f}x "
              f"{r['u8_det']:>6.2f}x {r['f1_det']:>6.2f}x")
    print("\nper stage, ms (medians): first layer: bit-plane [of which plane packing] | float32 GEMM+threshold "
          "(packed f1) | lean float32 GEMM alone; binary hidden stage; head")
    for batch, t in breakdown.items():
        ms = {k: 1e3 * v for k, v in t.items()}
        print(f"{batch:>6d}  first: {ms['bitplane_first']:.2f} [{ms['planes']:.2f}] | {ms['float_first']:.2f} | "
              f"{ms['lean_first']:.2f}  ({ms['lean_first'] / ms['bitplane_first']:.1f}x faster than the float GEMM); "
              f"binary {ms['binary']:.2f}; head {ms['head']:.2f}")

    # ---------------------------------------------------------------- size
    print("\nmodel size (packed arrays vs the float32 deterministic network: weights, biases, gamma, beta, "
          "running mean/var):")
    rows = packed.size_report(print_fn=print)
    ratio = rows[-1]["ratio"]
    ratio_f1 = packed_f1.size_report()[-1]["ratio"]

    # ---------------------------------------------------------------- summary
    print("\nsummary (fully binary MLP 784-" + "-".join(map(str, args.hidden)) + "-10, binary first layer on "
          "x = q/255 via 8 bit-planes)")
    print(f"  accuracy: float deterministic {100 * acc_float:.2f}%, packed {100 * acc_packed:.2f}%; predictions agree "
          f"on {100 * agree / n:.2f}% of {n} test images "
          f"(required >= 99.9%: {'met' if agree >= 0.999 * n else 'NOT met'});"
          f" first-layer states agree {100 * (1 - state_diff / states_float.size):.4f}%")
    print(f"  float-first-layer variant: {'bit-exact (identical logits)' if f1_exact else 'NOT IDENTICAL'}")
    for batch, r in ratios.items():
        print(f"  speed, batch {batch}: {r['det']:.2f}x forward_deterministic, {r['lean']:.2f}x the lean float forward "
              f"(target >= 8x vs forward_deterministic: {'met' if r['det'] >= 8 else 'not met'}); "
              f"uint8 input {r['u8_det']:.2f}x / {r['u8_lean']:.2f}x; float first layer {r['f1_det']:.2f}x / "
              f"{r['f1_lean']:.2f}x")
    print(f"  size: {ratio:.1f}x smaller than float32 (target >= 25x: {'met' if ratio >= 25 else 'not met'}); "
          f"float-first-layer variant {ratio_f1:.1f}x")
    print(f"  OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')}; load average (1 min) at the "
          f"start: {info['load_average']}, at the end: {os.getloadavg()[0]:.2f}")
    return 0 if agreement_ok else 1


def _head(packed, words):
    """The packed network's head alone (unpack + float GEMM), for the per-stage breakdown."""
    from sbnnumba.packed import _fetch_input

    h = _fetch_input(packed.head_in[0], packed.head_in[1], words, packed.dtype)
    return h.reshape(h.shape[0], -1) @ packed.head_weight.T + packed.head_bias


if __name__ == "__main__":
    sys.exit(main())
