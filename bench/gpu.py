"""Benchmark: the numba.cuda kernels against float32 GEMM on the same GPU, and training images/s.

Measured in one run on one GPU (CUDA-event timings, medians over repeats, inputs already on the
device unless stated):

* ``sgemm``: float32 ``A @ B.T`` (M, K) x (N, K): cuBLAS through CuPy when CuPy is installed,
  else a tiled numba.cuda SGEMM written here (64 x 64 block tiles, 4 x 4 outputs per thread; far
  slower than cuBLAS, so ratios against it flatter the other kernels: the baseline used is printed);
* ``xnor``: ``get_backend("cuda").xnor_matmul`` (:func:`sbnnumba.backends.cuda.ops.xnor_matmul`) on the same
  shape, packed operands, int32 output: binary ops/s = ``2 M N K / t`` (one XNOR + one popcount-add per product,
  counted as 2 ops like a float multiply-add) and the speed-up over sgemm;
* ``psa dense``: ``get_backend("cuda").flip_propagate_dense`` (logistic ratio form and
  normal-noise generic form) on (B, N_in, N_out): connections/s = ``B N_in N_out / t``, against the
  one sgemm of the same size that ordinary backprop (ST) does through the layer; also timed with
  NumPy inputs (upload + download per call) to show the transfer cost;
* ``psa conv``: ``get_backend("cuda").flip_propagate_conv``, connections/s =
  ``B C_out H_out W_out C_in kh kw / t``, against the sgemm of the layer's im2col size;
* ``training``: images/s of one PSA gradient estimate plus an SGD update
  (:func:`sbnnumba.estimate`) on ``backend="cuda"`` and ``backend="cpu"``, for a dense and a small
  conv network (wall time, host arrays: the layers keep activations on the host and send the PSA
  flip propagation to the GPU), and the device-resident PSA and ST steps of
  :class:`sbnnumba.training.resident.CudaTrainer` (data, activations, parameters on the device).

Without a usable GPU it prints why and exits 0. ``--smoke`` runs every code path on tiny shapes
(also in numba's CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``) to check the script; those figures
mean nothing.

Usage: python bench/gpu.py [--repeats 10] [--smoke]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

# numba formats its warnings through colorama, re-wrapping sys.stdout each time; the simulator's kernel
# threads race on that and the wrappers nest until a print raises RecursionError (seen in --smoke runs)
os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")

try:  # a module global: numba's CUDA simulator swaps the global ``cuda`` inside kernels
    from numba import cuda, float32
except ImportError:  # reported by sbnnumba.backends.cuda.device.unavailable_reason() in main()
    cuda = float32 = None

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GEMM_SHAPES = [(1024, 1024, 1024), (4096, 4096, 4096), (256, 4096, 4096)]  # (M, N, K)
DENSE_SHAPES = [(128, 1024, 1024), (256, 4096, 4096)]  # (B, N_in, N_out)
CONV_SHAPES = [(64, 96, 32, 32, 96, 3), (64, 192, 16, 16, 192, 3)]  # (B, C_in, H, W, C_out, k), padding 1
SMOKE = dict(gemm=[(5, 7, 70)], dense=[(3, 5, 7)], conv=[(2, 3, 5, 4, 4, 3)])


# ---------------------------------------------------------------------------------------------------
# Baseline SGEMM (numba.cuda), used when CuPy is not installed
# ---------------------------------------------------------------------------------------------------

def _sgemm_kernel():
    tile, tk, per = 64, 16, 4  # block tile 64 x 64, K tile 16, 4 x 4 outputs per thread (16 x 16 threads)

    @cuda.jit(fastmath=True)
    def sgemm(a, b, c):
        # c[i, j] = sum_k a[i, k] b[j, k]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        i0, j0 = cuda.blockIdx.y * tile, cuda.blockIdx.x * tile
        m, n, kk = a.shape[0], b.shape[0], a.shape[1]
        sa = cuda.shared.array((tk, tile), float32)
        sb = cuda.shared.array((tk, tile), float32)
        acc = cuda.local.array((per, per), float32)
        for r in range(per):
            for s in range(per):
                acc[r, s] = 0
        tid = ty * 16 + tx
        for k0 in range(0, kk, tk):
            for t in range(tid, tk * tile, 256):
                row = t // tk
                col = t - row * tk
                sa[col, row] = a[i0 + row, k0 + col] if (i0 + row < m and k0 + col < kk) else float32(0)
                sb[col, row] = b[j0 + row, k0 + col] if (j0 + row < n and k0 + col < kk) else float32(0)
            cuda.syncthreads()
            for q in range(tk):
                for r in range(per):
                    av = sa[q, ty + 16 * r]
                    for s in range(per):
                        acc[r, s] += av * sb[q, tx + 16 * s]
            cuda.syncthreads()
        for r in range(per):
            for s in range(per):
                i, j = i0 + ty + 16 * r, j0 + tx + 16 * s
                if i < m and j < n:
                    c[i, j] = acc[r, s]

    def run(a, b, c):
        sgemm[(-(-b.shape[0] // tile), -(-a.shape[0] // tile)), (16, 16)](a, b, c)

    return run


def make_sgemm():
    """(name, fn(a, b, c)): float32 ``c = a @ b.T`` on device arrays."""
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        def run(a, b, c):
            ca, cb_, cc = (cupy.asarray(x) for x in (a, b, c))
            cupy.matmul(ca, cb_.T, out=cc)
        return "cuBLAS (CuPy)", run
    kernel = _sgemm_kernel()
    return "numba.cuda tiled SGEMM (this script; slower than cuBLAS)", kernel


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------

def gpu_time(fn, repeats):
    """Median seconds of ``fn()`` by CUDA events (one warm-up call first)."""
    fn()
    cuda.synchronize()
    times = []
    for _ in range(max(1, repeats)):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cuda.event_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def wall_time(fn, repeats):
    """Median wall seconds of ``fn()`` up to device synchronization (one warm-up call first)."""
    fn()
    cuda.synchronize()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, 1, -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------

def bench_gemm(shapes, sgemm, timer, repeats, rng):
    from sbnnumba import bitpack
    from sbnnumba.backends import get_backend
    from sbnnumba.kernels.bitpack import PreparedWeights
    cb = get_backend("cuda")
    print("\nXNOR-popcount GEMM vs float32 GEMM, (M, N, K):")
    for m, n, k in shapes:
        a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
        da, db, dc = cuda.to_device(a), cuda.to_device(b), cuda.device_array((m, n), np.float32)
        aw, bw = cuda.to_device(bitpack.pack(a)), PreparedWeights(cuda.to_device(bitpack.pack(b)))
        t_f = timer(lambda: sgemm(da, db, dc), repeats)
        t_x = timer(lambda: cb.xnor_matmul(aw, bw, k), repeats)
        ops = 2.0 * m * n * k
        print(f"  ({m}, {n}, {k}): sgemm {t_f * 1e3:8.3f} ms ({ops / t_f / 1e12:6.2f} TFLOP/s)   "
              f"xnor {t_x * 1e3:8.3f} ms ({ops / t_x / 1e12:6.2f} Tbinop/s)   speed-up {t_f / t_x:5.2f}x")


def bench_dense(shapes, sgemm, timer, repeats, rng):
    from sbnnumba.backends import get_backend
    from sbnnumba.noise import get_noise
    cb, logistic, normal = get_backend("cuda"), get_noise("logistic"), get_noise("normal")
    print("\nPSA dense flip propagation vs the backprop GEMM of the same layer, (B, N_in, N_out):")
    for b, n_in, n_out in shapes:
        x_in = _pm1(rng, (b, n_in))
        w = (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        a = (x_in @ w.T).astype(np.float32)
        x_out = np.where(rng.random(a.shape) < 1 / (1 + np.exp(-a)), 1, -1).astype(np.float32)
        d_out = rng.normal(size=a.shape).astype(np.float32)
        dev = [cuda.to_device(t) for t in (x_in, a, x_out, w, d_out)]
        g_a, dw_t, dc = cuda.to_device(d_out), cuda.to_device(np.ascontiguousarray(w.T)), cuda.device_array(
            (b, n_in), np.float32)
        conns = float(b) * n_in * n_out
        t_gemm = timer(lambda: sgemm(g_a, dw_t, dc), repeats)
        t_ratio = timer(lambda: cb.flip_propagate_dense(*dev, logistic), repeats)
        t_generic = timer(lambda: cb.flip_propagate_dense(*dev, normal), repeats)
        t_host = wall_time(lambda: cb.flip_propagate_dense(x_in, a, x_out, w, d_out, logistic), repeats)
        print(f"  ({b}, {n_in}, {n_out}): gemm {t_gemm * 1e3:8.3f} ms | ratio {t_ratio * 1e3:8.3f} ms "
              f"({conns / t_ratio / 1e9:7.1f} Gconn/s, {t_ratio / t_gemm:5.2f}x gemm) | generic (normal) "
              f"{t_generic * 1e3:8.3f} ms ({conns / t_generic / 1e9:7.1f} Gconn/s) | ratio from NumPy arrays "
              f"{t_host * 1e3:8.3f} ms (wall, with transfers)")


def bench_conv(shapes, sgemm, timer, repeats, rng):
    from sbnnumba.backends import get_backend
    from sbnnumba.kernels import conv_reference
    from sbnnumba.noise import get_noise
    cb, logistic, normal = get_backend("cuda"), get_noise("logistic"), get_noise("normal")
    print("\nPSA conv flip propagation (3x3-type kernels, padding 1) vs the im2col GEMM of the layer, "
          "(B, C_in, H, W, C_out, k):")
    for b, c_in, h, w_, c_out, k in shapes:
        x_in = _pm1(rng, (b, c_in, h, w_))
        w = (rng.normal(size=(c_out, c_in, k, k)) / np.sqrt(c_in * k * k)).astype(np.float32)
        a = np.ascontiguousarray(conv_reference.conv_forward(x_in, w, np.zeros(c_out, np.float32), (1, 1), (1, 1)),
                                 dtype=np.float32)
        x_out = np.where(rng.random(a.shape) < 1 / (1 + np.exp(-a)), 1, -1).astype(np.float32)
        d_out = rng.normal(size=a.shape).astype(np.float32)
        dev = [cuda.to_device(t) for t in (x_in, a, x_out, w, d_out)]
        ho, wo = a.shape[2:]
        rows, depth = b * ho * wo, c_in * k * k
        ga = cuda.to_device(rng.normal(size=(rows, c_out)).astype(np.float32))
        wt = cuda.to_device(rng.normal(size=(depth, c_out)).astype(np.float32))
        out = cuda.device_array((rows, depth), np.float32)
        conns = float(rows) * c_out * depth
        t_gemm = timer(lambda: sgemm(ga, wt, out), repeats)
        t_ratio = timer(lambda: cb.flip_propagate_conv(*dev, (1, 1), (1, 1), logistic), repeats)
        t_generic = timer(lambda: cb.flip_propagate_conv(*dev, (1, 1), (1, 1), normal), repeats)
        print(f"  ({b}, {c_in}, {h}, {w_}, {c_out}, {k}): gemm {t_gemm * 1e3:8.3f} ms | ratio {t_ratio * 1e3:8.3f} ms "
              f"({conns / t_ratio / 1e9:7.1f} Gconn/s, {t_ratio / t_gemm:5.2f}x gemm) | generic (normal) "
              f"{t_generic * 1e3:8.3f} ms ({conns / t_generic / 1e9:7.1f} Gconn/s)")


def bench_training(repeats, rng, smoke):
    import sbnnumba as sb
    from sbnnumba.optim import SGD
    print("\nTraining step (PSA gradient estimate + SGD update), images/s, wall time, host arrays:")

    def dense(backend):
        sizes = [20, 16, 16] if smoke else [784, 1024, 1024, 1024]
        return sb.Network.dense(sizes, 10, rng=0, backend=backend)

    def conv(backend):
        r = np.random.default_rng(0)
        c1, c2 = (3, 4) if smoke else (64, 128)
        stages = [sb.Conv2d(1, c1, 3, padding=1, rng=r), sb.Conv2d(c1, c2, 3, stride=2, padding=1, rng=r)]
        hw = 4 if smoke else 14
        return sb.Network(stages, sb.Linear(c2 * hw * hw, 10, rng=r), backend=backend)

    batch = 4 if smoke else 128
    for name, make, shape in (("dense", dense, (20,) if smoke else (784,)),
                              ("conv", conv, (1, 8, 8) if smoke else (1, 28, 28))):
        x = rng.normal(size=(batch,) + shape).astype(np.float32)
        y = rng.integers(0, 10, size=batch)
        row = []
        for backend in ("cpu", "cuda"):
            net = make(backend)
            opt = SGD(lr=0.01)

            def step():
                _, grads = sb.estimate("psa", net, x, y, rng=1)
                opt.update(net.params, grads)

            step()
            t = statistics.median(_timed(step) for _ in range(max(1, repeats // 2)))
            row.append(f"{backend} {batch / t:9.1f} img/s")
        # the device-resident step (sbnnumba.training.resident): no transfers per step
        from sbnnumba.training.resident import CudaTrainer
        for method in ("psa", "st"):
            trainer = CudaTrainer(make("cuda"), method, SGD(lr=0.01), max_batch=batch, input_shape=shape)
            x_dev, y_dev = trainer.upload(x, y)
            trainer.step(x_dev, y_dev)
            cuda.synchronize()

            def device_step():
                trainer.step(x_dev, y_dev)
                cuda.synchronize()

            t = statistics.median(_timed(device_step) for _ in range(max(1, repeats // 2)))
            row.append(f"cuda device-resident {method} {batch / t:9.1f} img/s")
        print(f"  {name} (batch {batch}): " + "  ".join(row))


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, every code path (figures meaningless)")
    args = parser.parse_args(argv)
    from sbnnumba.backends.cuda import device as cb
    reason = cb.unavailable_reason()
    if reason is not None:
        print(f"No usable CUDA GPU ({reason}); nothing to benchmark. See docs/guide/gpu.md.")
        return 0
    if cb.in_simulator() and not args.smoke:
        print("numba's CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1): not a benchmark; use --smoke to check "
              "the script.")
        return 0
    try:
        from common import machine_info
        machine_info()
    except ImportError:
        pass
    if not cb.in_simulator():
        dev = cuda.get_current_device()
        print(f"GPU: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, "
              f"compute capability {dev.compute_capability}")
    sgemm_name, sgemm = make_sgemm() if not cb.in_simulator() else ("numba.cuda tiled SGEMM", _sgemm_kernel())
    print(f"float32 GEMM baseline: {sgemm_name}")
    timer = wall_time if cb.in_simulator() else gpu_time
    repeats = 1 if args.smoke else args.repeats
    rng = np.random.default_rng(0)
    bench_gemm(SMOKE["gemm"] if args.smoke else GEMM_SHAPES, sgemm, timer, repeats, rng)
    bench_dense(SMOKE["dense"] if args.smoke else DENSE_SHAPES, sgemm, timer, repeats, rng)
    bench_conv(SMOKE["conv"] if args.smoke else CONV_SHAPES, sgemm, timer, repeats, rng)
    bench_training(repeats, rng, args.smoke)
    if args.smoke:
        print("\n(--smoke: tiny shapes; the figures above mean nothing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
