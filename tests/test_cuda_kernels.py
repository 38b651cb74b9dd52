"""The ``cuda`` backend's kernels against the NumPy references and the CPU backend.

Ordinary tests: in numba's CUDA simulator on a machine without a GPU (tests/conftest.py switches it
on before numba loads), on the device where one is present. Shapes are tiny (the simulator runs every
thread as a Python thread) but chosen so that grids have several blocks and partial tiles in every
dimension. The kernels' typing for a real GPU is checked by tests/test_cuda.py (PTX compilation).
"""
import numpy as np
import pytest
from cuda_checks import close, equal, pm1

from sbnnumba.backends.cuda import device, ops
from sbnnumba.kernels.bitpack import PreparedWeights

pytestmark = pytest.mark.usefixtures("cuda_backend")

NOISES = ("logistic", "normal", "uniform", "triangular")
SMALL_DENSE_TILES = dict(tile_i=4, tile_b=4, inputs_per_thread=2, rows_per_thread=2, tile_j=3)
SMALL_GEMM_TILES = dict(tile_n=4, tile_m=4, rows_per_thread=2, tile_w=1)
SMALL_THRESHOLD_TILES = dict(tile_m=4, rows_per_thread=2, tile_w=1)


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

def test_dense_flip():
    """Dense PSA flip propagation: every noise, both forms, small tiles (several blocks, partial tiles)."""
    from sbnnumba.kernels import reference
    from sbnnumba.kernels.scalar import NOISE_CODES
    rng = np.random.default_rng(0)
    for noise in NOISES:
        forms = ("ratio", "generic") if noise == "logistic" else ("generic",)
        for form in forms:
            for shape in ((3, 5, 7), (6, 9, 4)):
                prob = dense_problem(rng, noise, *shape)
                want = reference.flip_propagate_dense(*as64(*prob[:4]), np.float64(prob[4]), noise)
                got = ops.flip_propagate_dense(*prob, NOISE_CODES[noise], form=form, tiles=SMALL_DENSE_TILES)
                if got.dtype != np.float32 or got.shape != prob[0].shape:
                    raise AssertionError(f"dense {noise}/{form}: got {got.dtype}{got.shape}")
                close(got, want, f"dense {noise}/{form} {shape}")


def test_dense_flip_default_tiles():
    """Default tile configuration (one partial block of 256 threads) and float64."""
    from sbnnumba.kernels import cpu, reference
    rng = np.random.default_rng(1)
    for noise, code, dtype in (("logistic", 0, np.float32), ("normal", 1, np.float32), ("logistic", 0, np.float64),
                               ("triangular", 3, np.float64)):
        prob = dense_problem(rng, noise, 3, 5, 7, dtype=dtype)
        want = reference.flip_propagate_dense(*as64(*prob), noise)
        got = ops.flip_propagate_dense(*prob, code)
        if got.dtype != dtype:
            raise AssertionError(f"dense default {noise}: dtype {got.dtype} != {dtype}")
        close(got, want, f"dense default {noise} {np.dtype(dtype).name}", atol=2e-5 if dtype == np.float32 else 1e-12,
              rtol=1e-4 if dtype == np.float32 else 1e-10)
        close(got, cpu.flip_propagate_dense(*prob, code), f"dense default vs cpu {noise}")


def test_dense_flip_saturated():
    """Ratio form with saturated units (|a| > A, summed exactly by the generic kernel) and clipped 2W:
    a few saturated units, every unit saturated and huge weights; float32 and float64, as on the CPU."""
    from sbnnumba.kernels import cpu, reference
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
            got = ops.flip_propagate_dense(*p, 0, form="ratio", tiles=SMALL_DENSE_TILES)
            if not np.all(np.isfinite(got)):
                raise AssertionError(f"dense {name}: non-finite output")
            tol = dict(rtol=1e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
            close(got, want, f"dense {name} {np.dtype(dtype).name}", **tol)
            close(got, cpu.flip_propagate_dense(*p, 0, form="ratio"), f"dense {name} vs cpu", **tol)


def _check_inert_saturated_skip_the_exact_pass(rng):
    """Saturated units whose flips stay in sigma's flat tail (|a| - 2 max|W| > T) are inert: with only
    those, the ratio-form preparation counts no active unit (n_sat 0: the gated pass does nothing) and
    the result still matches the float64 reference; a large weight that makes one of them active brings
    the pass back (dense and conv)."""
    from numba import cuda

    from sbnnumba.kernels import conv_reference, cpu, reference
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
         lambda p: ops.flip_propagate_dense(*p, 0, form="ratio", tiles=SMALL_DENSE_TILES)),
        ("conv", conv, conv[1].shape[2] * conv[1].shape[3],
         lambda p: conv_reference.flip_propagate_conv(*as64(*p), stride, padding, "logistic"),
         lambda p: ops.flip_propagate_conv(*p, stride, padding, 0, form="ratio")),
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
            parts = ops._ratio_units(*(cuda.to_device(np.ascontiguousarray(t)) for t in (a, p[2], p[4])),
                                    np.dtype(np.float32), cuda.to_device(p[3]), None, inner)
            if (parts[4].copy_to_host()[0] > 0) != active:
                raise AssertionError(f"{name}: exact pass {'missing' if active else 'run'} with "
                                     f"{'one active' if active else 'only inert'} saturated units")
            close(got_of(p), want_of(p), f"{name} inert saturated (active unit: {active})")


def test_ratio_form_makes_no_download():
    """The ratio form on device arrays downloads nothing, also with active saturated units (their exact pass
    is gated on the device count): dense and conv, with and without saturated units, match the reference."""
    from numba import cuda

    from sbnnumba.kernels import conv_reference, cpu, reference
    rng = np.random.default_rng(14)
    limit = cpu.ratio_limits(np.float32)[0]
    dense = list(dense_problem(rng, "logistic", 4, 9, 7))
    dense_sat = [t.copy() for t in dense]
    dense_sat[3][2] *= 20  # large weights: the saturated unit's flip terms are O(1)
    dense_sat[1][1, 2] = limit + 0.5
    conv_args = ((3, 3), (1, 1), (1, 1))
    conv = list(conv_problem(rng, "logistic", *conv_args))
    conv_sat = [t.copy() for t in conv]
    conv_sat[3][1] *= 25
    conv_sat[1][0, 1, 1, 2] = limit + 1.0
    cases = [("dense", p, lambda p: reference.flip_propagate_dense(*as64(*p), "logistic"),
              lambda d: ops.flip_propagate_dense(*d, 0, form="ratio", tiles=SMALL_DENSE_TILES))
             for p in (dense, dense_sat)]
    cases += [("conv", p, lambda p: conv_reference.flip_propagate_conv(*as64(*p), (1, 1), (1, 1), "logistic"),
               lambda d: ops.flip_propagate_conv(*d, (1, 1), (1, 1), 0, form="ratio")) for p in (conv, conv_sat)]
    for k, (name, prob, want_of, got_of) in enumerate(cases):
        saturated = k % 2 == 1
        if (cpu.active_saturated(prob[1], prob[3]).sum() > 0) != saturated:
            raise AssertionError(f"{name}: expected {'an active' if saturated else 'no'} saturated unit")
        dev = [cuda.to_device(np.ascontiguousarray(t)) for t in prob]
        fake = type(dev[0])
        original, downloads = fake.copy_to_host, []
        fake.copy_to_host = lambda self, *a, **kw: downloads.append(1) or original(self, *a, **kw)
        try:
            got = got_of(dev)
        finally:
            fake.copy_to_host = original
        if downloads:
            raise AssertionError(f"{name} (saturated: {saturated}): {len(downloads)} downloads, expected none")
        close(got.copy_to_host(), want_of(prob), f"{name} ratio on device arrays (saturated: {saturated})")


def test_dense_flip_device_arrays():
    """Device arrays in -> device array out, no copies of the inputs; the result matches."""
    from numba import cuda

    from sbnnumba.kernels import reference
    rng = np.random.default_rng(3)
    prob = dense_problem(rng, "logistic", 3, 5, 7)
    dev = [cuda.to_device(t) for t in prob]
    got = ops.flip_propagate_dense(*dev, 0, tiles=SMALL_DENSE_TILES)
    if not device.is_device_array(got):
        raise AssertionError(f"device inputs: expected a device array, got {type(got).__name__}")
    close(got.copy_to_host(), reference.flip_propagate_dense(*as64(*prob), "logistic"), "dense device arrays")
    # mixed host/device inputs also give a device array
    got2 = ops.flip_propagate_dense(prob[0], dev[1], prob[2], prob[3], prob[4], 0)
    if not device.is_device_array(got2):
        raise AssertionError("mixed inputs: expected a device array")
    close(got2.copy_to_host(), got.copy_to_host(), "dense mixed inputs")
    try:
        ops.flip_propagate_dense(dev[0], cuda.to_device(prob[1].astype(np.float64)), *dev[2:], 0)
    except TypeError as exc:
        if "x_in" not in str(exc):
            raise AssertionError(f"dtype mismatch message should name the argument: {exc}")
    else:
        raise AssertionError("device arrays of mixed dtypes should raise TypeError")


CONV_GEOMETRIES = (  # (kernel, stride, padding)
    ((3, 3), (1, 1), (1, 1)), ((2, 3), (2, 1), (0, 1)), ((3, 2), (2, 2), (1, 0)), ((1, 1), (1, 1), (0, 0)))


def test_conv_flip():
    """Conv PSA flip propagation (direct form): kernels, strides and paddings, every noise and form."""
    from sbnnumba.kernels import conv_reference
    from sbnnumba.kernels.scalar import NOISE_CODES
    rng = np.random.default_rng(4)
    for noise in NOISES:
        forms = ("ratio", "generic") if noise == "logistic" else ("generic",)
        for form in forms:
            for kernel, stride, padding in CONV_GEOMETRIES:
                prob = conv_problem(rng, noise, kernel, stride, padding)
                want = conv_reference.flip_propagate_conv(*as64(*prob), stride, padding, noise)
                got = ops.flip_propagate_conv(*prob, stride, padding, NOISE_CODES[noise], form=form)
                close(got, want, f"conv {noise}/{form} k{kernel} s{stride} p{padding}")


@pytest.mark.parametrize("tiles", [dict(tile_p=4, tile_r=2, channels_per_thread=1, tile_c=2), "device"])
def test_conv_flip_ratio_tiles(monkeypatch, tiles):
    """The conv ratio kernel with other tiles: several channel blocks and output-channel tiles with an odd
    number of channels (a padded pair), and the device's default tiles (128 threads per block)."""
    from sbnnumba.backends.cuda import conv_flip
    from sbnnumba.kernels import conv_reference
    monkeypatch.setattr(conv_flip, "SIMULATOR_TILES", conv_flip.CONV_TILES if tiles == "device" else tiles)
    rng = np.random.default_rng(13)
    for kernel, stride, padding in CONV_GEOMETRIES[:2]:
        prob = conv_problem(rng, "logistic", kernel, stride, padding, c_in=5, c_out=5)
        want = conv_reference.flip_propagate_conv(*as64(*prob), stride, padding, "logistic")
        close(ops.flip_propagate_conv(*prob, stride, padding, 0, form="ratio"), want,
              f"conv ratio tiles {tiles} k{kernel} s{stride} p{padding}")


def test_conv_flip_extra():
    """float64, saturated units, device arrays, and agreement with the CPU kernel."""
    from numba import cuda

    from sbnnumba.kernels import conv_cpu, conv_reference
    rng = np.random.default_rng(5)
    kernel, stride, padding = (3, 3), (2, 1), (1, 1)
    prob = conv_problem(rng, "logistic", kernel, stride, padding, dtype=np.float64)
    want = conv_reference.flip_propagate_conv(*prob, stride, padding, "logistic")
    close(ops.flip_propagate_conv(*prob, stride, padding, 0), want, "conv float64", rtol=1e-10, atol=1e-12)
    prob = conv_problem(rng, "logistic", kernel, stride, padding, scale=30.0)  # all saturated, 2W clipped
    want = conv_reference.flip_propagate_conv(*as64(*prob), stride, padding, "logistic")
    close(ops.flip_propagate_conv(*prob, stride, padding, 0, form="ratio"), want, "conv all saturated")
    prob = conv_problem(rng, "logistic", kernel, stride, padding)
    prob[3][[1, 3]] *= 25  # large weights in two channels: flip terms of their saturated units are O(1)
    prob[1][0, 1, 1, 2] = 31.0  # two saturated units (A = 30 in float32) among unsaturated ones
    prob[1][1, 3, 0, 0] = -45.0
    want = conv_reference.flip_propagate_conv(*as64(*prob), stride, padding, "logistic")
    close(ops.flip_propagate_conv(*prob, stride, padding, 0, form="ratio"), want, "conv few saturated")
    _check_inert_saturated_skip_the_exact_pass(rng)
    prob = conv_problem(rng, "logistic", kernel, stride, padding)
    got = ops.flip_propagate_conv(*[cuda.to_device(t) for t in prob], stride, padding, 0)
    if not device.is_device_array(got):
        raise AssertionError("conv device inputs: expected a device array")
    close(got.copy_to_host(), conv_cpu.flip_propagate_conv(*prob, stride, padding, 0), "conv device vs cpu")


def _packed(rng, shape):
    from sbnnumba import bitpack
    x = pm1(rng, shape)
    return x, bitpack.pack(x)


def test_xnor_gemm():
    """XNOR-popcount GEMM (int32) vs the reference and sbnnumba.bitpack.matmul; K = 70, 130 bits."""
    from sbnnumba import bitpack
    from sbnnumba.kernels import bitpack as kb
    rng = np.random.default_rng(6)
    for k, m, n, tiles in ((70, 5, 7, SMALL_GEMM_TILES), (130, 5, 7, SMALL_GEMM_TILES), (130, 9, 6, SMALL_GEMM_TILES),
                           (70, 3, 5, None), (130, 33, 37, None), (64, 2, 3, None)):
        a, aw = _packed(rng, (m, k))
        b, bw = _packed(rng, (n, k))
        got = ops.xnor_matmul(aw, PreparedWeights(bw), k, tiles=tiles)
        equal(got, kb.matmul_reference(aw, bw, k), f"gemm k={k} {m}x{n}")
        equal(got, bitpack.matmul(aw, bw, k, backend="cpu"), f"gemm vs bitpack.matmul k={k}")
        equal(bitpack.matmul(aw, bw, k, backend="cuda"), got, f"bitpack.matmul on cuda k={k}")
        equal(got, (a @ b.T).astype(np.int32), f"gemm vs float k={k}")
    a, aw = _packed(rng, (4, 70))
    b, bw = _packed(rng, (6, 70))
    equal(bitpack.matmul(aw, bitpack.prepare_weights(bw), 70, backend="cuda"), kb.matmul_reference(aw, bw, 70),
          "gemm prepared")
    from numba import cuda
    got = ops.xnor_matmul(cuda.to_device(aw), PreparedWeights(cuda.to_device(bw)), 70)
    if not device.is_device_array(got):
        raise AssertionError("gemm device inputs: expected a device array")
    equal(got.copy_to_host(), kb.matmul_reference(aw, bw, 70), "gemm device arrays")


def test_xnor_gemm_threshold():
    """Fused GEMM + threshold + packed output vs sbnnumba.bitpack.matmul_threshold (inf, flip, ties)."""
    from sbnnumba import bitpack
    from sbnnumba.kernels import bitpack as kb
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
            t_int = np.broadcast_to(np.ceil(np.clip(np.asarray(thresholds, float), -(k + 2), k + 2)), (n,))
            got = ops.xnor_matmul_threshold(aw, PreparedWeights(bw), k, t_int.astype(np.int64),
                                            np.zeros(n, bool) if fl is None else fl, tiles=tiles)
            equal(got, kb.matmul_threshold_reference(aw, bw, k, t_int, fl), f"gemm threshold k={k} {m}x{n}")
            equal(got, bitpack.matmul_threshold(aw, bw, k, thresholds, fl, backend="cpu"),
                  f"gemm threshold vs bitpack k={k}")
            equal(bitpack.matmul_threshold(aw, bw, k, thresholds, fl, backend="cuda"), got,
                  f"bitpack.matmul_threshold on cuda k={k}")


def test_binary_conv():
    """Binary conv on packed maps (exact zero padding) and its fused threshold vs the references."""
    from sbnnumba import bitpack
    from sbnnumba.kernels import bitpack as kb
    from sbnnumba.kernels import conv_reference
    rng = np.random.default_rng(8)
    for c_in in (3, 70):
        for kernel, stride, padding in CONV_GEOMETRIES:
            x, xw = _packed(rng, (2, 5, 4, c_in))
            w, ww = _packed(rng, (4,) + kernel + (c_in,))
            got = bitpack.conv2d(xw, ww, c_in, stride, padding, backend="cuda")
            name = f"binary conv c_in={c_in} k{kernel} s{stride} p{padding}"
            equal(got, kb.conv2d_reference(xw, ww, c_in, stride, padding), name)
            equal(got, bitpack.conv2d(xw, ww, c_in, stride, padding, backend="cpu"), name + " vs bitpack.conv2d")
            float_conv = conv_reference.conv_forward(np.moveaxis(x, 3, 1), np.moveaxis(w, 3, 1), 0.0, stride, padding)
            equal(got, np.rint(float_conv).astype(np.int32), name + " vs float conv")
            t = rng.normal(scale=4, size=4)
            flip = np.array([True, False, False, True])
            equal(bitpack.conv2d_threshold(xw, ww, c_in, t, flip, stride, padding, backend="cuda"),
                  bitpack.conv2d_threshold(xw, ww, c_in, t, flip, stride, padding, backend="cpu"), name + " threshold")
    from numba import cuda
    got = ops.binary_conv2d(cuda.to_device(xw), PreparedWeights(ww), 70, (2, 2), (1, 1))
    if not device.is_device_array(got):
        raise AssertionError("binary conv device input: expected a device array")
    equal(got.copy_to_host(), kb.conv2d_reference(xw, ww, 70, (2, 2), (1, 1)), "binary conv device array")


def test_elementwise():
    """Sampling from pre-drawn uniforms, the ST gradient 2 p(a) g and the PSA factor -x p(a) d."""
    from sbnnumba.noise import get_noise
    rng = np.random.default_rng(9)
    for noise in NOISES:
        nz = get_noise(noise)
        a = (2 * rng.normal(size=(3, 7))).astype(np.float32)
        u = rng.random(a.shape).astype(np.float32)
        x = ops.sample_states(a, u, nz.code)
        equal(x, nz.sample(a, u), f"sample {noise}")
        d = rng.normal(size=a.shape).astype(np.float32)
        close(ops.st_preactivation_grad(a, d, nz.code), nz.mean_grad(a) * d, f"st grad {noise}", atol=1e-6)
        close(ops.psa_preactivation_grad(x, a, d, nz.code), -x * nz.pdf(a) * d, f"psa grad {noise}", atol=1e-6)


def test_weight_cache():
    """Weights are uploaded once and reused while unchanged; in-place changes are detected exactly."""
    import gc

    from sbnnumba import bitpack
    from sbnnumba.kernels import reference
    rng = np.random.default_rng(10)
    cache = device.weight_cache
    device.clear_cache()
    x_in, a, x_out, w, d_out = dense_problem(rng, "logistic", 3, 5, 7)
    up0 = cache.uploads
    r1 = ops.flip_propagate_dense(x_in, a, x_out, w, d_out, 0)
    r2 = ops.flip_propagate_dense(x_in, a, x_out, w, d_out, 0)
    if cache.uploads != up0 + 1:
        raise AssertionError(f"two calls with the same weight made {cache.uploads - up0} uploads, expected 1")
    equal(r1, r2, "cached weight result")
    derived = list(cache._entries.values())[-1].derived
    if not derived:
        raise AssertionError("the ratio form's exp-kernel should be cached with the weight")
    w[1, 2] += 0.25  # in-place update, as an optimizer does
    r3 = ops.flip_propagate_dense(x_in, a, x_out, w, d_out, 0)
    if cache.uploads != up0 + 2:
        raise AssertionError("an in-place weight change was not re-uploaded")
    close(r3, reference.flip_propagate_dense(*as64(x_in, a, x_out, w, d_out), "logistic"), "after in-place change")
    # version tokens replace the content check
    ops.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, weight_version=1)
    n = cache.uploads
    ops.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, weight_version=1)
    if cache.uploads != n:
        raise AssertionError("same version token should not re-upload")
    ops.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, weight_version=2)
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
    bitpack.matmul(aw, bw, 70, backend="cuda")
    bitpack.matmul(aw, bw, 70, backend="cuda")
    if cache.uploads != n + 1:
        raise AssertionError("packed weights should be uploaded once")
    info = device.cache_info()
    if info["entries"] < 1 or info["bytes"] <= 0 or info["hits"] < 1:
        raise AssertionError(f"cache_info: {info}")


def _nets(make, seed=0):
    import sbnnumba as sb
    nets = {backend: make(backend) for backend in ("cpu", "cuda")}
    for key, p in nets["cuda"].params.items():
        p[...] = nets["cpu"].params[key]
    if not isinstance(nets["cuda"], sb.Network) or nets["cuda"].backend.name != "cuda":
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


def test_training_step_dense():
    """A full PSA / ST step on backend 'cuda' gives the CPU gradients (same rng seed; float32)."""
    import sbnnumba as sb
    from sbnnumba.estimators.psa import psa_path_gradient
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
    wu = {p: rng.random(l.latent.eta.shape).astype(np.float32) for p, l in nets["cpu"].latent_layers()}
    paths = {b: net.sample(x, uniforms=uniforms, weight_uniforms=wu) for b, net in nets.items()}
    weights = np.full(3, 1 / 3, np.float32)
    for k, st in enumerate(paths["cuda"].stages):
        equal(ops.sample_states(st.pre, uniforms[k], nets["cuda"].noise.code), st.state, f"device sample stage {k}")
    (l_cpu, g_cpu), (l_gpu, g_gpu) = (psa_path_gradient(nets[b], paths[b], y, weights) for b in ("cpu", "cuda"))
    close(l_gpu, l_cpu, "crn loss", rtol=1e-5, atol=1e-6)
    for key in g_cpu:
        scale = np.abs(g_cpu[key]).max() + 1e-3
        close(g_gpu[key] / scale, g_cpu[key] / scale, f"crn psa {key}", rtol=1e-4, atol=1e-5)


def test_training_step_conv():
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
