"""``FitConfig``: every option of :func:`sbnnumba.training.fit`, validated in one place.

A :class:`FitConfig` is immutable; building one checks every field (``TypeError`` for a wrong type,
``ValueError`` for a wrong value, both "name: expected ..., got ..."). The same field table serves
three readers:

* :func:`~sbnnumba.training.fit` (``fit(net, data, config, **overrides)``);
* the checkpoint: :meth:`FitConfig.to_dict` is stored under ``config["fit"]``; the fields marked
  ``trajectory`` must agree when a run is resumed (they decide the trajectory), the others (``epochs``,
  ``eval_samples``, ``max_time``, ...) may change;
* the command line: fields with a ``flag`` become ``train`` options whose type check and help text are
  the field's (``python -m sbnnumba train --help``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any, Callable, NoReturn

from .. import optim
from ..estimators import registry as _registry
from ..validation import check_bool, check_int, check_real


class Check:
    """A field's constraint: ``check(name, value) -> value`` and ``parse(text) -> value`` (command line)."""

    expected = "a value"
    choices: tuple | None = None  # the accepted names, where they form a fixed list (command-line choices)

    def __call__(self, name, value):
        raise NotImplementedError(f"{type(self).__name__}: a Check must implement __call__")

    def parse(self, text: str) -> Any:
        """Convert command-line text, then check it (ValueError with the expected form otherwise).

        Parameters
        ----------
        text : str
            A command-line value.

        Returns
        -------
        object
            The checked value.
        """
        return self("value", self.convert(text))

    kind: type | None = None  # the Python type command-line text is converted to (None: kept as text)

    def canonical(self, value: Any) -> Any:
        """The form in which two values of the field compare equal when they mean the same setting (a resumed
        run's stored setting against the new one); the value itself unless a Check says otherwise.

        Parameters
        ----------
        value : object
            A checked value, or its JSON form (:meth:`FitConfig.to_dict`).

        Returns
        -------
        object
        """
        return value

    def convert(self, text: str) -> Any:
        """Command-line text as :attr:`kind` (kept as text when ``kind`` is None).

        Parameters
        ----------
        text : str
            A command-line value.

        Returns
        -------
        object

        Raises
        ------
        ValueError
            If ``kind`` cannot read the text (the message names the expected form).
        """
        if self.kind is None:
            return text
        try:
            return self.kind(text)
        except ValueError:
            raise ValueError(f"expected {self.expected}, got {text!r}") from None

    def fail(self, name: str, value: object, error: type[Exception] = ValueError) -> NoReturn:
        """Raise ``error("<name>: expected <expected>, got <value>")``.

        Parameters
        ----------
        name : str
            The field's name.
        value : object
            The rejected value.
        error : exception class
            ``TypeError`` for a wrong type, ``ValueError`` (default) for a wrong value.
        """
        raise error(f"{name}: expected {self.expected}, got {value!r}")


class Integer(Check):
    """An integer ``>= lo`` (bool is not an integer here).

    Parameters
    ----------
    lo : int
        Inclusive lower bound.
    """

    kind = int

    def __init__(self, lo: int):
        self.lo = lo
        self.expected = f"an integer >= {lo}"

    def __call__(self, name, value):
        return check_int(value, name, minimum=self.lo)


class Number(Check):
    """A finite real number in ``[lo, hi)`` or, with ``positive``, ``> 0``.

    Parameters
    ----------
    lo, hi : float
        Interval ``[lo, hi)`` (ignored with ``positive``).
    positive : bool
        Accept exactly the numbers ``> 0``.
    expected : str, optional
        Wording of the messages (default from the interval).
    """

    kind = float

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, positive: bool = False,
                 expected: str | None = None):
        self.lo, self.hi, self.positive = lo, hi, positive
        self.expected = expected or ("a positive number" if positive else f"a number in [{lo:g}, {hi:g})")

    def __call__(self, name, value):
        if self.positive:
            return check_real(value, name, low=0.0, low_open=True, expected=self.expected)
        return check_real(value, name, low=self.lo, high=self.hi, high_open=True, expected=self.expected)


class Flag(Check):
    """``True`` or ``False`` (NumPy bools accepted); a command-line switch."""

    expected = "True or False"

    def __call__(self, name, value):
        return check_bool(value, name)


class Optional(Check):
    """``None`` or what ``inner`` accepts.

    Parameters
    ----------
    inner : Check
        The constraint of the values other than None.
    """

    def __init__(self, inner: Check):
        self.inner = inner
        self.expected = f"None or {inner.expected}"

    def __call__(self, name, value):
        if value is None:
            return None
        try:
            return self.inner(name, value)
        except (TypeError, ValueError) as exc:  # the message names both accepted forms
            raise type(exc)(f"{name}: expected {self.expected}, got {value!r}") from None

    def convert(self, text: str) -> Any:
        """As the inner check's :meth:`Check.convert`.

        Parameters
        ----------
        text : str
            A command-line value.

        Returns
        -------
        object
        """
        return self.inner.convert(text)


class Choice(Check):
    """One of a fixed set of names (``choices``).

    Parameters
    ----------
    choices : iterable of str
        The accepted names.
    """

    def __init__(self, choices: Iterable[str]):
        self.choices = tuple(choices)
        self.expected = f"one of {list(self.choices)}"

    def __call__(self, name, value):
        if not isinstance(value, str):
            self.fail(name, value, TypeError)
        if value not in self.choices:
            self.fail(name, value)
        return value


class EstimatorName(Check):
    """A registered estimator (:func:`sbnnumba.known_methods`); its options are checked with it."""

    expected = "a registered estimator name"

    @property
    def choices(self):
        return tuple(_registry.known_methods())

    def __call__(self, name, value):
        if not isinstance(value, str):
            self.fail(name, value, TypeError)
        _registry.lookup(value, {})  # ValueError naming the known methods
        return value


class Mapping(Check):
    """A dict, copied (None gives an empty dict)."""

    expected = "a dict or None"

    def __call__(self, name, value):
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(name, value, TypeError)
        return dict(value)


class OptimizerSpec(Check):
    """An optimizer name of :data:`sbnnumba.optim.OPTIMIZERS`, or an :class:`~sbnnumba.optim.Optimizer`."""

    expected = f"one of {sorted(optim.OPTIMIZERS)} or an Optimizer"
    choices = tuple(sorted(optim.OPTIMIZERS))

    def __call__(self, name, value):
        if isinstance(value, optim.Optimizer):
            return value
        if not isinstance(value, str):
            self.fail(name, value, TypeError)
        if value.lower() not in optim.OPTIMIZERS:
            self.fail(name, value)
        return value.lower()


SCHEDULES = ("constant", "step", "cosine")


class Schedule(Check):
    """None, one of :data:`SCHEDULES`, or a callable ``(step, base_lr) -> lr``."""

    expected = f"None, one of {list(SCHEDULES)} or a callable (step, base_lr) -> lr"
    choices = SCHEDULES

    def __call__(self, name, value):
        if value is None or callable(value):
            return value
        if not isinstance(value, str):
            self.fail(name, value, TypeError)
        if value not in SCHEDULES:
            self.fail(name, value)
        return value

    def canonical(self, value):
        """None (the library's default) and ``"constant"`` (the command line's) are the same constant rate.

        Parameters
        ----------
        value : object
            A checked schedule or its JSON form.

        Returns
        -------
        object
            ``"constant"`` for None, else ``value``.
        """
        return "constant" if value is None else value


def option(default: Any, help: str, check: Check, *, trajectory: bool = False, flag: str | None = None,
           cli_default: Any = dataclasses.MISSING) -> Any:
    """A :class:`FitConfig` field: its default, help text, :class:`Check`, whether it decides the trajectory
    (checked on resume) and its command-line ``flag`` (``cli_default`` where the command line's differs).

    Parameters
    ----------
    default : object
        The library's default (a dict default becomes a ``default_factory``: each config gets its own).
    help : str
        Help text (command line and the attribute list of :class:`FitConfig`).
    check : Check
        Applied to the value on construction, and to command-line text.
    trajectory : bool
        The option decides the training trajectory: it must agree when a run is resumed.
    flag : str, optional
        The ``train`` option (``--no-...`` for a flag that turns a default True off).
    cli_default : object, optional
        The command line's default where it differs from ``default``.

    Returns
    -------
    dataclasses.Field
        The field, with the above in its ``metadata``.
    """
    meta = {"help": help, "check": check, "trajectory": trajectory, "flag": flag,
            "cli_default": default if cli_default is dataclasses.MISSING else cli_default}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_NONNEG = Integer(0)
_POS = Integer(1)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The options of :func:`sbnnumba.training.fit` (see there, and each field's help text below).

    Build with keywords (``FitConfig(epochs=3, lr=1e-2)``) or derive one (``config.replace(seed=2)``);
    every field is checked on construction. :meth:`to_dict` gives the JSON-able form stored in checkpoints.
    """

    estimator: str = option("psa", "gradient estimator", EstimatorName(), trajectory=True, flag="--estimator")
    estimator_options: dict = option({}, "options of the estimator (sbnnumba.estimate)", Mapping(), trajectory=True)
    epochs: int = option(5, "total epochs, counting earlier sessions of a resumed run", _POS, flag="--epochs",
                         cli_default=3)
    batch_size: int = option(64, "examples per step", _POS, trajectory=True, flag="--batch-size")
    optimizer: str | optim.Optimizer = option("adam",
                                              "optimizer: adam or sgd (Nesterov momentum), or an Optimizer instance",
                                              OptimizerSpec(), flag="--optimizer")
    lr: float | None = option(None, "learning rate (default: adam 1e-3, sgd 0.01)", Optional(Number(positive=True)))
    momentum: float = option(0.9, "sgd: momentum (0 = plain SGD)", Number(0.0, 1.0), flag="--momentum")
    nesterov: bool = option(True, "sgd: Nesterov momentum", Flag())
    weight_decay: float = option(0.0, "weight decay (on latent weights: the pull toward p = 1/2)", Number(0.0))
    schedule: str | Callable[[int, float], float] | None = option(
        None, "learning-rate schedule over the run (step: x0.1 after each third)", Schedule(), flag="--schedule",
        cli_default="constant")
    clip_value: float | None = option(1e3, "element-wise gradient clipping", Optional(Number(positive=True)),
                                      flag="--clip")
    seed: int = option(0, "training seed: batch order, augmentation, sampled paths, evaluation (the command "
                          "line also initializes the network with it)", _NONNEG, trajectory=True, flag="--seed",
                       cli_default=1)
    split_seed: int = option(1, "seed of the train/validation split", _NONNEG, trajectory=True)
    val_fraction: float = option(0.1, "held-out part of the training set (0: no validation)", Number(0.0, 1.0),
                                 trajectory=True, flag="--val-fraction")
    augment: bool = option(False, "random flip + padded crop of training batches", Flag(), trajectory=True,
                           flag="--augment")
    augment_pad: int = option(4, "--augment: zero padding of the random crop in pixels", _NONNEG, trajectory=True,
                              flag="--augment-pad")
    data_init: bool = option(True, "data-dependent initialization on the first batch", Flag(), trajectory=True,
                             flag="--no-data-init")
    eval_samples: int = option(10, "samples per image in evaluation", _POS, flag="--eval-samples")
    train_eval_size: int = option(2000, "training images evaluated after each epoch (0: none)", _NONNEG)
    eval_batch_size: int | None = option(None, "images per evaluation chunk (default: evaluate's, fewer for "
                                                "conv nets with large patch matrices)", Optional(_POS))
    max_time: float | None = option(None, "time budget in seconds (stops after the epoch that passes it)",
                           Optional(Number(positive=True)), flag="--max-time")
    plots: bool = option(True, "write loss.png, accuracy.png, entropy.png after each epoch", Flag())
    progress: bool = option(True, "progress bars", Flag(), flag="--no-progress")
    verbose: bool = option(True, "per-epoch summary and resume lines (INFO on the logger sbnnumba.training.fit, "
                                 "else DEBUG)", Flag())

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        _registry.lookup(self.estimator, dict(self.estimator_options))  # the options belong to the estimator
        self._check_optimizer_options()

    def _check_optimizer_options(self):
        """Refuse optimizer fields that would have no effect: those an Optimizer instance ignores (it has its
        own), and the momentum fields of an optimizer without momentum."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changed = [name for name in _OPTIMIZER_FIELDS if getattr(self, name) != fields[name].default]
        if isinstance(self.optimizer, optim.Optimizer):
            if changed:
                raise ValueError(f"optimizer: an Optimizer instance ({type(self.optimizer).__name__}) uses its own "
                                 f"settings; {', '.join(changed)} would be ignored: set them on the optimizer "
                                 "instead")
        elif self.optimizer != optim.SGD.name:
            ignored = [name for name in changed if name in MOMENTUM_FIELDS]
            if ignored:
                raise ValueError(f"{ignored[0]}: {self.optimizer!r} has no momentum; {', '.join(ignored)} would be "
                                 "ignored (use optimizer='sgd')")

    def replace(self, **changes) -> "FitConfig":
        """A copy with ``changes`` (checked); TypeError for an unknown option.

        Parameters
        ----------
        **changes
            New values of fields.

        Returns
        -------
        FitConfig
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"options: unknown fit option(s) {unknown}; expected some of {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able form (an Optimizer instance by its name, a callable schedule by its repr).

        Returns
        -------
        dict
            Field name -> value.
        """
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, optim.Optimizer):
                v = v.name
            elif callable(v):
                v = repr(v)
            out[f.name] = dict(v) if isinstance(v, dict) else v
        return out

    def trajectory(self) -> dict:
        """The entries of :meth:`to_dict` that must agree between a checkpoint and a resumed run.

        Returns
        -------
        dict
            Field name -> value for the fields marked ``trajectory``.
        """
        d = self.to_dict()
        return {f.name: d[f.name] for f in dataclasses.fields(self) if f.metadata["trajectory"]}


#: The fields that make the optimizer from its name (:func:`sbnnumba.training.make_optimizer`).
_OPTIMIZER_FIELDS = ("lr", "momentum", "nesterov", "weight_decay", "schedule", "clip_value")
#: The fields of SGD's momentum: an optimizer without momentum refuses them.
MOMENTUM_FIELDS = ("momentum", "nesterov")


def _document_fields(cls):
    """Append an Attributes section built from the field table (one source for help text and docs)."""
    lines = ["", "    Attributes", "    ----------"]
    for fld in dataclasses.fields(cls):
        flag = f" (``{fld.metadata['flag']}``)" if fld.metadata["flag"] else ""
        text = fld.metadata["help"].replace("--", "\\-\\-")  # an option name, not an en dash in the docs
        lines += [f"    {fld.name} : {fld.type}", f"        {text}{flag}."]
    cls.__doc__ = cls.__doc__.rstrip() + "\n" + "\n".join(lines) + "\n    "
    return cls


_document_fields(FitConfig)


def field_names() -> list[str]:
    """The names of the :class:`FitConfig` fields, in declaration order.

    Returns
    -------
    list of str
    """
    return [f.name for f in dataclasses.fields(FitConfig)]


def command_line_fields() -> list[tuple[str, dataclasses.Field]]:
    """``[(flag, field), ...]`` of the options the ``train`` command takes from :class:`FitConfig`.

    Returns
    -------
    list of (str, dataclasses.Field)
        The command-line flag and the field, for each field that has a flag.
    """
    return [(f.metadata["flag"], f) for f in dataclasses.fields(FitConfig) if f.metadata["flag"]]


def trajectory_from_dict(saved: dict) -> dict:
    """The trajectory entries of a stored :meth:`FitConfig.to_dict` (missing ones as None).

    Parameters
    ----------
    saved : dict
        A :meth:`FitConfig.to_dict` read from a checkpoint (possibly of an older version).

    Returns
    -------
    dict
        Field name -> value for every field marked ``trajectory``.
    """
    return {f.name: saved.get(f.name) for f in dataclasses.fields(FitConfig) if f.metadata["trajectory"]}

