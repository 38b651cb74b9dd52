r"""Bit-packed XNOR-popcount kernels: packing, GEMM and convolution (Numba CPU + NumPy reference).

Packing layout (as in Larq Compute Engine)
------------------------------------------
A {-1, +1} vector of length ``K`` is stored along its last (reduction) axis in
``ceil(K / 64)`` ``uint64`` words: bit ``i % 64`` of word ``i // 64`` is element ``i``; a set bit
means -1 and a clear bit +1 (``sign(0) = +1``: values ``>= 0`` map to bit 0, negative values to
bit 1). The ``64 * ceil(K / 64) - K`` padding bits of the last word are 0 in *both* operands, so
they never differ and

.. math::

    a \cdot b = \sum_{i<K} a_i b_i = K - 2\, \mathrm{popcount}(a \oplus b)

holds with the true ``K``.

GEMM micro-kernel
-----------------
``out[i, j] = K - 2 popcount(A[i] XOR B[j])``. The packed rows of ``B`` (weights, ``(N, n_words)``)
are re-laid out once into *panels* of ``PANEL_LANES = 32`` rows, word-interleaved:
``panels[p, w * 32 + c] = B[32 p + c, w]`` (zero rows pad ``N`` to a multiple of 32). A register
tile is ``TILE_ROWS = 4`` rows of ``A`` times one panel (32 columns): four accumulators of 32
``int64`` lanes each, i.e. 16 of the 32 AVX-512 registers, updated for every word ``w`` by

.. math::

    \mathrm{acc}_r[c] \mathrel{+}= \mathrm{popcount}(A[i_0 + r, w] \oplus \mathrm{panels}[p, 32 w + c]),
    \quad c = 0..31,

which LLVM lowers to one broadcast, 4 ``vpxorq``, 4 ``vpopcntq`` and 4 ``vpaddq`` per row: the
inner loop runs over the words and every output stays in a register until the tile is done, with
no horizontal reduction (lanes are different output columns), so short ``K`` is as efficient as
long ``K``. Numba has no vector type, so the accumulator primitives (``_acc_*``) are small
``numba.extending.intrinsic`` functions that emit LLVM vector IR (``llvm.ctpop.v32i64``) on a stack
slot that LLVM promotes to registers; each has a plain NumPy twin used when
``NUMBA_DISABLE_JIT=1``, so every kernel also runs (slowly) as Python. The outer loops block the
work into (row block x panel block) tasks, sized so that a row block of ``A`` stays in L1 and a
panel block of ``B`` in L2, and run the tasks in parallel.

Convolution
-----------
Inputs ``(B, H, W, n_words)`` (channels packed last), weights ``(C_out, kh, kw, n_words)``. For each
output row the kernel gathers the receptive fields of that row into a small patch matrix
``(W_out, kh * kw * n_words)`` (the packed im2col of one row only, never of the whole batch) and
runs the GEMM micro-kernel against the weight panels. Zero padding cannot be stored in one bit:
padded taps are written as words of 0, i.e. as +1, and the resulting surplus, the sum of the weights
over the padded taps, is subtracted afterwards (see :func:`padding_classes`).

Every Numba kernel takes preallocated outputs, has one signature per dtype, and is compiled lazily
(``cache=True``). The ``*_reference`` functions are the plain NumPy truth used by the tests.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

WORD_BITS = 64
PANEL_LANES = 32  # output columns per panel = int64 lanes of one accumulator (4 zmm registers)
TILE_ROWS = 4  # rows of A per register tile (4 accumulators = 16 zmm registers)
NEVER = np.int64(1) << np.int64(62)  # popcount limit that is never exceeded (padding columns)

_L1_BYTES = 24 * 1024  # budget for one row block of A (half of a 48 KiB L1d)
_L2_BYTES = 256 * 1024  # budget for one panel block of B


def n_words(k):
    """Number of 64-bit words holding ``k`` bits: ``ceil(k / 64)``.

    Parameters
    ----------
    k : int
        Number of bits (>= 0).

    Returns
    -------
    int
    """
    return -(-int(k) // WORD_BITS)


# ---------------------------------------------------------------------------------------------------
# Popcount (NumPy)
# ---------------------------------------------------------------------------------------------------

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount_reference(words):
    """Per-word population count of a ``uint64`` array (NumPy; any shape), as ``int64``.

    Parameters
    ----------
    words : array_like of uint64, any shape
        Packed words.

    Returns
    -------
    ndarray of int64, same shape as ``words``
        Set bits per word, in ``[0, 64]``.
    """
    words = np.asarray(words, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.bitwise_count(words).astype(np.int64)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape + (8,))
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Accumulator primitives: one accumulator = PANEL_LANES int64 lanes (an LLVM <32 x i64> vector kept
# in a stack slot that mem2reg promotes to 4 zmm registers). The NumPy twins define the semantics.
# ---------------------------------------------------------------------------------------------------

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_LANES_I64 = ir.VectorType(_I64, PANEL_LANES)
_LANES_I32 = ir.VectorType(_I32, PANEL_LANES)
_ACC = types.CPointer(types.int64)  # Numba-side type of an accumulator (pointer to its stack slot)


def _element_pointer(context, builder, array_type, array, index, index_type):
    """LLVM pointer to ``array[index]`` of a C-contiguous 1-D array (no bounds check)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [context.cast(builder, index, index_type, types.intp)])


def _splat(builder, scalar, vector_type):
    """Broadcast ``scalar`` to every lane of ``vector_type``."""
    one_lane = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one_lane, ir.Constant(vector_type, ir.Undefined), zeros)


def _load_acc(builder, acc_pointer):
    return builder.load(builder.bitcast(acc_pointer, _LANES_I64.as_pointer()))


def _is_c_vector(array_type, dtype):
    return isinstance(array_type, types.Array) and array_type.ndim == 1 and array_type.layout == "C" \
        and array_type.dtype == dtype


def _acc_zeros_numpy():
    return np.zeros(PANEL_LANES, np.int64)


def _acc_add_xor_popcount_numpy(acc, x, words, start):
    acc += popcount_reference(words[start:start + PANEL_LANES] ^ np.uint64(x))


def _acc_store_dot_numpy(acc, k, out, start):
    out[start:start + PANEL_LANES] = k - 2 * acc


def _acc_get_numpy(acc, lane):
    return acc[lane]


def _acc_sign_bits_numpy(acc, limits, start):
    above = acc > limits[start:start + PANEL_LANES]
    return np.uint64(sum(1 << lane for lane in range(PANEL_LANES) if above[lane]))


@intrinsic
def _acc_zeros_llvm(typingctx):
    """A fresh zeroed accumulator (stack slot in the entry block of the calling function)."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, _LANES_I64)
        builder.store(ir.Constant(_LANES_I64, None), slot)
        return builder.bitcast(slot, _I64.as_pointer())
    return _ACC(), codegen


@intrinsic
def _acc_add_xor_popcount_llvm(typingctx, acc, x, words, start):
    """``acc[c] += popcount(x ^ words[start + c])`` for the 32 lanes (one vector load)."""
    if acc != _ACC or x != types.uint64 or not _is_c_vector(words, types.uint64) \
            or not isinstance(start, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        acc_pointer, x_value, words_value, start_value = args
        pointer = _element_pointer(context, builder, signature.args[2], words_value, start_value,
                                   signature.args[3])
        lanes = builder.load(builder.bitcast(pointer, _LANES_I64.as_pointer()), align=8)
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_LANES_I64, [_LANES_I64]),
                                               f"llvm.ctpop.v{PANEL_LANES}i64")
        counts = builder.call(ctpop, [builder.xor(lanes, _splat(builder, x_value, _LANES_I64))])
        slot = builder.bitcast(acc_pointer, _LANES_I64.as_pointer())
        builder.store(builder.add(builder.load(slot), counts), slot)
        return context.get_dummy_value()
    return types.void(acc, x, words, start), codegen


@intrinsic
def _acc_store_dot_llvm(typingctx, acc, k, out, start):
    """``out[start + c] = k - 2 * acc[c]`` as int32 for the 32 lanes (one vector store)."""
    if acc != _ACC or k != types.int64 or not _is_c_vector(out, types.int32) \
            or not isinstance(start, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        acc_pointer, k_value, out_value, start_value = args
        doubled = builder.shl(_load_acc(builder, acc_pointer), ir.Constant(_LANES_I64, 1))
        dots = builder.trunc(builder.sub(_splat(builder, k_value, _LANES_I64), doubled), _LANES_I32)
        pointer = _element_pointer(context, builder, signature.args[2], out_value, start_value,
                                   signature.args[3])
        builder.store(dots, builder.bitcast(pointer, _LANES_I32.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(acc, k, out, start), codegen


@intrinsic
def _acc_get_llvm(typingctx, acc, lane):
    """Lane ``lane`` of the accumulator (for partial panels)."""
    if acc != _ACC or not isinstance(lane, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        lane_index = context.cast(builder, args[1], signature.args[1], types.int32)
        return builder.extract_element(_load_acc(builder, args[0]), lane_index)
    return types.int64(acc, lane), codegen


@intrinsic
def _acc_sign_bits_llvm(typingctx, acc, limits, start):
    """Bit ``c`` (c < 32) set iff ``acc[c] > limits[start + c]`` (one vector compare + mask move)."""
    if acc != _ACC or not _is_c_vector(limits, types.int64) or not isinstance(start, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        acc_pointer, limits_value, start_value = args
        pointer = _element_pointer(context, builder, signature.args[1], limits_value, start_value,
                                   signature.args[2])
        bounds = builder.load(builder.bitcast(pointer, _LANES_I64.as_pointer()), align=8)
        above = builder.icmp_signed(">", _load_acc(builder, acc_pointer), bounds)
        return builder.zext(builder.bitcast(above, ir.IntType(PANEL_LANES)), _I64)
    return types.uint64(acc, limits, start), codegen


if numba.config.DISABLE_JIT:  # kernels run as Python: use the NumPy twins
    _acc_zeros = _acc_zeros_numpy
    _acc_add_xor_popcount = _acc_add_xor_popcount_numpy
    _acc_store_dot = _acc_store_dot_numpy
    _acc_get = _acc_get_numpy
    _acc_sign_bits = _acc_sign_bits_numpy
else:
    _acc_zeros = _acc_zeros_llvm
    _acc_add_xor_popcount = _acc_add_xor_popcount_llvm
    _acc_store_dot = _acc_store_dot_llvm
    _acc_get = _acc_get_llvm
    _acc_sign_bits = _acc_sign_bits_llvm


# ---------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------

@numba.njit(parallel=True, cache=True)
def pack_rows(x, words, row_has_nan):
    """Pack the signs of each row of ``x`` (R, K) into ``words`` (R, ceil(K/64)) uint64.

    Bit ``c`` of ``words[r, w]`` is ``x[r, 64 w + c] < 0``; padding bits are 0.
    ``row_has_nan[r]`` (bool, (R,)) reports NaNs, whose sign is undefined, to the caller.
    """
    n_rows, k = x.shape
    n_row_words = words.shape[1]
    for r in prange(n_rows):
        row = x[r]
        nan_seen = False
        for w in range(n_row_words):
            base = w * WORD_BITS
            word = np.uint64(0)
            for c in range(min(WORD_BITS, k - base)):
                value = row[base + c]
                nan_seen |= value != value
                word |= np.uint64(value < 0) << np.uint64(c)
            words[r, w] = word
        row_has_nan[r] = nan_seen


@numba.njit(parallel=True, cache=True)
def words_to_panels(words, panels):
    """Re-lay out packed rows (N, n_words) into panels (ceil(N/32), 32 * n_words).

    ``panels[p, 32 w + c] = words[32 p + c, w]``; rows past ``N`` are zero.
    """
    n_rows, n_row_words = words.shape
    for p in prange(panels.shape[0]):
        panel = panels[p]
        for c in range(PANEL_LANES):
            row = p * PANEL_LANES + c
            if row < n_rows:
                for w in range(n_row_words):
                    panel[w * PANEL_LANES + c] = words[row, w]
            else:
                for w in range(n_row_words):
                    panel[w * PANEL_LANES + c] = 0


# ---------------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _accumulate_tile(a, i0, n_rows, panel, s0, s1, s2, s3):
    """Add ``popcount(a[i0 + r] ^ panel column c)`` over all words into accumulator ``s_r``.

    Rows past ``n_rows - 1`` repeat the last row (their results are simply not stored), so a
    partial tile needs no separate code path.
    """
    last = n_rows - 1
    _add_rows_xor_popcount(a[i0], a[min(i0 + 1, last)], a[min(i0 + 2, last)], a[min(i0 + 3, last)], panel,
                           s0, s1, s2, s3)


@numba.njit(cache=True)
def _add_rows_xor_popcount(a0, a1, a2, a3, panel, s0, s1, s2, s3):
    """``s_r[c] += sum_w popcount(a_r[w] ^ panel[32 w + c])`` for four packed rows ``a_r``."""
    for w in range(a0.shape[0]):
        offset = w * PANEL_LANES
        _acc_add_xor_popcount(s0, a0[w], panel, offset)
        _acc_add_xor_popcount(s1, a1[w], panel, offset)
        _acc_add_xor_popcount(s2, a2[w], panel, offset)
        _acc_add_xor_popcount(s3, a3[w], panel, offset)


@numba.njit(cache=True)
def _store_dot_row(acc, k, out_row, j0):
    """Write ``k - 2 acc`` to ``out_row[j0 : j0 + 32]``, clipped to the row length."""
    n_valid = out_row.shape[0] - j0
    if n_valid >= PANEL_LANES:
        _acc_store_dot(acc, k, out_row, j0)
    else:
        for c in range(n_valid):
            out_row[j0 + c] = k - 2 * _acc_get(acc, c)


@numba.njit(cache=True)
def _task_ranges(task, n_rows, n_panels, rows_per_block, panels_per_block):
    """``(panel_lo, panel_hi, row_lo, row_hi)`` of parallel task ``task``: tasks enumerate the (row block,
    panel block) pairs, panel blocks fastest."""
    n_panel_blocks = (n_panels + panels_per_block - 1) // panels_per_block
    row_block = task // n_panel_blocks
    panel_block = task - row_block * n_panel_blocks
    return (panel_block * panels_per_block, min(n_panels, (panel_block + 1) * panels_per_block),
            row_block * rows_per_block, min(n_rows, (row_block + 1) * rows_per_block))


@numba.njit(cache=True)
def _n_tasks(n_rows, n_panels, rows_per_block, panels_per_block):
    return ((n_rows + rows_per_block - 1) // rows_per_block) * ((n_panels + panels_per_block - 1) // panels_per_block)


@numba.njit(cache=True)
def _dot_tile(a, i0, panel, k, out, j0):
    """``out[i0 + r, j0 + c] = k - 2 popcount(a[i0 + r] ^ b[j0 + c])`` for a 4 x 32 tile."""
    n_rows = a.shape[0]
    s0 = _acc_zeros()
    s1 = _acc_zeros()
    s2 = _acc_zeros()
    s3 = _acc_zeros()
    _accumulate_tile(a, i0, n_rows, panel, s0, s1, s2, s3)
    _store_dot_row(s0, k, out[i0], j0)
    if i0 + 1 < n_rows:
        _store_dot_row(s1, k, out[i0 + 1], j0)
    if i0 + 2 < n_rows:
        _store_dot_row(s2, k, out[i0 + 2], j0)
    if i0 + 3 < n_rows:
        _store_dot_row(s3, k, out[i0 + 3], j0)


@numba.njit(cache=True)
def _sign_tile(a, i0, panel, j0, limits, limit_row, flip_words, out_words, out_row0):
    """Packed signs of a 4 x 32 tile, OR-ed into ``out_words[out_row0 + i0 + r]``.

    Output bit ``j0 + c`` of row ``i`` is ``(popcount > limits[limit_row[i], j0 + c]) XOR flip``:
    set (-1) iff the dot product is below its threshold, or the opposite when flipped.
    """
    n_rows = a.shape[0]
    s0 = _acc_zeros()
    s1 = _acc_zeros()
    s2 = _acc_zeros()
    s3 = _acc_zeros()
    _accumulate_tile(a, i0, n_rows, panel, s0, s1, s2, s3)
    word = j0 // WORD_BITS
    shift = np.uint64(j0 % WORD_BITS)
    flip = (flip_words[word] >> shift) & np.uint64(0xFFFFFFFF)
    out_words[out_row0 + i0, word] |= (_acc_sign_bits(s0, limits[limit_row[i0]], j0) ^ flip) << shift
    if i0 + 1 < n_rows:
        out_words[out_row0 + i0 + 1, word] |= (_acc_sign_bits(s1, limits[limit_row[i0 + 1]], j0) ^ flip) << shift
    if i0 + 2 < n_rows:
        out_words[out_row0 + i0 + 2, word] |= (_acc_sign_bits(s2, limits[limit_row[i0 + 2]], j0) ^ flip) << shift
    if i0 + 3 < n_rows:
        out_words[out_row0 + i0 + 3, word] |= (_acc_sign_bits(s3, limits[limit_row[i0 + 3]], j0) ^ flip) << shift


@numba.njit(cache=True)
def _block_sizes(n_row_words):
    """(rows per row block, panels per panel block) for cache blocking.

    A row block of A (rows x n_words x 8 bytes) fits in ~24 KiB of L1, a panel block of B in
    ~256 KiB of L2; the panel count is even so that every 64-bit output word of the fused kernel
    belongs to a single task.
    """
    row_bytes = max(1, n_row_words) * 8
    rows = max(TILE_ROWS, min(64, _L1_BYTES // row_bytes // TILE_ROWS * TILE_ROWS))
    panels = max(2, min(8, _L2_BYTES // (row_bytes * PANEL_LANES) // 2 * 2))
    return rows, panels


@numba.njit(parallel=True, cache=True)
def xnor_gemm(a, panels, k, out):
    """``out[i, j] = k - 2 popcount(a[i] XOR b[j])`` (int32), B given as panels.

    Parameters: ``a`` (M, n_words) uint64, ``panels`` (ceil(N/32), 32 n_words) uint64 from
    :func:`words_to_panels`, ``k`` int64 (true K), ``out`` (M, N) int32.
    """
    n_rows = a.shape[0]
    n_panels = panels.shape[0]
    rows_per_block, panels_per_block = _block_sizes(a.shape[1])
    for task in prange(_n_tasks(n_rows, n_panels, rows_per_block, panels_per_block)):
        p_lo, p_hi, i_lo, i_hi = _task_ranges(task, n_rows, n_panels, rows_per_block, panels_per_block)
        for p in range(p_lo, p_hi):
            panel = panels[p]
            for i0 in range(i_lo, i_hi, TILE_ROWS):
                _dot_tile(a, i0, panel, k, out, p * PANEL_LANES)


@numba.njit(parallel=True, cache=True)
def xnor_gemm_threshold(a, panels, limits, flip_words, out_words):
    """Fused GEMM + sign, packed output: bit j of row i is ``(popcount_ij > limits[j]) XOR flip_j``.

    ``limits`` (32 ceil(N/32),) int64 with ``NEVER`` in the padding columns, ``flip_words``
    (ceil(N/64),) uint64 (packed flip flags, padding 0), ``out_words`` (M, ceil(N/64)) uint64,
    zero on entry.
    """
    n_rows = a.shape[0]
    n_panels = panels.shape[0]
    limit_rows = limits.reshape(1, limits.shape[0])
    limit_row = np.empty(n_rows, np.int64)  # every row uses limit row 0
    for i in range(n_rows):  # a loop: np.zeros outside the prange would be a parallel region of its own
        limit_row[i] = 0
    rows_per_block, panels_per_block = _block_sizes(a.shape[1])
    for task in prange(_n_tasks(n_rows, n_panels, rows_per_block, panels_per_block)):
        p_lo, p_hi, i_lo, i_hi = _task_ranges(task, n_rows, n_panels, rows_per_block, panels_per_block)
        for p in range(p_lo, p_hi):
            panel = panels[p]
            for i0 in range(i_lo, i_hi, TILE_ROWS):
                _sign_tile(a, i0, panel, p * PANEL_LANES, limit_rows, limit_row, flip_words, out_words, 0)


# ---------------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _gather_row_patches(x, b, oy, kh, kw, sh, sw, ph, pw, patches):
    """Packed im2col of output row ``oy`` of image ``b``.

    ``patches[ox, (dy kw + dx) n_words : ... + n_words] = x[b, oy sh - ph + dy, ox sw - pw + dx]``,
    and words of 0 (+1) where that input position lies in the zero padding.
    """
    height, width, n_channel_words = x.shape[1], x.shape[2], x.shape[3]
    for ox in range(patches.shape[0]):
        patch = patches[ox]
        for dy in range(kh):
            iy = oy * sh - ph + dy
            for dx in range(kw):
                ix = ox * sw - pw + dx
                offset = (dy * kw + dx) * n_channel_words
                if 0 <= iy < height and 0 <= ix < width:
                    pixel = x[b, iy, ix]
                    for w in range(n_channel_words):
                        patch[offset + w] = pixel[w]
                else:
                    for w in range(n_channel_words):
                        patch[offset + w] = 0


@numba.njit(parallel=True, cache=True)
def xnor_conv2d(x, panels, k, geometry, corrections, row_class, col_class, out):
    """Binary convolution, int32 output (B, C_out, H_out, W_out).

    ``out[b, co, oy, ox] = k - 2 popcount(patch(b, oy, ox) XOR w[co])
    - corrections[row_class[oy], col_class[ox], co]`` with padded taps gathered as +1.

    ``x`` (B, H, W, n_words) uint64; ``panels`` from the weights reshaped to
    (C_out, kh kw n_words); ``k = C_in kh kw``; ``geometry`` int64 (kh, kw, sh, sw, ph, pw);
    ``corrections`` (n_row_classes, n_col_classes, 32 ceil(C_out/32)) int32.
    """
    kh, kw, sh, sw, ph, pw = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    batch, n_out_channels, out_height, out_width = out.shape
    n_panels = panels.shape[0]
    patch_words = kh * kw * x.shape[3]
    for task in prange(batch * out_height):
        b = task // out_height
        oy = task - b * out_height
        patches = np.empty((out_width, patch_words), np.uint64)
        _gather_row_patches(x, b, oy, kh, kw, sh, sw, ph, pw, patches)
        dots = np.empty((out_width, n_panels * PANEL_LANES), np.int32)
        for p in range(n_panels):
            for i0 in range(0, out_width, TILE_ROWS):
                _dot_tile(patches, i0, panels[p], k, dots, p * PANEL_LANES)
        row_corrections = corrections[row_class[oy]]
        for co in range(n_out_channels):
            for ox in range(out_width):
                out[b, co, oy, ox] = dots[ox, co] - row_corrections[col_class[ox], co]


@numba.njit(parallel=True, cache=True)
def xnor_conv2d_threshold(x, panels, geometry, limits, limit_class, flip_words, out_words):
    """Fused binary convolution + sign, packed output rows ``out_words`` (B H_out W_out, n_out_words).

    Output bit ``co`` at (b, oy, ox) is ``(popcount > limits[limit_class[oy, ox], co]) XOR flip_co``;
    the limits fold the threshold and the padding correction of each position class.
    ``out_words`` must be zero on entry.
    """
    kh, kw, sh, sw, ph, pw = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5]
    out_height, out_width = limit_class.shape
    batch = out_words.shape[0] // (out_height * out_width)
    n_panels = panels.shape[0]
    patch_words = kh * kw * x.shape[3]
    for task in prange(batch * out_height):
        b = task // out_height
        oy = task - b * out_height
        patches = np.empty((out_width, patch_words), np.uint64)
        _gather_row_patches(x, b, oy, kh, kw, sh, sw, ph, pw, patches)
        out_row0 = (b * out_height + oy) * out_width
        for p in range(n_panels):
            for i0 in range(0, out_width, TILE_ROWS):
                _sign_tile(patches, i0, panels[p], p * PANEL_LANES, limits, limit_class[oy], flip_words,
                           out_words, out_row0)


def padding_classes(size, kernel, stride, pad, out_size):
    """Classify output positions along one axis by which kernel taps fall inside the input.

    Output position ``o`` reads input ``o * stride - pad + d`` for taps ``d``; the taps with
    ``valid_ranges[class_of_position[o]] = [d_lo, d_hi)`` are inside ``[0, size)``, the others are
    in the padding. Interior positions share one class, so there are at most a few classes.

    Parameters
    ----------
    size : int
        Input length along the axis.
    kernel : int
        Kernel length.
    stride : int
        Stride.
    pad : int
        Zero padding on each side.
    out_size : int
        Output length.

    Returns
    -------
    class_of_position : ndarray of int64, shape (out_size,)
    valid_ranges : ndarray of int64, shape (n_classes, 2)
        ``[d_lo, d_hi)`` of each class, sorted.
    """
    origin = np.arange(out_size, dtype=np.int64) * stride - pad
    d_lo = np.clip(-origin, 0, kernel)
    d_hi = np.clip(size - origin, 0, kernel)
    ranges, class_of_position = np.unique(np.stack([d_lo, d_hi], axis=1), axis=0, return_inverse=True)
    return class_of_position.reshape(-1).astype(np.int64), ranges.astype(np.int64)


def padding_corrections(tap_sums, row_ranges, col_ranges):
    r"""Weight sums over the padded taps for every (row class, column class).

    With padded inputs gathered as +1, the popcount dot product of output channel ``co`` exceeds
    the zero-padded one by

    .. math:: c[r, s, co] = \sum_{(dy, dx) \notin [dy_{lo}, dy_{hi}) \times [dx_{lo}, dx_{hi})} S[co, dy, dx],
              \qquad S[co, dy, dx] = \sum_{ci} w[co, ci, dy, dx],

    Parameters
    ----------
    tap_sums : ndarray, shape (C_out, kh, kw), int64
        ``S``, the +-1 weights summed over input channels.
    row_ranges, col_ranges : ndarray, shape (n, 2), int64
        Valid tap ranges from :func:`padding_classes`.

    Returns
    -------
    ndarray, shape (n_row_classes, n_col_classes, C_out), int64
    """
    total = tap_sums.sum(axis=(1, 2))
    out = np.empty((len(row_ranges), len(col_ranges), tap_sums.shape[0]), np.int64)
    for r, (dy_lo, dy_hi) in enumerate(row_ranges):
        for s, (dx_lo, dx_hi) in enumerate(col_ranges):
            out[r, s] = total - tap_sums[:, dy_lo:dy_hi, dx_lo:dx_hi].sum(axis=(1, 2))
    return out


# ---------------------------------------------------------------------------------------------------
# Host-side layout of the kernels' operands (shared by sbnnumba.bitpack and the backends)
# ---------------------------------------------------------------------------------------------------

def panel_layout(words):
    """Panel layout of packed weights (N, ...) -> (ceil(N/32), 32 * row_words), see :class:`PreparedWeights`.

    Parameters
    ----------
    words : ndarray of uint64, shape (N, ...)
        Packed weights; each row is flattened to ``row_words`` words.

    Returns
    -------
    ndarray of uint64, shape (ceil(N/32), 32 * row_words)
        ``panels[p, 32 w + c] = words[32 p + c].ravel()[w]``, zero past the last row.
    """
    rows = words.reshape(words.shape[0], int(np.prod(words.shape[1:])))
    panels = np.empty((-(-rows.shape[0] // PANEL_LANES), PANEL_LANES * rows.shape[1]), np.uint64)
    words_to_panels(rows, panels)
    return panels


class PreparedWeights:
    """Packed weights plus their panel layout for the XNOR-popcount CPU kernels.

    Attributes
    ----------
    words : ndarray, uint64
        The packed weights: (N, n_words) for a matrix product, (C_out, kh, kw, n_words) for a
        convolution.
    panels : ndarray, shape (ceil(N/32), 32 * row_words), uint64
        Rows of ``words`` (flattened after axis 0) interleaved by 32:
        ``panels[p, 32 w + c] = words[32 p + c].ravel()[w]``, zero past the last row. Computed at
        construction when ``panels=True`` (:func:`sbnnumba.bitpack.prepare_weights`), else at the first
        use, so a backend that never reads it (e.g. CUDA) never pays for it.

    Parameters
    ----------
    words : ndarray of uint64
        See Attributes.
    panels : bool
        Compute the panel layout now (else at its first use).
    """

    __slots__ = ("words", "_panels")

    def __init__(self, words, panels=False):
        self.words = words
        self._panels = panel_layout(words) if panels else None

    @property
    def panels(self):
        if self._panels is None:
            self._panels = panel_layout(self.words)
        return self._panels


def padded_limits(limits, n_panels):
    """Pad the last axis with NEVER up to 32 * n_panels (padding columns always give bit 0).

    Parameters
    ----------
    limits : ndarray of int64, shape (..., N)
        Popcount limits per output column (bit set iff popcount > limit).
    n_panels : int
        Panels of the weights, ``ceil(N/32)``.

    Returns
    -------
    ndarray of int64, shape (..., 32 * n_panels)
    """
    out = np.full(limits.shape[:-1] + (n_panels * PANEL_LANES,), NEVER, np.int64)
    out[..., :limits.shape[-1]] = limits
    return out


def flip_words(flip):
    """Per-column bool ``flip`` (N,) -> packed uint64 words (ceil(N/64),), padding 0.

    Parameters
    ----------
    flip : array_like of bool, shape (N,)
        Columns to negate.

    Returns
    -------
    ndarray of uint64, shape (ceil(N/64),)
        Bit ``j`` set where ``flip[j]``, XORed into the kernels' output words.
    """
    return pack_reference(np.where(flip, -1, 1).astype(np.int8))


# ---------------------------------------------------------------------------------------------------
# NumPy references (the truth for the tests; readable, not fast)
# ---------------------------------------------------------------------------------------------------

def pack_reference(x):
    """Pack ``x < 0`` along the last axis: (..., K) -> uint64 (..., ceil(K/64)), bit i = element i.

    NumPy reference of the packing kernel (``np.packbits``, little-endian bit and byte order).

    Parameters
    ----------
    x : array_like, shape (..., K)
        Real values (NaN is not detected here).

    Returns
    -------
    ndarray of uint64, shape (..., ceil(K/64))
        Bit ``i % 64`` of word ``i // 64`` is ``x[..., i] < 0``; padding bits 0.
    """
    x = np.asarray(x)
    k = x.shape[-1]
    bits = np.zeros(x.shape[:-1] + (n_words(k) * WORD_BITS,), np.uint8)
    bits[..., :k] = x < 0
    packed = np.packbits(bits, axis=-1, bitorder="little")  # (..., 8 n_words) bytes, little-endian words
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64)


def unpack_reference(words, k, dtype=np.float32):
    r"""Inverse of :func:`pack_reference`: uint64 (..., ceil(k/64)) -> +-1 (..., k) of ``dtype``.

    .. math:: x[..., i] = 1 - 2\, \mathrm{bit}_{i \bmod 64}(\mathrm{words}[..., \lfloor i/64 \rfloor])

    Parameters
    ----------
    words : array_like of uint64, shape (..., ceil(k/64))
        Packed words.
    k : int
        True length of the last axis (padding bits ignored).
    dtype : dtype
        Output dtype.

    Returns
    -------
    ndarray, shape (..., k), of ``dtype`` with values in {-1, +1}
    """
    words = np.ascontiguousarray(words, dtype=np.uint64).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), axis=-1, count=k, bitorder="little")
    return (1 - 2 * bits.astype(np.int8)).astype(dtype)


def matmul_reference(a_words, b_words, k):
    """``out[i, j] = k - 2 sum_w popcount(a[i, w] ^ b[j, w])``, int32 (M, N): the +-1 product ``a @ b.T``.

    Parameters
    ----------
    a_words : array_like of uint64, shape (M, ceil(k/64))
        Packed rows of ``a``.
    b_words : array_like of uint64, shape (N, ceil(k/64))
        Packed rows of ``b``.
    k : int
        True row length (padding bits 0 in both).

    Returns
    -------
    ndarray of int32, shape (M, N)
    """
    a_words = np.asarray(a_words, np.uint64)
    b_words = np.asarray(b_words, np.uint64)
    out = np.empty((a_words.shape[0], b_words.shape[0]), np.int32)
    for i in range(a_words.shape[0]):
        out[i] = k - 2 * popcount_reference(a_words[i] ^ b_words).sum(axis=-1)
    return out


def sign_threshold_reference(dots, thresholds, flip=None):
    """``y = +1 if dot >= threshold else -1`` per column (last axis), negated where ``flip``.

    Parameters
    ----------
    dots : array_like, shape (..., N)
        Integer products.
    thresholds : float or array_like, shape (N,)
        Per column.
    flip : array_like of bool, shape (N,), optional
        Columns whose sign is negated.

    Returns
    -------
    ndarray of int8, shape (..., N), values in {-1, +1}
    """
    y = np.where(dots >= np.asarray(thresholds), 1, -1).astype(np.int8)
    if flip is not None:
        y = np.where(np.asarray(flip, bool), -y, y).astype(np.int8)
    return y


def matmul_threshold_reference(a_words, b_words, k, thresholds, flip=None):
    """Packed ``sign(a @ b.T - thresholds)`` (optionally flipped per column): uint64 (M, ceil(N/64)).

    :func:`sign_threshold_reference` of :func:`matmul_reference`, packed with :func:`pack_reference`.

    Parameters
    ----------
    a_words, b_words, k
        As in :func:`matmul_reference`.
    thresholds : float or array_like, shape (N,)
        Per output column.
    flip : array_like of bool, shape (N,), optional
        Columns whose sign is negated.

    Returns
    -------
    ndarray of uint64, shape (M, ceil(N/64))
    """
    return pack_reference(sign_threshold_reference(matmul_reference(a_words, b_words, k), thresholds, flip))


def conv2d_reference(x_words, w_words, c_in, stride=(1, 1), padding=(0, 0)):
    """Zero-padded binary convolution on packed words: int32 (B, C_out, H_out, W_out).

    Taps in the padding are skipped (their input value is 0), the others contribute
    ``c_in - 2 popcount(x_tap ^ w_tap)``; no correction term is involved, so this is an
    independent check of the kernels' "+1 and subtract" handling of the padding.

    Parameters
    ----------
    x_words : array_like of uint64, shape (B, H, W, ceil(c_in/64))
        Input maps packed along channels.
    w_words : array_like of uint64, shape (C_out, kh, kw, ceil(c_in/64))
        Weights packed along input channels.
    c_in : int
        True number of input channels.
    stride, padding : (int, int)
        Vertical and horizontal stride and zero padding.

    Returns
    -------
    ndarray of int32, shape (B, C_out, H_out, W_out)
        ``H_out = (H + 2 p_h - kh) // s_h + 1``, likewise ``W_out``.
    """
    x_words = np.asarray(x_words, np.uint64)
    w_words = np.asarray(w_words, np.uint64)
    (sh, sw), (ph, pw) = stride, padding
    batch, height, width, _ = x_words.shape
    c_out, kh, kw, _ = w_words.shape
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    out = np.zeros((batch, c_out, out_h, out_w), np.int64)
    oy = np.arange(out_h)
    ox = np.arange(out_w)
    for dy in range(kh):
        iy = oy * sh - ph + dy
        for dx in range(kw):
            ix = ox * sw - pw + dx
            valid = ((iy >= 0) & (iy < height))[:, None] & ((ix >= 0) & (ix < width))[None, :]
            taps = x_words[:, np.clip(iy, 0, height - 1)][:, :, np.clip(ix, 0, width - 1)]  # (B, oh, ow, nw)
            for co in range(c_out):
                tap_dot = c_in - 2 * popcount_reference(taps ^ w_words[co, dy, dx]).sum(axis=-1)
                out[:, co] += np.where(valid, tap_dot, 0)
    return out.astype(np.int32)


def conv2d_threshold_reference(x_words, w_words, c_in, thresholds, flip=None, stride=(1, 1), padding=(0, 0)):
    """Packed signs of :func:`conv2d_reference` in the input layout: uint64 (B, H_out, W_out, ceil(C_out/64)).

    Parameters
    ----------
    x_words, w_words, c_in, stride, padding
        As in :func:`conv2d_reference`.
    thresholds : float or array_like, shape (C_out,)
        Per output channel.
    flip : array_like of bool, shape (C_out,), optional
        Channels whose sign is negated.

    Returns
    -------
    ndarray of uint64, shape (B, H_out, W_out, ceil(C_out/64))
    """
    dots = conv2d_reference(x_words, w_words, c_in, stride, padding).transpose(0, 2, 3, 1)
    return pack_reference(sign_threshold_reference(dots, thresholds, flip))
