"""Dense PSA flip propagation: Numba kernels == NumPy reference == brute-force flips."""
import numba
import numpy as np
import pytest
from kernel_checks import assert_same_output_compiled_and_cached, stdout_at_threads, vector_width_targets

from sbnnumba import get_noise
from sbnnumba.kernels import cpu, lanes, probit, reference


def _layer(rng, b, n_in, n_out, dtype, scale=1.0):
    w = (scale * rng.normal(size=(n_out, n_in))).astype(dtype)
    x_in = np.where(rng.random((b, n_in)) < 0.5, 1, -1).astype(dtype)
    a = (x_in @ w.T + rng.normal(size=n_out)).astype(dtype)
    x_out = np.where(rng.random((b, n_out)) < 0.5, 1, -1).astype(dtype)
    d_out = rng.normal(size=(b, n_out)).astype(dtype)
    return x_in, a, x_out, w, d_out


def test_reference_delta_equals_brute_force_flips(noise_name):
    """Delta_ij by explicitly flipping input i and recomputing F(-x_j a_j) (spec test 7)."""
    rng = np.random.default_rng(1)
    f = get_noise(noise_name)
    x_in, a, x_out, w, _ = _layer(rng, 2, 4, 3, np.float64, scale=0.4)
    bias = a - x_in @ w.T
    delta = reference.flip_deltas_dense(x_in, a, x_out, w, noise_name)
    for b in range(2):
        for i in range(4):
            flipped = x_in[b].copy()
            flipped[i] *= -1
            a_f = w @ flipped + bias[b]
            brute = f.cdf(-x_out[b] * a_f) - f.cdf(-x_out[b] * a[b])
            np.testing.assert_allclose(delta[b, i], brute, atol=1e-15)


def test_logistic_shortcut_matches_reference():
    """Spec section 2.9: d_i = sum_j x_j d_j sigma(a_j) - sum_j x_j d_j sigma(a_j - 2 W_ji x_i)."""
    rng = np.random.default_rng(2)
    x_in, a, x_out, w, d_out = _layer(rng, 3, 5, 6, np.float64)
    sig = lambda t: 1 / (1 + np.exp(-t))
    shortcut = (x_out * d_out * sig(a)).sum(1)[:, None] - np.einsum(
        "bj,bij->bi", x_out * d_out, sig(a[:, None, :] - 2 * w.T[None] * x_in[:, :, None]))
    np.testing.assert_allclose(reference.flip_propagate_dense(x_in, a, x_out, w, d_out, "logistic"), shortcut,
                               atol=1e-14)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (4, 33, 17)])
def test_numba_generic_equals_reference(noise_name, dtype, tol, shape):
    rng = np.random.default_rng(3)
    args = _layer(rng, *shape, dtype, scale=0.7)
    ref = reference.flip_propagate_dense(*args, noise_name)
    got = cpu.flip_propagate_dense(*args, get_noise(noise_name).code, form="generic")
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, atol=tol * max(1, np.abs(ref).max()))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (4, 33, 17)])
@pytest.mark.parametrize("noise_name", ["uniform", "triangular"])
@pytest.mark.parametrize("scale", [0.3, 1.5])  # 1.5: most flips cross the support's ends
def test_numba_bounded_equals_reference(noise_name, dtype, tol, shape, scale):
    rng = np.random.default_rng(3)
    args = _layer(rng, *shape, dtype, scale=scale)
    ref = reference.flip_propagate_dense(*args, noise_name)
    code = get_noise(noise_name).code
    for form in ("bounded", "auto"):
        got = cpu.flip_propagate_dense(*args, code, form=form)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, atol=tol * max(1, np.abs(ref).max()), err_msg=form)


def test_dtype_name_is_numpys_for_every_spelling():
    """The cached name (kernels.scalar.dtype_name) equals NumPy's for types, dtypes and strings, and does not mix them
    up once cached; the call paths that use it give the dtype-dependent answers (choose_form, ratio_pair.clamp)."""
    from sbnnumba.kernels import ratio_pair, scalar

    for spelling in (np.float32, np.float64, np.dtype("float32"), np.dtype(np.float64), "float32", "f8", np.int8):
        for _ in range(2):
            assert scalar.dtype_name(spelling) == np.dtype(spelling).name
    assert ratio_pair.clamp(np.float32) == np.float32(2.0 ** 40) and ratio_pair.clamp(np.float32).dtype == np.float32
    assert ratio_pair.clamp(np.dtype("float64")) == 2.0 ** 200


def test_choose_form():
    codes = {name: get_noise(name).code for name in ("logistic", "normal", "uniform", "triangular")}
    f32, f64 = np.float32, np.float64
    assert [cpu.choose_form("auto", c, f32) for c in codes.values()] == ["ratio", "probit", "bounded", "bounded"]
    assert [cpu.choose_form("auto", c, f64) for c in codes.values()] == ["ratio", "generic", "bounded", "bounded"]
    assert cpu.choose_form("generic", codes["triangular"], f32) == "generic"
    assert cpu.choose_form("probit", codes["normal"], f32) == "probit"
    with pytest.raises(ValueError, match="bounded form does not hold for normal"):
        cpu.choose_form("bounded", codes["normal"], f32)
    with pytest.raises(ValueError, match="ratio form does not hold for uniform"):
        cpu.choose_form("ratio", codes["uniform"], f32)
    with pytest.raises(ValueError, match="probit form does not hold for logistic"):
        cpu.choose_form("probit", codes["logistic"], f32)
    with pytest.raises(ValueError, match="probit form admits float32 only, got a float64 call"):
        cpu.choose_form("probit", codes["normal"], f64)
    with pytest.raises(ValueError, match="form"):
        cpu.choose_form("fast", codes["logistic"], f32)
    with pytest.raises(ValueError, match="noise_code: expected one of 0 .logistic."):  # no default family
        cpu.choose_form("auto", 4, f32)


# The probit form's error per term: each Phi within 3.5 u in absolute terms (u = 2^-24, sbnnumba/kernels/probit.py),
# so Phi(p) - Phi(q) within 7 u plus the rounding of the difference and of u = v + s w x (below 0.5 u), then the
# product with d (0.5 u |d|); float32 sums of N terms add (N / 32 + 5) u sum |Delta d| at most (32 lanes, then the
# lane tree), so |d_in - exact| <= (13 + N / 32) u sum_j |d_out[b, j]|, the bound asserted (N the layer's outputs).
# Scale 2.0: most flips move units across the mean; 0.05: every flip is small, the cancellation case.
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (4, 33, 17), (5, 40, 70), (8, 64, 200)])
@pytest.mark.parametrize("scale", [0.05, 0.7, 2.0])
def test_numba_probit_equals_reference_within_bound(shape, scale):
    rng = np.random.default_rng(31)
    args = _layer(rng, *shape, np.float32, scale=scale)
    ref = reference.flip_propagate_dense(*(t.astype(np.float64) for t in args), "normal")
    code = get_noise("normal").code
    for form in ("probit", "auto"):
        got = cpu.flip_propagate_dense(*args, code, form=form)
        assert got.dtype == np.float32
        n_out = shape[2]
        bound = (13 + n_out / 32) * 2.0 ** -24 * np.abs(args[4]).sum(axis=1, keepdims=True)
        assert (np.abs(got - ref) <= bound).all(), (form, (np.abs(got - ref) / bound).max())


def test_probit_form_saturated_units_add_exact_zeros():
    """Units far in both tails (|a| - 2 max |W| > 12.7, beyond the CDF's clip) get equal values for every flip, so
    their terms are exactly 0, as the exact terms (below 1e-37) round to in float32; a zero weight row adds 0 too."""
    rng = np.random.default_rng(32)
    x_in, a, x_out, w, d_out = _layer(rng, 4, 9, 6, np.float32, scale=0.3)
    a[:, :3] = np.array([-40.0, 25.0, 16.0], np.float32)  # every flip moves them by under 2 |W| < 3
    w[3] = 0
    only_tails = d_out.copy()
    only_tails[:, 3:] = 0
    got = cpu.flip_propagate_dense(x_in, a, x_out, w, only_tails, get_noise("normal").code, form="probit")
    assert (got == 0).all()
    zero_row = np.zeros_like(d_out)
    zero_row[:, 3] = d_out[:, 3]
    assert (cpu.flip_propagate_dense(x_in, a, x_out, w, zero_row, get_noise("normal").code, form="probit") == 0).all()


def test_probit_tails_of_any_layout():
    """The per-unit terms Phi(v), Phi(-v) of the probit form for C, Fortran and strided arrays alike."""
    from scipy.special import ndtr
    v = (3 * np.random.default_rng(34).normal(size=(6, 9))).astype(np.float32)
    for layout in (v, v.T, v[:, ::2]):
        lo, hi = cpu.probit_tails(layout)
        assert lo.shape == hi.shape == layout.shape
        np.testing.assert_allclose(lo, ndtr(layout.astype(np.float64)), rtol=0, atol=3.5 * 2.0 ** -24)
        np.testing.assert_allclose(hi, ndtr(-layout.astype(np.float64)), rtol=0, atol=3.5 * 2.0 ** -24)


def test_probit_form_passes_non_finite_calls_to_the_generic_form():
    """The probit kernels assume finite values (fastmath): a call with a NaN or infinite pre-activation or weight runs
    the generic form, which carries NaN and infinities through exactly (the same bits as asking for it)."""
    rng = np.random.default_rng(35)
    x_in, a, x_out, w, d_out = _layer(rng, 3, 33, 40, np.float32, scale=0.5)
    code = get_noise("normal").code
    finite = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, code, form="probit")
    assert not np.array_equal(finite, cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, code, form="generic"))
    for bad_a, bad_w in ((np.nan, None), (np.inf, None), (None, np.nan), (None, -np.inf)):
        a2, w2 = a.copy(), w.copy()
        if bad_a is not None:
            a2[1, 7] = bad_a
        if bad_w is not None:
            w2[4, 2] = bad_w
        got = cpu.flip_propagate_dense(x_in, a2, x_out, w2, d_out, code, form="probit")
        np.testing.assert_array_equal(got, cpu.flip_propagate_dense(x_in, a2, x_out, w2, d_out, code, form="generic"))


def test_probit_form_rejects_float64():
    args = _layer(np.random.default_rng(33), 2, 3, 4, np.float64)
    with pytest.raises(ValueError, match="probit form admits float32 only"):
        cpu.flip_propagate_dense(*args, get_noise("normal").code, form="probit")
    got = cpu.flip_propagate_dense(*args, get_noise("normal").code)  # auto: the generic form in float64
    np.testing.assert_allclose(got, reference.flip_propagate_dense(*args, "normal"), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ratio_kernel_bits_do_not_depend_on_the_chunk(dtype, monkeypatch):
    """``cpu._CHUNK_BYTES`` is a speed setting only: each input unit's sum runs in the same lanes and order whether
    its unit falls in a block of 4 or in the one-row loop of a partial block, so chunks of 4, 8, 36 and all the input
    units give the same bits (70 outputs: two full lane blocks and a remainder of 6)."""
    rng = np.random.default_rng(36)
    args = _layer(rng, 6, 75, 70, dtype, scale=0.5)
    row_bytes = 70 * np.dtype(dtype).itemsize
    results = []
    for units in (4, 8, 36, 76):
        monkeypatch.setattr(cpu, "_CHUNK_BYTES", units * row_bytes)
        assert cpu._chunk_units(75, 70, np.dtype(dtype).itemsize) == units
        results.append(cpu.flip_propagate_dense(*args, 0, form="ratio").tobytes())
    assert len(set(results)) == 1


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
def test_numba_ratio_equals_reference(dtype, tol):
    rng = np.random.default_rng(4)
    args = _layer(rng, 5, 40, 70, dtype, scale=0.5)
    ref = reference.flip_propagate_dense(*args, "logistic")
    got = cpu.flip_propagate_dense(*args, 0, form="ratio")
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
@pytest.mark.parametrize("chunk_bytes", [None, 8 * 9 * 4])
def test_ratio_kernel_sign_blocks(dtype, tol, chunk_bytes, monkeypatch):
    """The ratio kernel takes its 4-unit blocks among one example's +1 units, then its -1 units, within
    chunks of input units: rows all +1, all -1, and +1 counts 0..n_in (every partial-block length of both
    groups) against the reference; once in one chunk, once in chunks of 8 units (float32; 4 in float64)
    with a partial last chunk."""
    if chunk_bytes is not None:
        monkeypatch.setattr(cpu, "_CHUNK_BYTES", chunk_bytes)
        assert cpu._chunk_units(11, 9, np.dtype(dtype).itemsize) == (8 if dtype == np.float32 else 4)
    rng = np.random.default_rng(14)
    n_in = 11
    x_in, a, x_out, w, d_out = _layer(rng, n_in + 3, n_in, 9, dtype, scale=0.6)
    for b in range(n_in + 1):  # example b has exactly b inputs at +1, at shuffled positions
        x_in[b] = -1
        x_in[b, rng.permutation(n_in)[:b]] = 1
    x_in[n_in + 1] = 1
    x_in[n_in + 2] = -1
    a = (x_in @ w.T + rng.normal(size=9)).astype(dtype)
    ref = reference.flip_propagate_dense(x_in, a, x_out, w, d_out, "logistic")
    got = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio")
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())


def test_ratio_form_no_overflow_float32():
    """Huge pre-activations and weights would overflow exp() in float32 without clamping (pitfall 6)."""
    rng = np.random.default_rng(5)
    x_in, a, x_out, w, d_out = _layer(rng, 2, 6, 4, np.float32)
    a[0, :2] = [-200.0, 300.0]
    w[1, :3] = [60.0, -70.0, 45.0]
    got = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio")
    ref = reference.flip_propagate_dense(x_in.astype(np.float64), a.astype(np.float64), x_out.astype(np.float64),
                                         w.astype(np.float64), d_out.astype(np.float64), "logistic")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())


@numba.njit(fastmath=cpu._LANE_FASTMATH)
def _pair_values(h0, d0, h1, d1, out):
    # cpu.ratio_pair_value with the ratio kernel's fastmath flags, in a loop that vectorizes as the kernel's lanes do
    for i in range(out.size):
        out[i] = cpu.ratio_pair_value(h0[i], d0[i], h1[i], d1[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ratio_pairs_stay_within_their_bound_over_the_scaled_range(dtype):
    """One division for two terms (``cpu.ratio_pair_value``): over the whole range the scaled factors take
    (``c = s e^{+-a}``, ``|a| <= A``; ``k = s e^{2W}``, ``|2W| <= C``; ``h = 2^{-E} g c`` with ``|2^{-E} g| < 1``, down
    to 2^-30 of it), both ends included, a pair is finite and within ``6u (|h/D| + |h'/D'|)`` of the exact sum of its
    two terms (``D = c + k``, rounded once), plus the roundings below the normal range: a subnormal numerator's (the
    smallest subnormal per product, over ``D D'``) and a subnormal pair's own (twice the smallest subnormal), as the
    module docstring states."""
    rng = np.random.default_rng(41)
    dt = np.dtype(dtype)
    lim, clip = cpu.ratio_limits(dt)
    s = cpu.RATIO_SCALE[dt]
    u = np.finfo(dt).eps / 2
    n = 200_000
    a = rng.uniform(-lim, lim, (2, n))
    two_w = rng.uniform(-clip, clip, (2, n))
    a[:, :8] = [[lim, -lim, lim, -lim, lim, -lim, lim, -lim]] * 2  # the corners: the largest and smallest D D'
    two_w[:, :8] = [[clip, -clip, -clip, clip, clip, -clip, clip, -clip]] * 2
    g = rng.uniform(-1, 1, (2, n)) * np.exp2(-rng.uniform(0, 30, (2, n)))
    c = (s * np.exp(a)).astype(dtype)
    k = (s * np.exp(two_w)).astype(dtype)
    h = (g * c).astype(dtype)
    d = (c + k).astype(dtype)  # float32 or float64 sums, as the kernel forms them
    got = np.empty(n, dtype)
    _pair_values(h[0], d[0], h[1], d[1], got)
    c64, k64, h64 = (t.astype(np.float64) for t in (c, k, h))
    terms = h64 / (c64 + k64)  # float64: exact enough for a float32 check; for float64 below its relative 4u
    exact = terms[0] + terms[1]
    tiny = np.finfo(dt).smallest_subnormal
    subnormal = 2 * tiny / (d[0].astype(np.float64) * d[1]) + 2 * tiny
    bound = 6 * u * (np.abs(terms[0]) + np.abs(terms[1])) + subnormal
    assert np.all(np.isfinite(got))
    slack = 1.0 if dtype == np.float32 else 1.5  # float64: the float64 "exact" terms carry their own rounding
    assert np.all(np.abs(got - exact) <= slack * bound)
    # the subnormal term, in units of the example's max |g| (here below 1): 2^-33 at most, as stated
    assert subnormal.max() <= 2.0 ** -33 * (1 if dtype == np.float32 else 2.0 ** -29)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ratio_form_scales_exactly_with_the_gradient(dtype):
    """The ratio kernel scales each example's ``g`` by a power of two before its pairs and the sum back after
    (``cpu._ratio_units``, ``RATIO_SCALE``): exact operations, so ``d_out 2^m`` gives ``d_in 2^m`` bit for bit, with
    each example at its own magnitude (70 outputs: paired lanes and a remainder; 1100: both, in chunks)."""
    rng = np.random.default_rng(42)
    for n_out, n_in in ((70, 40), (1100, 90)):
        x_in, a, x_out, w, d_out = _layer(rng, 6, n_in, n_out, dtype, scale=0.3)
        d_out *= np.exp2(rng.integers(-30, 30, size=(6, 1))).astype(dtype)  # per-example magnitudes
        base = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio")
        for m in (-40, -3, 1, 40):
            up = dtype(2.0 ** m)
            got = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out * up, 0, form="ratio")
            np.testing.assert_array_equal(got, base * up)


def test_ratio_form_paired_lanes_at_the_limits_float32():
    """Pre-activations at +-A and weights beyond the clip in a layer wide enough for paired lanes (96 outputs):
    the largest and smallest products of two denominators stay finite and the sums match the float64 reference,
    with gradients of very different magnitudes in one example."""
    rng = np.random.default_rng(43)
    x_in, a, x_out, w, d_out = _layer(rng, 4, 12, 96, np.float32)
    lim = cpu.ratio_limits(np.float32)[0]
    a[:, ::3] = lim - 0.01
    a[:, 1::3] = -(lim - 0.01)
    w[::2, :4] = 40.0  # 2W = 80, clipped
    w[1::2, :4] = -40.0
    d_out[0, ::2] *= np.float32(1e-12)
    d_out[1] *= np.float32(1e12)
    args64 = [t.astype(np.float64) for t in (x_in, a, x_out, w, d_out)]
    ref = reference.flip_propagate_dense(*args64, "logistic")
    got = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio")
    assert np.all(np.isfinite(got))
    scale = np.abs(args64[2] * args64[4]).sum(axis=1, keepdims=True)
    assert np.all(np.abs(got - ref) <= 1e-6 * scale)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
def test_ratio_form_splits_unsafe_pairs_to_generic(dtype, tol):
    """Saturated units (|a| > A) are summed by the generic form, the rest by the ratio form with 2W clipped
    to [-C, C]; the sum equals the reference (and the all-generic kernel) whatever the mix."""
    rng = np.random.default_rng(7)
    x_in, a, x_out, w, d_out = _layer(rng, 6, 37, 23, dtype, scale=0.5)
    lim = cpu.ratio_limits(dtype)[0]
    a[0, 3] = lim + 15      # one saturated unit in one example
    a[2, :5] = -lim - 8     # several in another
    a[4, 10] = lim + 1
    a[1, :] = lim + 20      # an example with every unit saturated
    w[7, 11] = -300.0       # 2W clipped: flips of input 11 saturate unit 7 either way
    w[8, 12] = 2.0 * lim    # a weight that moves a unit across the whole range
    big = 1.5 * cpu.EXP_ARG_LIMIT[np.dtype(dtype)]
    a[3, 2], w[2, 0], x_in[3, 0] = big, big / 2, 1.0  # beyond exp's range; flipping input 0 gives a = 0
    args = (x_in, a, x_out, w, d_out)
    unsafe = cpu.ratio_unsafe_pairs(a)
    assert 0 < unsafe.sum() < unsafe.size and unsafe[1].all()
    ref = reference.flip_propagate_dense(*(t.astype(np.float64) for t in args), "logistic")
    got = cpu.flip_propagate_dense(*args, 0, form="ratio")
    generic = cpu.flip_propagate_dense(*args, 0, form="generic")
    assert got.dtype == dtype and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(got, generic, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inert_saturated_units_are_left_out_within_half_a_rounding_unit(dtype):
    """A saturated unit whose flips keep it in sigma's flat tail (|a| - 2 max|W| > T) is left out of the
    direct sum: its true terms are below |g| e^{-T}, half a rounding unit. Units within the bound are
    summed (one just inside it, one whose large weight pulls it across), and the result matches the
    float64 reference."""
    rng = np.random.default_rng(9)
    x_in, a, x_out, w, d_out = _layer(rng, 3, 11, 6, dtype, scale=0.3)
    lim, flat = cpu.ratio_limits(dtype)[0], cpu.SIGMA_FLAT[np.dtype(dtype)]
    w[4, 2] = lim                  # unit 4 can cross from one tail to the other
    w[5, 0] = (lim + 1 - flat) / 2  # reach of unit 5 = lim + 1 - T: a[2, 5] below is saturated
    reach = 2 * np.abs(w).max(axis=1)
    a[0, 3] = lim + flat + reach[3] + 0.5   # saturated, |a| - reach = A + T + 0.5 > T: inert
    a[1, 4] = -(lim + 1)                    # saturated, reach = 2 lim: active
    a[2, 5] = reach[5] + flat - 0.5         # saturated, |a| - reach = T - 0.5: active
    assert np.all(np.abs(a[[0, 1, 2], [3, 4, 5]]) > lim)
    active = cpu.active_saturated(a, w)
    assert not active[0, 3] and active[1, 4] and active[2, 5] and active.sum() == 2
    args64 = [t.astype(np.float64) for t in (x_in, a, x_out, w, d_out)]
    only_inert = np.zeros_like(args64[4])
    only_inert[0, 3] = args64[4][0, 3]
    dropped = reference.flip_propagate_dense(*args64[:4], only_inert, "logistic")
    assert 0 < np.abs(dropped).max() < abs(only_inert[0, 3]) * np.exp(-flat)
    got = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio")
    ref = reference.flip_propagate_dense(*args64, "logistic")
    tol = 3e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())


def test_ratio_form_all_pairs_unsafe():
    rng = np.random.default_rng(8)
    x_in, a, x_out, w, d_out = _layer(rng, 2, 5, 3, np.float64)
    a[:] = np.where(rng.random(a.shape) < 0.5, -310.0, 310.0)
    got = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio")
    np.testing.assert_allclose(got, reference.flip_propagate_dense(x_in, a, x_out, w, d_out, "logistic"),
                               atol=1e-15)


def test_ratio_form_rejects_other_noise():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="logistic"):
        cpu.flip_propagate_dense(*_layer(rng, 1, 2, 2, np.float64), get_noise("normal").code, form="ratio")


def test_linearized_reference_is_first_order_delta():
    rng = np.random.default_rng(7)
    x_in, a, x_out, w, d_out = _layer(rng, 2, 3, 4, np.float64)
    p = get_noise("normal").pdf(a)
    lin = np.einsum("bij,bj->bi", 2 * x_out[:, None, :] * x_in[:, :, None] * w.T[None] * p[:, None, :], d_out)
    np.testing.assert_allclose(reference.flip_propagate_dense_linearized(x_in, a, x_out, w, d_out, "normal"), lin,
                               atol=1e-14)


_THREADS_PROBE = """
import hashlib
import numpy as np
from sbnnumba.kernels import cpu
rng = np.random.default_rng(13)
h = hashlib.sha256()
for dtype in (np.float32, np.float64):
    w = (0.5 * rng.normal(size=(70, 150))).astype(dtype)
    x_in = np.where(rng.random((37, 150)) < 0.5, 1, -1).astype(dtype)
    a = (x_in @ w.T).astype(dtype)
    a[0, :3] = [-200.0, 300.0, 45.0]  # saturated units: the ratio form sums them directly
    x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(dtype)
    d_out = rng.normal(size=a.shape).astype(dtype)
    forms = ((0, "ratio"), (3, "bounded"), (1, "generic")) + (((1, "probit"),) if dtype == np.float32 else ())
    for code, form in forms:
        h.update(cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, code, form=form).tobytes())
print(h.hexdigest())
"""


def test_dense_flip_bit_identical_at_one_and_two_threads():
    """Every d_in entry sums its terms in a fixed order whatever the thread count (issue #41): bit for bit in
    child processes with NUMBA_NUM_THREADS=1 and 2."""
    assert stdout_at_threads(_THREADS_PROBE, 1) == stdout_at_threads(_THREADS_PROBE, 2)


_CACHE_PROBE = """
import hashlib
import sys
import numpy as np
from sbnnumba.kernels import cpu
rng = np.random.default_rng(21)
h = hashlib.sha256()
# a large layer (the old reassociating kernel gave other bits there when loaded from the cache) and small ones (N_out
# 31 in float64: the old small-layer kernel's did where LLVM prefers 256-bit vectors); N_out 100, 61, 12 also run
# every part of the vectorized sums of
# _ratio_units (fastmath with reassoc; its compiled and cached machine code checked equal up to the order of
# commutative operands, 2026-12-05): main loop, vector epilogue and scalar remainder among them
for n_in, n_out, batch, dtype in ((784, 1024, 128, np.float32), (300, 200, 16, np.float64), (12, 10, 8, np.float32),
                                   (40, 31, 8, np.float64), (64, 100, 16, np.float32), (50, 61, 8, np.float64),
                                   (20, 12, 8, np.float32)):
    w = (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
    x_in = np.where(rng.random((batch, n_in)) < 0.5, 1, -1).astype(dtype)
    a = (x_in @ w.T + rng.normal(size=n_out)).astype(dtype)
    x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(dtype)
    d_out = rng.normal(size=a.shape).astype(dtype)
    for code, form in ((0, "ratio"), (3, "bounded")) + (((1, "probit"),) if dtype == np.float32 else ()):
        h.update(cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, code, form=form).tobytes())
stats = [cpu._flip_dense_ratio.stats, cpu._ratio_units.stats, cpu._flip_dense_probit.stats]
print(h.hexdigest(), sum(s.cache_hits.total() for s in stats), sum(s.cache_misses.total() for s in stats))
"""


@pytest.mark.parametrize("target", sorted(vector_width_targets()))
def test_dense_flip_same_bits_compiled_and_loaded_from_cache(tmp_path, target):
    """The first child compiles the kernels into an empty Numba cache, the second loads them from it: the same
    bits (Numba optimizes a prange body twice and caches the second result, so a kernel whose sums LLVM may
    reassociate gave other bits on a 784x1024 layer once loaded; sbnnumba/kernels/lanes.py), at each vector width
    (the old kernel of layers below 32 outputs failed at 256 bits only)."""
    import os
    assert_same_output_compiled_and_cached(_CACHE_PROBE, tmp_path, env=vector_width_targets()[target])
    assert os.listdir(tmp_path)


@numba.njit(fastmath=probit.FASTMATH, error_model="numpy")
def _probit_one_loop(x_in, v, s, lo, hi, weight_t, d_out, d_in):
    # The dense probit kernel as it was before the CDF's passes: one probit_term per connection in the lanes' order
    n_batch, n_in = x_in.shape
    n_out = v.shape[1]
    n_full = n_out // lanes.LANES * lanes.LANES
    for b in range(n_batch):
        for i in range(n_in):
            x = x_in[b, i]
            acc = lanes.zeros(x)
            for j0 in range(0, n_full, lanes.LANES):
                for lane in range(lanes.LANES):
                    j = j0 + lane
                    acc[lane] += cpu.probit_term(v[b, j], s[b, j], x, weight_t[i, j], lo[b, j], hi[b, j]) * d_out[b, j]
            total = lanes.total(acc)
            for j in range(n_full, n_out):
                total += cpu.probit_term(v[b, j], s[b, j], x, weight_t[i, j], lo[b, j], hi[b, j]) * d_out[b, j]
            d_in[b, i] = total


@pytest.mark.parametrize("shape", [(3, 9, 5), (4, 11, 64), (5, 13, 100), (2, 17, 257)])
def test_probit_kernel_in_passes_gives_the_bits_of_one_loop(shape):
    """The dense probit kernel runs its CDFs a block at a time in passes (probit.erfc_pos_passes): its result equals,
    bit for bit, one probit_term per connection in the same order (layers below, at and beyond one pass block)."""
    rng = np.random.default_rng(41)
    x_in, a, x_out, w, d_out = _layer(rng, *shape, np.float32, scale=2.0)
    got = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, get_noise("normal").code, form="probit")
    v = -x_out * a
    lo, hi = cpu.probit_tails(v)
    want = np.empty_like(got)
    _probit_one_loop(x_in, v, 2 * x_out, lo, hi, np.ascontiguousarray(w.T), d_out, want)
    assert got.tobytes() == want.tobytes()
