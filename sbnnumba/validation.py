"""Input checks shared by the public API: every message names the argument and what was expected."""
from __future__ import annotations

import numbers

import numpy as np


def as_generator(rng, name="rng"):
    """Return a ``numpy.random.Generator`` from ``None`` (fresh entropy), an int seed or a Generator."""
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name}: expected None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


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
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
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
        raise ValueError(f"{name}: labels must lie in [0, {upper}), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)
