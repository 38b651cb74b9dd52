"""GPU routing of :class:`~sbnnumba.training.Trainer`: the one place that chooses the device-resident step.

With a backend whose arrays live on a device (``net.backend.device_resident``: ``cuda``) and a step
that can stay on the device (dense and conv stages with real or Bernoulli weights, optionally
batch-normalized; an estimator registered with ``device_step=True``, i.e. ``"psa"`` or ``"st"``,
without options, no augmentation, SGD/Adam without
global-norm clipping), an epoch runs as
:meth:`sbnnumba.training.resident.CudaTrainer.train_epoch` on a dataset uploaded once; otherwise
:func:`device_epochs` returns None and the host step is used (only the PSA flip propagation then runs
on the GPU, through the layers' backend).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod

from ..estimators.registry import has_device_step
from .data import as_float


class EpochRunner(ABC):
    """What :class:`~sbnnumba.training.Trainer` runs an epoch with when the step is device-resident
    (``Trainer.device_runner``); it leaves the trained values in ``net`` and the optimizer at the end."""

    @abstractmethod
    def run(self, batch_size, rng, callback):
        """One epoch over the training part.

        Parameters
        ----------
        batch_size : int
            Examples per step.
        rng : numpy.random.Generator
            The training generator (shuffling; checkpointed).
        callback : callable
            ``callback()`` after every step (progress).

        Returns
        -------
        float
            The summed loss over the examples (non-finite if the run diverged).
        """


class DeviceEpochs(EpochRunner):
    """Epochs of the device-resident step on a dataset uploaded once.

    Parameters
    ----------
    trainer : sbnnumba.training.resident.CudaTrainer
    x_tr : ndarray (N, ...), y_tr : int ndarray (N,)
        The training part (uint8 images are scaled as on the host).
    dtype : numpy dtype
    """

    def __init__(self, trainer, x_tr, y_tr, dtype):
        self.trainer = trainer
        self.n = x_tr.shape[0]
        self.x, self.y = trainer.upload(as_float(x_tr, dtype).reshape(self.n, -1), y_tr)

    def run(self, batch_size, rng, callback):
        """One epoch; returns the summed loss over the examples (non-finite if the run diverged).

        The device generator is reseeded from ``rng`` (the checkpointed training generator), so a resumed
        run samples the same states as an uninterrupted one.

        Parameters
        ----------
        batch_size : int
            Examples per step.
        rng : numpy.random.Generator
            The training generator (batch order, and the device generator's seed).
        callback : callable
            Called with no argument after every step (progress bar).

        Returns
        -------
        float
            The loss summed over the epoch's examples.
        """
        self.trainer.reseed(int(rng.integers(2 ** 63)))
        mean = self.trainer.train_epoch(self.x, self.y, batch_size, rng=rng, callback=callback)
        self.trainer.sync()
        return self.n * mean


def device_epochs(net, config, optimizer, x_tr, y_tr):
    """A :class:`DeviceEpochs` when the whole step can stay on the device (see the module docstring), else None.

    The step stays on the device when the backend is device-resident, the estimator has a device step,
    it takes no options and there is no augmentation; a step the resident trainer cannot build warns and
    falls back (None).

    Parameters
    ----------
    net : Network
        The network being trained.
    config : FitConfig
        The run's options.
    optimizer : Optimizer
        Its state is mirrored on the device.
    x_tr : ndarray, shape (N, ...)
        Training inputs (uint8 images are scaled as on the host).
    y_tr : ndarray of int, shape (N,)
        Labels.

    Returns
    -------
    DeviceEpochs or None
    """
    if not net.backend.device_resident or not has_device_step(config.estimator) or config.estimator_options \
            or config.augment:
        return None
    trainer = resident_trainer(net, config, optimizer, x_tr, "only the PSA flip propagation runs on the GPU")
    return None if trainer is None else DeviceEpochs(trainer, x_tr, y_tr, net.dtype)


def resident_trainer(net, config, optimizer, x_tr, fallback):
    """The :class:`~sbnnumba.training.resident.CudaTrainer` of a run, or None with a warning.

    Parameters
    ----------
    net : Network
        On a device-resident backend.
    config : FitConfig
        Its estimator and batch size (``max_batch``).
    optimizer : SGD or Adam
    x_tr : ndarray (N, ...)
        The training part (its per-example shape).
    fallback : str
        What runs instead, for the warning.

    Returns
    -------
    CudaTrainer or None
        None (and a RuntimeWarning naming the reason and ``fallback``) for a network or optimizer outside
        the device-resident step's scope.
    """
    from .resident import CudaTrainer

    try:
        return CudaTrainer(net, config.estimator, optimizer, max_batch=config.batch_size,
                           input_shape=tuple(x_tr.shape[1:]))
    except NotImplementedError as exc:
        warnings.warn(f"backend 'cuda': the step is not device-resident for this run ({exc}); {fallback}",
                      RuntimeWarning)
        return None


__all__ = ["DeviceEpochs", "EpochRunner", "device_epochs", "resident_trainer"]
