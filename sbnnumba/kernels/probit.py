r"""The standard normal CDF in float32 without branches or library calls, for vectorized CPU loops.

The probit flip form (:func:`sbnnumba.kernels.cpu.flip_propagate_dense`, ``form="probit"``) evaluates one
normal CDF per connection. ``math.erfc`` is a scalar library call that LLVM cannot vectorize (Numba has no
vector math library here), so the generic form spends about 45 ns per connection on it; :func:`normal_cdf`
is arithmetic, compares and selects only, which LLVM turns into SIMD code:

.. math::

    \Phi(t) = \tfrac12 \operatorname{erfc}(z), \quad z = -t / \sqrt 2, \qquad
    \operatorname{erfc}(a) = \tau\, e^{-a^2 + P(\tau)}, \quad \tau = \frac{2}{2 + a} \quad (a = |z| \ge 0),

with ``erfc(-a) = 2 - erfc(a)`` for ``z < 0``. ``P(tau) = ln(erfcx(a) / tau)`` is smooth on ``(0, 1]``
(``P(1) = 0``, ``P -> -ln(2 sqrt(pi))`` as ``a -> inf``); :data:`P_COEFFS` is its degree-10 least-squares
Chebyshev fit on ``a in [0, TAIL_LIMIT]`` in the variable ``x = 2 (tau - tau_min) / (1 - tau_min) - 1``,
within 5e-9 of ``P`` (:func:`fit_coefficients` makes the fit from SciPy's ``erfcx``; the tests refit
it). The exponential is :func:`sbnnumba.kernels.float32_exp.exp_f32` (arithmetic only, within a relative 2e-7),
the one of the float32 logistic sampler; the argument ``-a^2 + P`` stays in ``[-82, 0]``.

Accuracy (``tests/test_probit.py``, against SciPy's float64 ``ndtr`` at float32 arguments): within ``3.5 u``
(``u = 2^-24``) of ``Phi(t)`` in absolute terms everywhere; in the lower tail within a relative ``2e-6`` down to
``t = -5`` and ``3e-5`` down to the clip (the rounding of ``a^2`` grows the relative error like ``a^2 u``, as the
rounding of a float32 argument itself moves ``Phi`` there). Arguments beyond ``|z| = TAIL_LIMIT`` (``|t| > 12.73``)
take the value at the limit (``Phi(-12.73) = 2e-37``), so far tails give equal values and their differences are
exactly 0. The flip kernels' bounds build on the absolute one: a difference ``Phi(p) - Phi(q)`` within ``7 u``, the
class of the float32 ratio form's ``6 u |g|``.

The flip kernels evaluate their CDFs a block at a time (:func:`erfc_pos_passes`: ``tau``, the polynomial, the
exponential, each in its own loop over the block): the same operations, so the same bits as :func:`normal_cdf`, but
short dependency chains, which the core overlaps better than one chain of about 35 operations per value
(measurements: run log of 2026-12-07, session 27).
"""
import math

import numba
import numpy as np
from numba.extending import register_jitable

from .float32_exp import exp_f32

TAIL_LIMIT = 9.0  # erfc's argument is clipped to [0, 9]: erfc(9) = 4e-37, above float32's least normal 1.2e-38
_TAU_MIN = 2.0 / (2.0 + TAIL_LIMIT)

#: Power-basis coefficients (constant term first) of the fit of P in the Chebyshev variable x.
P_COEFFS = (-0.5482211045792547, 0.5604713138177474, 0.013626317343516998, -0.027952480615823717,
            -0.0006590416715518352, 0.003352329477646162, -0.00030917334989524596, -0.0004537247210299074,
            0.0001222844157538451, 4.345866696075721e-05, -2.017773275208053e-05)


def fit_coefficients(degree=10, nodes=4000):
    """The least-squares Chebyshev fit behind :data:`P_COEFFS` (NumPy and SciPy).

    Parameters
    ----------
    degree : int
        Polynomial degree.
    nodes : int
        Chebyshev nodes of the fit.

    Returns
    -------
    float64 ndarray (degree + 1,)
        ``P(tau) = ln(erfcx(a)) - ln(tau)`` in the variable ``x`` of the module docstring, constant term first.
    """
    from numpy.polynomial import chebyshev
    from scipy.special import erfcx
    x = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    tau = _TAU_MIN + (x + 1) / 2 * (1 - _TAU_MIN)
    a = 2 / tau - 2
    return chebyshev.cheb2poly(chebyshev.chebfit(x, np.log(erfcx(a)) - np.log(tau), degree))


_F = np.float32
_P_HIGH_FIRST = tuple(_F(c) for c in reversed(P_COEFFS))  # float32, the highest power first (Horner's order)
_X_SCALE = _F(2.0 / (1.0 - _TAU_MIN))
_X_SHIFT = _F((1.0 + _TAU_MIN) / (1.0 - _TAU_MIN))
_LIMIT = _F(TAIL_LIMIT)
_HALF, _TWO = _F(0.5), _F(2.0)
_MINUS_SQRT_HALF = _F(-math.sqrt(0.5))


@register_jitable
def horner(x, coeffs):
    """``sum_k coeffs[n - 1 - k] x^k`` by Horner's rule, ``p <- p x + c`` from the highest power down.

    Parameters
    ----------
    x : float
    coeffs : tuple of floats of ``x``'s type
        The highest power first (a constant tuple: the loop unrolls and vectorizes with its caller's).

    Returns
    -------
    float
    """
    p = coeffs[0]
    for k in range(1, len(coeffs)):
        p = p * x + coeffs[k]
    return p


@register_jitable
def erfc_pos(a):
    """``erfc(a) = tau e^{-a^2 + P(tau)}``, ``tau = 2 / (2 + a)`` (module docstring), branch-free.

    Parameters
    ----------
    a : float32
        In ``[0, TAIL_LIMIT]``.

    Returns
    -------
    float32
        Within a relative ``3e-7 + a^2 u`` of ``erfc(a)``.
    """
    tau = _TWO / (_TWO + a)
    x = tau * _X_SCALE - _X_SHIFT
    return tau * exp_f32(horner(x, _P_HIGH_FIRST) - a * a)


#: Entries per pass of :func:`erfc_pos_passes` in the flip kernels (a few vectors: its buffers stay in L1).
PASS_BLOCK = 64
#: Shorter runs go through :func:`normal_cdf` in one loop (the passes' three loops cost more than they save there).
PASS_MIN = 32


@register_jitable
def erfc_pos_passes(a, out, n):
    """``out[q] = erfc_pos(a[q])`` for ``q < n`` in three passes over the block: ``tau``, then ``P(x) - a^2``, then
    ``tau e^{...}`` (``a`` is overwritten). The same operations as :func:`erfc_pos`, so the same bits (the passes end
    where no product feeds an addition, so ``contract`` fuses the same pairs; ``tests/test_probit.py`` compares them).

    Why passes: :func:`erfc_pos` is one dependent chain of about 35 operations (a division, 11 multiply-adds of the
    polynomial, the exponential), so a vectorized loop over it runs at the rate at which the core's out-of-order window
    overlaps a few such chains, not at its arithmetic rate; each pass is a short chain (measurements: run log of
    2026-12-07, session 27).

    Parameters
    ----------
    a : float32 ndarray (at least n,)
        ``|z|`` clipped to ``[0, TAIL_LIMIT]`` (:func:`cdf_argument`); overwritten.
    out : float32 ndarray (at least n,)
        Receives ``erfc(a)``.
    n : int
    """
    for q in range(n):
        out[q] = _TWO / (_TWO + a[q])  # tau
    for q in range(n):
        a[q] = horner(out[q] * _X_SCALE - _X_SHIFT, _P_HIGH_FIRST) - a[q] * a[q]
    for q in range(n):
        out[q] = out[q] * exp_f32(a[q])


@register_jitable
def cdf_argument(t):
    """``z = -t / sqrt(2)`` and ``a = min(|z|, TAIL_LIMIT)``: the argument of :func:`erfc_pos` for ``Phi(t)``.

    Parameters
    ----------
    t : float32

    Returns
    -------
    (z, a) : (float32, float32)
    """
    z = t * _MINUS_SQRT_HALF
    return z, min(abs(z), _LIMIT)


@register_jitable
def cdf_from_erfc(z, e):
    """``Phi(t)`` from ``z`` (:func:`cdf_argument`) and ``e = erfc(|z|)``: ``e / 2`` for ``z >= 0``, ``1 - e / 2``
    below.

    Parameters
    ----------
    z, e : float32

    Returns
    -------
    float32
    """
    return _HALF * (e if z >= 0 else _TWO - e)


@register_jitable
def normal_cdf(t):
    """The standard normal CDF, branch-free (selects only): ``erfc(|z|) / 2`` below the mean and
    ``1 - erfc(|z|) / 2`` above it, ``z = -t / sqrt(2)`` clipped to ``|z| <= TAIL_LIMIT``.

    Parameters
    ----------
    t : float32
        Any finite value.

    Returns
    -------
    float32
        ``Phi(t)`` within ``3.5 u`` (``u = 2^-24``); ``Phi(-12.73) = 2e-37`` for every ``t <= -12.73`` and 1 above
        ``12.73``.
    """
    z, a = cdf_argument(t)
    return cdf_from_erfc(z, erfc_pos(a))


#: The fastmath flags of every loop that calls :func:`normal_cdf` (no "reassoc": sums in the order written; no "arcp":
#: the exact division of ``tau``; "contract": fused multiply-adds): the same flags give the same bits, so the per-unit
#: values of :func:`normal_cdf_array` equal the kernels' per-connection ones at equal arguments.
FASTMATH = {"nnan", "ninf", "nsz", "contract"}


@numba.njit(parallel=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def normal_cdf_array(t, out):
    """``out[i] = normal_cdf(t[i])`` over 1-d float32 arrays (the per-unit tails of the probit form)."""
    for i in numba.prange(t.size):
        out[i] = normal_cdf(t[i])
