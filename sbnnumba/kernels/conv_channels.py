r"""Channel-innermost Numba kernels for the PSA flip propagation through a conv layer with a small output map.

The flip propagation (spec psa.md, section 2.10; :mod:`sbnnumba.kernels.conv_cpu` for the forms)

.. math::

    d^{in}[b,r,i] = \sum_c \sum_{j : i \in RF(j)} \Delta[(r,i) \to (c,j)]\, d^{out}[b,c,j]

is, on a 1x1 or 3x3 output map, short along every spatial axis: the cell-major kernels of
:mod:`sbnnumba.kernels.conv_cpu` vectorize over (output cell, example) pairs, so a tap loop there is only
``n_q * bb <= 64`` entries long (one zmm division per 16), and its setup (tap range, six row slices,
eight weight factors) costs as much as the loop itself. Here the innermost loop runs over the **input
channels** ``r`` instead, which are long (96-192 in the paper's network) whatever the map:

.. math::

    acc[i, e, r] \mathrel{+}= t(g[c,q,e], e^{-a}[c,q,e], K[c,k,r], x[i,e,r]) \quad
    \text{for } c \text{ ascending, then tap } k \text{ ascending}, \quad i = q + off_k,

with ``t = g / (1 + e^{-a} K_{sel})`` (ratio form, ``K_sel = e^{2 W x}``, chosen by the sign of ``x``:
:func:`sbnnumba.kernels.ratio_pair.factor`; the terms of output channels ``c, c + 1`` summed as one by
:func:`sbnnumba.kernels.ratio_pair.pair_term`, one division per pair) or ``t = (F(v + s W x) - F(v)) d``
(bounded form). Each accumulator entry adds the same terms in
the same order (c ascending, tap ascending, from 0) and each term is evaluated by the same expression as in
the cell-major kernels (the ratio form's pair of terms with every operation written out), so both layouts give
bit-identical results (``tests/test_conv_channels.py``): which one runs is a speed decision only
(:func:`sbnnumba.kernels.conv_cpu.channel_inner`). (The cell-major kernels also add the zero terms of the output
cells beyond a row's ``W_out`` and of padded examples; adding ``+0`` changes no sum except the sign of a zero.)

**Layout.** The cells, taps and output grids are those of the phase-grid layout
(:func:`sbnnumba.kernels.conv_layout.phase_layout`): the batch is cut into blocks of ``bb`` examples
(:func:`channel_blocks`); per block, x_in is stored as ``sel[blk, cell, e, r]`` (+1 at padding cells) and the
weight factors transposed to ``(C_out, taps, C_in)``, so that the ``r`` loop reads three contiguous rows and
updates one; the per-output-unit factors are scalars of that loop and are read from the (B, C_out, H_out, W_out)
maps as they come (no copy). A parallel task is one block; its accumulator ``(cells, bb, C_in)`` stays within
:data:`ACC_BYTES`.

The generic (any-noise) form is not here: it evaluates a branchy scalar cdf per connection and does not
vectorize in either layout.
"""
import numba
import numpy as np
from numba import prange

from .ratio_pair import PAIR_FASTMATH, denominator, factor, pair_term
from .scalar import bounded_cdf_diff

# The ratio kernels (both layouts) compile with ratio_pair.PAIR_FASTMATH: no "arcp" (which puts a reciprocal estimate
# and a Newton step in vector lanes and an exact division in the scalar remainder), no "contract" (the one FMA of
# each denominator and numerator is written out), no "reassoc": every pair of terms is rounded as written and each
# accumulator element adds its terms in the fixed (c, tap) order, so the result does not depend on which elements the
# compiler puts in vector lanes (map size, batch size, vector width, thread count, layout).
# The bounded kernels (both layouts) also leave out "contract": the triangular difference has products on both
# sides of a subtraction (a b - c d), and which one LLVM fuses into an FMA changed with unrelated edits of the
# kernel (1-ulp differences between the layouts); without it every operation is rounded as written.
BOUNDED_FASTMATH = {"nnan", "ninf", "nsz"}

# One task's accumulator (cells x bb x C_in): L2-resident (half of this machine's 1 MB) while the weight rows stream;
# at the paper's 9x9 -> 7x7 stage 4-8 examples per block ran at 9.1-9.3 G connections/s, 2 examples (2^17 bytes) at 7.6.
ACC_BYTES = 1 << 19
MAX_BLOCK = 8  # examples per block: the weight rows of one (c, tap) are reused bb times from L1


def channel_blocks(n_batch, n_cells, c_in, itemsize):
    """Batch blocks of the channel-innermost kernels.

    Parameters
    ----------
    n_batch : int
        Examples ``B``.
    n_cells : int
        Phase-grid cells of one input map (``n_grid`` of :func:`sbnnumba.kernels.conv_layout.phase_layout`).
    c_in : int
        Input channels.
    itemsize : int
        Bytes per accumulator entry.

    Returns
    -------
    (n_blocks, bb) : (int, int)
        ``bb = ceil(B / n_blocks)`` examples per block, at most :data:`MAX_BLOCK` and at most what keeps a
        block's accumulator ``n_cells * bb * c_in * itemsize`` within :data:`ACC_BYTES` (at least 1); the
        last block is padded with inert examples (``g = d = 0``).
    """
    cap = max(1, min(MAX_BLOCK, ACC_BYTES // max(1, n_cells * c_in * itemsize)))
    n_blocks = -(-n_batch // cap)
    return n_blocks, -(-n_batch // n_blocks)


def channel_cells(x_in, in_index, n_grid, n_blocks, bb, dtype, out=None):
    """x_in in the channel-innermost layout.

    Parameters
    ----------
    x_in : ndarray (B, C_in, H, W)
    in_index : int64 ndarray (H * W,)
        Phase-grid cell of each input position (:func:`sbnnumba.kernels.conv_layout.phase_layout`).
    n_grid : int
        Cells per map.
    n_blocks, bb : int
        Batch blocks (:func:`channel_blocks`).
    dtype : numpy dtype
        Of the result.
    out : ndarray (NB, n_grid, bb, C_in) of ``dtype``, C-ordered, optional
        Written and returned instead of a new array.

    Returns
    -------
    ndarray (NB, n_grid, bb, C_in)
        ``sel[blk, in_index[p], e, r] = x_in[blk bb + e, r, p]``, +1 at padding cells (never read back), 0 for the
        padded examples of the last block.
    """
    n_batch, c_in = x_in.shape[:2]
    if out is None:
        out = np.empty((n_blocks, n_grid, bb, c_in), dtype=dtype)
    _channel_cells(np.ascontiguousarray(x_in).reshape(n_batch, c_in, -1), in_index, out)
    return out


@numba.njit(parallel=True, cache=True)
def _channel_cells(x, in_index, out):
    # out[blk, in_index[p], e, r] = x[blk bb + e, r, p] (cast to out's dtype), 1 at padding cells, 0 for the padded
    # examples; a task per block (plain indexing: no views in the loops).
    n_batch, c_in, n_pos = x.shape
    n_blocks, n_grid, bb = out.shape[:3]
    for blk in prange(n_blocks):
        if n_pos < n_grid:
            for cell in range(n_grid):
                for e in range(bb):
                    for r in range(c_in):
                        out[blk, cell, e, r] = 1
        for e in range(bb):
            b = blk * bb + e
            for p in range(n_pos):
                cell = in_index[p]
                if b < n_batch:
                    for r in range(c_in):
                        out[blk, cell, e, r] = x[b, r, p]
                else:
                    for r in range(c_in):
                        out[blk, cell, e, r] = 0


@numba.njit(inline="always")
def _block_task(blk, sel, maps, tap_off):
    # A task's shapes, its zeroed accumulator (cells, bb, C_in) in the dtype of the output maps (B, C_out, H_out,
    # W_out), and its real examples.
    n_blocks, n_grid, bb, c_in = sel.shape
    acc = np.zeros((n_grid, bb, c_in), dtype=maps.dtype)
    n_ex = min(bb, maps.shape[0] - blk * bb)
    return sel[blk], acc, maps.shape[1], tap_off.shape[0], bb, c_in, n_ex, maps.dtype.type(1)


@numba.njit(inline="always")
def _scatter_channels(acc, base, with_base, cell_pos, b0, d_in):
    # d_in[b0 + e, r, p] = base[cell bb + e] - acc[cell, e, r] (acc alone without base) for the unpadded cells
    # (cell_pos[cell] = p >= 0) and the block's real examples.
    n_cells, bb, c_in = acc.shape
    n_ex = min(bb, d_in.shape[0] - b0)
    for cell in range(n_cells):
        p = cell_pos[cell]
        if p >= 0:
            for e in range(n_ex):
                row = acc[cell, e]
                if with_base:
                    b_val = base[cell * bb + e]
                    for r in range(c_in):
                        d_in[b0 + e, r, p] = b_val - row[r]
                else:
                    for r in range(c_in):
                        d_in[b0 + e, r, p] = row[r]


@numba.njit(inline="always")
def channel_pair_terms(c_in, acc, sel, kp0, kn0, kp1, kn1, g0, e0, g1, e1, one, big):
    """The channel-innermost ratio kernel's innermost loop: one tap, cell and example, two output channels.

    ``acc[r] += pair_term(g0, D(e0, K0[r]), g1, D(e1, K1[r]))`` for every input channel ``r``, ``K`` chosen by the sign
    of ``sel[r]`` (:func:`sbnnumba.kernels.ratio_pair.factor`). Compiled into its callers (``bench/psa_conv.py`` times
    it alone).

    Parameters
    ----------
    c_in : int
        Input channels: the length of every array below (given, so that the loop's bound is the caller's own value).
    acc : ndarray (C_in,)
        Accumulators of the input channels, updated.
    sel : int8 ndarray (C_in,)
        Their input states.
    kp0, kn0, kp1, kn1 : ndarray (C_in,)
        ``e^{+2W}``, ``e^{-2W}`` of output channels ``c`` and ``c + 1`` at the tap.
    g0, e0, g1, e1 : float
        ``g = x_out d_out`` and ``e^{-a}`` of the two output units.
    one, big : float
        1 and the clamp (:data:`sbnnumba.kernels.ratio_pair.RATIO_CLAMP`) in the working dtype.
    """
    for r in range(c_in):
        # the factors loaded before the select: a select of two addresses becomes a gather
        kp0r, kn0r, kp1r, kn1r = kp0[r], kn0[r], kp1[r], kn1[r]
        s = sel[r]
        acc[r] += pair_term(g0, denominator(e0, factor(s, kp0r, kn0r), one, big),
                            g1, denominator(e1, factor(s, kp1r, kn1r), one, big))


@numba.njit(parallel=True, fastmath=PAIR_FASTMATH, error_model="numpy", cache=True)
def flip_conv_ratio_channels(sel, e_map, g_map, k_pos, k_neg, a_grid, cell_pos, tap_off, wq, big, d_in):
    r"""Logistic ratio form, channel-innermost: ``d_in = A - R`` (module docstring).

    Parameters
    ----------
    sel : ndarray (NB, n_grid, bb, C_in)
        x_in per block, cell and example (:func:`channel_cells`).
    e_map, g_map : ndarray (B, C_pad, H_out, W_out)
        ``e^{-a}`` and ``g = x_{out} d_{out}`` (0 at the units that the ratio sums leave out); ``C_pad`` even: an odd
        layer's last channel pairs with a neutral one (``g = 0``, ``e^{-a} = 0``).
    k_pos, k_neg : ndarray (C_pad, taps, C_in)
        ``e^{+2W}`` and ``e^{-2W}`` (``2W`` clipped), transposed.
    a_grid : ndarray (NB, n_grid * bb)
        The all-ones term ``A`` per cell and example.
    cell_pos : int64 ndarray (n_grid,)
        Input position of each cell, -1 at padding.
    tap_off : int64 ndarray (taps,)
        Cell offset of each tap.
    wq : int
        Row length of the output cells: output ``(oy, ox)`` is cell ``oy wq + ox``.
    big : float
        The clamp of the denominators (:data:`sbnnumba.kernels.ratio_pair.RATIO_CLAMP`).
    d_in : ndarray (B, C_in, H * W)
        Output, overwritten: ``d_in[b, r, p] = A[b, p] - \sum_{c \text{ pairs}, k} (g / D + g' / D')``, each pair by
        :func:`sbnnumba.kernels.ratio_pair.pair_term`, ``D = min(1 + e^{-a} K_{sel}, big)``.
    """
    ho, wo = g_map.shape[2], g_map.shape[3]
    for blk in prange(sel.shape[0]):
        sel_b, acc, c_out, n_taps, bb, c_in, n_ex, one = _block_task(blk, sel, g_map, tap_off)
        for c in range(0, c_out, 2):
            for k in range(n_taps):
                kp0, kn0, kp1, kn1 = k_pos[c, k], k_neg[c, k], k_pos[c + 1, k], k_neg[c + 1, k]
                off = tap_off[k]
                for oy in range(ho):
                    for ox in range(wo):
                        cell = oy * wq + ox + off
                        for e in range(n_ex):
                            g0 = g_map[blk * bb + e, c, oy, ox]
                            e0 = e_map[blk * bb + e, c, oy, ox]
                            g1 = g_map[blk * bb + e, c + 1, oy, ox]
                            e1 = e_map[blk * bb + e, c + 1, oy, ox]
                            channel_pair_terms(c_in, acc[cell, e], sel_b[cell, e], kp0, kn0, kp1, kn1,
                                               g0, e0, g1, e1, one, big)
        _scatter_channels(acc, a_grid[blk], True, cell_pos, blk * bb, d_in)


@numba.njit(parallel=True, fastmath=BOUNDED_FASTMATH, error_model="numpy", cache=True)
def flip_conv_bounded_channels(triangular, sel, v_map, s_map, d_map, weight_t, cell_pos, tap_off, wq, d_in):
    r"""Uniform / triangular noise, channel-innermost: ``d_in = \sum_{c,k} (F(v + s W x) - F(v)) d``.

    Parameters
    ----------
    triangular : bool
        Triangular (True) or uniform (False) noise (:func:`sbnnumba.kernels.scalar.bounded_cdf_diff`).
    sel : ndarray (NB, n_grid, bb, C_in)
        x_in per block, cell and example (:func:`channel_cells`).
    v_map, s_map, d_map : ndarray (B, C_out, H_out, W_out)
        ``v = -x_{out} a``, ``s = 2 x_{out}`` and ``d_{out}``.
    weight_t : ndarray (C_out, taps, C_in)
        The weight, transposed.
    cell_pos, tap_off, wq
        As in :func:`flip_conv_ratio_channels`.
    d_in : ndarray (B, C_in, H * W)
        Output, overwritten.
    """
    ho, wo = v_map.shape[2], v_map.shape[3]
    for blk in prange(sel.shape[0]):
        sel_b, acc, c_out, n_taps, bb, c_in, n_ex, one = _block_task(blk, sel, v_map, tap_off)
        for c in range(c_out):
            for k in range(n_taps):
                w_row = weight_t[c, k]
                off = tap_off[k]
                for oy in range(ho):
                    for ox in range(wo):
                        cell = oy * wq + ox + off
                        for e in range(n_ex):
                            v = v_map[blk * bb + e, c, oy, ox]
                            sq = s_map[blk * bb + e, c, oy, ox]
                            dq = d_map[blk * bb + e, c, oy, ox]
                            acc_t = acc[cell, e]
                            sel_t = sel_b[cell, e]
                            for r in range(c_in):
                                acc_t[r] += bounded_cdf_diff(triangular, v + sq * w_row[r] * sel_t[r], v, one) * dq
        _scatter_channels(acc, acc[0, 0], False, cell_pos, blk * bb, d_in)  # acc row: unread base
