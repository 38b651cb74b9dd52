r"""Counter-based (stateless) uniforms on the device: Philox-4x64-10, bit-identical to NumPy's ``Philox``.

The data-parallel training step (:mod:`sbnnumba.distributed`) keys the activation noise of every
example by the run's seed, the step and the example's global position in the batch, so that a run does
not depend on how many ranks share a batch (:class:`sbnnumba.distributed.KeyedNoise`). On the host
these uniforms come from NumPy's ``Philox`` bit generator (``numpy.random.Philox``, i.e. Philox-4x64
with 10 rounds, Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3") with the 128-bit
key ``(k_0, k_1)`` and the 256-bit counter ``i \cdot 2^{192} + w \cdot 2^{128}`` of example ``i``
(``w``: 0 in training, the evaluation sample index in evaluation). Here the same numbers are computed
on the device without state, one thread per uniform:

.. math:: \text{word}_n = \Phi_{k}\big((1 + \lfloor n/4 \rfloor,\; 0,\; w,\; i)\big)_{n \bmod 4},

the ``n``-th 64-bit output of that stream (NumPy increments the counter before its first block, hence
the ``1 +``), and the uniform of unit ``j`` (the units of all stages of one example, concatenated in
stage order) is what ``Generator.random`` makes of it:

* ``float64``: ``u_j = (\text{word}_j \gg 11) \cdot 2^{-53}``;
* ``float32``: the stream is read in 32-bit halves, low half first, ``h_j`` = half ``j mod 2`` of
  ``word_{\lfloor j/2 \rfloor}``, and ``u_j = (h_j \gg 8) \cdot 2^{-24}``.

Why Philox-4x64-10: it is the generator the host keyed streams already use, so the device draws the
same numbers as the host data-parallel step and as a one-process run with the keyed noise (one
stream, not two, to reason about and to test); it is counter-based (any ``(key, example, unit)`` is
computed directly, no state to store or advance); it passes TestU01's BigCrush (Salmon et al.); and
its arithmetic fits 64-bit registers without overflow when the 64 x 64 -> 128-bit product is formed
from 32-bit halves, so the same Python source runs exactly in numba's CUDA simulator (NumPy scalars)
and compiled on a device. A 4x32 variant would be cheaper on a GPU but would not match the host stream.
Cost on a device: about 10 x 2 wide multiplications per 64-bit word, negligible next to a layer's GEMM.

:func:`keyed_uniforms` (device) and :func:`keyed_uniforms_host` (NumPy, vectorized; the reference of
the tests, themselves checked against ``numpy.random.Philox``) compute the same array bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import device as cb

_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
_S32, _S11, _S8, _ONE, _TWO, _FOUR = _U64(32), _U64(11), _U64(8), _U64(1), _U64(2), _U64(4)
_M0, _M1 = _U64(0xD2E7470EE14C6C93), _U64(0xCA5A826395121157)  # Philox-4x64 multipliers
_W0, _W1 = _U64(0x9E3779B97F4A7C15), _U64(0xBB67AE8584CAA73B)  # Weyl key increments
_C0, _C1 = _U64(2 ** 64 - 0x9E3779B97F4A7C15), _U64(2 ** 64 - 0xBB67AE8584CAA73B)  # k + W wraps when k >= C
_ROUNDS = 10
_INV53, _INV24 = 2.0 ** -53, 2.0 ** -24


# -- the device functions (also plain Python on NumPy scalars: what the simulator runs) --------------

@cuda.jit(device=True)
def _mulhilo(a, b):
    """High and low 64-bit words of the 128-bit product ``a b`` (uint64), from 32-bit halves: no
    intermediate exceeds 64 bits, so no wrap-around (exact under NumPy scalars, as on the device)."""
    a0, a1, b0, b1 = a & _MASK32, a >> _S32, b & _MASK32, b >> _S32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> _S32) + (p01 & _MASK32) + (p10 & _MASK32)  # < 3 * 2^32
    hi = p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)  # < 2^64: the product is < 2^128
    lo = ((mid & _MASK32) << _S32) | (p00 & _MASK32)
    return hi, lo


@cuda.jit(device=True)
def _bump(k, w, c):
    """``(k + w) mod 2^64`` without an overflowing addition (``c = 2^64 - w``)."""
    return k - c if k >= c else k + w


@cuda.jit(device=True)
def philox4x64(c0, c1, c2, c3, k0, k1):
    """Philox-4x64-10 of the counter ``(c0, c1, c2, c3)`` under the key ``(k0, k1)`` (uint64 words,
    least significant first); returns the four output words (NumPy's ``Philox`` block order)."""
    for r in range(_ROUNDS):
        if r > 0:
            k0, k1 = _bump(k0, _W0, _C0), _bump(k1, _W1, _C1)
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@cuda.jit(device=True)
def keyed_word(k0, k1, example, word2, n):
    """The ``n``-th 64-bit output of the stream of ``example`` (counter ``example 2^192 + word2 2^128``)."""
    o0, o1, o2, o3 = philox4x64(_ONE + n // _FOUR, _U64(0), word2, example, k0, k1)
    m = n % _FOUR
    return o0 if m == _U64(0) else (o1 if m == _ONE else (o2 if m == _TWO else o3))


@cuda.jit(device=True)
def keyed_uniform(k0, k1, example, word2, unit, single):
    """Uniform in [0, 1) of ``unit`` of ``example`` (see the module docstring); ``single``: the float32
    rule (24 bits), else the float64 rule (53 bits). Returned as a float64 (exact in float32 when
    ``single``)."""
    if single:
        word = keyed_word(k0, k1, example, word2, unit // _TWO)
        half = (word >> _S32) if unit % _TWO == _ONE else (word & _MASK32)
        return float(half >> _S8) * _INV24
    return float(keyed_word(k0, k1, example, word2, unit) >> _S11) * _INV53


@cuda.jit
def keyed_uniforms_kernel(k0, k1, lo, word2, offset, single, out):
    """``out[b, j]`` = uniform of unit ``offset + j`` of example ``lo + b``; 1-D launch over ``out.size``
    (``out``: (B, n), float32 or float64)."""
    idx = cuda.grid(1)
    n = out.shape[1]
    if idx < out.shape[0] * n:
        b, j = idx // n, idx % n
        out[b, j] = keyed_uniform(k0, k1, lo + _U64(b), word2, offset + _U64(j), single)


# -- host wrappers -----------------------------------------------------------------------------------

def _key_words(key):
    key = int(key)
    if not 0 <= key < 2 ** 128:
        raise ValueError(f"key: expected an integer in [0, 2^128), got {key!r}")
    return _U64(key & (2 ** 64 - 1)), _U64(key >> 64)


def _check(shape, dtype, lo, offset, word2):
    dtype = np.dtype(dtype)
    if dtype not in cb.FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    for name, value in (("lo", lo), ("offset", offset), ("word2", word2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    shape = tuple(int(n) for n in shape)
    if len(shape) < 1 or min(shape) < 0:
        raise ValueError(f"shape: expected (B, ...) with non-negative sizes, got {shape}")
    return shape, dtype


def keyed_uniforms(key, lo, offset, shape, dtype, word2=0):
    """Keyed uniforms drawn on the device (nothing crosses but the scalars).

    Parameters
    ----------
    key : int
        The stream's 128-bit Philox key (e.g. ``SeedSequence(seed, salt, step)``'s 128 bits,
        :class:`sbnnumba.distributed.KeyedNoise`).
    lo : int
        Global position of the first example (row ``b`` is example ``lo + b``).
    offset : int
        Index of the first unit of this array in the example's concatenated draws (the sizes of the
        stages before it).
    shape : tuple of int
        ``(B, ...)``: ``B`` examples of ``prod(...)`` units each.
    dtype : float32 or float64
        Selects the rule (24 or 53 random bits) and the result's dtype.
    word2 : int, optional
        Counter word 2 (the evaluation sample index; 0 in training).

    Returns
    -------
    device array of ``shape``
        ``u[b, ...]`` flat index ``j``: the uniform of unit ``offset + j`` of example ``lo + b``, in [0, 1).
    """
    from . import layer_ops
    shape, dtype = _check(shape, dtype, lo, offset, word2)
    k0, k1 = _key_words(key)
    out = layer_ops.empty(shape, dtype)
    flat = out.reshape(shape[0], int(np.prod(shape[1:])))
    layer_ops.launch(keyed_uniforms_kernel, out.size, k0, k1, _U64(lo), _U64(word2), _U64(offset),
                     dtype == np.float32, flat)
    return out


def _mulhilo_host(a, b):
    """:func:`_mulhilo` on uint64 arrays (same 32-bit-halves arithmetic)."""
    a0, a1, b0, b1 = a & _MASK32, a >> _S32, b & _MASK32, b >> _S32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> _S32) + (p01 & _MASK32) + (p10 & _MASK32)
    return p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32), ((mid & _MASK32) << _S32) | (p00 & _MASK32)


def keyed_uniforms_host(key, lo, offset, shape, dtype, word2=0):
    """:func:`keyed_uniforms` on the host, vectorized in NumPy (the same numbers, bit for bit).

    Parameters
    ----------
    key, lo, offset, shape, dtype, word2
        As for :func:`keyed_uniforms`.

    Returns
    -------
    ndarray of ``shape``, dtype ``dtype``
    """
    shape, dtype = _check(shape, dtype, lo, offset, word2)
    k0, k1 = (int(w) for w in _key_words(key))
    n_units = int(np.prod(shape[1:]))
    units = np.uint64(offset) + np.arange(n_units, dtype=np.uint64)
    single = dtype == np.float32
    words = units // _TWO if single else units
    c0 = np.broadcast_to(_ONE + words // _FOUR, (shape[0], n_units)).copy()
    c1 = np.zeros_like(c0)
    c2 = np.full_like(c0, word2)
    c3 = np.broadcast_to((np.uint64(lo) + np.arange(shape[0], dtype=np.uint64))[:, None], c0.shape).copy()
    for r in range(_ROUNDS):
        if r > 0:  # Python ints: the key bump is an exact modular addition
            k0, k1 = (k0 + int(_W0)) % 2 ** 64, (k1 + int(_W1)) % 2 ** 64
        hi0, lo0 = _mulhilo_host(_M0, c0)
        hi1, lo1 = _mulhilo_host(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ _U64(k0), lo1, hi0 ^ c3 ^ _U64(k1), lo0
    word = np.choose((words % _FOUR).astype(np.intp), [c0, c1, c2, c3])
    if single:
        half = np.where(units % _TWO == _ONE, word >> _S32, word & _MASK32)
        u = (half >> _S8).astype(np.float64) * _INV24
    else:
        u = (word >> _S11).astype(np.float64) * _INV53
    return u.astype(dtype).reshape(shape)


__all__ = ["philox4x64", "keyed_word", "keyed_uniform", "keyed_uniforms_kernel", "keyed_uniforms",
           "keyed_uniforms_host"]
