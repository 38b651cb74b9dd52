r"""The ``reference`` backend: plain NumPy, the readable definition of every backend operation.

Each method is the formula of :class:`~sbnnumba.backends.base.Backend` evaluated directly: the PSA
flip propagation materializes ``Delta`` (B, N_in, N_out) (:mod:`sbnnumba.kernels.reference`, and for
convolutions the same on im2col patches, :mod:`sbnnumba.kernels.conv_reference`), the packed products
count bits word by word (the ``*_reference`` functions of :mod:`sbnnumba.kernels.bitpack`). Slow and
memory-hungry, exact up to float rounding: the truth the other backends are tested against
(``tests/test_backends.py``). ``form`` is validated and otherwise ignored (every form computes the
same sum; this backend always sums the exact differences).

The training-step operations (:mod:`sbnnumba.backends.step`) are the NumPy expressions of the host training step,
moved here from the layers, the batch normalization, the weight rules and the estimators without a
change (the golden digests of ``tests/test_golden.py`` pin them bit for bit); the ``cpu`` backend
inherits them. Convolutions go through the channel-major patch matrix ``cols`` (C_in kh kw,
B H_out W_out), here NumPy's copy of a strided view (built once per stage and step: the forward GEMM
and the weight-gradient GEMM share it); the transposed map sums ``W^T g`` back with the Numba
``col2im`` of :mod:`sbnnumba.kernels.col2im` (``g`` with the examples innermost), one single-threaded product per
chunk of examples (:func:`input_grad_chunks`: a product's bits depend on the BLAS call's extent on some
kernels, so the chunks are part of the definition). The ``cpu`` backend builds the same matrices with Numba
kernels and computes the same chunks fused with ``col2im`` (:mod:`sbnnumba.backends.cpu`).
"""
from __future__ import annotations

import numpy as np

from .. import losses
from ..kernels import bitpack as kb
from ..kernels import col2im, conv_reference, reference
from ..kernels.conv_reference import windows
from ..kernels.cpu import choose_form
from ..runtime import MAX_GEMM_BLOCKS, MIN_WORK_PER_THREAD, gemm, gemm_nt, limited_threads
from ..validation import check_choice
from .base import Backend
from .registry import register_backend


def _check_form(form, noise, a):
    """Validate ``form`` as the kernels would for the dtype of ``a``; a family without kernel twins (only this backend
    runs it) has the generic form alone."""
    if noise.has_kernels:
        choose_form(form, noise.code, np.asarray(a).dtype)
    else:
        check_choice(form, "form", ("auto", "generic"))


#: Output positions (GEMM columns) per chunk of the conv input gradient (:func:`input_grad_chunks`): products of
#: (C_in kh kw, ~1000) stay in the last-level cache for the cpu backend's ``col2im``; 576 to 1152 were fastest on the
#: paper's conv network (one thread; 36864 columns at once: 1.2-1.5x the time).
CHUNK_COLUMNS = 1024


def batch_chunks(n_batch, n_pos, columns=CHUNK_COLUMNS, min_chunks=1):
    """Split a batch into near-equal chunks of about ``columns`` GEMM columns (``n_pos`` per example).

    Parameters
    ----------
    n_batch : int
        Examples.
    n_pos : int
        Output positions per example (H_out W_out).
    columns : int
        Wanted columns per chunk (>= 2).
    min_chunks : int
        At least this many chunks where the batch allows (more chunks than the columns ask for, so that
        threads can share a small stage).

    Returns
    -------
    list of (int, int)
        ``(b0, b1)`` example ranges covering ``range(n_batch)`` in order. Every chunk has at least two
        columns when the batch has (a one-column product would take BLAS's GEMV path, other bits).
    """
    n_chunks = max(1, min(n_batch, max(n_batch * n_pos // columns, min(min_chunks, n_batch * n_pos // 2))))
    edges = [(i * n_batch) // n_chunks for i in range(n_chunks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def input_grad_chunks(n_batch, n_pos, work):
    """The chunks of examples of a conv layer's input gradient: :func:`batch_chunks` of about
    :data:`CHUNK_COLUMNS` columns, at least ``min(4, work / w_min)`` of them (``work``: the multiply-adds of
    ``W^T g``; ``w_min = MIN_WORK_PER_THREAD["gemm"]``; 4 is :data:`~sbnnumba.runtime.MAX_GEMM_BLOCKS`), so that
    threads share a small stage too. A function of the shapes alone: every backend computes one product per chunk,
    so the bits do not depend on the thread count or on the backend.

    Parameters
    ----------
    n_batch, n_pos : int
        Examples, and output positions per example.
    work : int
        Multiply-adds of the whole product.

    Returns
    -------
    list of (int, int)
        As :func:`batch_chunks`.
    """
    return batch_chunks(n_batch, n_pos, min_chunks=min(MAX_GEMM_BLOCKS, work // MIN_WORK_PER_THREAD["gemm"]))


class ReferenceBackend(Backend):
    """NumPy implementation of :class:`~sbnnumba.backends.base.Backend` (registered as ``"reference"``)."""

    name = "reference"

    def flip_propagate_dense(self, x_in, a, x_out, weight, d_out, noise, form="auto"):
        _check_form(form, noise, a)
        return reference.flip_propagate_dense(x_in, a, x_out, weight, d_out, noise)

    def flip_propagate_conv(self, x_in, a, x_out, weight, d_out, stride, padding, noise, form="auto"):
        _check_form(form, noise, a)
        return conv_reference.flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise)

    def sample_states(self, a, u, noise):
        a = np.asarray(a)
        return np.where(np.asarray(u) < noise.cdf(a), 1, -1).astype(a.dtype)

    def st_preactivation_grad(self, a, g, noise):
        factor = noise.mean_grad(a)  # a new array: multiplied in place (same bits as factor * g, one array less)
        if factor.shape == np.shape(g) and np.result_type(factor, g) == factor.dtype:
            return np.multiply(factor, g, out=factor)
        return factor * g

    def psa_preactivation_grad(self, x, a, d, noise):
        # the expression (and order) of the estimators before the backend layer: seeded runs stay bit-identical
        return -x * noise.pdf(a) * d

    def xnor_matmul(self, a_words, weights, k):
        return kb.matmul_reference(a_words, weights.words, k)

    def xnor_matmul_threshold(self, a_words, weights, k, thresholds, flip):
        return kb.matmul_threshold_reference(a_words, weights.words, k, thresholds, flip)

    def binary_conv2d(self, x_words, weights, c_in, stride, padding):
        return kb.conv2d_reference(x_words, weights.words, c_in, stride, padding)

    def binary_conv2d_threshold(self, x_words, weights, c_in, thresholds, flip, stride, padding):
        return kb.conv2d_threshold_reference(x_words, weights.words, c_in, thresholds, flip, stride, padding)


    # -- training-step operations (sbnnumba.backends.step) ----------------------------------------
    def dense_forward(self, x, weight, bias):
        return gemm(x, weight.T) + bias

    def dense_backward_input(self, g_a, weight):
        return gemm(g_a, weight)

    def dense_param_grads(self, x, g_a):
        return gemm(g_a.T, x), g_a.sum(axis=0)

    def conv_patches(self, x, kernel_size, stride, padding):
        return _cols(x, kernel_size, stride, padding)

    def conv_forward(self, cols, weight, bias, out_shape):
        return _gemm_to_map(cols, weight.reshape(weight.shape[0], -1), out_shape[0], out_shape[2:], bias)

    def conv_backward_input(self, g_a, weight, in_shape, stride, padding):
        # ``col2im(W^T g)`` for the chunks of examples of input_grad_chunks, each product one single-threaded BLAS
        # call: the definition the cpu backend's chunked kernel reproduces bit for bit on any BLAS
        w2t = weight.reshape(weight.shape[0], -1).T
        n_batch, n_pos = g_a.shape[0], g_a.shape[2] * g_a.shape[3]
        out = np.empty((n_batch,) + tuple(in_shape), dtype=g_a.dtype)
        with limited_threads(1):
            for b0, b1 in input_grad_chunks(n_batch, n_pos, w2t.shape[0] * w2t.shape[1] * n_batch * n_pos):
                g_cols = np.matmul(w2t, _examples_inner(g_a[b0:b1]))
                out[b0:b1] = col2im.col2im(g_cols, (b1 - b0,) + tuple(in_shape), weight.shape[2:], stride, padding)
        return out

    def conv_param_grads(self, cols, g_a, weight_shape):
        g_w = gemm_nt(_channel_major(g_a), cols)
        return g_w.reshape(tuple(weight_shape)), g_a.sum(axis=(0, 2, 3))

    def channel_moments(self, z):
        axes = _channel_axes(z)
        return z.mean(axis=axes), z.var(axis=axes)

    def running_average(self, running, batch, momentum):
        return (1 - momentum) * running + momentum * batch

    def normalize(self, z, mean, var, gamma, beta, eps):
        shape = _channel_shape(z)
        inv_std = (1 / np.sqrt(var + eps)).astype(z.dtype)
        z_hat = (z - mean.reshape(shape)) * inv_std.reshape(shape)
        return gamma.reshape(shape) * z_hat + beta.reshape(shape), z_hat, inv_std

    def channel_sums(self, t, u):
        axes = _channel_axes(t)
        return t.sum(axis=axes), (t * u).sum(axis=axes)

    def channel_sums64(self, t, u):
        axes = _channel_axes(t)  # the expressions data-parallel batch norm always used (bit-identical)
        return t.sum(axis=axes, dtype=np.float64), np.multiply(t, u, dtype=np.float64).sum(axis=axes)

    def normalize_backward(self, g_a, z_hat, scale, sums, n):
        shape = _channel_shape(g_a)
        scale = scale.reshape(shape)
        if sums is None:
            return scale * g_a
        s1, s2 = (s.reshape(shape) for s in sums)
        return scale * (g_a - s1 / n - z_hat * s2 / n)

    def latent_grad(self, eta, g_w, noise, rule):
        if rule == "md":
            return 2 * g_w
        return 2 * noise.pdf(eta) * g_w

    def clip_(self, x, bound):
        np.clip(x, -bound, bound, out=x)

    def softmax_xent(self, logits, y):
        return losses.xent(logits, y)

    def head_flips(self, logits, y, x_last, v, loss0):
        loss_flip, g_flip = losses.xent(flip_logits(logits, x_last, v), y[:, None])
        return loss_flip - loss0[:, None], g_flip

    def rb_flip_weights(self, x_last, a_last, noise):
        return noise.cdf(-(x_last * a_last)) / x_last.shape[1]  # F(-x a) = 1 - F(x a), without its cancellation

    def rb_mix(self, w, q0, q_flip):
        return q0 * (1 - w.sum(axis=1))[:, None] + np.einsum("bi,bik->bk", w, q_flip)

    def rb_value(self, loss0, w, d):
        return loss0 + np.einsum("bi,bi->b", w, d)

    def rb_head_grads(self, g_eta, g_flip, w, x_last, weights):
        g_mix = self.rb_mix(w, g_eta, g_flip)
        g_mix *= weights[:, None]
        dv, dc = self.dense_param_grads(x_last, g_mix)
        return dv - 2 * np.einsum("bi,bik->ki", (weights[:, None] * w * x_last), g_flip), dc

    def multiply(self, a, b):
        return a * b

    def scale_rows(self, t, scale):
        return t * scale.reshape((-1,) + (1,) * (t.ndim - 1))

    def weighted_sum(self, weights, values):
        return np.dot(weights, values)

    def asarray(self, x, dtype=None):
        return np.asarray(x, dtype=dtype)

    def loss_scalar(self, value):
        return float(value)

    def to_host(self, x):
        return np.asarray(x)

    def to_device_of(self, x, like):
        return x


def flip_logits(logits, x_last, v):
    r"""Single-flip logits ``eta^(i) = eta - 2 x_i V[:, i]`` of every last unit ``i``.

    Parameters
    ----------
    logits : ndarray (B, K)
    x_last : ndarray (B, N_L)
    v : ndarray (K, N_L)

    Returns
    -------
    ndarray (B, N_L, K)
    """
    return logits[:, None, :] - 2 * x_last[:, :, None] * v.T[None, :, :]


def _channel_axes(z):
    """The reduction axes of per-channel statistics: the batch and the positions."""
    return (0,) + tuple(range(2, z.ndim))


def _channel_shape(z):
    """Broadcast shape of a per-channel vector against ``z``."""
    return (1, -1) + (1,) * (z.ndim - 2)


def _cols(x, kernel_size, stride, padding):
    """Channel-major, C-contiguous patch matrix (C_in * kh * kw, B * H_out * W_out): rows (r, dy, dx), columns
    (b, oy, ox)."""
    win = windows(x, kernel_size, stride, padding)   # (B, C, Ho, Wo, kh, kw) view
    b, c, ho, wo, kh, kw = win.shape
    # The reshape is a strided view when it need not copy (1x1 maps and kernels): C order always, so that BLAS
    # runs the same kernel on the same memory order as the cpu backend's im2col (a transposed operand can give
    # other float bits).
    return np.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, b * ho * wo))


def _channel_major(t):
    """(B, C, H, W) -> (C, B * H * W)."""
    return t.transpose(1, 0, 2, 3).reshape(t.shape[1], -1)


def _examples_inner(t):
    """(B, C, H, W) -> (C, H * W * B): columns (y, x, b), the layout of :func:`sbnnumba.kernels.col2im.col2im`."""
    return np.ascontiguousarray(t.transpose(1, 2, 3, 0)).reshape(t.shape[1], -1)


def _gemm_to_map(cols, weight2, n_batch, out_hw, bias=None):
    """``weight2 @ cols`` (C_out, B*P) laid out as a contiguous (B, C_out, H_out, W_out) map (+ bias)."""
    prod = gemm(weight2, cols).reshape((weight2.shape[0], n_batch) + tuple(out_hw)).transpose(1, 0, 2, 3)
    out = np.empty(prod.shape, dtype=prod.dtype)
    if bias is None:
        out[...] = prod
    else:
        np.add(prod, bias.astype(prod.dtype, copy=False)[:, None, None], out=out)
    return out


register_backend(ReferenceBackend)
