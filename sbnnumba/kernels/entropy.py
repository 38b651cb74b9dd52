r"""Numba CPU kernels for the entropy of stochastic binary units (:func:`sbnnumba.training.unit_entropy`).

Evaluation measures it for every sampled unit, i.e. over arrays as large as a conv network's
activations, where NumPy's per-family log-cdf and the temporaries around it cost more than the evaluation
itself; one fused parallel pass over :func:`sbnnumba.kernels.scalar.entropy_bits` makes no temporaries
(``bench/unit_entropy.py`` measures both; figures: ``docs/experiments/2026-12-06-kernel-figures.md``).

Logistic units in float32 (the default network's) take a vectorized pass of float32 arithmetic instead
(:func:`logistic_entropy_f32`): the scalar kernel's two library calls per unit (``exp``, ``log1p`` in float64) do
not vectorize, and evaluation spent about as long on them as on the sampled forward pass itself (run log of
2026-12-07, session 25). With ``t = |a|``, ``e = e^{-t}``, ``s = e / (2 + e)``,

.. math::

    H = \frac{1}{\ln 2}\Bigl(\frac{e}{1 + e}\, t + \log(1 + e)\Bigr), \qquad
    \log(1 + e) = 2\,\mathrm{artanh}\, s = 2 s \sum_{j \ge 0} \frac{s^{2j}}{2j + 1}, \quad 0 \le s \le 1/3,

the series to ``j = 6`` (truncation below ``(1/9)^7 / 15 < 2^-26`` relative), ``e`` by
:func:`~sbnnumba.kernels.float32_exp.exp_f32`. No cancellation (both terms are positive): within ``8 u`` of ``H``
relative (``u = 2^-24``), 0 for ``t > 87`` (where ``H < 2^-118``), NaN kept (``tests/test_train.py``).
"""
import numba
import numpy as np
from numba import prange

from ..runtime import kernel_threads
from .float32_exp import exp_f32
from .scalar import LOGISTIC, entropy_bits


@numba.njit(parallel=True, error_model="numpy", cache=True)
def unit_entropy_flat(a, code, out):
    """``out[i] = H(F(a[i]))`` in bits for the noise family ``code``; ``a``, ``out`` 1-D, computed in
    float64 and stored in ``out``'s dtype."""
    for i in prange(a.shape[0]):
        out[i] = entropy_bits(code, np.float64(a[i]))


_SATURATED = np.float32(87.0)  # beyond, e^{-t} leaves exp_f32's range and H < 2^-118: 0
_INV_LN2_F32 = np.float32(1.4426950408889634)


@numba.njit(parallel=True, error_model="numpy", cache=True)
def logistic_entropy_f32(a, out):
    """``out[i] = H(sigma(a[i]))`` in bits, float32 ``a`` and ``out`` (1-D), by the module's series; no ``fastmath``
    (the same bits on every CPU and at any thread count)."""
    one, two, zero = np.float32(1), np.float32(2), np.float32(0)
    for i in prange(a.shape[0]):
        t = abs(a[i])
        e = exp_f32(-t)  # meaningless beyond 87 (not used there)
        s = e / (two + e)
        z = s * s
        series = one + z * (np.float32(1 / 3) + z * (np.float32(1 / 5) + z * (np.float32(1 / 7) + z * (
            np.float32(1 / 9) + z * (np.float32(1 / 11) + z * np.float32(1 / 13))))))
        h = (e / (one + e) * t + two * s * series) * _INV_LN2_F32
        h = one if h > one else h
        out[i] = zero if t > _SATURATED else h  # selects: the loop stays vectorized (NaN: both tests false, NaN kept)


def unit_entropy(a, code, out):
    """``out = H(F(a))`` in bits, element-wise, for the kernel noise family ``code``: the vectorized float32 pass for
    logistic units in float32, else the scalar kernel in float64 (:func:`unit_entropy_flat`).

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
    if code == LOGISTIC and a.dtype == np.float32:
        with kernel_threads(a.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
            logistic_entropy_f32(a, out)
    else:
        unit_entropy_flat(a, code, out)
