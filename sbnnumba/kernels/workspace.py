"""Scratch arrays that a kernel's host code reuses from one call to the next (per thread).

A large temporary allocated afresh on every call costs page faults: glibc serves an allocation above its mmap
threshold (at least 128 KiB, adapted up to 32 MiB) with a fresh ``mmap`` and returns it on ``free`` whenever the
freed memory at the top of the heap passes the trim threshold, and the kernel then zeroes every page on first
touch (:func:`sbnnumba.runtime.retain_freed_memory` avoids it process-wide, but the library does not apply that
itself): the dense ratio flip's ``k = e^{2 W^T}`` is 4 MiB for a 1024 x 1024 layer, a conv flip call's factor
grids and input layout tens of MB on the paper's first stages (the page faults they cost: ``docs/performance.md``).

:func:`scratch` keeps one buffer per name and thread, grown to the largest request: layers of different shapes
share it, since no scratch array outlives the call that asked for it.
"""
import math
import threading

import numpy as np

_SCRATCH = threading.local()  # per Python thread: {name: (uint8 buffer, offset of its first aligned byte,
#                               the last request's array)}


def scratch(name, shape, dtype, align=64):
    """A reused, uninitialized, ``align``-byte aligned C-ordered array for a temporary that does not outlive one call.

    Parameters
    ----------
    name : str
        Which buffer (one per distinct temporary of a call: two arrays live at the same time need two names).
    shape : tuple of int
    dtype : numpy dtype
    align : int
        Byte alignment of the data (64: the kernels' vector loads start on cache lines).

    Returns
    -------
    ndarray of ``shape`` and ``dtype``
        Contents undefined; overwritten by the calling thread's next request of the same ``name``, so a caller must
        not return it or hold it across calls (nor change its shape in place: a request with the shape and dtype of
        the name's last one returns that same array object). Other threads get their own buffers.
    """
    pool = _SCRATCH.__dict__.setdefault("pool", {})
    held = pool.get(name)
    # the last request's array again: three NumPy views fewer, about a microsecond. In a training step it serves the
    # requests repeated within a call (the conv input gradient's chunks: 138 of 174 requests in three PSA and ST steps
    # of a conv and a dense net); the conv flip's buffers, asked by each stage for its own shapes, hit it only where
    # two stages in a row have the same ones (6 of 105; a cache per shape gained nothing measurable, session 31)
    if held is not None and held[2].shape == shape and held[2].dtype == dtype:
        return held[2]
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    if held is None or held[0].size < n + align:  # the offset is found once per buffer (a microsecond a call)
        raw = np.empty(n + align, dtype=np.uint8)
        held = (raw, _aligned_offset(raw, align), None)
    raw, start, _ = held
    view = raw[start:start + n].view(dtype).reshape(shape)
    pool[name] = (raw, start, view)
    return view


def spread_row_length(n, itemsize, line=64):
    """A row length for a 2-D scratch array whose rows do not share cache sets: at least ``n`` entries, a whole odd
    number of ``line``-byte cache lines.

    A set-associative cache maps an address to a set by its bits just above the line offset, so rows ``s`` bytes
    apart with ``s`` a multiple of 4 KiB (1024 float32 entries) all map to one set of a 64-set L1 and of a few sets of
    L2: a transpose that writes or a kernel that reads several such rows at once evicts its own lines (measured:
    docs/experiments/2026-12-07-session28-zen4.md). With an odd number of lines per row, consecutive rows start in
    different sets and cycle through all of them before two rows meet in one set.

    Parameters
    ----------
    n : int
        Entries a row needs (the arrays' logical column count).
    itemsize : int
        Bytes per entry (``line`` a multiple of it).
    line : int
        Cache line bytes.

    Returns
    -------
    int
        The padded row length, ``>= n``; a caller reads and writes only the first ``n`` entries of each row and fills
        the rest with a harmless value if a whole-array pass reads them.
    """
    per_line = line // itemsize
    lines = -(-max(n, 1) // per_line)
    return (lines + 1 - lines % 2) * per_line


def aligned_empty(shape, dtype, align=64):
    """A new uninitialized C-ordered array whose data starts on an ``align``-byte boundary (NumPy guarantees 16).

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype
    align : int

    Returns
    -------
    ndarray of ``shape`` and ``dtype``, contents undefined.
    """
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    raw = np.empty(n + align, dtype=np.uint8)
    start = _aligned_offset(raw, align)
    return raw[start:start + n].view(dtype).reshape(shape)


def _aligned_offset(raw, align):
    """Bytes from the start of ``raw``'s data to its first ``align``-byte boundary."""
    return -raw.__array_interface__["data"][0] % align
