"""Numba CPU kernels for sampling logistic binary units (:meth:`sbnnumba.noise.Logistic.sample`).

``x = +1 if u < sigma(a) else -1`` in one parallel pass, instead of NumPy's ``expit`` into a temporary
and a ``where`` over it. ``sigma(a) = 1 / (1 + exp(-a))`` is computed in the dtype of ``a`` with the
C library's ``expf``/``exp``, the same operations as SciPy's ``expit``: on 611 million float32 values
(every 7th bit pattern of each sign) and 20 million float64 values the two agreed bit for bit, so the
samples, and every seeded run, are those of the NumPy formula (``tests/test_noise.py`` checks the
equality on the machine that runs the tests). No ``fastmath``: an approximate vectorized ``exp``
would change bits. One kernel per dtype, so that float32 stays float32 throughout. The kernels compute one block
(``nogil``, no ``prange``); :func:`logistic_sample` runs them over fixed blocks of whole tasks that the threads take
as they come free (:func:`sbnnumba.runtime.run_range_blocks`: with a core kept busy, a static ``prange`` split
waits for the thread there), so the samples are the same bits at any thread count.

The float32 kernel decides most entries without ``expf`` (a scalar libm call per entry): per task of
:data:`CHUNK` entries, one vectorized pass computes ``sigma(a)`` in float64 with arithmetic only
(:func:`_sigma64`, within a relative 1e-10) and compares ``u`` with it; where ``u`` lies within
``1e-6 sigma + 1e-30`` of it (the float32 formula's own error is below 2e-7 of ``sigma``), or ``a`` is NaN,
the task is redone with the exact float32 formula. Outside that margin both comparisons agree, so the samples
are those of the formula bit for bit (``tests/test_noise.py``: ``u`` set to ``sigma(a)`` and its neighbours
on [-110, 110], zeros, extremes, NaN); for uniform ``u`` about one task in two thousand is redone.
Measured speed-up: ``docs/performance.md`` (CPU kernels, sampling).
"""
import math

import numba
import numpy as np

from ..runtime import run_range_blocks

#: Entries per task of the float32 sampler: one vectorized pass decides them, the rare task holding an entry
#: too close to call is redone exactly.
CHUNK = 512
#: Margin of the float64 decision: the float32 ``sigma`` differs from the exact one by less than 2e-7 of it
#: (glibc's ``expf`` within 0.502 ulp, then two rounded operations; 1e-6 leaves room for a libm eight times
#: worse), the float64 estimate by less than 1e-10; the absolute part covers ``sigma`` below float32's range.
_RELATIVE_MARGIN = 1e-6
_ABSOLUTE_MARGIN = 1e-30


@numba.njit(inline="always", error_model="numpy")
def _sigma64(a):
    """``1 / (1 + exp(-a))`` in float64 within a relative 1e-10 (``|a|`` clipped to 100): ``exp`` as a
    degree-15 Taylor polynomial at ``-a / 128`` squared seven times (arithmetic only, so the loop vectorizes)."""
    x = -a
    x = x if x < 100.0 else 100.0
    x = x if x > -100.0 else -100.0
    x = x * (1.0 / 128.0)
    p = 1.0 + x * (1.0 + x * (1.0 / 2 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120 + x * (1.0 / 720 + x * (
        1.0 / 5040 + x * (1.0 / 40320 + x * (1.0 / 362880 + x * (1.0 / 3628800 + x * (1.0 / 39916800 + x * (
            1.0 / 479001600 + x * (1.0 / 6227020800 + x * (1.0 / 87178291200))))))))))))))
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return 1.0 / (1.0 + p)


@numba.njit(error_model="numpy", cache=True)
def _decide_f32(a, u, out):
    """The float64 decision of ``u < sigma(a)`` into ``out`` (+-1, float32); returns the number of entries too
    close to call (or NaN), which this pass leaves to the exact formula."""
    one = np.float32(1.0)
    unsure = 0
    for i in range(a.shape[0]):
        ai = np.float64(a[i])
        s = _sigma64(ai)
        d = np.float64(u[i]) - s
        out[i] = one if d < 0.0 else -one
        unsure += (abs(d) <= _RELATIVE_MARGIN * s + _ABSOLUTE_MARGIN) | (ai != ai)
    return unsure


@numba.njit(nogil=True, error_model="numpy", cache=True)
def logistic_sample_f32(a, u, out):
    """float32 ``out[i] = 1 if u[i] < 1 / (1 + expf(-a[i])) else -1`` (1-D arrays; one block, on the calling thread,
    in tasks of :data:`CHUNK` entries)."""
    one = np.float32(1.0)
    n = a.shape[0]
    for k in range((n + CHUNK - 1) // CHUNK):
        lo, hi = k * CHUNK, min(n, (k + 1) * CHUNK)
        if _decide_f32(a[lo:hi], u[lo:hi], out[lo:hi]):  # an entry too close to call: the task done exactly
            for i in range(lo, hi):
                out[i] = one if u[i] < one / (one + math.exp(-a[i])) else -one


@numba.njit(nogil=True, error_model="numpy", cache=True)
def logistic_sample_f64(a, u, out):
    """float64 ``out[i] = 1 if u[i] < 1 / (1 + exp(-a[i])) else -1`` (1-D arrays; one block)."""
    for i in range(a.shape[0]):
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
    n = flat_a.size

    def block(k0, k1):  # tasks k0..k1-1 of CHUNK entries
        lo, hi = k0 * CHUNK, min(n, k1 * CHUNK)
        kernel(flat_a[lo:hi], flat_u[lo:hi], out[lo:hi])

    run_range_blocks(block, -(-n // CHUNK), n, "elementwise")  # the per-call thread rule of sbnnumba.runtime
    return out.reshape(a.shape)
