"""Checks of the numba.cuda kernels against the NumPy references, run in a subprocess by tests/test_cuda.py.

numba reads ``NUMBA_ENABLE_CUDASIM`` when it is imported, so the simulator can only be switched on for
a whole process: tests/test_cuda.py runs this script with the variable set (``--mode sim``), and the
rest of the test suite is unaffected. Modes:

* ``sim``: every check in numba's CUDA simulator (requires ``NUMBA_ENABLE_CUDASIM=1``);
* ``device``: the same checks on a real GPU;
* ``ptx``: no device needed: compiles every kernel to PTX for a real GPU (``cuda.compile_ptx``,
  needs libNVVM), which checks the typing and code generation that the simulator does not.

Each check prints one line ``CHECK {"name": ..., "ok": ..., "error": ..., "seconds": ...}``; the exit
code is 0 when all checks pass, 1 when one fails, 3 (with a ``SKIP reason`` line) when the mode cannot
run here (no numba.cuda, or no libNVVM for ``ptx``). Shapes are tiny (the simulator runs every thread
as a Python thread) but chosen so that grids have several blocks and partial tiles in every dimension.

Usage: NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_checks.py [--mode sim] [--only name,name]
"""
import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NOISES = ("logistic", "normal", "uniform", "triangular")
SMALL_DENSE_TILES = dict(tile_i=4, tile_b=4, rows_per_thread=2, tile_j=3)
SMALL_GEMM_TILES = dict(tile_n=4, tile_m=4, rows_per_thread=2, tile_w=1)
SMALL_THRESHOLD_TILES = dict(tile_m=4, rows_per_thread=2, tile_w=1)


def close(got, want, name, rtol=1e-4, atol=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != {want.shape}")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.abs(got - want).max()
        raise AssertionError(f"{name}: max abs error {err:.3g} (scale {np.abs(want).max():.3g})")


def equal(got, want, name):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
        raise AssertionError(f"{name}: arrays differ (got {got.dtype}{got.shape}, want {want.dtype}{want.shape}, "
                             f"{np.sum(got != want) if got.shape == want.shape else 'n/a'} entries differ)")


def pm1(rng, shape, dtype=np.float32):
    return np.where(rng.random(shape) < 0.5, 1, -1).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# Problem generators
# ---------------------------------------------------------------------------------------------------

def dense_problem(rng, noise, b=3, n_in=5, n_out=7, dtype=np.float32, scale=1.0):
    from sbnnumba.noise import get_noise
    x_in = pm1(rng, (b, n_in), dtype)
    w = (scale * rng.normal(size=(n_out, n_in))).astype(dtype)
    bias = rng.normal(size=n_out).astype(dtype)
    a = (x_in @ w.T + bias).astype(dtype)
    x_out = get_noise(noise).sample(a, rng.random(a.shape).astype(dtype))
    d_out = rng.normal(size=a.shape).astype(dtype)
    return x_in, a, x_out, w, d_out


def conv_problem(rng, noise, kernel, stride, padding, b=2, c_in=3, hw=(5, 4), c_out=4, dtype=np.float32, scale=1.0):
    from sbnnumba.kernels import conv_reference
    from sbnnumba.noise import get_noise
    x_in = pm1(rng, (b, c_in) + hw, dtype)
    w = (scale * rng.normal(size=(c_out, c_in) + kernel)).astype(dtype)
    bias = rng.normal(size=c_out).astype(dtype)
    a = conv_reference.conv_forward(x_in, w, bias, stride, padding).astype(dtype)
    x_out = get_noise(noise).sample(a, rng.random(a.shape).astype(dtype))
    d_out = rng.normal(size=a.shape).astype(dtype)
    return tuple(np.ascontiguousarray(t) for t in (x_in, a, x_out, w, d_out))


def as64(*arrays):
    return [np.asarray(t, np.float64) for t in arrays]


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------

def check_dense_flip():
    """Dense PSA flip propagation: every noise, both forms, small tiles (several blocks, partial tiles)."""
    from sbnnumba.kernels import cuda_backend as cb, reference
    from sbnnumba.kernels.scalar import NOISE_CODES
    rng = np.random.default_rng(0)
    for noise in NOISES:
        forms = ("ratio", "generic") if noise == "logistic" else ("generic",)
        for form in forms:
            for shape in ((3, 5, 7), (6, 9, 4)):
                prob = dense_problem(rng, noise, *shape)
                want = reference.flip_propagate_dense(*as64(*prob[:4]), np.float64(prob[4]), noise)
                got = cb.flip_propagate_dense(*prob, NOISE_CODES[noise], form=form, tiles=SMALL_DENSE_TILES)
                if got.dtype != np.float32 or got.shape != prob[0].shape:
                    raise AssertionError(f"dense {noise}/{form}: got {got.dtype}{got.shape}")
                close(got, want, f"dense {noise}/{form} {shape}")


def check_dense_flip_default_tiles():
    """Default tile configuration (one partial block of 256 threads) and float64."""
    from sbnnumba.kernels import cpu, cuda_backend as cb, reference
    rng = np.random.default_rng(1)
    for noise, code, dtype in (("logistic", 0, np.float32), ("normal", 1, np.float32), ("logistic", 0, np.float64),
                               ("triangular", 3, np.float64)):
        prob = dense_problem(rng, noise, 3, 5, 7, dtype=dtype)
        want = reference.flip_propagate_dense(*as64(*prob), noise)
        got = cb.flip_propagate_dense(*prob, code)
        if got.dtype != dtype:
            raise AssertionError(f"dense default {noise}: dtype {got.dtype} != {dtype}")
        close(got, want, f"dense default {noise} {np.dtype(dtype).name}", atol=2e-5 if dtype == np.float32 else 1e-12,
              rtol=1e-4 if dtype == np.float32 else 1e-10)
        close(got, cpu.flip_propagate_dense(*prob, code), f"dense default vs cpu {noise}")


def check_dense_flip_saturated():
    """Ratio form with saturated units (|a| > A, summed exactly by the generic kernel) and clipped 2W:
    a few saturated units, every unit saturated and huge weights; float32 and float64, as on the CPU."""
    from sbnnumba.kernels import cpu, cuda_backend as cb, reference
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        limit = cpu.ratio_limits(dtype)[0]
        prob = list(dense_problem(rng, "logistic", 6, 9, 7, dtype=dtype))
        # two saturated units, one per sign, in different examples, whose large weights (|2W| ~ 40) make
        # their flip terms large: a wrong or missing exact pass changes the result by O(1)
        prob[3][[2, 5]] *= 20
        prob[1][1, 2] = limit + 0.5
        prob[1][4, 5] = -(limit + 3.0)
        mixed = prob
        huge = list(dense_problem(rng, "logistic", 3, 5, 7, dtype=dtype, scale=3 * limit))  # |a|, |2W| >> A
        for name, p in (("mixed", mixed), ("all saturated", huge)):
            want = reference.flip_propagate_dense(*as64(*p), "logistic")
            got = cb.flip_propagate_dense(*p, 0, form="ratio", tiles=SMALL_DENSE_TILES)
            if not np.all(np.isfinite(got)):
                raise AssertionError(f"dense {name}: non-finite output")
            tol = dict(rtol=1e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
            close(got, want, f"dense {name} {np.dtype(dtype).name}", **tol)
            close(got, cpu.flip_propagate_dense(*p, 0, form="ratio"), f"dense {name} vs cpu", **tol)


def check_inert_saturated_skip_the_exact_pass(rng):
    """Saturated units whose flips stay in sigma's flat tail (|a| - 2 max|W| > T) are inert: with only
    those, the ratio-form preparation reports no exact pass (d_sat None) and the result still matches
    the float64 reference; a large weight that makes one of them active brings the pass back (dense
    and conv)."""
    from numba import cuda
    from sbnnumba.kernels import conv_reference, cpu, cuda_backend as cb, reference
    limit, flat = cpu.ratio_limits(np.float32)[0], cpu.SIGMA_FLAT[np.dtype(np.float32)]

    dense = list(dense_problem(rng, "logistic", 4, 9, 7))
    r = cpu.flip_reach(dense[3])
    dense[1][0, 2] = limit + flat + r[2] + 1
    dense[1][3, 5] = -(limit + flat + r[5] + 4)
    kernel, stride, padding = (3, 3), (1, 1), (1, 1)
    conv = list(conv_problem(rng, "logistic", kernel, stride, padding))
    r = cpu.flip_reach(conv[3])
    conv[1][0, 1] = limit + flat + r[1] + 2  # a whole inert map
    conv[1][1, 0, 0, 1] = -(limit + flat + r[0] + 1)
    cases = (
        ("dense", dense, 1, lambda p: reference.flip_propagate_dense(*as64(*p), "logistic"),
         lambda p: cb.flip_propagate_dense(*p, 0, form="ratio", tiles=SMALL_DENSE_TILES)),
        ("conv", conv, conv[1].shape[2] * conv[1].shape[3],
         lambda p: conv_reference.flip_propagate_conv(*as64(*p), stride, padding, "logistic"),
         lambda p: cb.flip_propagate_conv(*p, stride, padding, 0, form="ratio")),
    )
    for name, prob, inner, want_of, got_of in cases:
        for active in (False, True):
            p = [t.copy() for t in prob]
            if active:  # a large weight lets one saturated unit cross sigma's range
                p[3][np.argwhere(np.abs(p[1]) > limit)[0][1]].flat[0] = 2 * limit
            a = p[1]
            n_active = cpu.active_saturated(a, p[3]).sum()
            if (np.abs(a) > limit).sum() == 0 or (n_active > 0) != active:
                raise AssertionError(f"{name}: expected saturated units, {'some' if active else 'none'} active")
            parts = cb._ratio_units(*(cuda.to_device(np.ascontiguousarray(t)) for t in (a, p[2], p[4])),
                                    np.dtype(np.float32), cuda.to_device(p[3]), None, inner)
            if (parts[3] is not None) != active:
                raise AssertionError(f"{name}: exact pass {'missing' if active else 'run'} with "
                                     f"{'one active' if active else 'only inert'} saturated units")
            close(got_of(p), want_of(p), f"{name} inert saturated (active unit: {active})")


def check_dense_flip_device_arrays():
    """Device arrays in -> device array out, no copies of the inputs; the result matches."""
    from numba import cuda
    from sbnnumba.kernels import cuda_backend as cb, reference
    rng = np.random.default_rng(3)
    prob = dense_problem(rng, "logistic", 3, 5, 7)
    dev = [cuda.to_device(t) for t in prob]
    got = cb.flip_propagate_dense(*dev, 0, tiles=SMALL_DENSE_TILES)
    if not cb.is_device_array(got):
        raise AssertionError(f"device inputs: expected a device array, got {type(got).__name__}")
    close(got.copy_to_host(), reference.flip_propagate_dense(*as64(*prob), "logistic"), "dense device arrays")
    # mixed host/device inputs also give a device array
    got2 = cb.flip_propagate_dense(prob[0], dev[1], prob[2], prob[3], prob[4], 0)
    if not cb.is_device_array(got2):
        raise AssertionError("mixed inputs: expected a device array")
    close(got2.copy_to_host(), got.copy_to_host(), "dense mixed inputs")
    try:
        cb.flip_propagate_dense(dev[0], cuda.to_device(prob[1].astype(np.float64)), *dev[2:], 0)
    except TypeError as exc:
        if "x_in" not in str(exc):
            raise AssertionError(f"dtype mismatch message should name the argument: {exc}")
    else:
        raise AssertionError("device arrays of mixed dtypes should raise TypeError")


CONV_GEOMETRIES = (  # (kernel, stride, padding)
    ((3, 3), (1, 1), (1, 1)), ((2, 3), (2, 1), (0, 1)), ((3, 2), (2, 2), (1, 0)), ((1, 1), (1, 1), (0, 0)))


def check_conv_flip():
    """Conv PSA flip propagation (direct form): kernels, strides and paddings, every noise and form."""
    from sbnnumba.kernels import conv_reference, cuda_backend as cb
    from sbnnumba.kernels.scalar import NOISE_CODES
    rng = np.random.default_rng(4)
    for noise in NOISES:
        forms = ("ratio", "generic") if noise == "logistic" else ("generic",)
        for form in forms:
            for kernel, stride, padding in CONV_GEOMETRIES:
                prob = conv_problem(rng, noise, kernel, stride, padding)
                want = conv_reference.flip_propagate_conv(*as64(*prob), stride, padding, noise)
                got = cb.flip_propagate_conv(*prob, stride, padding, NOISE_CODES[noise], form=form)
                close(got, want, f"conv {noise}/{form} k{kernel} s{stride} p{padding}")


def check_conv_flip_extra():
    """float64, saturated units, device arrays, and agreement with the CPU kernel."""
    from numba import cuda
    from sbnnumba.kernels import conv_cpu, conv_reference, cuda_backend as cb
    rng = np.random.default_rng(5)
    kernel, stride, padding = (3, 3), (2, 1), (1, 1)
    prob = conv_problem(rng, "logistic", kernel, stride, padding, dtype=np.float64)
    want = conv_reference.flip_propagate_conv(*prob, stride, padding, "logistic")
    close(cb.flip_propagate_conv(*prob, stride, padding, 0), want, "conv float64", rtol=1e-10, atol=1e-12)
    prob = conv_problem(rng, "logistic", kernel, stride, padding, scale=30.0)  # all saturated, 2W clipped
    want = conv_reference.flip_propagate_conv(*as64(*prob), stride, padding, "logistic")
    close(cb.flip_propagate_conv(*prob, stride, padding, 0, form="ratio"), want, "conv all saturated")
    prob = conv_problem(rng, "logistic", kernel, stride, padding)
    prob[3][[1, 3]] *= 25  # large weights in two channels: flip terms of their saturated units are O(1)
    prob[1][0, 1, 1, 2] = 31.0  # two saturated units (A = 30 in float32) among unsaturated ones
    prob[1][1, 3, 0, 0] = -45.0
    want = conv_reference.flip_propagate_conv(*as64(*prob), stride, padding, "logistic")
    close(cb.flip_propagate_conv(*prob, stride, padding, 0, form="ratio"), want, "conv few saturated")
    check_inert_saturated_skip_the_exact_pass(rng)
    prob = conv_problem(rng, "logistic", kernel, stride, padding)
    got = cb.flip_propagate_conv(*[cuda.to_device(t) for t in prob], stride, padding, 0)
    if not cb.is_device_array(got):
        raise AssertionError("conv device inputs: expected a device array")
    close(got.copy_to_host(), conv_cpu.flip_propagate_conv(*prob, stride, padding, 0), "conv device vs cpu")


def _packed(rng, shape):
    from sbnnumba import bitpack
    x = pm1(rng, shape)
    return x, bitpack.pack(x)


def check_xnor_gemm():
    """XNOR-popcount GEMM (int32) vs the reference and sbnnumba.bitpack.matmul; K = 70, 130 bits."""
    from sbnnumba import bitpack
    from sbnnumba.kernels import bitpack as kb, cuda_backend as cb
    rng = np.random.default_rng(6)
    for k, m, n, tiles in ((70, 5, 7, SMALL_GEMM_TILES), (130, 5, 7, SMALL_GEMM_TILES), (130, 9, 6, SMALL_GEMM_TILES),
                           (70, 3, 5, None), (130, 33, 37, None), (64, 2, 3, None)):
        a, aw = _packed(rng, (m, k))
        b, bw = _packed(rng, (n, k))
        got = cb.xnor_matmul(aw, bw, k, tiles=tiles)
        equal(got, kb.matmul_reference(aw, bw, k), f"gemm k={k} {m}x{n}")
        equal(got, bitpack.matmul(aw, bw, k), f"gemm vs bitpack.matmul k={k}")
        equal(got, (a @ b.T).astype(np.int32), f"gemm vs float k={k}")
    a, aw = _packed(rng, (4, 70))
    b, bw = _packed(rng, (6, 70))
    equal(cb.xnor_matmul(aw, bitpack.prepare_weights(bw), 70), kb.matmul_reference(aw, bw, 70), "gemm prepared")
    from numba import cuda
    got = cb.xnor_matmul(cuda.to_device(aw), cuda.to_device(bw), 70)
    if not cb.is_device_array(got):
        raise AssertionError("gemm device inputs: expected a device array")
    equal(got.copy_to_host(), kb.matmul_reference(aw, bw, 70), "gemm device arrays")


def check_xnor_gemm_threshold():
    """Fused GEMM + threshold + packed output vs sbnnumba.bitpack.matmul_threshold (inf, flip, ties)."""
    from sbnnumba import bitpack
    from sbnnumba.kernels import bitpack as kb, cuda_backend as cb
    rng = np.random.default_rng(7)
    for k, m, n, tiles in ((70, 5, 7, SMALL_THRESHOLD_TILES), (130, 6, 70, SMALL_THRESHOLD_TILES),
                           (130, 3, 5, None), (70, 3, 70, None)):
        _, aw = _packed(rng, (m, k))
        _, bw = _packed(rng, (n, k))
        dots = kb.matmul_reference(aw, bw, k)
        t = rng.normal(scale=8, size=n)
        t[0] = dots[0, 0]  # a tie: dot == t gives +1
        if n > 2:
            t[1], t[2] = np.inf, -np.inf
        flip = rng.random(n) < 0.4
        variants = ((t, flip), (t, None), (2.5, None)) if tiles else ((t, flip),)
        for thresholds, fl in variants:
            got = cb.xnor_matmul_threshold(aw, bw, k, thresholds, fl, tiles=tiles)
            equal(got, kb.matmul_threshold_reference(aw, bw, k, np.ceil(np.clip(np.asarray(thresholds, float),
                                                                                  -(k + 2), k + 2)), fl),
                  f"gemm threshold k={k} {m}x{n}")
            equal(got, bitpack.matmul_threshold(aw, bw, k, thresholds, fl), f"gemm threshold vs bitpack k={k}")


def check_binary_conv():
    """Binary conv on packed maps (exact zero padding) and its fused threshold vs the references."""
    from sbnnumba import bitpack
    from sbnnumba.kernels import bitpack as kb, conv_reference, cuda_backend as cb
    rng = np.random.default_rng(8)
    for c_in in (3, 70):
        for kernel, stride, padding in CONV_GEOMETRIES:
            x, xw = _packed(rng, (2, 5, 4, c_in))
            w, ww = _packed(rng, (4,) + kernel + (c_in,))
            got = cb.binary_conv2d(xw, ww, c_in, stride, padding)
            name = f"binary conv c_in={c_in} k{kernel} s{stride} p{padding}"
            equal(got, kb.conv2d_reference(xw, ww, c_in, stride, padding), name)
            equal(got, bitpack.conv2d(xw, ww, c_in, stride, padding), name + " vs bitpack.conv2d")
            float_conv = conv_reference.conv_forward(np.moveaxis(x, 3, 1), np.moveaxis(w, 3, 1), 0.0, stride, padding)
            equal(got, np.rint(float_conv).astype(np.int32), name + " vs float conv")
            t = rng.normal(scale=4, size=4)
            flip = np.array([True, False, False, True])
            equal(cb.binary_conv2d_threshold(xw, ww, c_in, t, flip, stride, padding),
                  bitpack.conv2d_threshold(xw, ww, c_in, t, flip, stride, padding), name + " threshold")
    from numba import cuda
    got = cb.binary_conv2d(cuda.to_device(xw), ww, 70, 2, 1)
    if not cb.is_device_array(got):
        raise AssertionError("binary conv device input: expected a device array")
    equal(got.copy_to_host(), kb.conv2d_reference(xw, ww, 70, (2, 2), (1, 1)), "binary conv device array")


def check_elementwise():
    """Sampling from pre-drawn uniforms, the ST factor 2 p(a) and the PSA factor -x p(a) d."""
    from sbnnumba.kernels import cuda_backend as cb
    from sbnnumba.noise import get_noise
    rng = np.random.default_rng(9)
    for noise in NOISES:
        nz = get_noise(noise)
        a = (2 * rng.normal(size=(3, 7))).astype(np.float32)
        u = rng.random(a.shape).astype(np.float32)
        x = cb.sample_states(a, u, nz.code)
        equal(x, nz.sample(a, u), f"sample {noise}")
        close(cb.st_factor(a, nz.code), nz.mean_grad(a), f"st factor {noise}", atol=1e-6)
        d = rng.normal(size=a.shape).astype(np.float32)
        close(cb.psa_preactivation_grad(x, a, d, nz.code), -x * nz.pdf(a) * d, f"psa grad {noise}", atol=1e-6)


def check_weight_cache():
    """Weights are uploaded once and reused while unchanged; in-place changes are detected exactly."""
    import gc

    from sbnnumba.kernels import cuda_backend as cb, reference
    rng = np.random.default_rng(10)
    cache = cb.weight_cache
    cb.clear_cache()
    x_in, a, x_out, w, d_out = dense_problem(rng, "logistic", 3, 5, 7)
    up0 = cache.uploads
    r1 = cb.flip_propagate_dense(x_in, a, x_out, w, d_out, 0)
    r2 = cb.flip_propagate_dense(x_in, a, x_out, w, d_out, 0)
    if cache.uploads != up0 + 1:
        raise AssertionError(f"two calls with the same weight made {cache.uploads - up0} uploads, expected 1")
    equal(r1, r2, "cached weight result")
    derived = list(cache._entries.values())[-1].derived
    if not derived:
        raise AssertionError("the ratio form's exp-kernel should be cached with the weight")
    w[1, 2] += 0.25  # in-place update, as an optimizer does
    r3 = cb.flip_propagate_dense(x_in, a, x_out, w, d_out, 0)
    if cache.uploads != up0 + 2:
        raise AssertionError("an in-place weight change was not re-uploaded")
    close(r3, reference.flip_propagate_dense(*as64(x_in, a, x_out, w, d_out), "logistic"), "after in-place change")
    # version tokens replace the content check
    cb.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, weight_version=1)
    n = cache.uploads
    cb.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, weight_version=1)
    if cache.uploads != n:
        raise AssertionError("same version token should not re-upload")
    cb.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, weight_version=2)
    if cache.uploads != n + 1:
        raise AssertionError("a new version token should re-upload")
    # entries go away with their host array
    entries = len(cache)
    del w
    gc.collect()
    if len(cache) != entries - 1:
        raise AssertionError(f"cache entries {len(cache)} after deleting the weight, expected {entries - 1}")
    # the packed kernels use the cache too
    _, aw = _packed(rng, (3, 70))
    _, bw = _packed(rng, (5, 70))
    n = cache.uploads
    cb.xnor_matmul(aw, bw, 70)
    cb.xnor_matmul(aw, bw, 70)
    if cache.uploads != n + 1:
        raise AssertionError("packed weights should be uploaded once")
    info = cb.cache_info()
    if info["entries"] < 1 or info["bytes"] <= 0 or info["hits"] < 1:
        raise AssertionError(f"cache_info: {info}")


def _nets(make, seed=0):
    import sbnnumba as sb
    nets = {backend: make(backend) for backend in ("cpu", "cuda")}
    for key, p in nets["cuda"].params.items():
        p[...] = nets["cpu"].params[key]
    if not isinstance(nets["cuda"], sb.Network) or nets["cuda"].backend != "cuda":
        raise AssertionError("expected a Network on backend 'cuda'")
    return nets


def _compare_grads(nets, x, y, method, seed, name, **options):
    import sbnnumba as sb
    out = {b: sb.estimate(method, net, x, y, rng=np.random.default_rng(seed), **options) for b, net in nets.items()}
    (loss_cpu, g_cpu), (loss_gpu, g_gpu) = out["cpu"], out["cuda"]
    close(loss_gpu, loss_cpu, f"{name} {method} loss", rtol=1e-5, atol=1e-6)
    if set(g_cpu) != set(g_gpu):
        raise AssertionError(f"{name} {method}: gradient keys differ")
    for key in g_cpu:
        if g_gpu[key].dtype != g_cpu[key].dtype:
            raise AssertionError(f"{name} {method} {key}: dtype {g_gpu[key].dtype} != {g_cpu[key].dtype}")
        scale = np.abs(g_cpu[key]).max() + 1e-3
        close(g_gpu[key] / scale, g_cpu[key] / scale, f"{name} {method} {key}", rtol=1e-4, atol=1e-5)


def check_training_step_dense():
    """A full PSA / ST step on backend 'cuda' gives the CPU gradients (same rng seed; float32)."""
    import sbnnumba as sb
    from sbnnumba.estimators.psa import psa_path_gradient
    from sbnnumba.kernels import cuda_backend as cb
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=3)
    for noise in ("logistic", "normal"):
        nets = _nets(lambda backend: sb.Network.dense([6, 5, 7, 4], 3, noise=noise, rng=0, backend=backend))
        for method in ("psa", "st"):
            _compare_grads(nets, x, y, method, 5, f"dense {noise}")
    # common random numbers: the same path on both backends, its states re-sampled on the device
    nets = _nets(lambda backend: sb.Network.dense([6, 5, 7, 4], 3, rng=1, backend=backend, weight="hidden"))
    uniforms = [rng.random((3, n)).astype(np.float32) for n in (5, 7, 4)]
    wu = {p: rng.random(l.eta.shape).astype(np.float32) for p, l in nets["cpu"].latent_layers()}
    paths = {b: net.sample(x, uniforms=uniforms, weight_uniforms=wu) for b, net in nets.items()}
    weights = np.full(3, 1 / 3, np.float32)
    for k, st in enumerate(paths["cuda"].stages):
        equal(cb.sample_states(st.pre, uniforms[k], nets["cuda"].noise.code), st.state, f"device sample stage {k}")
    (l_cpu, g_cpu), (l_gpu, g_gpu) = (psa_path_gradient(nets[b], paths[b], y, weights) for b in ("cpu", "cuda"))
    close(l_gpu, l_cpu, "crn loss", rtol=1e-5, atol=1e-6)
    for key in g_cpu:
        scale = np.abs(g_cpu[key]).max() + 1e-3
        close(g_gpu[key] / scale, g_cpu[key] / scale, f"crn psa {key}", rtol=1e-4, atol=1e-5)


def check_training_step_conv():
    """A PSA / ST step of a small conv network (padding, stride 2, a dense stage) on 'cuda' vs 'cpu'."""
    import sbnnumba as sb

    def make(backend):
        rng = np.random.default_rng(0)
        stages = [sb.Conv2d(3, 4, 3, padding=1, rng=rng), sb.Conv2d(4, 3, (2, 3), stride=(2, 1), rng=rng),
                  sb.Linear(3 * 2 * 2, 5, rng=rng)]
        return sb.Network(stages, sb.Linear(5, 3, rng=rng), backend=backend)

    rng = np.random.default_rng(12)
    x = pm1(rng, (2, 3, 5, 4))
    y = rng.integers(0, 3, size=2)
    nets = _nets(make)
    for method in ("psa", "st"):
        _compare_grads(nets, x, y, method, 7, "conv")


def _device_problem(noise="logistic", seed=0, sizes=(6, 5, 7, 4), n_classes=3, batch=3):
    import sbnnumba as sb
    rng = np.random.default_rng(seed)
    net = sb.Network.dense(list(sizes), n_classes, noise=noise, rng=seed)
    x = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, n_classes, size=batch)
    uniforms = [rng.random((batch, n)).astype(np.float32) for n in sizes[1:]]
    return net, x, y, uniforms


def _host_path_gradient(net, x, y, uniforms, method, weight_uniforms=None):
    from sbnnumba.estimators.psa import psa_path_gradient
    from sbnnumba.estimators.st import st_path_gradient
    path = net.sample(x, uniforms=uniforms, weight_uniforms=weight_uniforms)
    weights = np.full(x.shape[0], 1 / x.shape[0], np.float32)
    fn = psa_path_gradient if method == "psa" else st_path_gradient
    return fn(net, path, y, weights)


def check_device_step_gradients():
    """CudaTrainer (the device-resident step) gives the host PSA / ST gradients from the same uniforms,
    for logistic (ratio form) and normal (generic form) noise; the trainer does not touch net.params."""
    import sbnnumba as sb
    from sbnnumba.device_training import CudaTrainer
    for noise in ("logistic", "normal"):
        for method in ("psa", "st"):
            net, x, y, uniforms = _device_problem(noise, seed=3)
            before = {k: p.copy() for k, p in net.params.items()}
            trainer = CudaTrainer(net, method, sb.optim.Adam(lr=1e-2), max_batch=4)
            loss, grads = trainer.gradients(x, y, uniforms=uniforms)
            loss_host, grads_host = _host_path_gradient(net, x, y, uniforms, method)
            close(loss, loss_host, f"device {noise} {method} loss", rtol=1e-5, atol=1e-6)
            for key in grads_host:
                scale = np.abs(grads_host[key]).max() + 1e-3
                close(grads[key] / scale, grads_host[key] / scale, f"device {noise} {method} {key}",
                      rtol=1e-4, atol=1e-5)
            for key, p in net.params.items():
                equal(p, before[key], f"device {noise} {method}: net.params[{key!r}] unchanged")


def check_device_step_updates():
    """Three steps of CudaTrainer equal three host steps (same uniforms): Adam with a cosine schedule,
    coupled weight decay and element-wise clipping; AdamW; SGD with Nesterov momentum. sync() writes
    the parameters and the optimizer state back."""
    import sbnnumba as sb
    from sbnnumba.device_training import CudaTrainer
    makers = {
        "adam": lambda: sb.optim.Adam(lr=0.05, weight_decay=1e-3, clip_value=0.05, schedule=sb.optim.CosineLR(5)),
        "adamw": lambda: sb.optim.Adam(lr=0.05, weight_decay=0.1, decoupled=True),
        "sgd": lambda: sb.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    }
    for name, method in (("adam", "psa"), ("adam", "st"), ("adamw", "psa"), ("sgd", "st")):
        make = makers[name]
        net_host, x, y, _ = _device_problem(seed=4)
        net_dev, _, _, _ = _device_problem(seed=4)
        rng = np.random.default_rng(9)
        steps = [[rng.random((3, n)).astype(np.float32) for n in (5, 7, 4)] for _ in range(3)]
        opt_host, opt_dev = make(), make()
        trainer = CudaTrainer(net_dev, method, opt_dev, max_batch=3)
        for uniforms in steps:
            _, grads = _host_path_gradient(net_host, x, y, uniforms, method)
            opt_host.update(net_host.params, grads)
            trainer.step(x, y, uniforms=uniforms)
        trainer.sync()
        if opt_dev.step_count != 3:
            raise AssertionError(f"{name} {method}: step_count {opt_dev.step_count} != 3")
        for key, p in net_host.params.items():
            close(net_dev.params[key], p, f"{name} {method} {key} after 3 steps", rtol=1e-4, atol=1e-5)
        for key, bufs in opt_host.state.items():
            for b, v in bufs.items():
                close(opt_dev.state[key][b], v, f"{name} {method} state {key}.{b}", rtol=1e-4, atol=1e-6)


def check_device_step_resident():
    """A device-resident step makes no host-to-device copy and downloads at most one integer per PSA
    layer (the ratio form's saturation count); an epoch over an uploaded dataset (device batches,
    device generators) lowers the loss of a learnable toy problem."""
    import sbnnumba as sb
    from numba import cuda
    from sbnnumba.device_training import CudaTrainer
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    net = sb.Network.dense([4, 6, 5], 2, rng=2)
    trainer = CudaTrainer(net, "psa", sb.optim.Adam(lr=0.05), seed=1, max_batch=8)
    x_dev, y_dev = trainer.upload(x, y)
    counts = {"up": 0, "down": 0}
    fake = type(x_dev)  # the simulator's FakeCUDAArray or a real DeviceNDArray
    orig_to_device, orig_copy = cuda.to_device, fake.copy_to_host

    def to_device(*args, **kwargs):
        counts["up"] += 1
        return orig_to_device(*args, **kwargs)

    def copy_to_host(self, *args, **kwargs):
        counts["down"] += 1
        return orig_copy(self, *args, **kwargs)

    import warnings
    cuda.to_device, fake.copy_to_host = to_device, copy_to_host
    try:
        with warnings.catch_warnings():  # on a GPU, a host array passed to a kernel is an implicit copy
            warnings.filterwarnings("error", message=".*[Hh]ost array.*")
            trainer.step(x_dev[:8], y_dev[:8])
    finally:
        cuda.to_device, fake.copy_to_host = orig_to_device, orig_copy
    if counts["up"] != 0 or counts["down"] > len(net.stages) - 1:
        raise AssertionError(f"transfers in one device-resident step: {counts}")
    losses = [trainer.train_epoch(x_dev, y_dev, 8, rng=np.random.default_rng(e)) for e in range(3)]
    if not all(np.isfinite(losses)) or not losses[-1] < losses[0]:
        raise AssertionError(f"device epochs did not lower the loss: {losses}")
    trainer.sync()
    acc = float(np.mean(net.predict(x, samples=10, rng=0) == y))
    if acc < 0.6:
        raise AssertionError(f"after 3 device epochs, host accuracy {acc}")


def check_device_fit():
    """sbnnumba.training.fit on backend 'cuda' uses the device-resident step for a dense network: it trains
    (finite history), writes the trained parameters back to the host network, and a run resumed
    after epoch 1 ends with the parameters of an uninterrupted 2-epoch run."""
    import tempfile

    import sbnnumba as sb
    from sbnnumba import training
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    options = dict(estimator="psa", batch_size=8, optimizer="adam", lr=0.05, seed=3, val_fraction=0.2,
                   eval_samples=2, train_eval_size=0, progress=False, plots=False)

    def make():
        return sb.architectures.build("mlp", (4,), 2, rng=1, backend="cuda", hidden=(5,))

    from sbnnumba.device_training import CudaTrainer
    calls = []
    original = CudaTrainer.train_epoch

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    net_full = make()
    before = {k: p.copy() for k, p in net_full.params.items()}
    CudaTrainer.train_epoch = counting
    try:
        res = training.fit(net_full, (x, y), epochs=2, **options)
    finally:
        CudaTrainer.train_epoch = original
    if len(calls) != 2:
        raise AssertionError(f"fit on backend 'cuda' ran {len(calls)} device epochs, expected 2")
    if len(res.history) != 2 or not all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"])
                                        for r in res.history):
        raise AssertionError(f"device fit history: {res.history}")
    if all(np.array_equal(p, before[k]) for k, p in net_full.params.items()):
        raise AssertionError("device fit did not change the host parameters")
    with tempfile.TemporaryDirectory() as tmp:
        net_a = make()
        training.fit(net_a, (x, y), epochs=1, out=tmp, **options)
        net_b = make()
        training.fit(net_b, (x, y), epochs=2, out=tmp, resume=True, **options)
    for key, p in net_full.params.items():
        close(net_b.params[key], p, f"resumed device fit {key}", rtol=1e-6, atol=1e-7)
    # Bernoulli weights and batch normalization are device-resident too: the running statistics and eta
    # come back to the host after the epoch
    net_bin = sb.architectures.build("mlp", (4,), 2, rng=1, backend="cuda", hidden=(5, 5), weight="hidden",
                                     normalize=True)
    eta0 = net_bin.params["stages.1.eta"].copy()
    calls.clear()
    CudaTrainer.train_epoch = counting
    try:
        res = training.fit(net_bin, (x, y), epochs=1, **{**options, "data_init": False})
    finally:
        CudaTrainer.train_epoch = original
    mean, var = net_bin.stages[1].running["stochastic"]
    if len(calls) != 1 or not np.isfinite(res.history[-1]["val_loss"]):
        raise AssertionError(f"binary device fit: {len(calls)} device epochs, history {res.history}")
    if np.array_equal(net_bin.params["stages.1.eta"], eta0) or np.all(mean == 0) or np.all(var == 1):
        raise AssertionError("binary device fit: eta or the running statistics were not written back")


def check_device_step_conv():
    """CudaTrainer on a conv network (padding, stride (2, 1), a rectangular kernel, then a dense stage):
    PSA / ST gradients equal the host estimators' from the same uniforms (logistic: ratio form; normal:
    generic form), and one Adam step equals the host's."""
    import sbnnumba as sb
    from sbnnumba.device_training import CudaTrainer

    def make(noise):
        rng = np.random.default_rng(0)
        stages = [sb.Conv2d(3, 4, 3, padding=1, rng=rng, in_shape=(3, 5, 4)),
                  sb.Conv2d(4, 3, (2, 3), stride=(2, 1), rng=rng), sb.Linear(3 * 2 * 2, 5, rng=rng)]
        return sb.Network(stages, sb.Linear(5, 3, rng=rng), noise=noise)

    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=2)
    for noise in ("logistic", "normal"):
        net = make(noise)
        uniforms = [rng.random((2,) + shape).astype(np.float32) for shape in net.stage_shapes((3, 5, 4))]
        for method in ("psa", "st"):
            trainer = CudaTrainer(net, method, sb.optim.Adam(lr=0.01), max_batch=2)
            loss, grads = trainer.gradients(x, y, uniforms=uniforms)
            loss_host, grads_host = _host_path_gradient(net, x, y, uniforms, method)
            close(loss, loss_host, f"conv {noise} {method} loss", rtol=1e-5, atol=1e-6)
            for key in grads_host:
                scale = np.abs(grads_host[key]).max() + 1e-3
                close(grads[key] / scale, grads_host[key] / scale, f"conv {noise} {method} {key}", rtol=1e-4,
                      atol=1e-5)
    net_host, net_dev = make("logistic"), make("logistic")
    uniforms = [rng.random((2,) + shape).astype(np.float32) for shape in net_host.stage_shapes((3, 5, 4))]
    opt_host, opt_dev = sb.optim.Adam(lr=0.05), sb.optim.Adam(lr=0.05)
    _, grads = _host_path_gradient(net_host, x, y, uniforms, "psa")
    opt_host.update(net_host.params, grads)
    trainer = CudaTrainer(net_dev, "psa", opt_dev, max_batch=2)
    trainer.step(x, y, uniforms=uniforms)
    trainer.sync()
    for key, p in net_host.params.items():
        close(net_dev.params[key], p, f"conv Adam step {key}", rtol=1e-4, atol=1e-5)


def _binary_nets():
    """Small networks with Bernoulli weights and batch normalization: dense (hidden binary stages) and conv
    (all stages binary; padding, stride 2), with the weight rules and noises of spec st.md."""
    import sbnnumba as sb

    def dense(noise="logistic", weight_noise="logistic", rule="md"):
        return sb.Network.dense([6, 5, 7, 4], 3, noise=noise, rng=2, weight="hidden", weight_noise=weight_noise,
                                weight_grad=rule, normalize=True)

    def conv(noise="logistic", weight_noise="logistic", rule="md"):
        rng = np.random.default_rng(1)
        kw = dict(rng=rng, weight="bernoulli", weight_noise=weight_noise, weight_grad=rule)
        stages = [sb.Normalized(sb.Conv2d(2, 4, 3, padding=1, in_shape=(2, 5, 4), **kw)),
                  sb.Normalized(sb.Conv2d(4, 3, 3, stride=2, **kw))]
        return sb.Network(stages, sb.Linear(3 * 2 * 1, 3, rng=rng), noise=noise)

    return {"dense": (dense, (6,)), "conv": (conv, (2, 5, 4))}


def check_device_step_binary():
    """CudaTrainer with Bernoulli weights and batch normalization: from the same activation and weight
    uniforms, the PSA / ST loss and the gradients of eta (mirror descent and latent rules), bias, gamma
    and beta equal the host's (dense and conv; logistic ratio form and normal generic form); the running
    statistics follow the host's; SGD steps with the projection of uniform-noise latent weights onto
    [-1, 1] equal the host's."""
    import sbnnumba as sb
    from sbnnumba.device_training import CudaTrainer
    rng = np.random.default_rng(21)
    nets = _binary_nets()
    # (the simulator runs every thread of the conv GEMMs and reductions as a Python thread: few conv cases)
    cases = [("dense", noise, weight_noise, rule, method)
             for noise, weight_noise, rule in (("logistic", "logistic", "md"), ("normal", "triangular", "latent"))
             for method in ("psa", "st")]
    cases += [("conv", "logistic", "logistic", "md", "psa"), ("conv", "normal", "triangular", "latent", "st")]
    for name, noise, weight_noise, rule, method in cases:
        make, shape = nets[name]
        x = rng.normal(size=(4,) + shape).astype(np.float32)
        y = rng.integers(0, 3, size=4)
        net_host, net_dev = make(noise, weight_noise, rule), make(noise, weight_noise, rule)
        uniforms = [rng.random((4,) + s).astype(np.float32) for s in net_host.stage_shapes(shape)]
        wu = {p: rng.random(layer.eta.shape).astype(np.float32) for p, layer in net_host.latent_layers()}
        trainer = CudaTrainer(net_dev, method, sb.optim.Adam(lr=1e-2), max_batch=4, input_shape=shape)
        loss, grads = trainer.gradients(x, y, uniforms=uniforms, weight_uniforms=wu)
        loss_host, grads_host = _host_path_gradient(net_host, x, y, uniforms, method, wu)
        tag = f"binary {name} {noise}/{weight_noise} {rule} {method}"
        close(loss, loss_host, f"{tag} loss", rtol=1e-5, atol=1e-6)
        if set(grads) != set(grads_host) or not any(k.endswith(".eta") for k in grads):
            raise AssertionError(f"{tag}: keys {sorted(grads)} vs {sorted(grads_host)}")
        for key in grads_host:
            scale = np.abs(grads_host[key]).max() + 1e-3
            if key.endswith(".bias") and key.replace(".bias", ".beta") in grads_host:
                # a bias in front of a normalization: its gradient is 0 up to rounding on both sides
                scale = np.abs(grads_host[key.replace(".bias", ".beta")]).max() + 1e-3
                if max(np.abs(grads[key]).max(), np.abs(grads_host[key]).max()) > 1e-5 * scale:
                    raise AssertionError(f"{tag} {key}: expected 0 up to rounding, got {grads[key]}")
                continue
            close(grads[key] / scale, grads_host[key] / scale, f"{tag} {key}", rtol=1e-4, atol=1e-5)
        trainer.sync()
        for k, norm in enumerate(net_host.normalizations()):
            for got, want, what in zip(net_dev.normalizations()[k].running["stochastic"],
                                       norm.running["stochastic"], ("mean", "var")):
                close(got, want, f"{tag} running {what} {k}", rtol=1e-5, atol=1e-6)
    # Updates with uniform weight noise: eta is clipped to [-1, 1] after every step. SGD, not Adam: the bias
    # in front of a normalization has a gradient that is 0 up to rounding, which Adam would blow up into
    # steps of +-lr of arbitrary sign (the Adam kernel itself is checked in device_step_updates).
    for name, (make, shape) in nets.items():
        net_host, net_dev = make("logistic", "uniform"), make("logistic", "uniform")
        x = rng.normal(size=(4,) + shape).astype(np.float32)
        y = rng.integers(0, 3, size=4)
        opt_host, opt_dev = (sb.optim.SGD(lr=2.0, momentum=0.9) for _ in range(2))
        trainer = CudaTrainer(net_dev, "psa", opt_dev, max_batch=4, input_shape=shape)
        for _ in range(2):
            uniforms = [rng.random((4,) + s).astype(np.float32) for s in net_host.stage_shapes(shape)]
            wu = {p: rng.random(layer.eta.shape).astype(np.float32) for p, layer in net_host.latent_layers()}
            _, grads = _host_path_gradient(net_host, x, y, uniforms, "psa", wu)
            opt_host.update(net_host.params, grads)
            net_host.apply_constraints()
            trainer.step(x, y, uniforms=uniforms, weight_uniforms=wu)
        trainer.sync()
        for key, p in net_host.params.items():
            close(net_dev.params[key], p, f"binary {name} uniform SGD {key}", rtol=1e-4, atol=1e-5)
        etas = [layer.eta for _, layer in net_dev.latent_layers()]
        if max(np.abs(e).max() for e in etas) > 1 or not any(np.abs(e).max() == 1 for e in etas):
            raise AssertionError(f"binary {name}: uniform-noise eta not projected onto [-1, 1]")


def check_device_step_scope():
    """Networks and settings outside the device step's scope are refused with a clear error."""
    import sbnnumba as sb

    class _Unsupported(sb.Linear):  # a stage type the device step does not know
        pass

    from sbnnumba.device_training import CudaTrainer
    cases = [
        (lambda: CudaTrainer(sb.Network([_Unsupported(4, 3, rng=0)], sb.Linear(3, 2, rng=0)), "psa"),
         NotImplementedError,
         "_Unsupported"),
        (lambda: CudaTrainer(sb.Network([sb.Conv2d(1, 2, 3, rng=0)], sb.Linear(2 * 2 * 2, 2, rng=0)), "psa"),
         ValueError, "input_shape"),
        (lambda: CudaTrainer(sb.Network.dense([4, 3], 2, rng=0), "arm"), ValueError, "method"),
        (lambda: CudaTrainer(sb.Network.dense([4, 3], 2, rng=0), "psa", sb.optim.Adam(clip_norm=1.0)),
         NotImplementedError, "clip_norm"),
    ]
    for make, exc_type, words in cases:
        try:
            make()
        except exc_type as exc:
            if words not in str(exc):
                raise AssertionError(f"message {exc!r} does not name {words!r}")
        else:
            raise AssertionError(f"expected {exc_type.__name__} naming {words!r}")
    # fit's choice: a network outside the scope warns and keeps the per-call routing
    import warnings

    from sbnnumba.training import FitConfig
    from sbnnumba.training.device import device_epochs

    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = device_epochs(sb.Network.dense([4, 3], 2, rng=0, backend="cuda"), FitConfig(batch_size=8),
                               sb.optim.Adam(clip_norm=1.0), x, y)
    if chosen is not None or not any("not device-resident" in str(w.message) for w in caught):
        raise AssertionError(f"expected no device trainer and a warning, got {chosen!r}, {[str(w.message) for w in caught]}")
    if device_epochs(sb.Network.dense([4, 3], 2, rng=0, backend="cuda"), FitConfig(estimator="concrete", batch_size=8),
                     sb.optim.Adam(), x, y) is not None:
        raise AssertionError("estimator 'concrete' must keep the per-call routing")

SIM_CHECKS = {
    "dense_flip": check_dense_flip,
    "dense_flip_default_tiles": check_dense_flip_default_tiles,
    "dense_flip_saturated": check_dense_flip_saturated,
    "dense_flip_device_arrays": check_dense_flip_device_arrays,
    "conv_flip": check_conv_flip,
    "conv_flip_extra": check_conv_flip_extra,
    "xnor_gemm": check_xnor_gemm,
    "xnor_gemm_threshold": check_xnor_gemm_threshold,
    "binary_conv": check_binary_conv,
    "elementwise": check_elementwise,
    "weight_cache": check_weight_cache,
    "training_step_dense": check_training_step_dense,
    "training_step_conv": check_training_step_conv,
    "device_step_gradients": check_device_step_gradients,
    "device_step_updates": check_device_step_updates,
    "device_step_resident": check_device_step_resident,
    "device_step_scope": check_device_step_scope,
    "device_fit": check_device_fit,
    "device_step_conv": check_device_step_conv,
    "device_step_binary": check_device_step_binary,
}


# ---------------------------------------------------------------------------------------------------
# PTX compilation for a real GPU (no device needed)
# ---------------------------------------------------------------------------------------------------

def ptx_checks():
    """One check per kernel: compile it for sm_80 with the argument types the wrappers pass."""
    import numba
    from numba import cuda

    from numba.cuda.random import xoroshiro128p_dtype

    from sbnnumba.kernels import cuda as k
    from sbnnumba.kernels import cuda_train as kt

    states = numba.typeof(np.empty(1, xoroshiro128p_dtype))

    def sig(*args):
        return tuple(numba.typeof(np.empty((1,) * t[0], t[1])) if isinstance(t, tuple) else numba.typeof(t)
                     for t in args)

    # Device functions called by a kernel (the register_jitable noise scalars) are compiled for "the
    # current device"; without one, pretend it is sm_80 (compile_ptx itself takes cc explicitly).
    import numba.cuda.dispatcher as dispatcher

    class _Sm80:
        compute_capability = (8, 0)

    dispatcher.get_current_device = lambda: _Sm80()

    checks = {}
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        f1, f2, f4 = (1, dt), (2, dt), (4, dt)
        one = dt(1)
        checks[f"ptx_dense_ratio_{name}"] = (k.dense_flip_ratio_kernel(name, **k.DENSE_TILE),
                                             sig(f2, f2, f2, f2, f1, f2))
        checks[f"ptx_dense_generic_{name}"] = (k.dense_flip_generic_kernel(name, **k.DENSE_TILE),
                                               sig(0, f2, f2, f2, f2, f2, f2))
        checks[f"ptx_conv_ratio_{name}"] = (k.flip_conv_ratio, sig(f4, f4, f4, (3, dt), f4, 1, 1, 1, 1, one, f4))
        checks[f"ptx_conv_generic_{name}"] = (k.flip_conv_generic, sig(0, f4, f4, f4, f4, f4, f4, f4, 1, 1, 1, 1, f4))
        checks[f"ptx_units_{name}"] = [(k.ratio_units, sig(f1, f1, f1, one, f1, 1, one, f1, f1, f1, f1, (1, np.int32))),
                                       (k.reach_rows, sig(f2, f1)),
                                       (k.generic_units, sig(0, f1, f1, f1, f1, f1)),
                                       (k.exp2, sig(f1, one, f1)), (k.exp2_transpose, sig(f2, one, f2)),
                                       (k.sum_axis1, sig((3, dt), f2)), (k.add_into, sig(f1, f1))]
        checks[f"ptx_elementwise_{name}"] = [(k.sample_states, sig(0, f1, f1, f1)), (k.st_factor, sig(0, f1, f1)),
                                             (k.psa_preactivation_grad, sig(0, f1, f1, f1, f1))]
        f3, i1 = (3, dt), (1, np.int32)
        checks[f"ptx_train_gemm_{name}"] = [(kt.gemm_kernel(name, ta, tb, kt.GEMM_FLOAT_TILE), sig(f2, f2, one, one, f2))
                                           for ta, tb in ((False, True), (True, False), (False, False))]
        checks[f"ptx_train_step_{name}"] = [
            (kt.add_bias, sig(f2, f1)), (kt.sample_uniform, sig(0, f2, f2, f2)),
            (kt.sample_rng, (numba.int64, numba.typeof(np.empty((1, 1), dt)), states, numba.typeof(np.empty((1, 1), dt)))),
            (kt.column_sum, sig(f2, one, f1)), (kt.xent_rows, sig(f2, i1, f1, f2)),
            (kt.head_flips, sig(f2, i1, f2, f2, f1, f2, f3)), (kt.rb_weights, sig(0, f2, f2, f2, f1, f2, f1, f1)),
            (kt.rb_mix, sig(f2, f3, f2, f1, one, f2)), (kt.rb_head_correction, sig(f3, f2, f2, one, f2)),
            (kt.psa_grad, sig(0, f2, f2, f2, f2)), (kt.st_grad, sig(0, f2, f2, f2)),
            (kt.adam_update, sig(f1, f1, f1, f1, one, one, one, one, one, one, one, one)),
            (kt.sgd_update, sig(f1, f1, f1, one, one, True, True, one, one)),
            (kt.gather_rows, sig(f2, (1, np.int64), 0, f2)), (kt.gather_labels, sig(i1, (1, np.int64), 0, i1)),
            (kt.accumulate_loss, sig(f1, 1.0, (1, np.float64))),
            (kt.im2col_rows, sig(f4, 3, 3, 1, 1, 1, 1, f2)), (kt.col2im_gather, sig(f2, 3, 3, 1, 1, 1, 1, f4)),
            (kt.rows_to_map, sig(f2, f1, True, f4)), (kt.map_to_rows, sig(f4, f2))]
        d1 = (1, np.float64)
        checks[f"ptx_train_binary_{name}"] = [
            (kt.channel_sums_kernel(kt.REDUCE_THREADS), sig(f1, f1, 1, 1, 1, d1, d1)),
            (kt.bn_statistics, sig(d1, d1, 1.0, 1.0, 1.0, f1, f1, f1, f1, f1, f1)),
            (kt.bn_apply, sig(f1, f1, f1, f1, f1, 1, 1, f1, f1)),
            (kt.bn_backward, sig(f1, f1, d1, d1, f1, 1.0, 1, 1, f1)),
            (kt.scale_copy, sig(d1, 1.0, f1)), (kt.scale_rows, sig(f2, f1, f2)),
            (kt.latent_grad, sig(0, True, f1, f1, f1)),
            (kt.clip_values, sig(f1, one))]
    checks["ptx_zero_counter"] = (k.zero_counter, sig((1, np.int32)))
    u2, u4, i2, i4 = (2, np.uint64), (4, np.uint64), (2, np.int32), (4, np.int32)
    checks["ptx_xnor_gemm"] = (k.xnor_gemm_kernel(**k.GEMM_TILE), sig(u2, u2, 70, i2))
    checks["ptx_xnor_gemm_threshold"] = (k.xnor_gemm_threshold_kernel(**k.GEMM_THRESHOLD_TILE),
                                         sig(u2, u2, 70, (1, np.int64), (1, np.uint8), u2))
    checks["ptx_binary_conv"] = [(k.xnor_conv2d, sig(u4, u4, 3, 1, 1, 1, 1, i4)),
                                 (k.sign_pack_channels, sig(i4, (1, np.int64), (1, np.uint8), u4))]

    def make(items):
        items = items if isinstance(items, list) else [items]

        def run():
            for kernel, signature in items:
                ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(8, 0), fastmath=True)
                if ".entry" not in ptx:
                    raise AssertionError("no kernel entry in the PTX")
                if "popc" in kernel.py_func.__code__.co_names and "popc.b64" not in ptx:
                    raise AssertionError("expected 64-bit popcounts (popc.b64) in the PTX")
        return run

    return {name: make(items) for name, items in checks.items()}


def ptx_toolchain_missing():
    """Why no PTX can be compiled here (no libNVVM / NVRTC), or None: a trivial kernel that calls a
    register_jitable scalar, compiled like the real ones, must succeed."""
    import numba
    from numba import cuda

    from sbnnumba.kernels.scalar import cdf

    def probe(a, out):
        i = cuda.grid(1)
        if i < a.shape[0]:
            out[i] = cdf(0, a[i])

    try:
        ptx_checks()  # installs the sm_80 stand-in for "the current device"
        t = numba.typeof(np.empty(1, np.float32))
        cuda.compile_ptx(probe, (t, t), cc=(8, 0))
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return None


# ---------------------------------------------------------------------------------------------------

SKIPPED = 3  # exit code when the mode cannot run here (the caller skips)

# The simulator's BlockManager busy-polls its threads while they run, holding the GIL for whole switch
# intervals (5 ms by default): most of a launch's time goes to that polling. A shorter interval makes
# the sim checks about 3x faster (measured on 2 cores: 323 s -> 118 s for the whole set).
SIMULATOR_SWITCH_INTERVAL = 5e-4


def make_simulator_shared_arrays_thread_safe():
    """Give numba's simulated ``cuda.shared.array`` a lock: the simulator looks up the block's array
    (keyed by the calling file and line) and creates it when missing without one, so two threads that
    switch between the lookup and the store get two different "shared" arrays and the kernel computes
    garbage. Rare at the default switch interval, frequent at :data:`SIMULATOR_SWITCH_INTERVAL` (seen
    as wrong words of xnor_gemm_threshold). Same key and semantics as the original; dynamic shared
    memory (``shape == 0``) is left to the original method. Returns False (and changes nothing) where
    the simulator's internals are not the ones patched here."""
    import threading

    try:
        from numba.core import types
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support
        original = kernelapi.FakeCUDAShared.array
    except (ImportError, AttributeError):  # another numba layout: keep its simulator as it is
        return False
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:
            return original(self, shape, dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sim", "device", "ptx"), default="sim")
    parser.add_argument("--only", default="", help="comma-separated check names")
    args = parser.parse_args(argv)
    import numba
    try:
        from numba import cuda  # noqa: F401
    except ImportError as exc:
        print(f"SKIP numba.cuda cannot be imported: {exc}")
        return SKIPPED
    if args.mode == "ptx":
        reason = ptx_toolchain_missing()
        if reason:
            print(f"SKIP cannot compile PTX here: {reason}")
            return SKIPPED
    if args.mode == "sim" and not numba.config.ENABLE_CUDASIM:
        print("--mode sim needs NUMBA_ENABLE_CUDASIM=1 in the environment", file=sys.stderr)
        return 2
    if args.mode != "sim" and numba.config.ENABLE_CUDASIM:
        print(f"--mode {args.mode} must run without NUMBA_ENABLE_CUDASIM", file=sys.stderr)
        return 2
    if args.mode == "sim":
        if make_simulator_shared_arrays_thread_safe():  # a short interval is only safe with the lock
            sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL)
    checks = ptx_checks() if args.mode == "ptx" else SIM_CHECKS
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(checks))
        if unknown:
            print(f"unknown checks {unknown}; known: {sorted(checks)}", file=sys.stderr)
            return 2
        checks = {name: checks[name] for name in wanted}
    failed = 0
    for name, fn in checks.items():
        start = time.perf_counter()
        try:
            fn()
            ok, error = True, None
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
            failed += 1
        print("CHECK " + json.dumps({"name": name, "ok": ok, "error": error,
                                     "seconds": round(time.perf_counter() - start, 2)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
