"""Numba CPU kernels for sampling logistic binary units (:meth:`sbnnumba.noise.Logistic.sample`).

``x = +1 if u < sigma(a) else -1`` in one parallel pass, instead of NumPy's ``expit`` into a temporary
and a ``where`` over it. ``sigma(a) = 1 / (1 + exp(-a))`` is computed in the dtype of ``a`` with the
C library's ``expf``/``exp``, the same operations as SciPy's ``expit``: on 611 million float32 values
(every 7th bit pattern of each sign) and 20 million float64 values the two agreed bit for bit, so the
samples, and every seeded run, are those of the NumPy formula (``tests/test_noise.py`` checks the
equality on the machine that runs the tests). No ``fastmath``: an approximate vectorized ``exp``
would change bits. One kernel per dtype, so that float32 stays float32 throughout.
Measured speed-up: ``docs/performance.md`` (CPU kernels, sampling).
"""
import math

import numba
import numpy as np
from numba import prange

from ..runtime import kernel_threads


@numba.njit(parallel=True, cache=True)
def logistic_sample_f32(a, u, out):
    """float32 ``out[i] = 1 if u[i] < 1 / (1 + expf(-a[i])) else -1`` (1-D arrays)."""
    one = np.float32(1.0)
    for i in prange(a.shape[0]):
        out[i] = one if u[i] < one / (one + math.exp(-a[i])) else -one


@numba.njit(parallel=True, cache=True)
def logistic_sample_f64(a, u, out):
    """float64 ``out[i] = 1 if u[i] < 1 / (1 + exp(-a[i])) else -1`` (1-D arrays)."""
    for i in prange(a.shape[0]):
        out[i] = 1.0 if u[i] < 1.0 / (1.0 + math.exp(-a[i])) else -1.0


KERNELS = {np.dtype(np.float32): logistic_sample_f32, np.dtype(np.float64): logistic_sample_f64}


def logistic_sample(a, u):
    """``where(u < expit(a), 1, -1)`` in ``a``'s dtype through the kernel, or None when the inputs are
    not same-shape float32/float64 arrays of one dtype (the caller then uses the NumPy formula).

    Parameters
    ----------
    a : ndarray, float32 or float64, any shape
        Pre-activations.
    u : ndarray, same shape and dtype as ``a``
        Uniforms in [0, 1).

    Returns
    -------
    ndarray or None
        +-1 states, same shape and dtype as ``a``; None when the kernel does not apply.
    """
    kernel = KERNELS.get(a.dtype)
    if kernel is None or not isinstance(u, np.ndarray) or u.dtype != a.dtype or u.shape != a.shape:
        return None
    flat_a = np.ascontiguousarray(a).reshape(-1)
    flat_u = np.ascontiguousarray(u).reshape(-1)
    out = np.empty_like(flat_a)
    with kernel_threads(flat_a.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        kernel(flat_a, flat_u, out)
    return out.reshape(a.shape)
