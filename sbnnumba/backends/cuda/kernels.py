r"""numba.cuda kernels: PSA flip propagation (dense, conv), XNOR-popcount GEMM / conv, element-wise pieces.

Every kernel has the inputs and outputs of its CPU counterpart (:mod:`sbnnumba.kernels.cpu`,
:mod:`sbnnumba.kernels.conv_cpu`, :mod:`sbnnumba.kernels.bitpack`) and is checked against the NumPy
references (:mod:`sbnnumba.kernels.reference`, :mod:`sbnnumba.kernels.conv_reference`, the
``*_reference`` functions of :mod:`sbnnumba.kernels.bitpack`), on a real GPU or in numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``). Host-side routing (uploads, launch configurations, the
device weight cache) lives in :mod:`sbnnumba.backends.cuda.ops`; call the kernels through it.

Nothing is compiled and CUDA is not initialized at import time: ``@cuda.jit`` compiles lazily at
the first launch, and the tiled kernels are built by ``*_kernel(...)`` factories (cached per tile
configuration and dtype, since shared-memory shapes and dtypes are compile-time constants).
No kernel draws random numbers: uniforms are drawn on the host and passed in.

Kernels
-------
PSA flip propagation, dense (spec psa.md, sections 2.8-2.9): the tiled ratio and generic kernels are in
:mod:`sbnnumba.backends.cuda.dense_flip`; the per-unit preparation kernels are here.

PSA flip propagation, conv (spec psa.md, section 2.10): the logistic ratio form is
:func:`sbnnumba.backends.cuda.conv_flip.flip_conv_ratio_kernel` (tiled, weights in shared memory);
the generic form, direct: one thread per input unit ``(b, r, y, x)`` gathers over the output
channels ``c`` and the taps ``(dy, dx)`` whose output position ``((y + ph - dy) / sh, (x + pw - dx) / sw)``
is an integer inside the output map (so padding never flips and stride > 1 needs no dense grid).

* :func:`flip_conv_generic`: ``Delta = F(u) - F(v)``, ``u = v + 2 x_out W x_in``, evaluated as
  ``F(-v) - F(-u)`` when ``u + v > 0`` (no cancellation), ``F(v)``, ``F(-v)`` precomputed per output
  unit (:func:`generic_units`).

Bit-packed kernels (layout of :mod:`sbnnumba.bitpack`: bit set = -1, zero padding bits):

* :func:`xnor_gemm_kernel`: ``out[i,j] = K - 2 sum_w popc(A[i,w] ^ B[j,w])`` (int32), tiled: a block
  computes ``(tile_m, tile_n)`` outputs, each thread ``rows_per_thread`` rows of one column,
  looping over the words in tiles of ``tile_w`` staged in shared memory.
* :func:`xnor_gemm_threshold_kernel`: the same dot products, then bit ``j`` of row ``i`` is
  ``(dot < t[j]) XOR flip[j]``, OR-reduced in shared memory into one packed uint64 word per row and
  block (a block spans exactly 64 columns): the output is the next layer's packed input.
* :func:`xnor_conv2d`: direct binary convolution, one thread per output; taps falling into the zero
  padding are skipped, i.e. ``out = n_valid_taps * C_in - 2 popc(...)``, the exact zero-padded
  result (equal to :func:`sbnnumba.bitpack.conv2d`'s "+1 padding minus correction").
* :func:`sign_pack_channels`: packed ``sign(dot - t) * flip`` of conv outputs, channels last.

Element-wise (flat arrays): :func:`sample_states` (``x = +1 if u < F(a) else -1``),
:func:`st_preactivation_grad` (``2 p(a) g``), :func:`psa_preactivation_grad` (``-x p(a) d``), the PSA
preparation kernels :func:`ratio_units`, :func:`reach_rows`, :func:`generic_units`, :func:`exp2`,
:func:`exp2_transpose`.

Kernels avoid the builtins ``min``/``max`` (numba 0.68's CUDA target compiles their generic
``*args`` overload as a device function and fails); conditional expressions are used instead.

Popcounts use ``cuda.popc`` on ``uint64`` words (``popc.b64`` on the device; ``bin(x).count("1")``
in the simulator, which is why words must be unsigned).
"""
import functools
import math

import numba
import numpy as np

# numba-cuda 0.30 registers an overload for np.row_stack, which NumPy 2.5 removed, when its typing
# registries load at the first kernel compilation: every compilation then fails with AttributeError
# (seen with numba-cuda 0.30.4 and NumPy 2.5.2). NumPy documented the alias as identical to vstack;
# restore it before numba.cuda compiles anything.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402

from ...kernels.scalar import LOGISTIC, cdf, cdf_lower, pdf

# Default tile configurations (threads per block = product of the thread dimensions).
GEMM_TILE = dict(tile_n=32, tile_m=32, rows_per_thread=4, tile_w=8)  # 32 x 8 = 256 threads
GEMM_THRESHOLD_TILE = dict(tile_m=16, rows_per_thread=4, tile_w=8)  # 64 x 4 = 256 threads
THREADS_1D = 128  # element-wise and direct-form kernels


def _numba_dtype(dtype_name):
    return numba.from_dtype(np.dtype(dtype_name))


# ---------------------------------------------------------------------------------------------------
# PSA flip propagation, conv, generic form: direct (one thread per input unit)
# ---------------------------------------------------------------------------------------------------

@cuda.jit(device=True, inline=True)
def _conv_generic_unit(idx, code, x_in, v, s, d, f_lo, f_hi, weight, sh, sw, ph, pw):
    """``(b, r, y, x, d_in)`` of input unit ``idx`` (flat index into ``x_in``), generic form."""
    n_batch, c_in, height, width = x_in.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = v.shape[2], v.shape[3]
    x = idx % width
    rest = idx // width
    y = rest % height
    rest = rest // height
    r = rest % c_in
    b = rest // c_in
    xi = x_in[b, r, y, x]
    acc = xi - xi
    for dy in range(kh):
        ty = y + ph - dy
        if ty < 0 or ty % sh != 0 or ty // sh >= ho:
            continue
        oy = ty // sh
        for dx in range(kw):
            tx = x + pw - dx
            if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                continue
            ox = tx // sw
            for c in range(c_out):
                dq = d[b, c, oy, ox]
                if dq == 0:  # no contribution; restricts the kernel to the saturated units of a ratio call
                    continue
                vq = v[b, c, oy, ox]
                u = vq + 2 * s[b, c, oy, ox] * weight[c, r, dy, dx] * xi
                if u + vq > 0:
                    delta = f_hi[b, c, oy, ox] - cdf_lower(code, -u)
                else:
                    delta = cdf_lower(code, u) - f_lo[b, c, oy, ox]
                acc += delta * dq
    return b, r, y, x, acc


@cuda.jit
def flip_conv_generic(code, x_in, v, s, d, f_lo, f_hi, weight, sh, sw, ph, pw, d_in):
    """Generic form. ``v = -x_out a``, ``s = x_out``, ``d = d_out``, ``f_lo = F(v)``, ``f_hi = F(-v)``
    (B, C_out, H_out, W_out); ``weight`` (C_out, C_in, kh, kw). 1-D launch over B * C_in * H * W."""
    idx = cuda.grid(1)
    if idx < x_in.size:
        b, r, y, x, acc = _conv_generic_unit(idx, code, x_in, v, s, d, f_lo, f_hi, weight, sh, sw, ph, pw)
        d_in[b, r, y, x] = acc


@cuda.jit
def flip_conv_generic_gated(code, x_in, v, s, d, f_lo, f_hi, weight, sh, sw, ph, pw, gate, d_in):
    """:func:`flip_conv_generic` as the exact pass of a ratio-form call: *adds* to ``d_in``, and does nothing
    when ``gate[0] == 0`` (the device count of active saturated units: no download to decide)."""
    idx = cuda.grid(1)
    if gate[0] != 0 and idx < x_in.size:
        b, r, y, x, acc = _conv_generic_unit(idx, code, x_in, v, s, d, f_lo, f_hi, weight, sh, sw, ph, pw)
        d_in[b, r, y, x] += acc


# ---------------------------------------------------------------------------------------------------
# Element-wise and small reduction kernels (1-D launches over flat arrays)
# ---------------------------------------------------------------------------------------------------

@cuda.jit(fastmath=True)
def ratio_units(a, x_out, d_out, limit, reach, inner, flat_tail, e, g, gs, d_sat, n_sat):
    """``e = exp(-a)``, ``g = x_out d_out``, ``gs = g sigma(a)``, ``d_sat = 0`` (flat arrays of one size),
    except for the saturated units ``|a| > limit``: ``e = 1``, ``g = gs = 0`` (no ratio term), and, for
    the active ones among them (``|a| - reach[(i // inner) % len(reach)] <= flat_tail``, see
    :func:`sbnnumba.kernels.cpu.active_saturated`), ``d_sat = d_out``, counted in ``n_sat[0]`` (int32).
    ``reach`` holds ``2 max |W|`` per output unit (dense, ``inner = 1``) or per output channel (conv,
    ``inner = H_out W_out``)."""
    i = cuda.grid(1)
    if i < a.shape[0]:
        ai = a[i]
        di = d_out[i]
        if ai > limit or ai < -limit:
            e[i] = 1
            g[i] = 0
            gs[i] = 0
            if abs(ai) - reach[(i // inner) % reach.shape[0]] <= flat_tail:
                d_sat[i] = di
                cuda.atomic.add(n_sat, 0, 1)
            else:  # inert: its flip terms are below half a rounding unit
                d_sat[i] = 0
        else:
            gi = x_out[i] * di
            e[i] = math.exp(-ai)
            g[i] = gi
            gs[i] = gi * cdf(LOGISTIC, ai)
            d_sat[i] = 0


@cuda.jit
def reach_rows(w, out):
    """``out[r] = 2 max_k |w[r, k]|``: ``w`` (R, K) -> ``out`` (R,); 1-D launch over R."""
    r = cuda.grid(1)
    if r < w.shape[0]:
        m = abs(w[r, 0])
        for c in range(1, w.shape[1]):
            v = abs(w[r, c])
            if v > m:
                m = v
        out[r] = 2 * m


@cuda.jit
def generic_units(code, a, x_out, v, f_lo, f_hi):
    """``v = -x_out a``, ``f_lo = F(v)``, ``f_hi = F(-v)`` (flat)."""
    i = cuda.grid(1)
    if i < a.shape[0]:
        vi = -x_out[i] * a[i]
        v[i] = vi
        f_lo[i] = cdf_lower(code, vi)
        f_hi[i] = cdf_lower(code, -vi)


@cuda.jit(fastmath=True)
def exp2(w, clip, k):
    """``k = exp(2 w)`` with ``2 w`` clipped to ``[-clip, clip]`` (flat)."""
    i = cuda.grid(1)
    if i < w.shape[0]:
        t = w[i] + w[i]
        k[i] = math.exp(clip if t > clip else (-clip if t < -clip else t))


@cuda.jit(fastmath=True)
def exp2_transpose(w, clip, k):
    """``k[i, j] = exp(2 w[j, i])``, ``2 w`` clipped to ``[-clip, clip]``: ``w`` (N_out, N_in) -> ``k``
    (N_in, N_out); 2-D launch over k."""
    j, i = cuda.grid(2)
    if i < k.shape[0] and j < k.shape[1]:
        t = w[j, i] + w[j, i]
        k[i, j] = math.exp(clip if t > clip else (-clip if t < -clip else t))


@cuda.jit
def zero_counter(n):
    """``n[0] = 0``; launch with one thread."""
    if cuda.grid(1) == 0:
        n[0] = 0


@cuda.jit
def sum_axis1(x, out):
    """``out[b, q] = sum_c x[b, c, q]``: ``x`` (B, C, Q) -> ``out`` (B, Q); 1-D launch over B * Q."""
    idx = cuda.grid(1)
    n_batch, n_c, n_q = x.shape
    if idx < n_batch * n_q:
        b = idx // n_q
        q = idx - b * n_q
        acc = x[b, 0, q]
        for c in range(1, n_c):
            acc += x[b, c, q]
        out[b, q] = acc


@cuda.jit
def sample_states(code, a, u, x):
    """``x = +1 if u < F(a) else -1`` (flat). ``F`` comes from :func:`sbnnumba.kernels.scalar.cdf` (partly
    float64), so a float32 sample can differ from the host's only when ``u`` lies within rounding
    error of ``F(a)``."""
    i = cuda.grid(1)
    if i < a.shape[0]:
        f = cdf(code, a[i])
        x[i] = 1 if u[i] < f else -1


@cuda.jit
def st_preactivation_grad(code, a, g, out):
    """Deep-ST pre-activation gradient ``out = 2 p(a) g`` (flat)."""
    i = cuda.grid(1)
    if i < a.shape[0]:
        out[i] = 2 * pdf(code, a[i]) * g[i]


@cuda.jit
def psa_preactivation_grad(code, x, a, d, out):
    """PSA pre-activation gradient ``out = -x p(a) d`` (flat)."""
    i = cuda.grid(1)
    if i < a.shape[0]:
        out[i] = -x[i] * pdf(code, a[i]) * d[i]


# ---------------------------------------------------------------------------------------------------
# Bit-packed XNOR-popcount kernels
# ---------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def xnor_gemm_kernel(tile_n=32, tile_m=32, rows_per_thread=4, tile_w=8):
    """``kernel(a, b, k, out)``: ``out[i, j] = k - 2 sum_w popc(a[i, w] ^ b[j, w])``.

    ``a`` (M, n_words), ``b`` (N, n_words) uint64; ``k`` int64 (true K); ``out`` (M, N) int32.
    Launch with ``grid = (ceil(N / tile_n), ceil(M / tile_m))``,
    ``block = (tile_n, tile_m // rows_per_thread)``.
    """
    if tile_m % rows_per_thread:
        raise ValueError(f"tile_m: expected a multiple of rows_per_thread={rows_per_thread}, got {tile_m}")
    tn, tm, rm, tw = tile_n, tile_m, rows_per_thread, tile_w
    ty_n = tm // rm
    tw_pad = tw + 1  # shared-memory shapes must be compile-time constants
    n_threads = tn * ty_n

    @cuda.jit
    def kernel(a, b, k, out):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n0 = cuda.blockIdx.x * tn
        m0 = cuda.blockIdx.y * tm
        n_rows = a.shape[0]
        n_cols = b.shape[0]
        n_w = a.shape[1]
        tid = ty * tn + tx
        sh_a = cuda.shared.array((tm, tw), numba.uint64)
        sh_b = cuda.shared.array((tn, tw_pad), numba.uint64)
        acc = cuda.local.array(rm, numba.int32)
        for r in range(rm):
            acc[r] = 0
        for w0 in range(0, n_w, tw):
            for t in range(tid, tm * tw, n_threads):
                rr = t // tw
                ww = t - rr * tw
                if m0 + rr < n_rows and w0 + ww < n_w:
                    sh_a[rr, ww] = a[m0 + rr, w0 + ww]
                else:
                    sh_a[rr, ww] = 0
            for t in range(tid, tn * tw, n_threads):
                cc = t // tw
                ww = t - cc * tw
                if n0 + cc < n_cols and w0 + ww < n_w:
                    sh_b[cc, ww] = b[n0 + cc, w0 + ww]
                else:
                    sh_b[cc, ww] = 0
            cuda.syncthreads()
            for ww in range(tw if w0 + tw <= n_w else n_w - w0):
                bw = sh_b[tx, ww]
                for r in range(rm):
                    acc[r] += np.int32(cuda.popc(sh_a[ty + ty_n * r, ww] ^ bw))
            cuda.syncthreads()
        col = n0 + tx
        for r in range(rm):
            row = m0 + ty + ty_n * r
            if row < n_rows and col < n_cols:
                out[row, col] = k - 2 * acc[r]

    return kernel


@functools.lru_cache(maxsize=None)
def xnor_gemm_threshold_kernel(tile_m=16, rows_per_thread=4, tile_w=8):
    """``kernel(a, b, k, t, flip, out)``: packed ``(dot < t[j]) XOR flip[j]`` (bit set = -1).

    ``t`` (N,) int64 integer thresholds (``y = +1`` iff ``dot >= t``), ``flip`` (N,) uint8, ``out``
    (M, ceil(N/64)) uint64 (every word written; padding bits 0). A block spans 64 columns = one
    output word: ``grid = (ceil(N / 64), ceil(M / tile_m))``, ``block = (64, tile_m // rows_per_thread)``.
    """
    if tile_m % rows_per_thread:
        raise ValueError(f"tile_m: expected a multiple of rows_per_thread={rows_per_thread}, got {tile_m}")
    tn, tm, rm, tw = 64, tile_m, rows_per_thread, tile_w
    ty_n = tm // rm
    tw_pad = tw + 1  # shared-memory shapes must be compile-time constants
    n_threads = tn * ty_n

    @cuda.jit
    def kernel(a, b, k, t, flip, out):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n0 = cuda.blockIdx.x * tn
        m0 = cuda.blockIdx.y * tm
        n_rows = a.shape[0]
        n_cols = b.shape[0]
        n_w = a.shape[1]
        tid = ty * tn + tx
        sh_a = cuda.shared.array((tm, tw), numba.uint64)
        sh_b = cuda.shared.array((tn, tw_pad), numba.uint64)
        sh_bits = cuda.shared.array((tm, tn), numba.uint64)
        acc = cuda.local.array(rm, numba.int32)
        for r in range(rm):
            acc[r] = 0
        for w0 in range(0, n_w, tw):
            for s in range(tid, tm * tw, n_threads):
                rr = s // tw
                ww = s - rr * tw
                if m0 + rr < n_rows and w0 + ww < n_w:
                    sh_a[rr, ww] = a[m0 + rr, w0 + ww]
                else:
                    sh_a[rr, ww] = 0
            for s in range(tid, tn * tw, n_threads):
                cc = s // tw
                ww = s - cc * tw
                if n0 + cc < n_cols and w0 + ww < n_w:
                    sh_b[cc, ww] = b[n0 + cc, w0 + ww]
                else:
                    sh_b[cc, ww] = 0
            cuda.syncthreads()
            for ww in range(tw if w0 + tw <= n_w else n_w - w0):
                bw = sh_b[tx, ww]
                for r in range(rm):
                    acc[r] += np.int32(cuda.popc(sh_a[ty + ty_n * r, ww] ^ bw))
            cuda.syncthreads()
        col = n0 + tx
        for r in range(rm):
            bit = np.uint64(0)
            if col < n_cols:
                negative = k - 2 * acc[r] < t[col]
                if negative != (flip[col] != 0):
                    bit = np.uint64(1) << np.uint64(tx)
            sh_bits[ty + ty_n * r, tx] = bit
        cuda.syncthreads()
        half = tn // 2
        while half > 0:  # OR-reduce the 64 bits of each row into sh_bits[row, 0]
            if tx < half:
                for r in range(rm):
                    row = ty + ty_n * r
                    sh_bits[row, tx] = sh_bits[row, tx] | sh_bits[row, tx + half]
            cuda.syncthreads()
            half //= 2
        if tx == 0:
            for r in range(rm):
                row = m0 + ty + ty_n * r
                if row < n_rows:
                    out[row, cuda.blockIdx.x] = sh_bits[ty + ty_n * r, 0]

    return kernel


@cuda.jit
def xnor_conv2d(x, w, c_in, sh, sw, ph, pw, out):
    """Zero-padded binary convolution: ``x`` (B, H, W, nw), ``w`` (C_out, kh, kw, nw) uint64,
    ``out`` (B, C_out, H_out, W_out) int32; taps in the padding are skipped. 1-D launch over ``out``."""
    idx = cuda.grid(1)
    n_batch, c_out, ho, wo = out.shape
    if idx >= n_batch * c_out * ho * wo:
        return
    height, width, n_w = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    ox = idx % wo
    rest = idx // wo
    oy = rest % ho
    rest = rest // ho
    co = rest % c_out
    b = rest // c_out
    pop = np.int32(0)
    n_valid = np.int32(0)
    for dy in range(kh):
        iy = oy * sh - ph + dy
        if iy < 0 or iy >= height:
            continue
        for dx in range(kw):
            ix = ox * sw - pw + dx
            if ix < 0 or ix >= width:
                continue
            n_valid += 1
            for ww in range(n_w):
                pop += np.int32(cuda.popc(x[b, iy, ix, ww] ^ w[co, dy, dx, ww]))
    out[b, co, oy, ox] = n_valid * c_in - 2 * pop


@cuda.jit
def sign_pack_channels(dots, t, flip, out):
    """Packed signs along channels: bit ``c % 64`` of ``out[b, oy, ox, c // 64]`` is
    ``(dots[b, c, oy, ox] < t[c]) XOR flip[c]``; ``dots`` (B, C, H, W) int32, ``out`` (B, H, W, ceil(C/64))
    uint64. 1-D launch over ``out``."""
    idx = cuda.grid(1)
    n_batch, n_c, ho, wo = dots.shape
    n_w = out.shape[3]
    if idx >= n_batch * ho * wo * n_w:
        return
    word = idx % n_w
    rest = idx // n_w
    ox = rest % wo
    rest = rest // wo
    oy = rest % ho
    b = rest // ho
    bits = np.uint64(0)
    for lane in range(64):
        c = word * 64 + lane
        if c < n_c:
            negative = dots[b, c, oy, ox] < t[c]
            if negative != (flip[c] != 0):
                bits |= np.uint64(1) << np.uint64(lane)
    out[b, oy, ox, word] = bits
