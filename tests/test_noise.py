import numpy as np
import pytest
from scipy import integrate

from sbnnumba import NOISES, get_noise
from sbnnumba.kernels import scalar

A = np.linspace(-3, 3, 61)


def test_symmetry_and_normalization(noise_name):
    f = get_noise(noise_name)
    np.testing.assert_allclose(f.cdf(-A), 1 - f.cdf(A), atol=1e-15)
    total, _ = integrate.quad(lambda t: float(f.pdf(np.array(t))), -50, 50, points=[-1, 0, 1], limit=200)
    assert abs(total - 1) < 1e-8


def test_std_is_the_second_moment_of_the_density(noise_name):
    """``std`` (closed form) against the integral of a^2 p(a); symmetric laws have mean 0."""
    f = get_noise(noise_name)
    second, _ = integrate.quad(lambda t: t * t * float(f.pdf(np.array(t))), -60, 60, points=[-1, 0, 1], limit=200)
    assert abs(f.std - np.sqrt(second)) < 1e-9


def test_pdf_is_derivative_of_cdf_and_proxy(noise_name):
    f = get_noise(noise_name)
    h = 1e-6
    a = A[np.abs(np.abs(A) - 1) > 1e-3]  # skip the kinks of uniform/triangular at |a| = 1
    a = a[np.abs(a) > 1e-3] if noise_name == "triangular" else a
    fd = (f.cdf(a + h) - f.cdf(a - h)) / (2 * h)
    np.testing.assert_allclose(f.pdf(a), fd, atol=1e-8)
    np.testing.assert_allclose(f.mean_grad(a), 2 * fd, atol=2e-8)


def test_proxy_identities():
    a = A
    np.testing.assert_allclose(NOISES["logistic"].mean(a), np.tanh(a / 2), atol=1e-14)
    np.testing.assert_allclose(NOISES["uniform"].mean(a), np.clip(a, -1, 1), atol=1e-15)
    from scipy.special import erf
    np.testing.assert_allclose(NOISES["normal"].mean(a), erf(a / np.sqrt(2)), atol=1e-14)
    t = np.clip(a, -1, 1)
    approx_sign = np.where(t < 0, 2 * t + t ** 2, 2 * t - t ** 2)
    np.testing.assert_allclose(NOISES["triangular"].mean(a), approx_sign, atol=1e-14)


def test_log_cdf_stable(noise_name):
    f = get_noise(noise_name)
    a = np.array([-0.9, -0.3, 0.0, 0.4, 0.95])
    np.testing.assert_allclose(f.log_cdf(a), np.log(f.cdf(a)), rtol=1e-12)
    if noise_name in ("logistic", "normal"):
        assert np.isfinite(f.log_cdf(np.array([-200.0]))).all()
        assert f.log_cdf(np.array([-200.0]))[0] < -190


def test_sampling_from_uniforms(noise_name):
    f = get_noise(noise_name)
    rng = np.random.default_rng(0)
    a = np.full(200_000, 0.3)
    x = f.sample(a, rng.random(a.shape))
    assert set(np.unique(x)) <= {-1.0, 1.0}
    p = f.cdf(np.array(0.3))
    # binomial standard error of the mean of x: 2 sqrt(p(1-p)/n); 5 sigma bound
    assert abs(x.mean() - (2 * p - 1)) < 5 * 2 * np.sqrt(p * (1 - p) / a.size)
    assert f.sample(np.array([0.0]), np.array([0.0]))[0] == 1.0


def test_dtype_preserved(noise_name):
    f = get_noise(noise_name)
    a = np.linspace(-2, 2, 5, dtype=np.float32)
    for fn in (f.cdf, f.pdf, f.mean, f.mean_grad, f.log_cdf):
        assert fn(a).dtype == np.float32


def test_scalar_kernels_match_numpy(noise_name):
    f = get_noise(noise_name)
    code = f.code
    for a in np.linspace(-4, 4, 33):
        assert abs(scalar.cdf(code, a) - f.cdf(np.array(a))) < 1e-15
        assert abs(scalar.pdf(code, a) - f.pdf(np.array(a))) < 1e-15
    # stable differences in the upper tail, where 1 - F loses everything
    if noise_name == "logistic":
        d = scalar.cdf_diff(code, 40.0, 39.0)
        exact = np.exp(-39.0) - np.exp(-40.0)  # to first order, relative error ~e^-39
        assert abs(d - exact) / exact < 1e-12


def test_unknown_noise_lists_names():
    with pytest.raises(ValueError, match="logistic"):
        get_noise("cauchy")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logistic_sample_kernel_is_bit_identical_to_the_numpy_formula(dtype):
    """The fused Numba sampler must give exactly ``where(u < expit(a), 1, -1)``: any differing bit would
    change the trajectory of a seeded run. Checked on 4 million values, with ``u`` set to ``expit(a)``
    itself and to its neighbouring floats (the comparisons that one ulp of sigma would flip), over the
    whole range where sigma is neither 0 nor 1, plus extremes, infinities and NaN, and on a
    non-contiguous 3-D view."""
    from scipy import special

    from sbnnumba.kernels.sampling import sample_units

    rng = np.random.default_rng(11)
    a = rng.uniform(-40, 40, size=1_000_000).astype(dtype)
    a[:8] = [0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, np.inf, -np.inf]
    a[8] = np.nan
    s = special.expit(a)
    u = np.concatenate([s, np.nextafter(s, dtype(0)), np.nextafter(s, dtype(1)),
                        rng.random(a.size, dtype=dtype)]).astype(dtype)
    a4 = np.concatenate([a] * 4)
    expected = np.where(u < special.expit(a4), dtype(1), dtype(-1))
    got = get_noise("logistic").sample(a4, u)
    assert got.dtype == dtype and np.array_equal(got, expected)
    view_a, view_u = a4[:120_000].reshape(40, 50, 60)[:, ::2, 1:], u[:120_000].reshape(40, 50, 60)[:, ::2, 1:]
    got = get_noise("logistic").sample(view_a, view_u)
    assert got.shape == view_a.shape
    assert np.array_equal(got, np.where(view_u < special.expit(view_a), dtype(1), dtype(-1)))
    assert sample_units("logistic", a.astype(np.float16), u[:a.size].astype(np.float16)) is None  # the NumPy path
    other = np.float64 if dtype == np.float32 else np.float32
    assert sample_units("logistic", a, u[:a.size].astype(other)) is None


@pytest.mark.parametrize("low, high", [(-110, 110), (-1, 1), (-20, 20)])
def test_float32_sampler_fast_decision_is_exact(low, high):
    """The float32 sampler's fast float32 decision (the exact formula only for tasks holding an entry within its
    margin) gives ``where(u < expit(a), 1, -1)`` bit for bit with ``u`` at ``expit(a)``, 1, 3 and 5 float32 steps
    either side, 0, below 2e-38, and uniform, on a range reaching past float32's sigma (expf overflows below
    -88.7), with infinities, NaN and signed zeros; and for uniform ``u`` the exact formula redoes only a few
    tasks."""
    from scipy import special

    from sbnnumba.kernels import sampling

    rng = np.random.default_rng(17)
    a = rng.uniform(low, high, 400_000).astype(np.float32)
    a[:9] = [0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, np.inf, -np.inf, np.nan]
    s = special.expit(a)
    # u below 2e-38 (subnormal, the smallest normal, just below the cut) with every a: the clipped argument matters
    tiny = np.resize(np.array([1e-45, 1e-40, 1.1754944e-38, 1.9e-38, 2.1e-38], np.float32), a.size)
    s32 = s.astype(np.float32)
    ulps = [(s32.view(np.int32) + k).view(np.float32) for k in (-5, -3, -1, 1, 3, 5)]  # where the estimate could err
    u = np.concatenate([s32, *ulps, np.zeros_like(s32), tiny, rng.random(a.size, dtype=np.float32)])
    a10 = np.concatenate([a] * 10)
    got = sampling.sample_units("logistic", a10, u)
    np.testing.assert_array_equal(got, np.where(u < special.expit(a10), np.float32(1), np.float32(-1)))
    tail_a, tail_u = a10[-a.size:][9:], u[-a.size:][9:]  # uniform u, finite a
    n_tasks = -(-tail_a.size // sampling.CHUNK)
    redone = sum(sampling._decide_f32(tail_a[i:i + sampling.CHUNK], tail_u[i:i + sampling.CHUNK],
                                      np.empty(sampling.CHUNK, np.float32)[:tail_a[i:i + sampling.CHUNK].size]) > 0
                 for i in range(0, tail_a.size, sampling.CHUNK))
    assert redone <= max(3, n_tasks // 100)


@pytest.mark.parametrize("low, high", [(-14, 14), (-1, 1), (-40, 40)])
def test_float32_normal_sampler_is_the_formula(low, high):
    """The float32 normal sampler's vectorized decision (SciPy's ``ndtr`` only for tasks holding an entry within its
    margin) gives ``where(u < ndtr(a), 1, -1)`` bit for bit with ``u`` at ``ndtr(a)``, 1, 3, 5 and 17 float32 steps
    either side, 0 and uniform, with infinities, NaN, signed zeros and the far tails (past the CDF's clip at
    12.73); Normal.sample uses it; for uniform ``u`` only a few tasks are redone."""
    from scipy import special

    from sbnnumba.kernels import sampling

    rng = np.random.default_rng(18)
    a = rng.uniform(low, high, 300_000).astype(np.float32)
    a[:9] = [0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, np.inf, -np.inf, np.nan]
    p32 = special.ndtr(a)
    assert p32.dtype == np.float32
    steps = [(p32.view(np.int32) + k).view(np.float32) for k in (-17, -5, -3, -1, 1, 3, 5, 17)]
    u = np.concatenate([p32, *[np.clip(s, 0, np.nextafter(np.float32(1), np.float32(0))) for s in steps],
                        np.zeros_like(p32), rng.random(a.size, dtype=np.float32)])
    a_all = np.concatenate([a] * 11)
    want = np.where(u < special.ndtr(a_all), np.float32(1), np.float32(-1))
    np.testing.assert_array_equal(sampling.sample_units("normal", a_all, u), want)
    np.testing.assert_array_equal(get_noise("normal").sample(a_all, u), want)
    tail_a, tail_u = a_all[-a.size:][9:], u[-a.size:][9:]  # uniform u, finite a
    unsure = np.empty(-(-tail_a.size // sampling.CHUNK), np.bool_)
    sampling._decide_normal_f32(tail_a, tail_a.view(np.uint32), tail_u, np.empty_like(tail_a), unsure)
    assert unsure.sum() <= max(3, unsure.size // 100)
    a64, u64 = a.astype(np.float64), u[:a.size].astype(np.float64)
    assert sampling.sample_units("normal", a64, u64) is None  # float64: the NumPy formula


@pytest.mark.parametrize("family", ["uniform", "triangular"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bounded_samplers_are_the_formula(family, dtype):
    """Uniform and triangular units through their Numba samplers give ``where(u < cdf(a), 1, -1)`` bit for bit with
    ``u`` at ``cdf(a)`` and one step either side, 0 and uniform, on a range past the support's ends with infinities,
    NaN, signed zeros and the support's ends; ``Noise.sample`` uses them."""
    from sbnnumba.kernels import sampling

    f = get_noise(family)
    rng = np.random.default_rng(19)
    a = rng.uniform(-1.5, 1.5, 100_000).astype(dtype)
    a[:10] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-30, np.nextafter(1, 0), np.nextafter(-1, 0)]
    p = f.cdf(a)
    u = np.concatenate([p, np.nextafter(p, 0).astype(dtype), np.nextafter(p, 1).astype(dtype), np.zeros_like(p),
                        rng.random(a.size).astype(dtype)])
    a_all = np.concatenate([a] * 5)
    want = np.where(u < f.cdf(a_all), dtype(1), dtype(-1))
    np.testing.assert_array_equal(sampling.sample_units(family, a_all, u), want)
    np.testing.assert_array_equal(f.sample(a_all, u), want)


def test_float32_sampler_without_jit_gives_the_formula():
    """Under NUMBA_DISABLE_JIT=1 the float32 sampler runs as Python (``2^n`` by ``np.ldexp``) and gives the formula's
    samples for uniform ``u``, 0 and subnormal ``u`` on [-100, 100]. (``u`` exactly at ``expit(a)`` is left out: there
    the exact fallback needs ``expf``, and plain Python rounds a float64 ``exp`` instead.)"""
    from kernel_checks import run_without_jit

    run_without_jit("""
        import numpy as np
        from scipy import special
        from sbnnumba.kernels import sampling
        rng = np.random.default_rng(5)
        a = np.tile(np.linspace(-100, 100, 1001).astype(np.float32), 4)
        u = np.concatenate([np.zeros(1001, np.float32), np.full(1001, 1e-40, np.float32),
                            rng.random(2002, dtype=np.float32)])
        got = sampling.sample_units("logistic", a, u)
        assert np.array_equal(got, np.where(u < special.expit(a), np.float32(1), np.float32(-1)))
        print("ok")
    """)


def _worst_relative_error(function, exact, both_signs):
    """A parallel Numba loop: ``max |function(x) / exact(x) - 1|`` (in float64) over the float32 values whose bits are
    ``first, first + step, ..., <= last`` (and their negatives with ``both_signs``)."""
    import numba
    from numba import prange

    @numba.njit(parallel=True)
    def worst_relative_error(first, last, step):
        n = (last - first) // step + 1
        worst = np.zeros(n // 65536 + 1)
        for block in prange(worst.size):
            w = 0.0
            for k in range(block * 65536, min(n, (block + 1) * 65536)):
                x = np.uint32(first + k * step).view(np.float32)
                w = max(w, abs(np.float64(function(x)) / exact(np.float64(x)) - 1.0))
                if both_signs:
                    w = max(w, abs(np.float64(function(-x)) / exact(-np.float64(x)) - 1.0))
            worst[block] = w
        return worst.max()

    return worst_relative_error


def test_log_f32_is_within_its_bound():
    """float32_exp.log_f32 (the exponent and mantissa by two intrinsics, an artanh series) within 3 u relative of
    ``log q`` on every 13th positive normal float32 up to 1/2, the unit entropy's range (about 82 million values)."""
    from sbnnumba.kernels import float32_exp

    worst_relative_error = _worst_relative_error(float32_exp.log_f32, np.log, False)
    first = int(np.array(np.finfo(np.float32).tiny, np.float32).view(np.uint32))
    last = int(np.array(0.5, np.float32).view(np.uint32))
    assert worst_relative_error(first, last, 13) <= 3 * 2.0**-24
    assert worst_relative_error(last - 70000, last, 1) <= 3 * 2.0**-24  # next to 1/2, every value


def test_float32_sampler_exp_estimate_is_within_its_bound():
    """The float32 decision's ``e^x`` (range reduction, degree-7 polynomial, ``2^n`` from its bits) is within a
    relative 2e-7 of the exact value on every 29th float32 in [-87, 87] (about 75 million values, both signs; worst
    9.9e-8, every 7th 1.02e-7: run log of 2026-12-06, session 10) and on every float32 at the range's end: the
    bound the decision's margin rests on (``sbnnumba.kernels.sampling`` docstring)."""
    from sbnnumba.kernels import float32_exp

    worst_relative_error = _worst_relative_error(float32_exp.exp_f32, np.exp, True)
    last = int(np.array(87.0, np.float32).view(np.uint32))
    assert worst_relative_error(0, last, 29) <= 2e-7
    assert worst_relative_error(last - 7000, last, 1) <= 2e-7  # the end of the range, every value


def test_exp_in_place_for_the_ratio_factors():
    """float32: exp_f32 within a relative 2e-7 on the factors' range, 0 below -87 (-inf: the conv factors' neutral
    channel), NaN kept, the same bytes at one and two threads; float64: NumPy's exp, bit for bit."""
    import numba

    from sbnnumba.kernels.float32_exp import exp_in_place

    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(-87, 58, 300_001), [-87, -87.5, -100, -np.inf, np.nan, 0, 58]]).astype(np.float32)
    got = {}
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            v = x.copy()
            exp_in_place(v)
            got[threads] = v
    finally:
        numba.set_num_threads(before)
    v = got[1]
    assert v.tobytes() == got[max(got)].tobytes()
    want = np.exp(x.astype(np.float64))
    finite = np.isfinite(x) & (x >= -87)
    assert np.max(np.abs(v[finite] / want[finite] - 1)) <= 2e-7
    assert np.all(v[(x < -87)] == 0) and np.isnan(v[np.isnan(x)]).all()
    y = x.astype(np.float64)
    exp_in_place(y)
    np.testing.assert_array_equal(y, np.exp(x.astype(np.float64)))
    # scaled by a power of two (the dense ratio kernel's k = s e^{2W}): the same values times the scale, exactly
    for dtype, unscaled in ((np.float32, v), (np.float64, y)):
        z = x.astype(dtype)
        exp_in_place(z, scale=2.0 ** -14)
        np.testing.assert_array_equal(z, unscaled * dtype(2.0 ** -14))
    with pytest.raises(ValueError, match="power of two"):
        exp_in_place(x.copy(), scale=3.0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_exp_and_fused_st_grad_are_bit_identical(dtype, threads):
    """The density's NumPy ``exp`` in fixed blocks on the threads (a misaligned start, a short last block) has
    the bits of one ``np.exp`` call, and logistic ``fused_st_grad`` is bit for bit ``mean_grad(a) * g`` (the
    cpu backend's ST pre-activation gradient equals the reference's); other dtypes, shapes and families
    give None (the caller's NumPy path)."""
    from sbnnumba import runtime
    from sbnnumba.backends import get_backend

    rng = np.random.default_rng(13)
    buf = -np.abs(rng.normal(0, 20, 3_000_017)).astype(dtype)  # several blocks, a short last one
    buf[:4] = [0.0, -0.0, -np.inf, -1e-40]
    noise = get_noise("logistic")
    with runtime.limited_threads(threads):
        e = buf[1:].copy()[1:]  # C-contiguous, start not 16-byte aligned
        want = np.exp(e)

        def block(lo, hi):  # what the density's blocks do with NumPy's exp
            np.exp(e[lo:hi], out=e[lo:hi])

        runtime.run_range_blocks(block, e.size, e.size, "elementwise")
        assert np.array_equal(e.view(np.uint8), want.view(np.uint8))
        a = rng.normal(0, 4, (64, 12, 30, 31)).astype(dtype)
        g = rng.normal(size=a.shape).astype(dtype)
        got = noise.fused_st_grad(a, g)
        assert got.dtype == dtype and np.array_equal(got.view(np.uint8), (noise.mean_grad(a) * g).view(np.uint8))
        ref = get_backend("reference").st_preactivation_grad(a, g, noise)
        assert np.array_equal(get_backend("cpu").st_preactivation_grad(a, g, noise).view(np.uint8), ref.view(np.uint8))
    view = a[:, ::2, 1:]
    np.testing.assert_array_equal(noise.fused_st_grad(view, g[:, ::2, 1:]), noise.mean_grad(view) * g[:, ::2, 1:])
    other = np.float64 if dtype == np.float32 else np.float32
    assert noise.fused_st_grad(a, g.astype(other)) is None and noise.fused_st_grad(a, g[:, :3]) is None
    assert get_noise("uniform").fused_st_grad(a, g) is None


def _density_arguments(rng, dtype, spread):
    """3 million values: uniform on [-spread, spread], normal, tiny; extremes, signed zeros, infinities and denormals;
    in float32 also every 97th bit pattern in [-1, 1]."""
    a = np.concatenate([rng.uniform(-spread, spread, 1_000_000), rng.normal(0, 3, 1_000_000),
                        rng.uniform(-1e-3, 1e-3, 1_000_000)]).astype(dtype)
    a[:10] = [0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, np.inf, -np.inf, 1e-40, -1e-42]
    if dtype == np.float32:
        a = np.concatenate([a, np.arange(0, 0x3F800001, 97, dtype=np.uint32).view(np.float32),
                            np.arange(0x80000000, 0xBF800001, 97, dtype=np.uint32).view(np.float32)])
    return a


def _numpy_logistic_pdf(t):
    e = np.exp(-np.abs(t))
    return e / (1 + e) ** 2


def _numpy_normal_pdf(t):
    return np.asarray(np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi), dtype=t.dtype if t.dtype.kind == "f" else np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, numpy_pdf, spread", [("logistic", _numpy_logistic_pdf, 120),
                                                     ("normal", _numpy_normal_pdf, 40)])
def test_density_passes_are_bit_identical_to_the_numpy_formula(name, numpy_pdf, spread, dtype):
    """``pdf``, ``mean_grad`` and ``fused_st_grad`` of the families with density passes (three passes,
    :mod:`sbnnumba.kernels.density`) give exactly the NumPy formula (logistic ``e / (1 + e) ** 2``, ``e = exp(-|a|)``;
    normal ``exp(-0.5 * a * a) / np.sqrt(2 * np.pi)``, its division in float64, cast to the dtype of ``a``), ``2 *`` it
    and ``(2 *`` it ``) * g``: on 3 million values (:func:`_density_arguments`), on a non-contiguous view; NaN stays
    NaN; other dtypes and non-arrays take the NumPy path."""
    rng = np.random.default_rng(12)
    a = _density_arguments(rng, dtype, spread)
    g = rng.normal(size=a.shape).astype(dtype)
    noise = get_noise(name)
    for got, want in [(noise.pdf(a), numpy_pdf(a)), (noise.mean_grad(a), 2 * numpy_pdf(a)),
                      (noise.fused_st_grad(a, g), (2 * numpy_pdf(a)) * g)]:
        assert got.dtype == dtype and got.shape == a.shape
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
    view = a[:120_000].reshape(40, 50, 60)[:, ::2, 1:]
    assert np.array_equal(noise.mean_grad(view), 2 * numpy_pdf(view))
    assert np.isnan(noise.pdf(np.array([np.nan], dtype)))[0]
    assert noise.density_passes(a.astype(np.float16), 1) is None
    assert noise.fused_st_grad(a, g.astype(np.float16)) is None and noise.fused_st_grad(a, list(g[:3])) is None
    np.testing.assert_array_equal(noise.pdf(np.arange(3)), numpy_pdf(np.arange(3)))
    np.testing.assert_array_equal(noise.mean_grad([0.5, -1.0]), 2 * numpy_pdf(np.array([0.5, -1.0])))

def _exact_cdf(name, t):
    """F(t) of uniform / triangular noise in exact rational arithmetic."""
    from fractions import Fraction
    t = min(max(Fraction(t), Fraction(-1)), Fraction(1))
    if name == "uniform":
        return (t + 1) / 2
    return (1 + t) ** 2 / 2 if t < 0 else 1 - (1 - t) ** 2 / 2


@pytest.mark.parametrize("name", ["uniform", "triangular"])
def test_bounded_cdf_diff_equals_exact_difference(name):
    """The branch-free closed form of the bounded-noise kernels against F(u) - F(v) in exact arithmetic:
    within 4 ulp of the difference itself, also for close arguments (where subtracting two F values
    would lose the digits: the factored same-sign form), across 0 and beyond the support."""
    rng = np.random.default_rng(11)
    code = scalar.NOISE_CODES[name]
    v = np.concatenate([rng.uniform(-1.3, 1.3, 3000), [-1.0, 1.0, 0.0, 0.5, -0.999]])
    gaps = rng.choice([1e-12, 1e-6, 1e-2, 0.5, 2.0], size=v.size) * rng.choice([-1, 1], size=v.size)
    worst, worst_generic = 0.0, 0.0
    for vv, gap in zip(v, gaps):
        uu = vv + gap
        exact = float(_exact_cdf(name, uu) - _exact_cdf(name, vv))
        got = scalar.bounded_cdf_diff(name == "triangular", uu, vv, 1.0)
        scale = max(abs(exact), 1e-300)
        worst = max(worst, abs(got - exact) / scale)
        worst_generic = max(worst_generic, abs(scalar.cdf_diff(code, uu, vv) - exact) / scale)
    assert worst < 4 * np.finfo(float).eps, worst
    if name == "triangular":
        assert worst_generic > 1e3 * worst  # the difference of two F values loses digits for close arguments
