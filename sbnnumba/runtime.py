r"""Process-wide runtime settings for long training and evaluation jobs.

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

**Threads.** :func:`set_num_threads` sets one count ``T`` for both pools, Numba's kernels and BLAS.
``import sbnnumba`` sets ``OMP_WAIT_POLICY=PASSIVE`` and ``OPENBLAS_THREAD_TIMEOUT=4`` (when it comes
before NumPy), so idle workers of either pool sleep instead of spinning against the other pool's
workers. Numba's OpenMP layer splits a ``prange`` loop statically (each thread an equal share, even with
``numba.parallel_chunksize``), so a kernel call with a thread on a core that another process keeps busy
lasts about as long as one thread doing it all, plus the wait for that thread to be scheduled (up to a
scheduler slice, milliseconds): a gain on large calls at worst, a loss on small ones. The per-call rule,
:func:`call_threads`, therefore gives a call

.. math::

    T_{call} = \max(1, \min(T, \lfloor work / w_{min} \rfloor))

threads, ``work`` its elementary operations (connections of a flip propagation, elements of an element-wise pass
such as sampling or an optimizer update, multiply-adds ``m n k`` of a GEMM) and ``w_min`` =
:data:`MIN_WORK_PER_THREAD`, set per kind of work to what one core does in about 0.1-0.7 ms (2^20 connections of a
flip kernel; 2^18 elements of a pass with one ``exp`` each, of an optimizer update or of a transposing copy; 2^20
entries of a plain copy such as im2col / col2im; 2^16 entries of a noise CDF; 2^22 multiply-adds of a float32 GEMM,
16 times OpenBLAS's own threshold): a call runs on a second thread only when that thread gets about as much work as
the time a late thread can cost. The measurements behind each ``w_min`` are in ``docs/performance.md``, section
"Threads". The flip kernels and the convolution step's copies apply it to their Numba ``prange`` calls
(:func:`kernel_threads`), the sampling, density and optimizer passes to their blocks (:func:`run_range_blocks`: the
threads take the next block as they come free, so a thread on a busy core holds up one block at most), NumPy's
element-wise passes of the flip propagations (``exp``, ``tanh``) and SciPy's of the Rao-Blackwell head (the noise's
CDF) to theirs (:func:`blockwise`); their results do not depend on the thread count.

**Matrix products** (:func:`gemm`, every product of the layers' training step) are not left to BLAS's own
threads: OpenBLAS's threaded GEMM splits a product statically and synchronizes its threads several times
inside one call, each wait costing a scheduler slice when a core is shared (with one core kept busy by another
process a product can take several times longer at two threads than at one). :func:`gemm` instead cuts a
product into the blocks of :func:`gemm_blocks` (rows or columns of the result, at least ``w_min``
multiply-adds each, at most :data:`MAX_GEMM_BLOCKS`; a function of the shape only), runs each as one
single-threaded BLAS call, and lets ``T`` threads take the next block as they come free
(:mod:`sbnnumba.blockpool`): the thread on the free core takes the busy core's share. At ``T = 1``, and at
``T > 1`` for a product of a few ms (:func:`short_call`) while the block pool finds its helper woken on the calling
thread's core (:func:`sbnnumba.blockpool.run_blocks` with ``alone``: with one core kept busy Linux puts the woken
helper there in most calls, where the two threads only take turns), the calling thread computes the same blocks
one after the other. A product that has blocks is never one BLAS call: a single-threaded BLAS call need not give a
block's entries the bits of the same entries of the whole product (OpenBLAS's Haswell kernel, the one it runs on
AMD Zen 3, rounds the last rows or columns of a call by another path than its other tiles), so only the fixed
blocks keep the layers' products, and with them seeded training runs, bit-identical at any thread count and from
run to run (``tests/test_thread_rule.py``, ``tests/test_threads.py``), where a plain ``a @ b`` is not.
Figures: ``docs/performance.md``, section "Threads".
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator

import numpy as np

from .blockpool import run_blocks, take_alone_turn

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


def compile_target() -> tuple[str, str]:
    """The CPU Numba compiles the kernels for: its ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` or the host's.

    It decides the vector width LLVM uses (256 bits on Intel's AVX-512 server targets such as ``emeraldrapids``, 512
    on ``znver4``), hence the speed of the kernels and the bits of those whose arithmetic depends on the lanes (the
    dense ratio flip's reciprocal estimate); benchmark figures and stored digests are comparable only for the same one.

    Returns
    -------
    name : str
        LLVM's CPU name, e.g. ``"znver4"``.
    features : str
        LLVM's feature string, e.g. ``"+avx512f,+fma,..."``.
    """
    import llvmlite.binding as ll
    import numba

    config = numba.config  # CPU_NAME / CPU_FEATURES: set from the environment at import (None when unset)
    return (config.CPU_NAME or ll.get_host_cpu_name(),  # type: ignore[attr-defined]
            config.CPU_FEATURES or ll.get_host_cpu_features().flatten())  # type: ignore[attr-defined]


#: Work per thread below which a call gets fewer threads (:func:`call_threads`): flip-propagation connections
#: ("numba"), elements of an element-wise pass with a transcendental function each ("elementwise"), entries of an
#: optimizer update ("update": memory-bound, about 0.7 ns an entry of Adam, in blocks that threads take as they
#: come free), entries written by a copy or a sum of a few terms each ("copy": im2col, col2im, layout changes; about
#: 0.3 ns an entry), entries written by a transposing copy ("transpose": the weights' transposes of the flip kernels,
#: 0.8-1.7 ns an entry from L3, reads across rows), entries of a noise CDF ("cdf": SciPy's scalar expit / ndtr or a
#: few NumPy passes, 5-8 ns an entry) and GEMM multiply-adds ("gemm"). Measurements: ``docs/performance.md``, section
#: "Threads".
MIN_WORK_PER_THREAD = {"numba": 1 << 20, "elementwise": 1 << 18, "update": 1 << 18, "copy": 1 << 20,
                       "transpose": 1 << 18, "cdf": 1 << 16, "gemm": 1 << 22}


def call_threads(work, kind, threads):
    """Threads for one call of ``work`` elementary operations: ``max(1, min(threads, work // w_min))``.

    Parameters
    ----------
    work : int
        Connections (``kind="numba"``), elements (``kind="elementwise"``), parameter entries (``kind="update"``),
        entries written (``kind="copy"``) or multiply-adds ``m n k`` (``kind="gemm"``) of the call.
    kind : {"numba", "elementwise", "update", "copy", "gemm"}
        Key of :data:`MIN_WORK_PER_THREAD` (``w_min``).
    threads : int
        The threads the caller may use (``T`` of the module docstring).

    Returns
    -------
    int
    """
    if kind not in MIN_WORK_PER_THREAD:
        raise ValueError(f"kind: expected one of {tuple(MIN_WORK_PER_THREAD)}, got {kind!r}")
    return max(1, min(int(threads), int(work) // MIN_WORK_PER_THREAD[kind]))


class kernel_threads:  # noqa: N801 (a context manager used as a function: ``with kernel_threads(work):``)
    """Numba kernels called within the block run on :func:`call_threads` ``(work, kind, T)`` threads, ``T``
    the calling thread's current count (restored on exit; Numba's setting is per thread, so this is cheap
    and affects no other thread), or on one thread when the call is below ``PRANGE_ALONE_MAX_SHARES[kind]``
    ``w_min`` (:data:`PRANGE_ALONE_MAX_SHARES`) and the block pool runs its calls alone
    (:func:`sbnnumba.blockpool.take_alone_turn`: its helper woke on the calling thread's core, as any sleeping
    thread does while another process keeps the other core busy). Under ``NUMBA_DISABLE_JIT=1`` it does
    nothing: reading the count starts Numba's thread pool, and a process that forks (tests/fault_worker.py) must
    not have one. ``with kernel_threads(work) as threads:`` gives the count the block's kernels run on (1 under
    ``NUMBA_DISABLE_JIT=1``), for a kernel that orders its tasks by it.

    Parameters
    ----------
    work : int
        Connections (``kind="numba"``), elements (``kind="elementwise"``), parameter entries
        (``kind="update"``) or entries written (``kind="copy"``) of the block's kernels.
    kind : {"numba", "elementwise", "update", "copy"}
        Key of :data:`MIN_WORK_PER_THREAD`.

    Notes
    -----
    A class rather than a generator-based context manager: a conv flip propagation enters four of them, and the
    generator's frame and wrapper cost about 1 us more per use.
    """

    __slots__ = ("_work", "_kind", "_before")

    def __init__(self, work, kind="numba"):
        self._work, self._kind, self._before = work, kind, None

    def __enter__(self):
        import numba

        if numba.config.DISABLE_JIT:  # kernels run as Python; reading the count would start the thread pool
            return 1
        before = numba.get_num_threads()
        # a static split waits for the late thread's whole share: while the block pool finds its helpers woken on the
        # calling thread's core (one core busy elsewhere), a call below PRANGE_ALONE_MAX_SHARES w_min runs alone
        work, kind = self._work, self._kind
        wanted = 1 if _one_call(work, kind, before, PRANGE_ALONE_MAX_SHARES.get(kind, 0)) else \
            call_threads(work, kind, before)
        if wanted != before:
            numba.set_num_threads(wanted)
            self._before = before
        return wanted

    def __exit__(self, *exc_info):
        if self._before is not None:
            import numba

            numba.set_num_threads(self._before)
            self._before = None
        return False


#: A call of less than ``ALONE_MAX_SHARES * w_min`` work (:data:`MIN_WORK_PER_THREAD`; a few ms on one core) is
#: :func:`short_call`.
ALONE_MAX_SHARES = 64
#: The same bound, per kind, for a Numba ``prange`` kernel (:func:`kernel_threads`), whose static split waits for the
#: late thread's whole share where the block pool's callers take it over; kinds not listed never run alone. Flip
#: propagation ("numba"): 256 shares, 2^28 connections, about 25 ms on one core, between the dense flip of 2^27
#: connections (no faster at two threads with a core kept busy) and the conv network's flip stages of 2^29 and more
#: (faster). The conv step's ``col2im`` ("elementwise") gains at two threads in every call and is not listed. The flip
#: kernels' weight transposes ("transpose", 0.3-2 ms a call) take :data:`ALONE_MAX_SHARES`, the bound of the pool's
#: own short calls. Measurements: ``docs/performance.md``, section "Threads".
PRANGE_ALONE_MAX_SHARES = {"numba": 256, "transpose": ALONE_MAX_SHARES}


def short_call(work, kind, shares=ALONE_MAX_SHARES):
    r"""Whether a call of ``work`` (unit of ``kind``) is short enough that a helper thread woken on the calling
    thread's core should stay out of it: ``work < shares * w_min``.

    With one core kept busy by another process, Linux wakes the block pool's helper on the calling thread's core in
    most calls (no core is idle), where the two only take turns; within a few milliseconds its load balancer moves
    one of them to the other core, so a long call gains from the helper and a short one (a few milliseconds) does
    not (measurements: ``docs/performance.md``, section "Threads"). Short calls therefore give
    :func:`sbnnumba.blockpool.run_blocks` their one-call form (``alone``).

    Parameters
    ----------
    work : int
    kind : str
        Key of :data:`MIN_WORK_PER_THREAD`.
    shares : int
        :data:`ALONE_MAX_SHARES` for calls split into blocks that threads take as they come free,
        ``PRANGE_ALONE_MAX_SHARES[kind]`` for a static split.

    Returns
    -------
    bool
    """
    return work < shares * MIN_WORK_PER_THREAD[kind]


#: Most blocks :func:`run_range_blocks` cuts a call into (enough for a thread on a free core to take the busy
#: core's share, few enough that the blocks' Python overhead, about 10 us each, stays small).
MAX_RANGE_BLOCKS = 16


def run_range_blocks(fn, n_items, work, kind="copy"):
    r"""Run ``fn(lo, hi)`` over fixed blocks of ``range(n_items)`` on up to :func:`call_threads` ``(work, kind, T)``
    threads that take the next block as they come free (:func:`sbnnumba.blockpool.run_blocks`), ``T`` the calling
    thread's Numba count.

    The blocks are ``c = max(1, min(n_items, MAX_RANGE_BLOCKS, work // w_min))`` near-equal ranges, a function of
    the sizes only: a Numba kernel compiled ``nogil`` without ``parallel`` that computes each item alone gives
    the same result at any thread count, and with a busy core the thread on the free core takes more blocks
    (a ``prange`` splits statically and waits for the late thread's share). ``fn(0, n_items)``, one call over the
    whole range (the same result), is the call's ``alone`` form (:func:`sbnnumba.blockpool.run_blocks`): it runs
    when the helper thread woke on the calling thread's core, where the two could only take turns.

    Parameters
    ----------
    fn : callable
        ``fn(lo, hi)`` computes items ``lo, ..., hi - 1``.
    n_items : int
    work : int
        The call's work in the unit of ``kind`` (:data:`MIN_WORK_PER_THREAD`).
    kind : str
        Key of :data:`MIN_WORK_PER_THREAD`.

    Returns
    -------
    None
    """
    import numba

    # no thread pool under DISABLE_JIT (kernel_threads); call_threads also checks ``kind``
    threads = call_threads(work, kind, 1 if numba.config.DISABLE_JIT else numba.get_num_threads())
    short = short_call(work, kind)
    # a short call is one call on one thread or in the pool's turns alone (not _one_call: a long call keeps its blocks
    # on one thread too, the same results); the one-call form needs no blocks set up
    if short and (threads == 1 or take_alone_turn()):
        fn(0, n_items)
        return
    n_blocks = max(1, min(n_items, MAX_RANGE_BLOCKS, int(work) // MIN_WORK_PER_THREAD[kind]))
    edges = [(i * n_items) // n_blocks for i in range(n_blocks + 1)]
    run_blocks(lambda i: fn(edges[i], edges[i + 1]), n_blocks, threads,
               alone=(lambda: fn(0, n_items)) if short else None)


def blockwise(fn, *arrays, kind="elementwise"):
    r"""``fn(*blocks)`` on the fixed blocks ``a.reshape(-1)[lo:hi]`` of C-contiguous arrays of one size, run by
    :func:`run_range_blocks` (work = their size, unit of ``kind``): an element-wise pass on up to
    :func:`call_threads` threads. Under ``2 w_min`` entries (one thread at any count) it is one call of ``fn`` on
    the whole flattened arrays.

    For an ``fn`` that computes each entry alone, in place or into another of ``arrays`` (``lambda v: np.exp(v,
    out=v)``), the result is one whole call's bit for bit at any thread count: NumPy's ufuncs, their SIMD ``exp``,
    ``tanh`` and ``log`` included, and SciPy's ``expit`` and ``ndtr`` (``tests/test_elementwise_blocks.py`` compares
    them over blocks, float32 and float64, with one call). NumPy releases the GIL inside its loops, so the blocks
    run in parallel.

    Parameters
    ----------
    fn : callable
        ``fn(*blocks)``, one 1-D view per array, each of entries ``lo, ..., hi - 1``; writes its results into them.
    *arrays : ndarray
        C-contiguous, all of one size (a view of a flattened array is a view, so writes reach the array).
    kind : str
        Key of :data:`MIN_WORK_PER_THREAD`.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If an array is not C-contiguous or the sizes differ.
    """
    if not arrays:
        raise ValueError("arrays: expected at least one array")
    for i, a in enumerate(arrays):
        if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
            raise ValueError(f"arrays[{i}]: expected a C-contiguous ndarray (its blocks are views of it), got "
                             f"{type(a).__name__}" + (" not C-contiguous" if isinstance(a, np.ndarray) else ""))
        if a.size != arrays[0].size:
            raise ValueError(f"arrays[{i}]: expected size {arrays[0].size} (that of arrays[0]), got {a.size}")
    if kind not in MIN_WORK_PER_THREAD:
        raise ValueError(f"kind: expected one of {tuple(MIN_WORK_PER_THREAD)}, got {kind!r}")
    flat = [a.reshape(-1) for a in arrays]
    n = flat[0].size
    if n < 2 * MIN_WORK_PER_THREAD[kind]:  # one thread at any T (call_threads): the one call, without the ~4 us of
        fn(*flat)                          # run_range_blocks' bookkeeping (the 1x1 stages make such calls)
        return
    run_range_blocks(lambda lo, hi: fn(*(v[lo:hi] for v in flat)), n, n, kind)


def _openblas_functions(lib):
    """``(get, set)``: OpenBLAS's own ``openblas_get/set_num_threads`` C functions (with the library's symbol
    prefix and suffix, as threadpoolctl finds them), or None when not found."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            name = f"{prefix}openblas_%s_num_threads{suffix}"
            if hasattr(lib.dynlib, name % "get") and hasattr(lib.dynlib, name % "set"):
                return getattr(lib.dynlib, name % "get"), getattr(lib.dynlib, name % "set")
    return None


@functools.lru_cache(maxsize=None)
def _blas_thread_functions():
    """``(get, set)`` thread-count functions of each loaded BLAS library, found once (threadpoolctl's search
    costs milliseconds). OpenBLAS with its own thread pool gets its C functions (a microsecond a call, against
    tens through threadpoolctl's methods); other libraries threadpoolctl's methods."""
    from threadpoolctl import ThreadpoolController

    out = []
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        direct = _openblas_functions(lib) if lib.internal_api == "openblas" else None
        out.append(direct if direct is not None and lib.threading_layer != "openmp"
                   else (lib.get_num_threads, lib.set_num_threads))
    return tuple(out)


#: Multiple of which the blocks of :func:`gemm` are (but the last): whole micro-kernel tiles of the BLAS.
GEMM_BLOCK_ALIGN = 16
#: Most blocks one :func:`gemm` is split into: enough for a free core to take over a busy core's share,
#: few enough that each block stays a large BLAS call (at one thread the blocks run in sequence: each costs a
#: packing of the shared operand and one edge of the BLAS kernel's tiles; 4 and 8 blocks took the same time at two
#: threads, idle or with a core kept busy, docs/performance.md "Threads").
MAX_GEMM_BLOCKS = 4


def gemm_blocks(m, k, n):
    r"""The fixed split of an ``(m, k) @ (k, n)`` product into blocks of output rows or columns.

    The larger output dimension ``d = max(m, n)`` (rows when ``m >= n``) is cut into
    ``c = min(MAX_GEMM_BLOCKS, floor(m k n / w_min), ceil(d / 16))`` blocks of equal size rounded up to
    :data:`GEMM_BLOCK_ALIGN` (the last one shorter), ``w_min`` = ``MIN_WORK_PER_THREAD["gemm"]``: a block has
    at least ``w_min`` multiply-adds, so a product smaller than ``2 w_min`` is one block. The split depends
    on the shape only, never on the thread count: that is what keeps :func:`gemm`'s bits the same at any
    thread count.

    Parameters
    ----------
    m, k, n : int
        The product's dimensions.

    Returns
    -------
    axis : int
        0 (blocks of rows of ``a`` and of the result) or 1 (columns of ``b`` and of the result).
    edges : list of int
        Block ``i`` is ``edges[i]:edges[i + 1]`` along ``axis``.
    """
    axis, dim = (0, m) if m >= n else (1, n)
    return axis, _block_edges(dim, min(MAX_GEMM_BLOCKS, (m * k * n) // MIN_WORK_PER_THREAD["gemm"],
                                       -(-dim // GEMM_BLOCK_ALIGN)))


def _block_edges(dim, count):
    """``count`` blocks of ``range(dim)`` of equal size rounded up to :data:`GEMM_BLOCK_ALIGN` (the last one
    shorter), as edges; one block when ``count < 2``."""
    if count < 2:
        return [0, dim]
    size = -(-(-(-dim // count)) // GEMM_BLOCK_ALIGN) * GEMM_BLOCK_ALIGN
    return list(range(0, dim, size)) + [dim]


_GEMM_LOCK = threading.Lock()  # the BLAS thread count is process-wide: one gemm lowers it at a time


def gemm(a, b, out=None):
    r"""``a @ b`` (2-D) computed as the blocks of :func:`gemm_blocks`, each one single-threaded BLAS call,
    run on up to ``T`` threads that take the next block as they come free (:func:`sbnnumba.blockpool.run_blocks`).

    ``T`` is the BLAS libraries' current count (:func:`set_num_threads`). BLAS is set to one thread for the
    call and restored after it (a process-wide setting: concurrent calls from several threads take turns).
    Since the blocks depend on the shape alone and every block is one single-threaded BLAS call, whichever
    thread computes it, the result is bit-identical at any ``T`` and in every call; with a busy core, the
    thread on the free core takes the busy one's blocks (OpenBLAS's own threads split a product statically
    and, in the threaded GEMM, synchronize within it, each wait costing a scheduler slice when a core is
    shared: measured, a 128 x 784 x 1024 product 5x slower at two threads than at one, docs/performance.md).
    At ``T = 1`` the blocks run one after the other, never as one call of the whole product (other bits on
    some BLAS kernels: module docstring).

    Parameters
    ----------
    a : ndarray (m, k)
    b : ndarray (k, n)
    out : ndarray (m, n), optional
        Written in place when given.

    Returns
    -------
    ndarray (m, n)
        :math:`a b`.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: expected 2-d operands (m, k) and (k, n), got shapes {a.shape} and {b.shape}")
    blocks = gemm_blocks(a.shape[0], a.shape[1], b.shape[1])
    with _OneBlasThread() as threads:
        if len(blocks[1]) == 2:  # one block: the whole product
            return np.matmul(a, b, out=out)
        return _blocked_matmul(a, b, out, threads, blocks)


def _one_call(work, kind, threads, shares=ALONE_MAX_SHARES):
    """Whether a Numba kernel's call of ``work`` (unit of ``kind``) runs on the calling thread alone at ``threads``
    (T) threads, the rule of :func:`kernel_threads` (``shares``: :data:`PRANGE_ALONE_MAX_SHARES`): one thread by the
    per-call rule (T = 1, or too little work for two), or a call below ``shares * w_min`` (:func:`short_call`) while
    the block pool runs its calls alone (take_alone_turn; a turn is used, so ask once per call). The kernels sum in a
    fixed order at any thread count: one thread or several, the same results."""
    return call_threads(work, kind, threads) == 1 or (short_call(work, kind, shares) and take_alone_turn())


#: Inner dimension (the summed one) from which :func:`gemm_nt` puts the operand with several times more rows first.
GEMM_NT_SWAP_MIN_INNER = 512
#: How many times more rows ``b`` must have than ``a`` for :func:`gemm_nt` to compute ``(b a^T)^T``.
GEMM_NT_SWAP_MIN_ROW_RATIO = 4
#: Rows of ``b`` per block of a swapped product run as blocks, at least, in multiples of ``a``'s rows.
GEMM_NT_BLOCK_ROW_RATIO = 2
#: Fewest blocks a swapped product is cut into (fewer would leave a thread on a busy core a large share).
GEMM_NT_SWAP_MIN_BLOCKS = 4


def gemm_nt(a, b):
    r"""``a @ b.T`` (a weight gradient: the product summed over a long inner dimension) through :func:`gemm`.

    Float32 operands with ``n >= 4 m`` rows and ``k >= 512`` (:data:`GEMM_NT_SWAP_MIN_ROW_RATIO`,
    :data:`GEMM_NT_SWAP_MIN_INNER`) are computed as :math:`(b a^T)^T`: OpenBLAS's float32 kernel is faster with
    the operand of many rows first. Below the bounds the swapped product is slower, and other dtypes keep
    ``a @ b.T``. A product :func:`gemm` would cut into blocks is cut into ``c = min(4, m k n / w_min, floor(n /
    2m))`` blocks of rows of ``b a^T`` (:data:`GEMM_NT_BLOCK_ROW_RATIO`): the gain holds for pieces of ``2 m`` rows,
    not for gemm's pieces of about ``m`` rows; with ``c < 4`` (:data:`GEMM_NT_SWAP_MIN_BLOCKS`, too few blocks to
    share out with a busy core) the product is gemm's blocks of ``a b^T``. The form and the blocks depend on the
    shapes and the dtype alone, never on the thread count, so the bits do not either (whether the swapped product
    has the bits of ``a @ b.T`` depends on the BLAS kernel: OpenBLAS's SkylakeX kernel sums each entry over ``k`` in
    the same order either way, its Haswell kernel does not). Measurements: ``docs/performance.md``, section
    "Threads".

    Parameters
    ----------
    a : ndarray (m, k)
    b : ndarray (n, k)

    Returns
    -------
    ndarray (m, n)
        :math:`a b^T`; when swapped, the transposed (F-ordered) view of the C-contiguous ``(b a^T)``.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"gemm_nt: expected 2-d operands (m, k) and (n, k), got shapes {a.shape} and {b.shape}")
    if not (a.dtype == b.dtype == np.float32 and a.shape[1] >= GEMM_NT_SWAP_MIN_INNER and
            b.shape[0] >= GEMM_NT_SWAP_MIN_ROW_RATIO * a.shape[0]):
        return gemm(a, b.T)
    m, k, n = a.shape[0], a.shape[1], b.shape[0]
    with _OneBlasThread() as threads:
        if m * k * n < 2 * MIN_WORK_PER_THREAD["gemm"]:  # one block (gemm_blocks): the whole swapped product
            return np.matmul(b, a.T).T
        # blocks of rows of b a^T, each of at least 2 m rows (gemm's blocks cut the long side into pieces of about m
        # rows, where the swap gained nothing); too few of them to share out: gemm's blocks of a b^T
        count = min(MAX_GEMM_BLOCKS, (m * k * n) // MIN_WORK_PER_THREAD["gemm"], n // (GEMM_NT_BLOCK_ROW_RATIO * m))
        if count < GEMM_NT_SWAP_MIN_BLOCKS:
            return _blocked_matmul(a, b.T, None, threads)
        return _blocked_matmul(b, a.T, None, threads, (0, _block_edges(n, count))).T


def run_blas_blocks(fn, n_blocks):
    r"""Run ``fn(0), ..., fn(n_blocks - 1)`` on up to ``T`` threads that take the next block as they come free
    (:func:`sbnnumba.blockpool.run_blocks`), BLAS set to one thread meanwhile: :func:`gemm`'s scheme for a
    computation made of independent blocks that each call BLAS (``np.matmul``, never :func:`gemm`, which would
    wait for this call) and Numba kernels compiled ``nogil`` without ``parallel``.

    ``T`` is the BLAS libraries' current count (:func:`set_num_threads`). The caller fixes the blocks (a function
    of the problem, not of ``T``); each block is computed by one thread whatever ``T``, so the result does not
    depend on the thread count, and with a busy core the thread on the free core takes more blocks.

    Parameters
    ----------
    fn : callable
        ``fn(i)`` computes block ``i``.
    n_blocks : int

    Returns
    -------
    None
    """
    with _OneBlasThread() as threads:
        run_blocks(fn, n_blocks, threads)


class _OneBlasThread:
    """``with _OneBlasThread() as T``: BLAS on one thread within the block (restored on exit; one caller at a
    time, the setting being process-wide); ``T`` is the BLAS count before. A class rather than a
    ``contextlib.contextmanager`` generator: every :func:`gemm` enters it, and the generator's machinery cost 1.1 us
    of the 3 us it took (small networks' steps make thousands of products)."""

    __slots__ = ("_functions", "_counts")

    def __enter__(self) -> int:
        self._functions = functions = _blas_thread_functions()
        _GEMM_LOCK.acquire()
        try:
            self._counts = counts = [get() for get, _ in functions]
            for (_, put), count in zip(functions, counts):
                if count > 1:
                    put(1)
        except BaseException:
            _GEMM_LOCK.release()
            raise
        return max(counts, default=1)

    def __exit__(self, *exc_info) -> None:
        try:
            for (_, put), count in zip(self._functions, self._counts):
                if count > 1:
                    put(count)
        finally:
            _GEMM_LOCK.release()


def _blocked_matmul(a, b, out, threads, blocks=None):
    """``a @ b`` into ``out`` (allocated when None) as the blocks ``(axis, edges)`` (by default those of
    :func:`gemm_blocks`) on ``threads`` threads, or the same blocks one after the other on the calling thread where
    :func:`sbnnumba.blockpool.run_blocks` runs the call alone (never one call: other bits, :func:`gemm`)."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    axis, edges = blocks if blocks is not None else gemm_blocks(a.shape[0], a.shape[1], b.shape[1])

    def block(i):
        lo, hi = edges[i], edges[i + 1]
        if axis == 0:
            np.matmul(a[lo:hi], b, out=out[lo:hi])
        else:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

    def in_sequence():
        for i in range(len(edges) - 1):
            block(i)

    if threads == 1:
        in_sequence()
    else:
        run_blocks(block, len(edges) - 1, threads,
                   alone=in_sequence if short_call(a.shape[0] * a.shape[1] * b.shape[1], "gemm") else None)
    return out


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


class CompileTime:
    """The seconds of Numba compilation that :func:`compile_timer` measured (0.0 until its block ends, and when
    nothing was compiled)."""

    seconds: float = 0.0


@contextlib.contextmanager
def compile_timer() -> Iterator[CompileTime]:
    """Measure the seconds Numba spends compiling kernels while the block runs.

    Only compilations count (Numba's ``numba:compile`` event, outermost ones: a kernel compiled inside another's
    compilation is counted once): a kernel loaded from Numba's on-disk cache, or already compiled in this process,
    adds nothing. So on a fresh installation the first training epoch shows how much of its time was one-time
    compilation (the next runs load the kernels from the cache). The event is process-wide: compilations
    triggered by other threads during the block count too.

    Yields
    ------
    CompileTime
        Its ``seconds`` are set when the block ends.
    """
    from numba.core import event

    measured = CompileTime()

    def record(seconds):
        measured.seconds = float(seconds)

    with event.install_timer("numba:compile", record):
        yield measured


def compile_note(seconds: float) -> str:
    """What a timing line adds about the compilation inside it: ``" (S s of it compiling kernels, once: cached for
    later runs)"``, or ``""`` below 0.05 s (a warm cache).

    Parameters
    ----------
    seconds : float
        :func:`compile_timer`'s measurement.

    Returns
    -------
    str
    """
    return f" ({seconds:.1f} s of it compiling kernels, once: cached for later runs)" if seconds >= 0.05 else ""
