r"""Small numba.cuda kernels of the training-step operations (:mod:`sbnnumba.backends.step`) that
:mod:`.train_kernels` and :mod:`.kernels` do not already provide; launched by :mod:`.layer_ops`.

Flat arrays unless stated; 1-D launches over the output size. Per-channel tensors are viewed as
(B, C, P) like in :mod:`.train_kernels` (dense: P = 1). Nothing is compiled at import time.
"""
import math

from numba import cuda

from ...kernels.scalar import cdf


@cuda.jit
def fill(out, value):
    """``out[:] = value``."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = value


@cuda.jit
def multiply(a, b, out):
    """``out = a * b``."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = a[i] * b[i]


@cuda.jit
def moments(s1, s2, inv_n, mean, var):
    """Per-channel ``mean = s1 / n``, ``var = max(s2 / n - mean^2, 0)`` from float64 sums of ``z`` and ``z^2``."""
    c = cuda.grid(1)
    if c < mean.shape[0]:
        m = s1[c] * inv_n
        v = s2[c] * inv_n - m * m
        mean[c] = m
        var[c] = v if v > 0 else 0.0


@cuda.jit
def running_average(running, batch, momentum, out):
    """``out = (1 - momentum) running + momentum batch``."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = (1 - momentum) * running[i] + momentum * batch[i]


@cuda.jit
def inv_std(var, eps, out):
    """``out = 1 / sqrt(var + eps)``."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = 1.0 / math.sqrt(var[i] + eps)


@cuda.jit
def scale_channels(t, scale, n_ch, n_pos, out):
    """``out[b, c, p] = scale[c] t[b, c, p]`` (flat (B, C, P) tensors)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = scale[(i // n_pos) % n_ch] * t[i]


@cuda.jit
def flip_weights(code, x, a, w):
    """Rao-Blackwellization weights ``w[b, i] = F(-x[b, i] a[b, i]) / N_L`` ((B, N_L) arrays)."""
    idx = cuda.grid(1)
    n = x.shape[1]
    if idx < x.shape[0] * n:
        b = idx // n
        i = idx - b * n
        w[b, i] = cdf(code, -(x[b, i] * a[b, i])) / n


@cuda.jit
def rb_value(loss0, w, d, out):
    """``out[b] = loss0[b] + sum_i w[b, i] d[b, i]``; one thread per row."""
    b = cuda.grid(1)
    if b < out.shape[0]:
        acc = loss0[b]
        for i in range(w.shape[1]):
            acc += w[b, i] * d[b, i]
        out[b] = acc


@cuda.jit
def weighted_sum(weights, values, out):
    """``out[0] = sum_b weights[b] values[b]``; one thread (batches are small)."""
    if cuda.grid(1) == 0:
        acc = 0.0
        for b in range(values.shape[0]):
            acc += weights[b] * values[b]
        out[0] = acc
