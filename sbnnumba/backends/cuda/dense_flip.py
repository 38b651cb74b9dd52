r"""PSA flip propagation through a dense layer on the GPU: the tiled logistic ratio-form and generic kernels.

Spec psa.md, sections 2.8-2.9: ``d_in[b,i] = sum_j Delta[b,i,j] d_out[b,j]``,
``Delta[b,i,j] = F(-x_out[b,j](a[b,j] - 2 W[j,i] x_in[b,i])) - F(-x_out[b,j] a[b,j])``; the CPU kernels
are :func:`sbnnumba.kernels.cpu.flip_propagate_dense`, the NumPy reference
:func:`sbnnumba.kernels.reference.flip_propagate_dense`. Host routing (per-unit preparation with
:func:`sbnnumba.backends.cuda.kernels.ratio_units`, the exp-kernel, the exact pass over saturated
units) is :func:`sbnnumba.backends.cuda.ops.flip_propagate_dense`.

* :func:`dense_flip_ratio_kernel` (logistic): with ``g = x_out d_out``, ``K = exp(2 W^T)`` and
  ``A[b] = sum_j g sigma(a)``, ``d_in = A - sum_j g / (1 + e^{-a} K)`` for ``x_in = +1`` and
  ``A - sum_j g + sum_j g / (1 + e^{+a} K)`` for ``x_in = -1`` (the CPU's form: one exp-kernel for
  both signs). Two output units share one reciprocal (``g/D + g'/D' = (g D' + g' D) / (D D')``,
  ``D`` clamped to :data:`RATIO_CLAMP`); the accuracy bound is in the factory's docstring.
  As on the CPU (:func:`sbnnumba.kernels.cpu.ratio_limits`), ``2W`` is clipped to ``[-C, C]`` in the
  exp-kernel and the saturated units (``|a| > A``) come with ``g = 0``; the host routing sums them
  exactly with the generic kernel, restricted to them by a ``d_out`` that is zero elsewhere.
* :func:`dense_flip_generic_kernel` (every noise family): one ``cdf_lower`` per connection, with
  ``F(v)``, ``F(-v)`` (``v = -x_out a``) computed once per output unit while staging; output units
  with ``d_out = 0`` are skipped.

Both are tiled alike (:data:`DENSE_TILE`): a block computes ``(tile_b, tile_i)`` outputs with threads
``(tile_i / inputs_per_thread, tile_b / rows_per_thread)``, each thread a register tile of
``rows_per_thread x inputs_per_thread`` outputs (strided, so that a warp's shared-memory reads are
broadcasts or distinct banks), looping over ``j`` in tiles of ``tile_j`` staged in shared memory: the
per-unit values of ``tile_b`` rows and the weight (or exp-kernel) tile ``(tile_i, tile_j)`` (padded by
one column against bank conflicts). Partial tiles are padded with neutral values (``g = 0`` resp.
``d = 0``) and not stored. Nothing is compiled at import time: the factories build (and cache) one
kernel per dtype and tile configuration (shared-memory shapes are compile-time constants).
"""
import functools

import numba
from numba import cuda  # a module global: numba's CUDA simulator swaps it inside kernels

from ...kernels.ratio_pair import RATIO_CLAMP
from ...kernels.scalar import cdf_lower
from .kernels import _numba_dtype  # (importing .kernels also restores np.row_stack before any compilation)

#: Default tiles: 64 inputs x 32 batch rows per block, 16 x 8 = 128 threads with 4 x 4 outputs each,
#: output units staged 16 at a time.
DENSE_TILE = dict(tile_i=64, tile_b=32, inputs_per_thread=4, rows_per_thread=4, tile_j=16)

# The clamp of the ratio form's denominators 1 + c K (c = e^{-+a}), two of which share one reciprocal: the CPU
# kernels' (sbnnumba.kernels.ratio_pair.RATIO_CLAMP, where the bound is stated), one definition for every device.


def _dense_tiles(tile_i, tile_b, inputs_per_thread, rows_per_thread, tile_j):
    """Threads per block ``(tile_i / inputs_per_thread, tile_b / rows_per_thread)`` of a dense flip kernel."""
    if tile_i % inputs_per_thread:
        raise ValueError(f"tile_i: expected a multiple of inputs_per_thread={inputs_per_thread}, got {tile_i}")
    if tile_b % rows_per_thread:
        raise ValueError(f"tile_b: expected a multiple of rows_per_thread={rows_per_thread}, got {tile_b}")
    if tile_j < 1:
        raise ValueError(f"tile_j: expected a positive integer, got {tile_j}")
    return tile_i // inputs_per_thread, tile_b // rows_per_thread


@functools.lru_cache(maxsize=None)
def dense_flip_ratio_kernel(dtype_name="float32", tile_i=64, tile_b=32, inputs_per_thread=4, rows_per_thread=4,
                            tile_j=16):
    r"""Logistic ratio-form dense flip kernel ``kernel(x_in, e, g, k, a_term, d_in)`` for a tile config.

    Arguments (device arrays, dtype ``dtype_name``): ``x_in`` (B, N_in) +-1; ``e = exp(-a)`` and
    ``g = x_out d_out`` (B, N_out); ``k = exp(2 W^T)`` (N_in, N_out); ``a_term`` (B,)
    ``= sum_j g sigma(a)``; output ``d_in`` (B, N_in). Launch with
    ``grid = (ceil(N_in / tile_i), ceil(B / tile_b))``,
    ``block = (tile_i / inputs_per_thread, tile_b / rows_per_thread)``.

    Form (as the CPU kernel, :func:`sbnnumba.kernels.cpu._flip_dense_ratio`), with ``s = x_in[b, i]``::

        d_in = a_term - sum_j g / (1 + e^{-a} K)             (s = +1)
        d_in = a_term - sum_j g + sum_j g / (1 + e^{+a} K)   (s = -1)

    so one exp-kernel ``K`` serves both signs; ``e^{+a} = 1 / e`` and ``sum_j g`` are formed while
    staging. Two output units ``j, j'`` share one reciprocal:
    ``g / D + g' / D' = (g D' + g' D) / (D D')`` with ``D = min(1 + c K, BIG)`` (:data:`RATIO_CLAMP`), so a
    connection costs a select (``c`` by the sign), a multiply-add, a min, 1.5 multiplies, half a
    reciprocal and half a multiply-add. Each thread computes ``inputs_per_thread x rows_per_thread``
    outputs; per output unit it reads ``inputs_per_thread`` values of ``K`` and ``3 rows_per_thread``
    per-unit values from shared memory.

    Accuracy (float32, ``fastmath``: ``x / y`` is ``div.approx.ftz.f32``, at most 2 ulp for
    ``|y|`` in ``[2^-126, 2^126]``; ``D D'`` lies in ``[1, 2^80]``): each pair is within a few ulp,
    i.e. about ``4 eps (|g| + |g'|)``; the clamp moves a term by less than ``|g| 2^-40``; ``e`` and ``K``
    come from fast ``exp`` (relative error about ``(1 + |x|) 2^-23`` for ``exp(x)``, ``|x| <= A + C``),
    which moves a term by at most a quarter of that times ``|g|``. So
    ``|d_in - exact| <= ~1e-6 sum_j |g_j|`` plus the float32 rounding of the sum, within the float32
    tolerance of the tests (rtol 1e-4, atol 2e-5 on unit-scale problems). Saturated units (``|a| > A``)
    must come with ``g = 0`` (:func:`ratio_units`), which makes their terms vanish; ``e = exp(-a)`` is
    then within ``[e^{-A}, e^{A}]`` and ``c K`` below the float range.

    Raises
    ------
    ValueError
        For tile sizes that do not divide as required.
    """
    tx_n, ty_n = _dense_tiles(tile_i, tile_b, inputs_per_thread, rows_per_thread, tile_j)
    nb = _numba_dtype(dtype_name)
    big = nb(RATIO_CLAMP[dtype_name])
    ri, rb = inputs_per_thread, rows_per_thread
    ti_n, tb_n = tile_i, tile_b
    tj = tile_j
    tj_even = tj + tj % 2  # the pair loop runs over an even number of columns; the extra one is neutral
    tj_pad = tj_even + 1  # against bank conflicts; shared-memory shapes must be compile-time constants
    n_threads = tx_n * ty_n

    @cuda.jit(fastmath=True)
    def kernel(x_in, e, g, k, a_term, d_in):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i0 = cuda.blockIdx.x * ti_n
        b0 = cuda.blockIdx.y * tb_n
        n_batch = x_in.shape[0]
        n_in = x_in.shape[1]
        n_out = e.shape[1]
        tid = ty * tx_n + tx
        sh_en = cuda.shared.array((tb_n, tj_even), nb)  # e^{-a}
        sh_ep = cuda.shared.array((tb_n, tj_even), nb)  # e^{+a}
        sh_g = cuda.shared.array((tb_n, tj_even), nb)
        sh_k = cuda.shared.array((ti_n, tj_pad), nb)
        acc = cuda.local.array((rb, ri), nb)
        positive = cuda.local.array((rb, ri), numba.boolean)
        g_sum = cuda.local.array(rb, nb)
        zero = nb(0)
        one = nb(1)
        for r in range(rb):
            b = b0 + ty + ty_n * r
            g_sum[r] = zero
            for q in range(ri):
                i = i0 + tx + tx_n * q
                acc[r, q] = zero
                positive[r, q] = x_in[b, i] > zero if (b < n_batch and i < n_in) else True
        for j0 in range(0, n_out, tj):
            for t in range(tid, tb_n * tj_even, n_threads):  # per-unit values, coalesced along j
                rr = t // tj_even
                jj = t - rr * tj_even
                b = b0 + rr
                j = j0 + jj
                if b < n_batch and j < n_out and jj < tj:
                    ev = e[b, j]
                    sh_en[rr, jj] = ev
                    sh_ep[rr, jj] = one / ev
                    sh_g[rr, jj] = g[b, j]
                else:  # g = 0: no contribution
                    sh_en[rr, jj] = one
                    sh_ep[rr, jj] = one
                    sh_g[rr, jj] = zero
            for t in range(tid, ti_n * tj_even, n_threads):  # exp-kernel tile, coalesced along j
                ii = t // tj_even
                jj = t - ii * tj_even
                if i0 + ii < n_in and j0 + jj < n_out and jj < tj:
                    sh_k[ii, jj] = k[i0 + ii, j0 + jj]
                else:
                    sh_k[ii, jj] = one
            cuda.syncthreads()
            for jj in range(0, tj_even, 2):
                for r in range(rb):
                    row = ty + ty_n * r
                    en0 = sh_en[row, jj]
                    en1 = sh_en[row, jj + 1]
                    ep0 = sh_ep[row, jj]
                    ep1 = sh_ep[row, jj + 1]
                    g0 = sh_g[row, jj]
                    g1 = sh_g[row, jj + 1]
                    g_sum[r] += g0 + g1
                    for q in range(ri):
                        ii = tx + tx_n * q
                        # Selects, not branches: the sign differs across a warp.
                        c0 = en0 if positive[r, q] else ep0
                        c1 = en1 if positive[r, q] else ep1
                        den0 = c0 * sh_k[ii, jj] + one
                        den1 = c1 * sh_k[ii, jj + 1] + one
                        den0 = den0 if den0 < big else big
                        den1 = den1 if den1 < big else big
                        acc[r, q] += (g0 * den1 + g1 * den0) * (one / (den0 * den1))
            cuda.syncthreads()
        for r in range(rb):
            b = b0 + ty + ty_n * r
            for q in range(ri):
                i = i0 + tx + tx_n * q
                if b < n_batch and i < n_in:
                    if positive[r, q]:
                        d_in[b, i] = a_term[b] - acc[r, q]
                    else:
                        d_in[b, i] = a_term[b] - g_sum[r] + acc[r, q]

    return kernel


@functools.lru_cache(maxsize=None)
def dense_flip_generic_kernel(dtype_name="float32", tile_i=64, tile_b=32, inputs_per_thread=4, rows_per_thread=4,
                              tile_j=16, gated=False):
    """Generic dense flip kernel ``kernel(code, x_in, a, x_out, d_out, weight, d_in)``.

    ``weight`` is (N_out, N_in) as in the layer; the other arrays as in
    :func:`sbnnumba.kernels.cpu.flip_propagate_dense`. Tiles and launch as :func:`dense_flip_ratio_kernel`
    (one configuration serves both). Per output unit ``j``, ``v = -x_out a``, ``F(v)`` and ``F(-v)`` are
    staged once per block; per connection ``u = v + 2 x_out W x_in`` and one ``F`` evaluation, in the
    cancellation-free form (``F(-v) - F(-u)`` when ``u + v > 0``). Output units with ``d_out = 0`` are
    skipped (warp-uniform), which restricts the kernel to the saturated units of a ratio-form call.

    ``gated=True`` gives ``kernel(code, x_in, a, x_out, d_out, weight, gate, d_in)``, the exact pass over
    the saturated units of a ratio-form call: it *adds* its sums to ``d_in`` and does nothing when
    ``gate[0] == 0`` (the count of active saturated units, on the device), so the host need not
    download the count to decide whether to launch it.

    Raises
    ------
    ValueError
        For tile sizes that do not divide as required.
    """
    tx_n, ty_n = _dense_tiles(tile_i, tile_b, inputs_per_thread, rows_per_thread, tile_j)
    nb = _numba_dtype(dtype_name)
    ri, rb = inputs_per_thread, rows_per_thread
    ti_n, tb_n, tj = tile_i, tile_b, tile_j
    tj_pad = tj + 1  # shared-memory shapes must be compile-time constants
    n_threads = tx_n * ty_n

    @cuda.jit(device=True, inline=True)
    def flip(code, x_in, a, x_out, d_out, weight, d_in, accumulate):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i0 = cuda.blockIdx.x * ti_n
        b0 = cuda.blockIdx.y * tb_n
        n_batch = x_in.shape[0]
        n_in = x_in.shape[1]
        n_out = a.shape[1]
        tid = ty * tx_n + tx
        sh_v = cuda.shared.array((tb_n, tj), nb)  # v = -x_out a
        sh_s = cuda.shared.array((tb_n, tj), nb)  # x_out
        sh_d = cuda.shared.array((tb_n, tj), nb)  # d_out
        sh_lo = cuda.shared.array((tb_n, tj), nb)  # F(v)
        sh_hi = cuda.shared.array((tb_n, tj), nb)  # F(-v)
        sh_w = cuda.shared.array((ti_n, tj_pad), nb)  # W^T tile
        acc = cuda.local.array((rb, ri), nb)
        two_x = cuda.local.array((rb, ri), nb)
        zero = nb(0)
        for r in range(rb):
            b = b0 + ty + ty_n * r
            for q in range(ri):
                i = i0 + tx + tx_n * q
                acc[r, q] = zero
                two_x[r, q] = nb(2) * x_in[b, i] if (b < n_batch and i < n_in) else zero
        for j0 in range(0, n_out, tj):
            for t in range(tid, tb_n * tj, n_threads):
                rr = t // tj
                jj = t - rr * tj
                b = b0 + rr
                j = j0 + jj
                if b < n_batch and j < n_out:
                    s = x_out[b, j]
                    v = -s * a[b, j]
                    sh_v[rr, jj] = v
                    sh_s[rr, jj] = s
                    sh_d[rr, jj] = d_out[b, j]
                    sh_lo[rr, jj] = cdf_lower(code, v)
                    sh_hi[rr, jj] = cdf_lower(code, -v)
                else:
                    sh_v[rr, jj] = zero
                    sh_s[rr, jj] = zero
                    sh_d[rr, jj] = zero  # d = 0: no contribution
                    sh_lo[rr, jj] = zero
                    sh_hi[rr, jj] = zero
            for t in range(tid, ti_n * tj, n_threads):  # W^T tile, coalesced along i (rows of W)
                jj = t // ti_n
                ii = t - jj * ti_n
                if i0 + ii < n_in and j0 + jj < n_out:
                    sh_w[ii, jj] = weight[j0 + jj, i0 + ii]
                else:
                    sh_w[ii, jj] = zero
            cuda.syncthreads()
            for jj in range(tj if j0 + tj <= n_out else n_out - j0):
                for r in range(rb):
                    row = ty + ty_n * r
                    dq = sh_d[row, jj]
                    if dq == zero:  # no contribution (warp-uniform: a warp shares its rows)
                        continue
                    v = sh_v[row, jj]
                    sv = sh_s[row, jj]
                    for q in range(ri):
                        u = v + sv * two_x[r, q] * sh_w[tx + tx_n * q, jj]
                        if u + v > 0:  # upper tail: F(-v) - F(-u), no cancellation
                            delta = sh_hi[row, jj] - cdf_lower(code, -u)
                        else:
                            delta = cdf_lower(code, u) - sh_lo[row, jj]
                        acc[r, q] += delta * dq
            cuda.syncthreads()
        for r in range(rb):
            b = b0 + ty + ty_n * r
            for q in range(ri):
                i = i0 + tx + tx_n * q
                if b < n_batch and i < n_in:
                    if accumulate:
                        d_in[b, i] += acc[r, q]
                    else:
                        d_in[b, i] = acc[r, q]

    if gated:
        @cuda.jit
        def kernel(code, x_in, a, x_out, d_out, weight, gate, d_in):
            if gate[0] != 0:  # the same for every thread: all return at once (no barrier is skipped)
                flip(code, x_in, a, x_out, d_out, weight, d_in, True)
    else:
        @cuda.jit
        def kernel(code, x_in, a, x_out, d_out, weight, d_in):
            flip(code, x_in, a, x_out, d_out, weight, d_in, False)
    return kernel
