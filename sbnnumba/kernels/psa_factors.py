"""Numba CPU kernel for PSA's pre-activation gradient with logistic noise (:meth:`sbnnumba.noise.Logistic.psa_grad`).

``g_a = -x p(a) d`` (spec psa.md, section 2.4) with ``p(a) = e / (1 + e)^2``, ``e = exp(-|a|)``: NumPy's ``exp``
(its vectorized routine: a Numba ``exp`` would round differently), then the rest in one pass, block by block in the
fixed blocks of :func:`sbnnumba.runtime.run_range_blocks` that the threads take as they come free, in the same
operations and order as the NumPy expression ``-x * (e / (1 + e) ** 2) * d``, so the result is bit-identical
(``tests/test_psa_factors.py``); the NumPy expression makes nine passes over the maps with eight temporaries, this
three (``-|a|``, ``exp``, the rest) in the one output array. No ``fastmath``.
"""
import numba
import numpy as np

from ..runtime import run_range_blocks
from .density import negative_abs


@numba.njit(nogil=True, error_model="numpy", cache=True)
def _logistic_grad(x, e, d):
    # in place e <- -x (e / (1 + e)^2) d, element-wise (1-D arrays of one dtype, one block; written to e itself so
    # that the loop vectorizes: with a separate output argument that may alias e it ran 1.5x slower)
    one = e.dtype.type(1)
    for i in range(e.shape[0]):
        ei = e[i]
        s = one + ei
        e[i] = -x[i] * (ei / (s * s)) * d[i]


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
    a1, x1, d1 = (np.ascontiguousarray(t).reshape(-1) for t in (a, x, d))

    def block(lo, hi):  # the three passes over one block while it is in cache
        e = flat[lo:hi]
        negative_abs(a1[lo:hi], e)
        np.exp(e, out=e)  # NumPy's exp: each entry alone, so the bits of one call (kernels/density.py)
        _logistic_grad(x1[lo:hi], e, d1[lo:hi])

    run_range_blocks(block, flat.size, flat.size, "elementwise")  # the per-call thread rule of sbnnumba.runtime
    return out
