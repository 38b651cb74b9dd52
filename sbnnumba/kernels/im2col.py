r"""Numba CPU kernel of the host convolution step: ``im2col``, the channel-major patch matrix.

The ``cpu`` backend computes a convolution as GEMMs on the patch matrix
(:meth:`~sbnnumba.backends.step.StepOperations.conv_patches`) of maps ``x`` (B, C, H, W),

.. math::

    \mathrm{cols}[(r, d_y, d_x), (b, o_y, o_x)] = x_{pad}[b, r, s_h o_y + d_y, s_w o_x + d_x]
    = x[b, r, s_h o_y + d_y - p_h, s_w o_x + d_x - p_w]

(``x_pad``: ``x`` with ``p_h``, ``p_w`` zeros on each side; 0 where the index falls in that padding),
stored C-contiguous with shape (C kh kw, B H_out W_out): row ``(r kh + d_y) kw + d_x``, column
``(b H_out + o_y) W_out + o_x``, so entry ``(row, col)`` sits at offset ``row B H_out W_out + col``.
:func:`im2col` writes it in fixed blocks of rows that the threads take as they come free
(:func:`sbnnumba.runtime.run_range_blocks`), a pure copy: the matrix is bit for bit the
reference backend's (NumPy's copy of a strided view of ``x``, :func:`sbnnumba.backends.reference._cols`;
``tests/test_backends.py`` and ``tests/test_conv_step.py`` compare them), built on
:func:`~sbnnumba.runtime.call_threads` threads (kind ``"copy"``) instead of one, and without NumPy's
six-dimensional iterator (faster at one thread as well on every stage of the paper's network).
"""
import numba
import numpy as np

from ..runtime import run_range_blocks


@numba.njit(nogil=True, cache=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, ho, wo, out, row0, row1):
    n_batch, c_in, h, w = x.shape
    n_pos = ho * wo
    xf = x.reshape(-1)
    of = out.reshape(-1)
    n_cols = n_batch * n_pos
    for row in range(row0, row1):  # rows (r, dy, dx): their B H_out W_out entries are contiguous
        r = row // (kh * kw)
        dy = (row // kw) % kh
        dx = row % kw
        lo = max(0, (pw - dx + sw - 1) // sw)  # the output columns whose input column is inside the map
        hi = max(lo, min(wo, (w - 1 + pw - dx) // sw + 1))
        for b in range(n_batch):
            dst0 = row * n_cols + b * n_pos
            src0 = (b * c_in + r) * h * w
            for oy in range(ho):
                y = sh * oy + dy - ph
                dst = dst0 + oy * wo
                # unsigned indices: no negative-index wrap-around test, so the copies vectorize (2x faster)
                if y < 0 or y >= h:
                    for i in range(wo):
                        of[np.uint64(dst + i)] = 0
                    continue
                for i in range(lo):
                    of[np.uint64(dst + i)] = 0
                for i in range(hi, wo):
                    of[np.uint64(dst + i)] = 0
                src = src0 + y * w + dx - pw
                for ox in range(lo, hi):
                    of[np.uint64(dst + ox)] = xf[np.uint64(src + sw * ox)]


def im2col(x, kernel_size, stride, padding):
    r"""Channel-major patch matrix of maps ``x`` (Numba, blocks of rows on the threads).

    Parameters
    ----------
    x : ndarray (B, C, H, W)
        Maps (any dtype Numba handles; copied to C order first if they are not).
    kernel_size, stride, padding : (int, int)
        The convolution's ``(kh, kw)``, ``(sh, sw)``, ``(ph, pw)``.

    Returns
    -------
    ndarray (C kh kw, B H_out W_out), dtype of ``x``, C-contiguous
        ``cols[(r, dy, dx), (b, oy, ox)] = x[b, r, sh oy + dy - ph, sw ox + dx - pw]``, 0 outside the map,
        with ``H_out = (H + 2 ph - kh) // sh + 1`` and ``W_out`` likewise.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    x = np.ascontiguousarray(x)
    n_batch, c_in, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.empty((c_in * kh * kw, n_batch * ho * wo), dtype=x.dtype)
    # fixed blocks of rows taken by the threads as they come free (the per-call rule of sbnnumba.runtime)
    run_range_blocks(lambda r0, r1: _im2col(x, kh, kw, sh, sw, ph, pw, ho, wo, out, r0, r1), out.shape[0], out.size)
    return out
