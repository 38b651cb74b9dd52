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

The helpers block on a queue between calls (no spinning) and are started on first use. One call uses
the pool at a time; a call made while another thread's call holds it runs its blocks in its own thread
(same blocks, same results). After ``fork`` the child starts with an empty pool (the parent's threads do
not exist there).
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable


class _Job:
    """One call's blocks: a shared counter hands out block indices; the last block to finish sets ``done``."""

    def __init__(self, fn: Callable[[int], object], n_blocks: int):
        self.fn = fn
        self.n_blocks = n_blocks
        self._next = itertools.count()  # next() is one C call: atomic under the GIL
        self._finished = 0
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        """Take and run blocks until none is left."""
        while True:
            i = next(self._next)
            if i >= self.n_blocks:
                return
            try:
                if self.error is None:  # after a failure the remaining blocks are only counted off
                    self.fn(i)
            except BaseException as exc:  # re-raised in the calling thread by run_blocks
                self.error = exc
            with self._lock:
                self._finished += 1
                if self._finished == self.n_blocks:
                    self.done.set()


class BlockPool:
    """Helper threads for :func:`run_blocks` (one process-wide instance, :data:`POOL`)."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._busy = threading.Lock()  # held by the call that uses the helpers
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._helpers = 0

    def _serve(self) -> None:
        while True:
            self._jobs.get().work()

    def _ensure_helpers(self, n: int) -> None:
        while self._helpers < n:
            threading.Thread(target=self._serve, name=f"sbnnumba-blocks-{self._helpers}", daemon=True).start()
            self._helpers += 1

    def run(self, fn: Callable[[int], object], n_blocks: int, threads: int) -> None:
        """See :func:`run_blocks`."""
        helpers = min(int(threads), n_blocks) - 1
        if helpers <= 0 or not self._busy.acquire(blocking=False):
            for i in range(n_blocks):
                fn(i)
            return
        try:
            self._ensure_helpers(helpers)
            job = _Job(fn, n_blocks)
            for _ in range(helpers):
                self._jobs.put(job)
            job.work()
            job.done.wait()
        finally:
            self._busy.release()
        if job.error is not None:
            raise job.error


#: The process-wide pool.
POOL = BlockPool()
if hasattr(os, "register_at_fork"):  # the child of a fork has none of the parent's helper threads
    os.register_at_fork(after_in_child=POOL._reset)


def run_blocks(fn: Callable[[int], object], n_blocks: int, threads: int) -> None:
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

    Raises
    ------
    BaseException
        The first exception a block raised (the blocks after it are skipped), in the calling thread.
    """
    POOL.run(fn, int(n_blocks), threads)
