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
:data:`CHUNK` entries, one vectorized float32 pass estimates ``e^{-a}`` with arithmetic only
(:func:`sbnnumba.kernels.float32_exp.exp_f32`, within a relative 2e-7) and takes the sign of
``t = u (1 + e^{-a}) - 1``, which is that of ``u - sigma(a)`` (no division). The estimate's errors move ``t`` by at
most ``(1 + t) 3.2e-7``, and the float32 formula's ``sigma`` differs from the exact one by less than 2e-7 of it, so
where ``|t| > 4e-6`` (:data:`_MARGIN`) both decisions agree; the tasks holding an entry within that margin, a ``u``
below ``2e-38`` (where ``a`` clipped to ``[-87, 87]`` could matter) or a NaN ``a`` are redone with the exact float32
formula. The samples are those of the formula bit for bit (``tests/test_noise.py``: ``u`` set to ``sigma(a)`` and
its neighbours on [-110, 110], zeros, subnormals, extremes, NaN); for uniform ``u`` about one task in three hundred
is redone.
Measured speed-up: ``docs/performance.md`` (CPU kernels, sampling; ``bench/sampling.py``).
"""
import math

import numba
import numpy as np

from ..runtime import run_range_blocks
from .float32_exp import exp_f32

#: Entries per task of the float32 sampler: one vectorized pass decides them, the rare task holding an entry
#: too close to call is redone exactly.
CHUNK = 512
#: Margin of the float32 decision on ``t = u (1 + e^{-a}) - 1`` (module docstring): the estimate moves ``t`` by at
#: most ``(1 + t) 3.2e-7`` (``e^{-a}`` within 2e-7, two roundings of 6e-8), the float32 formula's ``sigma`` is
#: within 2e-7 of the exact one (glibc's ``expf`` within 0.502 ulp, then two rounded operations); 4e-6 leaves room
#: for a libm eight times worse.
_MARGIN = np.float32(4e-6)
#: Below this ``u`` the clipped argument (``|a| <= 87``) could decide otherwise than the formula: redone exactly.
_TINY_U = np.float32(2e-38)
_EXP_ARG_MAX = np.float32(87.0)  # e^{+-87}, 1 + e^{87} normal float32 numbers; n = round(x / ln 2) in [-126, 126]
@numba.njit(error_model="numpy", cache=True)
def _decide_f32(a, u, out):
    """The float32 decision of ``u < sigma(a)`` into ``out`` (+-1, float32), from the sign of
    ``u (1 + e^{-a}) - 1``; returns whether an entry is too close to call (``|t| <= 4e-6``), has ``u < 2e-38``
    or a NaN ``a``: the caller then redoes the task with the exact formula (module docstring)."""
    one = np.float32(1.0)
    unsure = False
    for i in range(a.shape[0]):
        ai = a[i]
        ui = u[i]
        x = -ai
        x = x if x < _EXP_ARG_MAX else _EXP_ARG_MAX
        x = x if x > -_EXP_ARG_MAX else -_EXP_ARG_MAX
        t = ui * (one + exp_f32(x)) - one  # negative iff u < sigma(a), up to the margin
        out[i] = one if t < 0 else -one
        unsure |= (abs(t) <= _MARGIN) | (ui < _TINY_U) | (ai != ai)  # a bool: the loop stays 32-bit, 8+ lanes
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
