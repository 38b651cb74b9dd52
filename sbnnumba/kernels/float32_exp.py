"""``e^x`` in float32 from arithmetic only, so that loops calling it vectorize (Numba has no vector math library
here: ``math.exp`` in a loop stays a scalar library call).

Used by the float32 logistic sampler's fast decision (:mod:`sbnnumba.kernels.sampling`) and by the branch-free
normal CDF of the probit flip form (:mod:`sbnnumba.kernels.probit`). ``tests/test_noise.py`` checks the bound of
:func:`exp_f32` on every 29th float32 in [-87, 87].
"""
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # 355 / 512: n * _LN2_HI is exact for |n| < 2^15 (Cody and Waite)
_LN2_LO = np.float32(-2.12194440e-4)  # ln 2 - _LN2_HI


@intrinsic
def _pow2_f32_llvm(typingctx, n):
    """``2^n`` as a float32 for an integral float32 ``n`` in [-126, 127]: the exponent field ``n + 127`` set in
    32-bit integers (so the loop vectorizes at 8 or 16 lanes; Numba's own integers are 64-bit)."""
    if n != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = context.get_value_type(types.int32)
        field = builder.add(builder.fptosi(args[0], i32), i32(127))
        return builder.bitcast(builder.shl(field, i32(23)), context.get_value_type(types.float32))

    return types.float32(n), codegen


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
