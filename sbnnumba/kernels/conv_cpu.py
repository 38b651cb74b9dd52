r"""Numba CPU kernels for the PSA flip propagation through a 2-D convolution (spec psa.md, section 2.10).

.. math::

    d^{in}[b,r,i] = \sum_c \sum_{j : i \in RF(j)} \Delta[(r,i) \to (c,j)]\, d^{out}[b,c,j], \qquad
    \Delta = F(-x[c,j](a[c,j] - 2 W[c,r,off]\, x[r,i])) - F(-x[c,j]\, a[c,j]),

with ``i = stride * j + off - padding`` (per axis). Delta is never formed: each parallel task
accumulates, for one block of examples and two input channels (one for the generic form), a tile of
its input maps in a small local buffer, looping over the output channels ``c`` and the kernel taps;
the innermost loop runs with unit stride over (output cell, example) pairs and vectorizes
(``error_model="numpy"`` removes the per-division ZeroDivisionError branch that would keep it scalar).
Because the examples of a block are innermost, that loop is at least ``bb`` (examples per block)
long whatever the map size; on small output maps (1x1: ``bb <= 64`` entries) its per-tap setup still costs
as much as the loop, and on maps whose rows are short next to the grid's (9x9 -> 7x7) a fifth of its divisions
fall on the zero cells between rows, so there the ratio and bounded forms run the channel-innermost kernels of
:mod:`sbnnumba.kernels.conv_channels` instead (:func:`channel_inner`; same terms in the same order, hence
the same bits). A 1x1 kernel on a 1x1 map (the paper's last stage) is a dense layer on the channels:
there the float32 ratio form runs as one parallel region, factors included (:mod:`sbnnumba.kernels.conv_single_cell`;
the same bits again).

**Layout.** The cell-major "phase grids" of :mod:`sbnnumba.kernels.conv_layout`: every tap of the convolution
is one contiguous run of ``n_q bb`` (output cell, example) entries, for every stride; batch blocks and
accumulator tiles (:func:`sbnnumba.kernels.conv_layout.batch_blocks`,
:func:`~sbnnumba.kernels.conv_layout.tile_length`) keep a task's buffers in L2.

**Fixed order.** Every accumulator entry adds its terms in the order (c ascending, tap ascending),
starting from 0, whatever the blocks, tiles and thread count: results are bit-identical at any thread
count, and equal to the per-example layout's for every form except the float32 ratio form (below).

Three forms, as for dense layers (:mod:`sbnnumba.kernels.cpu`):

* **logistic ratio form** ``d_in = A - R``:
  ``A[b, i] = sum_{c, j ∋ i} g[b,c,j] sigma(a[b,c,j])`` (``g = x_out * d_out``; the all-ones
  transposed convolution, independent of ``r``) and
  ``R[b,r,i] = sum_{c, off} g[b,c,j] / (1 + e^{-a[b,c,j]} K[c,r,off])`` with ``K = exp(2 W x_in[b,r,i])``
  (:func:`sbnnumba.kernels.ratio_pair.factor`). The output channels go in pairs ``(c, c + 1)``
  (an odd layer's last with a neutral one) whose two terms share one division
  (:func:`sbnnumba.kernels.ratio_pair.pair_term`: ``(g D' + g' D) / (D D')``, ``D = min(1 + e K, BIG)``, within
  ``6u (|g| + |g'|) + (|g| + |g'|) / BIG`` of the exact pair): per two connections one division and four
  multiply-adds instead of two divisions, so the kernels run at up to twice the divider's rate in connections.
  Every operation is written out and rounded as written (no reciprocal estimate, no implicit FMA), so the
  result does not depend on the vector lanes, the layout or the thread count. Overflow is prevented as in the
  dense kernel (:func:`sbnnumba.kernels.cpu.ratio_limits`):
  ``2W`` is clipped to ``[-C, C]`` (a term moves by less than ``e^{-(C-A)}``) and the saturated
  output units (``|a| > A``) are left out of the ratio sums and summed directly over their
  receptive fields with one ``exp`` per connection (:func:`_flip_conv_logistic_saturated`), except
  the inert ones whose terms cannot be told from 0 (:func:`sbnnumba.kernels.cpu.active_saturated`), so
  saturated units never make the layer pay the generic form's stable F difference.
* **bounded** (uniform and triangular noise): ``Delta`` by the branch-free closed form
  :func:`sbnnumba.kernels.scalar.bounded_cdf_diff` (no division) in the layout of the ratio form
  (two input channels per task, vectorized innermost loop); compiled without FMA contraction
  (:data:`sbnnumba.kernels.conv_channels.BOUNDED_FASTMATH`), so its bits do not depend on the layout.
* **probit** (normal noise, float32): the generic form's stable difference with the branch-free float32
  :func:`sbnnumba.kernels.probit.normal_cdf` (the dense probit form's term, :func:`sbnnumba.kernels.cpu.probit_term`)
  in the loops of the bounded form, vectorized, cell-major only; a tap's run of 32 entries or more goes through the
  CDF a block of 64 at a time in passes (:func:`sbnnumba.kernels.probit.erfc_pos_passes`: the same bits); compiled with
  FMA contraction (:data:`sbnnumba.kernels.probit.FASTMATH`).
* **generic** (every noise family): ``Delta = F(u) - F(v)`` with ``v = -x_out a``,
  ``u = v + 2 x_out W x_in``, evaluated like :func:`sbnnumba.kernels.scalar.cdf_diff` (``F(-v) - F(-u)``
  when ``u + v > 0``, no cancellation), with ``F(v)`` and ``F(-v)`` precomputed per output unit: one
  cdf evaluation per connection (not vectorized: scalar ``exp``/``erfc`` and branches; x_in and the
  sums in float64).

float32 and float64 (the dtype of ``a``); outputs are preallocated, no random numbers.
"""
import dataclasses
import functools
import math

import numba
import numpy as np
from numba import prange

from ..runtime import blockwise, kernel_threads
from . import conv_channels, probit
from .conv_layout import BATCH_BLOCK, batch_blocks, geometry, input_cells, output_cells, tile_length
from .conv_single_cell import all_ones_one_cell, flip_ratio_single_cell, single_cell
from .cpu import (
    EXP_ARG_LIMIT,
    choose_form,
    probit_argument,
    probit_finish,
    probit_or_generic,
    probit_tails,
    probit_term,
    ratio_limits,
    split_saturated,
)
from .float32_exp import exp_f32_saturating, exp_in_place
from .ratio_pair import PAIR_FASTMATH, clamp, denominator, factor, pair_term, weight_factors
from .scalar import TRIANGULAR, bounded_cdf_diff, cdf_lower
from .workspace import scratch

# ---------------------------------------------------------------------------------------------- kernels
# The direct sum over saturated units: fastmath without "reassoc" (Numba optimizes a prange body twice and caches the
# second result; with reassoc the two may group a sum differently, so a kernel could give other bits once loaded from
# the cache, as _flip_dense_ratio did: sbnnumba/kernels/lanes.py). Same bits as with fastmath=True on every case
# checked (the 230-case comparison with the former kernel, saturated units included).
_SATURATED_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}


@numba.njit(inline="always")
def _task(t, n_groups, n_tiles, tile_len, n_flat):
    # Task t -> (batch block, channel group, flat accumulator tile [i0, i1)); tiles vary fastest.
    blk = t // (n_groups * n_tiles)
    rest = t - blk * (n_groups * n_tiles)
    group = rest // n_tiles
    i0 = (rest - group * n_tiles) * tile_len
    return blk, group, i0, min(i0 + tile_len, n_flat)


@numba.njit(inline="always")
def _tap_range(off, i0, i1, n_run):
    # Output entries q of the tap at flat offset `off` whose targets q + off fall in the tile [i0, i1):
    # q in [q0, q1), targets from tile index a0 = q0 + off - i0.
    q0 = max(0, i0 - off)
    q1 = max(q0, min(n_run, i1 - off))
    return q0, q1, q0 + off - i0


@numba.njit(inline="always")
def _pair_task(t, n_tiles, tile_len, sel, like):
    # The ratio and bounded kernels' task t: (batch block, input channels r0, r1 (r1 = r0 for an odd last
    # channel), tile [i0, i1)), two zeroed accumulators in the dtype of `like`, and the tile's x_in rows.
    n_blocks, c_in, n_flat = sel.shape
    blk, pair, i0, i1 = _task(t, (c_in + 1) // 2, n_tiles, tile_len, n_flat)
    r0 = 2 * pair
    r1 = min(r0 + 1, c_in - 1)
    acc0 = np.zeros(i1 - i0, dtype=like.dtype)
    acc1 = np.zeros(i1 - i0, dtype=like.dtype)
    return blk, r0, r1, i0, i1, acc0, acc1, sel[blk, r0, i0:i1], sel[blk, r1, i0:i1]


@numba.njit(inline="always")
def _scatter(acc, base, with_base, cell_pos, i0, i1, b0, bb, r, d_in):
    # d_in[b0 + e, r, p] = base[cell bb + e] - acc[cell bb + e - i0] (acc alone without base) for the
    # unpadded cells (cell_pos[cell] = p >= 0) of the tile and the block's real examples.
    n_ex = min(bb, d_in.shape[0] - b0)
    for cell in range(i0 // bb, i1 // bb):
        p = cell_pos[cell]
        if p >= 0:
            j = cell * bb
            if with_base:
                for e in range(n_ex):
                    d_in[b0 + e, r, p] = base[j + e] - acc[j - i0 + e]
            else:
                for e in range(n_ex):
                    d_in[b0 + e, r, p] = acc[j - i0 + e]


@numba.njit(inline="always")
def cell_pair_terms(n, acc0, acc1, sel0, sel1, g0_row, g1_row, e0_row, e1_row, factors, one, big):
    """The cell-major ratio kernel's innermost loop: one tap of two input channels and two output channels.

    ``acc_r[q] += pair_term(g0, D(e0, K[c, r]), g1, D(e1, K[c + 1, r]))`` for every entry ``q`` (output cell and
    example), ``K`` chosen by the sign of ``sel_r[q]`` (:func:`sbnnumba.kernels.ratio_pair.factor`). Compiled into its
    callers (``bench/psa_conv.py`` times it alone).

    Parameters
    ----------
    n : int
        Entries: the length of every array below (given, so that the loop's bound is the caller's own value).
    acc0, acc1 : ndarray (n,)
        Accumulators of input channels ``r0``, ``r1`` at the tap's entries, updated.
    sel0, sel1 : int8 ndarray (n,)
        Their input states.
    g0_row, g1_row, e0_row, e1_row : ndarray (n,)
        ``g = x_out d_out`` and ``e^{-a}`` of output channels ``c``, ``c + 1``.
    factors : tuple of 8 floats
        ``(e^{+2W}, e^{-2W})`` of the connections ``(c, r0)``, ``(c + 1, r0)``, ``(c, r1)``, ``(c + 1, r1)``.
    one, big : float
        1 and the clamp (:data:`sbnnumba.kernels.ratio_pair.RATIO_CLAMP`) in the working dtype.
    """
    pos00, neg00, pos10, neg10, pos01, neg01, pos11, neg11 = factors
    for q in range(n):
        g0, g1, e0, e1 = g0_row[q], g1_row[q], e0_row[q], e1_row[q]
        s0, s1 = sel0[q], sel1[q]
        acc0[q] += pair_term(g0, denominator(e0, factor(s0, pos00, neg00), one, big),
                             g1, denominator(e1, factor(s0, pos10, neg10), one, big))
        acc1[q] += pair_term(g0, denominator(e0, factor(s1, pos01, neg01), one, big),
                             g1, denominator(e1, factor(s1, pos11, neg11), one, big))


@numba.njit(parallel=True, fastmath=PAIR_FASTMATH, error_model="numpy", cache=True)
def _flip_conv_ratio(sel, e_grid, g_grid, k_pos, k_neg, a_grid, cell_pos, tap_off, n_run, bb, tile_len, big, d_in):
    # Cell-major grids per batch block of bb examples (module docstring): sel (NB, C_in, S*bb) x_in
    # (+1 at padding); e_grid = e^{-a}, g_grid = x_out d_out (NB, C_out, Q*bb), C_out even (an odd layer's last
    # channel pairs with a neutral one: g = 0, e^{-a} = 0); a_grid (NB, S*bb) the all-ones term; k_pos, k_neg
    # (C_out, C_in, taps) = e^{+-2W}; tap_off (taps,) in flat units; n_run = n_q bb; cell_pos (S,) input position of
    # each cell (-1: padding); big the clamp of ratio_pair; d_in (B, C_in, H*W).
    # A task is one batch block, two input channels r0, r1 (r1 = r0 for an odd last channel) and one tile of tile_len
    # accumulator entries (cache-sized); output channels go two at a time, c and c + 1 sharing one division
    # (ratio_pair.pair_term): each load of g and e^{-a} serves four connections.
    n_blocks, c_in, n_flat = sel.shape
    c_out = g_grid.shape[1]
    n_taps = tap_off.shape[0]
    one = e_grid.dtype.type(1)
    n_pairs = (c_in + 1) // 2
    n_tiles = (n_flat + tile_len - 1) // tile_len
    for t in prange(n_blocks * n_pairs * n_tiles):
        blk, r0, r1, i0, i1, acc0, acc1, sel0, sel1 = _pair_task(t, n_tiles, tile_len, sel, e_grid)
        for c in range(0, c_out, 2):
            g_row, g_row1 = g_grid[blk, c], g_grid[blk, c + 1]
            e_row, e_row1 = e_grid[blk, c], e_grid[blk, c + 1]
            for k in range(n_taps):
                # factors K[output channel c or c + 1, input channel r0 or r1], e^{+2W} and e^{-2W} of each
                factors = (k_pos[c, r0, k], k_neg[c, r0, k], k_pos[c + 1, r0, k], k_neg[c + 1, r0, k],
                           k_pos[c, r1, k], k_neg[c, r1, k], k_pos[c + 1, r1, k], k_neg[c + 1, r1, k])
                q0, q1, a0 = _tap_range(tap_off[k], i0, i1, n_run)
                n = q1 - q0
                cell_pair_terms(n, acc0[a0:a0 + n], acc1[a0:a0 + n], sel0[a0:a0 + n], sel1[a0:a0 + n], g_row[q0:q1],
                                g_row1[q0:q1], e_row[q0:q1], e_row1[q0:q1], factors, one, big)
        _scatter(acc0, a_grid[blk], True, cell_pos, i0, i1, blk * bb, bb, r0, d_in)
        _scatter(acc1, a_grid[blk], True, cell_pos, i0, i1, blk * bb, bb, r1, d_in)


@numba.njit(inline="always")
def _bounded_pair_terms(triangular, n, acc0, acc1, sel0, sel1, v_t, s_t, d_t, w0, w1, one):
    # The bounded kernel's innermost loop: acc_r[q] += (F(v + s w_r x_r) - F(v)) d over one tap's run of n entries
    for q in range(n):
        v = v_t[q]
        sq = s_t[q]
        dq = d_t[q]
        acc0[q] += bounded_cdf_diff(triangular, v + sq * w0 * sel0[q], v, one) * dq
        acc1[q] += bounded_cdf_diff(triangular, v + sq * w1 * sel1[q], v, one) * dq


@numba.njit(parallel=True, fastmath=conv_channels.BOUNDED_FASTMATH, error_model="numpy", cache=True)
def _flip_conv_bounded(triangular, sel, v_grid, s_grid, d_grid, weight, cell_pos, tap_off, n_run, bb, tile_len,
                       d_in):
    # Uniform / triangular noise: Delta = F(u) - F(v) by the branch-free scalar.bounded_cdf_diff (no
    # division), in the layout and task split of the ratio kernel. v = -x_out a, s = 2 x_out, d = d_out
    # on the cell-major output grids (NB, C_out, Q*bb); weight (C_out, C_in, taps).
    n_blocks, c_in, n_flat = sel.shape
    c_out = v_grid.shape[1]
    n_taps = tap_off.shape[0]
    one = v_grid.dtype.type(1)
    n_pairs = (c_in + 1) // 2
    n_tiles = (n_flat + tile_len - 1) // tile_len
    for t in prange(n_blocks * n_pairs * n_tiles):
        blk, r0, r1, i0, i1, acc0, acc1, sel0, sel1 = _pair_task(t, n_tiles, tile_len, sel, v_grid)
        for c in range(c_out):
            v_row = v_grid[blk, c]
            s_row = s_grid[blk, c]
            d_row = d_grid[blk, c]
            for k in range(n_taps):
                w0 = weight[c, r0, k]
                w1 = weight[c, r1, k]
                q0, q1, a0 = _tap_range(tap_off[k], i0, i1, n_run)
                n = q1 - q0
                v_t = v_row[q0:q1]
                s_t = s_row[q0:q1]
                d_t = d_row[q0:q1]
                acc0_t = acc0[a0:a0 + n]
                sel0_t = sel0[a0:a0 + n]
                acc1_t = acc1[a0:a0 + n]
                sel1_t = sel1[a0:a0 + n]
                if triangular:  # the family as a constant in each loop: no test per entry (the same operations)
                    _bounded_pair_terms(True, n, acc0_t, acc1_t, sel0_t, sel1_t, v_t, s_t, d_t, w0, w1, one)
                else:
                    _bounded_pair_terms(False, n, acc0_t, acc1_t, sel0_t, sel1_t, v_t, s_t, d_t, w0, w1, one)
        _scatter(acc0, acc0, False, cell_pos, i0, i1, blk * bb, bb, r0, d_in)
        _scatter(acc1, acc1, False, cell_pos, i0, i1, blk * bb, bb, r1, d_in)


@numba.njit(parallel=True, fastmath=probit.FASTMATH, error_model="numpy", cache=True)
def _flip_conv_probit(sel, v_grid, lo_grid, hi_grid, s_grid, d_grid, weight, cell_pos, tap_off, n_run, bb, tile_len,
                      d_in):
    # Normal noise, float32: the bounded kernel's loops with the dense probit form's term (cpu.probit_term: one
    # branch-free probit.normal_cdf per connection, lo = Phi(v) and hi = Phi(-v) per output unit), cell-major only.
    # Each tap's run goes a probit.PASS_BLOCK of entries at a time through the CDF's passes (probit.erfc_pos_passes: the
    # same operations as cpu.probit_term, so the same bits).
    n_blocks, c_in, n_flat = sel.shape
    c_out = v_grid.shape[1]
    n_taps = tap_off.shape[0]
    n_tiles = (n_flat + tile_len - 1) // tile_len
    block = probit.PASS_BLOCK
    for t in prange(n_blocks * ((c_in + 1) // 2) * n_tiles):
        blk, r0, r1, i0, i1, acc0, acc1, sel0, sel1 = _pair_task(t, n_tiles, tile_len, sel, v_grid)
        # channel r0's entries, then r1's: |z|, then the passes' values; erfc(|z|)
        a_buf = np.empty(2 * block, dtype=v_grid.dtype)
        e_buf = np.empty(2 * block, dtype=v_grid.dtype)
        for c in range(c_out):
            v_row, lo_row, hi_row = v_grid[blk, c], lo_grid[blk, c], hi_grid[blk, c]
            s_row, d_row = s_grid[blk, c], d_grid[blk, c]
            for k in range(n_taps):
                w0, w1 = weight[c, r0, k], weight[c, r1, k]
                q0, q1, a0 = _tap_range(tap_off[k], i0, i1, n_run)
                if q1 - q0 < probit.PASS_MIN:  # short runs (small maps): one pass, the passes' loops would cost more
                    n = q1 - q0
                    v_t, s_t, lo_t, hi_t, d_t = v_row[q0:q1], s_row[q0:q1], lo_row[q0:q1], hi_row[q0:q1], d_row[q0:q1]
                    acc0_t, sel0_t, acc1_t, sel1_t = acc0[a0:a0 + n], sel0[a0:a0 + n], acc1[a0:a0 + n], sel1[a0:a0 + n]
                    for q in range(n):
                        v, sq, lo, hi, dq = v_t[q], s_t[q], lo_t[q], hi_t[q], d_t[q]
                        acc0_t[q] += probit_term(v, sq, sel0_t[q], w0, lo, hi) * dq
                        acc1_t[q] += probit_term(v, sq, sel1_t[q], w1, lo, hi) * dq
                    continue
                for p0 in range(0, q1 - q0, block):
                    n = min(block, q1 - q0 - p0)
                    qs, as_ = q0 + p0, a0 + p0
                    v_t, s_t, lo_t, hi_t = v_row[qs:qs + n], s_row[qs:qs + n], lo_row[qs:qs + n], hi_row[qs:qs + n]
                    d_t = d_row[qs:qs + n]
                    acc0_t, sel0_t = acc0[as_:as_ + n], sel0[as_:as_ + n]
                    acc1_t, sel1_t = acc1[as_:as_ + n], sel1[as_:as_ + n]
                    for q in range(n):
                        v, sq = v_t[q], s_t[q]
                        a_buf[q] = probit.cdf_argument(probit_argument(v, sq, sel0_t[q], w0)[0])[1]
                        a_buf[n + q] = probit.cdf_argument(probit_argument(v, sq, sel1_t[q], w1)[0])[1]
                    probit.erfc_pos_passes(a_buf, e_buf, 2 * n)
                    e_buf0, e_buf1 = e_buf[:n], e_buf[n:2 * n]
                    for q in range(n):  # the arguments again from the inputs (the same operations), not stored
                        v, sq, lo, hi, dq = v_t[q], s_t[q], lo_t[q], hi_t[q], d_t[q]
                        t0, upper0 = probit_argument(v, sq, sel0_t[q], w0)
                        t1, upper1 = probit_argument(v, sq, sel1_t[q], w1)
                        f0 = probit.cdf_from_erfc(probit.cdf_argument(t0)[0], e_buf0[q])
                        f1 = probit.cdf_from_erfc(probit.cdf_argument(t1)[0], e_buf1[q])
                        acc0_t[q] += probit_finish(f0, upper0, lo, hi) * dq
                        acc1_t[q] += probit_finish(f1, upper1, lo, hi) * dq
        _scatter(acc0, acc0, False, cell_pos, i0, i1, blk * bb, bb, r0, d_in)
        _scatter(acc1, acc1, False, cell_pos, i0, i1, blk * bb, bb, r1, d_in)


def _generic_tails(noise_code, v):
    # (F(v), F(-v)) in float64 per output unit, the generic form's twin of cpu.probit_tails (v: a C-contiguous grid)
    f_lo, f_hi = np.empty(v.shape), np.empty(v.shape)
    _lower_tails(noise_code, v.ravel(), f_lo.ravel(), f_hi.ravel())
    return f_lo, f_hi


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _lower_tails(code, v, f_lo, f_hi):
    # f_lo = F(v), f_hi = F(-v), element-wise, by the same scalar routine cdf_diff uses.
    for i in prange(v.size):
        f_lo[i] = cdf_lower(code, v[i])
        f_hi[i] = cdf_lower(code, -v[i])


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _flip_conv_generic(code, sel, v_grid, f_lo_grid, f_hi_grid, s_grid, d_grid, weight, cell_pos, tap_off, n_run,
                       bb, tile_len, d_in):
    # On the cell-major output grids (NB, C_out, Q*bb): v = -x_out * a, f_lo = F(v), f_hi = F(-v),
    # s = 2 x_out, d = d_out; weight (C_out, C_in, taps); sel float64. Delta = F(u) - F(v) with
    # u = v + s w x_in, evaluated as cdf_diff does (F(-v) - F(-u) when u + v > 0), with the F(v) terms
    # precomputed per output unit: one cdf evaluation per connection (scalar: branches and exp/erfc),
    # float64 sums. A task is one batch block, one input channel and one accumulator tile.
    n_blocks, c_in, n_flat = sel.shape
    c_out = v_grid.shape[1]
    n_taps = tap_off.shape[0]
    n_tiles = (n_flat + tile_len - 1) // tile_len
    for t in prange(n_blocks * c_in * n_tiles):
        blk, r, i0, i1 = _task(t, c_in, n_tiles, tile_len, n_flat)
        acc = np.zeros(i1 - i0, dtype=np.float64)
        sel_r = sel[blk, r]
        for c in range(c_out):
            v_row = v_grid[blk, c]
            lo_row = f_lo_grid[blk, c]
            hi_row = f_hi_grid[blk, c]
            s_row = s_grid[blk, c]
            d_row = d_grid[blk, c]
            for k in range(n_taps):
                w = weight[c, r, k]
                off = tap_off[k]
                q0, q1, _ = _tap_range(off, i0, i1, n_run)
                for q in range(q0, q1):
                    dq = d_row[q]
                    if dq != 0.0:
                        v = v_row[q]
                        u = v + s_row[q] * w * sel_r[off + q]
                        if u + v > 0:
                            delta = hi_row[q] - cdf_lower(code, -u)
                        else:
                            delta = cdf_lower(code, u) - lo_row[q]
                        acc[off + q - i0] += delta * dq
        _scatter(acc, acc, False, cell_pos, i0, i1, blk * bb, bb, r, d_in)


def _check_conv(x_shape, a_shape, out_shapes, w_shape, stride, padding):
    if len(x_shape) != 4 or len(a_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"flip_propagate_conv: expected 4-d x_in, a, weight; got shapes {x_shape}, "
                         f"{a_shape}, {w_shape}")
    n_batch, c_in, h, w = x_shape
    c_out, c_in_w, kh, kw = w_shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if c_in_w != c_in or a_shape != (n_batch, c_out, ho, wo):
        raise ValueError(f"flip_propagate_conv: inconsistent shapes x_in {x_shape}, a {a_shape}, "
                         f"weight {w_shape} (stride {stride}, padding {padding})")
    if out_shapes != (a_shape, a_shape):
        raise ValueError(f"flip_propagate_conv: x_out {out_shapes[0]} and d_out {out_shapes[1]} must match a "
                         f"{a_shape}")


SHORT_RUN = 256  # cell-major tap loops shorter than this (entries) go channel-innermost (channel_inner)
MIN_CHANNELS = 16  # ... when the channel loop is at least this long
WIDE_CHANNELS = 96  # channel loops this long (6 float32 zmm vectors) go channel-innermost whenever ...
WIDE_BLOCK = 4  # ... a channel block holds at least this many examples (conv_channels.channel_blocks)


def channel_inner(n_q, n_grid, c_in, n_batch, itemsize):
    """Whether the channel-innermost kernels (:mod:`sbnnumba.kernels.conv_channels`) run a layer.

    Parameters
    ----------
    n_q : int
        Output cells per tap loop (:func:`sbnnumba.kernels.conv_layout.phase_layout`).
    n_grid : int
        Phase-grid cells of one input map.
    c_in : int
        Input channels: the channel kernels' innermost loop.
    n_batch : int
        Examples.
    itemsize : int
        Bytes per float of the call.

    Returns
    -------
    bool
        True when ``c_in >= MIN_CHANNELS`` and either a tap loop of the cell-major kernels would be short
        (``n_q * min(B, BATCH_BLOCK) < SHORT_RUN`` (output cell, example) entries, e.g. 1x1 output maps) or the
        channel loop is wide (``c_in >= WIDE_CHANNELS``) and a channel block holds ``WIDE_BLOCK`` examples
        (:func:`sbnnumba.kernels.conv_channels.channel_blocks`). The second case covers the paper's 11x11 -> 9x9,
        9x9 -> 7x7 and 7x7 -> 3x3 stages: there the cell-major kernels spend ``(Wq - W_out) / Wq`` of their
        divisions (2/11, 2/9, 1/4) on the zero cells between output rows, the channel kernels none
        (``bench/psa_conv.py --parts 4`` times both). Both layouts give bit-identical results; this is a speed rule
        only.
    """
    if c_in < MIN_CHANNELS:
        return False
    wide = c_in >= WIDE_CHANNELS and n_grid * c_in * itemsize * WIDE_BLOCK <= conv_channels.ACC_BYTES
    return n_q * min(n_batch, BATCH_BLOCK) < SHORT_RUN or wide


LAYOUTS = ("auto", "cells", "channels")


@functools.lru_cache(maxsize=256)
def flip_plan(x_shape, a_shape, out_shapes, w_shape, stride, padding, dtype, form, noise_code, layout):
    """What a call of :func:`flip_propagate_conv` derives from its shapes alone, cached per shape.

    A training step calls every layer's flip propagation with the same shapes, and on the paper's 1x1 stages the
    call's Python (the checks, the layout and block decisions, the buffers' shapes) took about three quarters of its
    kernel's time on cold caches; here it runs once per shape. The arrays in the plan are shared between calls and
    must not be modified.

    Parameters
    ----------
    x_shape, a_shape : tuple of int
        Shapes of ``x_in`` (B, C_in, H, W) and ``a`` (B, C_out, H_out, W_out).
    out_shapes : (tuple of int, tuple of int)
        Shapes of ``x_out`` and ``d_out`` (both must be ``a_shape``).
    w_shape : tuple of int
        Shape of the weight (C_out, C_in, kh, kw).
    stride, padding : (int, int)
    dtype : numpy dtype
        Of ``a``: the call's working dtype.
    form, noise_code, layout
        As in :func:`flip_propagate_conv`; ``form`` resolved by :func:`sbnnumba.kernels.cpu.choose_form`.

    Returns
    -------
    FlipPlan

    Raises
    ------
    ValueError
        For shapes that do not fit together, an unknown ``layout`` or a ``form`` that does not hold
        (:func:`sbnnumba.kernels.cpu.choose_form`); the call's arguments are named.
    """
    _check_conv(x_shape, a_shape, out_shapes, w_shape, stride, padding)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    form = choose_form(form, noise_code, dtype)
    n_batch, c_in, h, w = x_shape
    c_out, _, kh, kw = w_shape
    in_index, tap_off, n_q, n_grid, wq, cell_pos = geometry((h, w), (kh, kw), stride, padding)
    channels = form not in ("generic", "probit") and (layout == "channels" or (
        layout == "auto" and channel_inner(n_q, n_grid, c_in, n_batch, dtype.itemsize)))
    # x_in as the kernels read it: the ratio form only tests its sign (ratio_pair.factor; int8: a quarter of the loads
    # and of the task's L1 footprint), the bounded and probit forms multiply by it, the generic form in float64
    # (u = v + s w x_in is formed in float64, as in cdf_diff).
    sel_dtype = {"ratio": np.int8, "bounded": dtype, "probit": dtype, "generic": np.float64}[form]
    if channels:
        n_blocks, bb = conv_channels.channel_blocks(n_batch, n_grid, c_in, dtype.itemsize)
        sel_shape = (n_blocks, n_grid, bb, c_in)
        # tap offsets in cells
        grid_args = (cell_pos, tap_off, wq)
    else:
        n_blocks, bb = batch_blocks(n_batch, n_q)
        sel_shape = (n_blocks, c_in, n_grid * bb)
        # flat offsets, run length and tile length in entries
        grid_args = (cell_pos, tap_off * bb, n_q * bb, bb, tile_length(bb, 2 * (np.dtype(sel_dtype).itemsize +
                                                                               dtype.itemsize)))
    plan = FlipPlan(form, channels, in_index, n_grid, wq, n_blocks, bb, sel_dtype, sel_shape, grid_args,
                    (n_batch, c_in, h * w), (c_out, c_in, kh * kw), math.prod(a_shape) * c_in * kh * kw, None)
    if form != "ratio":
        return plan
    _, _, ho, wo = a_shape
    c_pad = c_out + c_out % 2  # output channels go in pairs
    f_blocks, f_bb, f_wq = (n_batch, 1, wo) if channels else (n_blocks, bb, wq)  # the factors' layout
    n_taps = kh * kw
    k_shape = (2, c_pad) + ((n_taps, c_in) if channels else (c_in, n_taps))
    n_f = f_blocks * c_pad * ho * f_wq * f_bb
    tap_flat = tap_off * bb  # tap offsets in (cell, example) entries of the grids
    limit, clip = (dtype.type(v) for v in ratio_limits(dtype))
    ratio = RatioPlan(c_pad, n_f, n_f + math.prod(k_shape), f_blocks, f_bb, f_wq, k_shape, limit, clip, clamp(dtype),
                      tap_flat, n_q * bb, (n_blocks, n_grid * bb), ho * wo == 1,
                      (n_batch, c_pad, ho, wo) if channels else (n_blocks, c_pad, -1),
                      math.prod(a_shape) + n_blocks * n_grid * bb * tap_flat.size,
                      layout == "auto" and single_cell(x_shape, a_shape, w_shape, dtype))
    return dataclasses.replace(plan, ratio=ratio)


@dataclasses.dataclass(frozen=True)
class FlipPlan:
    """The shape-derived part of a conv flip propagation call (:func:`flip_plan`).

    Attributes
    ----------
    form : str
        The resolved form.
    channels : bool
        Channel-innermost layout (:func:`channel_inner`) or cell-major.
    in_index : int64 ndarray (H W,)
        Phase-grid cell of each input position (:func:`sbnnumba.kernels.conv_layout.geometry`).
    n_grid, wq : int
        Cells per input map, row length of the output grids.
    n_blocks, bb : int
        Batch blocks of the layout.
    sel_dtype : numpy type
        Of x_in as the kernels read it.
    sel_shape : tuple of int
        Of x_in in the layout (:func:`sbnnumba.kernels.conv_channels.channel_cells` or
        :func:`sbnnumba.kernels.conv_layout.input_cells`).
    grid_args : tuple
        The kernels' layout arguments: ``(cell_pos, tap_off, wq)`` (channels) or ``(cell_pos, tap offsets, run
        length, bb, tile length)`` in entries (cell-major).
    d_in_shape : (B, C_in, H W)
    w3_shape : (C_out, C_in, taps)
    connections : int
        ``B C_out H_out W_out C_in kh kw``: the kernel's work (:func:`sbnnumba.runtime.kernel_threads`).
    ratio : RatioPlan or None
        The ratio form's part.
    """

    form: str
    channels: bool
    in_index: np.ndarray
    n_grid: int
    wq: int
    n_blocks: int
    bb: int
    sel_dtype: type
    sel_shape: tuple
    grid_args: tuple
    d_in_shape: tuple
    w3_shape: tuple
    connections: int
    ratio: "RatioPlan | None"


@dataclasses.dataclass(frozen=True)
class RatioPlan:
    """The ratio form's shape-derived part (:func:`flip_plan`, :func:`_ratio`).

    Attributes
    ----------
    c_pad : int
        Output channels rounded up to even (they go in pairs).
    n_f, n_exps : int
        Entries of ``-a`` in the factors' layout, and of ``-a`` and ``(2W, -2W)`` together (one ``exp`` buffer).
    f_blocks, f_bb, f_wq : int
        The factors' layout: ``(B, 1, W_out)`` for the channel kernels (the maps' own), the blocks, examples per
        block and grid row length for the cell-major ones.
    k_shape : tuple of int
        ``(2, C_pad, taps, C_in)`` (channels) or ``(2, C_pad, C_in, taps)``: ``e^{2W}`` and ``e^{-2W}``.
    limit, clip, big : numpy scalars of the dtype
        ``A``, ``C`` (:func:`sbnnumba.kernels.cpu.ratio_limits`) and the denominators' clamp
        (:func:`sbnnumba.kernels.ratio_pair.clamp`).
    tap_flat : int64 ndarray (taps,)
        Tap offsets in (cell, example) entries of the grids.
    n_run : int
        Entries per tap run, ``n_q bb``.
    a_grid_shape : (NB, n_grid bb)
        The all-ones term's grid.
    one_cell : bool
        A 1x1 output map (the all-ones term by ``np.einsum``).
    kernel_shape : tuple of int
        The factors' shape as the kernel reads them.
    ones_work : int
        Entries the all-ones pass reads and writes (its threads, "copy").
    single_cell : bool
        A 1x1 kernel on a 1x1 map in float32 with ``layout="auto"``: the call runs in one parallel region
        (:mod:`sbnnumba.kernels.conv_single_cell`).
    """

    c_pad: int
    n_f: int
    n_exps: int
    f_blocks: int
    f_bb: int
    f_wq: int
    k_shape: tuple
    limit: np.floating
    clip: np.floating
    big: np.floating
    tap_flat: np.ndarray
    n_run: int
    a_grid_shape: tuple
    one_cell: bool
    kernel_shape: tuple
    ones_work: int
    single_cell: bool


def flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise_code, form="auto", layout="auto"):
    r"""PSA flip propagation through a conv layer (Numba, parallel over batch blocks, channels and tiles).

    Parameters
    ----------
    x_in : ndarray (B, C_in, H, W)
        Sampled +-1 input states.
    a : ndarray (B, C_out, H_out, W_out)
        Pre-activations.
    x_out : ndarray (B, C_out, H_out, W_out)
        Sampled +-1 output states.
    weight : ndarray (C_out, C_in, kh, kw)
    d_out : ndarray (B, C_out, H_out, W_out)
        Flip effects of the output units.
    stride, padding : (int, int)
    noise_code : int
        :data:`sbnnumba.kernels.scalar.NOISE_CODES`.
    form : {"auto", "ratio", "bounded", "probit", "generic"}
        "ratio" is logistic only, "bounded" uniform/triangular only, "probit" normal in float32 only; "auto" picks
        them for those noises (:func:`sbnnumba.kernels.cpu.choose_form`) and "generic" (any family) for the others.
        The ratio form sums the saturated units (``|a| > A``, :func:`sbnnumba.kernels.cpu.ratio_limits`) directly.
    layout : {"auto", "cells", "channels"}
        Loop layout of the ratio and bounded forms: "cells" the cell-major kernels of this module, "channels"
        the channel-innermost ones (:mod:`sbnnumba.kernels.conv_channels`; the probit and generic forms always
        run cell-major), "auto" :func:`channel_inner`'s choice, or for the float32 ratio form of a 1x1 kernel on a 1x1
        map the one-region kernel of :mod:`sbnnumba.kernels.conv_single_cell`. All give the same bits.

    Returns
    -------
    d_in : ndarray (B, C_in, H, W), dtype of ``a``:
    ``d_in[b,r,i] = sum_{c, j : i in RF(j)} Delta[(r,i) -> (c,j)] d_out[b,c,j]`` (module docstring). The ratio
    and bounded forms run channel-innermost on small output maps and wide channel loops (:func:`channel_inner`),
    with the same bits. The call's temporaries (x_in's layout, the factor grids) live in reused per-thread buffers
    (:func:`sbnnumba.kernels.workspace.scratch`); ``d_in`` is a new array.
    """
    key = (x_in.shape, a.shape, (x_out.shape, d_out.shape), weight.shape, tuple(stride), tuple(padding), a.dtype)
    try:
        plan = flip_plan(*key, form, noise_code, layout)
    except TypeError:  # an unhashable form or layout: the checks without the cache, for their ValueError
        plan = flip_plan.__wrapped__(*key, form, noise_code, layout)
    if plan.form == "probit" and probit_or_generic(a, weight) == "generic":
        plan = flip_plan(*key, "generic", noise_code, layout)
    with kernel_threads(plan.connections) as threads:  # the per-call thread rule of sbnnumba.runtime
        return _flip_propagate_conv(plan, x_in, a, x_out, weight, d_out, stride, padding, noise_code, threads)


def _flip_propagate_conv(plan, x_in, a, x_out, weight, d_out, stride, padding, noise_code, threads):
    """:func:`flip_propagate_conv` after the checks: the kernels of ``plan`` (:func:`flip_plan`) on ``threads``."""
    dtype = a.dtype
    x_in = np.asarray(x_in)
    if plan.ratio is not None and plan.ratio.single_cell:
        rp = plan.ratio
        d_in = flip_ratio_single_cell(x_in, a, x_out, d_out, weight, rp.limit, rp.clip, rp.big, threads)
        if d_in is not None:  # None: saturated units, summed by the general path below
            return d_in
    # (the call's temporaries in reused buffers: workspace.scratch)
    # The preparation passes take threads by their own size (a parallel region costs tens of microseconds to wake
    # its workers: the 1x1 stages' calls were 1.7x slower at two threads than at one), the kernel by the connections.
    sel = scratch("sel", plan.sel_shape, plan.sel_dtype)
    with kernel_threads(sel.size, "copy"):
        cells = conv_channels.channel_cells if plan.channels else input_cells
        cells(x_in, plan.in_index, plan.n_grid, plan.n_blocks, plan.bb, plan.sel_dtype, sel)
    x_out = np.asarray(x_out, dtype=dtype)
    d_out = np.asarray(d_out, dtype=dtype)
    d_in = np.empty(plan.d_in_shape, dtype=dtype)
    w3 = np.ascontiguousarray(weight, dtype=dtype).reshape(plan.w3_shape)
    if plan.form == "ratio":
        _ratio(plan, x_in, a, x_out, d_out, w3.reshape(weight.shape), stride, padding, sel, d_in)
        return d_in.reshape(x_in.shape)
    # the cell-major output grids of this call
    grid = functools.partial(output_cells, wq=plan.wq, n_blocks=plan.n_blocks, bb=plan.bb)
    if plan.form == "bounded":
        # per-output-unit factors as the kernels read them: the channel kernels read the (B, C_out, H_out, W_out) maps
        factors = np.ascontiguousarray if plan.channels else grid
        args = (noise_code == TRIANGULAR, sel, factors(-x_out * a), factors(2 * x_out), factors(d_out))
        if plan.channels:
            conv_channels.flip_conv_bounded_channels(*args, _taps_inner(w3), *plan.grid_args, d_in)
        else:
            _flip_conv_bounded(*args, w3, *plan.grid_args, d_in)
    else:  # probit and generic: F(v) and F(-v) per output unit, then one F per connection
        v_grid = grid(-x_out * a)
        if plan.form == "probit":
            kernel, tails = _flip_conv_probit, probit_tails(v_grid)
        else:
            kernel, tails = functools.partial(_flip_conv_generic, noise_code), _generic_tails(noise_code, v_grid)
        kernel(sel, v_grid, *tails, grid(2 * x_out), grid(d_out), w3, *plan.grid_args, d_in)
    return d_in.reshape(x_in.shape)


def _taps_inner(t):
    """(C_out, C_in, taps) -> contiguous (C_out, taps, C_in): the channel kernels' weight rows."""
    return np.ascontiguousarray(t.transpose(0, 2, 1))


@numba.njit(inline="always", error_model="numpy")
def _factor(v, exp_f32):
    # A map factor as a contiguous loop of _ratio_factors writes it: v, or, with exp_f32 (not None: float32 only), e^v
    # by exp_f32_saturating, the bits of exp_in_place (the weight factors' twin rule: ratio_pair.weight_factors).
    if exp_f32 is None:
        return v
    return exp_f32_saturating(np.float32(v))


@numba.njit(inline="always", error_model="numpy")
def _exp_run(v, exp_f32):
    # With exp_f32 (not None: float32 only) v <- e^v over a C-contiguous array by exp_f32_saturating (exp_in_place's
    # bits), in the task that has just written it with strided stores: an exp in those stores does not vectorize
    # (the cell-major factors of the paper's 26x26 and 24x24 stages took 2.4x and 2.2x their time that way).
    if exp_f32 is not None:
        flat = v.reshape(-1)
        for i in range(flat.size):
            flat[i] = exp_f32_saturating(flat[i])


@numba.njit(inline="always")
def _two_w_row(w3, clip, taps_inner, out, c, exp_f32):
    # out[0, c] = f(v), out[1, c] = f(-v), v = clip(2 W[c], -clip, clip), f the e^ of exp_f32 or the identity
    # (ratio_pair.weight_factors), in the kernel's weight layout: (C_out, C_in, taps), or (C_out, taps, C_in) with
    # taps_inner. The copy first (transposing with taps_inner), then the factors along the contiguous row: both loops
    # vectorize (one loop doing it all did not: 2.6x the time on the paper's stage 7, 192 x 192 x 9).
    c_in, n_taps = w3.shape[1], w3.shape[2]
    row = out[0, c].reshape(-1)
    if taps_inner:
        for k in range(n_taps):
            for r in range(c_in):
                row[k * c_in + r] = w3[c, r, k]
    else:
        src = w3[c].reshape(-1)
        for i in range(row.size):
            row[i] = src[i]
    weight_factors(row, out[1, c].reshape(-1), clip, exp_f32)


@numba.njit(inline="always", error_model="numpy")
def _map_factors_block(a, x_out, d_out, limit, ho, wq, bb, neg_a, g, half, n_chan, blk, exp_f32):
    # _ratio_factors' task for batch block blk of the maps: its rows of neg_a and g, its examples' rows of half;
    # returns the block's number of saturated units.
    n_batch, n_map = a.shape
    n_real = n_chan * ho * wq * bb  # entries of the real channels; the rest is the neutral channel's
    wo = n_map // (n_chan * ho)
    half_one = a.dtype.type(0.5)
    flat_run = bb == 1 and wq == wo  # the maps' own layout: one flat run per example (no padded entries)
    n_ex = min(bb, n_batch - blk * bb)
    count = 0
    if n_ex < bb or wo < wq:
        neg_a[blk, :] = 0
        g[blk, :] = 0
    neg_a[blk, n_real:] = -np.inf
    g[blk, n_real:] = 0
    for e in range(n_ex):
        b = blk * bb + e
        for i in range(n_map):
            v = a[b, i]
            if abs(v) > limit:
                count += 1
            half[b, i] = v * half_one
        if flat_run:
            for i in range(n_map):
                neg_a[blk, i] = _factor(-a[b, i], exp_f32)
                g[blk, i] = x_out[b, i] * d_out[b, i]
        else:
            for c in range(n_chan):
                for oy in range(ho):
                    src = (c * ho + oy) * wo
                    dst = c * ho * wq * bb + oy * wq * bb + e
                    for ox in range(wo):
                        neg_a[blk, dst + ox * bb] = -a[b, src + ox]
                        g[blk, dst + ox * bb] = x_out[b, src + ox] * d_out[b, src + ox]
    _exp_run(neg_a[blk, n_real:] if flat_run else neg_a[blk], exp_f32)  # what is not e^ yet
    return count


@numba.njit(inline="always")
def _weight_factors_channel(w3, clip, taps_inner, two_w, c, exp_f32):
    # _ratio_factors' task for output channel c of two_w (the neutral channel c >= C_out: 0, then its e^).
    if c < w3.shape[0]:
        _two_w_row(w3, clip, taps_inner, two_w, c, exp_f32)
    else:
        two_w[0, c] = 0
        two_w[1, c] = 0
        _exp_run(two_w[0, c], exp_f32)
        _exp_run(two_w[1, c], exp_f32)


@numba.njit(inline="always")
def mixed_order(n_first, n_second, threads):
    """Task order of one ``prange`` over two kinds of task (``0..n_first-1``, then ``n_first..``): at one thread as
    numbered; on more, the kinds merged in proportion (task ``i`` of the first kind before task ``j`` of the second
    when ``(2i + 1) / n_first <= (2j + 1) / n_second``), so that each thread's contiguous share of the static split
    holds its share of both kinds.

    Parameters
    ----------
    n_first, n_second : int
        Tasks of each kind.
    threads : int
        The threads of the ``prange``: the caller's count (``with`` :class:`sbnnumba.runtime.kernel_threads` ``as``).

    Returns
    -------
    int64 ndarray (n_first + n_second,)
        A permutation of the task numbers.
    """
    n = n_first + n_second
    order = np.empty(n, dtype=np.int64)  # not np.arange: under parallel=True that would be a parallel region
    i = 0
    j = 0
    for t in range(n):
        if threads == 1:
            order[t] = t
        elif j >= n_second or (i < n_first and (2 * i + 1) * n_second <= (2 * j + 1) * n_first):
            order[t] = i
            i += 1
        else:
            order[t] = n_first + j
            j += 1
    return order


@numba.njit(parallel=True, cache=True)
def _ratio_factors(a, x_out, d_out, limit, ho, wq, bb, neg_a, g, half, w3, clip, taps_inner, two_w,
                   exp_f32=None, threads=1):
    # The ratio form's per-unit factors in one pass over the maps a, x_out, d_out (B, C_out H_out W_out): neg_a = -a
    # and g = x_out d_out in the kernel's layout (NB, C_pad H_out Wq bb): entry c H_out Wq bb + (oy Wq + ox) bb + e of
    # block blk holds example blk bb + e, 0 at ox >= W_out and for padded examples (the maps themselves with bb = 1,
    # Wq = W_out); C_pad = C_out rounded up to even, the extra channel neutral for ratio_pair (neg_a = -inf, so
    # e^{-a} = 0, and g = 0); half = a / 2 (maps, for tanh); two_w = (2W, -2W), 2W clipped to [-clip, clip]
    # (_two_w_row), 0 for the extra channel, the weight w3 (C_out, C_in, taps). Returns the number of saturated units
    # (|a| > limit). Exact operations: the values NumPy's -a, x_out * d_out and a * 0.5 give. With exp_f32 (float32)
    # neg_a and two_w hold the e^ of those values (exp_in_place's bits): neg_a's written at once in the contiguous loops
    # (_factor) or over each block after its strided writes (_exp_run), two_w's by ratio_pair.weight_factors.
    # One call and one parallel region: the maps' blocks and the weight's channels are tasks of one prange, mixed in
    # proportion on `threads` > 1 (mixed_order; the caller's Numba thread count: numba.get_num_threads() in a kernel
    # keeps it out of the cache). At two threads each region wakes the sleeping worker (34-81 us here); np.zeros, a
    # slice assignment or .sum() outside a prange is a region of its own (this pass had four: the paper's stage 7 took
    # 0.49-0.53 ms at two threads as at one, in one region 0.36-0.38).
    n_blocks, n_w = neg_a.shape[0], two_w.shape[1]
    order = mixed_order(n_blocks, n_w, threads)
    n_unsafe = np.empty(n_blocks + n_w, dtype=np.int64)  # per task, every entry written (np.zeros: a region)
    for t in prange(n_blocks + n_w):
        task = order[t]
        count = 0
        if task < n_blocks:
            count = _map_factors_block(a, x_out, d_out, limit, ho, wq, bb, neg_a, g, half, w3.shape[0], task, exp_f32)
        else:
            _weight_factors_channel(w3, clip, taps_inner, two_w, task - n_blocks, exp_f32)
        n_unsafe[t] = count
    total = 0
    for t in range(n_blocks + n_w):  # a loop, not .sum() (a region)
        total += n_unsafe[t]
    return total


@numba.njit(parallel=True, cache=True)
def _all_ones_term(x_out, d_out, sig_half, t_map, given, tap_off, n_run, wq, bb, a_grid):
    # The all-ones term A = sum_{c, j ∋ i} g sigma(a) per block of a_grid (NB, n_grid bb): first t = sum_c g sigma(a)
    # (g = x_out d_out, sigma = (tanh(a / 2) + 1) * 0.5 from sig_half = tanh(a / 2), every sum over c ascending from
    # 0, one rounding per operation: np.einsum's bits on maps of more than one cell), or t = t_map where given; then
    # a_grid[blk, q + off_k] += t[q] over the taps k ascending from 0 (grid entries q = (oy Wq + ox) bb + e,
    # q < n_run): the all-ones transposed convolution. No fastmath: each operation rounds as written.
    n_batch, n_chan, ho, wo = sig_half.shape
    one = sig_half.dtype.type(1)
    half_one = sig_half.dtype.type(0.5)
    for blk in prange(a_grid.shape[0]):
        t_row = np.zeros(n_run, dtype=a_grid.dtype)  # 0 at the cells ox >= W_out and for padded examples
        for e in range(min(bb, n_batch - blk * bb)):
            b = blk * bb + e
            if given:
                for oy in range(ho):
                    for ox in range(wo):
                        t_row[(oy * wq + ox) * bb + e] = t_map[b, oy, ox]
            else:
                for c in range(n_chan):
                    for oy in range(ho):
                        for ox in range(wo):
                            q = (oy * wq + ox) * bb + e
                            t_row[q] = t_row[q] + (x_out[b, c, oy, ox] * d_out[b, c, oy, ox]) * (
                                (sig_half[b, c, oy, ox] + one) * half_one)
        acc = a_grid[blk]
        acc[:] = 0
        for k in range(tap_off.shape[0]):
            off = tap_off[k]
            for q in range(n_run):
                acc[off + q] += t_row[q]


def _ratio(plan, x_in, a, x_out, d_out, weight, stride, padding, sel, d_in):
    """The logistic ratio form of :func:`flip_propagate_conv` into ``d_in`` (B, C_in, H*W).

    ``plan`` the call's :class:`FlipPlan`, ``weight`` (C_out, C_in, kh, kw) in ``a``'s dtype, ``sel`` x_in in the
    kernels' layout. The factors ``e^{-a}``, ``g = x_out d_out`` and ``e^{+-2W}`` go straight into the kernels'
    layouts (:func:`_ratio_factors`: one Numba call, the float32 ``exp`` of ``-a`` and ``+-2W`` in it; in float64 one
    ``exp`` pass after it, :func:`sbnnumba.kernels.float32_exp.exp_in_place`), then one NumPy ``tanh``, in place: few
    calls, as each costs tens of microseconds on the 1x1 stages' cold caches. The saturated units (``|a| > A``) are
    zeroed in a second pass (:func:`sbnnumba.kernels.cpu.split_saturated`) only when there are any. The factor grids
    have an even number of channels: an odd layer's last channel pairs with a neutral one
    (:mod:`sbnnumba.kernels.ratio_pair`)."""
    rp = plan.ratio
    dtype = a.dtype
    n_batch, c_out = a.shape[:2]
    exps = scratch("exps", (rp.n_exps,), dtype)  # -a and (2W, -2W): one exp for both
    neg_a, k_exp = exps[:rp.n_f].reshape(rp.f_blocks, -1), exps[rp.n_f:].reshape(rp.k_shape)
    g = scratch("g", neg_a.shape, dtype)
    half = scratch("half", a.shape, dtype)
    saturated = None
    g_pair = (x_out, d_out)  # g = x_out * d_out, the product the kernels' factors hold

    exp_f32 = True if dtype == np.float32 else None  # float32: e^ in the factors' pass; float64: NumPy's, after

    def factors(a, x_out, d_out):
        flat = [np.ascontiguousarray(t).reshape(n_batch, -1) for t in (a, x_out, d_out)]
        # threads by its own size (see _flip_propagate_conv); on the small maps mostly the weights' transposing copy
        with kernel_threads(rp.n_exps, "transpose") as threads:
            return _ratio_factors(*flat, rp.limit, a.shape[2], rp.f_wq, rp.f_bb, neg_a, g, half.reshape(n_batch, -1),
                                  weight.reshape(plan.w3_shape), rp.clip, plan.channels, k_exp, exp_f32, threads)

    if factors(a, x_out, d_out):
        # active saturated units: summed directly below; all saturated ones zeroed in the ratio sums
        g_safe, a_safe, saturated = split_saturated(a, x_out * d_out, weight)
        g_pair = (g_safe, np.ones_like(g_safe))  # g_safe * 1: the same values
        factors(a_safe, *g_pair)
    if exp_f32 is None:  # float64: e^{-a} and e^{+-2W} by NumPy's exp, in blocks
        exp_in_place(exps)
    # tanh(a / 2) by NumPy's, in blocks
    blockwise(lambda part: np.tanh(part, out=part), half)
    a_grid = scratch("a_grid", rp.a_grid_shape, dtype)
    t_map = np.empty((1, 1, 1), dtype=dtype)  # unread unless given
    if rp.one_cell:  # one output cell: np.einsum sums over c in its own (vectorized) order, kept as is
        g_map = (np.ascontiguousarray(g.reshape(n_batch, rp.c_pad, 1, 1)[:, :c_out]) if plan.channels else
                 g_pair[0] * g_pair[1])
        t_map = all_ones_one_cell(g_map, half)
    with kernel_threads(rp.ones_work, "copy"):  # its own size (see _flip_propagate_conv)
        _all_ones_term(*g_pair, half, t_map, rp.one_cell, rp.tap_flat, rp.n_run, plan.wq, plan.bb, a_grid)
    kernel = conv_channels.flip_conv_ratio_channels if plan.channels else _flip_conv_ratio
    kernel(sel, neg_a.reshape(rp.kernel_shape), g.reshape(rp.kernel_shape), k_exp[0], k_exp[1], a_grid,
           *plan.grid_args, rp.big, d_in)
    if saturated is not None:
        row_start, units = saturated  # units: (c, oy, ox) rows
        _flip_conv_logistic_saturated(np.ascontiguousarray(x_in, dtype=dtype), a, x_out * d_out, weight, row_start,
                                      units, stride[0], stride[1], padding[0], padding[1],
                                      dtype.type(EXP_ARG_LIMIT[dtype]), d_in.reshape(x_in.shape))


@numba.njit(parallel=True, fastmath=_SATURATED_FASTMATH, cache=True)
def _flip_conv_logistic_saturated(x_in, a, g, weight, row_start, units, sh, sw, ph, pw, lim, d_in):
    # Adds, for the listed output units (units[row_start[b]:row_start[b+1]] = (c, oy, ox) of example b),
    # g (sigma(a) - sigma(a - 2 W[c,r,dy,dx] x[b,r,iy,ix])) to d_in[b,r,iy,ix] over the unit's receptive
    # field (padded positions skipped: they never flip), one exp per connection, exp arguments clipped to
    # [-lim, lim]. Parallel over examples (each owns its d_in[b]).
    n_batch, c_in, h, w = x_in.shape
    kh, kw = weight.shape[2], weight.shape[3]
    for b in prange(n_batch):
        for t in range(row_start[b], row_start[b + 1]):
            c, oy, ox = units[t, 0], units[t, 1], units[t, 2]
            a_u = a[b, c, oy, ox]  # clipped only inside exp: the flipped argument needs the true value
            g_u = g[b, c, oy, ox]
            s_a = 1 / (1 + np.exp(-min(max(a_u, -lim), lim)))
            for r in range(c_in):
                for dy in range(kh):
                    iy = oy * sh + dy - ph
                    if iy < 0 or iy >= h:
                        continue
                    for dx in range(kw):
                        ix = ox * sw + dx - pw
                        if ix < 0 or ix >= w:
                            continue
                        u = min(max(a_u - 2 * weight[c, r, dy, dx] * x_in[b, r, iy, ix], -lim), lim)
                        d_in[b, r, iy, ix] += g_u * (s_a - 1 / (1 + np.exp(-u)))
