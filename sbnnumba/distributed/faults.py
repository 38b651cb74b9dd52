"""Ending the whole job when one rank fails, instead of leaving the others waiting forever.

A rank that raises would leave its peers blocked in the next collective (a hang until the job's
wall-clock limit). :func:`fail_fast` turns an exception escaping its block into a message naming the
rank and the cause on stderr, then ``MPI_Abort``, which makes the launcher end every rank. Errors
that every rank raises together (a diverged run: the non-finite gradient is the reduced one, seen by
all) pass through unchanged. A rank killed by a signal (out of memory, ``kill -9``) cannot report
itself: the MPI launcher ends the job and names its process id; :func:`announce_ranks` prints the
rank of every process id at start so that report can be read. Checkpoints are written atomically by
rank 0 at the end of an epoch, so an abort at any moment leaves the last one intact.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback


def failure_message(comm, exc):
    """The line printed when a rank fails.

    Parameters
    ----------
    comm : Communicator
    exc : BaseException
        What the rank raised.

    Returns
    -------
    str
        ``"sbnnumba: rank r of N (pid p on host) failed: Type: message; ending the job (MPI_Abort)"``.
    """
    return (f"sbnnumba: rank {comm.rank} of {comm.size} (pid {os.getpid()} on {socket.gethostname()}) failed: "
            f"{type(exc).__name__}: {exc}; ending the job (MPI_Abort)")


#: Seconds between printing the failure and aborting, for the launcher to forward the message.
ABORT_GRACE_SECONDS = 1.0


@contextlib.contextmanager
def fail_fast(comm, collective=()):
    """Abort the whole job (all ranks) when an exception escapes the block on any one rank.

    Parameters
    ----------
    comm : Communicator
    collective : tuple of exception types
        Raised by every rank at the same point (e.g. ``TrainingDiverged``): re-raised, not aborted.

    Yields
    ------
    Communicator
        ``comm``.

    Notes
    -----
    With a single rank nothing is aborted: the exception propagates as usual.
    """
    try:
        yield comm
    except collective:
        raise
    except BaseException as exc:
        if comm.size == 1 or isinstance(exc, (GeneratorExit,)):
            raise
        traceback.print_exc(file=sys.stderr)
        print(failure_message(comm, exc), file=sys.stderr, flush=True)
        # MPI_Abort makes the launcher kill every rank at once; on a busy machine it could do so before it
        # had forwarded this rank's last stderr lines, and the job would end without naming the cause.
        time.sleep(ABORT_GRACE_SECONDS)
        comm.abort(1)
        raise  # abort does not return; kept for communicators whose abort is a no-op in tests


def announce_ranks(comm, stream=None):
    """On rank 0, print which process id and host each rank is (collective: every rank must call it).

    Parameters
    ----------
    comm : Communicator
    stream : file-like, optional
        Where rank 0 prints the line (default ``sys.stderr``).
    """
    table = comm.describe()
    if comm.is_root:
        print(f"sbnnumba distributed: {comm.size} ranks: {table}", file=stream or sys.stderr, flush=True)
