r"""numba.cuda kernels for a device-resident training step of a dense or conv SBN (:mod:`sbnnumba.training.resident`).

Together with the PSA flip-propagation kernels of :mod:`sbnnumba.backends.cuda.kernels`, these are all the
pieces a PSA or deep-ST step needs, so that data, activations, gradients, parameters and optimizer
state stay on the GPU (spec psa.md, sections 2-3; the host versions are
:mod:`sbnnumba.estimators.psa`, :mod:`sbnnumba.estimators.st` and :mod:`sbnnumba.optim`):

* the GEMMs (forward products ``x W^T``, weight gradients ``g_a^T x``, ST backward ``g_a W``) are
  :func:`sbnnumba.backends.cuda.gemm.gemm` (register- and shared-memory-tiled);
* :func:`add_bias`, :func:`sample_rng` (states ``+1 if u < F(a) else -1`` with ``u`` drawn by the
  device's xoroshiro128+ generators; from given uniforms: :func:`.kernels.sample_states`),
  :func:`column_sum` (bias gradients).
* Head: :func:`xent_rows` (softmax cross-entropy and its gradient per example), :func:`head_flips`
  (PSA's exact head differences ``d_i = l(eta - 2 x_i V[:, i]) - l(eta)`` and the flipped logit
  gradients), :func:`rb_mix`, :func:`rb_head_correction` (the Rao-Blackwellized head gradient of spec
  section 2.6; the weights ``w_rb`` come from the backend's ``rb_flip_weights``).
* :func:`adam_update`, :func:`sgd_update`: the rules of :class:`sbnnumba.optim.Adam` /
  :class:`sbnnumba.optim.SGD` (with element-wise clipping), one thread per parameter entry.
* Conv stages: :func:`im2col_rows` (patch matrix), :func:`col2im_gather` (its transpose, for the ST
  backward), :func:`rows_to_map` / :func:`map_to_rows` (GEMM rows <-> (B, C, H, W) maps); the conv flip
  propagation is :func:`sbnnumba.backends.cuda.conv_flip.flip_conv_ratio_kernel` / :func:`.kernels.flip_conv_generic`.
* :func:`gather_rows`, :func:`gather_labels`: a mini-batch from a dataset held on the device.
* :func:`accumulate_loss`: ``acc[0] += w sum_b value[b]`` (one thread; batches are small).
* Batch normalization: :func:`channel_sums_kernel` (per-channel sums, one block per channel, tree
  reduction in shared memory), :func:`bn_apply`, :func:`bn_backward`,
  :func:`scale_copy`, :func:`scale_rows` (weights scaled per output for PSA's flips).
* Bernoulli weights: :func:`latent_grad` (eta gradient from ``dL/dw``), :func:`clip_values` (projection);
  the weights themselves are sampled with :func:`sample_rng` / :func:`.kernels.sample_states`.

Like :mod:`sbnnumba.backends.cuda.kernels`, nothing is compiled or initialized at import time.
"""
import functools
import math

from numba import cuda, float64
from numba.cuda.random import xoroshiro128p_uniform_float64

from ...kernels.optim_rules import adam_rule, sgd_rule
from ...kernels.scalar import cdf, pdf
from . import kernels  # noqa: F401  (restores np.row_stack for numba-cuda before any compilation, see there)


@cuda.jit(device=True)
def _split(idx, n):
    """``(idx // n, idx % n)``: row and column of flat index ``idx`` in a row-major array of ``n`` columns."""
    row = idx // n
    return row, idx - row * n


@cuda.jit
def add_bias(a, bias):
    """``a[b, j] += bias[j]``; 1-D launch over ``a.size``."""
    idx = cuda.grid(1)
    n = a.shape[1]
    if idx < a.shape[0] * n:
        b, j = _split(idx, n)
        a[b, j] += bias[j]


@cuda.jit
def sample_rng(code, a, states, x):
    """``x = +1 if u < F(a) else -1`` with ``u`` drawn from ``states[idx]`` (xoroshiro128+, one
    generator per element index, at least ``a.size`` of them); 1-D launch."""
    idx = cuda.grid(1)
    n = a.shape[1]
    if idx < a.shape[0] * n:
        b, j = _split(idx, n)
        u = xoroshiro128p_uniform_float64(states, idx)
        x[b, j] = 1 if u < cdf(code, a[b, j]) else -1


@cuda.jit
def column_sum(x, scale, out):
    """``out[j] = scale sum_b x[b, j]``; 1-D launch over the columns."""
    j = cuda.grid(1)
    if j < x.shape[1]:
        acc = scale - scale
        for b in range(x.shape[0]):
            acc += x[b, j]
        out[j] = scale * acc


@cuda.jit
def xent_rows(logits, y, loss, g):
    """Softmax cross-entropy per row: ``loss[b] = logsumexp(eta) - eta_y``, ``g[b] = softmax(eta) - onehot(y)``;
    one thread per row."""
    b = cuda.grid(1)
    if b < logits.shape[0]:
        n_k = logits.shape[1]
        m = logits[b, 0]
        for k in range(1, n_k):
            m = logits[b, k] if logits[b, k] > m else m
        total = m - m
        for k in range(n_k):
            total += math.exp(logits[b, k] - m)
        loss[b] = math.log(total) + m - logits[b, y[b]]
        for k in range(n_k):
            g[b, k] = math.exp(logits[b, k] - m) / total - (1 if k == y[b] else 0)


@cuda.jit
def head_flips(logits, y, x_last, v, loss0, d, g_flip):
    """PSA head differences ``d[b, i] = l(eta - 2 x_i V[:, i]) - l(eta)`` and the flipped logit gradients
    ``g_flip[b, i] = softmax(eta^(i)) - onehot(y)`` (B, N_L, K); one thread per ``(b, i)``. The
    flipped logits are recomputed per pass instead of stored (K is small)."""
    idx = cuda.grid(1)
    n_last = x_last.shape[1]
    if idx < x_last.shape[0] * n_last:
        b, i = _split(idx, n_last)
        n_k = logits.shape[1]
        two_x = 2 * x_last[b, i]
        m = logits[b, 0] - two_x * v[0, i]
        for k in range(1, n_k):
            e = logits[b, k] - two_x * v[k, i]
            m = e if e > m else m
        total = m - m
        for k in range(n_k):
            total += math.exp(logits[b, k] - two_x * v[k, i] - m)
        yb = y[b]
        d[b, i] = math.log(total) + m - (logits[b, yb] - two_x * v[yb, i]) - loss0[b]
        for k in range(n_k):
            g_flip[b, i, k] = math.exp(logits[b, k] - two_x * v[k, i] - m) / total - (1 if k == yb else 0)


@cuda.jit
def rb_mix(g_eta, g_flip, w_rb, w_sum, weight, g_mix):
    """``g_mix[b, k] = weight (g_eta[b, k] (1 - w_sum[b]) + sum_i w_rb[b, i] g_flip[b, i, k])``; 1-D launch."""
    idx = cuda.grid(1)
    n_k = g_eta.shape[1]
    if idx < g_eta.shape[0] * n_k:
        b, k = _split(idx, n_k)
        acc = g_eta[b, k] * (1 - w_sum[b])
        for i in range(w_rb.shape[1]):
            acc += w_rb[b, i] * g_flip[b, i, k]
        g_mix[b, k] = weight * acc


@cuda.jit
def rb_head_correction(g_flip, w_rb, x_last, weight, dv):
    """``dv[k, i] -= 2 weight sum_b w_rb[b, i] x[b, i] g_flip[b, i, k]`` (the flipped unit's own
    input to the head weight); 1-D launch over ``dv.size``."""
    idx = cuda.grid(1)
    n_last = dv.shape[1]
    if idx < dv.shape[0] * n_last:
        k, i = _split(idx, n_last)
        acc = dv[k, i] - dv[k, i]
        for b in range(x_last.shape[0]):
            acc += w_rb[b, i] * x_last[b, i] * g_flip[b, i, k]
        dv[k, i] -= 2 * weight * acc


@cuda.jit
def adam_update(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1, weight_decay, decoupled_decay,
                clip):
    """One Adam step on flat arrays: ``g`` clipped to ``[-clip, clip]`` (``clip <= 0``: none), coupled decay
    ``g += weight_decay p``, decoupled ``p *= decoupled_decay``, then the rule the host optimizer runs
    (:func:`sbnnumba.kernels.optim_rules.adam_rule`, same scalar arguments)."""
    i = cuda.grid(1)
    if i < p.shape[0]:
        gi = g[i]
        if clip > 0:
            gi = clip if gi > clip else (-clip if gi < -clip else gi)
        pi = p[i] * decoupled_decay
        gi += weight_decay * pi
        p[i], m[i], v[i] = adam_rule(pi, gi, m[i], v[i], b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1)


@cuda.jit
def sgd_update(p, g, buf, lr, momentum, nesterov, first, weight_decay, clip):
    """One SGD step on flat arrays: clip, coupled decay, then the host optimizer's rule
    (:func:`sbnnumba.kernels.optim_rules.sgd_rule`: (Nesterov) momentum with the buffer set to ``g``
    on the first step; ``momentum == 0``: plain SGD, ``buf`` untouched)."""
    i = cuda.grid(1)
    if i < p.shape[0]:
        gi = g[i]
        if clip > 0:
            gi = clip if gi > clip else (-clip if gi < -clip else gi)
        gi += weight_decay * p[i]
        if momentum > 0:
            p[i], buf[i] = sgd_rule(p[i], gi, buf[i], lr, momentum, nesterov, first)
        else:
            p[i] = sgd_rule(p[i], gi, gi, lr, momentum, nesterov, first)[0]


@cuda.jit
def im2col_rows(x, kh, kw, sh, sw, ph, pw, cols):
    """Patch matrix of a conv stage: ``cols[(b, oy, ox), (c, dy, dx)] = x_pad[b, c, sh oy + dy, sw ox + dx]``
    (zero in the padding); ``x`` (B, C, H, W), ``cols`` (B H_out W_out, C kh kw), the layout of
    :func:`sbnnumba.kernels.conv_reference.im2col`; 1-D launch over ``cols.size``."""
    idx = cuda.grid(1)
    n_k = cols.shape[1]
    if idx < cols.shape[0] * n_k:
        row, col = _split(idx, n_k)
        n_c, h, w = x.shape[1], x.shape[2], x.shape[3]
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (w + 2 * pw - kw) // sw + 1
        b = row // (ho * wo)
        rest = row - b * ho * wo
        oy = rest // wo
        ox = rest - oy * wo
        c = col // (kh * kw)
        rest = col - c * kh * kw
        dy = rest // kw
        dx = rest - dy * kw
        y = sh * oy + dy - ph
        xx = sw * ox + dx - pw
        cols[row, col] = x[b, c, y, xx] if (0 <= y < h and 0 <= xx < w and c < n_c) else 0


@cuda.jit
def col2im_gather(cols, kh, kw, sh, sw, ph, pw, out):
    """Transpose of :func:`im2col_rows`: ``out[b, c, y, x] = sum`` of the patch entries that read input
    position ``(y, x)`` (gathered per output element, no atomics); ``out`` (B, C, H, W); 1-D launch."""
    idx = cuda.grid(1)
    n_b, n_c, h, w = out.shape
    if idx < n_b * n_c * h * w:
        b = idx // (n_c * h * w)
        rest = idx - b * n_c * h * w
        c = rest // (h * w)
        rest = rest - c * h * w
        y = rest // w
        xx = rest - y * w
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (w + 2 * pw - kw) // sw + 1
        acc = cols[0, 0] - cols[0, 0]
        for dy in range(kh):
            ty = y + ph - dy
            if ty >= 0 and ty % sh == 0 and ty // sh < ho:
                oy = ty // sh
                for dx in range(kw):
                    tx = xx + pw - dx
                    if tx >= 0 and tx % sw == 0 and tx // sw < wo:
                        acc += cols[(b * ho + oy) * wo + tx // sw, (c * kh + dy) * kw + dx]
        out[b, c, y, xx] = acc


@cuda.jit
def rows_to_map(rows, bias, use_bias, out):
    """``out[b, c, oy, ox] = rows[(b, oy, ox), c] (+ bias[c])``: the GEMM result of a conv stage as a
    (B, C, H_out, W_out) map; 1-D launch over ``out.size``."""
    idx = cuda.grid(1)
    n_b, n_c, ho, wo = out.shape
    if idx < n_b * n_c * ho * wo:
        b = idx // (n_c * ho * wo)
        rest = idx - b * n_c * ho * wo
        c = rest // (ho * wo)
        p = rest - c * ho * wo
        v = rows[b * ho * wo + p, c]
        out[b, c, p // wo, p - (p // wo) * wo] = v + bias[c] if use_bias else v


@cuda.jit
def map_to_rows(m, rows):
    """``rows[(b, oy, ox), c] = m[b, c, oy, ox]`` (inverse of :func:`rows_to_map` without bias); 1-D launch."""
    idx = cuda.grid(1)
    n_b, n_c, ho, wo = m.shape
    if idx < n_b * n_c * ho * wo:
        b = idx // (n_c * ho * wo)
        rest = idx - b * n_c * ho * wo
        c = rest // (ho * wo)
        p = rest - c * ho * wo
        rows[b * ho * wo + p, c] = m[b, c, p // wo, p - (p // wo) * wo]


@cuda.jit
def gather_rows(src, index, start, out):
    """``out[r] = src[index[start + r]]`` (2-D, row-wise); 1-D launch over ``out.size``."""
    idx = cuda.grid(1)
    n = out.shape[1]
    if idx < out.shape[0] * n:
        r, j = _split(idx, n)
        out[r, j] = src[index[start + r], j]


@cuda.jit
def gather_labels(src, index, start, out):
    """``out[r] = src[index[start + r]]``; 1-D launch."""
    r = cuda.grid(1)
    if r < out.shape[0]:
        out[r] = src[index[start + r]]


@cuda.jit
def accumulate_loss(value, weight, acc):
    """``acc[0] += weight sum_b value[b]``; launch with one thread."""
    if cuda.grid(1) == 0:
        s = acc[0] - acc[0]
        for b in range(value.shape[0]):
            s += value[b]
        acc[0] += weight * s


# ---------------------------------------------------------------------------------------------------
# Batch normalization before a binary activation, and Bernoulli (latent) weights
# ---------------------------------------------------------------------------------------------------
# Tensors are passed flat, viewed as (B, C, P): channel c of example b at position p is entry
# (b C + c) P + p (dense stages: P = 1). The host versions are sbnnumba.normalization.Normalized and
# sbnnumba.weights.BernoulliWeights.

REDUCE_THREADS = 128  # threads of one channel_sums block (a power of two)


@functools.lru_cache(maxsize=None)
def channel_sums_kernel(threads=REDUCE_THREADS):
    r"""Per-channel sums ``s1[c] = sum_{b,p} t[b,c,p]``, ``s2[c] = sum_{b,p} t[b,c,p] u[b,c,p]`` (float64).

    Arguments ``(t, u, n_batch, n_ch, n_pos, s1, s2)``; launch one block of ``threads`` (a power of two)
    per channel: ``kernel[n_ch, threads]``. Each thread strides over the ``B P`` entries of its channel,
    then the block adds the partial sums in shared memory (a tree, no atomics: deterministic).
    """
    if threads < 1 or threads & (threads - 1):
        raise ValueError(f"threads: expected a power of two, got {threads!r}")

    @cuda.jit
    def kernel(t, u, n_batch, n_ch, n_pos, s1, s2):
        acc1 = cuda.shared.array(threads, float64)
        acc2 = cuda.shared.array(threads, float64)
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        a1 = 0.0
        a2 = 0.0
        for i in range(tid, n_batch * n_pos, threads):
            b, p = _split(i, n_pos)
            idx = (b * n_ch + c) * n_pos + p
            v = float64(t[idx])
            a1 += v
            a2 += v * float64(u[idx])
        acc1[tid] = a1
        acc2[tid] = a2
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step:
                acc1[tid] += acc1[tid + step]
                acc2[tid] += acc2[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            s1[c] = acc1[0]
            s2[c] = acc2[0]

    return kernel


@cuda.jit
def bn_apply(z, mean, inv_std, gamma, beta, n_ch, n_pos, z_hat, a):
    """``z_hat = (z - mean_c) inv_std_c``, ``a = gamma_c z_hat + beta_c`` (flat (B, C, P) arrays); 1-D launch."""
    idx = cuda.grid(1)
    if idx < z.shape[0]:
        c = (idx // n_pos) % n_ch
        zh = (z[idx] - mean[c]) * inv_std[c]
        z_hat[idx] = zh
        a[idx] = gamma[c] * zh + beta[c]


@cuda.jit
def bn_backward(g, z_hat, s1, s2, out_scale, inv_n, n_ch, n_pos, g_z):
    r"""Batch-norm backward ``g_z = gamma inv_std (g - s1 / n - z_hat s2 / n)`` with ``s1 = sum g``,
    ``s2 = sum g z_hat`` per channel (flat (B, C, P) arrays); 1-D launch."""
    idx = cuda.grid(1)
    if idx < g.shape[0]:
        c = (idx // n_pos) % n_ch
        g_z[idx] = out_scale[c] * (g[idx] - s1[c] * inv_n - z_hat[idx] * (s2[c] * inv_n))


@cuda.jit
def scale_copy(src, scale, out):
    """``out = scale src`` (e.g. float64 channel sums into a gradient); 1-D launch."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = scale * src[i]


@cuda.jit
def scale_rows(w, scale, out):
    """``out[r, j] = w[r, j] scale[r]``: a weight matrix (rows = output units or channels) scaled per
    output, the effective weights of PSA flip propagation through a normalization; 1-D launch."""
    idx = cuda.grid(1)
    n = w.shape[1]
    if idx < w.shape[0] * n:
        r, j = _split(idx, n)
        out[r, j] = w[r, j] * scale[r]


@cuda.jit
def latent_grad(code, mirror, eta, g_w, out):
    r"""Gradient for latent weights from ``g_w = dL/dw`` at the sampled weights: ``2 g_w`` (``mirror``: mirror
    descent, identity ST for weights) or ``2 p(eta) g_w`` (latent SGD); flat arrays, 1-D launch."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = 2 * g_w[i] if mirror else 2 * pdf(code, eta[i]) * g_w[i]


@cuda.jit
def clip_values(p, bound):
    """In place ``p = clip(p, -bound, bound)`` (the mirror-descent projection of latent weights); 1-D launch."""
    i = cuda.grid(1)
    if i < p.shape[0]:
        v = p[i]
        p[i] = bound if v > bound else (-bound if v < -bound else v)
