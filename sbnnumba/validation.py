"""Input checks shared by the whole library: one message style, one exception policy.

Every message reads ``"<name>: expected <what>, got <value>"``. A value of the wrong *type* (a float
where an integer is needed, a string where a number is needed, a bool anywhere a number is needed)
raises ``TypeError``; a value of the right type but outside the allowed range or set raises
``ValueError``. This module imports nothing from the library, so every layer (kernels included) may
use it.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["as_generator", "check_int", "check_positive_int", "check_pair", "check_real", "check_positive_number",
           "check_choice", "check_float_array", "check_labels"]


def as_generator(rng, name="rng", default_seed=None):
    """A ``numpy.random.Generator`` from ``rng``.

    Parameters
    ----------
    rng : None, int >= 0 or numpy.random.Generator
        ``None`` gives ``default_rng(default_seed)`` (fresh entropy when ``default_seed`` is None).
    name : str
        The argument's name in error messages.
    default_seed : int or None

    Raises
    ------
    TypeError
        For any other type (bools included).
    ValueError
        For a negative seed.
    """
    if rng is None:
        return np.random.default_rng(default_seed)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"{name}: expected a non-negative int seed, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name}: expected None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(value, name, minimum=None, maximum=None):
    """``value`` as a Python int with ``minimum <= value <= maximum`` (either bound optional).

    Raises
    ------
    TypeError
        If ``value`` is not an integer (bools and integral floats such as ``3.0`` are refused).
    ValueError
        If it lies outside the bounds.
    """
    if not _is_int(value):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    low_ok = minimum is None or value >= minimum
    high_ok = maximum is None or value <= maximum
    if not (low_ok and high_ok):
        if maximum is None:
            expected = f"an integer >= {minimum}"
        elif minimum is None:
            expected = f"an integer <= {maximum}"
        else:
            expected = f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(value)


def check_positive_int(value, name):
    """``value`` as an int >= 1 (TypeError for non-integers, ValueError for ``value < 1``)."""
    return check_int(value, name, minimum=1)


def check_pair(value, name, minimum=None):
    """``(v, v)`` for an int ``v``, ``(v0, v1)`` for a pair of ints, each ``>= minimum`` if given.

    Raises
    ------
    TypeError
        For anything but an int or a tuple/list of two ints.
    ValueError
        For a sequence of another length or a value below ``minimum``.
    """
    if _is_int(value):
        v = check_int(value, name, minimum)
        return v, v
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected an int or a pair of ints, got {type(value).__name__} {value!r}")
    if len(value) != 2:
        raise ValueError(f"{name}: expected an int or a pair of ints (vertical, horizontal), got {value!r}")
    return check_int(value[0], name, minimum), check_int(value[1], name, minimum)


def check_real(value, name, low=-math.inf, high=math.inf, low_open=False, high_open=False, expected=None):
    """``value`` as a finite Python float in the interval given by ``low``, ``high`` and their openness.

    Parameters
    ----------
    value : object
    name : str
    low, high : float
        Interval ends (default: the whole real line).
    low_open, high_open : bool
        Whether the ends are excluded.
    expected : str, optional
        Wording for the message (default: the interval, e.g. ``"a real number in (0, 1]"``).

    Raises
    ------
    TypeError
        If ``value`` is not a real number (bools and strings included).
    ValueError
        If it is not finite or lies outside the interval.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected or 'a real number'}, got {type(value).__name__} {value!r}")
    v = float(value)
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if not math.isfinite(v) or below or above:
        if expected is None:
            expected = (f"a finite real number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                        if (math.isfinite(low) or math.isfinite(high)) else "a finite real number")
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return v


def check_positive_number(value, name, alternatives=""):
    """A finite real number ``> 0`` as a float; ``alternatives`` extends the message (e.g. ``" or 'auto'"``)."""
    return check_real(value, name, low=0.0, low_open=True, expected=f"a finite positive number{alternatives}")


def check_choice(value, name, choices):
    """``value`` if it is one of ``choices`` (a tuple of strings), else ValueError listing them
    (TypeError for a non-string)."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {tuple(choices)}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_float_array(x, name, dtype=None, ndim=None, finite=True):
    """Convert ``x`` to a floating ndarray (of ``dtype`` if given) after checking it.

    Raises
    ------
    TypeError
        If ``x`` is not numeric (bool, object, string dtypes).
    ValueError
        If ``ndim`` does not match or ``x`` holds NaN/inf while ``finite`` is requested.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    elif arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if ndim is not None and arr.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name}: expected an array with {ndim} dimensions, got shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return arr


def check_labels(y, n, n_classes, name="y"):
    """Check integer class labels of shape (n,) in [0, n_classes) (in {0, 1} for a 1-logit head)."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) matching the batch of x, got {arr.shape}")
    upper = max(n_classes, 2)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(f"{name}: expected labels in [0, {upper}), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)
