r"""Bernoulli (stochastic binary) weights with latent real parameters (spec st.md, sections 3.2 and 5).

Each weight has a latent real parameter ``eta``; the binary weight is

.. math:: w = \mathrm{sign}(\eta - Z'), \qquad \theta = P(w = +1) = F(\eta), \qquad E[w] = 2F(\eta) - 1,

sampled **once per forward pass** (shared by the batch and by all positions of a conv kernel) from
uniforms: ``w = +1 if u < F(eta) else -1``.

A layer owns its weight parameterization (:class:`RealWeights` or :class:`BernoulliWeights`): the
trainable arrays (:meth:`~WeightParameterization.params`), the weights of the deterministic network
(:meth:`~WeightParameterization.mode`) and the map from ``dL/dw`` to the gradients of those arrays
(:meth:`~WeightParameterization.grads`). A sampled weight is never stored on the layer: it belongs to
the sampled path (:attr:`sbnnumba.network.Path.weights`), and the layer computes with it through a
view (:meth:`sbnnumba.layers.AffineLayer.with_weight`). Gradients w.r.t. the sampled weight
``g_w = dL/dw`` (from any activation estimator) become

* ``grad="md"`` (default, identity ST for weights): ``g_eta = 2 g_w ~ dE/dtheta``. Additive updates
  ``eta <- eta - lr * g_eta`` are then **mirror descent** on theta with the noise-matched mirror map
  (KL-proximal steps for logistic noise; projected Euclidean steps = stochastic BinaryConnect for
  uniform noise, with ``eta`` clipped to [-1, 1]).
* ``grad="latent"`` (ST-A on the weight): ``g_eta = 2 p(eta) g_w ~ dE/deta``: plain gradient descent in
  the latent parametrization (slowed by ``p(eta) -> 0`` for confident weights).

Weight decay ``lambda * eta`` on the latent weights is the KL pull ``d/dtheta KL(Bern theta || Bern 1/2)
= logit theta`` toward p = 1/2 (logistic noise), not a magnitude penalty.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import numpy as np
from scipy import special

from .backends import host_backend
from .noise import get_noise
from .validation import as_generator, check_choice, check_positive_number

WEIGHT_GRADS = ("md", "latent")


def _on(backend):
    """``backend``, or the host backend for None."""
    return host_backend() if backend is None else backend


class WeightParameterization(abc.ABC):
    """How an affine layer's weight tensor ``w`` is parameterized.

    ``stochastic`` says whether ``w`` is sampled (then :meth:`sample` draws it and the network keeps the
    draw in the path); :meth:`mode` is the weight of the deterministic network.
    """

    stochastic = False

    @abc.abstractmethod
    def params(self) -> dict:
        """name -> trainable array (the arrays themselves: optimizers update them in place)."""

    @abc.abstractmethod
    def mode(self) -> np.ndarray:
        """The deterministic weight tensor: the real weights, or ``sign(eta)`` for Bernoulli weights."""

    @abc.abstractmethod
    def grads(self, g_w: np.ndarray, backend=None) -> dict:
        """name -> gradient of each trainable array, from ``g_w = dL/dw`` at the weights in use.

        Parameters
        ----------
        g_w : array, the shape of the weight tensor
        backend : Backend, optional
            Where the arrays live (:attr:`sbnnumba.layers.Layer.backend`); default: the host backend.

        Returns
        -------
        dict
        """

    @abc.abstractmethod
    def converted(self, convert: Callable[[np.ndarray], Any]) -> WeightParameterization:
        """A copy whose arrays are ``convert(array)`` (e.g. on a device: :meth:`sbnnumba.layers.Layer.on_backend`).

        Parameters
        ----------
        convert : callable
            ``array -> array``.

        Returns
        -------
        WeightParameterization
        """

    def project_(self, backend=None) -> None:
        """Constraint projection after an optimizer step (none by default), on ``backend`` (default: host)."""

    @property
    def shape(self):
        return next(iter(self.params().values())).shape

    @property
    def dtype(self):
        return next(iter(self.params().values())).dtype


class RealWeights(WeightParameterization):
    """Real weights: the parameter is ``weight`` itself, ``dL/dweight = g_w``.

    Parameters
    ----------
    weight : array
        The weight tensor (kept, not copied).
    """

    def __init__(self, weight: np.ndarray) -> None:
        self.weight = weight

    def params(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight}

    def mode(self) -> np.ndarray:
        return self.weight

    def grads(self, g_w: np.ndarray, backend=None):
        return {"weight": g_w}

    def converted(self, convert: Callable[[np.ndarray], Any]) -> WeightParameterization:
        return RealWeights(convert(self.weight))

    def __repr__(self):
        return f"RealWeights(shape={self.weight.shape})"


class BernoulliWeights(WeightParameterization):
    """Bernoulli weights ``w = sign(eta - Z')`` with latent ``eta``: sampling and gradient rules.

    Parameters
    ----------
    eta : ndarray
        Latent weights (the trainable parameter, kept as given, projected by ``clip``).
    noise : str or NoiseFamily
        Weight-noise family (``"logistic"``, ``"uniform"``, ``"triangular"``, ``"normal"``, ...).
    grad : {"md", "latent"}
        Gradient rule (see the module docstring).
    clip : float, None or "auto"
        Projection of ``eta`` onto [-clip, clip] after every update (:meth:`project_`). ``"auto"``: the
        family's :attr:`~sbnnumba.noise.NoiseFamily.weight_clip` (1 for uniform noise, where it is the
        mirror-descent projection; None otherwise).
    """

    stochastic = True

    def __init__(self, eta: np.ndarray, noise="logistic", grad: str = "md", clip="auto") -> None:
        self.noise = get_noise(noise)
        self.grad = check_choice(grad, "weight_grad", WEIGHT_GRADS)
        if isinstance(clip, str) and clip == "auto":
            clip = self.noise.weight_clip
        self.clip = None if clip is None else check_positive_number(clip, "clip", " or None")
        self.eta = eta
        self.project_()

    def params(self) -> dict[str, np.ndarray]:
        return {"eta": self.eta}

    def sample(self, u: np.ndarray):
        """One binary sample ``w = +1 if u < F(eta) else -1`` of the shape of ``eta``."""
        return self.noise.sample(self.eta, u)

    def mode(self) -> np.ndarray:
        """Deterministic weights ``sign(eta)`` with ``sign(0) = +1`` (the most probable value)."""
        return np.where(self.eta >= 0, 1, -1).astype(self.eta.dtype)

    def mean(self) -> np.ndarray:
        """``E[w] = 2 F(eta) - 1``."""
        return self.noise.mean(self.eta)

    def prob(self, w: np.ndarray) -> float:
        """``P(w) = prod F(w * eta)`` of a +-1 tensor ``w`` (float)."""
        return float(np.prod(self.noise.cdf(w * self.eta)))

    def score(self, w: np.ndarray) -> np.ndarray:
        """``d log P(w) / d eta = w p(eta) / F(w eta)`` (the shape of ``eta``)."""
        return w * self.noise.pdf(self.eta) / self.noise.cdf(w * self.eta)

    def grads(self, g_w: np.ndarray, backend=None):
        return {"eta": self.eta_grad(g_w, backend)}

    def eta_grad(self, g_w: np.ndarray, backend=None):
        """Map ``dL/dw`` at the sampled weights to the gradient used for ``eta``: ``2 g_w`` (``grad="md"``) or
        ``2 p(eta) g_w`` (``grad="latent"``).

        Parameters
        ----------
        g_w : array, the shape of ``eta``
        backend : Backend, optional
            Where ``eta`` lives (default: the host backend); runs
            :meth:`~sbnnumba.backends.step.StepOperations.latent_grad`.

        Returns
        -------
        array, the shape of ``eta``
        """
        return _on(backend).latent_grad(self.eta, g_w, self.noise, self.grad)

    def project_(self, backend=None) -> None:
        """In-place projection ``eta <- clip(eta, -c, c)`` (no-op without ``clip``), on ``backend`` (default: host)."""
        if self.clip is not None:
            _on(backend).clip_(self.eta, self.clip)

    def converted(self, convert: Callable[[np.ndarray], Any]) -> WeightParameterization:
        copy = object.__new__(BernoulliWeights)
        copy.noise, copy.grad, copy.clip, copy.eta = self.noise, self.grad, self.clip, convert(self.eta)
        return copy

    def __repr__(self):
        return f"BernoulliWeights(noise={self.noise.name!r}, grad={self.grad!r}, clip={self.clip!r})"


def make_bernoulli(layer, noise="logistic", grad="md", clip="auto", init_scale=1.0,
                   rng: np.random.Generator | int | None = None):
    """Turn ``layer``'s real weights into Bernoulli weights with latent ``eta ~ U(-s, s)``.

    The documented default initialization is ``eta ~ U[-1, 1]`` (spec st.md 5.6): with logistic
    noise every weight starts with ``P(w = +1)`` between 0.27 and 0.73. The bias stays real.

    Networks with several binary-weight stages barely train from this init (see
    :func:`bernoulli_from_real`); start those from a trained real-weight network instead.

    Parameters
    ----------
    layer : AffineLayer
    noise, grad, clip
        As for :class:`BernoulliWeights`.
    init_scale : float
        ``s`` of ``eta ~ U(-s, s)``.
    rng : None, int or numpy.random.Generator

    Returns
    -------
    AffineLayer
        ``layer``.
    """
    rng = as_generator(rng)
    eta = rng.uniform(-init_scale, init_scale, size=layer.weight.shape).astype(layer.weight.dtype)
    layer.set_weight_param(BernoulliWeights(eta, noise, grad, clip))
    return layer


def bernoulli_from_real(layer, noise="logistic", grad="md", clip="auto", scale=3.0):
    r"""Turn a (trained) real-weight layer into Bernoulli weights that follow its weights.

    .. math:: \eta_{c\cdot} = s \, W_{c\cdot} / \mathrm{std}(W_{c\cdot})

    per output unit or channel ``c``: the deterministic weights ``sign(eta)`` are the signs of ``W``,
    and larger weights are more confident (with logistic noise and ``s = 3``, a weight one standard
    deviation from zero has ``P(w = sign W) = sigma(3) = 0.95``). The bias (and any normalization
    around the layer) is kept.

    Why: with several binary-weight stages, ``eta ~ U[-1, 1]`` makes the network's output nearly
    independent of its input at initialization (the weights' sampling noise compounds over the
    stages), and training makes no progress (measured: the all-conv SBN with 7 binary stages stays at
    chance for a full epoch of Fashion-MNIST, while with 1 or 2 binary stages it trains). Converting a
    real network trained for an epoch or two starts mirror descent from a working network.

    Parameters
    ----------
    layer : Linear or Conv2d with real weights
        Meant for layers followed by batch normalization (:class:`~sbnnumba.normalization.Normalized`),
        which absorbs the change of scale from ``W`` to ``+-1``; without it the pre-activations grow
        by about ``1 / std(W)``.
    noise, grad, clip
        As for :class:`BernoulliWeights`.
    scale : float > 0
        ``s`` above, in units of the weight noise; :func:`matched_scale` gives the scale with the
        confidence of a logistic ``s`` for another family.

    Returns
    -------
    AffineLayer
        ``layer``.
    """
    if layer.latent is not None:
        raise ValueError("layer: already has Bernoulli weights")
    scale = check_positive_number(scale, "scale")
    w = np.asarray(layer.weight)
    rows = w.reshape(w.shape[0], -1)
    std = rows.std(axis=1)
    std = np.where(std > 0, std, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    layer.set_weight_param(BernoulliWeights((scale * w / std).astype(w.dtype), noise, grad, clip))
    return layer


def matched_scale(logistic_scale, noise):
    r"""The :func:`bernoulli_from_real` scale for weight noise ``noise`` that starts the weights as
    confident as ``scale = s`` does with logistic noise.

    .. math:: s' = F^{-1}(\sigma(s)), \qquad\text{so that}\qquad
              P(w = \mathrm{sign}\,W) = F(s') = \sigma(s) \text{ at } |W| = \mathrm{std}(W)

    (``s' = s`` for logistic noise, exactly). Why: the families have different spreads (uniform
    and triangular noise live on [-1, 1], the logistic has std 1.81). With one absolute ``s = 6``,
    uniform noise would clip every weight beyond ``std(W) / 6`` to a deterministic +-1.

    Parameters
    ----------
    logistic_scale : float > 0
        ``s``, the scale in logistic units; ``sigma(s)`` must be below 1 in float64 (``s`` < 36).
    noise : str or NoiseFamily
        The weight-noise family.

    Returns
    -------
    float
        ``s'``.
    """
    logistic_scale = check_positive_number(logistic_scale, "logistic_scale")
    if special.expit(logistic_scale) >= 1.0:
        raise ValueError(f"logistic_scale: expected a value below 36 (sigma(s) < 1 in float64), got {logistic_scale!r}")
    return get_noise(noise).matched_scale(logistic_scale)
