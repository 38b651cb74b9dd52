"""Test oracles: exact expectations of estimators by enumerating sample paths.

``expected_estimate(method, net, x, y)`` sums a path estimator over *all* sample paths, each
weighted by its probability ``prod_k prod_j F(x^k_j a^k_j)``: the exact mean of the estimator,
with no Monte-Carlo noise (spec psa.md, section 8). It also returns the per-path estimates so
that tests can compute exact variances.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .estimators.exact import all_states, exact_expected_loss, exact_gradient, weight_configurations
from .estimators.registry import PATH_ESTIMATORS, lookup
from .network import Path, StageSample

if TYPE_CHECKING:
    from .network import Network

Grads = dict[str, np.ndarray]

MAX_PATH_UNITS = 16

__all__ = ["enumerate_paths", "expected_estimate", "exact_gradient", "exact_expected_loss", "weight_configurations",
           "exact_bernoulli", "expected_estimate_bernoulli"]


def enumerate_paths(net: Network, x: npt.ArrayLike,
                    weights: Mapping[str, np.ndarray] | None = None) -> tuple[Path, np.ndarray, np.ndarray]:
    """All sample paths of all examples as one batch of ``B * P`` rows, the Bernoulli weights (if any)
    fixed to ``weights`` (prefix -> +-1 tensor; default: their deterministic values ``sign(eta)``).

    With ``U`` binary units in all stages, ``P = 2^U`` joint states per example; path ``p`` of example
    ``b`` has probability ``prod_k prod_j F(x^k_j a^k_j)`` (``a^k`` the pre-activations given the
    previous states).

    Parameters
    ----------
    net : Network
        At most :data:`MAX_PATH_UNITS` (16) binary units in all stages together.
    x : array_like, shape (B, ...)
        A batch of inputs.
    weights : dict str -> ndarray, optional
        Fixed +-1 values of the Bernoulli weights, by layer prefix.

    Returns
    -------
    path : Path
        Rows ordered example-major: row ``b * P + p``.
    prob : ndarray (B * P,)
        Probability of each path given its example's input.
    example : ndarray (B * P,) int
        Index of the example each row belongs to.
    """
    xb = net.check_input(x)
    shapes = net.stage_shapes(xb.shape[1:])
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) > MAX_PATH_UNITS:
        raise ValueError(f"net: path enumeration supports at most {MAX_PATH_UNITS} binary units, got {sum(sizes)}")
    n_paths = 2 ** sum(sizes)
    # joint state index -> per-stage state vectors
    joint = all_states(sum(sizes), xb.dtype)
    bounds = np.cumsum([0] + sizes)
    n_batch = xb.shape[0]
    h = np.repeat(xb, n_paths, axis=0)
    layers = net.stage_layers(weights)
    path, prob = Path(weights=dict(weights or {}), layers=layers), np.ones(n_batch * n_paths)
    for k, layer in enumerate(layers):
        a = layer.forward(h)
        state = np.tile(joint[:, bounds[k]:bounds[k + 1]], (n_batch, 1)).reshape(a.shape).astype(a.dtype)
        prob *= net.noise.cdf(state * a).reshape(len(prob), -1).prod(axis=1)
        path.stages.append(StageSample(h, a, state))
        h = state
    path.logits = net.head.forward(h)
    return path, prob, np.repeat(np.arange(n_batch), n_paths)


def expected_estimate(method: str, net: Network, x: npt.ArrayLike, y: npt.ArrayLike, return_paths: bool = False,
                      weights: Mapping[str, np.ndarray] | None = None, **options: Any) -> tuple[Any, ...]:
    r"""Exact expectation of a path estimator's (loss, grads) over all sample paths (batch mean), the
    Bernoulli weights (if any) fixed to ``weights`` (see :func:`enumerate_paths`).

    .. math:: \mathbb{E}[\hat g] = \frac{1}{B} \sum_b \sum_p P(p \mid x_b)\, \hat g(p, y_b)

    Parameters
    ----------
    method : str
        A path estimator's name (``sbnnumba.estimators.registry.PATH_ESTIMATORS``, e.g. ``"psa"``, ``"st"``).
    net : Network
        At most 16 binary units (:func:`enumerate_paths`).
    x : array_like, shape (B, ...)
        Inputs.
    y : array_like, shape (B,)
        Integer labels.
    return_paths : bool
        Also return each single path's estimate.
    weights : dict str -> ndarray, optional
        Fixed +-1 values of the Bernoulli weights (default: ``sign(eta)``).
    **options
        Options of the estimator.

    Returns
    -------
    loss : float
        Exact expected loss (batch mean).
    grads : dict str -> ndarray
        Exact expectation of the estimator, one array per parameter (its shape).
    paths : tuple, only with ``return_paths=True``
        ``(per_path_grads, prob, example)``: ``per_path_grads[key]`` of shape ``(B * P, *param.shape)``
        holds the estimate of each single path, ``prob`` and ``example`` as in :func:`enumerate_paths`.

    Raises
    ------
    ValueError
        If ``method`` is not a path estimator.
    """
    if method not in PATH_ESTIMATORS:
        raise ValueError(f"method: {method!r} is not a path estimator; expected one of {sorted(PATH_ESTIMATORS)}")
    _, fn, opts = lookup(method, options)
    xb, yb = net.check_batch(x, y)
    path, prob, example = enumerate_paths(net, xb, weights)
    y_rows = yb[example]
    loss, grads = fn(net, path, y_rows, prob / xb.shape[0], **opts)
    if not return_paths:
        return loss, grads
    per_path: dict[str, list[np.ndarray]] = {k: [] for k in grads}
    logits = path.logits
    assert logits is not None  # set by enumerate_paths
    for r in range(len(prob)):
        sub = Path([StageSample(s.input[r:r + 1], s.pre[r:r + 1], s.state[r:r + 1]) for s in path.stages],
                   logits[r:r + 1], path.weights)
        _, g = fn(net, sub, y_rows[r:r + 1], np.ones(1), **opts)
        for k, v in g.items():
            per_path[k].append(v)
    return loss, grads, ({k: np.stack(v) for k, v in per_path.items()}, prob, example)


def exact_bernoulli(net: Network, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[float, Grads, Grads]:
    """Exact expected loss over weights and activations, and its exact gradient.

    Parameters
    ----------
    net : Network
        With Bernoulli weights; small enough to enumerate all weight configurations and sample paths.
    x : array_like, shape (B, ...)
        Inputs.
    y : array_like, shape (B,)
        Integer labels.

    Returns
    -------
    loss : float
    grads_eta : dict
        ``dE/deta`` for latent weights (key ``prefix.eta``) and ``dE/dparam`` for every other parameter
        (the ``"exact"`` estimator).
    grads_theta : dict
        ``dE/dtheta`` (theta = P(w = +1) = F(eta)) for the latent weights only.
    """
    loss, grads = exact_gradient(net, *net.check_batch(x, y))
    grads_theta = {f"{p}.eta": grads[f"{p}.eta"] / layer.latent.noise.pdf(layer.latent.eta)
                   for p, layer in net.latent_layers()}
    return loss, grads, grads_theta


def expected_estimate_bernoulli(method: str, net: Network, x: npt.ArrayLike, y: npt.ArrayLike,
                                **options: Any) -> tuple[float, Grads]:
    r"""Exact expectation of a path estimator over weight samples and activation paths.

    .. math:: \mathbb{E}[\hat g] = \sum_w P(w)\, \mathbb{E}[\hat g \mid w]

    over every configuration ``w`` of the Bernoulli weights (:func:`weight_configurations`), each term
    from :func:`expected_estimate`.

    Parameters
    ----------
    method : str
        A path estimator's name.
    net : Network
        Small enough to enumerate (weights and binary units).
    x : array_like, shape (B, ...)
        Inputs.
    y : array_like, shape (B,)
        Integer labels.
    **options
        Options of the estimator.

    Returns
    -------
    loss : float
        Exact expected loss.
    grads : dict str -> ndarray
        Exact expectation of the estimator, one array per parameter.
    """
    loss = 0.0
    grads: Grads | None = None
    for prob, weights in weight_configurations(net):
        l_w, g_w = expected_estimate(method, net, x, y, weights=weights, **options)
        loss += prob * l_w
        grads = {k: prob * v for k, v in g_w.items()} if grads is None else {k: grads[k] + prob * g_w[k]
                                                                             for k in grads}
    assert grads is not None  # weight_configurations yields at least one configuration
    return loss, grads
