"""Scratch arrays that a kernel's host code reuses from one call to the next (per thread).

A large temporary allocated afresh on every call costs page faults: glibc serves an allocation above its mmap
threshold (at least 128 KiB, adapted up to 32 MiB) with a fresh ``mmap`` and returns it on ``free`` whenever the
freed memory at the top of the heap passes the trim threshold, and the kernel then zeroes every page on first
touch. The dense ratio flip's ``k = e^{2 W^T}`` is such an array (4 MiB for a 1024 x 1024 layer, written and
read once per call): measured at one thread, its fresh allocation added 0.4 ms to a 13 ms call
(:func:`sbnnumba.runtime.retain_freed_memory` avoids it process-wide, but the library does not apply that
itself). :func:`scratch` keeps the last few such arrays of each thread, keyed by name, shape and dtype.
"""
import threading

import numpy as np

#: Arrays kept per thread: the oldest is dropped beyond it (a network's layers of distinct shapes each keep one).
MAX_ARRAYS = 8


class _Arrays(threading.local):
    """The calling thread's scratch arrays, oldest first."""

    def __init__(self):
        self.arrays = {}


_ARRAYS = _Arrays()


def scratch(name, shape, dtype):
    """An uninitialized C-contiguous array that the calling thread gets back on its next call with the same key.

    Parameters
    ----------
    name : str
        What the array holds (two uses of the same shape must not share an array while both are live).
    shape : tuple of int
    dtype : numpy dtype

    Returns
    -------
    ndarray ``shape``, ``dtype``
        Its contents are whatever the previous holder left; valid until the thread's next ``scratch(name, shape,
        dtype)`` call (never return it to a caller that keeps it).
    """
    key = (name, tuple(shape), np.dtype(dtype))
    arrays = _ARRAYS.arrays
    array = arrays.pop(key, None)
    if array is None:
        array = np.empty(shape, dtype)
        if len(arrays) >= MAX_ARRAYS:
            del arrays[next(iter(arrays))]
    arrays[key] = array  # most recent last
    return array
