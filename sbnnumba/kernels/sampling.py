"""Numba CPU kernels for sampling binary units of the built-in noise families (:meth:`sbnnumba.noise.NoiseFamily.sample`
through :func:`sample_units`), bit for bit ``where(u < F(a), 1, -1)``.

``x = +1 if u < sigma(a) else -1`` in one parallel pass, instead of NumPy's ``expit`` into a temporary
and a ``where`` over it. ``sigma(a) = 1 / (1 + exp(-a))`` is computed in the dtype of ``a`` with the
C library's ``expf``/``exp``, the same operations as SciPy's ``expit``: on 611 million float32 values
(every 7th bit pattern of each sign) and 20 million float64 values the two agreed bit for bit, so the
samples, and every seeded run, are those of the NumPy formula (``tests/test_noise.py`` checks the
equality on the machine that runs the tests). No ``fastmath``: an approximate vectorized ``exp``
would change bits. One kernel per dtype, so that float32 stays float32 throughout. The kernels compute one block
(``nogil``, no ``prange``); :func:`sample_units` runs them over fixed blocks of whole tasks that the threads take
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
Normal units, float32 (``sample_units("normal", ...)``): ``x = +1 if u < ndtr(a) else -1`` with SciPy's ``ndtr``
(a scalar call per entry, about 20 ns). One vectorized pass decides by the sign of ``u - normal_cdf(a)``
(:func:`sbnnumba.kernels.probit.normal_cdf`, within 3.5 u of ``Phi``; SciPy's float32 ``ndtr`` is ``Phi`` rounded,
within 0.5 u), so where ``|u - normal_cdf(a)| > 16 u`` (:data:`_NORMAL_MARGIN`) both decisions agree; the tasks
holding an entry within that margin or a NaN ``a`` are redone with SciPy's formula. The samples are the formula's
bit for bit (``tests/test_noise.py``).

Uniform and triangular units (float32 and float64): one pass that evaluates ``F`` with the NumPy formula's own
operations (no fastmath, so the same IEEE results) and compares.

Measured speed-up: ``docs/performance.md`` (CPU kernels, sampling; ``bench/sampling.py``).
"""
import math

import numba
import numpy as np
from scipy import special

from ..runtime import run_range_blocks
from . import probit
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


#: Margin of the normal decision on ``t = u - normal_cdf(a)`` (module docstring): 3.5 u + 0.5 u, four times over.
_NORMAL_MARGIN = np.float32(16 * 2.0 ** -24)


@numba.njit(inline="always", fastmath=probit.FASTMATH, error_model="numpy")
def _decide_normal_task(a, a_bits, u, out):
    # One task: out = +-1 by the sign of u - normal_cdf(a); whether an entry is within the margin or a NaN a (tested on
    # a_bits, the same memory as uint32: probit.FASTMATH lets the compiler assume no NaN in arithmetic).
    one = np.float32(1.0)
    close = False
    for i in range(a.shape[0]):
        t = u[i] - probit.normal_cdf(a[i])
        out[i] = one if t < 0 else -one
        close |= (abs(t) <= _NORMAL_MARGIN) | ((a_bits[i] & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000))
    return close


@numba.njit(nogil=True, fastmath=probit.FASTMATH, error_model="numpy", cache=True)
def _decide_normal_f32(a, a_bits, u, out, unsure):
    """The float32 decision of ``u < Phi(a)`` into ``out`` (+-1) task by task (:data:`CHUNK` entries); ``unsure[k]``
    says whether task ``k`` holds an entry within :data:`_NORMAL_MARGIN` or a NaN ``a`` (``a_bits``: ``a`` as
    uint32)."""
    n = a.shape[0]
    for k in range(unsure.shape[0]):
        lo, hi = k * CHUNK, min(n, (k + 1) * CHUNK)
        unsure[k] = _decide_normal_task(a[lo:hi], a_bits[lo:hi], u[lo:hi], out[lo:hi])


def _normal_sample_f32(a, u, out):
    """float32 ``out = where(u < ndtr(a), 1, -1)`` (1-D arrays; one block): the fast decision, then SciPy's formula
    for the tasks it cannot call."""
    unsure = np.empty(-(-a.size // CHUNK), np.bool_)
    _decide_normal_f32(a, a.view(np.uint32), u, out, unsure)
    one = np.float32(1.0)
    for k in np.flatnonzero(unsure):
        lo, hi = k * CHUNK, min(a.size, (k + 1) * CHUNK)
        out[lo:hi] = np.where(u[lo:hi] < special.ndtr(a[lo:hi]), one, -one)


@numba.njit(nogil=True, error_model="numpy", cache=True)
def _bounded_sample(triangular, a, u, out):
    # Uniform and triangular noise: F by the NumPy formulas' own operations in a's dtype (no fastmath, so the same
    # IEEE results): uniform clip((a + 1) / 2, 0, 1), triangular (1 + t)^2 / 2 below 0 and 1 - (1 - t)^2 / 2 above,
    # t = clip(a, -1, 1); a NaN a gives -1 as u < NaN does.
    one = a.dtype.type(1)
    zero = one - one
    half = one / (one + one)
    for i in range(a.shape[0]):
        ai = a[i]
        if triangular:
            t = min(max(ai, -one), one)
            f = half * ((one + t) * (one + t)) if t < zero else one - half * ((one - t) * (one - t))
        else:
            f = min(max((ai + one) * half, zero), one)
        out[i] = one if (u[i] < f and ai == ai) else -one


def _uniform_sample(a, u, out):
    _bounded_sample(False, a, u, out)


def _triangular_sample(a, u, out):
    _bounded_sample(True, a, u, out)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
#: family -> dtype -> the block kernel ``(a, u, out)`` of its sampler (:func:`sample_units`).
SAMPLERS = {"logistic": {np.dtype(np.float32): logistic_sample_f32, np.dtype(np.float64): logistic_sample_f64},
            "normal": {np.dtype(np.float32): _normal_sample_f32},
            "uniform": dict.fromkeys(_FLOATS, _uniform_sample),
            "triangular": dict.fromkeys(_FLOATS, _triangular_sample)}


def sample_units(family, a, u):
    """``where(u < F(a), 1, -1)`` bit for bit through the family's sampler (:data:`SAMPLERS`: logistic noise in
    float32 and float64, ``F = expit``; normal noise in float32, ``F = ndtr``; uniform and triangular noise in float32
    and float64, ``F`` by the NumPy formula's operations), over fixed blocks of tasks on the
    threads (the same bits at any thread count), or None when it does not apply.

    Parameters
    ----------
    family : str
        The noise family's name (:attr:`sbnnumba.noise.NoiseFamily.name`); one without an entry in :data:`SAMPLERS`
        gives None.
    a : ndarray, any shape
        Pre-activations.
    u : ndarray, same shape and dtype as ``a``
        Uniforms in [0, 1).

    Returns
    -------
    ndarray or None
        +-1 states, same shape and dtype as ``a``; None when the family has no kernel for ``a``'s dtype or ``u`` is
        not an array of ``a``'s shape and dtype (the caller then uses the NumPy formula).
    """
    kernel = SAMPLERS.get(family, {}).get(a.dtype)
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
