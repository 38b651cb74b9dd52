r"""Numba CPU kernel of the host convolution step: ``col2im``, the transpose of the channel-major patch matrix.

The host backends compute a convolution as GEMMs on the channel-major patch matrix

.. math::

    \mathrm{cols}[(r, d_y, d_x), (b, o_y, o_x)] = x_{pad}[b, r, s_h o_y + d_y, s_w o_x + d_x]

of shape (C kh kw, B H_out W_out) (:meth:`~sbnnumba.backends.step.StepOperations.conv_patches`; on the ``cpu``
backend the parallel copy of :mod:`sbnnumba.kernels.im2col`): ``a = W_2 cols``
(forward), ``g_W = g_{cm} cols^T`` (weight gradient), and the input gradient sums ``W_2^T g`` back onto the
input positions with :func:`col2im` (one parallel task per input channel, or on the calling thread for the
``cpu`` backend's blocks of examples). ``g`` is the output gradient with
columns (oy, ox, b), the examples innermost, so that the kernel adds contiguous runs of ``W_out B`` entries
(as slices: indexed loops keep Numba's negative-index checks and do not vectorize). Each input
position adds its taps in the fixed order (dy, dx) ascending, starting from 0, so the result does not depend
on the thread count, on the column order of the product or on how the batch is cut into chunks.
"""
import numba
import numpy as np
from numba import prange

from ..runtime import kernel_threads


@numba.njit(error_model="numpy", cache=True)
def _col2im_channel(cols, c, kh, kw, sh, sw, ph, pw, ho, wo, out):
    """Input channel ``c`` of :func:`col2im_into` (the body of both kernels below)."""
    n_batch, c_in, h, w = out.shape
    nb = n_batch
    acc = np.zeros(h * w * nb, dtype=out.dtype)  # (y, x, e): the examples innermost
    for dy in range(kh):
        for dx in range(kw):
            row = cols[(c * kh + dy) * kw + dx]
            lo = max(0, (pw - dx + sw - 1) // sw)
            hi = min(wo, (w - 1 + pw - dx) // sw + 1)
            for oy in range(ho):
                y = sh * oy + dy - ph
                if y < 0 or y >= h:
                    continue
                # slices, not indexed loops: no negative-index checks, so the adds vectorize (3x faster)
                if sw == 1:  # one contiguous run of (hi - lo) nb entries on both sides
                    dst = (y * w + lo + dx - pw) * nb
                    src = (oy * wo + lo) * nb
                    n = (hi - lo) * nb
                    run = acc[dst:dst + n]
                    run += row[src:src + n]
                else:
                    for ox in range(lo, hi):
                        dst = (y * w + sw * ox + dx - pw) * nb
                        src = (oy * wo + ox) * nb
                        run = acc[dst:dst + nb]
                        run += row[src:src + nb]
    for e in range(nb):
        for y in range(h):
            for x in range(w):
                out[e, c, y, x] = acc[(y * w + x) * nb + e]


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _col2im(cols, kh, kw, sh, sw, ph, pw, ho, wo, out):
    for c in prange(out.shape[1]):
        _col2im_channel(cols, c, kh, kw, sh, sw, ph, pw, ho, wo, out)


@numba.njit(nogil=True, error_model="numpy", cache=True)
def _col2im_serial(cols, kh, kw, sh, sw, ph, pw, ho, wo, out):
    for c in range(out.shape[1]):
        _col2im_channel(cols, c, kh, kw, sh, sw, ph, pw, ho, wo, out)


def col2im_into(cols, kernel_size, stride, padding, out, parallel=True):
    r"""Transpose of the patch matrix (columns with the examples innermost), written into ``out`` (Numba,
    parallel over the channels, or on the calling thread only).

    Parameters
    ----------
    cols : ndarray (C * kh * kw, H_out * W_out * B), C-contiguous
        Rows in (c, dy, dx) order, columns in (oy, ox, b) order: the kernel adds runs of ``W_out B``
        entries (instead of ``W_out``, 1 to 24 on the paper's network, with (b, oy, ox) columns).
    kernel_size, stride, padding : (int, int)
        The convolution's ``(kh, kw)``, ``(sh, sw)``, ``(ph, pw)``.
    out : ndarray (B, C, H, W), dtype of ``cols``
        Overwritten: ``out[b, c, y, x] = sum cols[(c, dy, dx), (oy, ox, b)]`` over the taps with
        ``y = sh oy + dy - ph``, ``x = sw ox + dx - pw`` ((dy, dx) ascending, from 0); zero-padding
        positions are dropped.
    parallel : bool
        True: one parallel task per channel on the threads of the per-call rule of
        :mod:`sbnnumba.runtime`. False: the calling thread alone, without holding the GIL (for blocks run
        by :func:`sbnnumba.runtime.run_blas_blocks`). Same sums, same bits.

    Returns
    -------
    None
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    _, _, h, w = out.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if not parallel:
        _col2im_serial(cols, kh, kw, sh, sw, ph, pw, ho, wo, out)
        return
    with kernel_threads(cols.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        _col2im(cols, kh, kw, sh, sw, ph, pw, ho, wo, out)


def col2im(cols, in_shape, kernel_size, stride, padding):
    r"""Transpose of the channel-major patch matrix: its entries summed back onto the input positions.

    Parameters
    ----------
    cols : ndarray (C * kh * kw, H_out * W_out * B)
        Rows in (c, dy, dx) order, columns in (oy, ox, b) order.
    in_shape : (int, int, int, int)
        ``(B, C, H, W)`` of the map.
    kernel_size, stride, padding : (int, int)
        The convolution's ``(kh, kw)``, ``(sh, sw)``, ``(ph, pw)``.

    Returns
    -------
    ndarray (B, C, H, W), dtype of ``cols``
        As :func:`col2im_into`.
    """
    out = np.empty(tuple(in_shape), dtype=cols.dtype)
    col2im_into(np.ascontiguousarray(cols), kernel_size, stride, padding, out)
    return out
