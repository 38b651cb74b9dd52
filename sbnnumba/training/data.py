"""The training data as :func:`~sbnnumba.training.fit` and the learning-rate search see it: the split into a
training and a validation part, float batches, and fingerprints stored in the checkpoint."""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import datasets
from ..inputs import to_float


def as_float(x: npt.ArrayLike, dtype: npt.DTypeLike) -> np.ndarray:
    """uint8 images -> ``x / 255`` in ``dtype``; anything else cast to ``dtype`` (checked finite): the
    library's one input rule, :func:`sbnnumba.inputs.to_float`.

    Parameters
    ----------
    x : array_like, any shape
        A batch of inputs.
    dtype : floating dtype
        The network's dtype.

    Returns
    -------
    ndarray, same shape as ``x``, of ``dtype``
    """
    return to_float(x, dtype)


def split_data(data: Any, val_fraction: float,
               split_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str | None]:
    """``data`` -> ``(x_tr, y_tr, x_val, y_val, name)``.

    Parameters
    ----------
    data : Dataset, (x, y) or (x_train, y_train, x_val, y_val)
        A :class:`~sbnnumba.datasets.Dataset` or a pair is split: ``val_fraction`` of it is held out
        (:func:`~sbnnumba.datasets.train_val_split` with ``split_seed``); a 4-tuple is used as given.
    val_fraction : float in [0, 1)
        Held-out part (0: an empty validation part).
    split_seed : int
        Seed of the split.

    Returns
    -------
    x_tr : ndarray, shape (N_tr, ...)
    y_tr : ndarray, shape (N_tr,)
    x_val : ndarray, shape (N_val, ...)
    y_val : ndarray, shape (N_val,)
    name : str or None
        The Dataset's name (None for arrays).

    Raises
    ------
    TypeError
        For any other form of ``data``.
    """
    if isinstance(data, datasets.Dataset):
        x, y, name = data.x_train, data.y_train, data.name
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        x_tr, y_tr, x_val, y_val = (np.asarray(a) for a in data)
        return x_tr, y_tr, x_val, y_val, None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        (x, y), name = data, None
    else:
        raise TypeError("data: expected a Dataset (x_train, y_train), a pair (x, y) or a 4-tuple "
                        f"(x_train, y_train, x_val, y_val), got {type(data).__name__}")
    x, y = np.asarray(x), np.asarray(y)
    if val_fraction:
        x_tr, y_tr, x_val, y_val = datasets.train_val_split(x, y, val_fraction, split_seed)
    else:
        x_tr, y_tr, x_val, y_val = x, y, x[:0], y[:0]
    return x_tr, y_tr, x_val, y_val, name


def fingerprint(x, y):
    """Shapes plus CRC-32 of the bytes of a data set's arrays (stored in the checkpoint's config).

    Parameters
    ----------
    x : ndarray, shape (N, ...)
        Inputs.
    y : ndarray, shape (N,)
        Labels.

    Returns
    -------
    dict
        ``x_shape`` (list of int), ``x_dtype`` (str), ``n`` (int) and ``crc32`` (int, over the bytes of
        ``x`` then ``y``).
    """
    crc = 0
    for a in (x, y):
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc) if a.size else crc
    return {"x_shape": list(x.shape), "x_dtype": x.dtype.name, "n": int(y.shape[0]), "crc32": int(crc)}
