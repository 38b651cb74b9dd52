"""Optimizers (SGD with momentum / Nesterov, Adam / AdamW) and learning-rate schedules.

Style of numpy-ml: each optimizer keeps a per-parameter state and applies one step with
``update(params, grads)``.

- ``params`` is a flat ``dict[str, ndarray]`` (``"stage0.weight"``, ``"head.bias"``); ``grads`` has
  exactly the same keys and shapes. Parameters are updated **in place** (``p -= ...``), so layers that
  hold references to the arrays see the new values. The caller's gradient arrays are never modified.
- The key set is fixed by the first ``update`` (or by ``load_state_dict``); a different key set later
  raises ``ValueError``.
- Gradients holding NaN or inf (after conversion to the parameter's dtype) are refused with
  :class:`NonFiniteGradient` before anything changes; parameters must be float32 or float64.
- Gradient processing order in every optimizer: (1) element-wise clipping to
  ``[-clip_value, clip_value]``; (2) global-norm clipping: if ``||g||_2 > clip_norm`` over all
  parameters together, every gradient is multiplied by ``clip_norm / ||g||_2``; (3) the optimizer's
  own rule (weight decay, momentum, ...).

Learning-rate schedules count optimizer **steps** (calls of ``update``), not epochs: the lr used by
step ``t`` (0-based number of updates already done) is ``schedule(t, base_lr)``. For a per-epoch
schedule pass sizes in steps (e.g. ``step_size = 30 * steps_per_epoch``). ``optimizer.lr`` is the lr
the next update will use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Union

import numpy as np

from .kernels.optim_rules import FlatViews, adam_rows, chunk_table, sgd_rows
from .runtime import run_range_blocks
from .validation import all_finite, check_bool, check_float_dtype, check_positive_int, check_real

#: A learning-rate schedule: ``schedule(step, base_lr) -> lr``.
Schedule = Callable[[int, float], float]
ScheduleSpec = Union[str, Schedule, None]

__all__ = [
    "ConstantLR",
    "StepLR",
    "CosineLR",
    "SCHEDULES",
    "get_schedule",
    "Optimizer",
    "SGD",
    "Adam",
    "OPTIMIZERS",
    "get_optimizer",
    "NonFiniteGradient",
]


# --------------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------------

def _flat_view(a, name):
    """A 1-d view of ``a`` that the update loops can write through (``a`` must be C-contiguous)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"params[{name!r}]: expected a C-contiguous array (updated in place), got strides {a.strides}")
    return a.reshape(-1)


def _flat(a):
    """A 1-d C-contiguous, writeable copy or view of a gradient (the fused passes take one list type)."""
    a = np.ascontiguousarray(a)
    return (a if a.flags.writeable else a.copy()).reshape(-1)


class ConstantLR:
    """``lr(t) = base_lr``."""

    def __call__(self, step: int, base_lr: float) -> float:
        return float(base_lr)

    def __repr__(self) -> str:
        return "ConstantLR()"


class StepLR:
    """Step decay: ``lr(t) = base_lr * gamma ** floor(t / step_size)``.

    Parameters
    ----------
    step_size : int
        Number of optimizer steps between decays (>= 1).
    gamma : float, default 0.1
        Multiplicative factor, in (0, 1].
    """

    def __init__(self, step_size: int, gamma: float = 0.1):
        self.step_size = check_positive_int(step_size, "step_size")
        self.gamma = check_real(gamma, "gamma", 0.0, 1.0, low_open=True)

    def __call__(self, step: int, base_lr: float) -> float:
        return float(base_lr) * self.gamma ** (int(step) // self.step_size)

    def __repr__(self) -> str:
        return f"StepLR(step_size={self.step_size}, gamma={self.gamma})"


class CosineLR:
    """Cosine annealing from ``base_lr`` to ``min_lr`` over ``total`` steps, then constant ``min_lr``.

    ``lr(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * min(t, total) / total)) / 2``.

    Parameters
    ----------
    total : int
        Number of optimizer steps of the annealing (>= 1).
    min_lr : float, default 0
        Final learning rate (absolute, >= 0).
    """

    def __init__(self, total: int, min_lr: float = 0.0):
        self.total = check_positive_int(total, "total")
        self.min_lr = check_real(min_lr, "min_lr", 0.0)

    def __call__(self, step: int, base_lr: float) -> float:
        t = min(int(step), self.total)
        return self.min_lr + (float(base_lr) - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / self.total))

    def __repr__(self) -> str:
        return f"CosineLR(total={self.total}, min_lr={self.min_lr})"


#: Schedule name -> class; ``get_schedule(name, **kw)`` builds one.
SCHEDULES = {"constant": ConstantLR, "step": StepLR, "cosine": CosineLR}


def get_schedule(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule by name with keyword arguments.

    Parameters
    ----------
    name : str
        ``"constant"``, ``"step"`` or ``"cosine"`` (case-insensitive).
    **kwargs
        Arguments of the schedule's class.

    Returns
    -------
    ConstantLR, StepLR or CosineLR
        Called as ``schedule(step, base_lr)``, it gives the learning rate of that step.
    """
    if not isinstance(name, str):
        raise TypeError(f"schedule: expected a schedule name (str), got {type(name).__name__}")
    key = name.lower()
    if key not in SCHEDULES:
        raise ValueError(f"schedule: expected one of the known schedules: {', '.join(sorted(SCHEDULES))}; got {name!r}")
    return SCHEDULES[key](**kwargs)


def _resolve_schedule(schedule: ScheduleSpec) -> Schedule:
    if schedule is None:
        return ConstantLR()
    if isinstance(schedule, str):
        return get_schedule(schedule)
    if callable(schedule):
        return schedule
    raise TypeError(
        "schedule: expected None, a schedule name, or a callable (step, base_lr) -> lr, got "
        f"{type(schedule).__name__}"
    )


# --------------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------------

class NonFiniteGradient(ValueError):
    """:meth:`Optimizer.update` refused a gradient holding NaN or inf; no parameter was changed.

    Parameters
    ----------
    key : str
        See Attributes.

    Attributes
    ----------
    key : str
        The gradient's name (a key of ``grads``).
    """

    def __init__(self, key: str):
        super().__init__(f"grads[{key!r}]: expected finite values, got NaN or inf")
        self.key = key


class Optimizer:
    """Base class: validation, clipping, schedule, step counter and state (de)serialization.

    Subclasses define ``name`` (registry key), ``_buffers`` (names of the per-parameter state
    arrays), ``_prepare(name, p, g, lr)`` (per parameter: weight decay, buffers) and
    ``_fused_step(dtype, entries, lr, t)``, which updates every parameter of one dtype in place in one
    pass (:mod:`sbnnumba.kernels.optim_rules`: a table of chunks of at most 2^16 entries over all arrays, so
    small arrays cost no call of their own; the pass runs in blocks of rows on the threads of the per-call rule,
    :func:`sbnnumba.runtime.run_range_blocks`); ``t`` is the 1-based index of the current step.

    Parameters
    ----------
    lr : float
        Base learning rate (>= 0), scaled per step by ``schedule``.
    weight_decay : float
        Applied by each subclass its own way (see its update equations).
    clip_value : float or None
        Element-wise gradient clipping to ``[-clip_value, clip_value]``.
    clip_norm : float or None
        Global-norm gradient clipping over all parameters.
    schedule : str, Schedule or None
        Learning-rate schedule (:func:`get_schedule`); None is constant.
    """

    name = "optimizer"
    _buffers: tuple[str, ...] = ()

    def __init__(self, lr: float, weight_decay: float = 0.0, clip_value: float | None = None,
                 clip_norm: float | None = None, schedule: ScheduleSpec = None):
        self.base_lr = check_real(lr, "lr", 0.0)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0.0)
        self.clip_value = None if clip_value is None else check_real(
            clip_value, "clip_value", 0.0, low_open=True, expected="a positive float or None")
        self.clip_norm = None if clip_norm is None else check_real(
            clip_norm, "clip_norm", 0.0, low_open=True, expected="a positive float or None")
        self.schedule = _resolve_schedule(schedule)
        self.step_count = 0  # number of updates done
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self._keys: tuple[str, ...] | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._lists = FlatViews()  # flat views of the parameters and buffers for the fused update pass
        self._chunks: dict[tuple[int, ...], np.ndarray] = {}

    # -- learning rate ---------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """Learning rate the next ``update`` will use: ``schedule(step_count, base_lr)``."""
        return float(self.schedule(self.step_count, self.base_lr))

    @lr.setter
    def lr(self, value: float) -> None:
        """Set the base learning rate (the schedule is applied on top of it)."""
        self.base_lr = check_real(value, "lr", 0.0)

    @property
    def hyperparameters(self) -> dict:
        """The constructor's settings as a JSON-friendly dict (the schedule as its repr)."""
        hp = {"optimizer": self.name, "lr": self.base_lr, "weight_decay": self.weight_decay,
              "clip_value": self.clip_value, "clip_norm": self.clip_norm,
              "schedule": repr(self.schedule)}
        hp.update(self._extra_hyperparameters())
        return hp

    def _extra_hyperparameters(self) -> dict:
        return {}

    def __repr__(self) -> str:
        hp = self.hyperparameters
        hp.pop("optimizer")
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in hp.items()) + ")"

    # -- checks ----------------------------------------------------------------------------------
    def _check(self, params, grads) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict name -> ndarray, got {type(params).__name__}")
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict name -> ndarray, got {type(grads).__name__}")
        pk, gk = set(params), set(grads)
        if pk != gk:
            raise ValueError(
                "grads: expected the keys of params, got "
                f"missing in grads: {sorted(pk - gk)}, unknown in grads: {sorted(gk - pk)}"
            )
        if self._keys is not None and set(self._keys) != pk:
            known = set(self._keys)
            raise ValueError(
                f"params: expected the keys the optimizer state was created with (keys changed); missing: "
                f"{sorted(known - pk)}, new: {sorted(pk - known)}"
            )
        for k in params:
            p, g = params[k], grads[k]
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params[{k!r}]: expected a numpy ndarray (updated in place), got "
                                f"{type(p).__name__}")
            check_float_dtype(p.dtype, f"params[{k!r}]")  # the fused update passes are compiled for these
            if not p.flags.writeable:
                raise ValueError(f"params[{k!r}]: expected a writeable array (updated in place), got a read-only one")
            g_shape = np.shape(g)
            if g_shape != p.shape:
                raise ValueError(f"grads[{k!r}]: expected shape {p.shape} (as params[{k!r}]), got {g_shape}")
            if k in self._shapes and self._shapes[k] != p.shape:
                raise ValueError(f"params[{k!r}]: expected shape {self._shapes[k]} (the optimizer state has it), "
                                 f"got {p.shape}")

    def _clip(self, params, grads) -> dict[str, np.ndarray]:
        out = {}
        for k in params:
            g = np.asarray(grads[k], dtype=params[k].dtype)
            # before clipping (which would turn inf into clip_value) and before any change: the one check of a
            # step's gradients (fit reports it as TrainingDiverged)
            if not all_finite(g):
                raise NonFiniteGradient(k)
            if self.clip_value is not None:
                g = np.clip(g, -self.clip_value, self.clip_value)
            out[k] = g
        if self.clip_norm is not None:
            total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in out.values()))
            if total > self.clip_norm:
                scale = self.clip_norm / total
                out = {k: g * g.dtype.type(scale) for k, g in out.items()}
        return out

    # -- step ------------------------------------------------------------------------------------
    def update(self, params: dict, grads: dict) -> None:
        """Apply one optimization step to ``params`` in place (see the class docstring for the rule).

        Parameters
        ----------
        params : dict str -> ndarray
            The parameters, updated in place (e.g. ``net.params``).
        grads : dict str -> ndarray
            A gradient of the same shape for every parameter (same names).

        Raises
        ------
        TypeError, ValueError
            Not mappings, different names, a shape that does not match, or parameters of a dtype other than
            float32 and float64.
        NonFiniteGradient
            A gradient (converted to its parameter's dtype) holds NaN or inf. Nothing is changed then, as
            for every other error.
        """
        self._check(params, grads)
        gs = self._clip(params, grads)
        lr = self.lr
        t = self.step_count + 1
        groups: dict[np.dtype, list] = {}  # one fused pass per dtype (a UniTuple holds one array type)
        for k, p in params.items():
            _flat_view(p, k)  # C-contiguous, or the update could not be written through a flat view
            groups.setdefault(p.dtype, []).append((k, p, self._prepare(k, p, gs[k], lr)))
        for dtype, entries in groups.items():
            self._fused_step(dtype, entries, lr, t)
        self.record_step(params)

    def _chunks_of(self, arrays) -> np.ndarray:
        """The chunk table (:func:`sbnnumba.kernels.optim_rules.chunk_table`) of ``arrays``' sizes, kept per sizes."""
        sizes = tuple(a.size for a in arrays)
        if sizes not in self._chunks:
            self._chunks[sizes] = chunk_table(sizes)
        return self._chunks[sizes]

    @staticmethod
    def _run_rows(rows, arrays, chunks) -> None:
        """``rows(r0, r1)`` (a fused pass over rows ``r0:r1`` of ``chunks``) over every row, in blocks on the threads
        of the per-call rule (:func:`sbnnumba.runtime.run_range_blocks`, work = the entries of ``arrays``)."""
        run_range_blocks(rows, chunks.shape[0], sum(a.size for a in arrays), "update")

    def record_step(self, params: dict) -> None:
        """Count one step applied to ``params``: by :meth:`update`, or by a device-resident step that ran
        these update rules (:mod:`sbnnumba.kernels.optim_rules`) on device copies of the parameters and
        buffers. Advances :attr:`step_count` and records the parameter names and shapes that
        :meth:`load_state_dict` checks.

        Parameters
        ----------
        params : dict str -> ndarray
            The parameters the step was applied to.
        """
        if self._keys is None:
            self._keys = tuple(params)
        for k, p in params.items():
            self._shapes[k] = tuple(p.shape)
        self.step_count += 1

    def _prepare(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> tuple:
        """Per parameter, before the fused pass: weight decay, buffers created; returns what ``_fused_step`` needs."""
        raise NotImplementedError(f"{type(self).__name__}: an optimizer must define _prepare")

    def _fused_step(self, dtype: np.dtype, entries: list, lr: float, t: int) -> None:
        """The rule over every parameter of ``dtype`` in one pass (:meth:`_run_rows`); ``entries`` are
        ``(name, param, prepared)``."""
        raise NotImplementedError(f"{type(self).__name__}: an optimizer must define _fused_step")

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Flat dict of plain values, savable with ``np.savez(**d)`` or (after ``.tolist()``) JSON.

        Keys: ``"optimizer"`` (name), ``"step_count"`` (int), ``"keys"`` (list of parameter names,
        or an empty list before the first update) and ``"<buffer>/<param name>"`` -> ndarray copy for
        every per-parameter buffer. Hyperparameters are not included (they come from the
        constructor; see :attr:`hyperparameters`).

        Returns
        -------
        dict
        """
        d = {"optimizer": self.name, "step_count": int(self.step_count),
             "keys": list(self._keys) if self._keys is not None else []}
        for k, bufs in self.state.items():
            for b, arr in bufs.items():
                d[f"{b}/{k}"] = arr.copy()
        return d

    def load_state_dict(self, d: Mapping) -> None:
        """Restore the state saved by :meth:`state_dict` (also accepts an ``np.load`` result).

        Parameters
        ----------
        d : mapping or numpy.lib.npyio.NpzFile
            As returned by :meth:`state_dict`, possibly with the ``optim/`` prefix removed from a checkpoint.

        Raises
        ------
        TypeError
            If ``d`` is not a mapping.
        ValueError
            A missing entry, another optimizer's state, or buffers that do not match the recorded names
            and shapes.
        """
        if not isinstance(d, (Mapping, np.lib.npyio.NpzFile)):
            raise TypeError(f"state dict: expected a mapping, got {type(d).__name__}")
        keys_in = list(d.files) if isinstance(d, np.lib.npyio.NpzFile) else list(d.keys())
        for req in ("optimizer", "step_count", "keys"):
            if req not in keys_in:
                raise ValueError(f"state dict: expected an entry {req!r}, got keys {sorted(keys_in)}")
        name = str(np.asarray(d["optimizer"]).item())
        if name != self.name:
            raise ValueError(f"state dict: expected a state of optimizer {self.name!r}, got one of {name!r}")
        step_count = int(np.asarray(d["step_count"]).item())
        if step_count < 0:
            raise ValueError(f"state dict: expected step_count >= 0, got {step_count}")
        pkeys = [str(k) for k in np.asarray(d["keys"]).reshape(-1).tolist()]
        state: dict[str, dict[str, np.ndarray]] = {}
        for key in keys_in:
            if key in ("optimizer", "step_count", "keys"):
                continue
            buf, sep, pname = key.partition("/")
            if not sep or buf not in self._buffers:
                raise ValueError(f"state dict: expected entries '<buffer>/<param>' with buffer in "
                                 f"{list(self._buffers)} (a buffer of {self.name}), got {key!r}")
            if pname not in pkeys:
                raise ValueError(f"state dict: expected entries for parameters in keys, got {key!r} "
                                 f"(parameter {pname!r} not in keys)")
            state.setdefault(pname, {})[buf] = np.array(d[key], copy=True)
        self.step_count = step_count
        self.state = state
        self._keys = tuple(pkeys) if pkeys else None
        self._shapes = {k: next(iter(b.values())).shape for k, b in state.items()}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch conventions.

    For each parameter ``p`` with (clipped) gradient ``g``, at step ``t = 1, 2, ...`` with learning
    rate ``lr_t = schedule(t - 1, lr)``::

        g   <- g + weight_decay * p                         (L2 weight decay, coupled)
        if momentum > 0:
            b <- g                        if t == 1
            b <- momentum * b + g         otherwise         (no dampening)
            g <- g + momentum * b         if nesterov
            g <- b                        otherwise
        p   <- p - lr_t * g                                 (in place)

    Parameters
    ----------
    lr : float, default 0.01
    momentum : float in [0, 1), default 0
    nesterov : bool, default False (requires momentum > 0)
    weight_decay : float >= 0, default 0
    clip_value : float > 0 or None
        Element-wise gradient clipping to ``[-clip_value, clip_value]`` (e.g. 1e3 as in the paper).
    clip_norm : float > 0 or None
        Global-norm gradient clipping over all parameters.
    schedule : None, str or callable ``(step, base_lr) -> lr``
    """

    name = "sgd"
    _buffers = ("momentum_buffer",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_value: float | None = None,
                 clip_norm: float | None = None, schedule: ScheduleSpec = None):
        super().__init__(lr, weight_decay, clip_value, clip_norm, schedule)
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0, high_open=True)
        self.nesterov = check_bool(nesterov, "nesterov")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov: expected momentum > 0 with nesterov=True, got momentum=0")

    def _extra_hyperparameters(self) -> dict:
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def _prepare(self, name, p, g, lr):
        if self.weight_decay:
            g = g + p.dtype.type(self.weight_decay) * p
        if not self.momentum:
            return _flat(g), None, False
        st = self.state.setdefault(name, {})
        first = "momentum_buffer" not in st
        if first:  # the rule sets it to g
            st["momentum_buffer"] = np.empty_like(p)
        return _flat(g), st["momentum_buffer"], first

    def _fused_step(self, dtype, entries, lr, t):
        dt = dtype.type
        ps = [p for _, p, _ in entries]
        gs = self._lists.get(("grad", dtype), [g for _, _, (g, _, _) in entries])
        # without momentum the kernel neither reads nor writes the buffers: the gradients stand in
        bufs = self._lists.get(("momentum_buffer", dtype), [b for _, _, (_, b, _) in entries]) if self.momentum else gs
        firsts = np.array([first for _, _, (_, _, first) in entries], dtype=np.bool_)
        chunks = self._chunks_of(ps)
        params = self._lists.get(("param", dtype), ps)
        scalars = (dt(lr), dt(self.momentum), self.nesterov)
        self._run_rows(lambda r0, r1: sgd_rows(params, gs, bufs, firsts, chunks, r0, r1, *scalars), ps, chunks)


class Adam(Optimizer):
    """Adam with bias correction (PyTorch conventions); ``decoupled=True`` gives AdamW.

    For each parameter ``p`` with (clipped) gradient ``g``, at step ``t = 1, 2, ...`` with learning
    rate ``lr_t = schedule(t - 1, lr)``::

        if weight_decay > 0:
            p <- p * (1 - lr_t * weight_decay)   if decoupled   (AdamW)
            g <- g + weight_decay * p            otherwise      (L2, coupled)
        m <- beta1 * m + (1 - beta1) * g                        (m, v start at 0)
        v <- beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t);  v_hat = v / (1 - beta2**t)
        p <- p - lr_t * m_hat / (sqrt(v_hat) + eps)             (in place)

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float > 0, default 1e-8
    weight_decay : float >= 0, default 0
    decoupled : bool, default False
    clip_value, clip_norm, schedule : as in :class:`SGD`
    """

    name = "adam"
    _buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, clip_value: float | None = None,
                 clip_norm: float | None = None, schedule: ScheduleSpec = None):
        super().__init__(lr, weight_decay, clip_value, clip_norm, schedule)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (check_real(b1, "betas[0]", 0.0, 1.0, high_open=True),
                      check_real(b2, "betas[1]", 0.0, 1.0, high_open=True))
        self.eps = check_real(eps, "eps", 0.0, low_open=True)
        self.decoupled = check_bool(decoupled, "decoupled")

    def _extra_hyperparameters(self) -> dict:
        return {"betas": list(self.betas), "eps": self.eps, "decoupled": self.decoupled}

    def _prepare(self, name, p, g, lr):
        dt = p.dtype.type
        if self.weight_decay:
            if self.decoupled:
                p *= dt(1.0 - lr * self.weight_decay)
            else:
                g = g + dt(self.weight_decay) * p
        st = self.state.setdefault(name, {})
        if "exp_avg" not in st:
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
        return _flat(g), st["exp_avg"], st["exp_avg_sq"]

    def _fused_step(self, dtype, entries, lr, t):
        ps = [p for _, p, _ in entries]
        gs = self._lists.get(("grad", dtype), [g for _, _, (g, _, _) in entries])
        ms = self._lists.get(("exp_avg", dtype), [m for _, _, (_, m, _) in entries])
        vs = self._lists.get(("exp_avg_sq", dtype), [v for _, _, (_, _, v) in entries])
        chunks = self._chunks_of(ps)
        params = self._lists.get(("param", dtype), ps)
        scalars = self.rule_scalars(lr, t, dtype.type)
        self._run_rows(lambda r0, r1: adam_rows(params, gs, ms, vs, chunks, r0, r1, *scalars), ps, chunks)

    def rule_scalars(self, lr: float, t: int, dtype: type) -> tuple:
        """The scalars of the element-wise Adam rule (:func:`sbnnumba.kernels.optim_rules.adam_rule`) at step
        ``t``, shared by the host loop and the device-resident step's update kernel.

        Parameters
        ----------
        lr : float
            The learning rate of this step (after the schedule).
        t : int
            1-based step index.
        dtype : type
            The parameters' scalar type (e.g. ``numpy.float32``).

        Returns
        -------
        tuple
            ``(b1, 1 - b1, b2, 1 - b2, 1 - b2^t, eps, lr / (1 - b1^t))`` in ``dtype``.
        """
        b1, b2 = self.betas
        bc1 = 1.0 - b1 ** t
        bc2 = 1.0 - b2 ** t
        return (dtype(b1), dtype(1.0 - b1), dtype(b2), dtype(1.0 - b2), dtype(bc2), dtype(self.eps), dtype(lr / bc1))


#: Optimizer name -> class.
OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get_optimizer(name: str, **kwargs) -> Optimizer:
    """Build an optimizer by name with its keyword arguments.

    Parameters
    ----------
    name : str
        A key of :data:`OPTIMIZERS` (``"sgd"``, ``"adam"``, ...; case-insensitive).
    **kwargs
        Arguments of the optimizer's class (``lr``, ``weight_decay``, ...).

    Returns
    -------
    Optimizer
    """
    if not isinstance(name, str):
        raise TypeError(f"optimizer: expected an optimizer name (str), got {type(name).__name__}")
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of the known optimizers: {', '.join(sorted(OPTIMIZERS))}; "
                         f"got {name!r}")
    return OPTIMIZERS[key](**kwargs)
