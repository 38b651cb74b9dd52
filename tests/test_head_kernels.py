"""PSA head differences: the factored form (sbnnumba.kernels.head) within its stated bound of the exact values; the
NumPy formula where it declines."""
import numpy as np
import pytest
from kernel_checks import at_one_and_two_threads

from sbnnumba import losses
from sbnnumba.backends import get_backend
from sbnnumba.kernels import head

EXACT = np.longdouble  # the reference backend's formula in extended precision stands for the exact values


def _head(rng, b, n, k, dtype, logit_scale=3.0, weight_scale=1.0):
    logits = (logit_scale * rng.normal(size=(b, k))).astype(dtype)
    x_last = np.where(rng.random((b, n)) < 0.5, 1, -1).astype(dtype)
    v = (weight_scale * rng.normal(size=(k, n))).astype(dtype)
    y = rng.integers(0, k, size=b)
    loss0, _ = losses.xent(logits, y)
    return logits, y, x_last, v, loss0


def _exact(logits, y, x_last, v):
    logits, x_last, v = (a.astype(EXACT) for a in (logits, x_last, v))
    return get_backend("reference").head_flips(logits, y, x_last, v, losses.xent(logits, y)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b, n, k", [(9, 37, 2), (9, 37, 3), (1, 2, 8), (9, 37, 10), (4, 5, 17), (3, 200, 130),
                                     (16, 8, 1000), (1, 1, 4)])
@pytest.mark.parametrize("logit_scale, weight_scale", [(3.0, 1.0), (30.0, 0.05), (0.1, 4.99), (10.0, 3.0)])
def test_factored_flip_losses_within_bound(dtype, b, n, k, logit_scale, weight_scale):
    """|d - d_exact| <= (2K + 16) u (1 + |d|), |g - g_exact| <= (K + 16) u (the module's bound), for small and large
    logits and weights up to the range's edge (|2V| <= 20), one unit and many classes."""
    if dtype == np.float64 and np.finfo(EXACT).eps >= np.finfo(np.float64).eps:
        pytest.skip("float64 needs an extended long double as the exact reference (x86-64 has one)")
    rng = np.random.default_rng(k + 7 * b)
    logits, y, x_last, v, loss0 = _head(rng, b, n, k, dtype, logit_scale, weight_scale)
    v = np.clip(v, -9.99, 9.99)
    u = np.finfo(dtype).eps / 2
    d, g = head.flip_losses(logits, y, x_last, v, loss0)
    want_d, want_g = _exact(logits, y, x_last, v)
    assert d.dtype == g.dtype == dtype and d.shape == (b, n) and g.shape == (b, n, k)
    assert g.transpose(0, 2, 1).flags.c_contiguous  # (B, K, N_L) in memory, as the NumPy formula's for N_L > 1
    assert np.all(np.abs(d - want_d) <= (2 * k + 16) * u * (1 + np.abs(want_d)))
    assert np.all(np.abs(g - want_g) <= (k + 16) * u)
    np.testing.assert_array_equal(get_backend("cpu").head_flips(logits, y, x_last, v, loss0)[0], d)


def test_factored_form_is_more_accurate_than_the_loss_difference():
    """With large logits the difference of two losses loses digits that the factored log ratio keeps: in float32
    the NumPy formula leaves the bound, the factored form stays within a fifth of it."""
    logits, y, x_last, v, loss0 = _head(np.random.default_rng(5), 64, 256, 10, np.float32, 30.0, 0.05)
    want_d = _exact(logits, y, x_last, v)[0]
    bound = 36 * 2.0**-24 * (1 + np.abs(want_d))
    assert np.max(np.abs(head.flip_losses(logits, y, x_last, v, loss0)[0] - want_d) / bound) < 0.2
    assert np.max(np.abs(get_backend("reference").head_flips(logits, y, x_last, v, loss0)[0] - want_d) / bound) > 1


def test_factored_flip_losses_do_not_depend_on_threads():
    """Each example's sums run on one thread in a fixed order: the same bits at one and two threads."""
    args = _head(np.random.default_rng(2), 33, 300, 10, np.float32)
    one, two = at_one_and_two_threads(lambda: head.flip_losses(*args))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_flip_losses_declines_what_it_does_not_cover():
    """One logit, mixed dtypes, an infinite logit, a weight beyond the range, a state other than +-1: None, and the
    cpu backend returns the NumPy formula's values."""
    rng = np.random.default_rng(3)
    reference, cpu = get_backend("reference"), get_backend("cpu")
    assert head.flip_losses(*_head(rng, 2, 3, 1, np.float32)) is None
    logits, y, x_last, v, loss0 = _head(rng, 2, 3, 4, np.float32)
    assert head.flip_losses(logits, y, x_last.astype(np.float64), v, loss0) is None
    cases = []
    inf_logit = logits.copy()
    inf_logit[0, 1] = np.inf
    cases.append((inf_logit, y, x_last, v, loss0))
    wide = v.copy()
    wide[1, 2] = np.float32(head.FACTORED_WEIGHT_LIMIT[np.dtype(np.float32)] / 2 + 0.01)
    cases.append((logits, y, x_last, wide, loss0))
    zero_state = x_last.copy()
    zero_state[1, 0] = 0
    cases.append((logits, y, zero_state, v, loss0))
    for args in cases:
        assert head.flip_losses(*args) is None
        with np.errstate(invalid="ignore"):  # the infinite logit: NaN (inf - inf) in both, as NumPy's formula gives
            for got, want in zip(cpu.head_flips(*args), reference.head_flips(*args)):
                np.testing.assert_array_equal(got, want)
    at_limit = v.copy()
    at_limit[1, 2] = np.float32(head.FACTORED_WEIGHT_LIMIT[np.dtype(np.float32)] / 2)
    assert head.flip_losses(logits, y, x_last, at_limit, loss0) is not None


def _rb_case(rng, b, n, k, dtype, logit_scale=3.0, weight_scale=1.0):
    logits, y, x_last, v, loss0 = _head(rng, b, n, k, dtype, logit_scale, weight_scale)
    v = np.clip(v, -9.99, 9.99)
    g_eta = losses.xent(logits, y)[1]
    w = (rng.random((b, n)) / n).astype(dtype)
    weights = (rng.random(b) / b).astype(dtype)
    return logits, y, x_last, v, loss0, g_eta, w, weights


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b, n, k", [(9, 37, 2), (9, 37, 10), (1, 2, 8), (4, 5, 17), (3, 200, 130), (128, 64, 10)])
@pytest.mark.parametrize("logit_scale, weight_scale", [(3.0, 1.0), (30.0, 0.05), (0.1, 4.99)])
def test_factored_rb_head_gradients_within_bound(dtype, b, n, k, logit_scale, weight_scale):
    """The cpu backend's psa_rb_head (the factored products, no (B, N_L, K) gradients) against the reference's
    head_flips + rb_head_grads in extended precision: d within the head's bound, dV and dc within
    (B + 2K + 16) u 4 sum_b weights_b (a bound on the sums' terms: |g_b| <= 3 weights_b, |s_bi (p - 1)| <= 2
    weights_b w_bi)."""
    if dtype == np.float64 and np.finfo(EXACT).eps >= np.finfo(np.float64).eps:
        pytest.skip("float64 needs an extended long double as the exact reference (x86-64 has one)")
    args = _rb_case(np.random.default_rng(k + 7 * b), b, n, k, dtype, logit_scale, weight_scale)
    logits, y, x_last, v, loss0, g_eta, w, weights = args
    d, dv, dc = get_backend("cpu").psa_rb_head(*args)
    exact = [a.astype(EXACT) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
    exact[4], exact[5] = losses.xent(exact[0], y)
    want_d, want_dv, want_dc = get_backend("reference").psa_rb_head(*exact)
    u = np.finfo(dtype).eps / 2
    assert d.dtype == dv.dtype == dc.dtype == dtype and dv.shape == (k, n) and dc.shape == (k,)
    assert np.all(np.abs(d - want_d) <= (2 * k + 16) * u * (1 + np.abs(want_d)))
    bound = (b + 2 * k + 16) * u * 4 * np.sum(weights, dtype=np.float64)
    assert np.max(np.abs(dv - want_dv)) <= bound
    assert np.max(np.abs(dc - want_dc)) <= bound
    assert head.rb_head_gradients(*args[:4], *args[5:]) is not None  # the factored form ran


def test_factored_rb_head_declines_like_the_head():
    """Where the factored form does not apply (a weight beyond the range, a state other than +-1, mixed dtypes) the
    cpu backend's psa_rb_head is the composition head_flips + rb_head_grads, bit for bit."""
    rng = np.random.default_rng(6)
    args = list(_rb_case(rng, 5, 7, 4, np.float32))
    wide, zero_state = args[3].copy(), args[2].copy()
    wide[1, 2] = np.float32(head.FACTORED_WEIGHT_LIMIT[np.dtype(np.float32)] / 2 + 0.01)
    zero_state[1, 0] = 0
    cases = [args[:3] + [wide] + args[4:], args[:2] + [zero_state] + args[3:], args[:6] + [args[6].astype(np.float64)]
             + args[7:]]
    cpu = get_backend("cpu")
    for case in cases:
        assert head.rb_head_gradients(*case[:4], *case[5:]) is None
        d, g_flip = cpu.head_flips(*case[:5])
        want = (d,) + cpu.rb_head_grads(case[5], g_flip, case[6], case[2], case[7])
        for got, expected in zip(cpu.psa_rb_head(*case), want):
            np.testing.assert_array_equal(got, expected)


def test_logistic_flip_weights():
    """sigma(-x a) / N in float32 within 7 u relative of the exact value for |a| up to 40 (confident units included),
    the same bits at one and two threads, the limits at +-inf, NaN kept; other dtypes are declined (None)."""
    from scipy import special

    rng = np.random.default_rng(13)
    x = np.where(rng.random((64, 1000)) < 0.5, 1, -1).astype(np.float32)
    a = rng.uniform(-40, 40, size=x.shape).astype(np.float32)
    one, two = at_one_and_two_threads(lambda: head.logistic_flip_weights(x, a))
    assert one.dtype == np.float32 and one.tobytes() == two.tobytes()
    want = special.expit(-np.float64(x) * np.float64(a)) / x.shape[1]
    keep = want > 1e-37 / x.shape[1]  # the normal range (beyond x a = 87 the weight is 0)
    assert np.max(np.abs(one[keep] / want[keep] - 1)) <= 7 * 2.0**-24
    edges = np.array([[np.inf, -np.inf, np.nan, 100.0]], np.float32)
    got = head.logistic_flip_weights(np.ones_like(edges), edges) * edges.shape[1]
    assert got[0, 0] == 0 and got[0, 1] == 1 and np.isnan(got[0, 2]) and got[0, 3] == 0
    assert head.logistic_flip_weights(x.astype(np.float64), a.astype(np.float64)) is None
