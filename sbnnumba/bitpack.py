r"""Bit-packed {-1, +1} arithmetic: packing, XNOR-popcount matrix products and convolutions.

Layout
------
A {-1, +1} array is packed along its last axis into ``uint64`` words: bit ``i % 64`` of word
``i // 64`` is element ``i``, a set bit means -1, a clear bit +1, and the padding bits of the last
word are 0. :func:`pack` applies ``sign`` with ``sign(0) = +1`` (values ``>= 0`` give bit 0,
negative values bit 1). With zero padding in both operands, the dot product of two packed vectors
of true length ``K`` is

.. math:: a \cdot b = K - 2\, \mathrm{popcount}(a \oplus b).

Convolutions keep channels last: feature maps ``(B, C, H, W)`` are packed as ``(B, H, W,
ceil(C/64))`` and weights ``(C_out, C_in, kh, kw)`` as ``(C_out, kh, kw, ceil(C_in/64))``; both are
produced by :func:`pack_channels`. The fused ``*_threshold`` functions return their binary output
packed in the same layout as their input, so layers chain without unpacking.

Weights can be passed as packed words or, to skip the per-call re-layout of the weight matrix
into the kernels' panel layout, as :class:`PreparedWeights` from :func:`prepare_weights`.

Zero padding in convolutions
----------------------------
The float convolution of the sign network pads with 0, which one bit cannot represent. The
kernels gather padded positions as +1 (bit 0) and subtract, per output channel and per class of
output positions (positions whose receptive fields overlap the padding in the same taps), the sum
of the +-1 weights over the padded taps:

.. math:: y[b, co, oy, ox] = \mathrm{dot}_{+1\text{-padded}} - \sum_{(dy, dx)\ \text{in padding}}
          \sum_{ci} w[co, ci, dy, dx],

so the results equal the float convolution with zeros in the padding exactly.

Bit-plane products (quantized real inputs)
------------------------------------------
A real input ``x = scale * q`` with integer codes ``q`` in ``[0, 2^bits)`` (e.g. pixels
``q / 255``, 8 bits) meets +-1 weights exactly through its bit-planes ``q = sum_b 2^b q_b``:
:func:`pack_planes` packs the planes ``(..., bits, ceil(K/64))`` and :func:`bitplane_matmul` /
:func:`bitplane_matmul_threshold` compute

.. math:: z_j = \sum_i q_i w_{ji} = \sum_b 2^b \big(\mathrm{popcount}(q_b) - 2\,\mathrm{popcount}(q_b \wedge W_j)\big)

with the XNOR-popcount machinery (see :mod:`sbnnumba.kernels.bitplane`); the fused form returns
packed signs, the input of the next binary layer.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .backends import get_backend
from .kernels import bitpack as _k
from .kernels import bitplane as _kp
from .kernels.bitpack import PreparedWeights
from .validation import check_int, check_pair, check_positive_number

if TYPE_CHECKING:
    from .backends.base import Backend

Words = npt.NDArray[np.uint64]

__all__ = [
    "PreparedWeights", "bitplane_matmul", "bitplane_matmul_threshold", "conv2d", "conv2d_threshold", "matmul",
    "matmul_threshold", "n_words", "pack", "pack_channels", "pack_planes", "prepare_weights", "unpack",
    "unpack_channels",
]

n_words = _k.n_words
_PACKABLE_DTYPES = (np.float32, np.float64, np.int8)


# ---------------------------------------------------------------------------------------------------
# Validation helpers specific to packed words (the generic ones live in sbnnumba.validation)
# ---------------------------------------------------------------------------------------------------

def _check_words(words, name, ndim=None):
    """A C-contiguous uint64 ndarray (no silent conversion of other integer types)."""
    if not isinstance(words, np.ndarray) or words.dtype != np.uint64:
        got = words.dtype if isinstance(words, np.ndarray) else type(words).__name__
        raise TypeError(f"{name}: expected a uint64 ndarray of packed words (see sbnnumba.bitpack.pack), got {got}")
    if ndim is not None and words.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array of packed words, got shape {words.shape}")
    if ndim is None and words.ndim < 1:
        raise ValueError(f"{name}: expected at least 1 dimension, got a 0-d array")
    return np.ascontiguousarray(words)


def _check_k(k, name, words, words_name):
    k = check_int(k, name, 0)
    if _k.n_words(k) != words.shape[-1]:
        raise ValueError(f"{name}: {name}={k} needs ceil({k}/64)={_k.n_words(k)} words per row, "
                         f"but {words_name} has {words.shape[-1]} (shape {words.shape})")
    return k


def _check_padding_bits(words, k, name):
    """Bits at positions >= k of the last word must be 0 (they would otherwise count as -1)."""
    used = k % _k.WORD_BITS
    if used and words.size and np.any(words[..., -1] >> np.uint64(used)):
        raise ValueError(f"{name}: padding bits beyond k={k} must be 0 (pack with sbnnumba.bitpack.pack)")


def _check_thresholds(thresholds, n_columns, k):
    """Real thresholds (scalar or (n_columns,)), NaN rejected; returns ceil(t) clipped to +-(k+2), int64."""
    t = np.asarray(thresholds)
    if t.dtype.kind not in "fiu":
        raise TypeError(f"thresholds: expected real numbers, got dtype {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n_columns):
        raise ValueError(f"thresholds: expected a scalar or shape ({n_columns},), got shape {t.shape}")
    if np.any(np.isnan(t)):
        raise ValueError("thresholds: expected real values, found NaN")
    # dot is an integer in [-k, k]: dot >= t  <=>  dot >= ceil(t); clipping keeps +-inf meaningful.
    t = np.ceil(np.clip(t.astype(np.float64), -(k + 2), k + 2)).astype(np.int64)
    return np.broadcast_to(t, (n_columns,))


def _check_flip(flip, n_columns):
    """Per-column ``flip`` (bool (n_columns,) or None) -> bool (n_columns,)."""
    if flip is None:
        return np.zeros(n_columns, np.bool_)
    f = np.asarray(flip)
    if f.dtype != np.bool_:
        raise TypeError(f"flip: expected a boolean array or None, got dtype {f.dtype}")
    if f.shape != (n_columns,):
        raise ValueError(f"flip: expected shape ({n_columns},), got {f.shape}")
    return f


# ---------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------

def pack(x: npt.ArrayLike) -> Words:
    r"""Pack the signs of ``x`` along its last axis into uint64 words.

    .. math:: \mathrm{bit}_{i \bmod 64}(\mathrm{words}[..., \lfloor i/64 \rfloor]) = [x[..., i] < 0]

    (bit set = -1; ``sign(0) = +1``; the padding bits of the last word are 0).

    Parameters
    ----------
    x : array_like, shape (..., K)
        Real values, usually +-1 states (float32, float64 and int8 are packed without conversion).

    Returns
    -------
    words : ndarray, shape (..., ceil(K/64)), uint64

    Raises
    ------
    TypeError
        If ``x`` is not a real numeric array (bool, complex, object).
    ValueError
        If ``x`` is 0-d or contains NaN.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"x: expected a real numeric array of +-1 values, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x: expected at least 1 dimension (packing runs along the last axis), got a 0-d array")
    if x.dtype not in _PACKABLE_DTYPES:
        # Keep only the sign (casting e.g. int16 200 to int8 would flip it).
        x = np.where(x < 0, -1, 1).astype(np.int8) if x.dtype.kind in "iu" else x.astype(np.float32)
    k = x.shape[-1]
    rows = np.ascontiguousarray(x).reshape(int(np.prod(x.shape[:-1])), k)
    words = np.empty((rows.shape[0], _k.n_words(k)), np.uint64)
    row_has_nan = np.zeros(rows.shape[0], np.bool_)
    _k.pack_rows(rows, words, row_has_nan)
    if row_has_nan.any():
        raise ValueError("x: expected real values, found NaN (its sign is undefined)")
    return words.reshape(x.shape[:-1] + (words.shape[1],))


def unpack(words: Words, k: int, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    r"""Unpack uint64 words into a +-1 array: the inverse of :func:`pack` on +-1 inputs.

    .. math:: x[..., i] = 1 - 2\, \mathrm{bit}_{i \bmod 64}(\mathrm{words}[..., \lfloor i/64 \rfloor])

    Parameters
    ----------
    words : ndarray, shape (..., ceil(k/64)), uint64
        Packed words (:func:`pack`).
    k : int
        True length of the last axis (padding bits are ignored).
    dtype : dtype, default float32
        Output dtype (float32 states; int8 for compact storage).

    Returns
    -------
    ndarray, shape (..., k), of ``dtype`` with values in {-1, +1}
    """
    words = _check_words(words, "words")
    k = _check_k(k, "k", words, "words")
    return _k.unpack_reference(words, k, dtype)


def pack_channels(x: npt.ArrayLike) -> Words:
    """Pack +-1 feature maps or conv weights along axis 1 (channels), moved last.

    ``(B, C, H, W) -> (B, H, W, ceil(C/64))`` for inputs and
    ``(C_out, C_in, kh, kw) -> (C_out, kh, kw, ceil(C_in/64))`` for weights, as expected by
    :func:`conv2d` and :func:`conv2d_threshold`. Same bit rule as :func:`pack` (bit set = -1).

    Parameters
    ----------
    x : array_like, shape (B, C, H, W) or (C_out, C_in, kh, kw)
        Real values, usually +-1.

    Returns
    -------
    ndarray, shape (B, H, W, ceil(C/64)) or (C_out, kh, kw, ceil(C_in/64)), uint64
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x: expected a 4-d array (B, C, H, W) or (C_out, C_in, kh, kw), got shape {x.shape}")
    return pack(np.moveaxis(x, 1, -1))


def unpack_channels(words: Words, channels: int, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """Inverse of :func:`pack_channels`: ``(B, H, W, ceil(C/64)) -> (B, C, H, W)`` of +-1 ``dtype``.

    Parameters
    ----------
    words : ndarray, shape (B, H, W, ceil(channels/64)), uint64
        Maps packed along channels.
    channels : int
        True number of channels ``C`` (padding bits are ignored).
    dtype : dtype, default float32
        Output dtype.

    Returns
    -------
    ndarray, shape (B, channels, H, W), of ``dtype`` with values in {-1, +1}
    """
    words = _check_words(words, "words", ndim=4)
    return np.moveaxis(unpack(words, channels, dtype), -1, 1)


def prepare_weights(w_words: Words | PreparedWeights) -> PreparedWeights:
    """Re-lay out packed weights once into the kernels' panel layout (see :class:`PreparedWeights`).

    Costs O(N * n_words), like one pass over the weights; pass the result wherever a function
    takes ``b_words`` / ``w_words`` to skip this step on every call. The words are copied (and made
    read-only), so later changes to ``w_words`` cannot leave stale panels behind.

    Parameters
    ----------
    w_words : ndarray, shape (N, n_words) or (C_out, kh, kw, n_words), uint64, or PreparedWeights
        Packed weights (returned unchanged if already prepared).

    Returns
    -------
    PreparedWeights
    """
    if isinstance(w_words, PreparedWeights):
        return w_words
    words = _check_words(w_words, "w_words")
    if words.ndim not in (2, 4):
        raise ValueError(f"w_words: expected shape (N, n_words) or (C_out, kh, kw, n_words), got {words.shape}")
    words = words.copy()
    words.setflags(write=False)
    # panels stay writable: a read-only array is a different Numba type (a second compilation)
    return PreparedWeights(words, panels=True)


def _weights(w, name, ndim):
    """PreparedWeights from packed words or PreparedWeights, checked to have ``ndim`` dimensions (the
    panel layout of plain words is made only if the backend reads it)."""
    if isinstance(w, PreparedWeights):
        if w.words.ndim != ndim:
            raise ValueError(f"{name}: expected prepared weights of a {ndim}-d array, got shape {w.words.shape}")
        return w
    return PreparedWeights(_check_words(w, name, ndim))


# ---------------------------------------------------------------------------------------------------
# Matrix products
# ---------------------------------------------------------------------------------------------------

def _matmul_operands(a_words, b_words, k):
    a = _check_words(a_words, "a_words", ndim=2)
    b = _weights(b_words, "b_words", ndim=2)
    k = _check_k(k, "k", a, "a_words")
    if b.words.shape[1] != a.shape[1]:
        raise ValueError(f"b_words: expected {a.shape[1]} words per row like a_words, got shape {b.words.shape}")
    _check_padding_bits(a, k, "a_words")
    _check_padding_bits(b.words, k, "b_words")
    return a, b, k


def matmul(a_words: Words, b_words: Words | PreparedWeights, k: int,
           backend: str | Backend | None = None) -> npt.NDArray[np.int32]:
    r"""XNOR-popcount matrix product of packed +-1 matrices: ``a @ b.T``.

    .. math:: \mathrm{out}[i, j] = \sum_{t<k} a_{it} b_{jt} = k - 2 \sum_w \mathrm{popcount}(A[i, w] \oplus B[j, w])

    Parameters
    ----------
    a_words : ndarray, shape (M, ceil(k/64)), uint64
        Packed rows of the +-1 matrix ``a`` (M, k), e.g. activations.
    b_words : ndarray, shape (N, ceil(k/64)), uint64, or PreparedWeights
        Packed rows of the +-1 matrix ``b`` (N, k), e.g. weights (N_out, N_in).
    k : int
        True reduction length (padding bits must be 0 in both operands).
    backend : str or Backend, optional
        Where the product runs (:func:`sbnnumba.backends.get_backend`; default ``$SBNNUMBA_BACKEND`` or
        ``"cpu"``); ``"cuda"`` runs the CUDA XNOR kernels (host arrays in and out).

    Returns
    -------
    ndarray, shape (M, N), int32
        Equal to ``unpack(a_words, k) @ unpack(b_words, k).T``.
    """
    a, b, k = _matmul_operands(a_words, b_words, k)
    return get_backend(backend).xnor_matmul(a, b, k)


def matmul_threshold(a_words: Words, b_words: Words | PreparedWeights, k: int, thresholds: npt.ArrayLike,
                     flip: npt.ArrayLike | None = None, backend: str | Backend | None = None) -> Words:
    r"""Fused ``sign(a @ b.T - thresholds)``, packed: the next layer's packed input.

    .. math:: y_{ij} = s_j \cdot \mathrm{sign}(\mathrm{dot}_{ij} - t_j), \quad
              \mathrm{sign}(0) = +1, \quad s_j = -1 \text{ if flip}_j \text{ else } +1

    i.e. ``y = +1`` iff ``dot >= t`` (unflipped). ``flip`` serves a folded normalization with a
    negative scale: ``sign(g (dot - mu) + beta)`` with ``g < 0`` is ``-sign(dot - t)``
    (up to the tie ``dot == t``, where this function gives ``-1``).

    Parameters
    ----------
    a_words, b_words, k, backend
        As in :func:`matmul`.
    thresholds : float or array_like, shape (N,)
        Per output column; real (non-integer thresholds act as their ceiling), +-inf allowed.
    flip : array_like of bool, shape (N,), optional
        Negate the output of these columns.

    Returns
    -------
    ndarray, shape (M, ceil(N/64)), uint64
        Packed ``y`` (bit set = -1, padding bits 0).
    """
    a, b, k = _matmul_operands(a_words, b_words, k)
    n_columns = b.words.shape[0]
    t = np.ascontiguousarray(_check_thresholds(thresholds, n_columns, k))
    return get_backend(backend).xnor_matmul_threshold(a, b, k, t, _check_flip(flip, n_columns))


# ---------------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------------

def _conv_operands(x_words, w_words, c_in, stride, padding):
    x = _check_words(x_words, "x_words", ndim=4)
    weights = _weights(w_words, "w_words", ndim=4)
    w = weights.words
    c_in = check_int(c_in, "c_in", 1)
    if _k.n_words(c_in) != x.shape[3]:
        raise ValueError(f"c_in: c_in={c_in} needs ceil({c_in}/64)={_k.n_words(c_in)} words per pixel, "
                         f"but x_words has {x.shape[3]} (shape {x.shape})")
    if w.shape[3] != x.shape[3]:
        raise ValueError(f"w_words: expected {x.shape[3]} channel words like x_words, got shape {w.shape}")
    _check_padding_bits(x, c_in, "x_words")
    _check_padding_bits(w, c_in, "w_words")
    sh, sw = check_pair(stride, "stride", 1)
    ph, pw = check_pair(padding, "padding", 0)
    _, height, width, _ = x.shape
    _, kh, kw, _ = w.shape
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"w_words: kernel {kh}x{kw} does not fit the padded input {height + 2 * ph}x{width + 2 * pw}")
    return x, weights, c_in, (sh, sw), (ph, pw)


def conv2d(x_words: Words, w_words: Words | PreparedWeights, c_in: int, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, backend: str | Backend | None = None) -> npt.NDArray[np.int32]:
    r"""Binary 2-D convolution (cross-correlation) of packed +-1 maps with zero padding.

    .. math:: y[b, co, oy, ox] = \sum_{ci, dy, dx} x_{pad}[b, ci, oy s_h + dy, ox s_w + dx]\, w[co, ci, dy, dx]

    where ``x_pad`` is ``x`` padded with zeros; the padding is handled exactly (see the module
    docstring), so ``y`` equals the float convolution of the unpacked +-1 arrays.

    Parameters
    ----------
    x_words : ndarray, shape (B, H, W, ceil(c_in/64)), uint64
        Input maps (B, c_in, H, W) packed along channels (:func:`pack_channels`).
    w_words : ndarray, shape (C_out, kh, kw, ceil(c_in/64)), uint64, or PreparedWeights
        Weights (C_out, c_in, kh, kw) packed along input channels (:func:`pack_channels`).
    c_in : int
        True number of input channels.
    stride, padding : int or (int, int)
        Vertical and horizontal stride (>= 1) and zero padding (>= 0).
    backend : str or Backend, optional
        As in :func:`matmul`.

    Returns
    -------
    ndarray, shape (B, C_out, H_out, W_out), int32
        ``H_out = (H + 2 p_h - kh) // s_h + 1``, ``W_out = (W + 2 p_w - kw) // s_w + 1``.
    """
    x, weights, c_in, stride, padding = _conv_operands(x_words, w_words, c_in, stride, padding)
    return get_backend(backend).binary_conv2d(x, weights, c_in, stride, padding)


def conv2d_threshold(x_words: Words, w_words: Words | PreparedWeights, c_in: int, thresholds: npt.ArrayLike,
                     flip: npt.ArrayLike | None = None, stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] = 0, backend: str | Backend | None = None) -> Words:
    r"""Fused ``sign(conv2d(x, w) - thresholds)`` packed in the input layout, so conv layers chain.

    .. math:: y[b, co, oy, ox] = s_{co}\, \mathrm{sign}(\mathrm{conv}[b, co, oy, ox] - t_{co}),
              \quad \mathrm{sign}(0) = +1, \quad s_{co} = -1 \text{ if flip}_{co} \text{ else } +1

    Parameters
    ----------
    x_words, w_words, c_in, stride, padding, backend
        As in :func:`conv2d`.
    thresholds : float or array_like, shape (C_out,)
        Per output channel; real, +-inf allowed.
    flip : array_like of bool, shape (C_out,), optional
        Negate these output channels (folded normalization with a negative scale).

    Returns
    -------
    ndarray, shape (B, H_out, W_out, ceil(C_out/64)), uint64
        Packed ``y`` (bit set = -1, padding bits 0): a valid ``x_words`` for the next layer.
    """
    x, weights, c_in, stride, padding = _conv_operands(x_words, w_words, c_in, stride, padding)
    c_out, kh, kw, _ = weights.words.shape
    t = np.ascontiguousarray(_check_thresholds(thresholds, c_out, c_in * kh * kw))
    return get_backend(backend).binary_conv2d_threshold(x, weights, c_in, t, _check_flip(flip, c_out), stride,
                                                        padding)


# ---------------------------------------------------------------------------------------------------
# Bit-plane products of quantized real inputs
# ---------------------------------------------------------------------------------------------------

def _planes_of_rows(rows, bits, scale):
    """Planes (R, bits, ceil(K/64)) and per-row "bad" flags of 2-d codes / values ``rows`` (R, K)."""
    n_rows, k = rows.shape
    planes = np.empty((n_rows, bits, _k.n_words(k)), np.uint64)
    bad = np.zeros(n_rows, np.bool_)
    if scale is None:
        if k % 8:
            padded = np.zeros((n_rows, k + (-k) % 8), np.uint8)
            padded[:, :k] = rows
            rows = padded
        _kp.pack_planes_codes(np.ascontiguousarray(rows).view(np.uint64), planes, bad)
    else:
        _kp.pack_planes_float(np.ascontiguousarray(rows), rows.dtype.type(1.0 / scale), scale, 1 << bits,
                              planes, bad)
    return planes, bad


def pack_planes(x: npt.ArrayLike, bits: int, scale: float | None = None) -> Words:
    r"""Pack the bit-planes of quantized inputs along the last axis: the operand of :func:`bitplane_matmul`.

    The inputs are ``x = scale * q`` with integer codes ``q`` in ``[0, 2^bits)``, and

    .. math:: \mathrm{bit}_{i \bmod 64}(\mathrm{planes}[..., b, \lfloor i/64 \rfloor]) = \mathrm{bit}_b(q[..., i]),
              \qquad q = \sum_{b < bits} 2^b q_b

    (padding bits 0). The ``bits`` planes of one input row are stored together.

    Parameters
    ----------
    x : array_like, shape (..., K)
        With ``scale=None``: the integer codes ``q`` (any integer dtype; ``uint8`` is packed without
        conversion). Otherwise float values on the grid ``x = dtype(scale * q)`` (the product in
        float64, rounded once to the dtype of ``x``, float32 or float64; other dtypes are converted
        to float64), e.g. ``q / 255`` in float32 from :func:`sbnnumba.datasets.normalize` with
        ``scale = 1/255``; the codes are recovered by rounding ``x / scale``.
    bits : int
        Number of planes, 1 to 8.
    scale : float, optional
        Positive grid step of float inputs.

    Returns
    -------
    planes : ndarray, shape (..., bits, ceil(K/64)), uint64

    Raises
    ------
    TypeError
        ``x`` is not numeric, or float without ``scale``.
    ValueError
        A code outside ``[0, 2^bits)`` or, with ``scale``, a value not on the grid (also NaN, inf);
        the message names ``x`` and the first offending row.
    """
    bits = check_int(bits, "bits", 1, _kp.MAX_BITS)
    x = np.asarray(x)
    if x.ndim < 1:
        raise ValueError("x: expected at least 1 dimension (planes are packed along the last axis), got a 0-d array")
    if scale is None:
        if x.dtype.kind not in "iu":
            raise TypeError(f"x: expected integer codes (or pass scale= for values on a grid), got dtype {x.dtype}")
        if x.dtype != np.uint8:
            if x.size and (x.min() < 0 or x.max() >= 1 << bits):
                raise ValueError(f"x: expected integer codes in [0, {1 << bits}) for bits={bits}, found values in "
                                 f"[{x.min()}, {x.max()}]")
            x = x.astype(np.uint8)
    else:
        scale = check_positive_number(scale, "scale")
        if x.dtype.kind not in "fiu":
            raise TypeError(f"x: expected real values, got dtype {x.dtype}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
    rows = x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])
    planes, bad = _planes_of_rows(rows, bits, scale)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        what = f"integer codes in [0, {1 << bits})" if scale is None else \
            f"values on the grid x = scale * q, q integer in [0, {1 << bits}) (scale={scale!r})"
        raise ValueError(f"x: expected {what}; row {r} (of the flattened leading axes) is not")
    return planes.reshape(x.shape[:-1] + planes.shape[1:])


def _bitplane_operands(planes, w_words, k):
    planes = _check_words(planes, "planes", ndim=3)
    bits = planes.shape[1]
    if not 1 <= bits <= _kp.MAX_BITS:
        raise ValueError(f"planes: expected shape (M, bits, n_words) with 1 <= bits <= {_kp.MAX_BITS}, "
                         f"got {planes.shape}")
    weights = _weights(w_words, "w_words", ndim=2)
    w, panels = weights.words, weights.panels
    k = _check_k(k, "k", planes, "planes")
    if w.shape[1] != planes.shape[2]:
        raise ValueError(f"w_words: expected {planes.shape[2]} words per row like planes, got shape {w.shape}")
    _check_padding_bits(planes, k, "planes")
    _check_padding_bits(w, k, "w_words")
    offsets = ((1 << bits) - 1) * _k.popcount_reference(w).sum(axis=-1)  # (2^bits - 1) * (number of -1 weights)
    return planes, w, panels, k, bits, offsets


def bitplane_matmul(planes: Words, w_words: Words | PreparedWeights, k: int) -> npt.NDArray[np.int64]:
    r"""Exact integer product of quantized inputs and packed +-1 weights: ``q @ w.T``.

    .. math:: z_{ij} = \sum_{t<k} q_{it} w_{jt}
              = \sum_{b} 2^b \big(\mathrm{popcount}(q_{i,b}) - 2\,\mathrm{popcount}(q_{i,b} \wedge W_j)\big)

    (sums over the words of a row), computed as
    ``sum_b 2^b popcount(q_b XOR W_j) - (2^bits - 1) popcount(W_j)``.

    Parameters
    ----------
    planes : ndarray, shape (M, bits, ceil(k/64)), uint64
        Bit-planes of the codes ``q`` (M, k) from :func:`pack_planes`.
    w_words : ndarray, shape (N, ceil(k/64)), uint64, or PreparedWeights
        Packed +-1 weights (N, k) (:func:`pack`: bit set = -1).
    k : int
        True reduction length (padding bits must be 0 in both operands).

    Returns
    -------
    ndarray, shape (M, N), int64
    """
    planes, w, panels, k, bits, offsets = _bitplane_operands(planes, w_words, k)
    out = np.empty((planes.shape[0], w.shape[0]), np.int64)
    _kp.bitplane_gemm(planes, panels, offsets.astype(np.int64), out)
    return out


def _bitplane_limits(offsets, k, bits, thresholds, flip, n_panels):
    """(limits, invert_words) of :func:`sbnnumba.kernels.bitplane.bitplane_gemm_threshold`."""
    n_columns = offsets.shape[0]
    t = _check_thresholds(thresholds, n_columns, ((1 << bits) - 1) * k)
    # -1 iff z < t  <=>  S = z + offset < t + offset  <=>  NOT (S > t + offset - 1): invert unflipped columns
    invert = _k.flip_words(~_check_flip(flip, n_columns))
    return _k.padded_limits(t + offsets - 1, n_panels), invert


def bitplane_matmul_threshold(planes: Words, w_words: Words | PreparedWeights, k: int, thresholds: npt.ArrayLike,
                              flip: npt.ArrayLike | None = None) -> Words:
    r"""Fused ``sign(q @ w.T - thresholds)`` of quantized inputs, packed: a binary layer's packed input.

    .. math:: y_{ij} = s_j \cdot \mathrm{sign}(z_{ij} - t_j), \quad \mathrm{sign}(0) = +1, \quad
              s_j = -1 \text{ if flip}_j \text{ else } +1

    with ``z`` of :func:`bitplane_matmul`: ``y = +1`` iff ``z >= t`` (unflipped), ``y = +1`` iff
    ``z < t`` (flipped).

    Parameters
    ----------
    planes, w_words, k
        As in :func:`bitplane_matmul`.
    thresholds : float or array_like, shape (N,)
        Per output column; real (non-integers act as their ceiling), +-inf allowed.
    flip : array_like of bool, shape (N,), optional
        Negate the output of these columns.

    Returns
    -------
    ndarray, shape (M, ceil(N/64)), uint64
        Packed ``y`` (bit set = -1, padding bits 0).
    """
    planes, w, panels, k, bits, offsets = _bitplane_operands(planes, w_words, k)
    limits, invert = _bitplane_limits(offsets, k, bits, thresholds, flip, panels.shape[0])
    out = np.zeros((planes.shape[0], _k.n_words(w.shape[0])), np.uint64)
    _kp.bitplane_gemm_threshold(planes, panels, limits, invert, out)
    return out
