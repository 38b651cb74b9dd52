"""Where a sweep's runs execute: any :class:`concurrent.futures.Executor`, and the local default.

The library never imports an executor package: a Dask cluster (``Client(...).get_executor()``), an
``mpi4py.futures.MPIPoolExecutor`` or anything else implementing ``submit`` is passed in by the caller
(STUMPY's model for its Dask and Ray variants). Without one, :func:`local_executor` starts a pool of
processes on this machine whose ``workers x threads`` never exceeds the cores (:func:`plan_workers`):
on a 2-core machine two single-threaded workers, because small networks gain little from a second
thread inside one step but fully from a second run in parallel.

Threads are set inside each task (:func:`sbnnumba.runtime.limited_threads`, through
:func:`sbnnumba.runtime.set_num_threads`): Numba's setting is per thread, so it is made in the thread
that runs the task; BLAS's through ``threadpoolctl``.

How workers start: with the ``forkserver`` start method where the platform has it (Linux, macOS),
``spawn`` elsewhere. The fork server is a fresh interpreter started once per sweeping process that
imports the modules a run needs (:data:`WORKER_MODULES`: the library, tqdm, threadpoolctl), initializes
Numba's CPU target (:mod:`sbnnumba.sweep.worker_start`) and then only forks: each worker begins as a
copy of it with everything imported, so a worker (or a replacement for one that died) is ready in
milliseconds instead of the second a ``spawn`` worker spends starting Python and importing NumPy, SciPy
and Numba, and its first run does not spend 0.2 s initializing Numba. Forking that server is safe where
forking the sweeping process is not: it has run no Numba or OpenMP thread pool (a forked child of a
process whose pools ran can hang). Workers load the kernels from the Numba cache the sweep warmed
before fanning out. (So a script that starts a local sweep needs the usual ``if __name__ ==
"__main__":`` guard.)

Why not one ``ProcessPoolExecutor(max_workers=n)``: when one of its processes dies, the whole pool is
"broken" and every other running task is lost with it. :class:`LocalPool` keeps one single-process
pool per worker slot and replaces a broken slot, so a killed worker loses only the task it ran.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import multiprocessing
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

__all__ = ["usable_cores", "plan_workers", "local_executor", "SerialExecutor", "LocalPool", "WORKER_MODULES",
           "worker_context"]

#: Modules a sweep run imports (``fit`` imports tqdm and threadpoolctl when it first needs them), imported
#: once by the fork server so that every worker starts with them loaded; ``worker_start`` initializes
#: Numba's CPU target there.
WORKER_MODULES = ("sbnnumba.sweep.task", "sbnnumba.sweep.worker_start", "tqdm.auto", "threadpoolctl")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else ``os.cpu_count()``).

    Returns
    -------
    int
        At least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan_workers(workers: int | None = None, n_tasks: int | None = None,
                 cores: int | None = None) -> tuple[int, int]:
    """Workers and threads per worker for the local pool: ``workers * threads <= cores``.

    Parameters
    ----------
    workers : int, optional
        Requested processes; default ``min(cores, n_tasks)``. More than ``cores`` is an error.
    n_tasks : int, optional
        Runs to do; never more workers than runs (``n_tasks = 0`` is planned as one).
    cores : int, optional
        Default :func:`usable_cores`.

    Returns
    -------
    (workers, threads) : tuple of int
        ``threads = cores // workers`` (at least 1).
    """
    cores = usable_cores() if cores is None else int(cores)
    if workers is None:
        workers = cores
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    if workers > cores:
        raise ValueError(f"workers: expected at most {cores} (the cores of this machine, so that workers x threads "
                         f"never exceeds them), got {workers}")
    if n_tasks is not None:
        workers = max(1, min(workers, int(n_tasks)))
    return workers, max(1, cores // workers)


def local_executor(workers: int) -> LocalPool:
    """A :class:`LocalPool` for a sweep on this machine.

    Parameters
    ----------
    workers : int >= 1
        Worker processes.

    Returns
    -------
    LocalPool
        Not started yet (:meth:`LocalPool.start` starts its processes).
    """
    return LocalPool(workers)


def worker_context() -> multiprocessing.context.BaseContext:
    """The :mod:`multiprocessing` context local workers start from (see the module docstring).

    Returns
    -------
    multiprocessing.context.BaseContext
        ``forkserver`` with :data:`WORKER_MODULES` preloaded where the platform offers it, else ``spawn``.
        The preload list is set before the server's first start; a server this process started earlier
        for another purpose keeps its own list (its workers then import the modules themselves).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_MODULES))
    return context


def _import_library():
    """A worker's first task from :meth:`LocalPool.start`: import what every sweep run needs. Returns the
    names of :data:`WORKER_MODULES` that were already imported (all of them under a fork server that
    preloaded them)."""
    import importlib
    import sys
    loaded = [name for name in WORKER_MODULES if name in sys.modules]
    for name in WORKER_MODULES:
        importlib.import_module(name)
    return loaded


_TASK_RUNNING = False  # in a worker process: whether a task of the pool is running (Ctrl-C interrupts it)


def _on_sigint(signum, frame):
    """A worker's SIGINT handler: Ctrl-C (sent by the terminal to the whole process group) interrupts the task
    running, whose KeyboardInterrupt goes back to the pool's caller as its result; an idle worker ignores it
    (the caller shuts the pool down), instead of dying with a traceback on the terminal."""
    if _TASK_RUNNING:
        raise KeyboardInterrupt


def _worker_init():
    """Initializer of a :class:`LocalPool` worker process."""
    signal.signal(signal.SIGINT, _on_sigint)


def _run_task(fn, /, *args, **kwargs):
    """A task of :class:`LocalPool` in its worker: ``fn(*args, **kwargs)``, interruptible by Ctrl-C."""
    global _TASK_RUNNING
    _TASK_RUNNING = True
    try:
        return fn(*args, **kwargs)
    finally:
        _TASK_RUNNING = False


class LocalPool(cf.Executor):
    """A process pool in which the death of one worker loses only the task it was running.

    ``workers`` slots, each a one-process :class:`concurrent.futures.ProcessPoolExecutor` (started from
    :func:`worker_context`) running one task at a time; queued tasks go to the first free slot in
    submission order. When a slot's process dies, its task's future gets the
    :class:`~concurrent.futures.process.BrokenProcessPool` error, the slot is replaced by a fresh process
    and the queue goes on. Ctrl-C interrupts the running tasks (their futures get the ``KeyboardInterrupt``)
    and leaves idle workers alone: the calling process handles it and shuts the pool down, and no worker
    prints a traceback.

    Parameters
    ----------
    workers : int >= 1
    """

    def __init__(self, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
        self._context = worker_context()
        self._slots: list[cf.ProcessPoolExecutor | None] = [None] * workers  # created when first needed
        self._busy = [False] * workers
        self._queue: collections.deque[tuple[cf.Future, Callable[..., Any], tuple, dict]] = collections.deque()
        self._lock = threading.RLock()
        self._shutdown = False

    def start(self) -> None:
        """Start every worker process now; each imports the library, so that its start-up (seconds: NumPy,
        Numba, SciPy) overlaps what the caller does next (the sweep's Numba warm-up) instead of the first runs."""
        with self._lock:
            for i, pool in enumerate(self._slots):
                if pool is None:
                    pool = self._slots[i] = self._new_slot()
                    pool.submit(_import_library)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Queue ``fn(*args, **kwargs)`` for the first free worker.

        Parameters
        ----------
        fn : callable
            A picklable callable (a module-level function); it runs in a worker process.
        *args, **kwargs
            Its arguments (picklable).

        Returns
        -------
        concurrent.futures.Future
            Its result, or the exception it raised; ``BrokenProcessPool`` when its worker died.

        Raises
        ------
        RuntimeError
            After :meth:`shutdown`.
        """
        future: cf.Future = cf.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("LocalPool: cannot submit after shutdown")
            self._queue.append((future, fn, args, kwargs))
            self._dispatch()
        return future

    def _new_slot(self):
        return cf.ProcessPoolExecutor(max_workers=1, mp_context=self._context, initializer=_worker_init)

    def _dispatch(self):
        """Hand queued tasks to free slots (called with the lock held)."""
        for i in range(len(self._slots)):
            while not self._busy[i] and self._queue:
                future, fn, args, kwargs = self._queue.popleft()
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                if self._slots[i] is None:
                    self._slots[i] = self._new_slot()
                self._busy[i] = True
                inner = self._slots[i].submit(_run_task, fn, *args, **kwargs)
                inner.add_done_callback(functools.partial(self._finished, i, future))

    def _finished(self, slot, future, inner):
        exc = inner.exception()
        with self._lock:
            self._busy[slot] = False
            if isinstance(exc, BrokenProcessPool):  # its process died: replace it
                self._slots[slot].shutdown(wait=False)
                self._slots[slot] = None
            if not self._shutdown:
                self._dispatch()
        if exc is None:
            future.set_result(inner.result())
        else:
            future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks and end the worker processes.

        Parameters
        ----------
        wait : bool
            Wait for the running tasks and the processes to end.
        cancel_futures : bool
            Cancel the queued tasks (those not running yet).
        """
        with self._lock:
            self._shutdown = True
            while cancel_futures and self._queue:
                self._queue.popleft()[0].cancel()
            pools = [p for p in self._slots if p is not None]
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class SerialExecutor(cf.Executor):
    """An executor that runs every submitted call at once, in the calling thread.

    The reference ("serial path") against which parallel runs are compared, and a way to debug a
    sweep's runs in one process. ``submit`` returns an already completed future (a raised exception
    is stored in it, as in a pool).
    """

    def __init__(self) -> None:
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` now, in the calling thread.

        Parameters
        ----------
        fn : callable
        *args, **kwargs
            Its arguments.

        Returns
        -------
        concurrent.futures.Future
            Already completed: the result, or the ``Exception`` raised (``KeyboardInterrupt`` propagates).

        Raises
        ------
        RuntimeError
            After :meth:`shutdown`.
        """
        if self._shutdown:
            raise RuntimeError("SerialExecutor: cannot submit after shutdown")
        future: cf.Future = cf.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # stored in the future, as a pool does; KeyboardInterrupt goes through
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse further submissions (nothing runs in the background, so there is nothing to wait for).

        Parameters
        ----------
        wait, cancel_futures : bool
            Accepted for the :class:`concurrent.futures.Executor` interface; without effect.
        """
        self._shutdown = True
