r"""Training in phases: :class:`Trainer` (prepare, resume or start, run an epoch, validate, save) and :func:`fit`.

Protocol (spec ``psa.md`` section 5.2, adapted to Fashion-MNIST)
----------------------------------------------------------------
* Objective: the expected NLL ``E_Z[l(y, eta)]``, one sampled path per image per step, batch mean;
  gradients from any registered estimator (:func:`sbnnumba.estimate`).
* Element-wise gradient clipping to ``[-1e3, 1e3]`` (the optimizer's ``clip_value``); training stops
  with :class:`TrainingDiverged` at the first non-finite loss or gradient.
* Optional data-dependent initialization on the first ``batch_size`` training images
  (:meth:`Network.initialize_from_data`), then SGD (Nesterov) or Adam.
* Validation after every epoch on a held-out part of the training set (``val_fraction``, split
  with ``split_seed``) with ``eval_samples`` samples per image, see :func:`~sbnnumba.training.evaluate`.

A step, on the host::

    x, y (shuffled with the training generator) [-> augment_flip_crop] -> estimate(estimator, net, x, y, rng)
        -> optimizer.update(net.params, grads) -> net.apply_constraints()

or, where :mod:`~sbnnumba.training.device` finds it possible, the same step on the GPU.

Files written into ``out`` (each atomically: temp file + ``os.replace``): ``checkpoint.npz`` (after every
epoch, :mod:`~sbnnumba.training.checkpoint`), ``history.csv``, ``history.json``, ``loss.png``,
``accuracy.png``, ``entropy.png`` (:mod:`~sbnnumba.training.history`).

Each epoch's summary line, and "resuming ... from epoch N", go to the ``logging`` logger
``sbnnumba.training.fit`` (level INFO with ``verbose``, else DEBUG; ``progress`` draws the tqdm bars); the
command line shows them, a library caller configures logging to see them.

While it runs, a :class:`Trainer` holds the lock of ``out`` (:class:`sbnnumba.fileio.RunLock`): a second
run on the same directory fails at once with :class:`sbnnumba.fileio.DirectoryBusy` naming the holder, and
temporary files left by an interrupted earlier run are removed.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import datasets, optim
from ..estimators import registry as _registry
from ..fileio import RunLock
from ..inputs import convention_of
from ..network import check_network
from ..progress import progress_bar
from ..runtime import compile_timer
from ..validation import check_labels, nonfinite_keys
from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    generator_from_state,
    jsonable,
    load_checkpoint,
    load_state,
    save_checkpoint,
)
from .config import FitConfig, trajectory_from_dict
from .data import as_float, fingerprint, split_data
from .description import describe
from .device import device_epochs
from .evaluation import evaluate, metrics_row
from .history import summary_line, write_history, write_plots

if TYPE_CHECKING:
    from ..distributed import Communicator
    from ..network import Network

log = logging.getLogger(__name__)

_EVAL_SALT = 0x5EB1  # eval generators: default_rng([seed, epoch, _EVAL_SALT]), separate from training
_RECALIBRATION_IMAGES = 2000  # training images for the deterministic-mode normalization statistics
_CHECK_CHUNK = 4096  # examples converted at a time by the up-front check of the data


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient appeared during training.

    Parameters
    ----------
    message : str
        What diverged, and where.
    epoch, step : int, optional
        See Attributes.
    checkpoint : str, optional
        See Attributes.

    Attributes
    ----------
    epoch, step : int
        The epoch (1-based) and the batch within it (1-based) where it happened.
    checkpoint : str or None
        The last good checkpoint (written after the last completed epoch), if any.
    """

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None,
                 checkpoint: str | None = None):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of dict
        One row per completed epoch (also the rows of earlier sessions when resuming).
    optimizer : sbnnumba.optim.Optimizer
    epochs_done : int
        Completed epochs (counting earlier sessions).
    epochs_this_run : int
        Epochs trained by this call (``epochs_done`` less the epoch a resumed run started from).
    stopped : str
        ``"completed"``, ``"time budget"`` or ``"already complete"`` (resumed at or past ``epochs``).
    config : dict
        The run's configuration as stored in the checkpoint.
    out, checkpoint : str or None
    files : dict
        Name -> path of the files written.
    """

    history: list
    optimizer: object
    epochs_done: int
    epochs_this_run: int
    stopped: str
    config: dict
    out: str | None = None
    checkpoint: str | None = None
    files: dict = field(default_factory=dict)


def make_optimizer(config: FitConfig, steps_per_epoch: int) -> optim.Optimizer:
    """The optimizer of ``config``: an Optimizer instance as it is, else :func:`sbnnumba.optim.get_optimizer`
    by name with ``lr`` (its own default when None: Adam 1e-3, SGD 0.01), ``weight_decay``, ``clip_value``,
    the schedule resolved over the run, and for SGD ``momentum`` / ``nesterov`` (Nesterov only with
    momentum).

    Parameters
    ----------
    config : FitConfig
        The run's options.
    steps_per_epoch : int
        Steps of one epoch: the schedules span ``config.epochs * steps_per_epoch`` steps (``"step"``:
        x0.1 after each third of the epochs; ``"cosine"``: over all steps).

    Returns
    -------
    sbnnumba.optim.Optimizer
    """
    if isinstance(config.optimizer, optim.Optimizer):
        return config.optimizer
    schedule = config.schedule
    if schedule == "cosine":
        schedule = optim.CosineLR(total=max(1, config.epochs * steps_per_epoch))
    elif schedule == "step":  # x0.1 after each third of the budget
        schedule = optim.StepLR(step_size=max(1, math.ceil(config.epochs / 3)) * steps_per_epoch, gamma=0.1)
    elif schedule == "constant":
        schedule = None
    kwargs = {"weight_decay": config.weight_decay, "clip_value": config.clip_value, "schedule": schedule}
    if config.lr is not None:
        kwargs["lr"] = config.lr
    if config.optimizer == optim.SGD.name:  # the momentum options belong to SGD
        kwargs.update(momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    return optim.get_optimizer(config.optimizer, **kwargs)


def _differences(key, a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(f"{key}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [f"{key}: checkpoint {a!r} vs now {b!r}"]


def check_resume(saved: dict, current: dict, path: str) -> None:
    """ValueError naming every setting that decides the trajectory and differs between two run configs.

    Compared: ``network``, ``data``, ``optimizer``, ``sampling`` and the ``trajectory`` fields of ``fit``.

    Parameters
    ----------
    saved : dict
        The checkpoint's config.
    current : dict
        The config of the run that resumes.
    path : str
        The checkpoint, named in the message.

    Raises
    ------
    ValueError
        If any of them differs (the message lists each difference).
    """
    # "sampling" is set by data-parallel runs only (keyed per-example noise): a different trajectory
    pairs = [(k, saved.get(k), current.get(k)) for k in ("network", "data", "optimizer", "sampling")]
    if isinstance(saved.get("network"), dict) and "input" not in saved["network"]:
        # written before the input convention was recorded (#41): it does not change the trajectory
        pairs[0] = ("network", saved["network"], {k: v for k, v in current["network"].items() if k != "input"})
    pairs += [(f"fit.{k}", v, current["fit"].get(k))
              for k, v in trajectory_from_dict(saved.get("fit", {})).items()]
    diff = [d for key, a, b in pairs for d in _differences(key, jsonable(a), jsonable(b))]
    if diff:
        raise ValueError(f"resume: {path} was written with different settings ({'; '.join(diff)}); use the same "
                         "settings or another output directory")


class Trainer:
    """One training run of ``net`` on ``data`` under a :class:`FitConfig`, in phases.

    Construction runs :meth:`prepare` (split the data, build the optimizer, the run's config); :meth:`run`
    then calls :meth:`resume` (``resume=True``) or :meth:`start`, and per epoch :meth:`run_epoch`,
    :meth:`validate` and :meth:`save`. Each phase can also be called on its own (e.g. a sweep that
    evaluates differently); the phases share their state through the attributes (``optimizer``, ``rng``,
    ``history``, ``run_config``, ``x_tr`` ... ``y_val``).

    Parameters
    ----------
    net : Network
        Trained in place.
    data : Dataset, (x, y) or (x_train, y_train, x_val, y_val)
        See :func:`fit`.
    config : FitConfig
    out : str or os.PathLike, optional
        Output directory (checkpoint, history, plots); None writes nothing.
    resume : bool
        Continue the run whose checkpoint is in ``out``.
    metadata : dict, optional
        JSON-able extra information stored in the run's config.
    """

    def __init__(self, net, data, config, *, out=None, resume=False, metadata=None):
        if not isinstance(config, FitConfig):
            raise TypeError(f"config: expected a FitConfig, got {type(config).__name__}")
        if resume and out is None:
            raise ValueError("resume: needs the output directory 'out' holding the checkpoint")
        self.net, self.config, self.metadata = check_network(net), config, dict(metadata or {})
        self.out = None if out is None else os.fspath(out)
        self.resuming = bool(resume)
        self.ckpt_path = None if out is None else os.path.join(self.out, CHECKPOINT_NAME)
        self.files, self.history, self.start_epoch, self.rng, self.device = {}, [], 0, None, None
        self.prepare(data)

    # ------------------------------------------------------------------------------------ phases
    def prepare(self, data):
        """Split the data, check it against the network (inputs and labels, before anything changes), build the
        optimizer and the run's config (``self.run_config``).

        Parameters
        ----------
        data : Dataset, (x, y) or (x_train, y_train, x_val, y_val)
            See :func:`fit`.
        """
        c, net = self.config, self.net
        self.x_tr, self.y_tr, self.x_val, self.y_val, name = split_data(data, c.val_fraction, c.split_seed)
        if self.x_tr.shape[0] == 0:
            raise ValueError("data: no training examples")
        if c.augment and self.x_tr.ndim != 4:
            raise ValueError(f"augment: needs images of shape (N, C, H, W), got training data of shape "
                             f"{self.x_tr.shape}")
        # every example and label checked before anything changes (the steps check them batch by batch again)
        parts = ("x_train", "y_train", "x_val", "y_val") if isinstance(data, (tuple, list)) and len(data) == 4 \
            else ("x", "y", "x", "y")
        self._check_part(self.x_tr, self.y_tr, *parts[:2])
        self._check_part(self.x_val, self.y_val, *parts[2:])
        if convention_of(self.x_tr) is not None:  # the network records its input preprocessing (#41)
            net.input_convention = convention_of(self.x_tr)
        self.steps_per_epoch = math.ceil(self.x_tr.shape[0] / c.batch_size)
        self.optimizer = make_optimizer(c, self.steps_per_epoch)
        self.run_config = jsonable({
            "format_version": FORMAT_VERSION, "network": describe(net, self.x_tr.shape[1:]),
            "data": {"name": name, "train": fingerprint(self.x_tr, self.y_tr),
                     "val": fingerprint(self.x_val, self.y_val)},
            "fit": c.to_dict(), "optimizer": self.optimizer.hyperparameters, "backend": net.backend.name,
            "metadata": self.metadata})

    def _check_part(self, x, y, x_name, y_name):
        """Check one part of the data against the network, as the steps check each batch: ``x``'s dtype, shape
        and values (:meth:`~sbnnumba.Network.check_input`: finite; in [0, 1] for a network recorded as trained on
        uint8 images) and ``y`` (:func:`~sbnnumba.validation.check_labels`: one label per example, in range)."""
        net = self.net
        if x.shape[0] and x.dtype == np.uint8:  # images: any value is valid, so the dtype and shape only
            net.check_input(x[:0], x_name)
        elif x.shape[0]:  # (an empty validation part is never evaluated)
            for start in range(0, x.shape[0], _CHECK_CHUNK):  # in chunks: no float copy of the whole set at once
                net.check_input(x[start:start + _CHECK_CHUNK], x_name)
        check_labels(y, x.shape[0], net.n_classes, y_name)

    def resume(self):
        """Parameters, optimizer state, generator and history from the checkpoint in ``out``."""
        ck = load_checkpoint(self.ckpt_path)
        check_resume(ck.config, self.run_config, self.ckpt_path)
        load_state(self.net, ck)
        self.optimizer.load_state_dict(ck.optimizer_state)
        self.rng = generator_from_state(ck.rng_state)
        self.history, self.start_epoch = list(ck.history), ck.epoch
        left = max(0, self.config.epochs - ck.epoch)
        log.log(self._level, f"resuming {self.ckpt_path} from epoch {ck.epoch}: {left} of {self.config.epochs} "
                             "epochs left")

    def start(self):
        """A fresh run: the training generator, and the data-dependent initialization if configured."""
        if self.ckpt_path is not None and os.path.exists(self.ckpt_path):
            raise FileExistsError(f"out: {self.ckpt_path} already exists; pass resume=True (--resume) to continue "
                                  "that run or choose another output directory")
        self.rng = np.random.default_rng(self.config.seed)
        self.history, self.start_epoch = [], 0
        if self.config.data_init:
            self.net.initialize_from_data(as_float(self.x_tr[:self.config.batch_size], self.net.dtype))

    def run_epoch(self, epoch):
        """Train one epoch.

        Parameters
        ----------
        epoch : int
            The epoch's number (1-based, counting earlier sessions).

        Returns
        -------
        dict
            The history row: ``epoch``, ``steps`` (optimizer steps so far), ``lr``, ``train_loss`` (mean over
            the epoch's examples).

        Raises
        ------
        TrainingDiverged
            At a non-finite loss, gradient or parameter.
        """
        self.net.train()
        bar = progress_bar(total=self.steps_per_epoch, desc=f"epoch {epoch}/{self.config.epochs}", unit="batch",
                           enabled=self.config.progress)
        try:
            if self.device is not None:
                total = self.device.run(self.config.batch_size, self.rng, lambda: bar.update(1))
                seen = self.x_tr.shape[0]
                if not np.isfinite(total):
                    raise self._diverged(f"non-finite loss in epoch {epoch} on the device", epoch)
            else:
                total, seen = self._host_epoch(epoch, bar)
        finally:
            bar.close()
        bad = nonfinite_keys(self.net.params)
        if bad:
            raise self._diverged(f"non-finite parameters {bad} after epoch {epoch}", epoch)
        return {"epoch": epoch, "steps": self.optimizer.step_count, "lr": self.optimizer.lr,
                "train_loss": total / seen}

    def _host_epoch(self, epoch, bar):
        c, net, rng = self.config, self.net, self.rng
        bad = nonfinite_keys(net.params)  # the steps' estimates rely on it (Trainer.estimate)
        if bad:
            raise self._diverged(f"non-finite parameters {bad} before epoch {epoch}", epoch)
        total, seen = 0.0, 0
        for step, (xb, yb) in enumerate(datasets.iterate_minibatches(self.x_tr, self.y_tr, c.batch_size, rng=rng,
                                                                    shuffle=True), start=1):
            if c.augment:
                xb = datasets.augment_flip_crop(xb, rng, pad=c.augment_pad)
            loss, grads = self.estimate(xb, yb)
            if not math.isfinite(loss):
                raise self._diverged(f"non-finite loss at epoch {epoch}, step {step}", epoch, step)
            try:  # the optimizer refuses non-finite gradients before changing anything: the step's one check
                self.optimizer.update(net.params, grads)
            except optim.NonFiniteGradient as exc:
                raise self._diverged(f"non-finite gradient of {exc.key!r} at epoch {epoch}, step {step}", epoch,
                                     step) from None
            net.apply_constraints()  # projection of latent weights (mirror descent), if any
            total += loss * len(yb)
            seen += len(yb)
            bar.update(1)
            if step % 10 == 0 or step == self.steps_per_epoch:
                bar.set_postfix(loss=f"{total / seen:.4f}")
        return total, seen

    def estimate(self, xb, yb):
        """Loss and gradient estimate of one training batch (the configured estimator, the training generator).

        Parameters
        ----------
        xb : ndarray, shape (B, ...)
            Inputs (uint8 images are scaled to [0, 1]).
        yb : ndarray of int, shape (B,)
            Labels.

        Returns
        -------
        loss : float
            Batch-mean loss of the sampled path(s).
        grads : dict str -> ndarray
            One array per parameter, its shape.
        """
        c = self.config
        # the parameters' finiteness is checked per epoch (_host_epoch, run_epoch), not per step
        return _registry.estimate_with_finite_params(c.estimator, self.net, as_float(xb, self.net.dtype), yb,
                                                     self.rng, **c.estimator_options)

    def _bar_label(self, label):
        """``label`` where the configuration shows progress bars, else None (:func:`~sbnnumba.training.evaluate`'s
        ``progress``)."""
        return label if self.config.progress else None

    def evaluate(self, x, y, rng, **options):
        """:func:`~sbnnumba.training.evaluate` of the network on ``(x, y)`` with the configured samples and batch.

        Parameters
        ----------
        x : ndarray, shape (N, ...)
            Inputs.
        y : ndarray of int, shape (N,)
            Labels.
        rng : numpy.random.Generator
            Evaluation generator (independent of training).
        **options
            Further keywords of :func:`~sbnnumba.training.evaluate` (e.g. ``entropy``).

        Returns
        -------
        dict
            The metrics of :func:`~sbnnumba.training.evaluate`.
        """
        c = self.config
        return evaluate(self.net, x, y, c.eval_samples, rng, batch_size=c.eval_batch_size, **options)

    def device_runner(self):
        """The device-resident epoch runner where :mod:`~sbnnumba.training.device` finds one possible, else None.

        Returns
        -------
        EpochRunner or None
        """
        return device_epochs(self.net, self.config, self.optimizer, self.x_tr, self.y_tr)

    def validate(self, row):
        """Add the evaluation of the epoch's network to ``row``: ``train_*`` on the first ``train_eval_size``
        training images, ``val_*`` on the validation part (generators independent of training).

        Parameters
        ----------
        row : dict
            The epoch's history row (from :meth:`run_epoch`), updated in place.

        Returns
        -------
        dict
            ``row``.
        """
        c, net = self.config, self.net
        if net.normalizations():  # deterministic mode is a different network: re-estimate its statistics
            net.recalibrate_normalization(as_float(self.x_tr[:_RECALIBRATION_IMAGES], net.dtype), mode="deterministic")
        eval_rng = np.random.default_rng([c.seed, row["epoch"], _EVAL_SALT])
        if c.train_eval_size:
            # without a validation part the unit entropy is measured here (the entropy plot would be empty)
            no_val = self.x_val.shape[0] == 0
            m = self.evaluate(self.x_tr[:c.train_eval_size], self.y_tr[:c.train_eval_size], eval_rng, entropy=no_val,
                              progress=self._bar_label(f"epoch {row['epoch']}/{c.epochs} train eval"))
            row.update({"train_eval_loss": m["loss"], "train_acc1": m["acc1"], "train_eacc": m["eacc"],
                        "train_det_acc": m["det_acc"]})
            if no_val:
                row.update({k: v for k, v in metrics_row("train", m).items() if k.startswith("train_entropy")})
        if self.x_val.shape[0]:
            label = self._bar_label(f"epoch {row['epoch']}/{c.epochs} validation")
            row.update(metrics_row("val", self.evaluate(self.x_val, self.y_val, eval_rng, progress=label)))
        return row

    def save(self):
        """Checkpoint, history files and (if configured) plots into ``out`` (after the last row of ``history``)."""
        if self.out is None:
            raise ValueError("out: the trainer has no output directory to save into")
        save_checkpoint(self.ckpt_path, self.net, self.optimizer, self.rng, self.history[-1]["epoch"], self.history,
                        self.run_config)
        self.files["history_csv"], self.files["history_json"] = write_history(self.out, self.history, self.run_config)
        if self.config.plots:
            self.files.update(write_plots(self.history, self.out))

    # ------------------------------------------------------------------------------------ the run
    def lock(self):
        """The lock of ``out`` held for the whole run (:class:`sbnnumba.fileio.RunLock`: a second run on the
        same directory fails at once naming this one), or a no-op without ``out``.

        Returns
        -------
        context manager
        """
        return contextlib.nullcontext() if self.out is None else RunLock(self.out, "out")

    def run(self):
        """All phases, holding :meth:`lock`.

        Returns
        -------
        FitResult
        """
        with self.lock():
            return self._run()

    def _run(self):
        c = self.config
        if self.resuming:
            self.resume()
        else:
            self.start()
        stopped, t_begin = ("already complete" if self.start_epoch >= c.epochs else "completed"), time.perf_counter()
        self.device = self.device_runner()
        for epoch in range(self.start_epoch + 1, c.epochs + 1):
            t0 = time.perf_counter()
            with compile_timer() as compiling:  # the kernels' one-time compilation on a cold Numba cache
                row = self.run_epoch(epoch)
            t1 = time.perf_counter()
            self.validate(row)
            row.update(epoch_time=t1 - t0, compile_time=compiling.seconds, eval_time=time.perf_counter() - t1)
            self.history.append(row)
            # INFO when verbose, else DEBUG: quiet runs (lr-search trials, --quiet) stay out of the log
            log.log(self._level, summary_line(row, c.epochs, c.eval_samples))
            if self.out is not None:
                self.save()
            if c.max_time is not None and time.perf_counter() - t_begin >= c.max_time and epoch < c.epochs:
                stopped = "time budget"
                break
        return self.result(stopped)

    def result(self, stopped):
        """The :class:`FitResult` of the run so far.

        Parameters
        ----------
        stopped : str
            Why the run ended (``"completed"``, ``"time budget"``, ``"already complete"``).

        Returns
        -------
        FitResult
        """
        if self.ckpt_path is not None:
            self.files["checkpoint"] = self.ckpt_path
        done = len(self.history) and self.history[-1]["epoch"]
        return FitResult(history=self.history, optimizer=self.optimizer, epochs_done=done,
                         epochs_this_run=done - self.start_epoch, stopped=stopped,
                         config=self.run_config, out=self.out, checkpoint=self._last_checkpoint(), files=self.files)

    @property
    def _level(self):
        return logging.INFO if self.config.verbose else logging.DEBUG

    def _last_checkpoint(self):
        return self.ckpt_path if self.ckpt_path and os.path.exists(self.ckpt_path) else None

    def _diverged(self, what, epoch, step=None):
        last = self._last_checkpoint()
        where = (f"the last good checkpoint is {last} (epoch {epoch - 1})" if last is not None
                 else "no checkpoint was written")
        return TrainingDiverged(f"training diverged: {what} (estimator {self.config.estimator!r}, lr "
                                f"{self.optimizer.lr:g}); {where}", epoch=epoch, step=step, checkpoint=last)


def fit(net: Network, data: Any, config: FitConfig | None = None, *, out: str | os.PathLike[str] | None = None,
        resume: bool = False, metadata: dict[str, Any] | None = None, comm: Communicator | None = None,
        **options: Any) -> FitResult:
    """Train ``net`` in place on ``data`` with a gradient estimator; validate after every epoch.

    Parameters
    ----------
    net : Network
        Updated in place. Checkpoints describe it from its structure
        (:func:`~sbnnumba.training.describe`), however it was built.
    data : Dataset, (x, y) or (x_train, y_train, x_val, y_val)
        Training images (uint8 images are scaled to [0, 1] batch by batch) and labels. With a
        Dataset or a pair, ``val_fraction`` of it is held out for validation (split with ``split_seed``).
    config : FitConfig, optional
        The options (default ``FitConfig()``); see :class:`~sbnnumba.training.FitConfig` for each field:
        ``estimator``, ``estimator_options``, ``epochs`` (total, counting earlier sessions when resuming),
        ``batch_size``, ``optimizer`` (``"adam"``: default lr 1e-3; ``"sgd"``: default lr 0.01 with
        ``momentum``/``nesterov``, which only SGD takes; or an Optimizer instance, which has its own settings:
        ``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``schedule`` and ``clip_value`` must then keep
        their defaults, ValueError otherwise), ``lr``, ``momentum``, ``nesterov``,
        ``weight_decay``, ``schedule`` (``"cosine"`` anneals to 0 over the run, ``"step"`` x0.1 after each
        third), ``clip_value``, ``seed`` (batch order, augmentation, sampled paths, and the evaluation
        generators ``default_rng([seed, epoch, salt])``), ``split_seed``, ``val_fraction`` (0 skips
        validation), ``augment`` / ``augment_pad`` (:func:`sbnnumba.datasets.augment_flip_crop`),
        ``data_init`` (not when resuming), ``eval_samples``, ``train_eval_size``, ``eval_batch_size``,
        ``max_time`` (stops after the first epoch that ends past it), ``plots``, ``progress`` (bars),
        ``verbose`` (epoch and resume lines at INFO on the logger ``sbnnumba.training.fit``).
    out : str or os.PathLike, optional
        Output directory for the checkpoint, history and plots; None writes nothing.
    resume : bool
        Continue from ``out/checkpoint.npz`` (parameters, optimizer and generator state, history). The
        settings that determine the trajectory must be unchanged (ValueError otherwise); the result is
        bitwise identical to an uninterrupted run (at any thread count with OpenBLAS: ``docs/robustness.md``).
        Without ``resume`` an existing checkpoint in ``out``
        is an error (FileExistsError).
    metadata : dict, optional
        JSON-able extra information stored in the config (e.g. command-line settings).
    comm : sbnnumba.distributed.Communicator, optional
        Data-parallel training with the ranks of ``comm`` (every rank calls ``fit`` with the same
        arguments): :class:`sbnnumba.distributed.DistributedTrainer`, see ``docs/cluster.md``. An error
        on one rank ends the whole job (``MPI_Abort``) with a message naming the rank, except
        :class:`TrainingDiverged`, which every rank raises together.
    **options
        Fields of :class:`FitConfig` overriding ``config``'s (``fit(net, data, epochs=3, lr=1e-2)``).

    Returns
    -------
    FitResult

    Raises
    ------
    TrainingDiverged
        At the first non-finite loss or gradient (or parameter after an epoch); ``out/checkpoint.npz``
        keeps the last completed epoch.
    CheckpointError, FileNotFoundError, FileExistsError, ValueError, TypeError
        Bad checkpoint, missing checkpoint with ``resume``, existing one without, changed settings,
        invalid options, or data that does not fit the network (inputs of another shape or with NaN, labels
        out of range or not one per example: checked before anything changes).
    """
    config = FitConfig() if config is None else config
    if options:
        if not isinstance(config, FitConfig):
            raise TypeError(f"config: expected a FitConfig, got {type(config).__name__}")
        config = config.replace(**options)
    if comm is None:
        return Trainer(net, data, config, out=out, resume=resume, metadata=metadata).run()
    from ..distributed import DistributedTrainer, ReplicaMismatch, fail_fast  # above training: imported on use

    with fail_fast(comm, collective=(TrainingDiverged, ReplicaMismatch)):
        return DistributedTrainer(net, data, config, comm=comm, out=out, resume=resume, metadata=metadata).run()
