r"""The input convention of a network: how the arrays a user passes become the network's float inputs.

One rule holds for every entry point (``fit``, ``evaluate``, :meth:`Network.sample`,
:meth:`Network.predict`, :meth:`Network.forward_deterministic`, :meth:`PackedNetwork.predict`):
**uint8 arrays are images and are scaled by 1/255** (``x / 255`` in the network's dtype, as
:func:`sbnnumba.datasets.normalize`), so the same images give the same answer as uint8 and as floats
``x / 255``. A network trained on uint8 images records that (:data:`PIXELS`, set by ``fit``, stored in its
checkpoint's description and in its packed form); it then also refuses float inputs outside ``[0, 1]``
(e.g. pixels 0-255 passed as floats), with a message saying what to pass, instead of answering wrongly.
A network without a record (``None``: trained on float data, or never trained) takes floats as they are.

Other integer dtypes are taken as the float values they hold (and so are range-checked under
:data:`PIXELS`); ``PackedNetwork.predict(..., codes=True)`` declares integer codes instead.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .validation import all_finite

PIXELS = "uint8/255"  # trained on uint8 images, which fit scaled to [0, 1]
CONVENTIONS = (PIXELS,)
PIXEL_RANGE = (0.0, 1.0)


def check_convention(value: object, name: str = "input_convention") -> str | None:
    """Check an input convention.

    Parameters
    ----------
    value : None or str
        The convention to check.
    name : str
        The argument named in messages.

    Returns
    -------
    None or str
        ``value``, one of :data:`CONVENTIONS` (ValueError / TypeError naming ``name`` otherwise).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected None or one of {list(CONVENTIONS)}, got {type(value).__name__}")
    if value not in CONVENTIONS:
        raise ValueError(f"{name}: expected None or one of {list(CONVENTIONS)}, got {value!r}")
    return value


def convention_of(x: npt.ArrayLike) -> str | None:
    """The convention that training on ``x`` records.

    Parameters
    ----------
    x : array-like
        Training inputs.

    Returns
    -------
    None or str
        :data:`PIXELS` for uint8 images, else None.
    """
    return PIXELS if np.asarray(x).dtype == np.uint8 else None


def to_float(x: npt.ArrayLike, dtype: npt.DTypeLike, convention: str | None = None, name: str = "x") -> np.ndarray:
    """``x`` as the network's float input (dtype ``dtype``) under ``convention``.

    Parameters
    ----------
    x : array-like (B, ...)
        uint8 images (scaled by 1/255) or real numbers (other integers as their values).
    dtype : numpy float dtype
        The network's dtype.
    convention : None or str
        :data:`PIXELS`: float inputs must lie in ``[0, 1]``.
    name : str
        The argument named in messages.

    Returns
    -------
    ndarray of ``dtype``, same shape.

    Raises
    ------
    TypeError
        Not a real numeric array (bool, complex, object, strings).
    ValueError
        NaN or inf; with :data:`PIXELS`, float values outside ``[0, 1]``.
    """
    arr = np.asarray(x)
    dt = np.dtype(dtype)
    if arr.dtype == np.uint8:
        return arr.astype(dt) / dt.type(255)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # values beyond the dtype's range become inf, refused just below
        arr = arr.astype(dt, copy=False)
    if not all_finite(arr):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    if convention == PIXELS and arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < PIXEL_RANGE[0] or hi > PIXEL_RANGE[1]:
            raise ValueError(f"{name}: this network was trained on images scaled by 1/255; pass the uint8 images, "
                             f"or floats x / 255 in [0, 1], got values in [{lo:g}, {hi:g}]")
    return arr
