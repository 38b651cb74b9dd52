r"""Configurations of a sweep: the grid syntax, the canonical key of a configuration, its seeds.

A *configuration* is a flat dict of options (see :mod:`sbnnumba.sweep` for which go where). Its
**key** is the canonical text ``name=value,name=value`` of its options sorted by name, leaving out
:data:`NOT_IN_KEY` (options that do not change a run's trajectory, so that e.g. raising ``epochs``
keeps the key, the run directory and the seeds and continues the same runs). Values are written by
:func:`format_value`: ints and strings as they are, floats as Python's shortest round-trip ``repr``
(``0.001``), lists of ints joined by ``x`` (``256x256``), booleans and None as ``true``/``false``/``none``.

Seeds. A configuration's seeds depend only on the sweep seed and its key, never on the order or the
worker that runs it:

.. math::

    (s_{init}, s_{fit}) = \mathrm{SeedSequence}([s_{sweep}, w_0, \dots, w_7]).\mathrm{generate\_state}(2)

with ``w_0..w_7`` the eight 32-bit words of ``SHA-256(key)``. ``s_init`` seeds the network's
initialization and ``s_fit`` is the ``seed`` given to ``fit`` (batch order, sampled paths, evaluation).
The option ``seed`` in a configuration is therefore a *replicate label*: ``seed=0,1,2`` gives three
independent replicates of every other setting.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np

__all__ = ["NOT_IN_KEY", "parse_value", "format_value", "parse_grid", "expand", "config_key", "derive_seeds",
           "run_dir_name"]

#: Options left out of a configuration's key: they do not change a run's trajectory (fit's resume
#: accepts a change of them), so changing them keeps the run directory and continues the same runs.
NOT_IN_KEY = ("epochs", "eval_samples", "train_eval_size", "eval_batch_size", "max_time", "plots")

_INT = re.compile(r"[+-]?\d+")
_INT_LIST = re.compile(r"\d+(x\d+)+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_value(text: str) -> Any:
    """One grid value from text: int, float, ``true``/``false``, ``none``, ``AxB..`` (list of ints), else str.

    Examples: ``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"256x256"`` -> [256, 256], ``"psa"`` -> ``"psa"``.

    Parameters
    ----------
    text : str
        One value (surrounding whitespace ignored; the keywords are case-insensitive).

    Returns
    -------
    bool, None, int, list of int, float or str
        In that order of precedence.

    Raises
    ------
    TypeError
        If ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"value: expected a str, got {type(text).__name__}")
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if _INT.fullmatch(low):
        return int(low)
    if _INT_LIST.fullmatch(low):
        return [int(v) for v in low.split("x")]
    try:
        return float(low)
    except ValueError:
        return text.strip()


def format_value(value: Any) -> str:
    """The canonical text of an option value (the inverse of :func:`parse_value` on its range).

    Parameters
    ----------
    value : object
        None, bool, int, float, a non-empty list of ints, str, or anything JSON-able.

    Returns
    -------
    str
        ``none``/``true``/``false``, the int, the float's shortest round-trip ``repr``, ints joined by ``x``,
        the string itself, or compact JSON with sorted keys.
    """
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                          for v in value):
        return "x".join(str(int(v)) for v in value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def parse_grid(text: str) -> dict[str, list[Any]]:
    """``"estimator=psa,st lr=1e-3,3e-3 seed=0,1,2"`` -> ``{"estimator": ["psa", "st"], "lr": [...], ...}``.

    Whitespace separates axes; each axis is ``name=v1,v2,...`` with values parsed by :func:`parse_value`.

    Parameters
    ----------
    text : str
        The grid.

    Returns
    -------
    dict str -> list
        Axis name -> its values, in the order given.

    Raises
    ------
    TypeError
        If ``text`` is not a str.
    ValueError
        An axis without ``=``, an invalid or repeated name, an empty value.
    """
    if not isinstance(text, str):
        raise TypeError(f"grid: expected a str, got {type(text).__name__}")
    axes = {}
    for item in text.split():
        name, sep, values = item.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"grid: expected 'name=v1,v2,...' separated by spaces, got {item!r}")
        if name in axes:
            raise ValueError(f"grid: expected each name once, got {name!r} twice")
        parts = values.split(",")
        if not all(p.strip() for p in parts):
            raise ValueError(f"grid: expected non-empty values for {name!r}, got {values!r}")
        axes[name] = [parse_value(p) for p in parts]
    if not axes:
        raise ValueError(f"grid: expected at least one 'name=v1,v2,...', got {text!r}")
    return axes


def expand(axes: dict[str, list[Any]], base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The Cartesian product of the grid ``axes`` over ``base`` options, first axis slowest.

    Parameters
    ----------
    axes : dict name -> list of values
        As returned by :func:`parse_grid`.
    base : dict, optional
        Options shared by every configuration; an axis overrides the same name.

    Returns
    -------
    list of dict
        ``prod(len(v) for v in axes.values())`` configurations.
    """
    configs = [dict(base or {})]
    for name, values in axes.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"axes[{name!r}]: expected a non-empty list of values, got {values!r}")
        configs = [{**c, name: v} for c in configs for v in values]
    return configs


def config_key(options: dict[str, Any]) -> str:
    """The canonical key ``name=value,...`` of a configuration (sorted names, :data:`NOT_IN_KEY` left out).

    Parameters
    ----------
    options : dict
        The configuration.

    Returns
    -------
    str
        ``name=format_value(value)`` joined by ``,``.

    Raises
    ------
    TypeError
        If ``options`` is not a dict.
    """
    if not isinstance(options, dict):
        raise TypeError(f"options: expected a dict, got {type(options).__name__}")
    return ",".join(f"{k}={format_value(options[k])}" for k in sorted(options) if k not in NOT_IN_KEY)


def derive_seeds(sweep_seed: int, key: str) -> tuple[int, int]:
    """``(init_seed, fit_seed)`` of a configuration: ``SeedSequence([sweep_seed, *sha256(key) words])``.

    Parameters
    ----------
    sweep_seed : int >= 0
        The sweep's seed.
    key : str
        :func:`config_key` of the configuration.

    Returns
    -------
    tuple of two ints in ``[0, 2**32)``
    """
    if isinstance(sweep_seed, bool) or not isinstance(sweep_seed, (int, np.integer)) or sweep_seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {sweep_seed!r}")
    words = np.frombuffer(hashlib.sha256(key.encode()).digest(), dtype="<u4")
    state = np.random.SeedSequence([int(sweep_seed)] + [int(w) for w in words]).generate_state(2)
    return int(state[0]), int(state[1])


def run_dir_name(key: str, limit: int = 96) -> str:
    """A directory name for a configuration: its key with ``,`` -> ``_`` and ``=`` -> ``-``, other
    characters outside ``[A-Za-z0-9._-]`` replaced by ``+``.

    Past ``limit`` characters, or when a character had to be replaced, the name is cut to ``limit`` and
    ``-`` plus the first 10 hex digits of ``SHA-256(key)`` are appended, so distinct keys never share a
    directory.

    Parameters
    ----------
    key : str
        :func:`config_key` of the configuration (the empty key gives ``"default"``).
    limit : int
        Length kept before the hash suffix.

    Returns
    -------
    str
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "+", key.replace(",", "_").replace("=", "-")) or "default"
    if len(name) > limit or name != key.replace(",", "_").replace("=", "-"):
        name = f"{name[:limit]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    return name
