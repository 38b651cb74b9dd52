"""Numba CPU kernel for PSA's pre-activation gradient with logistic noise (:meth:`sbnnumba.noise.Logistic.psa_grad`).

``g_a = -x p(a) d`` (spec psa.md, section 2.4) with ``p(a) = e / (1 + e)^2``, ``e = exp(-|a|)``: NumPy's ``exp``
(its vectorized routine, in the blocks of :func:`sbnnumba.kernels.density.exp_in_place`: a Numba ``exp`` would
round differently), then the rest in one parallel pass, in the same
operations and order as the NumPy expression ``-x * (e / (1 + e) ** 2) * d``, so the result is bit-identical
(``tests/test_psa_factors.py``); the NumPy expression makes nine passes over the maps with eight temporaries, this
three (``-|a|``, ``exp``, the rest) in the one output array. No ``fastmath``.
"""
import numba
import numpy as np
from numba import prange

from ..runtime import kernel_threads
from .density import exp_in_place, negative_abs


@numba.njit(parallel=True, cache=True)
def _logistic_grad(x, e, d, out):
    # out = -x (e / (1 + e)^2) d, element-wise (1-D arrays of one dtype; out may be e itself: each element is read
    # before it is written)
    one = e.dtype.type(1)
    for i in prange(out.shape[0]):
        ei = e[i]
        s = one + ei
        out[i] = -x[i] * (ei / (s * s)) * d[i]


def logistic_psa_grad(x, a, d):
    """``-x p(a) d`` for logistic noise in one fused pass, or None where the kernel does not apply.

    Parameters
    ----------
    x : ndarray
        Sampled +-1 states.
    a : ndarray, float32 or float64, shape of ``x``
        Pre-activations.
    d : ndarray, shape of ``x``
        Flip effects.

    Returns
    -------
    ndarray or None
        ``-x * p(a) * d`` with ``p(a) = e / (1 + e)^2``, ``e = exp(-|a|)``, shape and dtype of ``a``; None unless
        ``x``, ``a`` and ``d`` are arrays of one float dtype and shape (the caller then uses the NumPy expression).
    """
    arrays = (x, a, d)
    if not all(isinstance(t, np.ndarray) for t in arrays) or a.dtype not in (np.float32, np.float64) \
            or any(t.dtype != a.dtype or t.shape != a.shape for t in arrays):
        return None
    out = np.empty(a.shape, dtype=a.dtype)  # e = exp(-|a|) first, then the result in place
    flat = out.reshape(-1)
    with kernel_threads(a.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        negative_abs(np.ascontiguousarray(a).reshape(-1), flat)
        exp_in_place(flat)  # NumPy's exp in fixed blocks on the threads: the bits of one call (kernels/density.py)
        _logistic_grad(np.ascontiguousarray(x).reshape(-1), flat, np.ascontiguousarray(d).reshape(-1), flat)
    return out
