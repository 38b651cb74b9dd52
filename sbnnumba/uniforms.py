r"""Uniforms ``U[0, 1)`` drawn on several threads with the bits of one sequential draw.

A training step draws one uniform per sampled unit (:meth:`sbnnumba.Network.sample`): about ten million per
step of the paper's conv network. NumPy's generators fill an array on the calling thread only. The PCG64 family
can jump ahead (``advance(d)``: the state after ``d`` 64-bit draws, in
``O(log d)``), so :func:`random_uniforms` cuts the array into fixed blocks and lets the threads fill them, each
block by a compiled loop of the generator's recurrence that starts with its own jump-ahead to the block's position
in the stream (:mod:`sbnnumba.kernels.pcg64`, PCG64 and PCG64DXSM), then leaves the caller's generator where the
sequential draw would have left it. Values and
final state are those of ``rng.random(shape, dtype=dtype)`` bit for bit, at any thread count
(``tests/test_uniforms.py``).

Stream positions: a float64 takes one 64-bit draw (its top 53 bits); a float32 takes 32 bits, two per 64-bit draw
(the low half first; the high half is kept in the generator's buffer, ``has_uint32``, for the next float32). So
block boundaries fall on whole draws: a float32 block starts at an even offset, after a buffered half (if any) has
been used for the first value; a float64 draw leaves the buffer as it was (``advance`` empties it: restored).
Other bit generators (MT19937, Philox, SFC64) and other dtypes draw sequentially.
"""
from __future__ import annotations

import numpy as np

from .kernels import pcg64
from .runtime import run_range_blocks

#: Bit generators whose ``advance(d)`` moves the state by exactly ``d`` 64-bit draws.
SPLITTABLE = (np.random.PCG64, np.random.PCG64DXSM)
# Their blocks are filled by a compiled loop (sbnnumba.kernels.pcg64, NumPy's values bit for bit, 1.6-2.2x faster than
# NumPy's fill through the bit generator's function pointers).
_PCG64_FILL = {np.dtype(np.float32): pcg64.fill_float32, np.dtype(np.float64): pcg64.fill_float64}


def random_uniforms(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``rng.random(shape, dtype=dtype)``, filled by fixed blocks on the threads of the thread rule.

    Parameters
    ----------
    rng : numpy.random.Generator
        Advanced as by the sequential draw.
    shape : tuple of int
    dtype : float32 or float64

    Returns
    -------
    ndarray of ``shape`` and ``dtype``
        The values of ``rng.random(shape, dtype=dtype)`` (same bits): blocks of at least
        ``runtime.MIN_WORK_PER_THREAD["elementwise"]`` values per thread (:func:`sbnnumba.runtime.run_range_blocks`);
        ``rng.random`` itself for bit generators outside :data:`SPLITTABLE` and for subclasses of ``Generator``.
    """
    dtype = np.dtype(dtype)
    # a subclass of Generator may draw otherwise (the conformance tools' replaying generator): its own random()
    if type(rng) is not np.random.Generator or type(rng.bit_generator) not in SPLITTABLE or \
            dtype not in (np.float32, np.float64):
        return rng.random(shape, dtype=dtype)
    bit_gen = rng.bit_generator
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    per_draw = 2 if dtype == np.float32 else 1  # values per 64-bit draw
    lead = 0
    if per_draw == 2 and bit_gen.state["has_uint32"] and flat.size:
        flat[:1] = rng.random(1, dtype=dtype)  # the buffered half: the first value, no draw
        lead = 1
    values = flat[lead:]
    start = bit_gen.state  # buffer empty from here on
    n_draws = -(-values.size // per_draw)
    final = {}

    kernel = _PCG64_FILL[dtype]
    dxsm = type(bit_gen) is np.random.PCG64DXSM
    start_128 = pcg64.split_128(start["state"]["state"]) + pcg64.split_128(start["state"]["inc"])

    def fill(lo, hi):
        block = values[lo * per_draw:min(hi * per_draw, values.size)]
        # the kernel skips to the block's start itself (pcg64.advance; a bit generator object per block cost about
        # 25 us, its seed from OS entropy)
        s_hi, s_lo, last = kernel(*start_128, lo, block, dxsm)
        if hi == n_draws:  # NumPy's state after the sequential draw: the start's, stepped (buffer set below)
            state = {**start, "state": {**start["state"], "state": pcg64.join_128(s_hi, s_lo)}}
            if per_draw == 2:  # float32: the last draw's high half is in the buffer (used when the count is even)
                state["has_uint32"], state["uinteger"] = values.size % 2, int(last >> np.uint64(32))
            final["state"] = state

    run_range_blocks(fill, n_draws, values.size, kind="elementwise")
    if n_draws:
        state = final["state"]
        if per_draw == 1:  # advance() empties the half-draw buffer, which float64 draws leave as it was
            state["has_uint32"], state["uinteger"] = start["has_uint32"], start["uinteger"]
        bit_gen.state = state
    return out
