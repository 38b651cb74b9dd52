r"""The ``reference`` backend: plain NumPy, the readable definition of every backend operation.

Each method is the formula of :class:`~sbnnumba.backends.base.Backend` evaluated directly: the PSA
flip propagation materializes ``Delta`` (B, N_in, N_out) (:mod:`sbnnumba.kernels.reference`, and for
convolutions the same on im2col patches, :mod:`sbnnumba.kernels.conv_reference`), the packed products
count bits word by word (the ``*_reference`` functions of :mod:`sbnnumba.kernels.bitpack`). Slow and
memory-hungry, exact up to float rounding: the truth the other backends are tested against
(``tests/test_backends.py``). ``form`` is validated and otherwise ignored (every form computes the
same sum; this backend always sums the exact differences).
"""
from __future__ import annotations

import numpy as np

from ..kernels import bitpack as kb
from ..kernels import conv_reference, reference
from ..kernels.cpu import choose_form
from ..validation import check_choice
from .base import Backend
from .registry import register_backend


def _check_form(form, noise):
    """Validate ``form`` as the kernels would; a family without kernel twins (only this backend runs it)
    has the generic form alone."""
    if noise.has_kernels:
        choose_form(form, noise.code)
    else:
        check_choice(form, "form", ("auto", "generic"))


class ReferenceBackend(Backend):
    """NumPy implementation of :class:`~sbnnumba.backends.base.Backend` (registered as ``"reference"``)."""

    name = "reference"

    def flip_propagate_dense(self, x_in, a, x_out, weight, d_out, noise, form="auto"):
        _check_form(form, noise)
        return reference.flip_propagate_dense(x_in, a, x_out, weight, d_out, noise)

    def flip_propagate_conv(self, x_in, a, x_out, weight, d_out, stride, padding, noise, form="auto"):
        _check_form(form, noise)
        return conv_reference.flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise)

    def sample_states(self, a, u, noise):
        a = np.asarray(a)
        return np.where(np.asarray(u) < noise.cdf(a), 1, -1).astype(a.dtype)

    def st_factor(self, a, noise):
        return noise.mean_grad(a)

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



register_backend(ReferenceBackend)
