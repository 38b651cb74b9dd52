"""Communicators: the collective operations data-parallel training needs, behind one interface.

:class:`Communicator` declares them; :class:`MPICommunicator` runs them over MPI (mpi4py, imported
only when one is built, so the library works without MPI); :class:`LocalCommunicator` is the
one-process case (every collective is the identity), which lets a single process run exactly the
distributed code path (the reference the tests compare N ranks against).

All array collectives work in place on one contiguous buffer: one ``Allreduce`` per training step
moves the whole gradient (latency is paid once, not once per parameter tensor).
"""
from __future__ import annotations

import os
import socket
import sys
from abc import ABC, abstractmethod

import numpy as np

INSTALL_HINT = ("install the optional extra: pip install 'sbnnumba[mpi]' (mpi4py and MPICH from the package "
                "index), or on a cluster pip install mpi4py built against the site's MPI, then launch with "
                "mpiexec -n N python -m sbnnumba train --distributed ...")


class MPIUnavailable(ImportError):
    """mpi4py (or the MPI library under it) cannot be imported."""


def require_mpi():
    """Import mpi4py's MPI module.

    Returns
    -------
    module
        ``mpi4py.MPI``.

    Raises
    ------
    MPIUnavailable
        When mpi4py or its MPI library cannot be imported; the message says how to install them.
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:  # mpi4py missing, or its MPI shared library missing
        raise MPIUnavailable(f"distributed training needs mpi4py and an MPI library ({exc}); {INSTALL_HINT}") from exc
    return MPI


def _contiguous(buf, name):
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(buf).__name__}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError(f"{name}: expected a writeable C-contiguous array (collectives work in place)")
    return buf


class Communicator(ABC):
    """The group of processes training one model together.

    Attributes
    ----------
    rank : int
        This process's index in ``[0, size)``; rank 0 writes files and shows progress.
    size : int
        Number of processes ``N``.
    local_rank : int
        Index among the processes on the same machine (maps ranks to GPUs).
    """

    rank: int
    size: int
    local_rank: int

    @abstractmethod
    def allreduce_sum_(self, buf):
        """In place: ``buf <- sum over ranks of buf`` (same shape and dtype on every rank). Returns ``buf``."""

    @abstractmethod
    def bcast_(self, buf, root=0):
        """In place: every rank's ``buf`` gets rank ``root``'s values. Returns ``buf``."""

    @abstractmethod
    def bcast_object(self, obj, root=0):
        """Rank ``root``'s picklable ``obj``, returned on every rank."""

    @abstractmethod
    def allgather_object(self, obj):
        """List of every rank's picklable ``obj``, indexed by rank."""

    @abstractmethod
    def barrier(self):
        """Wait until every rank gets here."""

    @abstractmethod
    def abort(self, code=1):
        """End every process of the job with exit status ``code`` (does not return)."""

    def allreduce_sum(self, values):
        """Sum of ``values`` (an array) over ranks, as a new float array (batch-norm statistics)."""
        return self.allreduce_sum_(np.array(values, order="C"))

    @property
    def is_root(self):
        return self.rank == 0

    def describe(self):
        """``"rank r pid p on host"`` of every rank, one string (printed once so that an MPI launcher's
        report of a dead process id can be read as a rank)."""
        table = self.allgather_object((os.getpid(), socket.gethostname()))
        return ", ".join(f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(table))


class LocalCommunicator(Communicator):
    """A single process: ``rank = 0``, ``size = 1``; every collective is the identity."""

    rank, size, local_rank = 0, 1, 0

    def allreduce_sum_(self, buf):
        return _contiguous(buf, "buf")

    def bcast_(self, buf, root=0):
        return _contiguous(buf, "buf")

    def bcast_object(self, obj, root=0):
        return obj

    def allgather_object(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.stderr.flush()
        os._exit(code)

    def __repr__(self):
        return "LocalCommunicator()"


class MPICommunicator(Communicator):
    """Collectives over an MPI communicator (default ``MPI.COMM_WORLD``).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
    """

    def __init__(self, comm=None):
        mpi = require_mpi()
        self._mpi = mpi
        self.comm = mpi.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        node.Free()

    def allreduce_sum_(self, buf):
        self.comm.Allreduce(self._mpi.IN_PLACE, _contiguous(buf, "buf"), op=self._mpi.SUM)
        return buf

    def bcast_(self, buf, root=0):
        self.comm.Bcast(_contiguous(buf, "buf"), root=root)
        return buf

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def __repr__(self):
        return f"MPICommunicator(rank={self.rank}, size={self.size})"


def world():
    """The communicator of the job this process was launched in.

    Returns
    -------
    MPICommunicator
        Over ``MPI.COMM_WORLD`` (also under ``mpiexec -n 1`` or without a launcher: one rank).

    Raises
    ------
    MPIUnavailable
        When mpi4py cannot be imported (the message says how to install it).
    """
    return MPICommunicator()
