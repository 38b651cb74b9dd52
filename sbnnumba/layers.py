r"""The layer interface of an SBN and its dense affine layer.

Every stage type implements :class:`Layer`, an abstract base class; the operations an estimator needs:

* ``forward(x) -> a``                        the affine map;
* ``backward_input(g_a, in_shape) -> g_x``   the transposed map (ordinary backprop);
* ``forward_saving(x) -> (a, saved)``        the affine map and what ``param_grads`` can reuse of it
  (a convolution's patch matrix, built once per step; None for a dense layer);
* ``param_grads(x, g_a, saved=None) -> dict`` the outer-product parameter gradients, summed over the batch
  (``"weight"`` is ``dL/dw`` at the weights in use; :meth:`Network.finalize_grads` maps it to the
  parameterization's own gradients);
* ``flip_propagate(x_in, a, x_out, d_out, noise, backend) -> d_in``
  the PSA flip propagation ``d_in = sum_j Delta_ij d_out_j`` (spec psa.md, Eq. 3), run by the
  :class:`~sbnnumba.backends.Backend` ``backend``;
* ``forward_moments(mean, var) -> (mu_a, v_a)`` pre-activation moments of independent inputs,
  ``mu_a = W mu + b``, ``v_a = W^2 v`` (for the ADF / local-reparameterization baselines);
* ``output_shape(in_shape)`` / ``out_shape``, ``params()``, ``rescale_(mean, std)``;
* ``inner`` (the :class:`AffineLayer` holding the weights: the layer itself, or the wrapped layer of a
  wrapper) and ``normalization`` (the :class:`~sbnnumba.normalization.Normalized` wrapper or None);
* ``with_weight(w)``: a view of the layer computing with the weight tensor ``w`` (a sampled Bernoulli
  weight), sharing everything else; the layer itself is unchanged;
* ``backend`` and ``on_backend(backend, convert)``: the :class:`~sbnnumba.backends.Backend` that holds the
  layer's arrays and runs its array operations (the training-step operations of
  :mod:`sbnnumba.backends.step`: affine maps, their gradients, batch normalization, the latent-weight
  rule), and a copy of the layer whose arrays are ``convert(array)`` on another backend. Host layers
  run on the host backend (:func:`sbnnumba.backends.host_backend`); the device-resident training step
  trains a copy on the ``cuda`` backend (:class:`sbnnumba.training.resident.CudaTrainer`), so the
  forward and backward rules of a layer are written once, for both.

Inputs of a dense layer may have any trailing shape whose size is ``n_in``: a conv map
(B, C, H, W) is flattened in (C, H, W) order automatically.
"""
from __future__ import annotations

import abc
import copy
import math
from typing import Any, Callable

import numpy as np

from .backends import get_backend, host_backend
from .noise import get_noise
from .validation import as_generator, check_positive_int
from .weights import RealWeights, make_bernoulli


class Layer(abc.ABC):
    """The interface of every stage type (affine layers and wrappers); see the module docstring."""

    @abc.abstractmethod
    def forward(self, x: np.ndarray):
        """Pre-activations (B, ...) of inputs ``x`` (B, ...)."""

    @abc.abstractmethod
    def backward_input(self, g_a: np.ndarray, in_shape: tuple[int, ...]):
        """``dL/dx``, shape ``(B, *in_shape)``, from ``g_a = dL/da``."""

    def forward_saving(self, x: np.ndarray):
        """``(forward(x), saved)``: the pre-activations and the forward values :meth:`param_grads` can take back
        as ``saved`` instead of computing them again (a convolution's patch matrix). This default saves
        nothing (None)."""
        return self.forward(x), None

    @abc.abstractmethod
    def param_grads(self, x: np.ndarray, g_a: np.ndarray, saved=None):
        """name -> gradient summed over the batch (``"weight"``: ``dL/dw`` at the weights in use); ``saved``:
        what :meth:`forward_saving` returned for ``x``, or None."""

    @abc.abstractmethod
    def flip_propagate(self, x_in: np.ndarray, a: np.ndarray, x_out: np.ndarray, d_out: np.ndarray, noise,
                       backend="cpu"):
        """PSA flip propagation ``d_in`` (the shape of ``x_in``)."""

    @abc.abstractmethod
    def forward_moments(self, mean: np.ndarray, var: np.ndarray):
        """``(mu_a, v_a)`` of independent inputs with means ``mean`` and variances ``var``."""

    @abc.abstractmethod
    def output_shape(self, in_shape: tuple[int, ...]):
        """Per-example output shape for per-example inputs of shape ``in_shape`` (ValueError naming ``x``)."""

    @property
    @abc.abstractmethod
    def out_shape(self):
        """Per-example output shape."""

    @abc.abstractmethod
    def params(self) -> dict[str, np.ndarray]:
        """name -> parameter array (the arrays themselves, updated in place by optimizers)."""

    @abc.abstractmethod
    def rescale_(self, mean: np.ndarray, std: np.ndarray):
        """Normalize pre-activations: ``a -> (a - mean) / std`` per output unit/channel. Returns the layer to
        propagate with (a view with scaled weights where the weights cannot be scaled in place)."""

    @abc.abstractmethod
    def with_weight(self, weight: np.ndarray) -> Layer:
        """A view computing with the weight tensor ``weight``; the layer is unchanged."""

    @property
    @abc.abstractmethod
    def inner(self):
        """The :class:`AffineLayer` that holds the weights."""

    @property
    @abc.abstractmethod
    def normalization(self):
        """The normalization wrapper of this stage, or None."""

    @abc.abstractmethod
    def on_backend(self, backend, convert: Callable[[np.ndarray], Any]) -> Layer:
        """A copy of this layer whose arrays (parameters, running statistics) are ``convert(array)`` and whose
        array operations run on ``backend``; the layer itself is unchanged."""

    @property
    def backend(self):
        """The :class:`~sbnnumba.backends.Backend` holding this layer's arrays (that of :attr:`inner`)."""
        return self.inner.backend

    @property
    def param_names(self):
        return tuple(self.params())

    @property
    def latent(self):
        """The :class:`~sbnnumba.weights.BernoulliWeights` of the inner layer, or None for real weights."""
        param = self.inner.weight_param
        return param if param.stochastic else None

    @property
    def n_out(self):
        return int(math.prod(self.out_shape))


class AffineLayer(Layer):
    """Base of the layers holding a weight tensor and a bias: ``a = W * x + b``.

    The weight tensor in use (:attr:`weight`) is the parameterization's deterministic weight
    (:meth:`~sbnnumba.weights.WeightParameterization.mode`), or the tensor of a :meth:`with_weight`
    view; ``bias`` is a real parameter.
    """

    weight_param: Any = None
    bias: np.ndarray  # set by the subclass's constructor
    _weight_override: np.ndarray | None = None
    _backend = None  # None: the host backend (a device copy made by on_backend sets its own)

    @property
    def weight(self):
        """The weight tensor this layer (or view) computes with."""
        return self.weight_param.mode() if self._weight_override is None else self._weight_override

    @property
    def backend(self):
        """The :class:`~sbnnumba.backends.Backend` holding this layer's arrays: the host backend, or the one
        of a copy made by :meth:`on_backend`."""
        return host_backend() if self._backend is None else self._backend

    def positions(self, out_shape: tuple[int, ...]) -> int:
        """Output positions per output unit (channel) for the per-example output shape ``out_shape``: 1 for a dense
        layer, ``H_out W_out`` for a conv layer (each position computes with the whole weight tensor once)."""
        return int(np.prod(out_shape)) // self.weight_shape[0]

    def on_backend(self, backend, convert: Callable[[np.ndarray], Any]) -> Layer:
        """A copy computing on ``backend`` with the arrays ``convert(array)`` (weight parameterization, bias and
        the weight of a :meth:`with_weight` view); e.g. the device copy of the device-resident step.

        Parameters
        ----------
        backend : Backend
        convert : callable
            ``array -> array`` on ``backend``.

        Returns
        -------
        AffineLayer
        """
        view = copy.copy(self)
        view._backend = backend
        view.weight_param = self.weight_param.converted(convert)
        view.bias = convert(self.bias)
        if self._weight_override is not None:
            view._weight_override = convert(self._weight_override)
        return view

    def weight_grads(self, g_w: np.ndarray):
        """The gradients of the weight parameterization's arrays from ``g_w = dL/dw`` at the weights in use.

        Parameters
        ----------
        g_w : array, the shape of the weight tensor

        Returns
        -------
        dict
            name -> gradient (``"weight"``, or ``"eta"`` for Bernoulli weights), on :attr:`backend`.
        """
        return self.weight_param.grads(g_w, self.backend)

    def project_(self) -> None:
        """The weight parameterization's constraint projection after an optimizer step, on :attr:`backend`."""
        self.weight_param.project_(self.backend)

    @property
    def weight_shape(self):
        """Shape of the weight tensor (that of the parameterization's arrays)."""
        return self.weight_param.shape

    def set_weight_param(self, param: Any) -> None:
        """Install a weight parameterization (e.g. :class:`~sbnnumba.weights.BernoulliWeights`)."""
        self.weight_param = param

    def params(self) -> dict[str, np.ndarray]:
        return {**self.weight_param.params(), "bias": self.bias}

    def with_weight(self, weight: np.ndarray) -> Layer:
        view = copy.copy(self)
        view._weight_override = weight
        return view

    @property
    def inner(self):
        return self

    @property
    def normalization(self):
        return None

    def rescale_(self, mean: np.ndarray, std: np.ndarray):
        """``W <- W / s`` (real weights, in place), ``b <- (b - m) / s`` per output unit/channel. Bernoulli
        weights cannot be scaled: the returned view computes with ``sign(eta) / s`` (data-dependent
        initialization propagates through it, as through scaled real weights)."""
        shape = (-1,) + (1,) * (self.weight.ndim - 1)
        self.bias[...] = ((self.bias - mean) / std).astype(self.bias.dtype)
        if self.weight_param.stochastic:
            return self.with_weight(self.weight / std.reshape(shape).astype(self.weight.dtype))
        self.weight_param.weight /= std.reshape(shape).astype(self.weight.dtype)
        return self


#: The defaults of the Bernoulli-weight options (``weight_noise``, ``weight_grad``) of the layers and builders.
BERNOULLI_DEFAULTS = {"weight_noise": "logistic", "weight_grad": "md"}


def check_weight_options(kinds, weight_noise, weight_grad) -> list[dict]:
    """The Bernoulli-weight options, refused where no stage has Bernoulli weights and they are not the defaults
    (they would have no effect; as ``bn_gamma`` without ``normalize``).

    Parameters
    ----------
    kinds : sequence of str
        The weight kind of each stage the options are for (``"real"`` or ``"bernoulli"``).
    weight_noise : str or NoiseFamily
        Noise of the Bernoulli weights (default ``"logistic"``).
    weight_grad : str
        Gradient rule of the Bernoulli weights (default ``"md"``).

    Returns
    -------
    list of dict
        Per stage, the keywords of its layer: ``{"weight_noise": ..., "weight_grad": ...}`` for a Bernoulli
        stage, ``{}`` for a real one (whose layer refuses them).

    Raises
    ------
    ValueError
        An option other than its default while every kind is ``"real"``.
    """
    options = {"weight_noise": weight_noise, "weight_grad": weight_grad}
    if "bernoulli" not in kinds:
        for name, value in options.items():
            default = BERNOULLI_DEFAULTS[name]
            if not ((isinstance(value, str) and value == default) or getattr(value, "name", None) == default):
                raise ValueError(f"{name}: {value!r} has no effect with real weights; it sets the Bernoulli weights "
                                 "of weight='bernoulli' or 'hidden'")
    return [options if kind == "bernoulli" else {} for kind in kinds]


def init_weight_kind(layer, weight, weight_noise, weight_grad, rng: np.random.Generator | int | None):
    """Apply the ``weight="real" | "bernoulli"`` constructor option of a layer.

    Parameters
    ----------
    layer : AffineLayer
        With real weights (just constructed).
    weight : {"real", "bernoulli"}
    weight_noise, weight_grad
        Noise and gradient rule of Bernoulli weights (:func:`sbnnumba.weights.make_bernoulli`).
    rng : numpy.random.Generator
        Draws the latent weights.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        Another ``weight``, or Bernoulli-weight options with ``weight="real"`` (:func:`check_weight_options`).
    """
    if weight not in ("real", "bernoulli"):
        raise ValueError(f"weight: expected 'real' or 'bernoulli', got {weight!r}")
    check_weight_options([weight], weight_noise, weight_grad)  # no effect on real weights: refused
    if weight == "bernoulli":
        make_bernoulli(layer, noise=weight_noise, grad=weight_grad, rng=rng)


def _uniform_fan_in(rng, shape, fan_in, dtype):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear(AffineLayer):
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
    weight_param : RealWeights or BernoulliWeights
        The weight parameterization (parameters ``"weight"`` or ``"eta"``).
    weight : ndarray (n_out, n_in)
        The weight tensor in use: the real weights, or ``sign(eta)`` (a sampled Bernoulli weight only in
        a :meth:`with_weight` view).
    bias : ndarray (n_out,)
    """

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator | int | None = None, dtype=np.float32,
                 weight="real", weight_noise="logistic",
                 weight_grad="md"):
        self.n_in = check_positive_int(n_in, "n_in")
        n_out = check_positive_int(n_out, "n_out")
        rng = as_generator(rng)
        self.weight_param = RealWeights(_uniform_fan_in(rng, (n_out, self.n_in), self.n_in, dtype))
        self.bias = _uniform_fan_in(rng, (n_out,), self.n_in, dtype)
        init_weight_kind(self, weight, weight_noise, weight_grad, rng)

    @property
    def out_shape(self):
        return (self.weight_shape[0],)

    def output_shape(self, in_shape: tuple[int, ...]):
        if int(math.prod(in_shape)) != self.n_in:  # math.prod: a per-step check (np.prod costs 3 us a call)
            raise ValueError(f"x: a Linear({self.n_in}, {self.weight_shape[0]}) layer expects {self.n_in} "
                             f"input features per example, got shape {tuple(in_shape)}")
        return self.out_shape

    def _flat(self, x):
        x2 = x.reshape(x.shape[0], int(math.prod(x.shape[1:])))  # not -1: an empty batch has no size to infer
        if x2.shape[1] != self.n_in:
            self.output_shape(x.shape[1:])
        return x2

    def forward(self, x: np.ndarray):
        """``a = x W^T + b`` (B, n_out) of inputs ``x`` (B, ...) with ``n_in`` values per example."""
        return self.backend.dense_forward(self._flat(x), self.weight, self.bias)

    def backward_input(self, g_a: np.ndarray, in_shape: tuple[int, ...]):
        """``g_x = g_a W`` (B, n_out) -> ``(B, *in_shape)``."""
        return self.backend.dense_backward_input(g_a, self.weight).reshape((g_a.shape[0],) + tuple(in_shape))

    def forward_moments(self, mean: np.ndarray, var: np.ndarray):
        return self.forward(mean), self._flat(var) @ (self.weight ** 2).T

    def param_grads(self, x: np.ndarray, g_a: np.ndarray, saved=None):
        """``{"weight": g_a^T x (n_out, n_in), "bias": sum_b g_a (n_out,)}`` (``saved`` is unused: a dense
        layer's forward pass has nothing to reuse)."""
        g_w, g_b = self.backend.dense_param_grads(self._flat(x), g_a)
        return {"weight": g_w, "bias": g_b}

    def flip_propagate(self, x_in: np.ndarray, a: np.ndarray, x_out: np.ndarray, d_out: np.ndarray, noise,
                       backend="cpu", out_scale=None):
        """PSA flip propagation; returns ``d_in`` with the shape of ``x_in``.

        ``backend`` is a :class:`~sbnnumba.backends.Backend` or its name. ``out_scale`` (n_out,)
        multiplies the weights per output unit (a following normalization with fixed statistics
        scales the pre-activation change of a flip by it).
        """
        noise = get_noise(noise)
        x2 = self._flat(x_in)
        weight = self.weight if out_scale is None else \
            self.backend.scale_rows(self.weight, self.backend.asarray(out_scale, self.weight.dtype))
        d_in = get_backend(backend).flip_propagate_dense(x2, a, x_out, weight, d_out, noise)
        return d_in.reshape(x_in.shape)

    def __repr__(self):
        return f"Linear({self.n_in}, {self.weight_shape[0]})"
