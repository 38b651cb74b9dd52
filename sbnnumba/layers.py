r"""Affine layers of an SBN.

Each layer maps the previous stage's state (real input or +-1 samples) to pre-activations
and knows the four operations an estimator needs:

* ``forward(x) -> a``                        the affine map;
* ``backward_input(g_a, in_shape) -> g_x``   the transposed map (ordinary backprop);
* ``param_grads(x, g_a) -> dict``            the outer-product parameter gradients, summed over the batch;
* ``flip_propagate(x_in, a, x_out, d_out, noise, backend) -> d_in``
  the PSA flip propagation ``d_in = sum_j Delta_ij d_out_j`` (spec psa.md, Eq. 3);
* ``forward_moments(mean, var) -> (mu_a, v_a)`` pre-activation moments of independent inputs,
  ``mu_a = W mu + b``, ``v_a = W^2 v`` (for the ADF / local-reparameterization baselines).

Inputs of a dense layer may have any trailing shape whose size is ``n_in``: a conv map
(B, C, H, W) is flattened in (C, H, W) order automatically.
"""
from __future__ import annotations

import numpy as np

from .kernels import cpu, reference
from .noise import get_noise
from .validation import as_generator, check_positive_int

BACKENDS = ("cpu", "numpy", "cuda")


class Layer:
    """Base class: parameters are the attributes named in ``param_names``."""

    param_names = ("weight", "bias")

    def params(self):
        """Dict name -> array of this layer's parameters (the arrays themselves, not copies)."""
        return {name: getattr(self, name) for name in self.param_names}

    @property
    def n_out(self):
        return int(np.prod(self.out_shape))

    def rescale_(self, mean, std):
        """Normalize pre-activations in place: ``W <- W / s``, ``b <- (b - m) / s`` per output unit/channel."""
        shape = (-1,) + (1,) * (self.weight.ndim - 1)
        self.weight /= std.reshape(shape).astype(self.weight.dtype)
        self.bias[...] = ((self.bias - mean) / std).astype(self.bias.dtype)


def _uniform_fan_in(rng, shape, fan_in, dtype):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Layer):
    r"""Dense affine layer ``a = x W^T + b``.

    Parameters
    ----------
    n_in, n_out : int
    rng : None, int or numpy.random.Generator
        Initialization randomness. Default init (as PyTorch, used by the PSA paper):
        weights and biases ``~ U(-1/sqrt(n_in), 1/sqrt(n_in))``.
    dtype : float32 (default) or float64

    Attributes
    ----------
    weight : ndarray (n_out, n_in)
    bias : ndarray (n_out,)
    """

    def __init__(self, n_in, n_out, rng=None, dtype=np.float32):
        self.n_in = check_positive_int(n_in, "n_in")
        n_out = check_positive_int(n_out, "n_out")
        rng = as_generator(rng)
        self.weight = _uniform_fan_in(rng, (n_out, self.n_in), self.n_in, dtype)
        self.bias = _uniform_fan_in(rng, (n_out,), self.n_in, dtype)

    @property
    def out_shape(self):
        return (self.weight.shape[0],)

    def output_shape(self, in_shape):
        if int(np.prod(in_shape)) != self.n_in:
            raise ValueError(f"x: a Linear({self.n_in}, {self.weight.shape[0]}) layer expects {self.n_in} "
                             f"input features per example, got shape {tuple(in_shape)}")
        return self.out_shape

    def _flat(self, x):
        x2 = x.reshape(x.shape[0], -1)
        if x2.shape[1] != self.n_in:
            self.output_shape(x.shape[1:])
        return x2

    def forward(self, x):
        return self._flat(x) @ self.weight.T + self.bias

    def backward_input(self, g_a, in_shape):
        return (g_a @ self.weight).reshape((g_a.shape[0],) + tuple(in_shape))

    def forward_moments(self, mean, var):
        return self.forward(mean), self._flat(var) @ (self.weight ** 2).T

    def param_grads(self, x, g_a):
        return {"weight": g_a.T @ self._flat(x), "bias": g_a.sum(axis=0)}

    def flip_propagate(self, x_in, a, x_out, d_out, noise, backend="cpu"):
        """PSA flip propagation; returns ``d_in`` with the shape of ``x_in``."""
        noise = get_noise(noise)
        x2 = self._flat(x_in)
        if backend == "cpu":
            d_in = cpu.flip_propagate_dense(x2, a, x_out, self.weight, d_out, noise.code)
        elif backend == "numpy":
            d_in = reference.flip_propagate_dense(x2, a, x_out, self.weight, d_out, noise)
        elif backend == "cuda":
            from .kernels import cuda_backend
            d_in = cuda_backend.flip_propagate_dense(x2, a, x_out, self.weight, d_out, noise.code)
        else:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        return d_in.reshape(x_in.shape)

    def __repr__(self):
        return f"Linear({self.n_in}, {self.weight.shape[0]})"
