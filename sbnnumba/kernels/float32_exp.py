"""``e^x`` (and ``log x``, :func:`log_f32`) in float32 from arithmetic only, so that loops calling it vectorize (Numba
has no vector math library here: ``math.exp`` in a loop stays a scalar library call).

Used by the float32 logistic sampler's fast decision (:mod:`sbnnumba.kernels.sampling`), by the branch-free
normal CDF of the probit flip form (:mod:`sbnnumba.kernels.probit`) and, through :func:`exp_in_place`, for the
logistic ratio form's factors ``e^{+-a}`` and ``e^{+-2W}`` (dense and conv flips: one parallel vectorized pass,
faster than NumPy's float32 ``exp`` where NumPy has no AVX-512 path (run log of 2026-12-07, session 24), and the same
bits on every CPU: IEEE arithmetic only, no ``fastmath`` that reorders or contracts it). ``tests/test_noise.py``
checks the bound of :func:`exp_f32` on every 29th float32 in [-87, 87]. :func:`log_f32` and :func:`artanh_series`
serve the float32 unit entropy (:mod:`sbnnumba.kernels.entropy`).
"""
import math

import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from ..runtime import blockwise, kernel_threads

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # 355 / 512: n * _LN2_HI is exact for |n| < 2^15 (Cody and Waite)
_LN2_LO = np.float32(-2.12194440e-4)  # ln 2 - _LN2_HI


def _float32_bits_intrinsic(name, doc, body):
    """A Numba intrinsic ``float32 -> float32`` computed on the argument's IEEE bits in 32-bit integer operations
    (so that the loop vectorizes at 8 or 16 lanes; Numba's own integers are 64-bit). ``body(builder, x, i32, f32)``
    emits the LLVM instructions of the float32 value ``x`` (``i32``, ``f32``: the LLVM types)."""
    def typer(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return body(builder, args[0], context.get_value_type(types.int32), context.get_value_type(types.float32))

        return types.float32(x), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


_pow2_f32_llvm = _float32_bits_intrinsic(
    "_pow2_f32_llvm", "``2^n`` as a float32 for an integral float32 ``n`` in [-126, 127]: the exponent field n + 127.",
    lambda b, n, i32, f32: b.bitcast(b.shl(b.add(b.fptosi(n, i32), i32(127)), i32(23)), f32))


def _pow2_f32_python(n):
    """:func:`_pow2_f32_llvm` in NumPy (the twin under ``NUMBA_DISABLE_JIT=1``; exact)."""
    return np.float32(np.ldexp(1.0, int(n)))


_pow2_f32 = _pow2_f32_python if numba.config.DISABLE_JIT else _pow2_f32_llvm


@numba.njit(inline="always", error_model="numpy")
def exp_f32(x):
    """``e^x`` in float32 within a relative 2e-7 for ``|x| <= 87`` (arithmetic only, so the loop vectorizes):
    ``x = n ln 2 + r`` with ``n = round(x / ln 2)``, ``|r| <= 0.35`` (``ln 2`` in two parts), ``e^r`` by its
    degree-7 Taylor polynomial (truncation below 1e-8), times ``2^n`` (the exponent bits set directly).

    Parameters
    ----------
    x : float32
        In ``[-87, 87]`` (outside, ``2^n`` leaves the normal range: the caller clips).

    Returns
    -------
    float32
    """
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = np.float32(1) + r * (np.float32(1) + r * (np.float32(1 / 2) + r * (np.float32(1 / 6) + r * (
        np.float32(1 / 24) + r * (np.float32(1 / 120) + r * (np.float32(1 / 720) + r * np.float32(1 / 5040)))))))
    return p * _pow2_f32(n)


_SQRT2 = np.float32(1.4142135623730951)


_exponent_f32_llvm = _float32_bits_intrinsic(
    "_exponent_f32_llvm", "The unbiased exponent of a positive normal float32, as a float32 (``floor(log2 x)``).",
    lambda b, x, i32, f32: b.sitofp(b.sub(b.lshr(b.bitcast(x, i32), i32(23)), i32(127)), f32))
_mantissa_f32_llvm = _float32_bits_intrinsic(
    "_mantissa_f32_llvm", "A positive normal float32 with its exponent set to 0: the mantissa in ``[1, 2)``.",
    lambda b, x, i32, f32: b.bitcast(b.or_(b.and_(b.bitcast(x, i32), i32(0x7FFFFF)), i32(0x3F800000)), f32))


def _exponent_f32_python(x):
    """:func:`_exponent_f32_llvm` in NumPy (the twin under ``NUMBA_DISABLE_JIT=1``; exact)."""
    return np.float32(np.frexp(np.float32(x))[1] - 1)


def _mantissa_f32_python(x):
    """:func:`_mantissa_f32_llvm` in NumPy (exact)."""
    return np.float32(2 * np.frexp(np.float32(x))[0])


_exponent_f32 = _exponent_f32_python if numba.config.DISABLE_JIT else _exponent_f32_llvm
_mantissa_f32 = _mantissa_f32_python if numba.config.DISABLE_JIT else _mantissa_f32_llvm


@numba.njit(inline="always", error_model="numpy")
def artanh_series(s):
    """``artanh(s) / s`` for ``|s| <= 1/3`` (float32): seven terms of ``sum_j s^{2j} / (2j + 1)`` (truncation below
    ``(1/9)^7 / 15 < 2^-26``), so ``log((1 + s) / (1 - s)) = 2 s artanh_series(s)``.

    Parameters
    ----------
    s : float32
        In ``[-1/3, 1/3]``.

    Returns
    -------
    float32
    """
    z = s * s
    return np.float32(1) + z * (np.float32(1 / 3) + z * (np.float32(1 / 5) + z * (np.float32(1 / 7) + z * (
        np.float32(1 / 9) + z * (np.float32(1 / 11) + z * np.float32(1 / 13))))))


@numba.njit(inline="always", error_model="numpy")
def log_f32(q):
    """``log q`` in float32 for a positive normal float32 ``q`` (arithmetic only, so that loops vectorize):
    ``q = 2^n m`` with ``m`` in ``[sqrt(1/2), sqrt(2))``, ``log m = 2 artanh((m - 1) / (m + 1))``, ``n ln 2`` in two
    parts. Within ``3 u`` of ``log q`` where it is not near 0 (``q <= 1/2`` here).

    Parameters
    ----------
    q : float32
        Positive and normal (the caller selects other values away).

    Returns
    -------
    float32
    """
    m = _mantissa_f32(q)  # [1, 2)
    big = m > _SQRT2
    m = m * np.float32(0.5) if big else m
    nf = _exponent_f32(q) + (np.float32(1) if big else np.float32(0))
    s = (m - np.float32(1)) / (m + np.float32(1))  # |s| <= 0.172
    return nf * _LN2_HI + (np.float32(2) * s * artanh_series(s) + nf * _LN2_LO)


EXP_F32_RANGE = np.float32(87.0)  # exp_f32's range; beyond, e^x leaves float32's normal range


@numba.njit(inline="always", error_model="numpy")
def exp_f32_saturating(x):
    """:func:`exp_f32` on its range ``|x| <= 87``, 0 below it (``-inf`` included), ``inf`` above it, NaN kept (selects
    only: a loop calling it stays vectorized; without ``fastmath`` ``nnan``/``ninf``, which would let LLVM drop the
    tests for ``-inf`` and NaN).

    Parameters
    ----------
    x : float32

    Returns
    -------
    float32
    """
    # exp_f32 only inside the range (compiled, the branches become selects; under NUMBA_DISABLE_JIT its twin would
    # fail on +-inf); exp_f32(NaN) is NaN
    return np.float32(0) if x < -EXP_F32_RANGE else (np.float32(np.inf) if x > EXP_F32_RANGE else exp_f32(x))


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _exp_f32_in_place(v, scale):
    # No fastmath: "contract" (FMA) would give other bits on CPUs without it, "reassoc" undoes the split of ln 2.
    # scale: a power of two, so the product is exact where it stays normal (1: e^v itself, bit for bit).
    for i in prange(v.size):
        v[i] = exp_f32_saturating(v[i]) * scale


def exp_in_place(v, scale=None):
    """``v <- e^v`` (or ``scale e^v``) for the ratio form's factors: float32 by :func:`exp_f32` in one parallel pass
    (within a relative 2e-7 of ``e^v``), float64 by NumPy's ``exp`` over blocks (:func:`sbnnumba.runtime.blockwise`).

    Parameters
    ----------
    v : ndarray
        C-contiguous float32 or float64; float32 entries at most 87 (the callers clip: ``|a| <= 30``,
        ``|2W| <= 50``, :data:`sbnnumba.kernels.cpu.RATIO_LIMITS`); those below -87 (``-inf`` included) give 0, a NaN
        stays NaN.
    scale : float or None
        A power of two multiplying every result in the same pass (exact where the product stays normal: the dense
        ratio kernel's ``k = s e^{2 W^T}``, :data:`sbnnumba.kernels.cpu.RATIO_SCALE`); None for ``e^v`` itself.

    Returns
    -------
    None
    """
    if scale is not None and math.frexp(scale)[0] != 0.5:
        raise ValueError(f"scale: expected a power of two (an exact product), got {scale!r}")
    if v.dtype == np.float32:
        with kernel_threads(v.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
            _exp_f32_in_place(v.reshape(-1), np.float32(1 if scale is None else scale))
    elif scale is None:
        blockwise(lambda part: np.exp(part, out=part), v)
    else:
        blockwise(lambda part: np.multiply(np.exp(part, out=part), scale, out=part), v)
