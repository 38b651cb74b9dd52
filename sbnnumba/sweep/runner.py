"""``run``: train a list of configurations on an executor and return one table (see :mod:`sbnnumba.sweep`)."""
from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import architectures, datasets
from ..training import CHECKPOINT_NAME, HISTORY_JSON, CheckpointError, FitConfig, fit, load_checkpoint
from . import plots as sweep_plots
from .executors import local_executor, plan_workers, usable_cores
from .grid import config_key, derive_seeds, run_dir_name
from .table import write_table
from .task import STATUS, RunTask, execute, finished_record, load_named_data, read_json, requested_epochs, split_options

__all__ = ["SweepResult", "run", "warm_numba", "RUNS_DIR", "WARM_IGNORED"]

RUNS_DIR = "runs"
#: Options that never select other compiled code (values, not types): configurations differing only in
#: these share one warm-up run.
WARM_IGNORED = ("lr", "seed", "epochs", "momentum", "weight_decay", "clip_value", "split_seed", "val_fraction",
                "train_subset", "eval_samples", "train_eval_size", "max_time", "plots")
#: Warm-up keys already run in this process: its compiled kernels stay loaded and the on-disk cache stays
#: written, so a second sweep (or a caller that warmed first) does not pay the warm-up runs again.
_WARMED: set[tuple] = set()


@dataclass
class SweepResult:
    """What :func:`run` returns.

    Attributes
    ----------
    rows : list of dict
        One row per configuration, in the order given (columns: :mod:`sbnnumba.sweep.table`).
    out : str
        The sweep directory.
    files : dict
        ``table_csv``, ``table_json``, ``accuracy_png``, ``curves_png`` (paths).
    seconds : float
        Wall time of the call.
    workers : int or None
        Local workers used (None for a given executor).
    threads : int or None
        Threads per run.
    """

    rows: list
    out: str
    files: dict = field(default_factory=dict)
    seconds: float = 0.0
    workers: int | None = None
    threads: int | None = None

    def keys(self, status: str) -> list[str]:
        """Keys of the rows with ``status`` (``"finished"``, ``"incomplete"``, ``"failed"``).

        Parameters
        ----------
        status : str
            The status to select.

        Returns
        -------
        list of str
        """
        return [r["key"] for r in self.rows if r["status"] == status]


def _tasks(configs, out, seed, threads, data, session):
    if not isinstance(configs, (list, tuple)) or not configs:
        raise ValueError(f"configs: expected a non-empty list of option dicts, got {configs!r}")
    tasks, seen = [], {}
    for i, options in enumerate(configs):
        if not isinstance(options, dict):
            raise TypeError(f"configs[{i}]: expected a dict of options, got {type(options).__name__}")
        split_options(options)  # unknown names fail here, before anything runs
        if data is not None and "data" in options:
            raise ValueError(f"configs[{i}]: expected no 'data' option when data is passed to run, got "
                             f"{options['data']!r}")
        key = config_key(options)
        if key in seen:
            raise ValueError(f"configs: expected distinct configurations, got {key!r} at {seen[key]} and {i}")
        seen[key] = i
        init_seed, fit_seed = derive_seeds(seed, key)
        tasks.append(RunTask(key, dict(options), os.path.join(out, RUNS_DIR, run_dir_name(key)), init_seed, fit_seed,
                             threads, session, data))
    return tasks


def warm_numba(configs: Sequence[dict[str, Any]], data: datasets.Dataset | None = None) -> None:
    """Compile (or load from the cache) every kernel the configurations need, once, in this process.

    One tiny run per distinct configuration up to :data:`WARM_IGNORED` (one epoch on two batches, two
    evaluation samples on eight images, nothing written), so that the workers started next load the
    kernels from Numba's on-disk cache instead of compiling them at the same time. A warm-up that fails
    is ignored: the run itself reports the error. Each distinct configuration is warmed once per process.

    Parameters
    ----------
    configs : list of dict
        The sweep's configurations.
    data : Dataset, optional
        Explicit data of the sweep (None: each configuration's named data, loaded once per name).
    """
    loaded: dict[str, datasets.Dataset] = {}
    # given data selects compiled code by its arrays' types (named data is part of the options)
    data_types = None if data is None else (data.x_train.dtype.str, data.x_train.ndim)
    for options in configs:
        wkey = (config_key({k: v for k, v in options.items() if k not in WARM_IGNORED}), data_types)
        if wkey in _WARMED:
            continue
        _WARMED.add(wkey)
        try:
            arch, arch_opts, data_opts, fit_opts = split_options(options)
            dkey = config_key(data_opts)
            ds = data if data is not None else loaded.setdefault(dkey, load_named_data(**data_opts))
            n = 2 * int(fit_opts.get("batch_size", 64))
            fit_opts.update(epochs=1, eval_samples=2, train_eval_size=0, max_time=None, plots=False)
            small = (ds.x_train[:n], ds.y_train[:n], ds.x_train[n:n + 8], ds.y_train[n:n + 8])
            net = architectures.build(arch, ds.x_train.shape[1:], ds.n_classes, rng=0, **arch_opts)
            fit(net, small, FitConfig(**fit_opts, seed=0, progress=False, verbose=False))
        except Exception:  # noqa: BLE001 - best effort: the run reports its own error
            continue


def _row(task, record):
    epochs = requested_epochs(task.options)
    row = {"key": task.key, "status": "incomplete", "action": "not run", "epochs_done": 0, "epochs": epochs,
           "options": task.options, "init_seed": task.init_seed, "fit_seed": task.fit_seed, "run_dir": task.run_dir}
    row.update(record or {})
    ckpt = os.path.join(task.run_dir, CHECKPOINT_NAME)
    if row["status"] != "finished" and os.path.isfile(ckpt):
        try:  # what survived: the last completed epoch
            row["epochs_done"] = load_checkpoint(ckpt).epoch
        except (CheckpointError, FileNotFoundError):
            pass
    row.pop("traceback", None)
    return row


class _Progress:
    """One line ``finished/running/failed/waiting`` on stderr whenever the counts change."""

    def __init__(self, total, enabled):
        self.total, self.enabled, self.last, self.t0 = total, enabled, None, time.perf_counter()

    def show(self, finished, skipped, running, failed, lost):
        counts = (finished, skipped, running, failed, lost)
        if not self.enabled or counts == self.last:
            return
        self.last = counts
        waiting = self.total - finished - running - failed - lost
        text = (f"sweep: {finished}/{self.total} finished" + (f" ({skipped} skipped)" if skipped else "")
                + f", {running} running, {failed} failed" + (f", {lost} incomplete" if lost else "")
                + f", {waiting} waiting [{time.perf_counter() - self.t0:.1f} s]")
        print(text, file=sys.stderr, flush=True)


def _running(pending, session):
    """How many of the pending tasks' run directories say they are running in this session."""
    n = 0
    for task in pending:
        status = read_json(os.path.join(task.run_dir, STATUS))
        n += bool(status and status.get("state") == "running" and status.get("session") == session)
    return n


def _collect(executor, todo, records, progress, skipped, poll):
    """Submit the tasks, wait for them with a progress display; fill ``records`` (key -> record)."""
    futures = {executor.submit(execute, task): task for task in todo}
    pending = set(futures)
    counts = {"finished": skipped, "failed": 0, "lost": 0}
    try:
        while pending:
            done, pending = cf.wait(pending, timeout=poll, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                task = futures[fut]
                try:
                    record = fut.result()
                except Exception as exc:  # the worker died (or the executor failed): only this run is lost
                    record = {"status": "incomplete", "action": "lost", "error": f"{type(exc).__name__}: {exc}"}
                records[task.key] = record
                counts[{"finished": "finished", "failed": "failed"}.get(record["status"], "lost")] += 1
            progress.show(counts["finished"], skipped, _running([futures[f] for f in pending], todo[0].session),
                          counts["failed"], counts["lost"])
    finally:
        for fut in pending:
            fut.cancel()


def _plan_local(todo, workers, threads):
    """Workers and threads of the local pool (``workers x threads <= cores``); the tasks with those threads."""
    workers, planned = plan_workers(workers, len(todo))
    threads = planned if threads is None else threads
    if workers * threads > usable_cores():
        raise ValueError(f"threads: expected workers x threads <= {usable_cores()} (the cores), got "
                         f"{workers} x {threads}")
    return [RunTask(**{**t.__dict__, "threads": threads}) for t in todo], workers, threads


def run(configs: Sequence[dict[str, Any]], executor: cf.Executor | None = None, out: str | os.PathLike = "sweep", *,
        seed: int = 0, workers: int | None = None, threads: int | None = None, data: datasets.Dataset | None = None,
        warm: bool = True, progress: bool = True, plots: bool = True, poll: float = 0.5) -> SweepResult:
    """Train every configuration, each in its own directory, on an executor; write and return the table.

    Parameters
    ----------
    configs : list of dict
        Configurations: options of the architecture (``arch``, ``hidden``, ``noise``, ...), the data
        (``data``, ``train_subset``) and :class:`sbnnumba.training.FitConfig` (``estimator``, ``lr``, ``epochs``, ...);
        ``seed`` is a replicate label. Build grids with :func:`sbnnumba.sweep.expand`.
    executor : concurrent.futures.Executor, optional
        Where the runs execute (e.g. ``distributed.Client(...).get_executor()``); it must reach ``out``
        (a shared filesystem). None: a local process pool of ``workers`` processes, shut down on return.
    out : str or os.PathLike
        The sweep directory: ``runs/<key>/`` per configuration, ``sweep.csv``, ``sweep.json``,
        ``final_accuracy.png``, ``learning_curves.png``.
    seed : int
        The sweep seed; each configuration's seeds are derived from it and its key
        (:func:`sbnnumba.sweep.grid.derive_seeds`), whatever the scheduling or the number of workers.
    workers : int, optional
        Local pool size (default: the cores, at most one per run); with ``executor`` it is an error.
    threads : int, optional
        Numba/BLAS threads per run. Local pool: ``cores // workers`` (so ``workers x threads <= cores``);
        a given executor: default None leaves its workers' settings.
    data : sbnnumba.datasets.Dataset, optional
        Data sent with every task instead of the ``data`` option loaded on the worker.
    warm : bool
        Compile the kernels once in this process before fanning out (:func:`warm_numba`).
    progress : bool
        Print the finished/running/failed counts on stderr whenever they change.
    plots : bool
        Write the two figures (:mod:`sbnnumba.sweep.plots`).
    poll : float
        Seconds between progress updates.

    Returns
    -------
    SweepResult
        ``rows`` (``status`` finished / incomplete / failed per configuration), ``files``, ``seconds``.
        Finished runs are skipped by a rerun, incomplete ones resumed from their last epoch, failed ones
        tried again.

    Raises
    ------
    ValueError, TypeError
        Invalid configurations (unknown option, duplicate key), workers with an executor or more workers
        than cores.
    """
    t0 = time.perf_counter()
    if data is not None and not isinstance(data, datasets.Dataset):
        raise TypeError(f"data: expected an sbnnumba.datasets.Dataset or None, got {type(data).__name__}")
    if executor is not None and not isinstance(executor, cf.Executor):
        raise TypeError(f"executor: expected a concurrent.futures.Executor or None, got {type(executor).__name__}")
    if executor is not None and workers is not None:
        raise ValueError("workers: expected None when an executor is given (size the executor instead)")
    out = os.fspath(out)
    session = uuid.uuid4().hex
    tasks = _tasks(configs, out, seed, threads, data, session)
    records = {t.key: {**rec, "action": "skipped"} for t in tasks
               if (rec := finished_record(t.run_dir, requested_epochs(t.options))) is not None}
    todo = [t for t in tasks if t.key not in records]
    own = None
    if executor is None and todo:
        todo, workers, threads = _plan_local(todo, workers, threads)
        own = executor = local_executor(workers)
        own.start()  # the workers' interpreters start while this process warms the Numba cache
    display = _Progress(len(tasks), progress)
    try:
        if todo:
            if warm:
                warm_numba([t.options for t in todo], data)
            _collect(executor, todo, records, display, len(records), poll)
    finally:
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
        rows = [_row(t, records.get(t.key)) for t in tasks]
        result = SweepResult(rows, out, seconds=time.perf_counter() - t0, workers=workers if own else None,
                             threads=threads)
        _write_outputs(result, tasks, seed, plots)
    display.show(len(result.keys("finished")), len(tasks) - len(todo), 0, len(result.keys("failed")),
                  len(result.keys("incomplete")))
    return result


def _write_outputs(result, tasks, seed, plots):
    meta = {"seed": seed, "workers": result.workers, "threads": result.threads, "seconds": result.seconds,
            "finished": len(result.keys("finished")), "incomplete": len(result.keys("incomplete")),
            "failed": len(result.keys("failed"))}
    result.files["table_csv"], result.files["table_json"] = write_table(result.out, result.rows, meta)
    if not plots:
        return
    histories = {t.key: (read_json(os.path.join(t.run_dir, HISTORY_JSON)) or {}).get("history", [])
                 for t in tasks}
    result.files["accuracy_png"] = sweep_plots.plot_final_accuracy(
        result.rows, os.path.join(result.out, "final_accuracy.png"))
    result.files["curves_png"] = sweep_plots.plot_learning_curves(
        result.rows, histories, os.path.join(result.out, "learning_curves.png"))
