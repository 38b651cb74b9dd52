"""Data-parallel training: :class:`DistributedTrainer`, the :class:`~sbnnumba.training.Trainer` of ``N`` ranks.

What changes against one process (each a phase of the Trainer):

* start / resume: rank 0 alone initializes (data-dependent initialization) or reads the checkpoint; its
  parameters, normalization statistics, optimizer state, training generator and history are broadcast;
* each step: every rank draws the same global batch (and augmentation) from the shared training generator
  and computes its shard with :class:`~sbnnumba.distributed.DataParallelStep` (keyed per-example noise, one
  Allreduce); after every epoch :func:`~sbnnumba.distributed.check_replicas`;
* validation: each rank evaluates a contiguous part of each set with noise keyed by each example's
  position (:func:`~sbnnumba.distributed.split_evaluation`), the metrics are reduced, so they do not
  depend on ``N``; the deterministic-mode normalization statistics
  are re-estimated by every rank on the same images (deterministic, so identical);
* rank 0 alone writes the checkpoint, history and plots and shows progress. The checkpoint holds nothing
  that depends on ``N`` (``config["sampling"]`` marks the keyed noise, so a single-process run does not
  resume it and vice versa); it resumes on any number of ranks.

With ``backend="cuda"`` each rank uses its GPU (:func:`~sbnnumba.distributed.select_gpu`) and, where the
device-resident step applies, trains there with only the gradient crossing to the host for the
Allreduce (:func:`~sbnnumba.distributed.device_data_parallel`); otherwise it runs the host step, whose
kernels use the GPU.
"""
from __future__ import annotations

import contextlib

from ..training.checkpoint import generator_from_state
from ..training.data import as_float
from ..training.fit import Trainer
from .comm import Communicator
from .device_step import device_data_parallel
from .evaluation import split_evaluation
from .replicas import broadcast_state, check_replicas
from .step import DataParallelStep
from .timing import TimingCommunicator

#: ``config["sampling"]`` of a data-parallel run: activation noise keyed by (seed, step, global example index).
SAMPLING = "keyed-per-example"


class DistributedTrainer(Trainer):
    """A :class:`~sbnnumba.training.Trainer` whose steps, validation and files are shared by the ranks of ``comm``.

    Parameters
    ----------
    net, data, config, out, resume, metadata :
        As for :class:`~sbnnumba.training.Trainer`, the same on every rank (``out`` is written by rank 0).
    comm : Communicator
    """

    def __init__(self, net, data, config, *, comm, out=None, resume=False, metadata=None):
        if not isinstance(comm, Communicator):
            raise TypeError(f"comm: expected a sbnnumba.distributed.Communicator, got {type(comm).__name__}")
        self.comm = TimingCommunicator(comm)
        if not comm.is_root:
            config = config.replace(progress=False, verbose=False)
        super().__init__(net, data, config, out=out, resume=resume, metadata=metadata)

    def prepare(self, data):
        """The Trainer's preparation, plus ``config["sampling"]`` and this rank's :class:`DataParallelStep`."""
        super().prepare(data)
        self.run_config["sampling"] = SAMPLING
        c = self.config
        self.step = DataParallelStep(self.net, self.comm, c.estimator, c.estimator_options, seed=c.seed)

    def resume(self):
        """Rank 0 reads the checkpoint (its file system alone needs it); every rank gets its state."""
        if self.comm.is_root:
            super().resume()
        self._share_start()

    def start(self):
        """Rank 0 starts the run (data-dependent initialization); every rank gets its parameters."""
        if self.comm.is_root:
            super().start()
        self._share_start()

    def _share_start(self):
        """Rank 0's parameters, statistics, optimizer state, generator and history on every rank."""
        root = self.comm.is_root
        state = (self.optimizer.state_dict(), self.rng.bit_generator.state, self.history, self.start_epoch) \
            if root else None
        state = self.comm.bcast_object(state)
        broadcast_state(self.net, self.comm)
        if not root:
            self.optimizer.load_state_dict(state[0])
            self.rng = generator_from_state(state[1])
            self.history, self.start_epoch = list(state[2]), state[3]

    def device_runner(self):
        """The device-resident data-parallel epochs where the step can stay on the GPU, else None (host step)."""
        return device_data_parallel(self.net, self.config, self.optimizer, self.x_tr, self.y_tr, self.comm)

    def estimate(self, xb, yb):
        """The global batch's loss and gradient: this rank's shard, summed over the ranks (identical everywhere)."""
        return self.step(as_float(xb, self.net.dtype), yb, self.optimizer.step_count)

    def run_epoch(self, epoch):
        """The Trainer's epoch, then the replica check; the row gets ``comm_time`` (seconds in reductions)."""
        self.comm.reset()
        row = super().run_epoch(epoch)
        check_replicas(self.net, self.comm, f"after epoch {epoch}")
        row["comm_time"] = self.comm.seconds
        return row

    def evaluate(self, x, y, rng, **options):
        """Metrics of ``(x, y)``: each rank evaluates a contiguous part with keyed noise, the metrics are reduced."""
        seed = int(rng.integers(2 ** 63))  # the same on every rank: ``rng`` is the shared evaluation generator

        def part(xs, ys, uniforms):
            return super(DistributedTrainer, self).evaluate(xs, ys, None, uniforms=uniforms, **options)

        return split_evaluation(part, self.net, x, y, seed, self.comm)

    def lock(self):
        # rank 0 alone writes ``out`` (the other ranks may share its file system)
        return super().lock() if self.comm.is_root else contextlib.nullcontext()

    def save(self):
        """Checkpoint, history and plots: rank 0 only."""
        if self.comm.is_root:
            super().save()
