r"""Data-parallel training with the device-resident GPU step (``--backend cuda --distributed``).

Each rank holds its model on its GPU (:func:`~sbnnumba.distributed.select_gpu`: local GPU
``local_rank mod GPUs per node``) in a :class:`~sbnnumba.training.resident.CudaTrainer`. A step:

1. rank ``r`` uploads its shard ``[lo_r, hi_r)`` of the global batch, draws the keyed uniforms of
   those examples on its GPU (:class:`DeviceKeyedNoise`: counter-based Philox, the numbers of
   :class:`~sbnnumba.distributed.KeyedNoise`, i.e. the noise of a one-process run, from the key and the
   global positions; only ``lo_r`` and the key cross) and runs the forward and backward pass there
   (:meth:`CudaTrainer.gradients_drawn`) with the per-example weight ``1/B``; batch normalization takes
   its statistics over the global batch (:func:`~sbnnumba.distributed.synchronized_batch_norm` on the
   device copy: only the per-channel sums of the forward and the backward pass cross to the host, each
   for its own small ``Allreduce``);
2. the gradients come to the host into one contiguous buffer with the loss: one in-place ``Allreduce``
   sums them over the ranks;
3. every rank uploads the sum and applies the optimizer update on its GPU
   (:meth:`CudaTrainer.apply_gradients`): the parameters and the optimizer state never leave the device.

.. math:: \hat g = \sum_r \sum_{i=lo_r}^{hi_r - 1} \frac{1}{B} \hat g_i .

The batch order and augmentation come from the shared training generator on the host, as in the host
step (so augmentation is supported here, unlike the one-process device epoch).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import datasets
from ..estimators.registry import has_device_step
from ..training.data import as_float
from ..training.device import EpochRunner, resident_trainer
from .comm import Communicator
from .sharding import shard_bounds
from .step import GradientBuffer, synchronized_batch_norm
from .streams import ACTIVATION_SALT, WEIGHT_SALT, KeyedNoise


class DeviceKeyedNoise:
    r"""The uniforms of :class:`~sbnnumba.distributed.KeyedNoise` drawn on the device, bit for bit.

    Activation uniforms of stage ``k`` of the example at global position ``i``: units
    ``o_k .. o_k + n_k - 1`` of that example's Philox stream (``o_k = \sum_{l<k} n_l``, ``n_l`` the units
    of stage ``l`` per example); Bernoulli weight uniforms of latent layer ``l``: units
    ``p_l .. p_l + m_l - 1`` of the weight stream (counter 0, as example 0), ``m_l`` the size of its
    ``eta``. :func:`sbnnumba.backends.cuda.keyed_random.keyed_uniforms` computes them on the device from
    the key, ``i`` and the unit index: only these scalars cross to the device.

    Parameters
    ----------
    noise : KeyedNoise
    net : Network
    input_shape : tuple
        Per-example input shape.
    """

    def __init__(self, noise, net, input_shape):
        if not isinstance(noise, KeyedNoise):
            raise TypeError(f"noise: expected a sbnnumba.distributed.KeyedNoise, got {type(noise).__name__}")
        self.noise, self.dtype = noise, np.dtype(net.dtype)
        sizes = [int(np.prod(shape)) for shape in net.stage_shapes(tuple(input_shape))]
        self.stage_offsets = [int(o) for o in np.cumsum([0] + sizes[:-1])]
        etas = [(prefix, int(np.prod(layer.latent.eta.shape))) for prefix, layer in net.latent_layers()]
        self.weight_offsets = dict(zip([p for p, _ in etas], np.cumsum([0] + [m for _, m in etas][:-1]).tolist()))

    def states(self, step, lo):
        """The stage-uniform drawer of step ``step`` for a shard starting at global position ``lo``.

        Parameters
        ----------
        step : int
            Global step index.
        lo : int
            Global position of the shard's first example.

        Returns
        -------
        callable
            ``(k, shape) -> device array of shape`` (``shape = (B, *stage_shape)``), what
            :meth:`KeyedNoise.activation_uniforms` gives for stage ``k`` of examples ``lo .. lo + B - 1``.
        """
        from ..backends.cuda.keyed_random import keyed_uniforms
        key = self.noise.stream_key(ACTIVATION_SALT, step)
        return lambda k, shape: keyed_uniforms(key, lo, self.stage_offsets[k], shape, self.dtype)

    def weights(self, step):
        """The Bernoulli-weight-uniform drawer of step ``step`` (the same on every rank).

        Parameters
        ----------
        step : int
            Global step index.

        Returns
        -------
        callable
            ``(prefix, shape) -> device array of shape``, what :meth:`KeyedNoise.weight_uniforms` gives
            for that layer.
        """
        from ..backends.cuda.keyed_random import keyed_uniforms
        key = self.noise.stream_key(WEIGHT_SALT, step)
        return lambda prefix, shape: keyed_uniforms(key, 0, self.weight_offsets[prefix], (1,) + tuple(shape),
                                                    self.dtype).reshape(tuple(shape))


class DeviceDataParallelStep:
    """One synchronous data-parallel step of a :class:`~sbnnumba.training.resident.CudaTrainer` (see the module
    docstring).

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
        self.trainer, self.comm = trainer, comm
        self.noise = DeviceKeyedNoise(KeyedNoise(seed), trainer.net, trainer.input_shape)
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
        batch = x.shape[0]
        replicated = batch < self.comm.size  # as in DataParallelStep: every rank computes a short batch alone
        lo, hi = (0, batch) if replicated else shard_bounds(batch, self.comm.rank, self.comm.size)
        # a replicated batch has the whole batch on every rank: its statistics need no reduction
        sync = contextlib.nullcontext() if replicated else synchronized_batch_norm(self.trainer.device_net, self.comm)
        with sync:  # weight 1/B: batch norm's backward sums every rank's weighted gradients
            loss, grads = self.trainer.gradients_drawn(x[lo:hi], y[lo:hi], self.noise.states(step, lo),
                                                       self.noise.weights(step), example_weight=1.0 / batch)
        buf = self.buffer.pack(loss, grads)
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
        options, or a network or optimizer outside
        :class:`~sbnnumba.training.resident.CudaTrainer`'s scope (a warning names it).
    """
    if not net.backend.device_resident or not has_device_step(config.estimator) or config.estimator_options:
        return None
    trainer = resident_trainer(net, config, optimizer, x_tr, "--distributed uses the host step")
    if trainer is None:
        return None
    step = DeviceDataParallelStep(trainer, comm, seed=config.seed)
    return DeviceDataParallelEpochs(step, x_tr, y_tr, config.augment_pad if config.augment else None)


__all__ = ["DeviceKeyedNoise", "DeviceDataParallelStep", "DeviceDataParallelEpochs", "device_data_parallel"]
