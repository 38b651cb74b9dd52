r"""Run the independent blocks of one call on a few threads that take the next block as they come free.

:func:`run_blocks` ``(fn, n_blocks, threads)`` calls ``fn(0), ..., fn(n_blocks - 1)``: the calling
thread and up to ``threads - 1`` helper threads of a process-wide pool each take the next block not yet
taken (one shared counter) until none is left, and the call returns when every block has finished.
The blocks are fixed by the caller (a function of the problem, not of ``threads``), so what each block
computes, and therefore the result, does not depend on how many threads ran them or on which.

Why not a static split (OpenMP's ``schedule(static)``, OpenBLAS's row/column partition, where thread
``t`` of ``T`` gets the ``t``-th share): when another process keeps one core busy, the thread that
shares that core runs at about half speed (or waits a scheduler slice to run at all), and a static
split waits for its share, so two threads take as long as one or longer. Here the thread on the free
core takes more blocks and the late one fewer: ``T = 2`` with one core busy finishes in about 2/3 of
the one-thread time plus at most one block of the slow thread, and a helper that wakes after the other
threads have taken every block takes none (the call does not wait for it). Measured figures:
``docs/performance.md`` (section "Threads").

Where the helper wakes decides whether it can help. A sleeping thread woken while no core is idle is
placed by Linux on the waking thread's core (its wake-affine rule): with one core kept busy by another
process, the dense ST step's helper woke on the calling thread's core in most of its products, where
the two only take turns, so the blocks cost more than one call (each packs the unsplit operand again,
plus the switches). A
call given ``alone`` (one call doing every block, :func:`run_blocks`) therefore has a helper that finds
itself on the calling thread's core (``sched_getcpu``) take no block, unless more tasks are runnable
than cores plus one (then the core is shared with other processes and a second thread gets a larger
share of it); after such a call the next :data:`ALONE_CALLS` calls run ``alone()`` on the calling
thread. The last of them also wakes a helper that only looks at where it woke (a probe, run while the calling
thread computes ``alone()``): found off the calling thread's core (or with the cores oversubscribed), the next
call tries the helpers again, else another window of calls runs alone. Each window without a helper's help is
twice as long as the one before, up to :data:`ALONE_CALLS_MAX`; a call whose blocks a helper shared starts over at
:data:`ALONE_CALLS`. The probe costs a wake-up and a few microseconds of Python beside the calling thread, where
trying the blocks costs what they lose to one call; the windows' growth makes the probes rarer while the other
core stays busy (measurements: ``docs/performance.md``, section "Threads").

The helpers block on a queue between calls (no spinning) and are started on first use. One call uses
the pool at a time; a call made while another thread's call holds it runs its blocks in its own thread
(same blocks, same results). After ``fork`` the child starts with an empty pool (the parent's threads do
not exist there).
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import os
import queue
import threading
from collections.abc import Callable


@functools.lru_cache(maxsize=None)
def _sched_getcpu() -> Callable[[], int] | None:
    """The C library's ``sched_getcpu``, or None where there is none (not glibc or not Linux)."""
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    return fn if fn() >= 0 else None


def current_cpu() -> int:
    """The core the calling thread runs on now (``sched_getcpu``, about 0.3 us), or -1 where it cannot be told.

    Returns
    -------
    int
    """
    fn = _sched_getcpu()
    return fn() if fn is not None else -1


def cores_oversubscribed() -> bool:
    """Whether more tasks are runnable on the machine than it has cores plus one (the calling thread's helper):
    ``/proc/loadavg``'s fourth field (Linux, about 15 us); False where it cannot be told.

    Returns
    -------
    bool
    """
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return False
    return running > (os.cpu_count() or 1) + 1


class _Job:
    """One call's blocks: a shared counter hands out block indices; the last block to finish sets ``done``."""

    def __init__(self, fn: Callable[[int], object], n_blocks: int, stay_out_beside: int = -1):
        self.fn = fn
        self.n_blocks = n_blocks
        self._next = itertools.count()  # next() is one C call: atomic under the GIL
        self._finished = 0
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.stay_out_beside = stay_out_beside  # the calling thread's core (-1: none known, helpers always work)
        self.caller = threading.get_ident()
        self.stayed_out = False  # a helper woke on that core and took no block
        self.helped = False  # a helper took a block

    def work(self) -> None:
        """Take and run blocks until none is left (the calling thread and the helpers). A helper that wakes on
        ``stay_out_beside``, the calling thread's core, takes none: Linux places a woken thread there when no core
        is idle, and the two then take turns instead of running at once, unless more tasks are runnable than there
        are cores plus this one (the core is shared with another process, and two threads get a larger share)."""
        if self.stay_out_beside >= 0 and threading.get_ident() != self.caller \
                and current_cpu() == self.stay_out_beside and not cores_oversubscribed():
            self.stayed_out = True
            return
        while True:
            i = next(self._next)
            if i >= self.n_blocks:
                return
            if threading.get_ident() != self.caller:
                self.helped = True
            try:
                if self.error is None:  # after a failure the remaining blocks are only counted off
                    self.fn(i)
            except BaseException as exc:  # re-raised in the calling thread by run_blocks
                self.error = exc
            with self._lock:
                self._finished += 1
                if self._finished == self.n_blocks:
                    self.done.set()


class _Probe:
    """A helper's look at where it woke, for a call that runs ``alone()`` (see :meth:`BlockPool.run`): found off the
    calling thread's core, or with more tasks runnable than cores plus one, the pool's next call with ``alone``
    tries its helpers again (``_alone_left = 0``)."""

    def __init__(self, pool: "BlockPool", caller_cpu: int):
        self.pool = pool
        self.caller_cpu = caller_cpu
        self.done = threading.Event()  # set after the look (tests wait on it)

    def work(self) -> None:
        if current_cpu() != self.caller_cpu or cores_oversubscribed():
            self.pool._alone_left = 0
        self.done.set()


class BlockPool:
    """Helper threads for :func:`run_blocks` (one process-wide instance, :data:`POOL`)."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._busy = threading.Lock()  # held by the call that uses the helpers
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._helpers = 0
        self._alone_left = 0  # calls with ``alone`` still to run on the calling thread alone
        self._alone_window = ALONE_CALLS  # length of the next run of calls alone (doubles while the helpers stay out)
        self._probe: _Probe | None = None  # the last probe posted (see run)

    def _serve(self) -> None:
        while True:
            self._jobs.get().work()

    def _ensure_helpers(self, n: int) -> None:
        while self._helpers < n:
            threading.Thread(target=self._serve, name=f"sbnnumba-blocks-{self._helpers}", daemon=True).start()
            self._helpers += 1

    def run(self, fn: Callable[[int], object], n_blocks: int, threads: int,
            alone: Callable[[], object] | None = None) -> None:
        """See :func:`run_blocks`."""
        helpers = min(int(threads), n_blocks) - 1
        if helpers > 0 and alone is not None and self.take_alone_turn():
            alone()
            return
        if helpers <= 0 or not self._busy.acquire(blocking=False):
            if alone is not None:
                alone()
            else:
                for i in range(n_blocks):
                    fn(i)
            return
        try:
            self._ensure_helpers(helpers)
            job = _Job(fn, n_blocks, current_cpu() if alone is not None else -1)
            for _ in range(helpers):
                self._jobs.put(job)
            job.work()
            job.done.wait()
        finally:
            self._busy.release()
        if job.helped and job.stay_out_beside >= 0:  # a helper woke beside the calling thread and took blocks again
            self._alone_window = ALONE_CALLS  # (helpers of calls without ``alone`` take blocks wherever they wake)
        elif job.stayed_out:  # the helpers could not run beside the calling thread
            self._start_alone_window()
        if job.error is not None:
            raise job.error

    def take_alone_turn(self) -> bool:
        """See :func:`take_alone_turn`."""
        if self._alone_left <= 0:
            return False
        self._alone_left -= 1
        if self._alone_left == 0:  # the last call alone: a helper looks at where it wakes meanwhile
            self._post_probe()
        return True

    def _start_alone_window(self) -> None:
        """The next ``_alone_window`` calls with ``alone`` run alone; each further window without a helper's help is
        twice as long, up to :data:`ALONE_CALLS_MAX` (a call with ``alone`` whose blocks a helper shared resets it to
        :data:`ALONE_CALLS`)."""
        self._alone_left = self._alone_window
        self._alone_window = min(2 * self._alone_window, ALONE_CALLS_MAX)

    def _post_probe(self) -> None:
        """Wake one helper to look at where it woke (:class:`_Probe`) while the calling thread runs ``alone()``.
        Until the probe reports a core the helper could help from, the next window of calls runs alone too (set
        first, so that a probe still queued or looking leaves the calling thread alone)."""
        self._start_alone_window()
        if not self._busy.acquire(blocking=False):  # another thread's call has the helpers: look another time
            return
        try:
            self._ensure_helpers(1)
            self._probe = _Probe(self, current_cpu())
            self._jobs.put(self._probe)
        finally:
            self._busy.release()


#: Calls of :func:`run_blocks` given ``alone`` that run on the calling thread alone after such a call in which a
#: helper stayed out (it woke on the calling thread's core) and none took a block; during the last of them a
#: helper is woken to look at where it wakes, and the helpers are tried again only if it woke on another core
#: (or the cores are oversubscribed). Each further window without a helper's help is twice as long, up to
#: :data:`ALONE_CALLS_MAX`.
ALONE_CALLS = 32
#: Longest window of calls alone: at 1024 the pool notices a core freed again within about 200 dense PSA steps (5
#: such calls a step) or 34 conv PSA steps of the paper's network (30 such calls a step); meanwhile only the short
#: calls run on one thread. The paired measurements behind it: ``docs/performance.md``, section "Threads".
ALONE_CALLS_MAX = 1024


#: The process-wide pool.
POOL = BlockPool()
if hasattr(os, "register_at_fork"):  # the child of a fork has none of the parent's helper threads
    os.register_at_fork(after_in_child=POOL._reset)


def take_alone_turn() -> bool:
    """Whether a call with an ``alone`` form, about to run on more than one thread, runs ``alone()`` on the calling
    thread instead (the rule of :func:`run_blocks`: one of the window of calls after a helper stayed out),
    counting the call as one of them when it does (the last one posts the probe).

    :func:`run_blocks` asks it itself; a caller whose blocks cost something to set up and whose one-call form has
    the blocks' bits (:func:`sbnnumba.runtime.run_range_blocks`, element-wise passes) asks first, and runs that form
    without them.

    Returns
    -------
    bool
    """
    return POOL.take_alone_turn()


def run_blocks(fn: Callable[[int], object], n_blocks: int, threads: int,
               alone: Callable[[], object] | None = None) -> None:
    r"""Call ``fn(i)`` for ``i = 0, ..., n_blocks - 1`` on at most ``threads`` threads (this one included),
    each taking the next block as it comes free.

    Parameters
    ----------
    fn : callable int -> object
        Computes block ``i`` (its return value is ignored); blocks must be independent (write disjoint
        outputs) and release the GIL for their heavy part (NumPy's BLAS calls, ``nogil`` Numba kernels),
        or the threads take turns instead of running at once.
    n_blocks : int
        Number of blocks.
    threads : int
        Threads to use, ``>= 1``; ``min(threads, n_blocks)`` are used.
    alone : callable or None
        ``alone()`` computes every block on the calling thread, with the blocks' result bit for bit (e.g. the
        blocks one after the other, without the pool's bookkeeping); used when the call runs on the calling
        thread alone (one thread, the helpers serving another call, or the rule below).
        Given, a helper that wakes on the calling thread's core takes no block unless the machine has more
        runnable tasks than cores plus one, and after a call in which a helper stayed out and none took a
        block the next :data:`ALONE_CALLS` such calls run ``alone()``; the last of them wakes a helper only to
        look at where it wakes, and the helpers are tried again once one wakes on another core (each further
        window alone twice as long, up to :data:`ALONE_CALLS_MAX`, until a helper takes a block again).
        With one core kept busy by another process, Linux wakes a helper on the calling thread's core in
        most calls (no core is idle; measured 92-96 % of the dense ST step's products), where the two only take
        turns and the blocks cost more than one call. None: the blocks always, as described above.

    Raises
    ------
    BaseException
        The first exception a block raised (the blocks after it are skipped), in the calling thread.
    """
    POOL.run(fn, int(n_blocks), threads, alone)
