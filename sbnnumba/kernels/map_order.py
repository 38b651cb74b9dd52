r"""Numba CPU copies between the array orders of the host convolution step (``cpu`` backend).

The step's GEMMs (:mod:`sbnnumba.backends.cpu`) take and give maps in other orders than the layers'
batch-first (B, C, H, W) with ``P = H W`` positions:

* :func:`batch_first` turns the forward product ``W_2 cols`` (C, B P) into the map (B, C, H, W),
  ``out[b, c, p] = prod[c, b P + p] + bias[c]``;
* :func:`channel_major` turns the output gradient ``g`` (B, C, H, W) into (C, B P),
  ``out[c, b P + p] = g[b, c, p]`` (the left factor of the weight gradient ``g_cm cols^T``);
* :func:`examples_inner` turns a chunk ``[b0, b1)`` of its examples into the right factor of the chunked
  input gradient, a C-contiguous (C, P (b1 - b0)) matrix with ``out[c, p (b1 - b0) + b - b0] = g[b, c, p]``
  (the examples innermost, the order of :func:`sbnnumba.kernels.col2im.col2im_into`).

NumPy makes each of these one single-threaded copy of a transposed view (the reference backend's
``_gemm_to_map``, ``_channel_major``, ``_examples_inner``); here the first two are fixed blocks of channels
that :func:`~sbnnumba.runtime.call_threads` threads (kind ``"copy"``) take as they come free
(:func:`~sbnnumba.runtime.run_range_blocks`), the third a copy on the thread
that computes the chunk (:meth:`sbnnumba.backends.cpu.CpuBackend.conv_backward_input`). Copies, and one IEEE
addition in the dtype of the product (no ``fastmath``), as NumPy's: the results are bit for bit the
reference's (``tests/test_conv_step.py``).
"""
import numba
import numpy as np

from ..runtime import run_range_blocks


@numba.njit(nogil=True, cache=True)
def _batch_first(prod, bias, out, c0, c1):
    n_batch, c_out, n_pos = out.shape
    for c in range(c0, c1):
        for b in range(n_batch):
            src = prod[c, b * n_pos:(b + 1) * n_pos]
            dst = out[b, c]
            for p in range(n_pos):
                dst[p] = src[p] + bias[c]


# The row copies are element loops, not slice assignments (dst[:] = src): Numba's slice assignment checks the operands'
# shapes and overlap per row, which cost 1.4-4.6x the loop per map of the paper's conv network at batch 64 (its eight
# maps: channel_major 6.1 against 3.2 ms, _batch_first_copy 5.9 against 3.5 ms at one thread; rows of 1-676 entries).
@numba.njit(nogil=True, cache=True)
def _batch_first_copy(prod, out, c0, c1):
    n_batch, c_out, n_pos = out.shape
    for c in range(c0, c1):
        for b in range(n_batch):
            src = prod[c, b * n_pos:(b + 1) * n_pos]
            dst = out[b, c]
            for p in range(n_pos):
                dst[p] = src[p]


@numba.njit(nogil=True, cache=True)
def _channel_major(g, out, c0, c1):
    n_batch, c_out, n_pos = g.shape
    for c in range(c0, c1):
        dst = out[c]
        for b in range(n_batch):
            src = g[b, c]
            for p in range(n_pos):
                dst[b * n_pos + p] = src[p]


@numba.njit(nogil=True, cache=True)
def _examples_inner(g, b0, b1, out):
    n_batch, c_out, n_pos = g.shape
    nb = b1 - b0
    for c in range(c_out):
        for b in range(b0, b1):
            src = g[b, c]
            dst = out[c]
            for p in range(n_pos):
                dst[p * nb + b - b0] = src[p]


def _positions_last(g):
    """(B, C, H, W) -> C-contiguous (B, C, H W) (a view when ``g`` is C-contiguous)."""
    return np.ascontiguousarray(g).reshape(g.shape[0], g.shape[1], g.shape[2] * g.shape[3])


def batch_first(prod, n_batch, out_hw, bias=None):
    r"""The forward product as a batch-first map: ``out[b, c, y, x] = prod[c, (b H + y) W + x] + bias[c]``.

    Parameters
    ----------
    prod : ndarray (C, B H W), C-contiguous
        ``W_2 cols``.
    n_batch : int
        ``B``.
    out_hw : (int, int)
        ``(H, W)``.
    bias : ndarray (C,) or None
        Added in the dtype of ``prod`` (cast first, as NumPy's ``prod + bias.astype(prod.dtype)``); None: a copy.

    Returns
    -------
    ndarray (B, C, H, W), C-contiguous, dtype of ``prod``
    """
    c_out = prod.shape[0]
    out = np.empty((n_batch, c_out) + tuple(out_hw), dtype=prod.dtype)
    flat = out.reshape(n_batch, c_out, out_hw[0] * out_hw[1])
    if bias is None:
        run_range_blocks(lambda c0, c1: _batch_first_copy(prod, flat, c0, c1), c_out, out.size)
    else:
        bias = np.ascontiguousarray(bias, dtype=prod.dtype)
        run_range_blocks(lambda c0, c1: _batch_first(prod, bias, flat, c0, c1), c_out, out.size)
    return out


def channel_major(g):
    """``g`` (B, C, H, W) as the C-contiguous (C, B H W) matrix ``out[c, (b H + y) W + x] = g[b, c, y, x]``.

    Parameters
    ----------
    g : ndarray (B, C, H, W)

    Returns
    -------
    ndarray (C, B H W), dtype of ``g``
    """
    g3 = _positions_last(g)
    out = np.empty((g.shape[1], g3.shape[0] * g3.shape[2]), dtype=g.dtype)
    run_range_blocks(lambda c0, c1: _channel_major(g3, out, c0, c1), g3.shape[1], out.size)
    return out


def examples_inner(g, b0, b1, out):
    r"""Examples ``[b0, b1)`` of ``g`` (B, C, H, W) with the examples innermost, on the calling thread without
    holding the GIL (for the blocks of :func:`sbnnumba.runtime.run_blas_blocks`).

    Parameters
    ----------
    g : ndarray (B, C, H W), C-contiguous
    b0, b1 : int
        The examples, ``0 <= b0 <= b1 <= B``.
    out : ndarray (C, H W (b1 - b0)), C-contiguous
        Overwritten: ``out[c, p (b1 - b0) + b - b0] = g[b, c, p]``.

    Returns
    -------
    None
    """
    _examples_inner(g, b0, b1, out)
