r"""Data-parallel training with the device-resident GPU step (``--backend cuda --distributed``).

Each rank holds its model on its GPU (:func:`~sbnnumba.distributed.select_gpu`: local GPU
``local_rank mod GPUs per node``) in a :class:`~sbnnumba.training.resident.CudaTrainer`. A step:

1. rank ``r`` uploads its shard ``[lo_r, hi_r)`` of the global batch and the keyed uniforms of those
   examples (:class:`~sbnnumba.distributed.KeyedNoise`: the noise of a one-process run) and runs the
   forward and backward pass on its GPU (:meth:`CudaTrainer.gradients`: the shard mean, weight
   ``1/n_r``);
2. the gradients come to the host into one contiguous buffer, scaled by ``n_r / B`` (so each example
   weighs ``1/B``), with the loss: one in-place ``Allreduce`` sums them over the ranks;
3. every rank uploads the sum and applies the optimizer update on its GPU
   (:meth:`CudaTrainer.apply_gradients`): the parameters and the optimizer state never leave the device.

.. math:: \hat g = \sum_r \frac{n_r}{B} \Big(\frac{1}{n_r} \sum_{i=lo_r}^{hi_r - 1} \hat g_i\Big)
          = \frac{1}{B} \sum_{i=0}^{B-1} \hat g_i .

The batch order and augmentation come from the shared training generator on the host, as in the host
step (so augmentation is supported here, unlike the one-process device epoch). Batch normalization would
need its batch statistics reduced inside the device forward pass: such networks use the host step
(:class:`~sbnnumba.distributed.DataParallelStep`, whose kernels still run on the GPU), with a warning.
"""
from __future__ import annotations

import warnings

from .. import datasets
from ..estimators.registry import has_device_step
from ..training.data import as_float
from ..training.device import EpochRunner, resident_trainer
from .comm import Communicator
from .sharding import shard_bounds
from .step import GradientBuffer
from .streams import KeyedNoise


class DeviceDataParallelStep:
    """One synchronous data-parallel step of a :class:`~sbnnumba.training.resident.CudaTrainer` (see the module docstring).

    Parameters
    ----------
    trainer : sbnnumba.training.resident.CudaTrainer
        Built on every rank from the same parameters and optimizer state (its ``max_batch`` at least the
        global batch size).
    comm : Communicator
    seed : int
        Keys the per-example noise streams.
    """

    def __init__(self, trainer, comm, seed=0):
        if not isinstance(comm, Communicator):
            raise TypeError(f"comm: expected a sbnnumba.distributed.Communicator, got {type(comm).__name__}")
        self.trainer, self.comm, self.noise = trainer, comm, KeyedNoise(seed)
        self.buffer = GradientBuffer(trainer.net)

    def __call__(self, x, y, step):
        """Train on the global batch ``(x, y)`` at global step ``step``.

        Parameters
        ----------
        x : ndarray (B, ...)
            The whole global batch, in the network's dtype (every rank holds it; each computes its shard).
        y : int ndarray (B,)
        step : int
            Global step index (keys the noise).

        Returns
        -------
        float
            The global batch's mean loss estimate, identical on every rank.
        """
        net, batch = self.trainer.net, x.shape[0]
        replicated = batch < self.comm.size  # as in DataParallelStep: every rank computes a short batch alone
        lo, hi = (0, batch) if replicated else shard_bounds(batch, self.comm.rank, self.comm.size)
        uniforms = self.noise.activation_uniforms(net.stage_shapes(x.shape[1:]), step, lo, hi, net.dtype)
        loss, grads = self.trainer.gradients(x[lo:hi], y[lo:hi], uniforms=uniforms,
                                             weight_uniforms=self.noise.weight_uniforms(net, step))
        buf = self.buffer.pack(loss, grads)
        buf *= buf.dtype.type((hi - lo) / batch)  # shard mean -> the shard's share of the global mean
        if not replicated:
            self.comm.allreduce_sum_(buf)
        self.trainer.apply_gradients(buf[:-1])
        return float(buf[-1])


class DeviceDataParallelEpochs(EpochRunner):
    """Epochs of :class:`DeviceDataParallelStep` over a host training set (batches and augmentation as
    in the host step); the trained values are copied to ``net`` and the optimizer after each epoch.

    Parameters
    ----------
    step : DeviceDataParallelStep
    x_tr : ndarray (N, ...)
        The training part (uint8 images are scaled per batch as on the host).
    y_tr : int ndarray (N,)
    augment_pad : int or None
        Random flips and crops with this padding (:func:`sbnnumba.datasets.augment_flip_crop`); None: none.
    """

    def __init__(self, step, x_tr, y_tr, augment_pad=None):
        self.step, self.x, self.y, self.augment_pad = step, x_tr, y_tr, augment_pad

    def run(self, batch_size, rng, callback):
        """One epoch; returns the summed loss over the examples (see :meth:`EpochRunner.run`)."""
        trainer, total = self.step.trainer, 0.0
        for xb, yb in datasets.iterate_minibatches(self.x, self.y, batch_size, rng=rng, shuffle=True):
            if self.augment_pad is not None:
                xb = datasets.augment_flip_crop(xb, rng, pad=self.augment_pad)
            total += self.step(as_float(xb, trainer.net.dtype), yb, trainer.optimizer.step_count) * len(yb)
            callback()
        trainer.sync()
        return total


def device_data_parallel(net, config, optimizer, x_tr, y_tr, comm):
    """The device-resident data-parallel epoch runner where the step can stay on the GPU, else None.

    Parameters
    ----------
    net : Network
        The same parameters on every rank; ``backend="cuda"`` (``net.backend.device_resident``).
    config : FitConfig
    optimizer : SGD or Adam
    x_tr : ndarray (N, ...)
    y_tr : int ndarray (N,)
    comm : Communicator

    Returns
    -------
    DeviceDataParallelEpochs or None
        None (the host step is used) for a host backend, an estimator without a device step or with
        options, batch normalization (a warning says why), or a network or optimizer outside
        :class:`~sbnnumba.training.resident.CudaTrainer`'s scope (a warning names it).
    """
    if not net.backend.device_resident or not has_device_step(config.estimator) or config.estimator_options:
        return None
    if net.normalizations():
        warnings.warn("--distributed with backend 'cuda': batch normalization needs statistics reduced inside the "
                      "device forward pass, which the device-resident step does not do; the host step is used "
                      "(its flip propagation runs on the GPU)", RuntimeWarning)
        return None
    trainer = resident_trainer(net, config, optimizer, x_tr, "--distributed uses the host step")
    if trainer is None:
        return None
    step = DeviceDataParallelStep(trainer, comm, seed=config.seed)
    return DeviceDataParallelEpochs(step, x_tr, y_tr, config.augment_pad if config.augment else None)


__all__ = ["DeviceDataParallelStep", "DeviceDataParallelEpochs", "device_data_parallel"]
