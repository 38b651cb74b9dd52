"""Which GPU each rank uses: rank ``r`` takes local GPU ``local_rank mod (GPUs on its node)``.

``local_rank`` is the rank's index among the ranks on its own machine
(:attr:`~sbnnumba.distributed.Communicator.local_rank`, from ``MPI_COMM_TYPE_SHARED``), so with as many
ranks per node as GPUs each rank has a GPU of its own, and with more ranks than GPUs they share
round-robin.
"""
from __future__ import annotations

from ..backends import get_backend
from ..validation import check_int


def gpu_for_rank(local_rank, n_gpus):
    """Index of the GPU for a rank: ``local_rank mod n_gpus``.

    Parameters
    ----------
    local_rank : int
        The rank's index among the ranks on its node (>= 0).
    n_gpus : int
        GPUs visible on the node (>= 1).

    Returns
    -------
    int
        ``local_rank mod n_gpus``, in ``[0, n_gpus)``.
    """
    local_rank = check_int(local_rank, "local_rank", 0)
    return local_rank % check_int(n_gpus, "n_gpus", 1)  # n_gpus >= 1: at least one visible GPU


def select_gpu(comm):
    """Make this rank's CUDA context use its GPU (:func:`gpu_for_rank`).

    Call before any CUDA work (before building a ``backend="cuda"`` network).

    Parameters
    ----------
    comm : Communicator
        Its ``local_rank`` picks the GPU.

    Returns
    -------
    int
        The GPU index selected.
    """
    return select_device(comm, "cuda")


def select_device(comm, backend):
    """Give this rank its device for the kernel ``backend``.

    Parameters
    ----------
    comm : Communicator
        Its ``local_rank`` picks the device.
    backend : str, Backend or None
        A backend name, a Backend, or None (``$SBNNUMBA_BACKEND``, else ``cpu``).

    Returns
    -------
    int or None
        Device :func:`gpu_for_rank` of the devices the backend sees
        (:meth:`~sbnnumba.backends.Backend.device_count`; ``cuda``: the node's GPUs), selected; None for
        the backends that compute on the host.
    """
    backend = get_backend(backend)
    if not backend.device_resident:
        return None
    index = gpu_for_rank(comm.local_rank, backend.device_count())
    backend.select_device(index)
    return index
