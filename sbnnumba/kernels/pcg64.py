r"""NumPy's PCG64 and PCG64DXSM uniforms in Numba: ``Generator(...).random`` bit for bit, in one compiled loop.

NumPy fills ``rng.random(out=..., dtype=...)`` one value at a time through the bit generator's function pointers;
this kernel runs the same recurrence in one compiled loop. PCG64 (O'Neill's PCG XSL RR 128/64, NumPy's
``numpy/random/src/pcg64``) keeps a 128-bit state ``s`` and an odd increment ``c``; each 64-bit draw steps

.. math::

    s \leftarrow (M s + c) \bmod 2^{128}, \qquad
    v = \mathrm{rotr}_{64}(s_{hi} \oplus s_{lo},\ s_{hi} \gg 58)

with NumPy's multiplier ``M`` (:data:`MULTIPLIER`); the 128-bit product goes through LLVM's ``i128`` arithmetic
(:func:`mul_add_128`). PCG64DXSM (NumPy's ``pcg64_cm``, ``dxsm=True`` in the kernels below) steps the same recurrence
with the 64-bit multiplier ``K`` (:data:`CHEAP_MULTIPLIER`) and outputs from the state before the step, in 64-bit
arithmetic modulo ``2^64``:

.. math::

    h = s_{hi} \oplus (s_{hi} \gg 32), \quad h \leftarrow h K, \quad h \leftarrow h \oplus (h \gg 48), \quad
    v = h (s_{lo} \mathbin{|} 1), \qquad s \leftarrow (K s + c) \bmod 2^{128}.

NumPy's uniforms from the draws ``v``:

* float64: ``(v >> 11) 2^{-53}``, one draw per value;
* float32: ``(w >> 8) 2^{-24}`` for the 32-bit halves ``w`` of each draw, low half first; after an odd count the
  high half waits in the generator's buffer (``has_uint32``, ``uinteger``), which the caller sets
  (:func:`sbnnumba.uniforms.random_uniforms`).

The kernels fill one block from a given state (``nogil``: the caller's threads fill the blocks of one draw, each
started at its place in the stream by :func:`advance`, NumPy's ``PCG64.advance``) and return the state after it
and the block's last draw.
``tests/test_uniforms.py`` checks values and final states against NumPy's, compiled and under ``NUMBA_DISABLE_JIT=1``
(where the 128-bit step is Python integer arithmetic).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: NumPy's PCG64 multiplier (``PCG_DEFAULT_MULTIPLIER_128``).
MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
_M_HI = np.uint64(MULTIPLIER >> 64)
_M_LO = np.uint64(MULTIPLIER & 0xFFFFFFFFFFFFFFFF)
#: NumPy's PCG64DXSM multiplier (``PCG_CHEAP_MULTIPLIER_128``): the state's and the output's.
CHEAP_MULTIPLIER = 0xDA942042E4DD58B5
_K = np.uint64(CHEAP_MULTIPLIER)


def split_128(value):
    """A 128-bit Python int as its ``(high, low)`` uint64 halves.

    Parameters
    ----------
    value : int
        In ``[0, 2^128)``.

    Returns
    -------
    (numpy.uint64, numpy.uint64)
    """
    return np.uint64(value >> 64), np.uint64(value & 0xFFFFFFFFFFFFFFFF)


def join_128(high, low):
    """The Python int of two uint64 halves (inverse of :func:`split_128`).

    Parameters
    ----------
    high, low : int or numpy.uint64

    Returns
    -------
    int
    """
    return (int(high) << 64) | int(low)


@intrinsic
def _mul_add_128_llvm(typingctx, a_hi, a_lo, m_hi, m_lo, c_hi, c_lo):
    """``(a m + c) mod 2^128`` of 128-bit numbers given as ``(hi, lo)`` uint64 halves (LLVM ``i128``), in ``@njit``
    code.

    Parameters
    ----------
    a_hi, a_lo, m_hi, m_lo, c_hi, c_lo : uint64

    Returns
    -------
    (uint64, uint64)
        High and low halves of the result.
    """
    if not all(arg == types.uint64 for arg in (a_hi, a_lo, m_hi, m_lo, c_hi, c_lo)):
        return None
    result = types.UniTuple(types.uint64, 2)

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        i64 = ir.IntType(64)

        def join(high, low):
            return builder.or_(builder.shl(builder.zext(high, i128), i128(64)), builder.zext(low, i128))

        total = builder.add(builder.mul(join(args[0], args[1]), join(args[2], args[3])), join(args[4], args[5]))
        high = builder.trunc(builder.lshr(total, i128(64)), i64)
        return context.make_tuple(builder, result, [high, builder.trunc(total, i64)])

    return result(a_hi, a_lo, m_hi, m_lo, c_hi, c_lo), codegen


def _mul_add_128_python(a_hi, a_lo, m_hi, m_lo, c_hi, c_lo):
    """:func:`mul_add_128` in Python integers (the kernels' twin under ``NUMBA_DISABLE_JIT=1``)."""
    return split_128((join_128(a_hi, a_lo) * join_128(m_hi, m_lo) + join_128(c_hi, c_lo)) % (1 << 128))


mul_add_128 = _mul_add_128_python if numba.config.DISABLE_JIT else _mul_add_128_llvm


@numba.njit(inline="always")
def _mul_64_jit(a, b):
    return a * b  # uint64 product modulo 2^64 (LLVM's mul wraps)


def _mul_64_python(a, b):
    """:func:`mul_64` in Python integers (NumPy's uint64 scalars warn when a product wraps)."""
    return np.uint64((int(a) * int(b)) & 0xFFFFFFFFFFFFFFFF)


mul_64 = _mul_64_python if numba.config.DISABLE_JIT else _mul_64_jit


@numba.njit(inline="always")
def _multiplier(dxsm):
    # (high, low) halves of the state's multiplier: PCG64's M, or PCG64DXSM's 64-bit K
    return (np.uint64(0), _K) if dxsm else (_M_HI, _M_LO)


@numba.njit(inline="always")
def _xsl_rr(s_hi, s_lo):
    # PCG64's output of a state
    x = s_hi ^ s_lo
    rot = s_hi >> np.uint64(58)
    return (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))


@numba.njit(inline="always")
def _dxsm(s_hi, s_lo):
    # PCG64DXSM's output of a state
    h = s_hi ^ (s_hi >> np.uint64(32))
    h = mul_64(h, _K)
    h ^= h >> np.uint64(48)
    return mul_64(h, s_lo | np.uint64(1))


@numba.njit(inline="always")
def _step(s_hi, s_lo, c_hi, c_lo, dxsm):
    # one 64-bit draw: the new state and its output (PCG64: XSL RR of the new state; PCG64DXSM: DXSM of the old one)
    m_hi, m_lo = _multiplier(dxsm)
    n_hi, n_lo = mul_add_128(s_hi, s_lo, m_hi, m_lo, c_hi, c_lo)
    return n_hi, n_lo, (_dxsm(s_hi, s_lo) if dxsm else _xsl_rr(n_hi, n_lo))


@numba.njit(nogil=True, cache=True)
def advance(s_hi, s_lo, c_hi, c_lo, delta, dxsm=False):
    r"""The PCG64 (or, ``dxsm``, PCG64DXSM) state ``delta`` 64-bit draws after ``(s_hi, s_lo)``: NumPy's
    ``advance(delta)``, in ``O(log delta)`` 128-bit multiply-adds (Brown 1994, "Random number generation with
    arbitrary strides").

    ``delta`` steps of ``s -> M s + c`` are one affine map ``s -> A s + C`` with ``A = M^delta`` and
    ``C = c (M^{delta-1} + ... + M + 1)`` (mod ``2^128``), built by squaring: the step of ``2^k`` draws
    ``(M_k, C_k)`` gives ``(M_k^2, (M_k + 1) C_k)`` for ``2^{k+1}``, and the steps of the set bits of ``delta``
    compose. ``M`` is :data:`MULTIPLIER`, or :data:`CHEAP_MULTIPLIER` for PCG64DXSM.

    Parameters
    ----------
    s_hi, s_lo, c_hi, c_lo : uint64
        The state and the increment.
    delta : int
        Draws to skip, ``>= 0``.
    dxsm : bool
        PCG64DXSM's multiplier instead of PCG64's.

    Returns
    -------
    (uint64, uint64)
        High and low halves of the state after ``delta`` draws (what ``advance`` leaves, the half-draw buffer aside).
    """
    zero, one = np.uint64(0), np.uint64(1)
    a_hi, a_lo, p_hi, p_lo = zero, one, zero, zero  # the map of the bits of delta seen so far: s -> a s + p
    m_hi, m_lo = _multiplier(dxsm)
    q_hi, q_lo = c_hi, c_lo  # with (m_hi, m_lo): the map of 2^k draws
    while delta > 0:
        if delta & 1:
            a_hi, a_lo = mul_add_128(a_hi, a_lo, m_hi, m_lo, zero, zero)
            p_hi, p_lo = mul_add_128(p_hi, p_lo, m_hi, m_lo, q_hi, q_lo)
        q_hi, q_lo = mul_add_128(q_hi, q_lo, m_hi, m_lo, q_hi, q_lo)  # (M_k + 1) C_k
        m_hi, m_lo = mul_add_128(m_hi, m_lo, m_hi, m_lo, zero, zero)
        delta >>= 1
    return mul_add_128(s_hi, s_lo, a_hi, a_lo, p_hi, p_lo)


@numba.njit(nogil=True, cache=True)
def fill_float32(s_hi, s_lo, c_hi, c_lo, skip, out, dxsm=False):
    """NumPy's float32 uniforms from PCG64 state ``(s_hi, s_lo)``, increment ``(c_hi, c_lo)``, into ``out``.

    Parameters
    ----------
    s_hi, s_lo, c_hi, c_lo : uint64
        A state, buffer empty, and the increment.
    skip : int
        Draws skipped from that state before the block (:func:`advance`).
    out : 1-d float32 array
        ``ceil(out.size / 2)`` draws: values ``2k`` and ``2k + 1`` are the low and high halves of draw ``k``.
    dxsm : bool
        PCG64DXSM's state and draws instead of PCG64's.

    Returns
    -------
    (uint64, uint64, uint64)
        The state after the block and its last draw (0 if none): after an odd ``out.size`` its high half is what
        NumPy keeps buffered.
    """
    scale = np.float32(1.0 / 16777216.0)
    low_mask = np.uint64(0xFFFFFFFF)
    v = np.uint64(0)
    n = out.size
    s_hi, s_lo = advance(s_hi, s_lo, c_hi, c_lo, skip, dxsm)
    for k in range(n // 2):
        s_hi, s_lo, v = _step(s_hi, s_lo, c_hi, c_lo, dxsm)
        out[2 * k] = np.float32((v & low_mask) >> np.uint64(8)) * scale
        out[2 * k + 1] = np.float32(v >> np.uint64(40)) * scale
    if n % 2:
        s_hi, s_lo, v = _step(s_hi, s_lo, c_hi, c_lo, dxsm)
        out[n - 1] = np.float32((v & low_mask) >> np.uint64(8)) * scale
    return s_hi, s_lo, v


@numba.njit(nogil=True, cache=True)
def fill_float64(s_hi, s_lo, c_hi, c_lo, skip, out, dxsm=False):
    """NumPy's float64 uniforms (one draw each) from PCG64 state ``(s_hi, s_lo)``, increment ``(c_hi, c_lo)``.

    Parameters
    ----------
    s_hi, s_lo, c_hi, c_lo : uint64
    skip : int
        Draws skipped from that state before the block (:func:`advance`).
    out : 1-d float64 array
    dxsm : bool
        PCG64DXSM's state and draws instead of PCG64's.

    Returns
    -------
    (uint64, uint64, uint64)
        The state after the block and its last draw (0 if none).
    """
    scale = 1.0 / 9007199254740992.0
    v = np.uint64(0)
    s_hi, s_lo = advance(s_hi, s_lo, c_hi, c_lo, skip, dxsm)
    for k in range(out.size):
        s_hi, s_lo, v = _step(s_hi, s_lo, c_hi, c_lo, dxsm)
        out[k] = np.float64(v >> np.uint64(11)) * scale
    return s_hi, s_lo, v
