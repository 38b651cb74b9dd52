r"""The ``cpu`` backend: the Numba kernels of :mod:`sbnnumba.kernels` (``@njit(parallel=True)``).

* PSA flip propagation: :func:`sbnnumba.kernels.cpu.flip_propagate_dense` and
  :func:`sbnnumba.kernels.conv_cpu.flip_propagate_conv` (logistic ratio form, bounded form for
  uniform/triangular noise, probit form for normal noise in float32, generic F form; ``form="auto"`` picks the
  fastest one that holds,
  :func:`sbnnumba.kernels.cpu.choose_form`).
* Sampling: :meth:`NoiseFamily.sample` (one fused Numba pass for logistic noise,
  :mod:`sbnnumba.kernels.sampling`).
* PSA head differences: the factored form, ``e^{eta_k - 2 x_i V_ki} = e^{eta_k} e^{-2 x_i V_ki}`` (2 K N_L
  exponentials instead of B K N_L; :func:`sbnnumba.kernels.head.flip_losses`, within a stated bound of the exact
  values; the reference backend's formula where its weight range does not hold). PSA's Rao-Blackwellized head
  gradients (``psa_rb_head``) from the same factors by two GEMMs of ``B x 2 N_L x K``, without the (B, N_L, K)
  flipped gradients (:func:`sbnnumba.kernels.head.rb_head_gradients`). The Rao-Blackwell head's weights ``F(-x a) /
  N``: for logistic noise in float32 one vectorized pass (:func:`sbnnumba.kernels.head.logistic_flip_weights`, within
  7 rounding units), otherwise the noise's CDF evaluated in blocks on the threads (:func:`sbnnumba.runtime.blockwise`;
  the CDF is element-wise, so the same bits as one call).
* The element-wise PSA / ST gradients are the reference backend's (inherited), so seeded runs are
  bit-identical to the host step before the backend layer: NumPy expressions, the logistic density in
  the three passes of :mod:`sbnnumba.kernels.density`, deep ST's factor multiplied by ``g`` in the last of
  them (:meth:`~sbnnumba.noise.NoiseFamily.fused_st_grad`, same bits); PSA's
  pre-activation gradient goes through the family's :meth:`~sbnnumba.noise.NoiseFamily.psa_grad` (for logistic
  noise one fused Numba pass after NumPy's ``exp``, with the same bits).
* Convolutions: the reference backend's patch matrix and GEMMs (same shapes, same bits), with the
  copies around them as parallel Numba passes: the patch matrix by :func:`sbnnumba.kernels.im2col.im2col`,
  the changes of array order by :mod:`sbnnumba.kernels.map_order` (same entries, same bits). The input
  gradient ``col2im(W^T g)`` is computed for chunks of examples of about :data:`CHUNK_COLUMNS` output positions
  (at least ``min(4, work / 2^22)`` chunks, so that a small stage is shared too), each chunk on one thread
  from start to end: its columns of ``g`` with the examples innermost, one single-threaded BLAS product, and
  ``col2im`` summing it back while it is still in cache (:func:`sbnnumba.kernels.col2im.col2im_into`), the
  threads taking the next chunk as they come free (:func:`sbnnumba.runtime.run_blas_blocks`: no static split
  that waits for a thread on a busy core), instead of one (C_in kh kw, B H_out W_out) product written to
  memory and read back (the largest array of the step). The chunks are the reference backend's
  (:func:`sbnnumba.backends.reference.input_grad_chunks`, a function of the shapes): its input gradient makes
  the same single-threaded BLAS calls, one per chunk, and ``col2im`` adds the same terms in the same order, so
  the result is the reference's bit for bit on any BLAS (``tests/test_conv_step.py`` checks it). One product of
  the whole batch would not do: OpenBLAS's Haswell kernel rounds the last columns of a call by another path
  than their neighbours, so a chunk's entries need not have the whole product's bits.
* Packed products: the XNOR-popcount kernels of :mod:`sbnnumba.kernels.bitpack`, which read the
  weights in their panel layout (:class:`sbnnumba.kernels.bitpack.PreparedWeights`) and compare
  popcounts against per-column limits (the thresholds turned into popcount bounds here).
"""
from __future__ import annotations

import numpy as np

from ..kernels import bitpack as kb
from ..kernels import col2im, conv_cpu, cpu, head, im2col, map_order
from ..kernels.scalar import LOGISTIC
from ..kernels.workspace import scratch
from ..runtime import blockwise, gemm, gemm_nt, run_blas_blocks
from .reference import ReferenceBackend, input_grad_chunks
from .registry import register_backend


def _conv_geometry(x_words, w_words, c_in, stride, padding):
    """Padding classes and corrections of a packed conv (see :mod:`sbnnumba.kernels.bitpack`)."""
    (sh, sw), (ph, pw) = stride, padding
    _, height, width, _ = x_words.shape
    _, kh, kw, _ = w_words.shape
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    row_class, row_ranges = kb.padding_classes(height, kh, sh, ph, out_h)
    col_class, col_ranges = kb.padding_classes(width, kw, sw, pw, out_w)
    tap_sums = c_in - 2 * kb.popcount_reference(w_words).sum(axis=-1)  # (C_out, kh, kw): sum_ci w[co, ci, dy, dx]
    corrections = kb.padding_corrections(tap_sums, row_ranges, col_ranges)
    geometry = np.array([kh, kw, sh, sw, ph, pw], np.int64)
    return c_in * kh * kw, geometry, corrections, row_class, col_class


class CpuBackend(ReferenceBackend):
    """Numba implementation of :class:`~sbnnumba.backends.base.Backend` (registered as ``"cpu"``)."""

    name = "cpu"

    def flip_propagate_dense(self, x_in, a, x_out, weight, d_out, noise, form="auto"):
        return cpu.flip_propagate_dense(x_in, a, x_out, weight, d_out, noise.code, form)

    def flip_propagate_conv(self, x_in, a, x_out, weight, d_out, stride, padding, noise, form="auto"):
        return conv_cpu.flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise.code, form)

    def sample_states(self, a, u, noise):
        return noise.sample(a, u)

    def head_flips(self, logits, y, x_last, v, loss0):
        fused = head.flip_losses(logits, y, x_last, v, loss0)  # the factored form: 2 K N_L exponentials
        return fused if fused is not None else super().head_flips(logits, y, x_last, v, loss0)

    def psa_rb_head(self, logits, y, x_last, v, loss0, g_eta, w, weights):
        factored = head.rb_head_gradients(logits, y, x_last, v, g_eta, w, weights)  # no (B, N_L, K) gradients
        if factored is None:
            return super().psa_rb_head(logits, y, x_last, v, loss0, g_eta, w, weights)
        d, g, correction = factored
        dv, dc = self.dense_param_grads(x_last, g)
        dv -= 2 * correction
        return d, dv, dc

    def rb_flip_weights(self, x_last, a_last, noise):
        if noise.has_kernels and noise.code == LOGISTIC:  # float32: one vectorized pass (expit: 5-8 ns an entry)
            fused = head.logistic_flip_weights(x_last, a_last)
            if fused is not None:
                return fused
        # The reference's F(-x a) / N with F over blocks on the threads (the "cdf" kind).
        z = np.ascontiguousarray(-(x_last * a_last))
        cdf = np.empty(z.shape, noise.cdf(z.reshape(-1)[:1]).dtype)  # the dtype the family returns for z's
        blockwise(lambda z_part, cdf_part: np.copyto(cdf_part, noise.cdf(z_part)), z, cdf, kind="cdf")
        return cdf / x_last.shape[1]

    def psa_preactivation_grad(self, x, a, d, noise):
        return noise.psa_grad(x, a, d)

    def st_preactivation_grad(self, a, g, noise):
        fused = noise.fused_st_grad(a, g)  # for logistic noise the product in the density's last pass
        return fused if fused is not None else super().st_preactivation_grad(a, g, noise)

    def conv_patches(self, x, kernel_size, stride, padding):
        return im2col.im2col(x, kernel_size, stride, padding)

    def conv_forward(self, cols, weight, bias, out_shape):
        prod = gemm(weight.reshape(weight.shape[0], -1), cols)
        return map_order.batch_first(prod, out_shape[0], out_shape[2:], bias)

    def conv_backward_input(self, g_a, weight, in_shape, stride, padding):
        n_batch, c_out, n_pos = g_a.shape[0], g_a.shape[1], g_a.shape[2] * g_a.shape[3]
        w2t = weight.reshape(c_out, -1).T
        out = np.empty((n_batch,) + tuple(in_shape), dtype=g_a.dtype)
        work = w2t.shape[0] * c_out * n_batch * n_pos  # multiply-adds of W^T g
        chunks = input_grad_chunks(n_batch, n_pos, work)
        g3 = np.ascontiguousarray(g_a).reshape(n_batch, c_out, n_pos)
        size = (c_out + w2t.shape[0]) * n_pos * max(b1 - b0 for b0, b1 in chunks)

        def chunk(i):
            b0, b1 = chunks[i]
            n = n_pos * (b1 - b0)
            buffer = scratch("conv_input_grad_chunk", (size,), g_a.dtype)  # the thread's own, kept for its next chunk
            g_chunk = buffer[:c_out * n].reshape(c_out, n)
            g_cols = buffer[c_out * n:(c_out + w2t.shape[0]) * n].reshape(w2t.shape[0], n)
            map_order.examples_inner(g3, b0, b1, g_chunk)  # columns (oy, ox, example), as col2im wants them
            np.matmul(w2t, g_chunk, out=g_cols)  # BLAS on one thread (run_blas_blocks)
            col2im.col2im_into(g_cols, weight.shape[2:], stride, padding, out[b0:b1], parallel=False)

        run_blas_blocks(chunk, len(chunks))
        return out

    def conv_param_grads(self, cols, g_a, weight_shape):
        g_w = gemm_nt(map_order.channel_major(g_a), cols)  # the reference's product (same rule, same bits)
        return g_w.reshape(tuple(weight_shape)), g_a.sum(axis=(0, 2, 3))

    def xnor_matmul(self, a_words, weights, k):
        out = np.empty((a_words.shape[0], weights.words.shape[0]), np.int32)
        kb.xnor_gemm(a_words, weights.panels, k, out)
        return out

    def xnor_matmul_threshold(self, a_words, weights, k, thresholds, flip):
        panels = weights.panels
        # dot < t  <=>  k - 2 popcount < t  <=>  popcount > floor((k - t) / 2)
        limits = kb.padded_limits((k - thresholds) // 2, panels.shape[0])
        out = np.zeros((a_words.shape[0], kb.n_words(weights.words.shape[0])), np.uint64)
        kb.xnor_gemm_threshold(a_words, panels, limits, kb.flip_words(flip), out)
        return out

    def binary_conv2d(self, x_words, weights, c_in, stride, padding):
        w, panels = weights.words, weights.panels
        k, geometry, corrections, row_class, col_class = _conv_geometry(x_words, w, c_in, stride, padding)
        out = np.empty((x_words.shape[0], w.shape[0], len(row_class), len(col_class)), np.int32)
        padded = np.zeros(corrections.shape[:2] + (panels.shape[0] * kb.PANEL_LANES,), np.int32)
        padded[..., :w.shape[0]] = corrections
        kb.xnor_conv2d(x_words, panels, k, geometry, padded, row_class, col_class, out)
        return out

    def binary_conv2d_threshold(self, x_words, weights, c_in, thresholds, flip, stride, padding):
        w, panels = weights.words, weights.panels
        c_out = w.shape[0]
        k, geometry, corrections, row_class, col_class = _conv_geometry(x_words, w, c_in, stride, padding)
        n_row_classes, n_col_classes = corrections.shape[:2]
        # true dot = k - 2 popcount - correction < t  <=>  popcount > floor((k - correction - t) / 2)
        limits = kb.padded_limits(((k - corrections - thresholds) // 2).reshape(n_row_classes * n_col_classes,
                                                                                c_out), panels.shape[0])
        limit_class = row_class[:, None] * n_col_classes + col_class[None, :]  # (H_out, W_out)
        out = np.zeros((x_words.shape[0], len(row_class), len(col_class), kb.n_words(c_out)), np.uint64)
        kb.xnor_conv2d_threshold(x_words, panels, geometry, limits, limit_class, kb.flip_words(flip),
                                 out.reshape(-1, out.shape[3]))
        return out


register_backend(CpuBackend)
