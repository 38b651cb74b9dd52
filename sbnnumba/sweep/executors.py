"""Where a sweep's runs execute: any :class:`concurrent.futures.Executor`, and the local default.

The library never imports an executor package: a Dask cluster (``Client(...).get_executor()``), an
``mpi4py.futures.MPIPoolExecutor`` or anything else implementing ``submit`` is passed in by the caller
(STUMPY's model for its Dask and Ray variants). Without one, :func:`local_executor` starts a pool of
processes on this machine whose ``workers x threads`` never exceeds the cores (:func:`plan_workers`):
on a 2-core machine two single-threaded workers, because small networks gain little from a second
thread inside one step but fully from a second run in parallel.

Threads are set inside each task (:func:`limited_threads`): ``numba.set_num_threads`` for the Numba
kernels (a per-thread setting in Numba, so it is set in the thread that runs the task) and
``threadpoolctl.threadpool_limits`` for BLAS. The pool uses the ``spawn`` start method: a forked child
of a process whose Numba and OpenMP thread pools already ran is not safe, and spawned workers load the
kernels from the Numba cache the sweep warmed before fanning out.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os

__all__ = ["usable_cores", "plan_workers", "local_executor", "limited_threads", "SerialExecutor"]


def usable_cores():
    """Cores this process may run on (its CPU affinity where the OS reports it, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan_workers(workers=None, n_tasks=None, cores=None):
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


def local_executor(workers):
    """A process pool of ``workers`` processes (``spawn`` start method) for a sweep on this machine."""
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


@contextlib.contextmanager
def limited_threads(threads):
    """Within the block, Numba kernels and BLAS use at most ``threads`` threads (None: leave them).

    ``numba.set_num_threads`` applies to the calling thread; the BLAS limit is process-wide. Both are
    restored on exit.
    """
    if threads is None:
        yield
        return
    import numba
    from threadpoolctl import threadpool_limits

    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(before)


class SerialExecutor(cf.Executor):
    """An executor that runs every submitted call at once, in the calling thread.

    The reference ("serial path") against which parallel runs are compared, and a way to debug a
    sweep's runs in one process. ``submit`` returns an already completed future (a raised exception
    is stored in it, as in a pool).
    """

    def __init__(self):
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` now; return a completed :class:`concurrent.futures.Future`."""
        if self._shutdown:
            raise RuntimeError("SerialExecutor: cannot submit after shutdown")
        future = cf.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # stored in the future, as a pool does; KeyboardInterrupt goes through
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True
