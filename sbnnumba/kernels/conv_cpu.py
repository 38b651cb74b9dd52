r"""Numba CPU kernels for the PSA flip propagation through a 2-D convolution (spec psa.md, section 2.10).

.. math::

    d^{in}[b,r,i] = \sum_c \sum_{j : i \in RF(j)} \Delta[(r,i) \to (c,j)]\, d^{out}[b,c,j], \qquad
    \Delta = F(-x[c,j](a[c,j] - 2 W[c,r,off]\, x[r,i])) - F(-x[c,j]\, a[c,j]),

with ``i = stride * j + off - padding`` (per axis). Delta is never formed: each parallel task
(``prange`` over the example ``b`` and the input channel ``r``; the ratio form takes two input
channels per task so that every load of an output value serves two connections) accumulates its
whole input map in a small local buffer (L1-resident), looping over the output channels ``c`` and
the kernel taps ``(dy, dx)``; the innermost loop runs over output positions with unit stride and
vectorizes (AVX-512 on this project's CPU: ``error_model="numpy"`` removes the per-division
ZeroDivisionError branch that would otherwise keep the loop scalar).

**Layout ("phase grids").** Let ``Hp = H + 2 ph``, ``Wp = W + 2 pw`` (padded map) and
``Hq = ceil(Hp / sh)``, ``Wq = ceil(Wp / sw)``. The padded input map is split into the
``sh * sw`` stride phases ``(yp % sh, xp % sw)``, each a ``Hq x Wq`` grid stored row-major
(padded position ``(yp, xp)`` -> ``((yp % sh) sw + xp % sw) Hq Wq + (yp // sh) Wq + xp // sw``).
Output maps are stored on ``H_out`` rows of length ``Wq`` (entries ``ox >= W_out`` are zero).
Then output position ``q = oy Wq + ox`` reaches, through tap ``(dy, dx)``, the flat input index
``q + off(dy, dx)`` with ``off = ((dy % sh) sw + dx % sw) Hq Wq + (dy // sh) Wq + dx // sw``:
for every stride, each tap is one contiguous loop of length ``(H_out - 1) Wq + W_out``.
Only computed output positions contribute (the extra row entries carry ``g = d = 0``), padded
input positions are accumulated into but never read back (they never flip and receive no
``d``), and non-square maps are handled by the separate extents.

Three forms, as for dense layers (:mod:`sbnnumba.kernels.cpu`):

* **logistic ratio form** ``d_in = A - R``:
  ``A[b, i] = sum_{c, j ∋ i} g[b,c,j] sigma(a[b,c,j])`` (``g = x_out * d_out``; the all-ones
  transposed convolution, independent of ``r``) and
  ``R[b,r,i] = sum_{c, off} g[b,c,j] / (1 + e^{-a[b,c,j]} K[c,r,off])`` with ``K = exp(+2W)``
  where ``x_in[b,r,i] = +1`` and ``exp(-2W)`` elsewhere: one multiply-add and one division per
  connection. Overflow is prevented as in the dense kernel (:func:`sbnnumba.kernels.cpu.ratio_limits`):
  ``2W`` is clipped to ``[-C, C]`` (a term moves by less than ``e^{-(C-A)}``) and the saturated
  output units (``|a| > A``) are left out of the ratio sums and summed directly over their
  receptive fields with one ``exp`` per connection (:func:`_flip_conv_logistic_saturated`), except
  the inert ones whose terms cannot be told from 0 (:func:`sbnnumba.kernels.cpu.active_saturated`), so
  saturated units never make the layer pay the generic form's stable F difference.
* **bounded** (uniform and triangular noise): ``Delta`` by the branch-free closed form
  :func:`sbnnumba.kernels.scalar.bounded_cdf_diff` in the layout of the ratio form (two input
  channels per task, vectorized innermost loop). On the 64-channel layer of ``bench/psa_conv.py``
  (float32, 2 threads): 12x faster than the generic form for triangular noise, 2.0x the time of the
  logistic ratio form (uniform: 1.3x).
* **generic** (every noise family): ``Delta = F(u) - F(v)`` with ``v = -x_out a``,
  ``u = v + 2 x_out W x_in``, evaluated like :func:`sbnnumba.kernels.scalar.cdf_diff` (``F(-v) - F(-u)``
  when ``u + v > 0``, no cancellation), with ``F(v)`` and ``F(-v)`` precomputed per output unit: one
  cdf evaluation per connection (not vectorized: scalar ``exp``/``erfc`` and branches).

float32 and float64 (the dtype of ``a``); outputs are preallocated, no random numbers.
"""
import numba
import numpy as np
from numba import prange

from .cpu import EXP_ARG_LIMIT, choose_form, ratio_limits, split_saturated
from .scalar import TRIANGULAR, bounded_cdf_diff, cdf_lower


# ---------------------------------------------------------------------------------------------- kernels
@numba.njit(inline="always")
def _pair_buffers(x_in, b, r0, r1, in_index, n_grid, like):
    # One task's buffers for input channels r0, r1 of example b, in the dtype of `like`: two zeroed
    # accumulators and x_in on the phase grid (+1 at padding, never read back).
    acc0 = np.zeros(n_grid, dtype=like.dtype)
    acc1 = np.zeros(n_grid, dtype=like.dtype)
    sel0 = np.ones(n_grid, dtype=like.dtype)
    sel1 = np.ones(n_grid, dtype=like.dtype)
    for p in range(in_index.shape[0]):
        sel0[in_index[p]] = x_in[b, r0, p]
        sel1[in_index[p]] = x_in[b, r1, p]
    return acc0, acc1, sel0, sel1


@numba.njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _flip_conv_ratio(x_in, e_grid, g_grid, k_pos, k_neg, a_grid, in_index, tap_off, n_q, d_in):
    # x_in (B, C_in, H*W); e_grid, g_grid (B, C_out, H_out*Wq); k_pos, k_neg (C_out, C_in, kh*kw);
    # a_grid (B, S) the all-ones term on the phase grids; in_index (H*W,) -> phase-grid index;
    # tap_off (kh*kw,); d_in (B, C_in, H*W).
    # Each task handles two input channels r0, r1 of one example (r1 = r0 for an odd last channel),
    # so every load of g and e^{-a} serves two connections. The innermost loop is contiguous in q and
    # vectorizes (error_model="numpy": no ZeroDivisionError branch; fastmath: reciprocal + Newton).
    n_batch, c_in, n_pix = x_in.shape
    c_out = g_grid.shape[1]
    n_taps = tap_off.shape[0]
    n_grid = a_grid.shape[1]
    one = e_grid.dtype.type(1)
    n_pairs = (c_in + 1) // 2
    for t in prange(n_batch * n_pairs):
        b = t // n_pairs
        r0 = 2 * (t - b * n_pairs)
        r1 = min(r0 + 1, c_in - 1)
        acc0, acc1, sel0, sel1 = _pair_buffers(x_in, b, r0, r1, in_index, n_grid, e_grid)
        for c in range(c_out):
            g_row = g_grid[b, c]
            e_row = e_grid[b, c]
            for k in range(n_taps):
                kp0 = k_pos[c, r0, k]
                kn0 = k_neg[c, r0, k]
                kp1 = k_pos[c, r1, k]
                kn1 = k_neg[c, r1, k]
                off = tap_off[k]
                acc0_t = acc0[off:off + n_q]
                sel0_t = sel0[off:off + n_q]
                acc1_t = acc1[off:off + n_q]
                sel1_t = sel1[off:off + n_q]
                for q in range(n_q):
                    gq = g_row[q]
                    eq = e_row[q]
                    acc0_t[q] += gq / (one + eq * (kp0 if sel0_t[q] > 0 else kn0))
                    acc1_t[q] += gq / (one + eq * (kp1 if sel1_t[q] > 0 else kn1))
        for p in range(n_pix):
            i = in_index[p]
            d_in[b, r0, p] = a_grid[b, i] - acc0[i]
            d_in[b, r1, p] = a_grid[b, i] - acc1[i]


@numba.njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _flip_conv_bounded(triangular, x_in, v_grid, s_grid, d_grid, weight, in_index, tap_off, n_q, n_grid, d_in):
    # Uniform / triangular noise: Delta = F(u) - F(v) by the branch-free scalar.bounded_cdf_diff, in the
    # layout of the ratio kernel (two input channels per task, innermost loop contiguous in q, vectorized).
    # v = -x_out a, s = 2 x_out, d = d_out on the output grids (B, C_out, H_out*Wq); weight (C_out, C_in, taps).
    n_batch, c_in, n_pix = x_in.shape
    c_out = v_grid.shape[1]
    n_taps = tap_off.shape[0]
    dtype = v_grid.dtype
    one = dtype.type(1)
    n_pairs = (c_in + 1) // 2
    for t in prange(n_batch * n_pairs):
        b = t // n_pairs
        r0 = 2 * (t - b * n_pairs)
        r1 = min(r0 + 1, c_in - 1)
        acc0, acc1, sel0, sel1 = _pair_buffers(x_in, b, r0, r1, in_index, n_grid, v_grid)
        for c in range(c_out):
            v_row = v_grid[b, c]
            s_row = s_grid[b, c]
            d_row = d_grid[b, c]
            for k in range(n_taps):
                w0 = weight[c, r0, k]
                w1 = weight[c, r1, k]
                off = tap_off[k]
                acc0_t = acc0[off:off + n_q]
                sel0_t = sel0[off:off + n_q]
                acc1_t = acc1[off:off + n_q]
                sel1_t = sel1[off:off + n_q]
                for q in range(n_q):
                    v = v_row[q]
                    sq = s_row[q]
                    dq = d_row[q]
                    acc0_t[q] += bounded_cdf_diff(triangular, v + sq * w0 * sel0_t[q], v, one) * dq
                    acc1_t[q] += bounded_cdf_diff(triangular, v + sq * w1 * sel1_t[q], v, one) * dq
        for p in range(n_pix):
            i = in_index[p]
            d_in[b, r0, p] = acc0[i]
            d_in[b, r1, p] = acc1[i]


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _lower_tails(code, v, f_lo, f_hi):
    # f_lo = F(v), f_hi = F(-v), element-wise, by the same scalar routine cdf_diff uses.
    for i in prange(v.size):
        f_lo[i] = cdf_lower(code, v[i])
        f_hi[i] = cdf_lower(code, -v[i])


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _flip_conv_generic(code, x_in, v_grid, f_lo_grid, f_hi_grid, s_grid, d_grid, weight, in_index, tap_off, n_q,
                       n_grid, d_in):
    # On the output grids (B, C_out, H_out*Wq): v = -x_out * a, f_lo = F(v), f_hi = F(-v), s = 2 x_out,
    # d = d_out; weight (C_out, C_in, kh*kw). Delta = F(u) - F(v) with u = v + s w x_in, evaluated as
    # cdf_diff does (F(-v) - F(-u) when u + v > 0), with the F(v) terms precomputed per output unit:
    # one cdf evaluation per connection.
    n_batch, c_in, n_pix = x_in.shape
    c_out = v_grid.shape[1]
    n_taps = tap_off.shape[0]
    for t in prange(n_batch * c_in):
        b = t // c_in
        r = t - b * c_in
        acc = np.zeros(n_grid, dtype=np.float64)
        sel = np.ones(n_grid, dtype=np.float64)
        for p in range(n_pix):
            sel[in_index[p]] = x_in[b, r, p]
        for c in range(c_out):
            v_row = v_grid[b, c]
            lo_row = f_lo_grid[b, c]
            hi_row = f_hi_grid[b, c]
            s_row = s_grid[b, c]
            d_row = d_grid[b, c]
            for k in range(n_taps):
                w = weight[c, r, k]
                off = tap_off[k]
                for q in range(n_q):
                    dq = d_row[q]
                    if dq != 0.0:
                        v = v_row[q]
                        u = v + s_row[q] * w * sel[off + q]
                        if u + v > 0:
                            delta = hi_row[q] - cdf_lower(code, -u)
                        else:
                            delta = cdf_lower(code, u) - lo_row[q]
                        acc[off + q] += delta * dq
        for p in range(n_pix):
            d_in[b, r, p] = acc[in_index[p]]


@numba.njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _ones_transposed(t_grid, tap_off, n_q, out):
    # out[b, q + off_k] += t_grid[b, q] for every tap k: the all-ones transposed convolution.
    n_batch = t_grid.shape[0]
    for b in prange(n_batch):
        acc = out[b]
        acc[:] = 0
        row = t_grid[b]
        for k in range(tap_off.shape[0]):
            off = tap_off[k]
            for q in range(n_q):
                acc[off + q] += row[q]


# ---------------------------------------------------------------------------------------------- layout
def phase_layout(in_hw, kernel_size, stride, padding):
    """Index maps of the phase-grid layout (see the module docstring).

    Returns
    -------
    in_index : int64 (H*W,)   phase-grid index of each (unpadded) input position, row-major
    tap_off : int64 (kh*kw,)  offset of each tap, row-major over (dy, dx)
    n_q : int                 loop length per tap, ``(H_out - 1) Wq + W_out``
    n_grid : int              phase-grid size ``sh sw Hq Wq``
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


def _to_grid(t, wq):
    """(B, C, H_out, W_out) -> (B, C, H_out * Wq), zero beyond W_out in every row."""
    b, c, ho, wo = t.shape
    out = np.zeros((b, c, ho, wq), dtype=t.dtype)
    out[..., :wo] = t
    return out.reshape(b, c, ho * wq)


def _check_conv(x_in, a, x_out, weight, d_out, stride, padding):
    if x_in.ndim != 4 or a.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"flip_propagate_conv: expected 4-d x_in, a, weight; got shapes {x_in.shape}, "
                         f"{a.shape}, {weight.shape}")
    n_batch, c_in, h, w = x_in.shape
    c_out, c_in_w, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if c_in_w != c_in or a.shape != (n_batch, c_out, ho, wo):
        raise ValueError(f"flip_propagate_conv: inconsistent shapes x_in {x_in.shape}, a {a.shape}, "
                         f"weight {weight.shape} (stride {stride}, padding {padding})")
    if x_out.shape != a.shape or d_out.shape != a.shape:
        raise ValueError(f"flip_propagate_conv: x_out {x_out.shape} and d_out {d_out.shape} must match a {a.shape}")


def flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise_code, form="auto"):
    r"""PSA flip propagation through a conv layer (Numba, parallel over (batch, input channel)).

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
    form : {"auto", "ratio", "bounded", "generic"}
        "ratio" is logistic only, "bounded" uniform/triangular only; "auto" picks them for those
        noises and "generic" (any family) for the others. The ratio form sums the
        saturated units (``|a| > A``, :func:`sbnnumba.kernels.cpu.ratio_limits`) directly.

    Returns
    -------
    d_in : ndarray (B, C_in, H, W), dtype of ``a``.
    """
    stride, padding = tuple(stride), tuple(padding)
    _check_conv(x_in, a, x_out, weight, d_out, stride, padding)
    form = choose_form(form, noise_code)
    dtype = a.dtype
    n_batch, c_in, h, w = x_in.shape
    c_out, _, kh, kw = weight.shape
    in_index, tap_off, n_q, n_grid, wq, _ = phase_layout((h, w), (kh, kw), stride, padding)
    x3 = np.ascontiguousarray(x_in, dtype=dtype).reshape(n_batch, c_in, h * w)
    x_out = np.asarray(x_out, dtype=dtype)
    d_out = np.asarray(d_out, dtype=dtype)
    d_in = np.empty((n_batch, c_in, h * w), dtype=dtype)
    if form == "ratio":
        g = x_out * d_out
        g_safe, a_safe, saturated = split_saturated(a, g, weight)  # active saturated units: summed directly below
        sig = (0.5 * (1 + np.tanh(0.5 * a_safe))).astype(dtype)
        t_grid = _to_grid(np.einsum("bcyx,bcyx->byx", g_safe, sig)[:, None], wq)[:, 0]
        a_grid = np.empty((n_batch, n_grid), dtype=dtype)
        _ones_transposed(t_grid, tap_off, n_q, a_grid)
        clip = dtype.type(ratio_limits(dtype)[1])
        two_w = np.clip(2 * np.asarray(weight, dtype=dtype).reshape(c_out, c_in, kh * kw), -clip, clip)
        k_pos = np.exp(two_w)
        k_neg = np.exp(-two_w)
        _flip_conv_ratio(x3, _to_grid(np.exp(-a_safe), wq), _to_grid(g_safe, wq), k_pos, k_neg, a_grid, in_index,
                         tap_off, n_q, d_in)
        if saturated is not None:
            row_start, units = saturated  # units: (c, oy, ox) rows
            _flip_conv_logistic_saturated(x3.reshape(x_in.shape), a, g, np.ascontiguousarray(weight, dtype=dtype),
                                          row_start, units, stride[0], stride[1], padding[0], padding[1],
                                          dtype.type(EXP_ARG_LIMIT[dtype]), d_in.reshape(x_in.shape))
    elif form == "bounded":
        w3 = np.ascontiguousarray(weight, dtype=dtype).reshape(c_out, c_in, kh * kw)
        _flip_conv_bounded(noise_code == TRIANGULAR, x3, _to_grid(-x_out * a, wq), _to_grid(2 * x_out, wq),
                           _to_grid(d_out, wq), w3, in_index, tap_off, n_q, n_grid, d_in)
    else:
        w3 = np.ascontiguousarray(weight, dtype=dtype).reshape(c_out, c_in, kh * kw)
        v_grid = _to_grid(-x_out * a, wq)
        f_lo, f_hi = np.empty(v_grid.shape), np.empty(v_grid.shape)
        _lower_tails(noise_code, v_grid.ravel(), f_lo.ravel(), f_hi.ravel())
        _flip_conv_generic(noise_code, x3, v_grid, f_lo, f_hi, _to_grid(2 * x_out, wq), _to_grid(d_out, wq), w3,
                           in_index, tap_off, n_q, n_grid, d_in)
    return d_in.reshape(x_in.shape)


@numba.njit(parallel=True, fastmath=True, cache=True)
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


# ---------------------------------------------------------------------------------------------- col2im
@numba.njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _col2im_t(cols, kh, kw, sh, sw, ph, pw, ho, wo, out):
    n_batch, c_in, h, w = out.shape
    n_pos = ho * wo
    for t in prange(n_batch * c_in):
        b = t // c_in
        c = t - b * c_in
        o = out[b, c]
        o[:, :] = 0
        for dy in range(kh):
            for dx in range(kw):
                row = cols[(c * kh + dy) * kw + dx]
                lo = max(0, (pw - dx + sw - 1) // sw)
                hi = min(wo, (w - 1 + pw - dx) // sw + 1)
                for oy in range(ho):
                    y = sh * oy + dy - ph
                    if 0 <= y < h:
                        base = b * n_pos + oy * wo
                        for ox in range(lo, hi):
                            o[y, sw * ox + dx - pw] += row[base + ox]


def col2im_t(cols, in_shape, kernel_size, stride, padding):
    r"""Transpose of the channel-major im2col: sums ``cols`` (C * kh * kw, B * H_out * W_out), rows in
    (c, dy, dx) order and columns in (b, oy, ox) order, back onto a (B, C, H, W) map (``in_shape`` =
    (B, C, H, W)); zero-padding positions are dropped. Numba, parallel over (b, c)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    _, _, h, w = in_shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.empty(in_shape, dtype=cols.dtype)
    _col2im_t(np.ascontiguousarray(cols), kh, kw, sh, sw, ph, pw, ho, wo, out)
    return out
