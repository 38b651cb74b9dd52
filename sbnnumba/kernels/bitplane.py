r"""Bit-plane (bit-serial) products of quantized real inputs with packed +-1 weights (Numba CPU + NumPy reference).

A real input quantized as ``x = scale * q`` with integer codes ``q`` in ``[0, 2^bits)`` is split
into its bit-planes, ``q = sum_b 2^b q_b`` with ``q_b`` in {0, 1}, each packed 64 per ``uint64``
word along the reduction axis like :func:`sbnnumba.kernels.bitpack.pack_rows` packs signs
(bit ``i % 64`` of word ``i // 64`` is element ``i``, padding bits 0). Planes of a batch are stored
``(B, bits, ceil(K/64))``, so the ``bits`` planes of one input row lie together.

With weights ``w`` in {-1, +1} packed as usual (bit set = -1, ``W``), per plane and 64-bit word

.. math:: \sum_i q_{b,i} w_i = \mathrm{popcount}(q_b) - 2\,\mathrm{popcount}(q_b \wedge W)
          = \mathrm{popcount}(q_b \oplus W) - \mathrm{popcount}(W)

(from :math:`\mathrm{popcount}(a \oplus b) = \mathrm{popcount}(a) + \mathrm{popcount}(b)
- 2\,\mathrm{popcount}(a \wedge b)`),
so the exact integer product is

.. math:: z_j = \sum_i q_i w_{ji} = S_j - (2^{bits} - 1)\, m_j, \qquad
          S_j = \sum_b 2^b \sum_w \mathrm{popcount}(q_b[w] \oplus W_j[w]), \quad
          m_j = \mathrm{popcount}(W_j) \ (\text{number of } -1 \text{ weights}).

``S`` is the XOR-popcount sum of :mod:`sbnnumba.kernels.bitpack`, accumulated plane by plane in
Horner form, ``S = 2 (... 2 (2 P_{bits-1} + P_{bits-2}) ...) + P_0``: the kernels reuse that module's
weight panels (32 weight rows interleaved per word), its 4 x 32 register tile of ``int64``
accumulators (``llvm.ctpop.v32i64``: vectorized hardware popcount) and its cache blocking; the only
new primitive is the doubling of an accumulator between planes. The ``bits`` planes of a tile's 4
input rows are consumed together against one panel (the panel, 32 weight rows x ``ceil(K/64)``
words, stays in L1 while it is reused ``4 * bits`` times), so every loaded weight word feeds 4 rows
x ``bits`` planes and every broadcast input word 32 weight rows.

The fused threshold kernel returns packed signs in the layout of :func:`bitpack.pack`, i.e. the
packed input of the next binary stage: ``+1`` iff ``z_j >= t_j`` (``-1`` iff ``z_j < t_j``; with
``flip_j`` the opposite), compared as ``S_j > t_j + (2^{bits} - 1) m_j - 1``.

Packing the planes
------------------
From ``uint8`` codes, 8 elements at a time: their 8 bytes form an 8 x 8 bit matrix in one
``uint64`` (byte = element, bit = plane), which a 3-step delta-swap transpose turns into 8 bytes
of 8 plane bits each. From float inputs the codes are ``round(x / scale)`` (clamped to the code
range) and ``x`` must equal ``dtype(scale * q)`` (the grid: float64 product rounded once to the
dtype of ``x``), recomputed arithmetically per element (a table look-up would stop LLVM from
vectorizing the loop); inputs off the grid are reported per row (the caller raises).

Every Numba kernel takes preallocated outputs, has one signature per dtype and is compiled lazily
(``cache=True``); the parallel ones split their rows (and weight panels) over Numba's threads.
The ``*_reference`` functions are the plain NumPy truth used by the tests.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from .bitpack import (
    _ACC,
    _L1_BYTES,
    _L2_BYTES,
    _LANES_I64,
    PANEL_LANES,
    TILE_ROWS,
    WORD_BITS,
    _acc_get,
    _acc_sign_bits,
    _acc_zeros,
    _add_rows_xor_popcount,
    _load_acc,
    _n_tasks,
    _task_ranges,
    n_words,
    pack_reference,
    popcount_reference,
)

MAX_BITS = 8


# ---------------------------------------------------------------------------------------------------
# The one new accumulator primitive: acc <<= 1 (Horner step between bit-planes)
# ---------------------------------------------------------------------------------------------------

def _acc_double_numpy(acc):
    acc *= 2


@intrinsic
def _acc_double_llvm(typingctx, acc):
    """``acc[c] <<= 1`` for the 32 lanes (one vector shift)."""
    if acc != _ACC:
        return None

    def codegen(context, builder, signature, args):
        slot = builder.bitcast(args[0], _LANES_I64.as_pointer())
        builder.store(builder.shl(_load_acc(builder, args[0]), ir.Constant(_LANES_I64, 1)), slot)
        return context.get_dummy_value()
    return types.void(acc), codegen


_acc_double = _acc_double_numpy if numba.config.DISABLE_JIT else _acc_double_llvm


# ---------------------------------------------------------------------------------------------------
# Packing the bit-planes
# ---------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _transpose8(v):
    """Transpose the 8 x 8 bit matrix in ``v`` (bit ``8 i + j`` -> bit ``8 j + i``)."""
    t = (v ^ (v >> np.uint64(7))) & np.uint64(0x00AA00AA00AA00AA)
    v = v ^ t ^ (t << np.uint64(7))
    t = (v ^ (v >> np.uint64(14))) & np.uint64(0x0000CCCC0000CCCC)
    v = v ^ t ^ (t << np.uint64(14))
    t = (v ^ (v >> np.uint64(28))) & np.uint64(0x00000000F0F0F0F0)
    return v ^ t ^ (t << np.uint64(28))


_PACK_ROWS = 16  # rows per parallel task of the packing kernels


@numba.njit(cache=True)
def _groups_to_planes(groups, out):
    """Bit-planes ``out`` (bits, n_words) of one row from its codes in 8-byte groups.

    ``groups[g]`` holds codes ``8 g .. 8 g + 7`` (byte ``c`` = code ``8 g + c``; zero past the row).
    """
    n_bits, n_row_words = out.shape
    n_groups = groups.shape[0]
    for w in range(n_row_words):
        p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = np.uint64(0)
        for g in range(min(8, n_groups - 8 * w)):
            t = _transpose8(groups[8 * w + g])  # byte b = plane b of the 8 codes
            shift = np.uint64(8 * g)
            p0 |= (t & np.uint64(0xFF)) << shift
            p1 |= ((t >> np.uint64(8)) & np.uint64(0xFF)) << shift
            p2 |= ((t >> np.uint64(16)) & np.uint64(0xFF)) << shift
            p3 |= ((t >> np.uint64(24)) & np.uint64(0xFF)) << shift
            p4 |= ((t >> np.uint64(32)) & np.uint64(0xFF)) << shift
            p5 |= ((t >> np.uint64(40)) & np.uint64(0xFF)) << shift
            p6 |= ((t >> np.uint64(48)) & np.uint64(0xFF)) << shift
            p7 |= (t >> np.uint64(56)) << shift
        out[0, w] = p0
        if n_bits > 1:
            out[1, w] = p1
        if n_bits > 2:
            out[2, w] = p2
        if n_bits > 3:
            out[3, w] = p3
        if n_bits > 4:
            out[4, w] = p4
        if n_bits > 5:
            out[5, w] = p5
        if n_bits > 6:
            out[6, w] = p6
        if n_bits > 7:
            out[7, w] = p7


@numba.njit(parallel=True, cache=True)
def pack_planes_codes(groups, planes, row_bad):
    """Bit-planes of integer codes given as 8-byte groups (``q`` (R, 8 G) uint8 viewed as (R, G) uint64).

    ``planes[r, b, w]`` bit ``c`` = bit ``b`` of ``q[r, 64 w + c]``; ``planes`` (R, bits, n_words)
    uint64 is overwritten (codes past K must be 0 in ``groups``, so the padding bits are 0);
    ``row_bad[r]`` is set when a code of row ``r`` is ``>= 2^bits`` (the caller raises).
    """
    n_rows = groups.shape[0]
    n_bits = planes.shape[1]
    high = np.uint64(0x0101010101010101) * ((np.uint64(0xFF) << np.uint64(n_bits)) & np.uint64(0xFF))
    for block in prange((n_rows + _PACK_ROWS - 1) // _PACK_ROWS):
        for r in range(block * _PACK_ROWS, min(n_rows, (block + 1) * _PACK_ROWS)):
            row = groups[r]
            seen = np.uint64(0)
            for g in range(row.shape[0]):
                seen |= row[g]
            row_bad[r] = (seen & high) != 0
            _groups_to_planes(row, planes[r])


def _round_like(like, y):
    """``y`` (float64) rounded to the float type of ``like`` (float32 or float64)."""
    return type(like)(y)


@overload(_round_like)
def _round_like_overload(like, y):
    if like == types.float32:
        return lambda like, y: np.float32(y)
    return lambda like, y: y


@numba.njit(parallel=True, cache=True)
def pack_planes_float(x, inv_scale, scale, n_levels, planes, row_bad):
    """Bit-planes of float inputs on the grid ``x = dtype(scale * q)``, integer ``q`` in [0, n_levels).

    ``x`` (R, K) float32 or float64; ``inv_scale`` ~ ``1 / scale`` (a scalar of the dtype of ``x``);
    ``scale`` float64; ``planes`` (R, bits, ceil(K/64)) uint64 (overwritten). The code of an element
    is ``q = round(clamp(x * inv_scale, 0, n_levels - 1))`` and the element is accepted iff
    ``x == dtype(scale * q)`` (product in float64, rounded once): ``row_bad[r]`` is set when an
    element of row ``r`` is not on the grid (out of range, between grid points, NaN or inf). The
    check alone decides; rounding only has to find the right ``q`` for points on the grid, where
    ``|x * inv_scale - q|`` is a few ulps times ``q`` ``<< 1/2``.
    """
    n_rows, k = x.shape
    zero = inv_scale - inv_scale
    top = zero + (n_levels - 1)
    half = zero + 0.5
    n_groups = (k + 7) // 8
    for block in prange((n_rows + _PACK_ROWS - 1) // _PACK_ROWS):
        codes = np.zeros(8 * n_groups, np.uint8)
        groups = codes.view(np.uint64)
        for r in range(block * _PACK_ROWS, min(n_rows, (block + 1) * _PACK_ROWS)):
            row = x[r]
            n_bad = 0
            for i in range(k):
                value = row[i]
                t = value * inv_scale
                t = t if t > zero else zero  # NaN -> 0 (then rejected by the check)
                t = t if t < top else top
                code = np.int32(t + half)
                n_bad += _round_like(value, scale * np.float64(code)) != value
                codes[i] = np.uint8(code)
            row_bad[r] = n_bad != 0
            _groups_to_planes(groups, planes[r])


# ---------------------------------------------------------------------------------------------------
# Products
# ---------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _accumulate_planes(planes, i0, panel, s0, s1, s2, s3):
    """``s_r[c] += sum_b 2^b sum_w popcount(planes[i0 + r, b, w] ^ panel[32 w + c])`` (Horner in ``b``).

    Rows past the last repeat the last row (their results are not stored).
    """
    n_rows, n_bits, n_row_words = planes.shape
    last = n_rows - 1
    p0 = planes[i0]
    p1 = planes[min(i0 + 1, last)]
    p2 = planes[min(i0 + 2, last)]
    p3 = planes[min(i0 + 3, last)]
    for b in range(n_bits - 1, -1, -1):
        if b < n_bits - 1:
            _acc_double(s0)
            _acc_double(s1)
            _acc_double(s2)
            _acc_double(s3)
        _add_rows_xor_popcount(p0[b], p1[b], p2[b], p3[b], panel, s0, s1, s2, s3)


@numba.njit(cache=True)
def _block_sizes(n_bits, n_row_words):
    """(rows per row block, panels per panel block): a row block's planes in ~24 KiB of L1, a panel
    block in ~256 KiB of L2; an even panel count, so one task owns each 64-bit output word."""
    row_bytes = max(1, n_bits * n_row_words) * 8
    panel_bytes = max(1, n_row_words) * 8 * PANEL_LANES
    rows = max(TILE_ROWS, min(64, _L1_BYTES // row_bytes // TILE_ROWS * TILE_ROWS))
    panels = max(2, min(8, _L2_BYTES // panel_bytes // 2 * 2))
    return rows, panels


@numba.njit(cache=True)
def _store_row(acc, offsets, out_row, j0):
    """``out_row[j0 + c] = acc[c] - offsets[j0 + c]`` for the columns that exist."""
    for c in range(min(PANEL_LANES, out_row.shape[0] - j0)):
        out_row[j0 + c] = _acc_get(acc, c) - offsets[j0 + c]


@numba.njit(parallel=True, cache=True)
def bitplane_gemm(planes, panels, offsets, out):
    """``out[i, j] = S_ij - offsets[j]`` (int64), ``S`` the Horner bit-plane XOR-popcount sum.

    With ``offsets[j] = (2^bits - 1) popcount(W_j)`` this is ``z = q @ w.T`` exactly. ``planes``
    (M, bits, n_words) uint64, ``panels`` (ceil(N/32), 32 n_words) uint64, ``offsets`` (N,) int64,
    ``out`` (M, N) int64.
    """
    n_rows, n_bits, n_row_words = planes.shape
    n_panels = panels.shape[0]
    rows_per_block, panels_per_block = _block_sizes(n_bits, n_row_words)
    for task in prange(_n_tasks(n_rows, n_panels, rows_per_block, panels_per_block)):
        p_lo, p_hi, i_lo, i_hi = _task_ranges(task, n_rows, n_panels, rows_per_block, panels_per_block)
        for p in range(p_lo, p_hi):
            panel = panels[p]
            j0 = p * PANEL_LANES
            for i0 in range(i_lo, i_hi, TILE_ROWS):
                s0 = _acc_zeros()
                s1 = _acc_zeros()
                s2 = _acc_zeros()
                s3 = _acc_zeros()
                _accumulate_planes(planes, i0, panel, s0, s1, s2, s3)
                _store_row(s0, offsets, out[i0], j0)
                if i0 + 1 < n_rows:
                    _store_row(s1, offsets, out[i0 + 1], j0)
                if i0 + 2 < n_rows:
                    _store_row(s2, offsets, out[i0 + 2], j0)
                if i0 + 3 < n_rows:
                    _store_row(s3, offsets, out[i0 + 3], j0)


@numba.njit(parallel=True, cache=True)
def bitplane_gemm_threshold(planes, panels, limits, invert_words, out_words):
    """Fused bit-plane product + sign, packed: bit ``j`` of row ``i`` is ``(S_ij > limits[j]) XOR invert_j``.

    ``limits`` (32 ceil(N/32),) int64 (``NEVER`` in the padding columns), ``invert_words``
    (ceil(N/64),) uint64 (padding bits 0), ``out_words`` (M, ceil(N/64)) uint64, zero on entry.
    For ``-1`` iff ``z < t`` (``z = S - offset``): ``limits = t + offset - 1`` and invert set;
    flipped units (``-1`` iff ``z >= t``) have invert clear.
    """
    n_rows, n_bits, n_row_words = planes.shape
    n_panels = panels.shape[0]
    rows_per_block, panels_per_block = _block_sizes(n_bits, n_row_words)
    for task in prange(_n_tasks(n_rows, n_panels, rows_per_block, panels_per_block)):
        p_lo, p_hi, i_lo, i_hi = _task_ranges(task, n_rows, n_panels, rows_per_block, panels_per_block)
        for p in range(p_lo, p_hi):
            panel = panels[p]
            j0 = p * PANEL_LANES
            word = j0 // WORD_BITS
            shift = np.uint64(j0 % WORD_BITS)
            invert = (invert_words[word] >> shift) & np.uint64(0xFFFFFFFF)
            for i0 in range(i_lo, i_hi, TILE_ROWS):
                s0 = _acc_zeros()
                s1 = _acc_zeros()
                s2 = _acc_zeros()
                s3 = _acc_zeros()
                _accumulate_planes(planes, i0, panel, s0, s1, s2, s3)
                out_words[i0, word] |= (_acc_sign_bits(s0, limits, j0) ^ invert) << shift
                if i0 + 1 < n_rows:
                    out_words[i0 + 1, word] |= (_acc_sign_bits(s1, limits, j0) ^ invert) << shift
                if i0 + 2 < n_rows:
                    out_words[i0 + 2, word] |= (_acc_sign_bits(s2, limits, j0) ^ invert) << shift
                if i0 + 3 < n_rows:
                    out_words[i0 + 3, word] |= (_acc_sign_bits(s3, limits, j0) ^ invert) << shift


# ---------------------------------------------------------------------------------------------------
# NumPy references (the truth for the tests; readable, not fast)
# ---------------------------------------------------------------------------------------------------

def planes_reference(q, bits):
    """Bit-planes of integer codes ``q`` (..., K) in [0, 2^bits): uint64 (..., bits, ceil(K/64)).

    Parameters
    ----------
    q : array_like of int, shape (..., K)
        Codes in ``[0, 2^bits)``.
    bits : int
        Number of planes.

    Returns
    -------
    ndarray of uint64, shape (..., bits, ceil(K/64))
        Plane ``b`` has bit ``i`` set where bit ``b`` of ``q[..., i]`` is 1.
    """
    q = np.asarray(q).astype(np.int64)
    planes = [pack_reference(np.where((q >> b) & 1, -1, 1)) for b in range(bits)]  # bit set = plane bit 1
    return np.stack(planes, axis=-2)


def bitplane_matmul_reference(planes, w_words, k):
    r"""``z[i, j] = sum_b 2^b (popcount(q_b) - 2 popcount(q_b AND W_j))`` over the words: int64 (M, N).

    Uses the AND form (independent of the kernels' XOR form); equals ``q @ w.T`` for ``w`` = +-1.

    Parameters
    ----------
    planes : array_like of uint64, shape (M, bits, ceil(k/64))
        Bit-planes of the codes ``q`` (:func:`planes_reference`).
    w_words : array_like of uint64, shape (N, ceil(k/64))
        Packed +-1 weights (bit set = -1).
    k : int
        True reduction length (unused: padding bits are 0 in both operands).

    Returns
    -------
    ndarray of int64, shape (M, N)
    """
    planes = np.asarray(planes, np.uint64)
    w_words = np.asarray(w_words, np.uint64)
    out = np.zeros((planes.shape[0], w_words.shape[0]), np.int64)
    for b in range(planes.shape[1]):
        plane = planes[:, b]  # (M, n_words)
        ones = popcount_reference(plane).sum(axis=-1)  # (M,)
        both = popcount_reference(plane[:, None, :] & w_words[None, :, :]).sum(axis=-1)  # (M, N)
        out += (ones[:, None] - 2 * both) << b
    return out


def bitplane_threshold_reference(z, thresholds, flip=None):
    """Packed signs of integer products ``z`` (M, N): +1 iff ``z >= t`` (negated where ``flip``).

    Parameters
    ----------
    z : ndarray, shape (M, N)
        Integer products.
    thresholds : array_like, shape (N,)
        Per column.
    flip : array_like of bool, shape (N,), optional
        Columns whose sign is negated.

    Returns
    -------
    ndarray of uint64, shape (M, ceil(N/64))
    """
    y = np.where(z >= np.asarray(thresholds)[None, :], 1, -1)
    if flip is not None:
        y = np.where(np.asarray(flip, bool)[None, :], -y, y)
    return pack_reference(y)


__all__ = ["MAX_BITS", "bitplane_gemm", "bitplane_gemm_threshold", "bitplane_matmul_reference",
           "bitplane_threshold_reference", "n_words", "pack_planes_codes", "pack_planes_float",
           "planes_reference"]
