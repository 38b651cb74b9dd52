"""The branch-free float32 normal CDF (sbnnumba/kernels/probit.py) against SciPy's float64 ndtr."""
import numba
import numpy as np
import pytest
from scipy.special import ndtr

from sbnnumba.kernels import probit

U = 2.0 ** -24


def test_stored_coefficients_are_the_fit():
    np.testing.assert_allclose(probit.fit_coefficients(), probit.P_COEFFS, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def grid_values():
    t = np.concatenate([np.linspace(-14, 14, 1_400_001), -np.logspace(-8, 0, 2001), np.logspace(-8, 0, 2001)])
    t = t.astype(np.float32)
    out = np.empty_like(t)
    probit.normal_cdf_array(t, out)
    return t, out, ndtr(t.astype(np.float64))


def test_absolute_error_below_three_and_a_half_units(grid_values):
    """|normal_cdf(t) - Phi(t)| <= 3.5 u everywhere (the kernels' error bounds build on it)."""
    t, got, ref = grid_values
    assert np.abs(got - ref).max() <= 3.5 * U


def test_relative_error_in_the_lower_tail(grid_values):
    """Relative error below 2e-6 down to t = -5 and 3e-5 down to the clip at |z| = 9 (t = -12.73): the rounding of
    ``a^2`` grows it like ``a^2 u``, as the rounding of the argument itself moves Phi (Mills ratio)."""
    t, got, ref = grid_values
    rel = np.abs(got - ref) / ref
    assert rel[t >= -5].max() < 2e-6
    assert rel[t >= -12.7].max() < 3e-5


def test_clipped_far_tails_are_equal_and_tiny(grid_values):
    t, got, _ = grid_values
    far = got[t < -12.75]
    assert far.size and (far == far[0]).all() and 0 < far[0] < 1e-36
    assert (got[t > 12.75] == 1).all()
    assert ((0 <= got) & (got <= 1)).all() and (np.diff(got[:1_400_001]) >= 0).all()  # monotone on the even grid


def test_vector_lanes_and_remainder_give_the_same_bits():
    """The vectorized loop and its scalar remainder compute the same bits (same fastmath flags, same contractions):
    each value alone (length-1 calls) equals the value inside long calls, at every offset."""
    rng = np.random.default_rng(0)
    t = (3 * rng.normal(size=203)).astype(np.float32)
    whole = np.empty_like(t)
    probit.normal_cdf_array(t, whole)
    for n in (1, 7, 33):
        for start in range(0, 203 - n, 37):
            part = np.empty(n, np.float32)
            probit.normal_cdf_array(t[start:start + n], part)
            assert part.tobytes() == whole[start:start + n].tobytes()


@numba.njit(fastmath=probit.FASTMATH, error_model="numpy")
def _erfc_one_loop(a, out):
    for q in range(a.size):
        out[q] = probit.erfc_pos(a[q])


@numba.njit(fastmath=probit.FASTMATH, error_model="numpy")
def _erfc_in_passes(a, out, block):
    buf = np.empty(block, dtype=a.dtype)
    for p0 in range(0, a.size, block):
        n = min(block, a.size - p0)
        buf[:n] = a[p0:p0 + n]
        probit.erfc_pos_passes(buf, out[p0:], n)


def test_erfc_passes_give_the_bits_of_one_loop():
    """erfc_pos_passes (three loops over a block, the flip kernels' form) equals erfc_pos in one loop bit for bit, on
    the whole clipped range and at block lengths that leave vector remainders: the passes end where no product feeds
    an addition, so "contract" fuses the same pairs."""
    a = np.concatenate([np.linspace(0, probit.TAIL_LIMIT, 300_001), np.random.default_rng(3).random(997) * 9])
    a = a.astype(np.float32)
    one_loop = np.empty_like(a)
    _erfc_one_loop(a, one_loop)
    for block in (probit.PASS_BLOCK, 7, 33):
        passes = np.full_like(a, np.nan)
        _erfc_in_passes(a, passes, block)
        assert passes.tobytes() == one_loop.tobytes(), block
