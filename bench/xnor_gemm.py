"""Benchmark: bit-packed XNOR-popcount GEMM vs NumPy float32 matmul of the same +-1 matrices.

For (M, N, K) in (256, 4096, 4096), (1024, 1024, 1024), (2048, 2048, 2048) it times, interleaved
in the same run (medians over repeats):

* ``numpy``: ``a @ b.T`` in float32 (OpenBLAS sgemm);
* ``xnor``: ``sbnnumba.bitpack.matmul(pack(a), prepare_weights(pack(b)), K)``, int32 output;
  the weights are packed and laid out once, outside the timing;
* ``xnor raw``: the same with ``b`` given as plain packed words (re-laid out on every call);
* ``pack a``: packing the float32 activations, reported separately.

and prints ``ratio = numpy / xnor`` (target >= 10x at every shape; the AVX-512 popcount bound is
about 32x over an AVX2 sgemm) and the ratio when the activation packing is included, at one thread
and at the default thread count (``sbnnumba.set_num_threads``: Numba and BLAS together).

``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` select and tune the OpenBLAS kernel when the library
loads, so ``--unset-openblas-env`` re-executes this script in a child process whose environment
lacks them (nothing else's environment is changed); ``--both`` runs the current environment first,
then that child.

Before each timed call the contender runs untimed for ``--settle`` seconds (0.05), so that it is
timed in its steady state: right after a Numba call, libgomp threads still spin and numpy runs up
to 2x slower (which would inflate the ratio); after an idle pause the thread pools of this VM take
milliseconds to wake (which would deflate it).

Usage: python bench/xnor_gemm.py [--repeats 15] [--settle 0.05] [--unset-openblas-env | --both]
"""
import argparse
import os
import subprocess
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

SHAPES = [(256, 4096, 4096), (1024, 1024, 1024), (2048, 2048, 2048)]
OPENBLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def run_without_openblas_env(repeats, settle):
    """Re-run this script in a child process whose environment lacks the OpenBLAS variables."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_ENV_VARS}
    print(f"\n=== child process with {' and '.join(OPENBLAS_ENV_VARS)} unset ===", flush=True)
    return subprocess.call([sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
                            "--settle", str(settle)], env=env)


def gemm_asm_report():
    """Count AVX-512 popcount instructions in the GEMM kernel's machine code.

    Numba keeps no assembly for kernels loaded from its on-disk cache, so this compiles an
    uncached twin of the kernel (a few seconds).
    """
    import numba
    import numpy as np

    from sbnnumba.kernels import bitpack as kernels

    twin = numba.njit(parallel=True)(kernels.xnor_gemm.py_func)
    twin(np.zeros((4, 1), np.uint64), np.zeros((1, 32), np.uint64), 64, np.empty((4, 32), np.int32))
    asm = twin.inspect_asm(twin.signatures[0])
    return f"{asm.count('vpopcntq')} vpopcntq, {asm.count('zmm')} zmm operands"


def benchmark(repeats, settle):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import machine_info, thread_counts

    from sbnnumba import set_num_threads

    machine_info()
    worst = float("inf")
    for threads in thread_counts():
        set_num_threads(threads)
        worst = min(worst, _shapes_table(repeats, settle, threads))
    print(f"worst ratio {worst:.1f}x (target >= 10x); GEMM kernel assembly: {gemm_asm_report()}")
    return 0


def _shapes_table(repeats, settle, threads):
    """Time every shape at the current thread count, print the table, return its worst ratio."""
    import numpy as np
    from common import interleaved_medians

    from sbnnumba import bitpack

    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in SHAPES:
        a = np.where(rng.random((m, k)) < 0.5, -1, 1).astype(np.float32)
        b = np.where(rng.random((n, k)) < 0.5, -1, 1).astype(np.float32)
        b_t = b.T
        b_words = bitpack.pack(b)
        b_prepared = bitpack.prepare_weights(b_words)
        a_words = bitpack.pack(a)
        expected = a @ b_t
        if not np.array_equal(bitpack.matmul(a_words, b_prepared, k), expected.astype(np.int32)):
            raise AssertionError(f"packed GEMM differs from the float32 matmul at {(m, n, k)}")
        contenders = {
            "numpy": lambda: a @ b_t,
            "xnor": lambda: bitpack.matmul(a_words, b_prepared, k),
            "xnor raw": lambda: bitpack.matmul(a_words, b_words, k),
            "pack a": lambda: bitpack.pack(a),
        }
        for fn in contenders.values():  # warm up (compiles on a cold cache)
            fn()
        t = interleaved_medians(contenders, repeats, settle)
        rows.append((m, n, k, t))

    print(f"\nGEMM a (M,K) @ b.T (K,N) of +-1 matrices, {threads} thread(s), medians of {repeats} interleaved "
          f"repeats (each after {settle} s of untimed calls), times in ms")
    header = (f"{'M':>5} {'N':>5} {'K':>5} | {'numpy f32':>9} {'xnor':>7} {'ratio':>6} | "
              f"{'xnor raw':>8} {'ratio':>6} | {'pack a':>7} {'ratio incl. pack':>16}")
    print(header)
    print("-" * len(header))
    for m, n, k, t in rows:
        print(f"{m:>5} {n:>5} {k:>5} | {t['numpy'] * 1e3:9.3f} {t['xnor'] * 1e3:7.3f} "
              f"{t['numpy'] / t['xnor']:5.1f}x | {t['xnor raw'] * 1e3:8.3f} {t['numpy'] / t['xnor raw']:5.1f}x | "
              f"{t['pack a'] * 1e3:7.3f} {t['numpy'] / (t['xnor'] + t['pack a']):15.1f}x")
    return min(t["numpy"] / t["xnor"] for *_, t in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per shape (default 15)")
    parser.add_argument("--settle", type=float, default=0.05,
                        help="untimed calls of the same contender before each timed call, in seconds "
                             "(default 0.05; see common.interleaved_medians)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--unset-openblas-env", action="store_true",
                      help="run in a child process without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE")
    mode.add_argument("--both", action="store_true", help="run here, then in that child process")
    args = parser.parse_args(argv)
    if args.unset_openblas_env:
        return run_without_openblas_env(args.repeats, args.settle)
    status = benchmark(args.repeats, args.settle)
    if args.both:
        status = run_without_openblas_env(args.repeats, args.settle) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
