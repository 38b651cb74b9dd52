r"""Cache- and vector-friendly transposes of a weight matrix for the dense flip kernels (Numba CPU).

The dense ratio kernel (:mod:`sbnnumba.kernels.cpu`) reads ``k = e^{2 W^T}`` by rows of ``W^T``, so every PSA
step transposes each layer's ``(N_out, N_in)`` weight. :func:`clipped_double_transpose` writes

.. math::

    out_{ij} = \mathrm{clip}(2 W_{ji}, -C, C), \qquad out \in \mathbb{R}^{N_{in} \times N_{out}},

and :func:`blocked_transpose` ``out_{ij} = W_{ji}`` (the bounded, probit and generic forms read ``W`` itself by input
unit), both by 8 x 8 blocks: eight vector loads of 8 consecutive weights (one row each), the doubling and the clip on
the vectors (clipped form), a 24-shuffle transpose in registers (:func:`_block_8x8`, LLVM IR) and eight vector
stores. LLVM does not vectorize a transpose written as scalar loops, so the best scalar tiling takes about twice
the blocks' time (figures: ``docs/experiments/2026-12-06-kernel-figures.md``). The blocks are walked row band by
row band of ``W`` (16 rows, all columns), so the reads run through ``W`` in memory order and each row of ``out`` gets 16
consecutive outputs (two stores) at a time. Doubling and clipping are exact, so the result's bits do not depend on
the path (the edges, narrower than 8, are plain loops); the plain form moves every value's bits unchanged.

Under ``NUMBA_DISABLE_JIT=1`` the blocks are NumPy expressions (same values).
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

BLOCK = 8  # rows and columns of a block: one AVX2 register of float32 (LLVM splits or widens it as the target wants)
# Rows of W per band: two blocks, so that each row of ``out`` gets 64 consecutive bytes (a whole cache line in
# float32) at once; with 8-row bands each line was written in two halves a band apart (1024 x 1024 float32, one
# thread, W and out in L3 as in a training step: 1.05 -> 0.61 ms).
BAND = 2 * BLOCK

# The 8 x 8 transpose network on rows r0..r7 (as _mm256_unpack*_ps, _mm256_shuffle_ps, _mm256_permute2f128_ps):
# stage 1 interleaves pairs of rows, stage 2 pairs of pairs, stage 3 the 4-element halves.
_STAGES = (
    ((0, 1, (0, 8, 1, 9, 4, 12, 5, 13)), (0, 1, (2, 10, 3, 11, 6, 14, 7, 15)),
     (2, 3, (0, 8, 1, 9, 4, 12, 5, 13)), (2, 3, (2, 10, 3, 11, 6, 14, 7, 15)),
     (4, 5, (0, 8, 1, 9, 4, 12, 5, 13)), (4, 5, (2, 10, 3, 11, 6, 14, 7, 15)),
     (6, 7, (0, 8, 1, 9, 4, 12, 5, 13)), (6, 7, (2, 10, 3, 11, 6, 14, 7, 15))),
    ((0, 2, (0, 1, 8, 9, 4, 5, 12, 13)), (0, 2, (2, 3, 10, 11, 6, 7, 14, 15)),
     (1, 3, (0, 1, 8, 9, 4, 5, 12, 13)), (1, 3, (2, 3, 10, 11, 6, 7, 14, 15)),
     (4, 6, (0, 1, 8, 9, 4, 5, 12, 13)), (4, 6, (2, 3, 10, 11, 6, 7, 14, 15)),
     (5, 7, (0, 1, 8, 9, 4, 5, 12, 13)), (5, 7, (2, 3, 10, 11, 6, 7, 14, 15))),
    ((0, 4, (0, 1, 2, 3, 8, 9, 10, 11)), (1, 5, (0, 1, 2, 3, 8, 9, 10, 11)),
     (2, 6, (0, 1, 2, 3, 8, 9, 10, 11)), (3, 7, (0, 1, 2, 3, 8, 9, 10, 11)),
     (0, 4, (4, 5, 6, 7, 12, 13, 14, 15)), (1, 5, (4, 5, 6, 7, 12, 13, 14, 15)),
     (2, 6, (4, 5, 6, 7, 12, 13, 14, 15)), (3, 7, (4, 5, 6, 7, 12, 13, 14, 15))),
)


def _transpose_rows(rows):
    """The rows of the transpose of the 8 x 8 matrix whose rows are ``rows``, through :data:`_STAGES`
    (``rows`` and the result: lists of 8 sequences; pure Python, used by the tests to check the network)."""
    for stage in _STAGES:
        rows = [[(list(rows[a]) + list(rows[b]))[m] for m in mask] for a, b, mask in stage]
    return rows


def _block_8x8_numpy(weight, out, j0, i0, clip):
    block = weight[j0:j0 + BLOCK, i0:i0 + BLOCK]
    out[i0:i0 + BLOCK, j0:j0 + BLOCK] = np.minimum(np.maximum(block + block, -clip), clip).T


def _plain_block_8x8_numpy(weight, out, j0, i0):
    out[i0:i0 + BLOCK, j0:j0 + BLOCK] = weight[j0:j0 + BLOCK, i0:i0 + BLOCK].T


def _block_codegen(double_and_clip):
    """The LLVM code of one 8 x 8 block: ``out[i0 + r, j0 + c] = f(weight[j0 + c, i0 + r])`` for ``r, c < 8`` (no
    bounds checks), ``f(w) = clip(2 w, -C, C)`` with ``double_and_clip`` (``args[4]`` is ``C``), else ``f(w) = w``."""
    def codegen(context, builder, signature, args):
        dtype = signature.args[0].dtype
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.args[1])(context, builder, args[1])
        row0, col0 = args[2], args[3]
        vec = ir.VectorType(context.get_value_type(dtype), BLOCK)
        align = context.get_abi_sizeof(context.get_value_type(dtype))
        if double_and_clip:
            hi = ir.Constant(vec, ir.Undefined)
            for lane in range(BLOCK):
                hi = builder.insert_element(hi, args[4], ir.Constant(ir.IntType(32), lane))
            lo = builder.fneg(hi)

        def pointer(ary, r, c):  # the address of ary[r, c], as a pointer to a vector of 8
            item = cgutils.get_item_pointer2(context, builder, ary.data, cgutils.unpack_tuple(builder, ary.shape, 2),
                                             cgutils.unpack_tuple(builder, ary.strides, 2), "C", [r, c])
            return builder.bitcast(item, vec.as_pointer())

        rows = []
        for r in range(BLOCK):
            r_index = builder.add(row0, ir.Constant(row0.type, r))
            v = builder.load(pointer(src, r_index, col0), align=align)
            if double_and_clip:
                v = builder.fadd(v, v)
                v = builder.select(builder.fcmp_ordered("<", v, lo), lo, v)  # max(2w, -C), then min(., C)
                v = builder.select(builder.fcmp_ordered(">", v, hi), hi, v)
            rows.append(v)
        for stage in _STAGES:
            rows = [builder.shuffle_vector(rows[a], rows[b], ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), mask))
                    for a, b, mask in stage]
        for r in range(BLOCK):
            c_index = builder.add(col0, ir.Constant(col0.type, r))
            builder.store(rows[r], pointer(dst, c_index, row0), align=align)
        return context.get_dummy_value()

    return codegen


def _matrices(weight, out):
    """Whether ``weight`` and ``out`` are C-contiguous 2-D arrays of one float dtype (what the blocks read)."""
    return (isinstance(weight, types.Array) and isinstance(out, types.Array) and weight.ndim == out.ndim == 2
            and weight.layout == out.layout == "C" and weight.dtype == out.dtype
            and isinstance(weight.dtype, types.Float))


@intrinsic
def _block_8x8_llvm(typingctx, weight, out, j0, i0, clip):
    """``out[i0 + r, j0 + c] = clip(2 weight[j0 + c, i0 + r], -clip, clip)`` for ``r, c < 8`` (no bounds checks)."""
    if not (_matrices(weight, out) and weight.dtype == clip):
        return None
    return types.void(weight, out, j0, i0, clip), _block_codegen(True)


@intrinsic
def _plain_block_8x8_llvm(typingctx, weight, out, j0, i0):
    """``out[i0 + r, j0 + c] = weight[j0 + c, i0 + r]`` for ``r, c < 8`` (no bounds checks)."""
    if not _matrices(weight, out):
        return None
    return types.void(weight, out, j0, i0), _block_codegen(False)


_block_8x8 = _block_8x8_numpy if numba.config.DISABLE_JIT else _block_8x8_llvm
_plain_block_8x8 = _plain_block_8x8_numpy if numba.config.DISABLE_JIT else _plain_block_8x8_llvm


@numba.njit(inline="always")
def _entry(v, clip, double_and_clip):
    return min(max(v + v, -clip), clip) if double_and_clip else v


@numba.njit(parallel=True, cache=True)
def _banded_transpose(weight, clip, double_and_clip, out):
    # out[i, j] = f(weight[j, i]) (f: _entry) by 8 x 8 blocks in 16-row bands of weight (module docstring), the
    # edges (N_in mod 8 columns, N_out mod 16 rows) by plain loops; double_and_clip is the same for every block, so
    # the branch on it is predicted (and LLVM may hoist it out of the loops).
    n_out, n_in = weight.shape
    n_bands = n_out // BAND
    i_full = n_in // BLOCK * BLOCK
    for band in prange(n_bands):
        j0 = band * BAND
        for i0 in range(0, i_full, BLOCK):
            for jb in range(j0, j0 + BAND, BLOCK):
                if double_and_clip:
                    _block_8x8(weight, out, jb, i0, clip)
                else:
                    _plain_block_8x8(weight, out, jb, i0)
        for i in range(i_full, n_in):
            for j in range(j0, j0 + BAND):
                out[i, j] = _entry(weight[j, i], clip, double_and_clip)
    for i in range(n_in):  # the last N_out mod 16 columns of out
        for j in range(n_bands * BAND, n_out):
            out[i, j] = _entry(weight[j, i], clip, double_and_clip)


def clipped_double_transpose(weight, clip, out):
    """``out[i, j] = clip(2 weight[j, i], -clip, clip)``.

    Parameters
    ----------
    weight : C-contiguous float ndarray (N_out, N_in)
    clip : float of ``weight``'s dtype
        ``C > 0``.
    out : C-contiguous ndarray (N_in, L), ``weight``'s dtype, ``L >= N_out``
        Its first N_out columns written (rows padded to spread them over the cache sets:
        :func:`sbnnumba.kernels.workspace.spread_row_length`).
    """
    _banded_transpose(weight, clip, True, out)


def blocked_transpose(weight, out):
    """``out[i, j] = weight[j, i]``, every value's bits as they are (NaN and infinities included).

    NumPy's transposing copy (``np.ascontiguousarray(weight.T)``) slows down severalfold when the row length is a
    power of two (its strided reads map to a few cache sets); the register blocks read whole rows of ``weight`` (the
    measurements: ``docs/experiments/2026-12-06-session18-transpose-quads.md``).

    Parameters
    ----------
    weight : C-contiguous float ndarray (N_out, N_in)
    out : C-contiguous ndarray (N_in, L), ``weight``'s dtype, ``L >= N_out``
        Its first N_out columns written.
    """
    _banded_transpose(weight, weight.dtype.type(0), False, out)
