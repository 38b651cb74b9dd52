"""The ratio form's paired terms (sbnnumba.kernels.ratio_pair): one division for two output units, with the accuracy
bound its docstring states, in the scalar rule and in both conv kernel layouts (issue #39)."""
import numba
import numpy as np
import pytest

from sbnnumba.kernels import conv_cpu, conv_reference, ratio_pair
from sbnnumba.kernels.scalar import LOGISTIC
from sbnnumba.noise import get_noise

U32 = 2.0 ** -24  # unit roundoff of float32


@numba.njit
def _pairs(g0, e0, k0, g1, e1, k1, big):
    out = np.empty(g0.shape, g0.dtype)
    one = g0.dtype.type(1)
    for i in range(g0.size):
        out[i] = ratio_pair.pair_term(g0[i], ratio_pair.denominator(e0[i], k0[i], one, big),
                                      g1[i], ratio_pair.denominator(e1[i], k1[i], one, big))
    return out


def _factors(rng, n, dtype):
    # e^{-a}, e^{+-2W} over the ratio form's whole range and beyond: |a| <= A = 30, |2W| <= 58 (C = 50 in float32)
    g = rng.normal(size=n) * np.exp(rng.uniform(-20, 5, n))
    e = np.exp(rng.uniform(-30, 30, n))
    k = np.exp(rng.uniform(-58, 58, n))
    return [t.astype(dtype) for t in (g, e, k)]


def test_pair_term_within_its_bound_over_the_ratio_range():
    rng = np.random.default_rng(0)
    g0, e0, k0 = _factors(rng, 200_000, np.float32)
    g1, e1, k1 = _factors(rng, 200_000, np.float32)
    big = ratio_pair.clamp(np.float32)
    got = _pairs(g0, e0, k0, g1, e1, k1, big).astype(np.float64)
    assert np.all(np.isfinite(got))  # D D' <= BIG^2 is finite
    f64 = [t.astype(np.float64) for t in (g0, e0, k0, g1, e1, k1)]
    exact = f64[0] / (1 + f64[1] * f64[2]) + f64[3] / (1 + f64[4] * f64[5])
    scale = np.abs(f64[0]) + np.abs(f64[3])
    err = np.abs(got - exact) / scale
    assert err.max() <= 6 * U32 + 2.0 ** -40
    # the pairing is not exact division: some pairs differ from the two correctly rounded quotients' sum
    two_div = (g0 / (1 + e0 * k0)).astype(np.float64) + (g1 / (1 + e1 * k1)).astype(np.float64)
    assert np.count_nonzero(got != two_div) > 0


def test_neutral_partner_gives_the_exact_quotient():
    rng = np.random.default_rng(1)
    g, e, k = _factors(rng, 10_000, np.float32)
    zero, one = np.zeros_like(g), np.ones_like(g)
    big = ratio_pair.clamp(np.float32)
    got = _pairs(g, e, k, zero, zero, one, big)  # (g', e') = (0, 0): D' = 1
    d = np.minimum(np.float32(1) + (e.astype(np.float64) * k).astype(np.float32), big)  # one rounding: the FMA
    d_fma = np.minimum((1 + e.astype(np.float64) * k.astype(np.float64)).astype(np.float32), big)
    assert got.tobytes() == (g / d_fma).tobytes()
    assert np.count_nonzero(d != d_fma) > 0  # the FMA is one rounding, not two: the check above can tell


def test_clamp_moves_a_term_by_less_than_g_over_big():
    big = ratio_pair.clamp(np.float32)
    g = np.array([1.0, -3.0], np.float32)
    e = np.array([np.exp(30.0)] * 2, np.float32)
    k = np.array([np.exp(58.0)] * 2, np.float32)  # 1 + e k = e^88: beyond BIG
    got = _pairs(g, e, k, g, e, k, big)
    assert np.all(np.abs(got) <= 2 * np.abs(g) / big)


@numba.njit
def _factors_chosen(s, k_pos, k_neg):
    out = np.empty(k_pos.shape, k_pos.dtype)
    for i in range(s.size):  # a vectorized loop, as in the kernels
        out[i] = ratio_pair.factor(s[i], k_pos[i], k_neg[i])
    return out


@pytest.mark.parametrize("dtype", [np.int8, np.float32])
def test_factor_is_e_to_2w_x_in_by_the_sign_of_x_in(dtype):
    rng = np.random.default_rng(2)
    s = rng.choice(np.array([-1, 0, 1], dtype), 1000)
    k_pos = np.exp(rng.uniform(-58, 58, 1000)).astype(np.float32)
    k_neg = (1 / k_pos).astype(np.float32)
    got = _factors_chosen(s, k_pos, k_neg)
    assert np.array_equal(got[s == 1], k_pos[s == 1]) and np.array_equal(got[s == -1], k_neg[s == -1])
    assert np.array_equal(got[s == 0], k_pos[s == 0])  # padded examples (g = 0): either factor, the positive one


@pytest.mark.parametrize("layout", ["cells", "channels"])
@pytest.mark.parametrize("c_out", [7, 8])  # odd: the neutral channel
def test_conv_ratio_kernels_within_the_bound_of_a_float64_reference(layout, c_out):
    rng = np.random.default_rng(2)
    b, c_in, h, w, kh = 5, 20, 9, 8, 3
    x_in = np.where(rng.random((b, c_in, h, w)) < 0.5, 1, -1).astype(np.float32)
    weight = (rng.normal(size=(c_out, c_in, kh, kh)) * 0.6).astype(np.float32)
    a = (rng.normal(size=(b, c_out, 7, 6)) * 6).astype(np.float32)
    x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(np.float32)
    d_out = rng.normal(size=a.shape).astype(np.float32)
    args = ((1, 1), (0, 0))
    got = conv_cpu.flip_propagate_conv(x_in, a, x_out, weight, d_out, *args, LOGISTIC, form="ratio", layout=layout)
    want = conv_reference.flip_propagate_conv(*(t.astype(np.float64) for t in (x_in, a, x_out, weight, d_out)), *args,
                                              get_noise("logistic"))
    # per input unit: S = sum over its connections of |g|, n = C_out kh kw terms; the ratio sums R and the all-ones
    # term A each add up to n terms (recursive summation: (n - 1) u S), pairs within 6u + 1/BIG, exp within ~2u
    abs_g = np.abs(x_out * d_out).astype(np.float64)
    s = conv_reference.col2im(conv_reference._rows(abs_g) @ np.ones((c_out, c_in * kh * kh)), x_in.shape[1:],
                              (kh, kh), *args)
    n = c_out * kh * kh
    bound = (2 * n + 12) * U32 * s + 1e-30
    assert np.all(np.abs(got - want) <= bound)
    assert np.abs(got - want).max() > 0  # float32 against float64: the comparison can see an error


@numba.njit
def _fma_compiled(a, b, c):
    return ratio_pair.fma(a, b, c)


def _fma_cases(rng, dtype):
    # IEEE special values, random magnitudes, near-cancellations, and float32 products whose exact value lies a
    # hair off a float32 halfway point (rounding through float64 first would give the other neighbour)
    info = np.finfo(dtype)
    specials = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, info.tiny, info.smallest_subnormal, info.max,
                -info.max, info.eps, 1 + info.eps]
    cases = [(x, y, z) for x in specials for y in specials for z in specials]
    n = 3000
    a = rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))
    b = rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))
    near = -(a * b) * (1 + rng.integers(-3, 4, n) * info.eps)
    far = rng.standard_normal(n) * np.exp2(rng.integers(-60, 60, n))
    cases += list(zip(a, b, near)) + list(zip(a, b, far))
    halves = 1 + rng.integers(0, 2 ** 12, (2, n)) * 2.0 ** -12
    tiny = rng.choice([1.0, -1.0], n) * np.exp2(-rng.integers(55, 70, n).astype(float))
    cases += list(zip(halves[0], halves[1], tiny))
    return [tuple(dtype(v) for v in case) for case in cases]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_fma_python_twin_rounds_once_as_the_hardware_does(dtype):
    """The NUMBA_DISABLE_JIT twin of ratio_pair.fma gives the compiled llvm.fma's bits (signed zeros, subnormals,
    overflow, NaN), where rounding the float64 result again would not (float32 halfway cases)."""
    rng = np.random.default_rng(11)
    twice_rounded = 0
    for a, b, c in _fma_cases(rng, dtype):
        want = dtype(_fma_compiled(a, b, c))
        got = ratio_pair._fma_python(a, b, c)
        assert type(got) is dtype
        assert got.tobytes() == want.tobytes() or (np.isnan(got) and np.isnan(want)), (a, b, c, got, want)
        with np.errstate(all="ignore"):
            twice_rounded += dtype(np.float64(a) * np.float64(b) + np.float64(c)) != want
    if dtype is np.float32:
        assert twice_rounded > 0  # the cases include those where one rounding matters
