"""Benchmark: PSA flip propagation through a dense layer, and a PSA vs ST training step.

Prints, measured in the same run (medians over interleaved repeats):

1. batch 128, a 1024x1024 layer, float32: the Numba flip propagation (logistic ratio form, and the
   generic F form; for triangular noise the bounded and the generic form; for normal noise the probit form, and
   against the generic one on a quarter of the inputs) vs a float32 matmul of the
   same shape (x @ W.T) and (at one thread) vs the NumPy reference that materializes the
   (B, N_in, N_out) Delta tensor. Targets: within 4x of the matmul at one thread, >= 20x faster than
   materializing. Also timed with them: the ratio kernel's inner loop alone on L1-resident rows
   (``cpu.ratio_pairs4`` with the kernel's fastmath flags, four rows of ``k`` per load of the per-unit
   factors, two output units per division; no preparation, no cache misses), for the layer's connection count: a
   call of the ratio form as written can hardly run faster on this CPU, so its ratio to the matmul is that form's
   floor under the 4x target; and
   the ``exp`` of the layer's ``2 W^T`` (``float32_exp.exp_in_place``: the weight factors the call computes before its
   kernel); and where the ratio call's own time goes, its passes timed inside the call (:func:`ratio_call_passes`).
2. one full training step (forward + backward, ``sbnnumba.estimate``) of a 784-1024-1024-10 network,
   batch 128: PSA vs ST. Target: PSA within 3x of ST.

Both parts run at one thread and at the default thread count (``sbnnumba.set_num_threads``: Numba and BLAS
together) and print their ratios for each: at one thread a loaded machine slows every contender alike,
while at two a BLAS baseline that stalls on a busy core can make a ratio look better than it is.

Usage: python bench/psa_dense.py [--repeats 15]
"""
import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians, machine_info, thread_counts, wrapped  # noqa: E402

import sbnnumba as sb  # noqa: E402
from sbnnumba.kernels import cpu, lanes, reference  # noqa: E402
from sbnnumba.kernels.float32_exp import exp_in_place  # noqa: E402


# Not cached: tests load this script as a module under another name, and a cached function's globals are rebuilt
# by importing its module by the name it was compiled under (a script run caches it as __main__).
@numba.njit(parallel=True, fastmath=cpu._LANE_FASTMATH)
def _ratio_rows_l1(c, h, k, repeats, one, out):
    # out[t, r] += sum_j h[t, j] / (c[t, j] + k[t, r, j]), `repeats` times per thread row t: the ratio kernel's inner
    # loop (cpu.ratio_pairs4, compiled with the kernel's fastmath flags) on rows that stay in L1 (n_out a multiple of
    # LANES).
    n_out = c.shape[1]
    for t in prange(c.shape[0]):
        c_row, h_row = c[t], h[t]
        k0, k1, k2, k3 = k[t, 0], k[t, 1], k[t, 2], k[t, 3]
        for _ in range(repeats):
            s0, s1, s2, s3 = lanes.zeros(one), lanes.zeros(one), lanes.zeros(one), lanes.zeros(one)
            cpu.ratio_pairs4(s0, s1, s2, s3, c_row, h_row, k0, k1, k2, k3, n_out)
            out[t, 0] += lanes.total(s0)
            out[t, 1] += lanes.total(s1)
            out[t, 2] += lanes.total(s2)
            out[t, 3] += lanes.total(s3)


def ratio_loop_floor(rng, threads, connections, n_out=1024):
    """The ratio kernel's inner loop alone (:func:`_ratio_rows_l1`), sized to ``connections``.

    Parameters
    ----------
    rng : numpy.random.Generator
    threads : int
        One L1-resident task (``cpu._ROWS`` rows of ``k``) per thread.
    connections : int
        Terms ``h / (c + k)`` to run, rounded up to whole passes over the rows.
    n_out : int
        Row length, a multiple of ``lanes.LANES``.

    Returns
    -------
    (callable, tuple)
        ``call()`` runs the terms; ``(c, h, k, out)`` are its arguments.
    """
    if n_out % lanes.LANES:
        raise ValueError(f"n_out: expected a multiple of {lanes.LANES}, got {n_out}")
    c = (1 + rng.random((threads, n_out))).astype(np.float32)  # e^{+-a}, k = e^{2W}: values of order 1
    h = (1e-3 * rng.normal(size=(threads, n_out))).astype(np.float32)
    k = (1 + rng.random((threads, cpu._ROWS, n_out))).astype(np.float32)
    out = np.zeros((threads, cpu._ROWS), np.float32)
    repeats = -(-connections // (threads * cpu._ROWS * n_out))
    one = np.float32(1)
    _ratio_rows_l1(c, h, k, 1, one, out)  # compile
    return (lambda: _ratio_rows_l1(c, h, k, repeats, one, out)), (c, h, k, out)


#: The passes of a ratio-form call (``cpu._flip_propagate_dense`` and ``cpu._ratio_sums``), by the name the call looks
#: them up with in ``sbnnumba.kernels.cpu``, and how part 1 names them.
RATIO_PASSES = {"_flip_dense_ratio": "kernel", "clipped_double_transpose": "transpose of 2W",
                "exp_in_place": "exp of a and 2 W^T", "_sign_order": "sign order", "_ratio_units": "per-unit factors"}


def ratio_call_passes(call, calls):
    """Where a ratio-form call's time goes: each pass of :data:`RATIO_PASSES` timed inside ``calls`` calls of
    ``call()`` (the library's functions wrapped with a timer, restored after), and the call itself.

    Parameters
    ----------
    call : callable
        A dense flip propagation in the ratio form (``cpu.flip_propagate_dense(..., form="ratio")``).
    calls : int
        Calls in a row (no other contender between them).

    Returns
    -------
    dict
        Pass name -> median seconds per call (a pass that runs twice a call counts both), and ``"call"``.
    """
    per_call = {name: [] for name in RATIO_PASSES}
    current = {}

    def timer(name):
        def wrap(fn):
            def run(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    current[name] = current.get(name, 0.0) + time.perf_counter() - start
            return run
        return wrap

    totals = []
    with contextlib.ExitStack() as stack:
        for name in RATIO_PASSES:
            stack.enter_context(wrapped(cpu, name, timer(name)))
        for _ in range(calls):
            current.clear()
            start = time.perf_counter()
            call()
            totals.append(time.perf_counter() - start)
            for name in RATIO_PASSES:
                per_call[name].append(current.get(name, 0.0))
    out = {name: float(np.median(v)) for name, v in per_call.items()}
    out["call"] = float(np.median(totals))
    return out


def layer_inputs(rng, batch, n_in, n_out, dtype=np.float32):
    w = (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
    x_in = np.where(rng.random((batch, n_in)) < 0.5, 1, -1).astype(dtype)
    a = x_in @ w.T
    x_out = np.where(rng.random((batch, n_out)) < 0.5, 1, -1).astype(dtype)
    d_out = rng.normal(size=(batch, n_out)).astype(dtype)
    return x_in, a, x_out, w, d_out


def flip_section(rng, repeats, threads, with_reference):
    """Part 1 at ``threads`` threads; the NumPy reference (slow) only when ``with_reference``."""
    x_in, a, x_out, w, d_out = layer_inputs(rng, 128, 1024, 1024)
    two_wt = np.ascontiguousarray(2 * w.T)
    exp_out = np.empty_like(two_wt)
    contenders = {
        "matmul float32 (x @ W.T)": lambda: x_in @ w.T,
        "PSA flip, ratio form": lambda: cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio"),
        "PSA flip, generic F form": lambda: cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="generic"),
        "PSA flip, bounded form (triangular)": lambda: cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 3,
                                                                               form="bounded"),
        "PSA flip, generic F form (triangular)": lambda: cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 3,
                                                                                 form="generic"),
        "PSA flip, probit form (normal)": lambda: cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 1, form="probit"),
        "ratio form's inner loop alone (L1)": ratio_loop_floor(rng, threads, x_in.size * w.shape[0])[0],
        "exp of 2 W^T (in the ratio form, + a copy)": lambda: exp_in_place(np.copyto(exp_out, two_wt) or exp_out),
    }
    for fn in contenders.values():  # compile and warm up
        fn()
    med = interleaved_medians(contenders, repeats, settle=0.05)
    base = med["matmul float32 (x @ W.T)"]
    ratio = med["PSA flip, ratio form"]
    print(f"\n1) dense flip propagation, B=128, 1024x1024, float32, {threads} thread(s)")
    for name, t in med.items():
        print(f"   {name:40s} {t * 1e3:9.2f} ms   {t / base:7.2f}x matmul")
    print(f"   => ratio form / matmul = {ratio / base:.2f}x (target <= 4x at one thread)")
    floor, exp_2w = med["ratio form's inner loop alone (L1)"], med["exp of 2 W^T (in the ratio form, + a copy)"]
    rest = ratio - floor - exp_2w
    print(f"   => floor on this CPU: the inner loop alone {floor / base:.2f}x matmul, the exp of 2 W^T "
          f"{exp_2w / base:.2f}x; the rest of the call (L2 traffic, tasks, preparation) {rest / base:.2f}x")
    passes = ratio_call_passes(contenders["PSA flip, ratio form"], max(5, repeats))
    inside = ", ".join(f"{label} {passes[name] * 1e3:.2f}" for name, label in RATIO_PASSES.items())
    other = passes["call"] - sum(passes[name] for name in RATIO_PASSES)
    print(f"   => inside the ratio call ({passes['call'] * 1e3:.2f} ms, medians of {max(5, repeats)} calls in a row): "
          f"{inside}, the rest (Python, clip, allocations) {other * 1e3:.2f} ms")
    if with_reference:
        t_ref = interleaved_medians({"ref": lambda: reference.flip_propagate_dense(x_in, a, x_out, w, d_out,
                                                                                   "logistic")}, 1)["ref"]
        print(f"   => materialized NumPy reference {t_ref * 1e3:.0f} ms = {t_ref / ratio:.1f}x the ratio form "
              "(target >= 20x)")
    bounded = med["PSA flip, bounded form (triangular)"]
    print(f"   => triangular noise: generic / bounded form = "
          f"{med['PSA flip, generic F form (triangular)'] / bounded:.1f}x; "
          f"bounded form (triangular) / ratio form (logistic) = {bounded / ratio:.2f}x")
    probit = med["PSA flip, probit form (normal)"]
    # the generic form takes about 45 ns a connection with normal noise: timed on a quarter of the inputs, 3 repeats
    quarter = (np.ascontiguousarray(x_in[:, :256]), a, x_out, np.ascontiguousarray(w[:, :256]), d_out)
    normal_forms = {form: (lambda form=form: cpu.flip_propagate_dense(*quarter, 1, form=form))
                    for form in ("probit", "generic")}
    for fn in normal_forms.values():  # compile (a fresh checkout) and warm up
        fn()
    normal = interleaved_medians(normal_forms, min(repeats, 3))
    print(f"   => normal noise: probit form / ratio form (logistic) = {probit / ratio:.2f}x; generic / probit form = "
          f"{normal['generic'] / normal['probit']:.1f}x (B=128, 256 inputs x 1024 outputs, float32)")


def step_section(rng, repeats, threads):
    """Part 2 at ``threads`` threads."""
    net = sb.Network.dense([784, 1024, 1024], 10, rng=1)
    x = rng.random((128, 784), dtype=np.float32)
    y = rng.integers(0, 10, 128)
    net.initialize_from_data(x)
    steps = {m: (lambda m=m: sb.estimate(m, net, x, y, rng=rng)) for m in ("st", "psa")}
    for fn in steps.values():
        fn()
    med = interleaved_medians(steps, repeats, settle=0.05)
    print(f"\n2) training step (forward + backward), 784-1024-1024-10, B=128, float32, {threads} thread(s)")
    for name, t in med.items():
        print(f"   {name:40s} {t * 1e3:9.2f} ms")
    print(f"   => PSA step / ST step = {med['psa'] / med['st']:.2f}x (targets: <= 3x of #2, <= 2.0x of #39)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    machine_info()
    rng = np.random.default_rng(0)
    for threads in thread_counts():
        sb.set_num_threads(threads)
        flip_section(rng, args.repeats, threads, with_reference=threads == 1)
        step_section(rng, args.repeats, threads)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
