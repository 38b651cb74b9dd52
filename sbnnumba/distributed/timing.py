"""Where a data-parallel step spends its time: a communicator wrapper that clocks the collectives.

``TimingCommunicator(comm)`` behaves like ``comm`` and adds up the wall-clock seconds spent in the
gradient ``Allreduce`` (:meth:`allreduce_sum_`) and in the small batch-norm reductions
(:meth:`allreduce_sum`). The time includes waiting for the slowest rank to arrive, so it is the
communication *plus imbalance* share of a step: what more ranks cannot remove by computing faster.
"""
from __future__ import annotations

import time

from .comm import Communicator


class TimingCommunicator(Communicator):
    """``comm`` with clocks on its reductions.

    Parameters
    ----------
    comm : Communicator
        The communicator whose collectives are clocked.

    Attributes
    ----------
    gradient_seconds, statistics_seconds : float
        Accumulated time in gradient Allreduces and in batch-norm statistic reductions.
    gradient_calls, statistics_calls : int
    """

    def __init__(self, comm):
        if not isinstance(comm, Communicator):
            raise TypeError(f"comm: expected a sbnnumba.distributed.Communicator, got {type(comm).__name__}")
        self.inner = comm
        self.rank, self.size, self.local_rank = comm.rank, comm.size, comm.local_rank
        self.reset()

    def reset(self):
        """Zero the clocks."""
        self.gradient_seconds = self.statistics_seconds = 0.0
        self.gradient_calls = self.statistics_calls = 0

    @property
    def seconds(self):
        return self.gradient_seconds + self.statistics_seconds

    def allreduce_sum_(self, buf):
        t = time.perf_counter()
        out = self.inner.allreduce_sum_(buf)
        self.gradient_seconds += time.perf_counter() - t
        self.gradient_calls += 1
        return out

    def allreduce_sum(self, values):
        t = time.perf_counter()
        out = self.inner.allreduce_sum(values)
        self.statistics_seconds += time.perf_counter() - t
        self.statistics_calls += 1
        return out

    def bcast_(self, buf, root=0):
        return self.inner.bcast_(buf, root)

    def bcast_object(self, obj, root=0):
        return self.inner.bcast_object(obj, root)

    def allgather_object(self, obj):
        return self.inner.allgather_object(obj)

    def barrier(self):
        self.inner.barrier()

    def abort(self, code=1):
        self.inner.abort(code)

    def __repr__(self):
        return f"TimingCommunicator({self.inner!r})"
