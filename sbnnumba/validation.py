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
from collections.abc import Collection, Mapping, Sequence
from typing import TypeGuard

import numpy as np
import numpy.typing as npt

__all__ = ["as_generator", "check_int", "check_positive_int", "check_positive_ints", "check_pair", "check_real",
           "check_positive_number", "check_bool", "check_choice", "check_float_dtype", "check_float_array",
           "all_finite", "nonfinite_keys", "check_finite_arrays", "check_labels"]

#: The dtypes of parameters: the kernels are compiled for these two.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_generator(rng: None | int | np.random.Generator, name: str = "rng",
                 default_seed: int | None = None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from ``rng``.

    Parameters
    ----------
    rng : None, int >= 0 or numpy.random.Generator
        ``None`` gives ``default_rng(default_seed)`` (fresh entropy when ``default_seed`` is None).
    name : str
        The argument's name in error messages.
    default_seed : int or None
        Seed used when ``rng`` is None.

    Returns
    -------
    numpy.random.Generator
        ``rng`` itself when it is a Generator, else a new one seeded with ``rng`` (or ``default_seed``).

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


def _is_int(value: object) -> TypeGuard[int | np.integer]:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int with ``minimum <= value <= maximum`` (either bound optional).

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name in error messages.
    minimum, maximum : int, optional
        Inclusive bounds (None: unbounded on that side).

    Returns
    -------
    int
        ``int(value)``.

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


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int >= 1 (TypeError for non-integers, ValueError for ``value < 1``).

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name in error messages.

    Returns
    -------
    int
        ``int(value)``, at least 1.
    """
    return check_int(value, name, minimum=1)


def check_positive_ints(value: object, name: str, length: int | None = None,
                        min_length: int = 1) -> tuple[int, ...]:
    """A sequence of ints >= 1 (a shape, layer sizes, channel counts) as a tuple of Python ints.

    Parameters
    ----------
    value : object
        The value to check: a list, tuple, range or 1-d integer ndarray.
    name : str
        The argument's name in error messages (an entry is named ``name[i]``).
    length : int, optional
        The required number of entries.
    min_length : int
        The least number of entries (without ``length``).

    Returns
    -------
    tuple of int
        The entries, each at least 1.

    Raises
    ------
    TypeError
        For a string, a scalar or another non-sequence, or an entry that is not an integer (bools and
        integral floats such as ``3.0`` included).
    ValueError
        For another number of entries, or an entry below 1.
    """
    if (isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray))
            or (isinstance(value, np.ndarray) and value.ndim != 1)):
        raise TypeError(f"{name}: expected a sequence of positive integers, got {type(value).__name__} {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name}: expected {length} positive integers, got {value!r}")
    if len(value) < min_length:
        raise ValueError(f"{name}: expected at least {min_length} positive integer(s), got {value!r}")
    return tuple(check_positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def check_pair(value: object, name: str, minimum: int | None = None) -> tuple[int, int]:
    """``(v, v)`` for an int ``v``, ``(v0, v1)`` for a pair of ints, each ``>= minimum`` if given.

    Parameters
    ----------
    value : int or tuple or list of two ints
        A size or stride given once for both axes, or as (vertical, horizontal).
    name : str
        The argument's name in error messages.
    minimum : int, optional
        Inclusive lower bound of each entry.

    Returns
    -------
    tuple of (int, int)
        (vertical, horizontal).

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


def check_real(value: object, name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
               high_open: bool = False, expected: str | None = None) -> float:
    """``value`` as a finite Python float in the interval given by ``low``, ``high`` and their openness.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name in error messages.
    low, high : float
        Interval ends (default: the whole real line).
    low_open, high_open : bool
        Whether the ends are excluded.
    expected : str, optional
        Wording for the message (default: the interval, e.g. ``"a real number in (0, 1]"``).

    Returns
    -------
    float
        ``float(value)``.

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


def check_positive_number(value: object, name: str, alternatives: str = "") -> float:
    """A finite real number ``> 0`` as a float.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name in error messages.
    alternatives : str
        Appended to the expected wording of the message (e.g. ``" or 'auto'"``).

    Returns
    -------
    float
        ``float(value)``, finite and positive.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is not finite or not positive.
    """
    return check_real(value, name, low=0.0, low_open=True, expected=f"a finite positive number{alternatives}")


def check_bool(value: object, name: str) -> bool:
    """``value`` as a bool: ``True`` or ``False`` (NumPy bools accepted), nothing merely truthy.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name in error messages.

    Returns
    -------
    bool
        ``bool(value)``.

    Raises
    ------
    TypeError
        For anything else (``"no"``, ``0``, ``None`` included).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(value: object, name: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name in error messages.
    choices : collection of str
        The allowed strings.

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    TypeError
        If ``value`` is not a string.
    ValueError
        If it is not one of ``choices`` (the message lists them).
    """
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {tuple(choices)}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_float_dtype(dtype: object, name: str = "dtype") -> np.dtype:
    """``dtype`` as a NumPy dtype of parameters: float32 or float64 (:data:`FLOAT_DTYPES`).

    Parameters
    ----------
    dtype : object
        Anything ``numpy.dtype`` reads (``np.float32``, ``"float64"``, an array's ``dtype``).
    name : str
        The argument's name in error messages.

    Returns
    -------
    numpy.dtype
        float32 or float64.

    Raises
    ------
    ValueError
        If NumPy does not read it as a dtype (``"foo"``).
    TypeError
        For another dtype (integers, float16, longdouble, ...): integer or half-precision arithmetic would
        overflow or fail in the kernels.
    """
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"{name}: expected float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64 parameters, got {dt}")
    return dt


def all_finite(a: npt.ArrayLike) -> bool:
    """Whether ``a`` holds no NaN and no inf: the library's one finiteness rule (inputs, parameters,
    gradients, checkpoints).

    Parameters
    ----------
    a : array_like
        Real numbers.

    Returns
    -------
    bool
    """
    return bool(np.isfinite(a).all())


def nonfinite_keys(arrays: Mapping[str, npt.ArrayLike]) -> list[str]:
    """The names of the arrays of ``arrays`` that hold NaN or inf (:func:`all_finite`), in order.

    Parameters
    ----------
    arrays : mapping str -> array_like
        E.g. ``net.params`` or a gradient dict.

    Returns
    -------
    list of str
        Empty when every array is finite.
    """
    return [k for k, a in arrays.items() if not all_finite(a)]


def check_finite_arrays(arrays: Mapping[str, npt.ArrayLike], name: str) -> None:
    """ValueError naming the first array of ``arrays`` that holds NaN or inf (:func:`all_finite`).

    Parameters
    ----------
    arrays : mapping str -> array_like
        E.g. ``net.params``.
    name : str
        The argument's name in error messages: ``"<name>['<key>']: expected finite values, got NaN or inf"``.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If an array holds NaN or inf.
    """
    bad = nonfinite_keys(arrays)
    if bad:
        raise ValueError(f"{name}[{bad[0]!r}]: expected finite values, got NaN or inf")


def check_float_array(x: npt.ArrayLike, name: str, dtype: npt.DTypeLike | None = None,
                      ndim: int | tuple[int, ...] | None = None, finite: bool = True) -> np.ndarray:
    """Convert ``x`` to a floating ndarray (of ``dtype`` if given) after checking it.

    Parameters
    ----------
    x : array_like
        Real numbers (integer and unsigned dtypes are converted).
    name : str
        The argument's name in error messages.
    dtype : numpy dtype, optional
        Dtype of the result (default: ``x``'s own if floating, else float64).
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    finite : bool
        Refuse NaN and inf.

    Returns
    -------
    numpy.ndarray
        ``x`` with the same shape, floating dtype (no copy when it already has it).

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
    if finite and not all_finite(arr):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return arr


def check_labels(y: npt.ArrayLike, n: int, n_classes: int, name: str = "y") -> npt.NDArray[np.int64]:
    """Check integer class labels of shape (n,) in [0, n_classes) (in {0, 1} for a 1-logit head).

    Parameters
    ----------
    y : array_like, shape (n,)
        Class labels; integer dtype, or floats with integral values.
    n : int
        Batch size the labels must match.
    n_classes : int
        Number of classes (outputs of the head); labels lie in ``[0, max(n_classes, 2))``.
    name : str
        The argument's name in error messages.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)

    Raises
    ------
    TypeError
        For a non-integer dtype (floats with fractional or non-finite values included).
    ValueError
        For another shape or a label out of range.
    """
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and all_finite(arr) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) matching the batch of x, got {arr.shape}")
    upper = max(n_classes, 2)
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(f"{name}: expected labels in [0, {upper}), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)
