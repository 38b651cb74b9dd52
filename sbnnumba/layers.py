r"""Affine layers of an SBN.

Each layer maps the previous stage's state (real input or +-1 samples) to pre-activations
and knows the four operations an estimator needs:

* ``forward(x) -> a``                        the affine map;
* ``backward_input(g_a, in_shape) -> g_x``   the transposed map (ordinary backprop);
* ``param_grads(x, g_a) -> dict``            the outer-product parameter gradients, summed over the batch;
* ``flip_propagate(x_in, a, x_out, d_out, noise, backend) -> d_in``
  the PSA flip propagation ``d_in = sum_j Delta_ij d_out_j`` (spec psa.md, Eq. 3), run by the
  :class:`~sbnnumba.backends.Backend` ``backend``;
* ``forward_moments(mean, var) -> (mu_a, v_a)`` pre-activation moments of independent inputs,
  ``mu_a = W mu + b``, ``v_a = W^2 v`` (for the ADF / local-reparameterization baselines).

Inputs of a dense layer may have any trailing shape whose size is ``n_in``: a conv map
(B, C, H, W) is flattened in (C, H, W) order automatically.
"""
from __future__ import annotations

import numpy as np

from .backends import get_backend
from .noise import get_noise
from .validation import as_generator, check_positive_int


class Layer:
    """Base class: parameters are the attributes named in ``param_names``.

    ``latent`` is None for real weights, or a :class:`~sbnnumba.weights.BernoulliWeights` when the
    layer has stochastic binary weights (then ``eta`` is the parameter and ``weight`` the current sample).
    """

    param_names = ("weight", "bias")
    latent = None

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


def init_weight_kind(layer, weight, weight_noise, weight_grad, rng):
    """Apply the ``weight="real" | "bernoulli"`` constructor option of a layer."""
    if weight == "bernoulli":
        from .weights import make_bernoulli

        make_bernoulli(layer, noise=weight_noise, grad=weight_grad, rng=rng)
    elif weight != "real":
        raise ValueError(f"weight: expected 'real' or 'bernoulli', got {weight!r}")


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

    weight : {"real", "bernoulli"}
        ``"bernoulli"``: stochastic binary weights ``w = sign(eta - Z')`` with latent ``eta ~ U[-1, 1]``
        (see :mod:`sbnnumba.weights`), noise ``weight_noise`` and gradient rule ``weight_grad``.

    Attributes
    ----------
    weight : ndarray (n_out, n_in)
        Real weights, or the current +-1 sample of Bernoulli weights.
    eta : ndarray (n_out, n_in)
        Latent weights (Bernoulli weights only).
    bias : ndarray (n_out,)
    """

    def __init__(self, n_in, n_out, rng=None, dtype=np.float32, weight="real", weight_noise="logistic",
                 weight_grad="md"):
        self.n_in = check_positive_int(n_in, "n_in")
        n_out = check_positive_int(n_out, "n_out")
        rng = as_generator(rng)
        self.weight = _uniform_fan_in(rng, (n_out, self.n_in), self.n_in, dtype)
        self.bias = _uniform_fan_in(rng, (n_out,), self.n_in, dtype)
        init_weight_kind(self, weight, weight_noise, weight_grad, rng)

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

    def flip_propagate(self, x_in, a, x_out, d_out, noise, backend="cpu", out_scale=None):
        """PSA flip propagation; returns ``d_in`` with the shape of ``x_in``.

        ``backend`` is a :class:`~sbnnumba.backends.Backend` or its name. ``out_scale`` (n_out,)
        multiplies the weights per output unit (a following normalization with fixed statistics
        scales the pre-activation change of a flip by it).
        """
        noise = get_noise(noise)
        x2 = self._flat(x_in)
        weight = self.weight if out_scale is None else self.weight * out_scale[:, None].astype(self.weight.dtype)
        d_in = get_backend(backend).flip_propagate_dense(x2, a, x_out, weight, d_out, noise)
        return d_in.reshape(x_in.shape)

    def __repr__(self):
        return f"Linear({self.n_in}, {self.weight.shape[0]})"
