r"""The logistic ratio form's terms two at a time: one division for two output units (spec psa.md, section 2.10).

The ratio form of the flip propagation (:mod:`sbnnumba.kernels.conv_cpu`) sums, for every input unit, terms
``g / D`` with ``D = 1 + e K`` (``g = x_out d_out`` and ``e = e^{-a}`` per output unit, ``K = e^{+-2W}`` per
weight). A division costs several times a multiply-add, so two output units ``c, c'`` that share the input unit
share one division:

.. math::

    \frac{g}{D} + \frac{g'}{D'} = \frac{g D' + g' D}{D D'}, \qquad D = \min(1 + e K, \mathrm{BIG}),

one division and four multiply-adds for two connections instead of two divisions (the numba.cuda kernels,
:mod:`sbnnumba.backends.cuda.dense_flip`, pair their output units the same way; the CPU dense kernel,
:func:`sbnnumba.kernels.cpu.ratio_pair_value`, pairs its terms ``h / (c + k)`` by the same formula, with exact
power-of-two scales of its factors in place of the clamp). :data:`RATIO_CLAMP` keeps
``D D'`` finite: a clamped term ``g / (1 + e K) < |g| / BIG`` moves by less than ``|g| / BIG`` (``2^-40`` in
float32, ``2^-200`` in float64; ``1 + e K`` reaches ``e^{A + C}``, :data:`sbnnumba.kernels.cpu.RATIO_LIMITS`).
An odd last output unit pairs with the neutral ``(g', D') = (0, 1)``: its term is then ``g / D``.

**Bits.** Every operation is written out (:func:`fma` is LLVM's fused multiply-add, one rounding): ``D`` by one FMA
and a ``min``, the numerator ``fma(g, D', g' D)``, the denominator ``D D'``, one correctly rounded division. The
kernels that use :func:`pair_term` compile without fastmath's "contract" and "arcp", so LLVM neither fuses other
products nor replaces the division by a reciprocal estimate: a pair's value does not depend on the kernel, the
layout, the vector lane or the thread count, and the cell-major and channel-innermost conv kernels give the same
bits.

**Accuracy.** With the unit roundoff ``u`` (``2^-24`` in float32): ``D`` is within ``u`` of ``1 + e K``
(relative); the numerator within ``2u (|g| D' + |g'| D)``; so, as ``D, D' >= 1``,

.. math::

    \left| \mathrm{pair} - \left(\frac{g}{1 + eK} + \frac{g'}{1 + e'K'}\right) \right|
    \le 6u\,(|g| + |g'|) + (|g| + |g'|) / \mathrm{BIG},

against ``2u (|g| + |g'|)`` for two exact divisions (``tests/test_ratio_pair.py`` checks the kernels against a float64
reference with this bound plus the rounding of the sums).
"""
import math
from fractions import Fraction

import numba
import numpy as np
from llvmlite import ir
from numba.extending import intrinsic

from .float32_exp import exp_f32_saturating
from .scalar import dtype_name

# Clamp of the ratio form's denominators (module docstring; CPU kernels and the numba.cuda kernels alike):
# BIG^2 is below the float range, and a clamped term moves by less than |g| / BIG.
RATIO_CLAMP = {"float32": 2.0 ** 40, "float64": 2.0 ** 200}

# fastmath flags of the kernels that use pair_term: no "contract" (every product rounded as written, fma explicit),
# no "arcp" (the division exact), no "reassoc" (each accumulator adds its terms in the kernel's fixed order).
PAIR_FASTMATH = {"nnan", "ninf", "nsz"}


def clamp(dtype):
    """The denominators' clamp ``BIG`` for a dtype.

    Parameters
    ----------
    dtype : numpy dtype
        float32 or float64.

    Returns
    -------
    numpy scalar of ``dtype``
        :data:`RATIO_CLAMP` for that dtype (``2^40`` or ``2^200``).
    """
    return np.dtype(dtype).type(RATIO_CLAMP[dtype_name(dtype)])


@intrinsic
def _fma_llvm(typingctx, a, b, c):
    """``a b + c`` with one rounding (LLVM's ``llvm.fma``), in ``@njit`` kernels (under ``NUMBA_DISABLE_JIT=1`` its
    twin :func:`_fma_python`).

    Parameters
    ----------
    a, b, c : float32 or float64 (one type)

    Returns
    -------
    float
        The exact ``a b + c``, rounded once.
    """
    if not (a == b == c and isinstance(a, numba.types.Float)):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)

    return sig, codegen


def _fma_python(a, b, c):
    """:func:`_fma_llvm` in Python (the twin under ``NUMBA_DISABLE_JIT=1``): ``a b + c`` formed exactly (in
    fractions) and rounded once, to nearest with ties to even, in the dtype of ``a`` (subnormals and overflow to
    infinity as IEEE 754's fused multiply-add gives them).

    Parameters
    ----------
    a, b, c : numpy float32 or float64 scalars (one dtype)

    Returns
    -------
    numpy scalar of that dtype
    """
    dtype = np.asarray(a).dtype
    if not (np.isfinite(a) and np.isfinite(b)):
        with np.errstate(invalid="ignore"):
            return dtype.type(a * b + c)  # the product is exact (an infinity or NaN): IEEE's special cases
    if not np.isfinite(c):
        return dtype.type(c)  # finite + infinity or NaN
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact == 0:  # an exact zero sum is +0 (round to nearest) unless both addends are -0
        product_is_minus_zero = (a == 0 or b == 0) and bool(np.signbit(a)) != bool(np.signbit(b))
        return dtype.type(-0.0 if product_is_minus_zero and c == 0 and np.signbit(c) else 0.0)
    info = np.finfo(dtype)
    size = abs(exact)
    e = size.numerator.bit_length() - size.denominator.bit_length()  # floor(log2 size) is e or e - 1
    if size < Fraction(2) ** e:
        e -= 1
    q = max(e, info.minexp) - info.nmant  # the exponent of the unit in the last place (subnormals: the smallest)
    n = round(size / Fraction(2) ** q)  # Fraction.__round__: to nearest, ties to even
    try:
        value = math.ldexp(float(n), q)  # exact where representable (n has at most nmant + 2 bits)
    except OverflowError:
        value = math.inf
    with np.errstate(over="ignore"):
        return dtype.type(-value if exact < 0 else value)  # float32: 2^128 and beyond become infinity


fma = _fma_python if numba.config.DISABLE_JIT else _fma_llvm


@numba.njit(inline="always")
def denominator(e, k, one, big):
    """A clamped denominator of the ratio form (module docstring).

    Parameters
    ----------
    e : float
        ``e^{-a}`` of the output unit.
    k : float
        ``e^{+-2W}`` of the connection (sign of the input state).
    one : float
        1 in the dtype of ``e``.
    big : float
        The clamp (:data:`RATIO_CLAMP`).

    Returns
    -------
    float
        ``min(1 + e k, big)``, ``1 + e k`` by one FMA.
    """
    return min(fma(e, k, one), big)


@numba.njit(inline="always")
def factor(s, k_pos, k_neg):
    """The weight factor ``K`` of a connection, chosen by the sign of its input state.

    Parameters
    ----------
    s : int8 or float
        The input state ``x_in`` (+-1; 0 for the inert padded examples of a batch block, whose ``g = 0`` makes
        the term 0 with either factor).
    k_pos, k_neg : float
        ``e^{+2W}`` and ``e^{-2W}``.

    Returns
    -------
    float
        ``k_neg`` where ``s < 0``, ``k_pos`` elsewhere (``K = e^{2 W x_in}``).

    Notes
    -----
    The test is on the sign, not ``s > 0``: in a vectorized loop over int8 states the sign bit of the
    sign-extended lane is the blend's own mask, so the choice costs one blend and no compare (measurements:
    ``docs/experiments/2026-12-07-session21-factor-select.md``).
    """
    return k_neg if s < 0 else k_pos


@numba.njit(inline="always")
def pair_term(g0, d0, g1, d1):
    """Two ratio terms with one division (module docstring).

    Parameters
    ----------
    g0, g1 : float
        Numerators ``x_out d_out`` of the two output units.
    d0, d1 : float
        Their clamped denominators (:func:`denominator`), ``>= 1``.

    Returns
    -------
    float
        ``g0 / d0 + g1 / d1`` as ``fma(g0, d1, g1 d0) / (d0 d1)``; ``g0 / d0`` exactly when ``(g1, d1) = (0, 1)``.
    """
    return fma(g0, d1, g1 * d0) / (d0 * d1)


@numba.njit(error_model="numpy", cache=True)
def weight_factors(k_pos, k_neg, clip, exp_f32):
    """The weight factors ``K = e^{+-2W}`` of a row of weights, in place: ``v = min(max(2 w, -C), C)`` from
    ``k_pos = w``, then ``k_pos = e^v``, ``k_neg = e^{-v}``.

    The one definition of the conv ratio form's weight factors (:mod:`sbnnumba.kernels.conv_cpu`, both layouts, and
    :mod:`sbnnumba.kernels.conv_single_cell`). Not inlined: its callers' kernels may compile with fastmath, which would
    let LLVM drop :func:`sbnnumba.kernels.float32_exp.exp_f32_saturating`'s range tests; compiled alone it vectorizes.

    Parameters
    ----------
    k_pos : ndarray (n,)
        The weights on entry, ``e^{v}`` (or ``v``) on return.
    k_neg : ndarray (n,)
        ``e^{-v}`` (or ``-v``) on return.
    clip : float
        ``C`` (:func:`sbnnumba.kernels.cpu.ratio_limits`); ``2w`` is exact in the row's dtype as in float64, and an
        overflow to infinity clips to the same bound, so the dtype of the arithmetic does not change ``v``.
    exp_f32 : bool or None
        Not None (float32 rows only): the exponentials by :func:`~sbnnumba.kernels.float32_exp.exp_f32_saturating`
        (the bits of :func:`~sbnnumba.kernels.float32_exp.exp_in_place`); None: ``v`` and ``-v`` themselves, for a
        caller that takes NumPy's ``exp`` after (float64).
    """
    two = k_pos.dtype.type(2)
    for i in range(k_pos.shape[0]):
        v = min(max(two * k_pos[i], -clip), clip)
        if exp_f32 is None:
            k_pos[i] = v
            k_neg[i] = -v
        else:
            k_pos[i] = exp_f32_saturating(np.float32(v))
            k_neg[i] = exp_f32_saturating(np.float32(-v))
