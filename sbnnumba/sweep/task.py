"""One run of a sweep, as executed on a worker: :func:`execute` of a :class:`RunTask`.

A configuration's options are split by name (:func:`split_options`): ``arch`` and that architecture's
options build the network (:func:`sbnnumba.architectures.build`, initialization seeded with the
run's ``init_seed``); ``data`` (``"embedded"``, ``"auto"`` or a directory of Fashion-MNIST IDX files)
and ``train_subset`` choose the data; every other name must be a field of
:class:`sbnnumba.training.FitConfig` (``estimator``, ``lr``, ``epochs``, ``batch_size``, ...), except
those the sweep sets itself (:data:`SWEEP_OWN`); ``seed`` is the replicate label (the fit seed is
derived, see :mod:`sbnnumba.sweep.grid`).

Files in the run directory (each written atomically):

* ``checkpoint.npz``, ``history.csv``, ``history.json``: written by ``fit`` after every epoch, so a
  run whose worker dies loses only its unfinished epoch and the next attempt resumes it
  (``fit(..., resume=True)``: bit-identical to an uninterrupted run);
* ``status.json``: ``{"state": "running" | "finished" | "failed", "session", "host", "pid", ...}``,
  what the sweep's progress display counts;
* ``result.json``: the run's record (:func:`execute`'s return value) once it finished, with the test
  metrics of the trained network (``evaluate`` with ``eval_samples`` samples);
* ``error.txt``: the traceback of a failed run.
"""
from __future__ import annotations

import inspect
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import architectures, datasets
from ..fileio import atomic_write_text
from ..runtime import limited_threads
from ..training import CHECKPOINT_NAME, FitConfig, evaluate, fit
from ..training.config import field_names

__all__ = ["SWEEP_OWN", "DATA_OPTIONS", "RunTask", "split_options", "fit_names", "load_named_data", "execute",
           "read_json", "requested_epochs", "finished_record", "RESULT", "STATUS"]

RESULT = "result.json"
STATUS = "status.json"
ERROR = "error.txt"
#: FitConfig fields the sweep sets itself for every run (``seed`` is the replicate label of a configuration).
SWEEP_OWN = ("seed", "progress")
#: options that choose the data rather than the network or the training.
DATA_OPTIONS = ("data", "train_subset")
_ARCH_FIXED = ("input_shape", "n_classes", "rng", "dtype")  # set from the data and the derived seed
_TEST_SALT = 0x7E57  # test-evaluation generator: default_rng([fit_seed, _TEST_SALT]), as the train command


def fit_names() -> list[str]:
    """The :class:`~sbnnumba.training.FitConfig` fields a configuration may set.

    Returns
    -------
    list of str
        Every field but :data:`SWEEP_OWN`.
    """
    return [name for name in field_names() if name not in SWEEP_OWN]


def split_options(options: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a configuration into ``(arch, arch_options, data_options, fit_options)``; the fit options are
    checked by building a :class:`~sbnnumba.training.FitConfig` from them.

    Parameters
    ----------
    options : dict
        The configuration (``arch`` defaults to ``"mlp"``; ``seed`` is the replicate label and dropped).

    Returns
    -------
    arch : str
        Architecture name.
    arch_options : dict
        Keywords of the architecture's factory (an int given for a sequence option becomes a one-entry list).
    data_options : dict
        ``data`` and ``train_subset`` (:func:`load_named_data`).
    fit_options : dict
        :class:`~sbnnumba.training.FitConfig` fields.

    Raises
    ------
    ValueError, TypeError
        An unknown architecture, an option that is none of the architecture's, the data's and fit's (the
        message lists the accepted names), or an invalid fit option value.
    """
    arch = options.get("arch", "mlp")
    if arch not in architectures.ARCHITECTURES:
        raise ValueError(f"arch: expected one of {sorted(architectures.ARCHITECTURES)}, got {arch!r}")
    arch_params = {k: p for k, p in inspect.signature(architectures.ARCHITECTURES[arch]).parameters.items()
                   if k not in _ARCH_FIXED}
    arch_names = list(arch_params)
    fit_fields = fit_names()
    arch_opts, data_opts, fit_opts = {}, {}, {}
    for name, value in options.items():
        if name in ("arch", "seed"):
            continue
        if name in arch_params:  # a sequence option given one int (the grid's "hidden=64") is one entry
            listy = isinstance(arch_params[name].default, (tuple, list)) and isinstance(value, int)
            arch_opts[name] = [value] if listy and not isinstance(value, bool) else value
        elif name in DATA_OPTIONS:
            data_opts[name] = value
        elif name in fit_fields:
            fit_opts[name] = value
        else:
            raise ValueError(f"options: expected names of the {arch!r} architecture {arch_names}, the data "
                             f"{list(DATA_OPTIONS)} or fit {sorted(fit_fields)}, got {name!r}")
    FitConfig(**fit_opts)  # every value checked here, before any run starts
    return arch, arch_opts, data_opts, fit_opts


def load_named_data(data: str = "embedded", train_subset: int | None = None) -> datasets.Dataset:
    """A Dataset by name: ``"embedded"`` (the packaged subset), ``"auto"`` (full Fashion-MNIST if found,
    else the subset) or a directory of IDX files.

    Parameters
    ----------
    data : str
        ``"embedded"``, ``"auto"`` or a directory.
    train_subset : int, optional
        Keep that many random training examples (seed 1, as the ``train`` command); the test set is kept.

    Returns
    -------
    sbnnumba.datasets.Dataset

    Raises
    ------
    ValueError
        For another name or a missing directory, or a ``train_subset`` that is not a positive integer.
    """
    if data == "embedded":
        ds = datasets.load_fashion_mnist(embedded="force", verbose=False)
    elif data == "auto":
        ds = datasets.load_fashion_mnist(None, embedded="auto", verbose=False)
    elif isinstance(data, str) and os.path.isdir(data):
        ds = datasets.load_fashion_mnist(data, embedded="never", verbose=False)
    else:
        raise ValueError(f"data: expected 'embedded', 'auto' or an existing directory, got {data!r}")
    if train_subset is None or train_subset >= ds.y_train.shape[0]:
        return ds
    if isinstance(train_subset, bool) or not isinstance(train_subset, int) or train_subset < 1:
        raise ValueError(f"train_subset: expected a positive integer or None, got {train_subset!r}")
    idx = np.sort(np.random.default_rng(1).choice(ds.y_train.shape[0], size=train_subset, replace=False))
    return datasets.Dataset(ds.x_train[idx], ds.y_train[idx], ds.x_test, ds.y_test, name=ds.name, source=ds.source,
                            classes=ds.classes)


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs for one run (picklable; sent to the executor).

    Attributes
    ----------
    key : str
        The configuration's key (:func:`sbnnumba.sweep.grid.config_key`).
    options : dict
        The configuration.
    run_dir : str
        Its own output directory.
    init_seed, fit_seed : int
        Derived seeds (:func:`sbnnumba.sweep.grid.derive_seeds`).
    threads : int or None
        Numba and BLAS threads for the run (None: leave the worker's setting).
    session : str
        Identifier of the sweep call, written into ``status.json``.
    data : Dataset, optional
        Explicit data sent with the task; None loads ``options["data"]`` on the worker.
    """

    key: str
    options: dict
    run_dir: str
    init_seed: int
    fit_seed: int
    threads: int | None
    session: str
    data: object = None


def read_json(path: str) -> Any:
    """The JSON document at ``path``, or None if it is missing or unreadable (being replaced).

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    object or None
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_status(task, state, **extra):
    doc = {"state": state, "session": task.session, "key": task.key, "host": socket.gethostname(),
           "pid": os.getpid(), "time": time.time(), **extra}
    atomic_write_text(os.path.join(task.run_dir, STATUS), json.dumps(doc))


def requested_epochs(options: dict[str, Any]) -> int:
    """The number of epochs a configuration asks for (fit's default if it does not say).

    Parameters
    ----------
    options : dict
        The configuration.

    Returns
    -------
    int
    """
    return int(options.get("epochs", FitConfig().epochs))


def finished_record(run_dir: str, epochs: int) -> dict[str, Any] | None:
    """The stored ``result.json`` of a run that finished at least ``epochs`` epochs, else None.

    Parameters
    ----------
    run_dir : str
        The run's directory.
    epochs : int
        Epochs the configuration asks for.

    Returns
    -------
    dict or None
    """
    record = read_json(os.path.join(run_dir, RESULT))
    if record is None or record.get("status") != "finished" or record.get("epochs_done", 0) < epochs:
        return None
    return record


def _train(task):
    """Build, train (resuming a checkpoint if the run directory holds one) and test one configuration."""
    arch, arch_opts, data_opts, fit_opts = split_options(task.options)
    ds = task.data if task.data is not None else load_named_data(**data_opts)
    resume = os.path.isfile(os.path.join(task.run_dir, CHECKPOINT_NAME))
    net = architectures.build(arch, ds.x_train.shape[1:], ds.n_classes, rng=task.init_seed, **arch_opts)
    # per-epoch PNGs cost more than a small run's epoch: off unless asked for; the sweep draws its own figures
    config = FitConfig(**{"plots": False, **fit_opts, "seed": task.fit_seed, "progress": False})
    res = fit(net, ds, config, out=task.run_dir, resume=resume,
              metadata={"sweep_key": task.key, "sweep_options": task.options, "init_seed": task.init_seed})
    record = {"key": task.key, "status": "finished", "action": "resumed" if resume else "trained",
              "epochs_done": int(res.epochs_done), "stopped": res.stopped}
    if res.stopped == "time budget":
        record["status"] = "incomplete"
    last = res.history[-1] if res.history else {}
    record.update({k: last[k] for k in ("train_loss", "val_loss", "val_acc1", "val_eacc", "val_det_acc") if k in last})
    if ds.x_test.shape[0]:
        m = evaluate(net, ds.x_test, ds.y_test, samples=config.eval_samples,
                     rng=np.random.default_rng([task.fit_seed, _TEST_SALT]), entropy=False)
        record.update(test_loss=m["loss"], test_acc1=m["acc1"], test_eacc=m["eacc"], test_det_acc=m["det_acc"])
    return record


def execute(task: RunTask) -> dict[str, Any]:
    """Run one configuration on this worker; return its record (a dict), never raise for a failing run.

    A run whose ``result.json`` says it finished the requested epochs is not trained again
    (``action = "skipped"``). An exception inside the run is caught and returned as
    ``{"status": "failed", "error": "Type: message", "traceback": ...}``, so one failing configuration
    does not stop the others; only the death of the worker itself reaches the sweep as an exception.

    Parameters
    ----------
    task : RunTask
        The run.

    Returns
    -------
    dict
        ``key``, ``status`` (``"finished"``, ``"incomplete"`` or ``"failed"``), ``action``, ``epochs_done``,
        the last validation and the test metrics, ``seconds``, seeds, host, pid and threads (``error`` and
        ``traceback`` for a failed run).
    """
    t0 = time.perf_counter()
    os.makedirs(task.run_dir, exist_ok=True)
    done = finished_record(task.run_dir, requested_epochs(task.options))
    if done is not None:
        return {**done, "action": "skipped"}
    with limited_threads(task.threads):
        _write_status(task, "running", threads=task.threads)
        try:
            record = _train(task)
        except Exception as exc:  # one failing configuration must not stop the sweep
            record = {"key": task.key, "status": "failed", "action": "failed",
                      "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
    record.update(seconds=time.perf_counter() - t0, init_seed=task.init_seed, fit_seed=task.fit_seed,
                  host=socket.gethostname(), pid=os.getpid(), threads=task.threads)
    if record["status"] == "finished":
        atomic_write_text(os.path.join(task.run_dir, RESULT), json.dumps(record, indent=1))
    elif record["status"] == "failed":  # the table keeps the message, the run directory the traceback
        atomic_write_text(os.path.join(task.run_dir, ERROR), record["traceback"])
    _write_status(task, record["status"])
    return record
