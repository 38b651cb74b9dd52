r"""The training-step operations (:mod:`sbnnumba.backends.step`) on device arrays: kernel launches.

One function per operation of :class:`~sbnnumba.backends.step.StepOperations`, same arguments and
results, every array a numba device array (C-contiguous, the working dtype float32 or float64) and
every result a new device array; nothing is uploaded or downloaded except by the two transfer
operations ``to_host`` / ``to_device_of`` (the small per-channel sums of data-parallel batch norm).
:class:`~sbnnumba.backends.cuda.CudaBackend` calls them for device operands and hands host operands to
the host backend. The kernels are those of
:mod:`.train_kernels` (GEMM, im2col / col2im, head, batch normalization, latent weights), of
:mod:`.kernels` (row sums) and the small ones of :mod:`.layer_kernels`:

==========================  =================================================================================
dense                       ``gemm`` (``x W^T``, ``g W``, ``g^T x``), ``add_bias``, ``column_sum``
conv                        ``im2col_rows`` (the patches, once per stage and step); ``gemm`` -> ``rows_to_map``;
                            ``map_to_rows`` -> ``gemm`` -> ``col2im_gather``; ``gemm`` of ``g_rows^T cols``
batch normalization         ``channel_sums_kernel`` (deterministic block reductions, float64) -> ``moments`` /
                            ``scale_copy``; ``inv_std`` -> ``bn_apply``; ``bn_backward``, ``scale_channels``
head                        ``xent_rows``, ``head_flips``, ``flip_weights``, ``sum_axis1`` -> ``rb_mix``,
                            ``rb_value``, ``rb_head_correction``
==========================  =================================================================================

Numba's simulator runs every thread of a launch as a Python thread, so there the 1-D launches use
blocks of 32 threads and the GEMM tiles of 4 x 4 (any block size computes the same result; the PTX
checks compile the device configuration).
"""
from __future__ import annotations

import functools

import numpy as np

from ..registry import host_backend
from ..step import StepOperations
from . import device as cb


def _cuda():
    from numba import cuda
    return cuda


def _threads_1d():
    """Threads per block of the 1-D launches (32 in the simulator, :data:`.kernels.THREADS_1D` on a device)."""
    from . import kernels as k
    return 32 if cb.in_simulator() else k.THREADS_1D


def launch(kernel, n, *args):
    """Launch a 1-D kernel over ``n`` threads (nothing when ``n`` is 0).

    Parameters
    ----------
    kernel : numba.cuda kernel
    n : int
        Threads needed (the kernel ignores those past its size).
    *args
        The kernel's arguments.

    Returns
    -------
    None
    """
    if n > 0:
        threads = _threads_1d()
        kernel[cb.blocks(n, threads), threads](*args)


def _reduce_threads():
    from . import train_kernels as kt
    return 32 if cb.in_simulator() else kt.REDUCE_THREADS


def empty(shape, dtype):
    """An uninitialized device array.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype

    Returns
    -------
    device array
    """
    return _cuda().device_array(tuple(int(n) for n in shape), dtype=np.dtype(dtype))


def full(n, value, dtype):
    """A device vector filled by a kernel (no upload).

    Parameters
    ----------
    n : int
    value : float
    dtype : numpy dtype

    Returns
    -------
    device array (n,)
    """
    from . import layer_kernels as lk
    out = empty((n,), dtype)
    launch(lk.fill, n, out, np.dtype(dtype).type(value))
    return out


def flat2(t):
    """A (R, ...) device array as a (R, prod(...)) view.

    Parameters
    ----------
    t : C-contiguous device array (R, ...)

    Returns
    -------
    device array (R, prod(...))
    """
    return t if len(t.shape) == 2 else t.reshape(t.shape[0], int(np.prod(t.shape[1:])))


def gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0):
    """``c = alpha op(a) op(b)`` with the tiled GEMM :func:`.gemm.gemm` (``op``: identity or transpose).

    Parameters
    ----------
    a, b : 2-D device arrays
        ``op(a)`` (M, K), ``op(b)`` (K, N); stored transposed where ``trans_a`` / ``trans_b``.
    c : 2-D device array (M, N)
        Written (not read).
    trans_a, trans_b : bool
    alpha : float

    Returns
    -------
    None
    """
    from .gemm import gemm as tiled_gemm
    tiled_gemm(a, b, c, bool(trans_a), bool(trans_b), alpha)


def _geometry(kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    return int(kh), int(kw), int(sh), int(sw), int(ph), int(pw)


def _out_hw(hw, kernel_size, stride, padding):
    kh, kw, sh, sw, ph, pw = _geometry(kernel_size, stride, padding)
    return (hw[0] + 2 * ph - kh) // sh + 1, (hw[1] + 2 * pw - kw) // sw + 1


def _im2col(x, kernel_size, stride, padding):
    """Patch rows (B H_out W_out, C kh kw) of a (B, C, H, W) map (:func:`.train_kernels.im2col_rows`)."""
    from . import train_kernels as kt
    kh, kw, sh, sw, ph, pw = _geometry(kernel_size, stride, padding)
    ho, wo = _out_hw(x.shape[2:], kernel_size, stride, padding)
    cols = empty((x.shape[0] * ho * wo, x.shape[1] * kh * kw), x.dtype)
    launch(kt.im2col_rows, cols.size, x, kh, kw, sh, sw, ph, pw, cols)
    return cols


def _to_rows(t):
    """(B, C, H, W) map -> GEMM rows (B H W, C) (:func:`.train_kernels.map_to_rows`)."""
    from . import train_kernels as kt
    rows = empty((t.shape[0] * t.shape[2] * t.shape[3], t.shape[1]), t.dtype)
    launch(kt.map_to_rows, t.size, t, rows)
    return rows


def _channels(t):
    """(B, C, P) of a dense (B, C) or conv (B, C, H, W) tensor."""
    return int(t.shape[0]), int(t.shape[1]), int(np.prod(t.shape[2:]))


def _sums64(t, u):
    """Per-channel float64 sums ``(sum t, sum t u)`` (:func:`.train_kernels.channel_sums_kernel`)."""
    from . import train_kernels as kt
    n_batch, n_ch, n_pos = _channels(t)
    s1, s2 = empty((n_ch,), np.float64), empty((n_ch,), np.float64)
    threads = _reduce_threads()
    kt.channel_sums_kernel(threads)[n_ch, threads](cb.flat(t), cb.flat(u), n_batch, n_ch, n_pos, s1, s2)
    return s1, s2


def _device_or_host(method):
    """Run ``method`` when an argument is a device array, else the host backend's operation of that name."""
    name = method.__name__

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if cb.any_device(*args):
            return method(self, *args, **kwargs)
        return getattr(host_backend(), name)(*args, **kwargs)

    return run


class DeviceStepOperations(StepOperations):
    """The training-step operations of the ``cuda`` backend (a base class of
    :class:`~sbnnumba.backends.cuda.CudaBackend`): kernels on device operands; host operands go to the host
    backend (:func:`sbnnumba.backends.host_backend`), so a host network on the ``cuda`` backend keeps its
    layers on the host. The signatures and results are those of
    :class:`~sbnnumba.backends.step.StepOperations`.
    """

    # -- dense --------------------------------------------------------------------------------------------

    @_device_or_host
    def dense_forward(self, x, weight, bias):
        from . import train_kernels as kt
        a = empty((x.shape[0], weight.shape[0]), x.dtype)
        gemm(x, weight, a, trans_b=True)
        launch(kt.add_bias, a.size, a, bias)
        return a

    @_device_or_host
    def dense_backward_input(self, g_a, weight):
        out = empty((g_a.shape[0], weight.shape[1]), g_a.dtype)
        gemm(g_a, weight, out)
        return out

    @_device_or_host
    def dense_param_grads(self, x, g_a):
        from . import train_kernels as kt
        g_w = empty((g_a.shape[1], x.shape[1]), g_a.dtype)
        gemm(g_a, x, g_w, trans_a=True)
        g_b = empty((g_a.shape[1],), g_a.dtype)
        launch(kt.column_sum, g_a.shape[1], g_a, np.dtype(g_a.dtype).type(1), g_b)
        return g_w, g_b

    # -- convolution --------------------------------------------------------------------------------------

    @_device_or_host
    def conv_patches(self, x, kernel_size, stride, padding):
        return _im2col(x, kernel_size, stride, padding)

    @_device_or_host
    def conv_forward(self, cols, weight, bias, out_shape):
        from . import train_kernels as kt
        rows = empty((cols.shape[0], weight.shape[0]), cols.dtype)
        gemm(cols, flat2(weight), rows, trans_b=True)
        a = empty(tuple(int(n) for n in out_shape), cols.dtype)
        use_bias = bias is not None
        launch(kt.rows_to_map, a.size, rows, bias if use_bias else empty((1,), cols.dtype), use_bias, a)
        return a

    @_device_or_host
    def conv_backward_input(self, g_a, weight, in_shape, stride, padding):
        from . import train_kernels as kt
        kh, kw, sh, sw, ph, pw = _geometry(weight.shape[2:], stride, padding)
        g_rows = _to_rows(g_a)
        d_cols = empty((g_rows.shape[0], int(np.prod(weight.shape[1:]))), g_a.dtype)
        gemm(g_rows, flat2(weight), d_cols)
        out = empty((g_a.shape[0],) + tuple(in_shape), g_a.dtype)
        launch(kt.col2im_gather, out.size, d_cols, kh, kw, sh, sw, ph, pw, out)
        return out

    @_device_or_host
    def conv_param_grads(self, cols, g_a, weight_shape):
        from . import train_kernels as kt
        g_rows = _to_rows(g_a)
        g_w = empty((g_a.shape[1], cols.shape[1]), g_a.dtype)
        gemm(g_rows, cols, g_w, trans_a=True)
        g_b = empty((g_a.shape[1],), g_a.dtype)
        launch(kt.column_sum, g_rows.shape[1], g_rows, np.dtype(g_a.dtype).type(1), g_b)
        return g_w.reshape(tuple(int(n) for n in weight_shape)), g_b

    # -- batch normalization ------------------------------------------------------------------------------

    @_device_or_host
    def channel_moments(self, z):
        from . import layer_kernels as lk
        n_batch, n_ch, n_pos = _channels(z)
        s1, s2 = _sums64(z, z)
        mean, var = empty((n_ch,), z.dtype), empty((n_ch,), z.dtype)
        launch(lk.moments, n_ch, s1, s2, 1.0 / (n_batch * n_pos), mean, var)
        return mean, var

    @_device_or_host
    def running_average(self, running, batch, momentum):
        from . import layer_kernels as lk
        out = empty(running.shape, running.dtype)
        launch(lk.running_average, out.size, running, batch, np.dtype(running.dtype).type(momentum), out)
        return out

    @_device_or_host
    def normalize(self, z, mean, var, gamma, beta, eps):
        from . import layer_kernels as lk
        from . import train_kernels as kt
        _, n_ch, n_pos = _channels(z)
        inv = empty((n_ch,), z.dtype)
        launch(lk.inv_std, n_ch, var, float(eps), inv)
        z_hat, a = empty(z.shape, z.dtype), empty(z.shape, z.dtype)
        launch(kt.bn_apply, z.size, cb.flat(z), mean, inv, gamma, beta, n_ch, n_pos, cb.flat(z_hat), cb.flat(a))
        return a, z_hat, inv

    @_device_or_host
    def channel_sums(self, t, u):
        from . import train_kernels as kt
        s1, s2 = _sums64(t, u)
        out = tuple(empty(s.shape, t.dtype) for s in (s1, s2))
        for src, dst in zip((s1, s2), out):
            launch(kt.scale_copy, dst.size, src, 1.0, dst)
        return out

    @_device_or_host
    def channel_sums64(self, t, u):
        return _sums64(t, u)

    @_device_or_host
    def normalize_backward(self, g_a, z_hat, scale, sums, n):
        from . import layer_kernels as lk
        from . import train_kernels as kt
        _, n_ch, n_pos = _channels(g_a)
        g_z = empty(g_a.shape, g_a.dtype)
        if sums is None:
            launch(lk.scale_channels, g_a.size, cb.flat(g_a), scale, n_ch, n_pos, cb.flat(g_z))
        else:
            launch(kt.bn_backward, g_a.size, cb.flat(g_a), cb.flat(z_hat), sums[0], sums[1], scale, 1.0 / float(n),
                   n_ch, n_pos, cb.flat(g_z))
        return g_z

    # -- Bernoulli weights --------------------------------------------------------------------------------

    @_device_or_host
    def latent_grad(self, eta, g_w, noise, rule):
        from . import train_kernels as kt
        out = empty(eta.shape, eta.dtype)
        launch(kt.latent_grad, out.size, int(noise.code), rule == "md", cb.flat(eta), cb.flat(g_w), cb.flat(out))
        return out

    @_device_or_host
    def clip_(self, x, bound):
        from . import train_kernels as kt
        launch(kt.clip_values, x.size, cb.flat(x), np.dtype(x.dtype).type(bound))

    # -- head and loss ------------------------------------------------------------------------------------

    @_device_or_host
    def softmax_xent(self, logits, y):
        from . import train_kernels as kt
        if logits.shape[1] < 2:
            raise NotImplementedError("logits: the cuda backend's cross-entropy needs K >= 2 classes (a softmax head); "
                                      "1-logit heads run on the host")
        loss, g = empty((logits.shape[0],), logits.dtype), empty(logits.shape, logits.dtype)
        launch(kt.xent_rows, logits.shape[0], logits, y, loss, g)
        return loss, g

    @_device_or_host
    def head_flips(self, logits, y, x_last, v, loss0):
        from . import train_kernels as kt
        n_batch, n_last = x_last.shape
        d = empty((n_batch, n_last), logits.dtype)
        g_flip = empty((n_batch, n_last, logits.shape[1]), logits.dtype)
        launch(kt.head_flips, n_batch * n_last, logits, y, x_last, v, loss0, d, g_flip)
        return d, g_flip

    @_device_or_host
    def rb_flip_weights(self, x_last, a_last, noise):
        from . import layer_kernels as lk
        w = empty(x_last.shape, a_last.dtype)
        launch(lk.flip_weights, w.size, int(noise.code), x_last, a_last, w)
        return w

    @_device_or_host
    def rb_mix(self, w, q0, q_flip):
        from . import kernels as k
        from . import train_kernels as kt
        n_batch, n_last = w.shape
        w_sum = empty((n_batch, 1), w.dtype)
        launch(k.sum_axis1, n_batch, w.reshape(n_batch, n_last, 1), w_sum)
        out = empty(q0.shape, q0.dtype)
        launch(kt.rb_mix, out.size, q0, q_flip, w, w_sum.reshape(n_batch), np.dtype(q0.dtype).type(1), out)
        return out

    @_device_or_host
    def rb_value(self, loss0, w, d):
        from . import layer_kernels as lk
        out = empty(loss0.shape, loss0.dtype)
        launch(lk.rb_value, out.size, loss0, w, d, out)
        return out

    @_device_or_host
    def rb_head_grads(self, g_eta, g_flip, w, x_last, weights):
        from . import train_kernels as kt
        g_mix = self.scale_rows(self.rb_mix(w, g_eta, g_flip), weights)
        dv, dc = self.dense_param_grads(x_last, g_mix)
        launch(kt.rb_head_correction, dv.size, g_flip, self.scale_rows(w, weights), x_last,
               np.dtype(dv.dtype).type(1), dv)
        return dv, dc

    @_device_or_host
    def psa_rb_head(self, logits, y, x_last, v, loss0, g_eta, w, weights):
        # the composition of the kernels above on device arrays; host arrays get the host backend's (factored) form
        return super().psa_rb_head(logits, y, x_last, v, loss0, g_eta, w, weights)

    # -- element-wise, bookkeeping ------------------------------------------------------------------------

    @_device_or_host
    def multiply(self, a, b):
        from . import layer_kernels as lk
        out = empty(a.shape, a.dtype)
        launch(lk.multiply, out.size, cb.flat(a), cb.flat(b), cb.flat(out))
        return out

    @_device_or_host
    def scale_rows(self, t, scale):
        from . import train_kernels as kt
        out = empty(t.shape, t.dtype)
        t2 = flat2(t)
        launch(kt.scale_rows, t2.size, t2, scale, flat2(out))
        return out

    @_device_or_host
    def weighted_sum(self, weights, values):
        from . import layer_kernels as lk
        out = empty((1,), values.dtype)
        launch(lk.weighted_sum, 1, weights, values, out)
        return out

    @_device_or_host
    def asarray(self, x, dtype=None):
        if dtype is not None and np.dtype(x.dtype) != np.dtype(dtype):
            raise TypeError(f"x: expected a device array of dtype {np.dtype(dtype)}, got {np.dtype(x.dtype)} "
                            "(device arrays are not converted)")
        return x

    @_device_or_host
    def loss_scalar(self, value):
        return value

    @_device_or_host
    def to_host(self, x):
        return cb.to_host(x)

    @_device_or_host
    def to_device_of(self, x, like):
        return cb.to_device(x)
