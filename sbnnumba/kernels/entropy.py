r"""Numba CPU kernels for the entropy of stochastic binary units (:func:`sbnnumba.training.unit_entropy`).

Evaluation measures it for every sampled unit, i.e. over arrays as large as a conv network's
activations, where NumPy's per-family log-cdf and the temporaries around it cost more than the evaluation
itself; one fused parallel pass over :func:`sbnnumba.kernels.scalar.entropy_bits` makes no temporaries
(``bench/unit_entropy.py`` measures both; figures: ``docs/experiments/2026-12-06-kernel-figures.md``).

Float32 units of every kernel family take a vectorized pass of float32 arithmetic instead (:func:`entropy_f32`):
the scalar kernel's library calls per unit (``exp``, ``log``, ``log1p``, ``erfc`` in float64) do not vectorize, and
evaluation spent about as long on them as on the sampled forward pass itself (run log of 2026-12-07, session 25).
With ``t = |a|`` and the lower tail ``q = F(-t)`` (at most 1/2),

.. math::

    H = -\frac{1}{\ln 2}\bigl(q \log q + (1 - q) \log(1 - q)\bigr), \qquad
    \log(1 - q) = -2\,\mathrm{artanh}\,\frac{q}{2 - q}, \qquad
    \mathrm{artanh}\, s = s \sum_{j \ge 0} \frac{s^{2j}}{2j + 1},

the series to ``j = 6`` for ``s <= 1/3`` (truncation below ``(1/9)^7 / 15 < 2^-26`` relative), ``log q`` by
:func:`~sbnnumba.kernels.float32_exp.log_f32` (exponent and mantissa split, the same series on ``[sqrt(1/2),
sqrt(2))``). Logistic units use the closed form ``H = (q t + log(1 + e)) / ln 2``, ``e = e^{-t}`` (``log(1 + e) = 2
artanh(e / (2 + e))``); the normal tail is :func:`sbnnumba.kernels.probit.normal_cdf`, the uniform and triangular ones
their polynomials. Both terms of ``H`` are positive (no cancellation): within ``8 u`` of the float64 kernel relative
(``u = 2^-24``; logistic, uniform and triangular), ``(8 + 2 t^2) u`` for the normal family (its tail's relative error
grows like ``t^2 u``, :mod:`sbnnumba.kernels.probit`); 0 where ``q`` leaves float32's normal range (logistic ``t > 87``,
normal ``t > 12.7``: ``H < 2^-114`` there), NaN kept (``tests/test_train.py``).
"""
import numba
import numpy as np
from numba import prange

from ..runtime import kernel_threads
from .float32_exp import EXP_F32_RANGE, artanh_series, exp_f32_saturating, log_f32
from .probit import normal_cdf
from .scalar import LOGISTIC, NORMAL, TRIANGULAR, UNIFORM, entropy_bits


@numba.njit(parallel=True, error_model="numpy", cache=True)
def unit_entropy_flat(a, code, out):
    """``out[i] = H(F(a[i]))`` in bits for the noise family ``code``; ``a``, ``out`` 1-D, computed in
    float64 and stored in ``out``'s dtype."""
    for i in prange(a.shape[0]):
        out[i] = entropy_bits(code, np.float64(a[i]))


_INV_LN2_F32 = np.float32(1.4426950408889634)
_LEAST_NORMAL = np.float32(np.finfo(np.float32).tiny)
_NORMAL_SATURATED = np.float32(12.7)  # normal_cdf's tail is clipped at 12.73 (2e-37)


@numba.njit(inline="always", error_model="numpy")
def _tail_entropy_bits(q):
    """``H(q)`` in bits from the lower tail ``q`` in ``[0, 1/2]`` (float32; 0 for ``q`` below the normal range)."""
    one, two = np.float32(1), np.float32(2)
    s = q / (two - q)  # log(1 - q) = -2 artanh(s), s <= 1/3
    h = (-q * log_f32(max(q, _LEAST_NORMAL)) + (one - q) * two * s * artanh_series(s)) * _INV_LN2_F32
    h = one if h > one else h
    return np.float32(0) if q < _LEAST_NORMAL else h  # NaN: the test is false, NaN kept


@numba.njit(parallel=True, error_model="numpy", cache=True)
def entropy_f32(a, code, out):
    """``out[i] = H(F(a[i]))`` in bits, float32 ``a`` and ``out`` (1-D), by the module's float32 forms; no
    ``fastmath`` (the same bits on every CPU and at any thread count). One loop per family (each vectorizes)."""
    one, two, zero, half = np.float32(1), np.float32(2), np.float32(0), np.float32(0.5)
    n = a.shape[0]
    if code == LOGISTIC:
        for i in prange(n):
            t = abs(a[i])
            e = exp_f32_saturating(-t)
            s = e / (two + e)
            h = (e / (one + e) * t + two * s * artanh_series(s)) * _INV_LN2_F32
            h = one if h > one else h
            out[i] = zero if t > EXP_F32_RANGE else h  # e = 0 there; t = inf: 0 * t is NaN (NaN a: NaN kept)
    elif code == NORMAL:
        for i in prange(n):
            t = abs(a[i])
            h = _tail_entropy_bits(normal_cdf(-min(t, _NORMAL_SATURATED)))
            out[i] = zero if t > _NORMAL_SATURATED else (a[i] - a[i] + h)  # a - a: NaN for NaN a (min drops it)
    elif code == UNIFORM:
        for i in prange(n):
            r = max(one - abs(a[i]), zero) if abs(a[i]) == abs(a[i]) else a[i]  # 1 - t clipped, NaN kept
            out[i] = _tail_entropy_bits(half * r)
    elif code == TRIANGULAR:
        for i in prange(n):
            r = max(one - abs(a[i]), zero) if abs(a[i]) == abs(a[i]) else a[i]
            out[i] = _tail_entropy_bits(half * r * r)
    else:
        raise ValueError("code: unknown noise family code (see sbnnumba.kernels.scalar.KERNEL_FAMILIES)")


def unit_entropy(a, code, out):
    """``out = H(F(a))`` in bits, element-wise, for the kernel noise family ``code``: the vectorized float32 pass
    (:func:`entropy_f32`) for float32, else the scalar kernel in float64 (:func:`unit_entropy_flat`).

    Parameters
    ----------
    a : ndarray, 1-D, float32 or float64
        Pre-activations.
    code : int
        Kernel noise code (:data:`sbnnumba.kernels.scalar.NOISE_CODES`).
    out : ndarray, 1-D, the dtype of ``a``
        Out: bits in ``[0, 1]``.

    Returns
    -------
    None
    """
    if a.dtype == np.float32:
        with kernel_threads(a.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
            entropy_f32(a, code, out)
    else:
        unit_entropy_flat(a, code, out)
