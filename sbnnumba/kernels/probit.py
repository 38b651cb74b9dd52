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
    z = t * _MINUS_SQRT_HALF
    a = min(abs(z), _LIMIT)
    e = erfc_pos(a)
    return _HALF * (e if z >= 0 else _TWO - e)


#: The fastmath flags of every loop that calls :func:`normal_cdf` (no "reassoc": sums in the order written; no "arcp":
#: the exact division of ``tau``; "contract": fused multiply-adds): the same flags give the same bits, so the per-unit
#: values of :func:`normal_cdf_array` equal the kernels' per-connection ones at equal arguments.
FASTMATH = {"nnan", "ninf", "nsz", "contract"}


@numba.njit(parallel=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def normal_cdf_array(t, out):
    """``out[i] = normal_cdf(t[i])`` over 1-d float32 arrays (the per-unit tails of the probit form)."""
    for i in numba.prange(t.size):
        out[i] = normal_cdf(t[i])
