r"""Batch normalization in front of a binary activation, as a wrapper layer.

``Normalized(layer)`` computes

.. math:: a = \gamma \frac{z - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta, \qquad z = \text{layer}(x),

per output unit (dense, statistics over the batch) or per channel (conv, statistics over the batch
and the positions). It implements the full layer interface, so every estimator works unchanged:

* in training mode ``mu, sigma^2`` are the statistics of the current (noisy) batch and the backward
  pass differentiates through them (ordinary batch-norm backward);
* in evaluation mode the running statistics of the selected test mode are used (``"stochastic"``:
  accumulated during training; ``"deterministic"``: re-estimated by
  :meth:`sbnnumba.Network.recalibrate_normalization` with sign activations and ``sign(eta)`` weights,
  spec st.md section 6);
* PSA flip propagation treats the statistics as constants: flipping input ``i`` moves ``a_j`` by
  ``-2 W_ji x_i * gamma_j / sqrt(sigma_j^2 + eps)``, i.e. the layer's flip propagation with the
  weights scaled per output (the O(1/B) effect of one flip on the batch statistics is ignored).

The noise scale is redundant with ``gamma`` (spec st.md section 1), so the noise keeps scale 1 and
``gamma`` sets the signal-to-noise ratio: with ``gamma_j = g`` and ``beta_j = 0``, the pre-activation
``a_j`` has standard deviation ``g`` over the batch against the noise's ``std``. ``gamma`` starts at
1 by default; :func:`initial_gamma` resolves ``bn_gamma="noise-std"``, which starts it at the noise's
standard deviation so that every noise family begins at the same ratio (1).
The forward pass caches the normalized values for the backward pass: call the backward right after
the forward of the same batch (the estimators do).

Data-parallel training splits a batch across processes; setting ``reducer`` (a
:class:`BatchReducer`, e.g. a :class:`sbnnumba.distributed.Communicator`) makes the batch statistics
and the two batch sums of the backward pass sums over all processes' parts, so each process trains
what one process with the whole batch trains (up to the order of float sums). On a device (the
device-resident data-parallel step) only these per-channel sums cross to the host for the collective
(:meth:`~sbnnumba.backends.step.StepOperations.channel_sums64`, ``to_host``, ``to_device_of``).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Protocol

import numpy as np

from .layers import Layer
from .noise import get_noise
from .validation import check_bool, check_positive_number, check_real


def initial_gamma(bn_gamma, noise):
    """The starting value of batch normalization's ``gamma`` for ``bn_gamma`` and activation ``noise``.

    Parameters
    ----------
    bn_gamma : float or "noise-std"
        A positive finite number, or ``"noise-std"``: the standard deviation of ``noise``
        (logistic 1.81, normal 1, uniform 0.577, triangular 0.408), i.e. pre-activations start
        with the noise's spread.
    noise : str or NoiseFamily
        The activation noise of the network.

    Returns
    -------
    float
    """
    if isinstance(bn_gamma, str):
        if bn_gamma != "noise-std":
            raise ValueError(f"bn_gamma: expected a finite positive number or 'noise-std', got {bn_gamma!r}")
        return float(get_noise(noise).std)
    return check_positive_number(bn_gamma, "bn_gamma", " or 'noise-std'")


def normalization_factory(normalize, bn_gamma, noise):
    """``layer -> stage`` for the network builders: ``Normalized(layer, gamma=...)`` if ``normalize``,
    else ``layer`` itself (then ``bn_gamma`` must keep its default 1, having nothing to start).

    Parameters
    ----------
    normalize : bool
    bn_gamma : float or "noise-std"
        :func:`initial_gamma`.
    noise : str or NoiseFamily

    Returns
    -------
    callable
    """
    if not check_bool(normalize, "normalize"):
        if not (isinstance(bn_gamma, (int, float)) and not isinstance(bn_gamma, bool) and bn_gamma == 1):
            raise ValueError(f"bn_gamma: {bn_gamma!r} has no effect without normalize=True")
        return lambda layer: layer
    gamma = initial_gamma(bn_gamma, noise)
    return lambda layer: Normalized(layer, gamma=gamma)


def moments_from_sums(count, total, total_sq):
    """Per-channel ``(mean, var)`` from a count and the sums of ``z`` and ``z^2`` (var clipped at 0).

    Parameters
    ----------
    count : int or float
    total, total_sq : ndarrays (C,)

    Returns
    -------
    mean, var : ndarrays (C,)
    """
    mean = total / count
    return mean, np.maximum(total_sq / count - mean ** 2, 0)


class BatchReducer(Protocol):
    """Sums per-channel statistics over the processes that share a batch (a protocol: any object with
    :meth:`allreduce_sum`, e.g. :class:`sbnnumba.distributed.Communicator`).

    Parameters
    ----------
    None
    """

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Elementwise sum of ``values`` (float64, 1-D) over the processes, as a new array."""


def _reduced_sums(reducer, backend, count, *sums):
    """``(count, *sums)`` summed by ``reducer`` (float64): one collective for all of them. The sums may live
    on a device (``backend.to_host`` downloads them); the results are host arrays."""
    buf = reducer.allreduce_sum(np.concatenate([[float(count)]] + [np.asarray(backend.to_host(s), np.float64).ravel()
                                                                   for s in sums]))
    n = len(sums[0])
    return (buf[0],) + tuple(buf[1 + k * n:1 + (k + 1) * n] for k in range(len(sums)))


class Normalized(Layer):
    """Wrap ``layer`` with batch normalization (affine ``gamma``, ``beta``).

    Parameters
    ----------
    layer : Linear or Conv2d
    momentum : float
        Running-statistics update ``r <- (1 - m) r + m * batch`` during training.
    eps : float
    gamma : float
        Starting value of every ``gamma_j`` (positive; default 1). See :func:`initial_gamma`.
    """

    def __init__(self, layer, momentum: float = 0.1, eps: float = 1e-5, gamma: float = 1.0) -> None:
        momentum = check_real(momentum, "momentum", 0.0, 1.0, low_open=True)
        eps = check_positive_number(eps, "eps")
        gamma = check_positive_number(gamma, "gamma", " (resolve 'noise-std' with initial_gamma)")
        self.layer = layer
        n = layer.weight.shape[0]
        dtype = layer.weight.dtype
        self.gamma = np.full(n, gamma, dtype=dtype)
        self.beta = np.zeros(n, dtype=dtype)
        self.momentum, self.eps = momentum, eps
        self.training = True
        self.stats_mode = "stochastic"
        self.running: dict[str, Any] = {"stochastic": (np.zeros(n, dtype), np.ones(n, dtype)), "deterministic": None}
        self._accumulator: Any = None
        self._cache: Any = None
        self._backward_cache: Any = None
        self.reducer: Any = None  # BatchReducer: batch statistics over all processes (data parallelism)

    # ---------------------------------------------------------------- parameters, the Layer interface
    def params(self) -> dict[str, np.ndarray]:
        return {**self.layer.params(), "gamma": self.gamma, "beta": self.beta}

    @property
    def inner(self):
        """The wrapped affine layer (it holds the weights)."""
        return self.layer

    @property
    def normalization(self):
        return self

    def with_weight(self, weight: np.ndarray) -> Normalized:
        """A view normalizing ``layer.with_weight(weight)``; it shares the parameters and the running
        statistics with this layer (its forward pass updates them), and caches its own forward values."""
        view = copy.copy(self)
        view.layer = self.layer.with_weight(weight)
        return view

    def output_shape(self, in_shape: tuple[int, ...]):
        return self.layer.output_shape(in_shape)

    @property
    def out_shape(self):
        return self.layer.out_shape

    def rescale_(self, mean: np.ndarray, std: np.ndarray):
        inner = self.layer.rescale_(mean, std)
        if inner is self.layer:
            return self
        view = copy.copy(self)
        view.layer = inner
        return view

    # ---------------------------------------------------------------- statistics
    def _axes(self, z):
        return (0,) + tuple(range(2, z.ndim))

    def _shape(self, z):
        return (1, -1) + (1,) * (z.ndim - 2)

    def start_accumulating(self) -> None:
        self._accumulator = [0, 0.0, 0.0]

    def finish_accumulating(self, mode: str) -> None:
        mean, var = moments_from_sums(*self._accumulator)
        self.running[mode] = (mean.astype(self.gamma.dtype), var.astype(self.gamma.dtype))
        self._accumulator = None

    def statistics(self, mode: str | None = None):
        """The running ``(mean, var)`` of test mode ``mode`` (default: the current ``stats_mode``); the
        stochastic ones where the mode has none."""
        return self.running.get(self.stats_mode if mode is None else mode) or self.running["stochastic"]

    def _normalize(self, z, mean, var):
        """``(gamma * z_hat + beta, z_hat, inv_std)`` with ``z_hat = (z - mean) * inv_std`` per channel."""
        return self.backend.normalize(z, mean, var, self.gamma, self.beta, self.eps)

    def affine(self, z: np.ndarray, mode="deterministic"):
        r"""The normalization's map with fixed statistics, applied to pre-normalization values ``z``:

        .. math:: a = \gamma \, (z - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta

        with the running statistics of test mode ``mode`` (:meth:`statistics`), in the same float
        operations as :meth:`forward` in evaluation mode (the packed network derives its thresholds
        from it). ``z``: (B, C) or (B, C, H, W); returns ``a`` of the same shape. Changes no state.
        """
        mean, var = self.statistics(mode)
        return self._normalize(self.backend.asarray(z), mean, var)[0]

    def _batch_statistics(self, z):
        """Batch mean and variance per channel (over all processes' parts with a :attr:`reducer`)."""
        if self.reducer is None:
            return self.backend.channel_moments(z)
        # E[z], E[z^2] - E[z]^2 of the global batch from float64 sums; on a device only the sums cross
        n, s1, s2 = _reduced_sums(self.reducer, self.backend, z.size // z.shape[1], *self.backend.channel_sums64(z, z))
        mean, var = moments_from_sums(n, s1, s2)
        return tuple(self.backend.to_device_of(t.astype(z.dtype), z) for t in (mean, var))

    def forward(self, x: np.ndarray):
        """``a = gamma (z - mean) / sqrt(var + eps) + beta`` of ``z = layer.forward(x)``: batch statistics in
        training mode (the running ones updated, or accumulated by :meth:`start_accumulating`), the
        running statistics of :attr:`stats_mode` otherwise. Caches ``z_hat`` for the backward pass."""
        return self._forward_normalize(self.layer.forward(x))

    def forward_saving(self, x: np.ndarray):
        """:meth:`forward` and the wrapped layer's saved forward values (its :meth:`forward_saving`)."""
        z, saved = self.layer.forward_saving(x)
        return self._forward_normalize(z), saved

    def _forward_normalize(self, z):
        """The normalization of :meth:`forward` applied to the wrapped layer's output ``z``."""
        if self.training:
            mean, var = self._batch_statistics(z)
            if self._accumulator is not None:
                n = z.size // z.shape[1]
                self._accumulator[0] += n
                self._accumulator[1] = self._accumulator[1] + mean.astype(np.float64) * n
                self._accumulator[2] = self._accumulator[2] + (var + mean ** 2).astype(np.float64) * n
            else:
                r_mean, r_var = self.running["stochastic"]
                self.running["stochastic"] = (self.backend.running_average(r_mean, mean, self.momentum),
                                              self.backend.running_average(r_var, var, self.momentum))
        else:
            mean, var = self.statistics()
        out, z_hat, inv_std = self._normalize(z, mean, var)
        self._cache = (z_hat, inv_std, self.training)
        self._backward_cache = None
        return out

    def _backward_norm(self, g_a):
        """``(g_z, sums)``: the gradient of the wrapped layer's output for ``g_a = dL/da`` and this process's
        per-channel ``sums = (sum g_a, sum g_a z_hat)`` (the beta and gamma gradients). Kept for the last
        ``g_a`` of this forward pass: deep ST asks for the parameter gradients and then the input gradient
        of the same ``g_a``, which need the same batch-norm backward."""
        cached = self._backward_cache
        if cached is not None and cached[0] is g_a:
            return cached[1], cached[2]
        z_hat, inv_std, batch_stats = self._cache
        if z_hat.shape != g_a.shape:
            raise RuntimeError("Normalized: backward called with a batch other than the last forward pass")
        scale = self.backend.multiply(self.gamma, inv_std)
        sums = self.backend.channel_sums(g_a, z_hat)
        if not batch_stats:
            g_z = self.backend.normalize_backward(g_a, z_hat, scale, None, 1)
        else:
            n, reduced = g_a.size // g_a.shape[1], sums
            if self.reducer is not None:
                n, s1, s2 = (v.astype(g_a.dtype) for v in _reduced_sums(self.reducer, self.backend, n, *sums))
                reduced = (self.backend.to_device_of(s1, g_a), self.backend.to_device_of(s2, g_a))
            g_z = self.backend.normalize_backward(g_a, z_hat, scale, reduced, n)
        self._backward_cache = (g_a, g_z, sums)
        return g_z, sums

    def backward_input(self, g_a: np.ndarray, in_shape: tuple[int, ...]):
        return self.layer.backward_input(self._backward_norm(g_a)[0], in_shape)

    def param_grads(self, x: np.ndarray, g_a: np.ndarray, saved=None):
        """The wrapped layer's gradients at ``g_z`` (:meth:`~sbnnumba.backends.step.StepOperations.normalize_backward`;
        ``saved`` passed on to it) and ``gamma: sum g_a z_hat``, ``beta: sum g_a`` per channel."""
        g_z, (s1, s2) = self._backward_norm(g_a)
        grads = self.layer.param_grads(x, g_z, saved)
        grads["gamma"], grads["beta"] = s2, s1
        return grads

    def forward_moments(self, mean: np.ndarray, var: np.ndarray):
        mu, v = self.layer.forward_moments(mean, var)
        stats_mean, stats_var = self.running["stochastic"]
        shape = self._shape(mu)
        scale = (self.gamma / np.sqrt(stats_var + self.eps)).reshape(shape)
        return scale * (mu - stats_mean.reshape(shape)) + self.beta.reshape(shape), scale ** 2 * v

    def flip_propagate(self, x_in: np.ndarray, a: np.ndarray, x_out: np.ndarray, d_out: np.ndarray, noise,
                       backend="cpu"):
        scale = self.backend.multiply(self.gamma, self._cache[1])
        return self.layer.flip_propagate(x_in, a, x_out, d_out, noise, backend, out_scale=scale)

    def on_backend(self, backend, convert: Callable[[np.ndarray], Any]) -> Normalized:
        """A copy normalizing ``layer.on_backend(backend, convert)`` with ``gamma``, ``beta`` and the running
        statistics converted; its forward caches and statistics are its own (no reducer, no accumulator).

        Parameters
        ----------
        backend : Backend
        convert : callable
            ``array -> array`` on ``backend``.

        Returns
        -------
        Normalized
        """
        view = copy.copy(self)
        view.layer = self.layer.on_backend(backend, convert)
        view.gamma, view.beta = convert(self.gamma), convert(self.beta)
        view.running = {mode: None if stats is None else tuple(convert(t) for t in stats)
                        for mode, stats in self.running.items()}
        view._cache, view._backward_cache, view._accumulator, view.reducer = None, None, None, None
        return view

    def __repr__(self):
        return f"Normalized({self.layer!r})"
