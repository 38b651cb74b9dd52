"""The per-method learning-rate search of the PSA paper's protocol (``--lr auto``): :func:`search_lr`.

Bounded scalar minimization (``scipy.optimize.minimize_scalar(method="bounded")``) over ``log10(lr)`` in
``bounds`` (default ``[-6, 0]``), at most ``max_trials`` (default 10) trials; each trial trains
``trial_epochs`` (default 5) epochs from the same initial parameters and the same seed (common random
numbers) and is scored by the mean running training loss; a diverging trial scores ``inf`` (a large
finite penalty, growing with the lr, for the minimizer). Each trial is logged (INFO) to the logger
``sbnnumba.training.lr_search``.

Parallel trials (``method="grid"``): Brent's method proposes one point at a time from the scores so
far, so its trials cannot run side by side. The batched grid refinement (:func:`grid_rounds`) proposes
``batch`` points per round: round 1 spreads them evenly over ``[lo, hi]`` (both ends included), each
later round puts ``batch`` evenly spaced points strictly inside the bracket ``[x_{k-1}, x_{k+1}]``
around the best point ``x_k`` so far, until ``max_trials`` trials are spent or the spacing falls below
``xatol``. A round's trials are independent (each restores the same start), so they run on any
:class:`concurrent.futures.Executor` at once; the points, the scores and the chosen optimum are those of
the same search run one trial after another (``executor=None``).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import optim
from ..network import Network
from ..runtime import limited_threads
from .checkpoint import jsonable
from .config import FitConfig, Integer, Number, Optional
from .data import as_float, split_data
from .fit import TrainingDiverged, fit

if TYPE_CHECKING:
    from ..distributed import Communicator

log = logging.getLogger(__name__)

#: fit() options a learning-rate search sets itself (per trial) and so does not accept.
SEARCH_OWN = ("lr", "epochs", "out", "resume", "max_time", "plots", "progress", "verbose", "train_eval_size",
              "eval_samples", "eval_batch_size", "metadata")
_DIVERGED_PENALTY = 1e6  # objective of a diverged trial (times 1..2, growing with log10 lr)
METHODS = ("bounded", "grid")
_SUBSET_SALT = 0x1A5E


@dataclass
class LRTrial:
    """One trial of :func:`search_lr`.

    Attributes
    ----------
    trial : int
        1-based index.
    lr, log10_lr : float
    score : float
        Mean running training loss over the trial's epochs; ``inf`` if the trial diverged.
    status : str
        ``"ok"`` or ``"diverged"`` (non-finite loss / gradient / parameters).
    epochs : int
        Completed epochs (fewer than ``trial_epochs`` if it diverged).
    seconds : float
    error : str or None
        The divergence message.
    """

    trial: int
    lr: float
    log10_lr: float
    score: float
    status: str
    epochs: int
    seconds: float
    error: str | None = None

    def as_dict(self):
        """The trial as a JSON-able dict (an infinite score as None).

        Returns
        -------
        dict
        """
        d = dict(self.__dict__)
        d["score"] = self.score if math.isfinite(self.score) else None  # JSON has no inf
        return d


@dataclass
class LRSearchResult:
    """What :func:`search_lr` returns.

    Attributes
    ----------
    lr : float
        The learning rate of the best (lowest-score) trial.
    score : float
        Its score.
    trials : list of LRTrial
        In the order run.
    settings : dict
        Bounds, max_trials, trial_epochs, trial_subset, estimator, xatol.
    seconds : float
        Wall time of the whole search.
    """

    lr: float
    score: float
    trials: list
    settings: dict
    seconds: float

    @property
    def table(self):
        """``[(lr, score), ...]`` of the trials in the order run."""
        return [(t.lr, t.score) for t in self.trials]

    def as_dict(self):
        """JSON-able record (stored in the run's config as ``metadata["lr_search"]`` by the CLI).

        Returns
        -------
        dict
            ``lr``, ``score``, ``seconds``, ``settings`` and ``trials`` (each :meth:`LRTrial.as_dict`).
        """
        return jsonable({"lr": self.lr, "score": self.score, "seconds": self.seconds, "settings": self.settings,
                          "trials": [t.as_dict() for t in self.trials]})


def _snapshot(net):
    """Copies of the parameters and the normalization statistics of ``net``."""
    params = {k: p.copy() for k, p in net.params.items()}
    running = [{m: None if st is None else (st[0].copy(), st[1].copy()) for m, st in n.running.items()}
               for n in net.normalizations()]
    return params, running


def _restore(net, snap):
    params, running = snap
    for k, p in net.params.items():
        p[...] = params[k]
    for n, saved in zip(net.normalizations(), running):
        n.running = {m: None if st is None else (st[0].copy(), st[1].copy()) for m, st in saved.items()}


def _search_settings(bounds, max_trials, trial_epochs, trial_subset, xatol, fit_options):
    """Check the search's own arguments; returns ``(lo, hi)``."""
    bad = sorted(set(fit_options) & set(SEARCH_OWN))
    if bad:
        raise TypeError(f"search_lr: {bad} are set by the search itself, not accepted as fit options")
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds: expected (lo, hi) of log10(lr), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds: expected finite log10(lr) bounds with lo < hi, got {bounds!r}")
    Integer(1)("max_trials", max_trials)
    Integer(1)("trial_epochs", trial_epochs)
    Optional(Integer(1))("trial_subset", trial_subset)
    Number(positive=True)("xatol", xatol)
    return lo, hi


def _search_config(config, estimator, fit_options):
    """``config`` (default ``FitConfig()``) with ``estimator`` and ``fit_options``; the optimizer by name only."""
    config = FitConfig() if config is None else config
    if not isinstance(config, FitConfig):
        raise TypeError(f"config: expected a FitConfig, got {type(config).__name__}")
    if estimator is not None:
        fit_options = {**fit_options, "estimator": estimator}
    config = config.replace(**fit_options)
    if isinstance(config.optimizer, optim.Optimizer):
        raise ValueError("optimizer: pass the optimizer by name; an Optimizer instance would carry its state "
                         "from one trial to the next")
    return config


def _training_part(data, config, trial_subset):
    """The training part of ``data`` (split as :func:`fit` would) and the trials' data: that part, or a fixed
    random subset of it, as a 4-tuple with an empty validation part."""
    x_tr, y_tr, _, _, _ = split_data(data, config.val_fraction, config.split_seed)
    if x_tr.shape[0] == 0:
        raise ValueError("data: no training examples")
    x_sub, y_sub = x_tr, y_tr
    if trial_subset is not None and trial_subset < x_tr.shape[0]:
        idx = np.sort(np.random.default_rng([config.split_seed, _SUBSET_SALT]).choice(
            x_tr.shape[0], size=int(trial_subset), replace=False))
        x_sub, y_sub = x_tr[idx], y_tr[idx]
    return x_tr, (x_sub, y_sub, x_sub[:0], y_sub[:0])


class _Budget(Exception):
    """The minimizer asked for more than ``max_trials`` trials."""


def _trial(net, data, config, n, log_lr, comm=None):
    """Trial ``n``: train ``net`` (at the common start) with ``lr = 10 ** log_lr``; its :class:`LRTrial`."""
    lr = 10.0 ** log_lr
    t0 = time.perf_counter()
    try:
        res = fit(net, data, config, lr=lr, comm=comm)
        return LRTrial(n, lr, log_lr, float(np.mean([r["train_loss"] for r in res.history])), "ok",
                       len(res.history), time.perf_counter() - t0)
    except TrainingDiverged as exc:
        return LRTrial(n, lr, log_lr, math.inf, "diverged", (exc.epoch or 1) - 1, time.perf_counter() - t0,
                       error=str(exc))


def _trial_task(net, data, config, n, log_lr, threads):
    """:func:`_trial` on an executor's worker (``net``: its own copy), with ``threads`` Numba/BLAS threads."""
    with limited_threads(threads):
        return _trial(net, data, config, n, log_lr)


def _log_trial(trial, estimator, max_trials):
    score = f"score {trial.score:.5g}" if trial.status == "ok" else f"diverged at epoch {trial.epochs + 1}"
    log.info(f"lr search [{estimator}] trial {trial.trial}/{max_trials}: lr {trial.lr:.3e} "
             f"(log10 {trial.log10_lr:+.3f}): {score} ({trial.seconds:.1f} s)")


class _Objective:
    """``log10(lr) -> score`` for the minimizer: one training per new point, from the same start."""

    def __init__(self, net, data, config, start, lo, hi, max_trials, comm=None):
        self.net, self.data, self.config, self.start, self.comm = net, data, config, start, comm
        self.lo, self.hi, self.max_trials = lo, hi, max_trials
        self.trials, self.cache = [], {}

    def __call__(self, log_lr):
        log_lr = float(log_lr)
        if log_lr in self.cache:
            return self.cache[log_lr]
        if len(self.trials) >= self.max_trials:
            raise _Budget
        _restore(self.net, self.start)
        trial = _trial(self.net, self.data, self.config, len(self.trials) + 1, log_lr, self.comm)
        value = trial.score if trial.status == "ok" else \
            _DIVERGED_PENALTY * (1.0 + (log_lr - self.lo) / (self.hi - self.lo))
        self.trials.append(trial)
        self.cache[log_lr] = value
        _log_trial(trial, self.config.estimator, self.max_trials)
        return value


def grid_rounds(evaluate, lo, hi, max_trials, batch, xatol):
    """Batched grid refinement over ``[lo, hi]`` (see the module docstring); returns ``{x: score}``.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(points) -> scores`` for one round's new points (a list of floats, ascending); a
        diverged trial's score is ``inf``.
    lo, hi : float
        Bounds, ``lo < hi``.
    max_trials : int >= 1
        Most points evaluated in all.
    batch : int >= 2
        Points per round (the last round may have fewer, to stay within ``max_trials``).
    xatol : float > 0
        Stop once a round's spacing is below it.

    Returns
    -------
    dict float -> float
        Every evaluated point and its score, in evaluation order.

    Notes
    -----
    Ties between equal scores go to the point evaluated first, as with the sequential search's trial
    order, so the optimum depends only on the scores.
    """
    scores, order = {}, []
    points = list(np.linspace(lo, hi, min(batch, max_trials))) if max_trials > 1 else [(lo + hi) / 2]
    while points:
        for x, score in zip(points, evaluate(points)):
            scores[x] = float(score)
            order.append(x)
        xs = sorted(scores)
        best = min(order, key=lambda x: (scores[x], order.index(x)))
        k = xs.index(best)
        a, b = xs[max(k - 1, 0)], xs[min(k + 1, len(xs) - 1)]
        n = min(batch, max_trials - len(scores))
        if n < 1 or (b - a) / (n + 1) < xatol:
            break
        points = _inner_points(a, b, n, xs)
    return {x: scores[x] for x in order}


def _inner_points(a, b, n, scored):
    """``n`` evenly spaced points strictly inside ``(a, b)`` that are not (within 1e-9 of the bracket) already
    ``scored``: ``n`` divisions, or ``n + 1`` when one would repeat a scored point (the bracket's middle)."""
    tol = 1e-9 * (b - a)
    for m in (n, n + 1):
        fresh = [x for x in (a + (b - a) * j / (m + 1) for j in range(1, m + 1))
                 if not any(abs(x - y) <= tol for y in scored)]
        if len(fresh) >= n:
            return [float(x) for x in fresh[:n]]
    return [float(x) for x in fresh]


class _GridTrials:
    """``evaluate(points)`` of :func:`grid_rounds`: one round's trials, serially or on an executor."""

    def __init__(self, net, data, config, start, executor, threads, max_trials, comm=None):
        self.net, self.data, self.config, self.start = net, data, config, start
        self.executor, self.threads, self.max_trials, self.comm = executor, threads, max_trials, comm
        self.trials = []

    def __call__(self, points):
        first = len(self.trials) + 1
        if self.executor is None:
            new = []
            for i, x in enumerate(points):
                _restore(self.net, self.start)
                new.append(_trial(self.net, self.data, self.config, first + i, x, self.comm))
        else:
            _restore(self.net, self.start)
            futures = [self.executor.submit(_trial_task, copy.deepcopy(self.net), self.data, self.config, first + i,
                                            x, self.threads) for i, x in enumerate(points)]
            new = [f.result() for f in futures]
        for trial in new:
            _log_trial(trial, self.config.estimator, self.max_trials)
        self.trials += new
        return [t.score for t in new]


def _method_settings(method, executor, batch, comm):
    """Check ``method``, ``executor`` and ``batch`` (an executor only serves the grid's parallel rounds)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if executor is not None and method != "grid":
        raise ValueError(f"executor: expected None with method {method!r} (it proposes one trial at a time); "
                         "use method='grid' to run trials in parallel")
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor: expected a concurrent.futures.Executor or None, got {type(executor).__name__}")
    if executor is not None and comm is not None:
        raise ValueError("executor: expected None with comm (a data-parallel trial runs on all the ranks)")
    Integer(2)("batch", batch)


def _run_search(method, net, trial_data, trial_config, lo, hi, max_trials, xatol, executor, batch, threads, comm):
    """The trials of one search (every trial from the current parameters of ``net``); returns them in order."""
    from scipy.optimize import minimize_scalar

    start = _snapshot(net)
    if method == "grid":
        objective = _GridTrials(net, trial_data, trial_config, start, executor, threads, max_trials, comm)
        grid_rounds(objective, lo, hi, max_trials, int(batch), float(xatol))
        return objective.trials
    objective = _Objective(net, trial_data, trial_config, start, lo, hi, max_trials, comm)
    try:
        minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                        options={"maxiter": max_trials, "xatol": float(xatol)})
    except _Budget:
        pass
    return objective.trials


def search_lr(net: Network, data: Any, config: FitConfig | None = None, *, estimator: str | None = None,
              bounds: tuple[float, float] = (-6.0, 0.0), max_trials: int = 10, trial_epochs: int = 5,
              trial_subset: int | None = None, xatol: float = 0.05, comm: Communicator | None = None,
              method: str = "bounded", executor: Executor | None = None, batch: int = 4, threads: int | None = None,
              **fit_options: Any) -> LRSearchResult:
    """Choose a constant learning rate for one method: bounded scalar minimization over ``log10(lr)``.

    Every trial restores the same initial parameters, trains ``trial_epochs`` epochs with :func:`fit`
    (same seed, so the same batches and noise draws: common random numbers) and is scored by the mean
    running training loss over its epochs. A trial that diverges (:class:`TrainingDiverged`) scores
    ``inf`` in the table; the minimizer sees a large finite penalty that grows with the lr and the search
    goes on. The minimizer is ``scipy.optimize.minimize_scalar(method="bounded")`` with
    ``maxiter=max_trials`` and ``xatol``; the number of trials never exceeds ``max_trials`` (a point
    proposed twice is not re-run). Each trial is logged at INFO level.

    Parameters
    ----------
    net : Network or callable
        The network to tune (its current parameters are the common initialization; they are restored on
        return, so ``fit(net, ...)`` afterwards starts from the same point), or a zero-argument factory
        returning one (called once).
    data : Dataset, (x, y) or (x_train, y_train, x_val, y_val)
        As for :func:`fit`; split the same way (``val_fraction``, ``split_seed``). Only the training part
        is used; no validation is run during the trials.
    config : FitConfig, optional
        The run's options (default ``FitConfig()``); the search sets the fields of :data:`SEARCH_OWN` itself
        for every trial (its own ``epochs``, ``lr``, no output, no evaluation) and uses the others.
    estimator : str, optional
        The gradient estimator (method) to tune for; default ``config.estimator``.
    bounds : (float, float)
        ``(lo, hi)`` of ``log10(lr)``, ``lo < hi``; default the spec's ``(-6, 0)``.
    max_trials : int >= 1
        Most trials (trainings) run.
    trial_epochs : int >= 1
        Epochs per trial.
    trial_subset : int, optional
        Train the trials on this many training examples (a fixed random subset of the training part,
        drawn with ``split_seed``) to make the search affordable; None uses the whole training part.
    xatol : float > 0
        Absolute tolerance on ``log10(lr)`` at which the minimizer stops early.
    comm : sbnnumba.distributed.Communicator, optional
        Run every trial data-parallel on the ranks of ``comm`` (``fit(..., comm=comm)``); every rank gets
        the same (reduced) scores, so the minimizer proposes the same trials everywhere.
    method : {"bounded", "grid"}
        ``"bounded"``: Brent's bounded minimization, one trial at a time; ``"grid"``: the batched grid
        refinement of :func:`grid_rounds`, whose rounds of ``batch`` trials can run in parallel.
    executor : concurrent.futures.Executor, optional
        ``method="grid"`` only: runs each round's trials at once (each on its own copy of the network);
        the trials, their scores and the optimum are those of ``executor=None`` (one after another here).
    batch : int >= 2
        ``method="grid"``: trials per round (for example the executor's workers).
    threads : int, optional
        Numba/BLAS threads per trial on the executor's workers (None: their setting).
    **fit_options
        :class:`FitConfig` fields overriding ``config``'s for every trial (``batch_size``, ``optimizer`` (a name),
        ``momentum``, ``schedule``, ``seed``, ``val_fraction``, ``data_init``, ...; not those of
        :data:`SEARCH_OWN`). With ``data_init`` (the default), the data-dependent initialization is done
        once on the first ``batch_size`` images of the full training part, exactly as :func:`fit` would,
        and every trial starts from its result.

    Returns
    -------
    LRSearchResult
        ``.lr`` (best trial), ``.score``, ``.trials`` (``.table`` = ``[(lr, score), ...]``), ``.as_dict()``.

    Raises
    ------
    ValueError, TypeError
        Invalid bounds / counts / options (e.g. ``lr`` or ``epochs`` among ``fit_options``, an Optimizer
        instance instead of a name).
    TrainingDiverged
        If every trial diverged (lower the upper bound).
    """
    lo, hi = _search_settings(bounds, max_trials, trial_epochs, trial_subset, xatol, fit_options)
    _method_settings(method, executor, batch, comm)
    config = _search_config(config, estimator, fit_options)
    trial_config = config.replace(epochs=int(trial_epochs), data_init=False, train_eval_size=0, max_time=None,
                                  progress=False, verbose=False, plots=False)
    if not isinstance(net, Network):
        if not callable(net):
            raise TypeError(f"net: expected a Network or a callable returning one, got {type(net).__name__}")
        net = net()
    x_tr, trial_data = _training_part(data, config, trial_subset)
    original = _snapshot(net)
    t_begin = time.perf_counter()
    try:
        if config.data_init:  # as fit() would, on the full training part
            net.initialize_from_data(as_float(x_tr[:config.batch_size], net.dtype))
        trials = _run_search(method, net, trial_data, trial_config, lo, hi, int(max_trials), xatol, executor, batch,
                             threads, comm)
    finally:
        _restore(net, original)
    settings = {"estimator": config.estimator, "method": method, "bounds": [lo, hi], "max_trials": int(max_trials),
                "trial_epochs": int(trial_epochs), "trial_subset": None if trial_subset is None else int(trial_subset),
                "trial_examples": int(trial_data[0].shape[0]), "xatol": float(xatol)}
    return _best(trials, settings, time.perf_counter() - t_begin)


def _best(trials, settings, seconds):
    """The :class:`LRSearchResult` of the lowest-scoring trial; TrainingDiverged if every trial diverged."""
    ok = [t for t in trials if t.status == "ok"]
    if not ok:
        lo, hi = settings["bounds"]
        raise TrainingDiverged(f"lr search: all {len(trials)} trials diverged (log10 lr in [{lo:g}, {hi:g}]); "
                               "lower the upper bound")
    best = min(ok, key=lambda t: (t.score, t.trial))
    return LRSearchResult(lr=best.lr, score=best.score, trials=trials, settings=settings, seconds=seconds)
