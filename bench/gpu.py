r"""GPU speed against the device's own limits (issue #40): GEMM, PSA flip kernels, device-resident steps, an epoch.

Prints, in one run on one device:

1. the device and its float32 FMA rate, derived from numba.cuda's attributes:
   ``SMs x FP32 lanes per SM x clock`` (lanes per SM from the compute capability, :data:`FP32_LANES`;
   the clock is the device's reported maximum, ``CLOCK_RATE``), in FMA/s;
2. the tiled GEMM of the device-resident step (:func:`sbnnumba.backends.cuda.gemm.gemm`) at 4096^3 and
   at the training shapes (the forward, weight-gradient and ST-backward products of the dense and
   paper conv networks), as a fraction of cuBLAS SGEMM on the same operands (CuPy, when installed;
   else only TFLOP/s and the fraction of the FMA rate), for each tile configuration of
   :data:`GEMM_CONFIGS`;
3. the dense and conv PSA flip kernels (logistic ratio form, and the dense generic form with normal
   noise): connections/s as a fraction of the FMA rate (one FMA per connection), the kernel alone
   and the whole backend call (preparation, exp-kernel cached, saturation check);
4. images/s of the device-resident PSA and ST steps (:class:`sbnnumba.training.resident.CudaTrainer`) of
   the dense 784-1024-1024-1024 network and the paper conv network (width 1.0) at batch 64 and 256,
   and the conv PSA / ST time ratio;
5. the XNOR-popcount GEMM at 4096^3 against SGEMM (cuBLAS, else the tiled GEMM);
6. seconds per Fashion-MNIST epoch (60,000 images) of the paper conv network with PSA, batch 64
   (device-resident, the first step's compilation excluded). Without the full data set it uses the
   embedded subset repeated to 60,000 images, and says so.

Run on a machine with an NVIDIA GPU: ``python bench/gpu.py`` (``--repeats``, ``--skip-epoch``).
Without a usable GPU it says why and exits 0. ``--smoke`` runs every section on tiny shapes, also
in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), to check the script; its figures mean nothing.
"""
import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

# numba formats its warnings through colorama, re-wrapping sys.stdout each time; the simulator's kernel
# threads race on that and the wrappers nest until a print raises RecursionError (seen in --smoke runs)
os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: FP32 lanes (FMA per clock) per SM by compute capability (NVIDIA's CUDA C++ Programming Guide,
#: "Arithmetic Instructions" table); other capabilities: 128.
FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}
#: Tile configurations of the GEMM tried at every shape (the first is the library's default).
GEMM_CONFIGS = (None, dict(tile_m=128, tile_n=128, tile_k=8, thread_m=8, thread_n=8),
                dict(tile_m=128, tile_n=64, tile_k=16, thread_m=8, thread_n=4))
DENSE_SIZES = [784, 1024, 1024, 1024]
BATCHES = (64, 256)
SMOKE_BATCHES = (2,)


def device_info(cuda):
    """Print the device and return its float32 FMA rate (FMA/s), or None in the simulator."""
    from sbnnumba.backends.cuda import device as cb
    if cb.in_simulator():
        print("device: numba's CUDA simulator (figures below mean nothing)")
        return None
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    cc = tuple(dev.compute_capability)
    sms, clock_khz = dev.MULTIPROCESSOR_COUNT, dev.CLOCK_RATE
    lanes = FP32_LANES.get(cc, 128)
    rate = sms * lanes * clock_khz * 1e3
    print(f"device: {name}, compute capability {cc[0]}.{cc[1]}, {sms} SMs, max clock {clock_khz / 1e6:.3f} GHz")
    print(f"float32 FMA rate = {sms} SMs x {lanes} FP32 lanes x {clock_khz / 1e6:.3f} GHz = {rate / 1e12:.2f} "
          f"TFMA/s ({2 * rate / 1e12:.1f} TFLOP/s)")
    return rate


def timer(cuda, simulator, repeats):
    """``time(fn)``: median seconds of ``fn()`` after one warm-up call (CUDA events on a device; in the
    simulator wall time and no warm-up)."""
    def time_it(fn):
        if not simulator:
            fn()
            cuda.synchronize()
        times = []
        for _ in range(repeats):
            if simulator:
                start = time.perf_counter()
                fn()
                cuda.synchronize()
                times.append(time.perf_counter() - start)
            else:
                t0, t1 = cuda.event(), cuda.event()
                t0.record()
                fn()
                t1.record()
                t1.synchronize()
                times.append(cuda.event_elapsed_time(t0, t1) / 1e3)
        return statistics.median(times)
    return time_it


def _cublas():
    try:
        import cupy
    except ImportError:
        return None

    def run(a, b, c, trans_a, trans_b):
        ca, cb_ = cupy.asarray(a), cupy.asarray(b)
        cupy.matmul(ca.T if trans_a else ca, cb_.T if trans_b else cb_, out=cupy.asarray(c))
    return run


def gemm_shapes(smoke):
    """``(label, M, N, K, trans_a, trans_b)``: 4096^3 and the GEMMs of the dense and conv training steps."""
    if smoke:
        return [("smoke", 5, 7, 9, ta, tb) for ta, tb in ((False, True), (True, False), (False, False))]
    out = [("4096^3", 4096, 4096, 4096, False, False)]
    for b in BATCHES:  # dense 1024 -> 1024 layer: forward, weight gradient, ST backward
        out += [(f"dense fwd B={b}", b, 1024, 1024, False, True), (f"dense dW B={b}", 1024, 1024, b, True, False),
                (f"dense bwd B={b}", b, 1024, 1024, False, False)]
    for b, (c_in, c_out, hw) in ((64, (96, 96, 24)), (64, (192, 192, 7))):  # paper conv stages 2 and 5 (28x28)
        rows, depth = b * hw * hw, c_in * 9
        out += [(f"conv {c_in}->{c_out} {hw}x{hw} fwd B={b}", rows, c_out, depth, False, True),
                (f"conv {c_in}->{c_out} {hw}x{hw} dW B={b}", c_out, depth, rows, True, False),
                (f"conv {c_in}->{c_out} {hw}x{hw} bwd B={b}", rows, depth, c_out, False, False)]
    return out


def bench_gemm(cuda, time_it, fma_rate, smoke, rng):
    from sbnnumba.backends.cuda.gemm import gemm
    cublas = _cublas()
    print("\nGEMM c = op(a) op(b), float32" + ("" if cublas else " (CuPy not installed: no cuBLAS baseline)"))
    configs = (dict(tile_m=4, tile_n=4, tile_k=2, thread_m=2, thread_n=2),) if smoke else GEMM_CONFIGS
    for label, m, n, k, ta, tb in gemm_shapes(smoke):
        a = cuda.to_device(rng.normal(size=(k, m) if ta else (m, k)).astype(np.float32))
        b = cuda.to_device(rng.normal(size=(n, k) if tb else (k, n)).astype(np.float32))
        c = cuda.device_array((m, n), np.float32)
        flop = 2.0 * m * n * k
        t_ref = time_it(lambda: cublas(a, b, c, ta, tb)) if cublas else None
        parts = [f"cuBLAS {flop / t_ref / 1e12:6.2f} TFLOP/s"] if t_ref else []
        for cfg in configs:
            t = time_it(lambda: gemm(a, b, c, ta, tb, tiles=cfg))
            tag = "default" if cfg is None else f"{cfg['tile_m']}x{cfg['tile_n']}/{cfg['thread_m']}x{cfg['thread_n']}"
            part = f"{tag} {flop / t / 1e12:6.2f} TFLOP/s"
            if t_ref:
                part += f" = {t_ref / t:5.1%} of cuBLAS"
            if fma_rate:
                part += f", {flop / 2 / t / fma_rate:5.1%} of FMA rate"
            parts.append(part)
        print(f"  {label} ({m}, {n}, {k}, ta={int(ta)}, tb={int(tb)}): " + " | ".join(parts))


def bench_xnor(cuda, time_it, smoke, rng):
    """XNOR-popcount GEMM (bit-packed +-1 operands) against the float32 GEMM of the same shape."""
    from sbnnumba import bitpack
    from sbnnumba.backends import get_backend
    from sbnnumba.backends.cuda.gemm import gemm
    from sbnnumba.kernels.bitpack import PreparedWeights
    cublas = _cublas()
    m, n, k = (5, 7, 70) if smoke else (4096, 4096, 4096)
    a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
    da, db, dc = cuda.to_device(a), cuda.to_device(b), cuda.device_array((m, n), np.float32)
    aw, bw = cuda.to_device(bitpack.pack(a)), PreparedWeights(cuda.to_device(bitpack.pack(b)))
    t_x = time_it(lambda: get_backend("cuda").xnor_matmul(aw, bw, k))
    name, t_f = ("cuBLAS SGEMM", time_it(lambda: cublas(da, db, dc, False, True))) if cublas else \
        ("the tiled float32 GEMM", time_it(lambda: gemm(da, db, dc, trans_b=True)))
    print(f"\nXNOR-popcount GEMM ({m}, {n}, {k}): {2.0 * m * n * k / t_x / 1e12:6.2f} Tbinop/s, "
          f"{t_f / t_x:5.2f}x the speed of {name} on the same shape")


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, 1, -1).astype(np.float32)


def bench_flip(cuda, time_it, fma_rate, smoke, rng):
    from sbnnumba.backends.cuda import conv_flip, dense_flip, ops
    from sbnnumba.backends.cuda.device import blocks
    from sbnnumba.kernels import conv_reference
    from sbnnumba.kernels.cpu import ratio_limits
    from sbnnumba.kernels.scalar import NOISE_CODES

    clip = ratio_limits(np.float32)[1]  # the library's clip of 2W

    def frac(conns, t):
        return f"{conns / t / 1e9:8.1f} Gconn/s" + (f" = {conns / t / fma_rate:5.1%} of FMA rate" if fma_rate else "")

    print("\nPSA flip kernels, float32 (one FMA per connection):")
    dense = [(3, 5, 7)] if smoke else [(64, 1024, 1024), (256, 1024, 1024), (256, 4096, 4096)]
    for b, n_in, n_out in dense:
        x_in, w = _pm1(rng, (b, n_in)), (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        a = (x_in @ w.T).astype(np.float32)
        dev = [cuda.to_device(t) for t in (x_in, a, _pm1(rng, a.shape), w, rng.normal(size=a.shape).astype(np.float32))]
        e, g = cuda.to_device(np.exp(-a)), cuda.to_device(rng.normal(size=a.shape).astype(np.float32))
        k = cuda.to_device(np.ascontiguousarray(np.exp(np.clip(2 * w.T, -clip, clip))))
        a_term, d_in = cuda.to_device(np.zeros(b, np.float32)), cuda.device_array((b, n_in), np.float32)
        cfg = dense_flip.DENSE_TILE
        kernel = dense_flip.dense_flip_ratio_kernel("float32", **cfg)[
            (blocks(n_in, cfg["tile_i"]), blocks(b, cfg["tile_b"])),
            (cfg["tile_i"] // cfg["inputs_per_thread"], cfg["tile_b"] // cfg["rows_per_thread"])]
        conns = float(b) * n_in * n_out
        t_kernel = time_it(lambda: kernel(dev[0], e, g, k, a_term, d_in))
        t_call = time_it(lambda: ops.flip_propagate_dense(*dev, 0, form="ratio"))
        t_generic = time_it(lambda: ops.flip_propagate_dense(*dev, NOISE_CODES["normal"], form="generic"))
        print(f"  dense (B, N_in, N_out) = ({b}, {n_in}, {n_out}): ratio kernel {frac(conns, t_kernel)} | "
              f"ratio call {t_call * 1e3:8.3f} ms | generic (normal) call {frac(conns, t_generic)}")
    conv = [(2, 3, 5, 4, 4, 3)] if smoke else [(64, 96, 26, 26, 96, 3), (256, 96, 26, 26, 96, 3),
                                               (64, 192, 9, 9, 192, 3), (256, 192, 9, 9, 192, 3)]
    for b, c_in, h, w_, c_out, kk in conv:
        x_in = _pm1(rng, (b, c_in, h, w_))
        w = (rng.normal(size=(c_out, c_in, kk, kk)) / np.sqrt(c_in * kk * kk)).astype(np.float32)
        a = np.ascontiguousarray(conv_reference.conv_forward(x_in, w, np.zeros(c_out, np.float32), (1, 1), (0, 0)),
                                 dtype=np.float32)
        ho, wo = a.shape[2:]
        dev = [cuda.to_device(t) for t in (x_in, a, _pm1(rng, a.shape), w, rng.normal(size=a.shape).astype(np.float32))]
        e, g = cuda.to_device(np.exp(-a)), cuda.to_device(rng.normal(size=a.shape).astype(np.float32))
        t_sum = cuda.to_device(np.zeros((b, ho, wo), np.float32))
        k = cuda.to_device(np.exp(np.clip(2 * w, -clip, clip)))
        d_in = cuda.device_array(x_in.shape, np.float32)
        conns = float(b) * c_out * ho * wo * c_in * kk * kk
        t_kernel = time_it(lambda: conv_flip.launch_flip_conv_ratio(dev[0], e, g, t_sum, k, (1, 1), (0, 0), d_in))
        t_call = time_it(lambda: ops.flip_propagate_conv(*dev, (1, 1), (0, 0), 0, form="ratio"))
        print(f"  conv (B, C_in, H, W, C_out, k) = ({b}, {c_in}, {h}, {w_}, {c_out}, {kk}): ratio kernel "
              f"{frac(conns, t_kernel)} | ratio call {t_call * 1e3:8.3f} ms")


def _networks(smoke):
    import sbnnumba as sb
    if smoke:
        def conv():
            r = np.random.default_rng(0)
            stages = [sb.Conv2d(1, 2, 3, padding=1, rng=r), sb.Conv2d(2, 2, 3, stride=2, padding=1, rng=r)]
            return sb.Network(stages, sb.Linear(2 * 3 * 3, 10, rng=r))
        return {"dense": (lambda: sb.Network.dense([8, 4, 3], 10, rng=0), (8,)), "conv": (conv, (1, 6, 6))}
    from sbnnumba import architectures
    return {"dense": (lambda: sb.Network.dense(DENSE_SIZES, 10, rng=0), (DENSE_SIZES[0],)),
            "conv": (lambda: architectures.build("conv", (1, 28, 28), 10, width=1.0, rng=0), (1, 28, 28))}


def bench_steps(cuda, repeats, smoke, rng):
    from sbnnumba.optim import SGD
    from sbnnumba.training.resident import CudaTrainer
    print("\nDevice-resident training steps (forward, backward, SGD update), images/s, wall time:")
    for name, (make, shape) in _networks(smoke).items():
        for batch in (SMOKE_BATCHES if smoke else BATCHES):
            x = rng.random((batch,) + shape).astype(np.float32)
            y = rng.integers(0, 10, size=batch)
            seconds = {}
            for method in ("psa", "st"):
                trainer = CudaTrainer(make(), method, SGD(lr=0.01), max_batch=batch, input_shape=shape)
                x_dev, y_dev = trainer.upload(x, y)

                def step():
                    trainer.step(x_dev, y_dev)
                    cuda.synchronize()

                if not smoke:
                    step()  # compiles the step's kernels
                seconds[method] = statistics.median(_wall(step) for _ in range(repeats))
            print(f"  {name} batch {batch}: PSA {batch / seconds['psa']:10.1f} img/s, ST {batch / seconds['st']:10.1f} "
                  f"img/s, PSA / ST time {seconds['psa'] / seconds['st']:5.2f}")


def _wall(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_epoch(cuda, smoke, batch):
    from sbnnumba import datasets
    from sbnnumba.optim import SGD
    from sbnnumba.training.resident import CudaTrainer
    make, shape = _networks(smoke)["conv"]
    if smoke:
        x = np.random.default_rng(0).random((2,) + shape).astype(np.float32)
        y, what, batch = np.arange(2), "2 random images", 2
    else:
        ds = datasets.load_fashion_mnist(verbose=False)
        x, y = datasets.normalize(ds.x_train), ds.y_train
        what = f"{ds.name} ({len(y)} training images)"
        if len(y) < 60000:  # the embedded subset: repeated to the size of the real training set
            reps = -(-60000 // len(y))
            x, y = np.concatenate([x] * reps)[:60000], np.concatenate([y] * reps)[:60000]
            what += ", repeated to 60000 images (the full set was not found)"
    trainer = CudaTrainer(make(), "psa", SGD(lr=0.01), max_batch=batch, input_shape=shape)
    x_dev, y_dev = trainer.upload(x, y)
    if not smoke:
        trainer.step(x_dev[:batch], y_dev[:batch])  # compiles every kernel of the step
        cuda.synchronize()
    start = time.perf_counter()
    loss = trainer.train_epoch(x_dev, y_dev, batch, rng=0)
    cuda.synchronize()
    seconds = time.perf_counter() - start
    network = "smoke" if smoke else "paper (width 1.0)"
    print(f"\nEpoch of the {network} conv network with PSA, batch {batch}, on {what}: "
          f"{seconds:.2f} s ({len(y) / seconds:.0f} img/s; mean loss {loss:.3f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epoch-batch", type=int, default=64)
    parser.add_argument("--skip-epoch", action="store_true", help="leave out section 6 (the epoch)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, every section (figures meaningless)")
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
    from numba import cuda
    if cb.in_simulator():  # the simulator's xoroshiro128+ emulation warns of (intended) integer overflow
        warnings.simplefilter("ignore", RuntimeWarning)
    fma_rate = device_info(cuda)
    repeats = 1 if args.smoke else max(1, args.repeats)
    time_it = timer(cuda, cb.in_simulator(), repeats)
    rng = np.random.default_rng(0)
    bench_gemm(cuda, time_it, fma_rate, args.smoke, rng)
    bench_xnor(cuda, time_it, args.smoke, rng)
    bench_flip(cuda, time_it, fma_rate, args.smoke, rng)
    bench_steps(cuda, repeats, args.smoke, rng)
    if not args.skip_epoch:
        bench_epoch(cuda, args.smoke, args.epoch_batch)
    if args.smoke:
        print("\nsmoke: done (tiny shapes; the figures above mean nothing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
