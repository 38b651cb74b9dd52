r"""2-D convolution stages of an SBN (spec psa.md, section 2.10).

:class:`Conv2d` has the interface of :class:`~sbnnumba.layers.Linear`; maps are (B, C, H, W),
weights (C_out, C_in, kh, kw):

.. math::

    a[b, c, o_y, o_x] = \sum_{r, d_y, d_x} W[c, r, d_y, d_x]\;
    x_{pad}[b, r, s_h o_y + d_y, s_w o_x + d_x] + \mathrm{bias}[c],

with ``x_pad`` the input zero-padded by ``(ph, pw)``; ``H_out = (H + 2 ph - kh) // sh + 1`` and the
same along the width. Padded positions are constants 0: they never flip and receive no PSA ``d``.

The affine map, its transpose and the weight gradient are operations of the layer's backend
(:meth:`~sbnnumba.backends.step.StepOperations.conv_patches`, ``conv_forward``, ``conv_backward_input``,
``conv_param_grads``): on the host single BLAS GEMMs on the channel-major patch matrix ``cols``
(C_in * kh * kw, B * H_out * W_out), the transpose summed back by a Numba ``col2im``; on the ``cuda``
backend im2col, a tiled GEMM and col2im kernels on device arrays. The patch matrix is built once per
training step: :meth:`Conv2d.forward_saving` returns it with the pre-activations, the sampled path keeps
it (:class:`~sbnnumba.network.StageSample`) and :meth:`Conv2d.param_grads` takes it back. The
PSA flip propagation runs on the backend passed by the estimator (:mod:`sbnnumba.backends`: the Numba
kernel :mod:`sbnnumba.kernels.conv_cpu` for ``"cpu"``, the im2col + dense NumPy reference
:mod:`sbnnumba.kernels.conv_reference` for ``"reference"``, numba.cuda kernels for ``"cuda"``).
"""
from __future__ import annotations

import numpy as np

from .backends import get_backend
from .kernels import conv_reference
from .layers import AffineLayer, _uniform_fan_in, init_weight_kind
from .noise import get_noise
from .validation import as_generator, check_pair, check_positive_int
from .weights import RealWeights

__all__ = ["Conv2d"]


class Conv2d(AffineLayer):
    r"""Convolutional affine layer (cross-correlation, as in PyTorch) with stride and zero padding.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    kernel_size, stride : int or (int, int)
        Square or rectangular kernels of any (odd or even) size; any positive stride.
    padding : int or (int, int)
        Zero padding on both sides of each axis (``>= 0``).
    rng : None, int or numpy.random.Generator
        Initialization randomness; weights then biases ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
        ``fan_in = c_in * kh * kw`` (as :class:`~sbnnumba.layers.Linear` and PyTorch).
    dtype : float32 (default) or float64
    in_shape : (C, H, W), optional
        Per-example input shape, if known: the layer then accepts maps of this shape only (ValueError
        naming ``x`` for another). Otherwise the shape of the last :meth:`output_shape` or :meth:`forward`
        call is recorded (``out_shape`` and ``n_out`` need one).

    Attributes
    ----------
    weight_param : RealWeights or BernoulliWeights
        The weight parameterization (parameters ``"weight"`` or ``"eta"``).
    weight : ndarray (c_out, c_in, kh, kw)
        The weight tensor in use (see :class:`~sbnnumba.layers.AffineLayer`).
    bias : ndarray (c_out,)
    kernel_size, stride, padding : (int, int)
    in_shape : (int, int, int) or None
        The input shape given to the constructor, else the last one seen.
    fixed_in_shape : bool
        Whether ``in_shape`` was given to the constructor (then maps of another shape are refused).
    """

    #: Whether the layer was built for one input shape (``in_shape`` given): it refuses maps of another.
    fixed_in_shape = False

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0,
                 rng: np.random.Generator | int | None = None, dtype=np.float32,
                 in_shape: tuple[int, ...] | None = None, weight="real", weight_noise="logistic", weight_grad="md"):
        self.c_in = check_positive_int(c_in, "c_in")
        c_out = check_positive_int(c_out, "c_out")
        self.kernel_size = check_pair(kernel_size, "kernel_size", 1)
        self.stride = check_pair(stride, "stride", 1)
        self.padding = check_pair(padding, "padding", 0)
        kh, kw = self.kernel_size
        fan_in = self.c_in * kh * kw
        rng = as_generator(rng)
        self.weight_param = RealWeights(_uniform_fan_in(rng, (c_out, self.c_in, kh, kw), fan_in, dtype))
        self.bias = _uniform_fan_in(rng, (c_out,), fan_in, dtype)
        init_weight_kind(self, weight, weight_noise, weight_grad, rng)
        self.in_shape: tuple[int, ...] | None = None
        if in_shape is not None:
            self.output_shape(in_shape)
            self.fixed_in_shape = True

    # ------------------------------------------------------------------ shapes
    @property
    def c_out(self):
        return self.weight_shape[0]

    def output_shape(self, in_shape: tuple[int, ...]):
        """Per-example output shape (C_out, H_out, W_out) for inputs of shape ``in_shape`` = (C_in, H, W);
        records ``in_shape`` for :attr:`out_shape`. ValueError (naming ``x``) if the channels do not match,
        the padded map is smaller than the kernel, or the layer was built for another input shape
        (:attr:`fixed_in_shape`)."""
        in_shape = tuple(int(s) for s in in_shape)
        if self.fixed_in_shape and in_shape != self.in_shape:
            raise ValueError(f"x: {self!r} was built for maps of per-example shape {self.in_shape}, got shape "
                             f"{in_shape}")
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if len(in_shape) != 3 or in_shape[0] != self.c_in or in_shape[1] + 2 * ph < kh or in_shape[2] + 2 * pw < kw:
            raise ValueError(
                f"x: {self!r} expects maps of per-example shape ({self.c_in}, H, W) with H >= {max(kh - 2 * ph, 1)} "
                f"and W >= {max(kw - 2 * pw, 1)}, got shape {in_shape}")
        ho, wo = conv_reference.output_size(in_shape[1:], self.kernel_size, self.stride, self.padding)
        self.in_shape = in_shape
        return (self.c_out, ho, wo)

    @property
    def out_shape(self):
        """(C_out, H_out, W_out) for the last input shape seen (see ``in_shape``)."""
        if self.in_shape is None:
            raise ValueError(f"{self!r}: the output shape depends on the input shape; pass in_shape=(C, H, W) "
                             "to the constructor or call output_shape(in_shape) first")
        return self.output_shape(self.in_shape)

    def _check_map(self, x):
        if x.ndim != 4:
            raise ValueError(f"x: {self!r} expects a batch of maps (B, {self.c_in}, H, W), got shape {x.shape}")
        return self.output_shape(x.shape[1:])

    # ------------------------------------------------------------------ the four layer operations
    def _patches(self, x):
        """The backend's patch matrix of checked maps ``x`` and the output shape (B, C_out, H_out, W_out)."""
        out_shape = (x.shape[0],) + self._check_map(x)
        return self.backend.conv_patches(x, self.kernel_size, self.stride, self.padding), out_shape

    def forward(self, x: np.ndarray):
        """Pre-activations (B, C_out, H_out, W_out) of maps ``x`` (B, C_in, H, W)."""
        return self.forward_saving(x)[0]

    def forward_saving(self, x: np.ndarray):
        """Pre-activations and the patch matrix of ``x`` (:meth:`~sbnnumba.backends.step.StepOperations.conv_patches`),
        which :meth:`param_grads` takes as ``saved`` instead of building it again."""
        cols, out_shape = self._patches(self.backend.asarray(x))
        return self.backend.conv_forward(cols, self.weight, self.bias, out_shape), cols

    def backward_input(self, g_a: np.ndarray, in_shape: tuple[int, ...]):
        """Transposed convolution: ``g_x[b, r, i] = sum_{c, j ∋ i} W[c, r, off] g_a[b, c, j]``, shape
        ``(B, *in_shape)``; padded positions are dropped."""
        in_shape = tuple(in_shape)
        self.output_shape(in_shape)
        return self.backend.conv_backward_input(self.backend.asarray(g_a), self.weight, in_shape, self.stride,
                                                self.padding)

    def param_grads(self, x: np.ndarray, g_a: np.ndarray, saved=None):
        """``dW[c, r, dy, dx] = sum_{b, j} g_a[b, c, j] x_pad[b, r, s j + off]`` (shared weights: summed over
        positions and the batch), ``db[c] = sum_{b, j} g_a[b, c, j]``; ``saved``: the patch matrix of ``x``
        from :meth:`forward_saving` (None: built here)."""
        x, g_a = self.backend.asarray(x), self.backend.asarray(g_a)
        if saved is None:
            saved = self._patches(x)[0]
        else:
            self._check_map(x)
        g_w, g_b = self.backend.conv_param_grads(saved, g_a, self.weight_shape)
        return {"weight": g_w, "bias": g_b}

    def forward_moments(self, mean: np.ndarray, var: np.ndarray):
        """Moments of the pre-activation for independent inputs: ``mu_a = conv(mean) + b``,
        ``v_a = conv_{W^2}(var)`` (squared-kernel convolution, no bias; padding has variance 0)."""
        mean, var = self.backend.asarray(mean), self.backend.asarray(var)
        cols, out_shape = self._patches(var)
        v = self.backend.conv_forward(cols, self.weight ** 2, None, out_shape)
        return self.forward(mean), v

    def flip_propagate(self, x_in: np.ndarray, a: np.ndarray, x_out: np.ndarray, d_out: np.ndarray, noise,
                       backend="cpu", out_scale=None):
        r"""PSA flip propagation (spec psa.md, section 2.10); returns ``d_in`` with the shape of ``x_in``:

        ``d_in[b,r,i] = sum_c sum_{j : i in RF(j)} Delta[(r,i)->(c,j)] d_out[b,c,j]``,
        ``Delta = F(-x[c,j](a[c,j] - 2 W[c,r,off] x[r,i])) - F(-x[c,j] a[c,j])``.
        ``out_scale`` (c_out,) multiplies the kernel per output channel (a following normalization).
        """
        noise, arrays = get_noise(noise), self.backend  # the backend holding the layer's arrays (a property: read once)
        weight = self.weight if out_scale is None else \
            arrays.scale_rows(self.weight, arrays.asarray(out_scale, self.weight.dtype))
        x_in, a = arrays.asarray(x_in), arrays.asarray(a)
        self._check_map(x_in)
        d_out = arrays.asarray(d_out).reshape(a.shape)
        return get_backend(backend).flip_propagate_conv(x_in, a, x_out, weight, d_out, self.stride, self.padding,
                                                        noise)

    def __repr__(self):
        return (f"Conv2d({self.c_in}, {self.c_out}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding})")
