"""Synchronous data-parallel training over MPI (optional extra ``mpi``: mpi4py + MPICH).

``mpiexec -n N python -m sbnnumba train --distributed ...`` or ``fit(..., comm=world())``: every rank
holds the model, takes a contiguous shard of each global batch, and the gradients are summed with one
in-place ``Allreduce`` per step (:class:`DataParallelStep`). The activation noise of each example is
keyed by its global position (:class:`KeyedNoise`), batch normalization takes global statistics, so
the result does not depend on ``N`` beyond the order of float sums. See ``docs/cluster.md``.

mpi4py is imported only by :class:`MPICommunicator` / :func:`world`.
"""
from .comm import INSTALL_HINT, Communicator, LocalCommunicator, MPICommunicator, MPIUnavailable, require_mpi, world
from .device_step import DeviceDataParallelEpochs, DeviceDataParallelStep, DeviceKeyedNoise, device_data_parallel
from .devices import gpu_for_rank, select_device, select_gpu
from .evaluation import reduce_metrics, split_evaluation
from .faults import announce_ranks, fail_fast, failure_message
from .replicas import ReplicaMismatch, broadcast_state, check_replicas, digests
from .sharding import shard_bounds
from .step import DataParallelStep, GradientBuffer, synchronized_batch_norm
from .streams import KeyedNoise
from .timing import TimingCommunicator
from .trainer import DistributedTrainer

__all__ = ["Communicator", "LocalCommunicator", "MPICommunicator", "MPIUnavailable", "INSTALL_HINT", "require_mpi",
           "world", "gpu_for_rank", "select_device", "select_gpu", "reduce_metrics", "split_evaluation",
           "announce_ranks",
           "fail_fast", "failure_message", "ReplicaMismatch", "broadcast_state", "check_replicas", "digests",
           "shard_bounds", "DataParallelStep", "GradientBuffer", "synchronized_batch_norm", "KeyedNoise",
           "TimingCommunicator", "DistributedTrainer", "DeviceKeyedNoise", "DeviceDataParallelStep",
           "DeviceDataParallelEpochs",
           "device_data_parallel"]
