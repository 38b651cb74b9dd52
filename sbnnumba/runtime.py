"""Process-wide runtime settings for long training and evaluation jobs.

:func:`retain_freed_memory` keeps the memory of freed large arrays inside the process. By default glibc
serves every allocation above ``M_MMAP_THRESHOLD`` (at most 32 MiB) with a fresh ``mmap`` and returns it
with ``munmap`` when freed. A training step allocates several such arrays (the im2col patch matrix of
the half-width conv SBN's second stage is ``64 * 28 * 28 * 432 * 4`` bytes = 87 MB per step, 677 MB per
evaluation chunk of 500 images), so each step the kernel maps and zeroes hundreds of megabytes of new
pages. With mmap disabled and heap trimming raised, freed blocks stay in the heap and the next step
reuses them (``bench/runtime_memory.py`` measures both; figures in ``docs/performance.md``). Values are
unchanged: only where arrays live changes.

The cost is that the process's resident memory does not shrink after a peak (it stays near the largest
working set), which is why the library does
not apply it on import: the command line (``python -m sbnnumba``) and the training benchmarks call it;
call it yourself at the start of a training script. It applies to glibc only (Linux); elsewhere it does
nothing and says so. Settings given in the environment (``MALLOC_MMAP_MAX_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) win.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1  # mallopt takes an int: trim only when more than 2 GiB are free at the heap's top
#: Environment variables through which the user sets glibc's malloc; any of them makes
#: :func:`retain_freed_memory` leave the allocator alone (benchmarks and tests drop them for a clean start).
MALLOC_ENV_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library if it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def retain_freed_memory() -> str:
    """Keep freed memory in the process's heap instead of returning it to the system.

    Sets glibc's ``M_MMAP_MAX = 0`` (no allocation is served by its own ``mmap``) and
    ``M_TRIM_THRESHOLD = 2^31 - 1`` (the heap is trimmed only when over 2 GiB are free at its top), so
    that the large temporaries of consecutive training steps reuse the same, already mapped pages.

    Returns
    -------
    str
        What happened: ``"applied"``, ``"environment"`` (a malloc setting in the environment was left to
        take effect) or ``"unsupported"`` (not glibc, or ``mallopt`` refused).
    """
    if any(os.environ.get(name) for name in MALLOC_ENV_SETTINGS):
        return "environment"
    libc = _glibc()
    if libc is None:
        return "unsupported"
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1 and ok
    return "applied" if ok else "unsupported"


def set_num_threads(n: int) -> None:
    """Set the number of threads of both Numba's parallel kernels and the BLAS library.

    A training step alternates Numba kernels (sampling, PSA flip propagation, packed products) and BLAS
    calls (the affine maps): setting one pool alone leaves the other oversubscribing the cores. This is
    the one documented place to set both.

    Parameters
    ----------
    n : int
        Threads, ``1 <= n <= numba.config.NUMBA_NUM_THREADS`` (Numba's pool is sized at start-up: set the
        environment variable ``NUMBA_NUM_THREADS`` before importing to allow more).

    Notes
    -----
    Numba's setting applies to the calling thread (and is inherited by nothing else); BLAS's applies to the
    whole process (through ``threadpoolctl``). Call it from the thread that trains.
    """
    import numba
    from threadpoolctl import threadpool_limits

    limit = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set from the environment at import
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if not 1 <= n <= limit:
        raise ValueError(f"n: expected an int in [1, {limit}] (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """The number of threads Numba's kernels use in the calling thread (see :func:`set_num_threads`).

    Returns
    -------
    int
    """
    import numba

    return numba.get_num_threads()


@contextlib.contextmanager
def limited_threads(threads: int | None) -> Iterator[None]:
    """Within the block, Numba kernels and BLAS use at most ``threads`` threads (None: leave them).

    Set through :func:`set_num_threads` (Numba for the calling thread, BLAS for the process), capped at
    Numba's pool size; both are restored on exit. Tasks on an executor's workers (sweep runs, gradient
    study blocks, learning-rate trials) run inside it, so that workers x threads stays within the cores.

    Parameters
    ----------
    threads : int or None
        Upper bound on the threads of both pools; None changes nothing.

    Yields
    ------
    None
    """
    if threads is None:
        yield
        return
    import numba
    from threadpoolctl import threadpool_limits

    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    before = numba.get_num_threads()
    with threadpool_limits(limits=threads, user_api="blas"):  # restores the BLAS setting on exit
        set_num_threads(threads)
        try:
            yield
        finally:
            numba.set_num_threads(before)
