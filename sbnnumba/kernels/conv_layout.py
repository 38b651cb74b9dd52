r"""The cell-major ("phase grid") layout of the conv flip kernels (:mod:`sbnnumba.kernels.conv_cpu`) and the Numba
passes that put maps into it.

**Layout.** Let ``Hp = H + 2 ph``, ``Wp = W + 2 pw`` (padded map) and ``Hq = ceil(Hp / sh)``,
``Wq = ceil(Wp / sw)``. The padded input map is split into the ``sh * sw`` stride phases
``(yp % sh, xp % sw)``, each a ``Hq x Wq`` grid of *cells* stored row-major (padded position ``(yp, xp)`` -> cell
``((yp % sh) sw + xp % sw) Hq Wq + (yp // sh) Wq + xp // sw``). Output maps are stored on ``H_out`` rows of ``Wq``
cells (cells ``ox >= W_out`` are zero). Then output cell ``q = oy Wq + ox`` reaches, through tap ``(dy, dx)``, the
input cell ``q + off(dy, dx)`` with ``off = ((dy % sh) sw + dx % sw) Hq Wq + (dy // sh) Wq + dx // sw``: for every
stride, each tap is one contiguous run of ``n_q = (H_out - 1) Wq + W_out`` cells. Each cell holds the ``bb``
examples of a batch block contiguously (entry ``cell * bb + e``), so a tap is one contiguous run of ``n_q bb``
entries. Only computed output cells contribute (the extra row cells and padded examples carry ``g = d = 0``),
padded input cells are accumulated into but never read back (they never flip and receive no ``d``), and
non-square maps are handled by the separate extents.

**Blocks and tiles.** :func:`batch_blocks` cuts the batch into blocks just large enough for runs of
``n_q bb >= MIN_RUN`` entries (at most :data:`BATCH_BLOCK` examples), and of at least :data:`MIN_BLOCK` examples
where that pads few examples: small maps take whole batches, large maps few examples, so a task's buffers stay
small. :func:`tile_length` cuts a block's accumulator into tiles of about :data:`TILE_BYTES` (two accumulators and two
x_in rows), one task each; a tap adds to a tile the part of its run that lands there.

**Conversions.** :func:`output_cells` and :func:`input_cells` copy (B, C, H, W) maps into the grids with one
parallel Numba pass each (a task per block and channel, reading whole rows of one example's map): pure copies,
so the grids hold the same values as the NumPy transposes they replace (which took a tenth of the
flip propagation on the paper's 24x24 and 11x11 stages, mostly in strided NumPy copies).
"""
import functools

import numba
import numpy as np
from numba import prange

from .workspace import aligned_empty

BATCH_BLOCK = 64  # at most this many examples per block of the cell-major grids
MIN_RUN = 1024  # (cell, example) entries per tap loop that a block reaches if the batch allows
# ... and at least this many examples per block where that pads few examples: on an AMD Zen 3 core the tap loops
# of 1 or 2 examples per cell ran 1.08-1.18x slower than those of 4 (the paper's 26x26 -> 24x24 stage, 32x32 and
# 56x56 maps; docs/experiments/2026-12-07-session23-routes-measured.md), with the same bits (a speed rule only).
MIN_BLOCK = 4
# Two accumulators and two x_in rows of one task, L2-resident: on the paper's 24x24 -> 11x11 stage one tile of its whole
# grid (46 KB) ran 4 % faster than three L1-sized ones (81.8 against 85.2 ms, one thread): fewer tap runs split at
# tile edges, each with its own loop setup and remainder.
TILE_BYTES = 1 << 16
BLOCK_ALIGN = 8  # examples per block: a multiple of this (or a power of two below it), see batch_blocks


def phase_layout(in_hw, kernel_size, stride, padding):
    """Index maps of the phase-grid layout (see the module docstring), in cells.

    Parameters
    ----------
    in_hw : (int, int)
        Input map size ``(H, W)``.
    kernel_size, stride, padding : (int, int)
        The convolution's ``(kh, kw)``, ``(sh, sw)`` and ``(ph, pw)``.

    Returns
    -------
    in_index : int64 (H*W,)   phase-grid cell of each (unpadded) input position, row-major
    tap_off : int64 (kh*kw,)  cell offset of each tap, row-major over (dy, dx)
    n_q : int                 cells per tap loop, ``(H_out - 1) Wq + W_out``
    n_grid : int              phase-grid cells ``sh sw Hq Wq``
    wq : int                  row length of the output grids
    out_hw : (H_out, W_out)
    """
    (h, w), (kh, kw), (sh, sw), (ph, pw) = in_hw, kernel_size, stride, padding
    hp, wp = h + 2 * ph, w + 2 * pw
    hq, wq = -(-hp // sh), -(-wp // sw)
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    plane = hq * wq
    yp = np.arange(h)[:, None] + ph
    xp = np.arange(w)[None, :] + pw
    in_index = (((yp % sh) * sw + xp % sw) * plane + (yp // sh) * wq + xp // sw).ravel().astype(np.int64)
    dy = np.arange(kh)[:, None]
    dx = np.arange(kw)[None, :]
    tap_off = (((dy % sh) * sw + dx % sw) * plane + (dy // sh) * wq + dx // sw).ravel().astype(np.int64)
    return in_index, tap_off, (ho - 1) * wq + wo, sh * sw * plane, wq, (ho, wo)


@functools.lru_cache(maxsize=256)
def geometry(in_hw, kernel_size, stride, padding):
    """:func:`phase_layout` of one layer shape with its last item replaced by ``cell_pos``, cached per shape.

    A step calls every layer's flip propagation with the same shapes, and on 1x1 maps these few small NumPy
    calls cost a tenth of the kernel. The arrays are shared between calls and must not be modified.

    Parameters
    ----------
    in_hw, kernel_size, stride, padding : (int, int)
        As in :func:`phase_layout` (tuples: they are the cache key).

    Returns
    -------
    in_index, tap_off, n_q, n_grid, wq
        As in :func:`phase_layout`.
    cell_pos : int64 ndarray (n_grid,)
        The input position of each cell, -1 at padding.
    """
    in_index, tap_off, n_q, n_grid, wq, _ = phase_layout(in_hw, kernel_size, stride, padding)
    cell_pos = np.full(n_grid, -1, dtype=np.int64)
    cell_pos[in_index] = np.arange(in_index.size)
    return in_index, tap_off, n_q, n_grid, wq, cell_pos


def tile_length(bb, entry_bytes):
    """Accumulator entries per task tile of the cell-major kernels.

    Parameters
    ----------
    bb : int
        Examples per batch block (entries per cell).
    entry_bytes : int
        Bytes of a task's buffers per entry: two accumulators and two x_in rows (10 for the float32 ratio form with
        int8 x_in).

    Returns
    -------
    int
        A multiple of ``bb`` (whole cells), ``bb * max(1, TILE_BYTES // (bb entry_bytes))``: the task's buffers take
        about :data:`TILE_BYTES`.
    """
    return bb * max(1, TILE_BYTES // (bb * entry_bytes))


def _blocks_for(n_batch, target):
    # (n_blocks, bb): as few blocks as `target` examples each allow, bb rounded up to a power of two below
    # BLOCK_ALIGN and to a multiple of it above. Whole vectors per cell: with bb a multiple of 8 every tap offset
    # (tap_off bb entries) keeps the vector loads of a tap loop on the alignment of its row (16 examples = one
    # 64-byte line in float32). The paper's 11x11 stage (n_q = 97) ran at 6.4 G connections/s with bb = 11 and 7.5
    # with bb = 16 (one thread, loaded machine).
    bb = -(-n_batch // max(1, -(-n_batch // target)))
    bb = 1 << (bb - 1).bit_length() if bb < BLOCK_ALIGN else -(-bb // BLOCK_ALIGN) * BLOCK_ALIGN
    return -(-n_batch // bb), bb


def batch_blocks(n_batch, n_q):
    """Batch blocks of the cell-major kernels.

    Parameters
    ----------
    n_batch : int
        Examples ``B``.
    n_q : int
        Output cells per tap loop (:func:`phase_layout`).

    Returns
    -------
    (n_blocks, bb) : (int, int)
        The batch cut into ``n_blocks`` blocks of ``bb`` examples, enough for tap loops of ``n_q bb >= MIN_RUN``
        entries (up to :data:`BATCH_BLOCK` examples), as few as the target allows, with ``bb`` rounded up to a
        power of two below 8 and to a multiple of 8 above (:data:`BLOCK_ALIGN`); then at least :data:`MIN_BLOCK`
        examples per block where that adds at most an eighth of padded examples (a batch of 67 on a large map
        takes 17 blocks of 4, a batch of 5 keeps 5 blocks of 1: 3 padded examples would cost more than the longer
        runs gain). The last block is padded with inert examples (``g = d = 0``).
    """
    runs = min(BATCH_BLOCK, max(1, -(-MIN_RUN // n_q)))
    blocks = _blocks_for(n_batch, runs)
    wider = _blocks_for(n_batch, min(BATCH_BLOCK, max(MIN_BLOCK, runs)))
    # the wider blocks' padded examples must cost less than their longer runs gain (1.08-1.18x): at most an eighth more
    return wider if 8 * wider[0] * wider[1] <= 9 * blocks[0] * blocks[1] else blocks


@numba.njit(parallel=True, cache=True)
def _output_cells(t, wq, bb, out):
    # out[blk, c, (oy wq + ox) bb + e] = t[blk bb + e, c, oy, ox]; 0 at ox >= W_out and for padded examples. A task
    # per block reads its examples' maps in memory order; plain indexing (a view in the loops would cost two atomic
    # reference-count updates).
    n_batch, n_chan, ho, wo = t.shape
    n_flat = out.shape[2]
    for blk in prange(out.shape[0]):
        n_ex = min(bb, n_batch - blk * bb)
        if n_ex < bb or wo < wq:
            for c in range(n_chan):
                for i in range(n_flat):
                    out[blk, c, i] = 0
        for e in range(n_ex):
            b = blk * bb + e
            for c in range(n_chan):
                for oy in range(ho):
                    base = oy * wq * bb + e
                    for ox in range(wo):
                        out[blk, c, base + ox * bb] = t[b, c, oy, ox]


def output_cells(t, wq, n_blocks, bb):
    """A map in the cell-major output grids.

    Parameters
    ----------
    t : ndarray (B, C, H_out, W_out)
    wq : int
        Row length of the output grids (:func:`phase_layout`).
    n_blocks, bb : int
        Batch blocks (:func:`batch_blocks`).

    Returns
    -------
    ndarray (NB, C, H_out * Wq * bb), dtype of ``t``
        Entry ``[blk, c, (oy Wq + ox) bb + e]`` is ``t[blk bb + e, c, oy, ox]``, zero for ``ox >= W_out`` and padded
        examples.
    """
    _, c, ho, _ = t.shape
    out = aligned_empty((n_blocks, c, ho * wq * bb), t.dtype)  # cache-line aligned: with BLOCK_ALIGN examples per
    # cell the tap loops' vector loads start on cache lines
    _output_cells(np.ascontiguousarray(t), wq, bb, out)
    return out


@numba.njit(parallel=True, cache=True)
def _input_cells(x, in_index, bb, out):
    # out[blk, r, in_index[p] bb + e] = x[blk bb + e, r, p] (cast to out's dtype); 1 at padding cells, 0 for padded
    # examples.
    n_batch, c_in, n_pos = x.shape
    n_flat = out.shape[2]
    for task in prange(out.shape[0] * c_in):
        blk = task // c_in
        r = task - blk * c_in
        if n_pos * bb < n_flat:
            for i in range(n_flat):
                out[blk, r, i] = 1
        for e in range(bb):
            b = blk * bb + e
            if b < n_batch:
                for p in range(n_pos):
                    out[blk, r, in_index[p] * bb + e] = x[b, r, p]
            else:
                for p in range(n_pos):
                    out[blk, r, in_index[p] * bb + e] = 0


def input_cells(x_in, in_index, n_grid, n_blocks, bb, dtype, out=None):
    """x_in in the cell-major input grids.

    Parameters
    ----------
    x_in : ndarray (B, C_in, H, W)
    in_index : int64 ndarray (H * W,)
        Phase-grid cell of each input position (:func:`phase_layout`).
    n_grid : int
        Cells per map.
    n_blocks, bb : int
        Batch blocks (:func:`batch_blocks`).
    dtype : numpy dtype
        Of the result.
    out : ndarray (NB, C_in, n_grid * bb) of ``dtype``, C-ordered, optional
        Written and returned instead of a new array.

    Returns
    -------
    ndarray (NB, C_in, n_grid * bb)
        Entry ``[blk, r, in_index[p] bb + e]`` is ``x_in[blk bb + e, r, p]``; +1 at padding cells (never read back),
        0 for padded examples (whose terms vanish with their ``g = d = 0``).
    """
    n_batch, c_in = x_in.shape[:2]
    if out is None:
        out = aligned_empty((n_blocks, c_in, n_grid * bb), dtype)
    _input_cells(np.ascontiguousarray(x_in).reshape(n_batch, c_in, -1), in_index, bb, out)
    return out
