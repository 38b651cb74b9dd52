"""Test oracles: exact expectations of estimators by enumerating sample paths.

``expected_estimate(method, net, x, y)`` sums a path estimator over *all* sample paths, each
weighted by its probability ``prod_k prod_j F(x^k_j a^k_j)``: the exact mean of the estimator,
with no Monte-Carlo noise (spec psa.md, section 8). It also returns the per-path estimates so
that tests can compute exact variances.
"""
import numpy as np

from .estimators.exact import all_states, exact_expected_loss, exact_gradient, weight_configurations
from .estimators.registry import PATH_ESTIMATORS, lookup
from .network import Path, StageSample

MAX_PATH_UNITS = 16

__all__ = ["enumerate_paths", "expected_estimate", "exact_gradient", "exact_expected_loss", "weight_configurations",
           "exact_bernoulli", "expected_estimate_bernoulli"]


def enumerate_paths(net, x, weights=None):
    """All sample paths of all examples as one batch of ``B * P`` rows, the Bernoulli weights (if any)
    fixed to ``weights`` (prefix -> +-1 tensor; default: their deterministic values ``sign(eta)``).

    Returns
    -------
    path : Path
        Rows ordered example-major: row ``b * P + p``.
    prob : ndarray (B * P,)
        Probability of each path given its example's input.
    example : ndarray (B * P,) int
        Index of the example each row belongs to.
    """
    x = net.check_input(x)
    shapes = net.stage_shapes(x.shape[1:])
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) > MAX_PATH_UNITS:
        raise ValueError(f"net: path enumeration supports at most {MAX_PATH_UNITS} binary units, got {sum(sizes)}")
    n_paths = 2 ** sum(sizes)
    # joint state index -> per-stage state vectors
    joint = all_states(sum(sizes), x.dtype)
    bounds = np.cumsum([0] + sizes)
    n_batch = x.shape[0]
    h = np.repeat(x, n_paths, axis=0)
    path, prob = Path(weights=dict(weights or {}), layers=net.stage_layers(weights)), np.ones(n_batch * n_paths)
    for k, layer in enumerate(path.layers):
        a = layer.forward(h)
        state = np.tile(joint[:, bounds[k]:bounds[k + 1]], (n_batch, 1)).reshape(a.shape).astype(a.dtype)
        prob *= net.noise.cdf(state * a).reshape(len(prob), -1).prod(axis=1)
        path.stages.append(StageSample(h, a, state))
        h = state
    path.logits = net.head.forward(h)
    return path, prob, np.repeat(np.arange(n_batch), n_paths)


def expected_estimate(method, net, x, y, return_paths=False, weights=None, **options):
    """Exact expectation of a path estimator's (loss, grads) over all sample paths (batch mean), the
    Bernoulli weights (if any) fixed to ``weights`` (see :func:`enumerate_paths`).

    With ``return_paths=True`` also returns ``(per_path_grads, prob, example)`` where
    ``per_path_grads[key]`` has shape ``(B * P, *param.shape)``: the estimate of each single path.
    """
    if method not in PATH_ESTIMATORS:
        raise ValueError(f"method: {method!r} is not a path estimator; expected one of {sorted(PATH_ESTIMATORS)}")
    _, fn, opts = lookup(method, options)
    x, y = net.check_batch(x, y)
    path, prob, example = enumerate_paths(net, x, weights)
    y_rows = y[example]
    weights = prob / x.shape[0]
    loss, grads = fn(net, path, y_rows, weights, **opts)
    if not return_paths:
        return loss, grads
    per_path = {k: [] for k in grads}
    for r in range(len(prob)):
        sub = Path([StageSample(s.input[r:r + 1], s.pre[r:r + 1], s.state[r:r + 1]) for s in path.stages],
                   path.logits[r:r + 1], path.weights)
        _, g = fn(net, sub, y_rows[r:r + 1], np.ones(1), **opts)
        for k, v in g.items():
            per_path[k].append(v)
    return loss, grads, ({k: np.stack(v) for k, v in per_path.items()}, prob, example)


def exact_bernoulli(net, x, y):
    """Exact expected loss over weights and activations, and its exact gradient.

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


def expected_estimate_bernoulli(method, net, x, y, **options):
    """Exact expectation of a path estimator over weight samples and activation paths."""
    loss, grads = 0.0, None
    for prob, weights in weight_configurations(net):
        l_w, g_w = expected_estimate(method, net, x, y, weights=weights, **options)
        loss += prob * l_w
        grads = {k: prob * v for k, v in g_w.items()} if grads is None else {k: grads[k] + prob * g_w[k]
                                                                             for k in grads}
    return loss, grads
