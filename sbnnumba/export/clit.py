"""C99 literals of NumPy arrays: ``static const`` definitions of packed words, integers, flags and reals.

Every literal converts back to exactly the stored value:

* uint64 words are written in hexadecimal (``0x...u``: C99 gives the constant the first unsigned
  type of at least 64 bits), 16 digits each, so a row of bits reads as the packed layout;
* reals are written as the **shortest decimal that rounds to the same value** (NumPy's Dragon4
  ``str`` for float32, Python's ``repr`` for float64), with the suffix ``f`` for float32 so that the
  compiler rounds the decimal directly to ``float`` (one correctly rounded conversion, the C99
  requirement for decimal floating constants, met by gcc and clang); ``+-inf`` is ``+-INFINITY``
  (C99 ``<math.h>``, a constant expression: no libm is linked). NaN is refused (``ValueError``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["c_type", "define_array", "real_literal"]

_PER_LINE = {"uint64_t": 4, "int32_t": 12, "uint8_t": 32, "float": 8, "double": 6}
_INDENT = "    "


def c_type(dtype: npt.DTypeLike) -> str:
    """C type of a NumPy dtype among uint64, int32, bool (stored as uint8_t 0/1), uint8, float32, float64.

    Parameters
    ----------
    dtype : numpy dtype
        One of the six dtypes above.

    Returns
    -------
    str
        ``"uint64_t"``, ``"int32_t"``, ``"uint8_t"``, ``"float"`` or ``"double"``.

    Raises
    ------
    TypeError
        For any other dtype.
    """
    dtype = np.dtype(dtype)
    table = {np.dtype(np.uint64): "uint64_t", np.dtype(np.int32): "int32_t", np.dtype(np.bool_): "uint8_t",
             np.dtype(np.uint8): "uint8_t", np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
    if dtype not in table:
        raise TypeError(f"array: expected uint64, int32, bool, uint8, float32 or float64, got dtype {dtype}")
    return table[dtype]


def real_literal(value: Any, dtype: npt.DTypeLike) -> str:
    """The C literal of one float32 / float64 ``value`` (exact round trip, see the module docstring).

    Parameters
    ----------
    value : float or numpy floating scalar
        Rounded to ``dtype`` first.
    dtype : numpy dtype
        float32 (literal with suffix ``f``) or float64.

    Returns
    -------
    str
        The shortest decimal that rounds back to the same value, or ``INFINITY`` / ``-INFINITY``.

    Raises
    ------
    ValueError
        For NaN.
    """
    dtype = np.dtype(dtype)
    v: Any = dtype.type(value)  # a float32 or float64 scalar
    if np.isnan(v):
        raise ValueError(f"value: expected a finite or infinite real, got NaN (dtype {dtype})")
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    if dtype == np.float32:
        return f"{v!s}f"
    return repr(float(v))


def _element(value, ctype, dtype):
    if ctype == "uint64_t":
        return f"0x{int(value):016x}u"
    if ctype in ("float", "double"):
        return real_literal(value, dtype)
    return str(int(value))


def define_array(name: str, array: npt.ArrayLike, comment: str) -> tuple[str, int]:
    """``static const TYPE name[rows][cols] = {...};`` (1-d: ``name[n]``) with a comment line above.

    Parameters
    ----------
    name : str
        C identifier.
    array : ndarray, 1-d or 2-d
        Values (dtype as in :func:`c_type`).
    comment : str
        What the array holds and its layout (one line, without ``*/``).

    Returns
    -------
    text : str
        The definition, ending with a newline.
    nbytes : int
        Bytes of the data in the C program (``uint8_t`` flags: 1 byte each).
    """
    array = np.asarray(array)
    ctype = c_type(array.dtype)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ValueError(f"array: expected a non-empty 1-d or 2-d array for {name}, got shape {array.shape}")
    if "*/" in comment:
        raise ValueError(f"comment: must not contain '*/', got {comment!r}")
    rows = array.reshape(1, -1) if array.ndim == 1 else array
    per_line = _PER_LINE[ctype]
    body: list[str] = []
    for row in rows:
        items = [_element(v, ctype, array.dtype) for v in row]
        lines = [", ".join(items[s:s + per_line]) for s in range(0, len(items), per_line)]
        if array.ndim == 1:
            body.extend(_INDENT + line + "," for line in lines)
        else:
            inner = (",\n" + 2 * _INDENT).join(lines)
            body.append(f"{_INDENT}{{{inner}}},")
    body[-1] = body[-1].rstrip(",")
    dims = f"[{array.shape[0]}]" if array.ndim == 1 else f"[{array.shape[0]}][{array.shape[1]}]"
    text = f"/* {comment} */\nstatic const {ctype} {name}{dims} = {{\n" + "\n".join(body) + "\n};\n"
    itemsize = 1 if ctype == "uint8_t" else array.dtype.itemsize
    return text, int(array.size * itemsize)
