r"""Exact expected loss and its exact gradient by enumeration (the oracle for tiny networks).

Because the states of stage k depend only on those of stage k-1, the expectation is a chain of
transition matrices over the ``S_k = 2^{N_k}`` joint states of each stage:

.. math::

    T^1_{b,s} = \prod_j F(x_{sj} a^1_{bj}), \qquad
    T^k_{s,t} = \prod_j F(x_{tj} a^k_j(x_s)), \qquad
    E_b = T^1_b T^2 \cdots T^L \, l(y_b, V x_t + c).

Gradients follow by differentiating each factor,
``dT_{s,t}/da_j = T_{s,t} x_{tj} p(a_j) / F(x_{tj} a_j)``, with forward marginals
``m^k = m^{k-1} T^k`` and backward values ``v^{k-1} = v^k (T^k)^T``. The cost is
``O(sum_k S_{k-1} S_k N_k)`` instead of the ``prod_k S_k`` paths; each stage may have at most
:data:`EXACT_MAX_STAGE_UNITS` binary units. Use float64 networks for oracle precision.

Bernoulli weights are enumerated too (at most :data:`EXACT_MAX_WEIGHTS` in all, else ``ValueError``):
the result is a function of the network's parameters only, never of weights sampled earlier.
"""
import numpy as np

from ..losses import xent
from .common import add_layer_grads, finalize
from .registry import register_estimator

EXACT_MAX_STAGE_UNITS = 10
#: Most Bernoulli weights (in all) whose joint values :func:`weight_configurations` enumerates.
EXACT_MAX_WEIGHTS = 14


def all_states(n, dtype=np.float64):
    """All 2^n vectors in {-1, +1}^n; row s has x_j = +1 iff bit j of s is 0.

    Parameters
    ----------
    n : int
    dtype : numpy dtype

    Returns
    -------
    ndarray (2^n, n)
    """
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
    return (1 - 2 * bits).astype(dtype)


def _check_sizes(net, x):
    shapes = net.stage_shapes(x.shape[1:])
    sizes = [int(np.prod(s)) for s in shapes]
    if max(sizes) > EXACT_MAX_STAGE_UNITS:
        raise ValueError(
            f"net: exact enumeration supports at most {EXACT_MAX_STAGE_UNITS} binary units per stage, "
            f"got stage sizes {sizes}"
        )
    return shapes, sizes


def _transition(noise, a, states):
    """Per-unit probabilities F (..., S, N) of every state given pre-activations a (..., N), and their product."""
    f = noise.cdf(states * a[..., None, :])
    return f.prod(axis=-1), f


def _forward_chain(net, layers, x):
    shapes, sizes = _check_sizes(net, x)
    n_batch = x.shape[0]
    states = [all_states(n, x.dtype) for n in sizes]
    pre, trans, probs = [], [], []
    for k, layer in enumerate(layers):
        h = x if k == 0 else states[k - 1].reshape((-1,) + tuple(shapes[k - 1]))
        a = layer.forward(h).reshape(h.shape[0], -1)
        t, f = _transition(net.noise, a, states[k])
        pre.append(a), trans.append(t), probs.append(f)
    marg = [trans[0]]
    for t in trans[1:]:
        marg.append(marg[-1] @ t)
    logits = net.head.forward(states[-1].reshape((-1,) + tuple(shapes[-1])))
    return shapes, states, pre, trans, probs, marg, logits, n_batch


def weight_configurations(net):
    """Every joint value of the network's Bernoulli weights: yields ``(prob, weights)`` with
    ``weights`` a dict prefix -> +-1 tensor and ``prob = prod P(w)``; the network is unchanged.

    Parameters
    ----------
    net : Network

    Yields
    ------
    prob : float
    weights : dict

    Raises
    ------
    ValueError
        With more than :data:`EXACT_MAX_WEIGHTS` Bernoulli weights in all.
    """
    latent = [(prefix, layer.latent) for prefix, layer in net.latent_layers()]
    sizes = [param.eta.size for _, param in latent]
    if sum(sizes) > EXACT_MAX_WEIGHTS:
        raise ValueError(f"net: exact enumeration supports at most {EXACT_MAX_WEIGHTS} Bernoulli weights in all "
                         f"(2^{EXACT_MAX_WEIGHTS} configurations), got {sum(sizes)}; use a sampling estimator")
    bounds = np.cumsum([0] + sizes)
    for row in all_states(sum(sizes)):
        prob, config = 1.0, {}
        for k, (prefix, param) in enumerate(latent):
            w = row[bounds[k]:bounds[k + 1]].reshape(param.eta.shape).astype(param.eta.dtype)
            prob *= param.prob(w)
            config[prefix] = w
        yield prob, config


def _expected_losses(net, layers, x, y):
    *_, marg, logits, _ = _forward_chain(net, layers, x)
    return np.einsum("bs,bs->b", marg[-1], xent(logits[None], y[:, None], grad=False))


def exact_expected_loss(net, x, y):
    """Exact ``E[l(y_b, eta_b)]`` per example: over the activations and, if the network has any,
    over the Bernoulli weights (enumerated).

    Parameters
    ----------
    net : Network
        At most 10 units per stage.
    x : ndarray (B, ...)
    y : int ndarray (B,)

    Returns
    -------
    ndarray (B,)
    """
    x, y = net.check_batch(x, y)
    if not net.latent_layers():
        return _expected_losses(net, net.stages, x, y)
    return sum(prob * _expected_losses(net, net.stage_layers(w), x, y) for prob, w in weight_configurations(net))


def _score_weights(trans, probs, states):
    """T_{.,t} x_tj / F_{.,t,j}: derivative of T w.r.t. a_j divided by p(a_j); 0 where F = 0 (then T = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = trans[..., None] * states / probs
    return np.where(probs > 0, r, 0.0)


def _gradient_given_weights(net, layers, x, y):
    """Exact batch-mean expected loss over the activations and its gradient, the weights in use fixed
    (``"<prefix>.weight"`` is ``dE/dw`` at them)."""
    shapes, states, pre, trans, probs, marg, logits, n_batch = _forward_chain(net, layers, x)
    loss, g_eta = xent(logits[None], y[:, None])          # (B, S_L), (B, S_L, K)
    grads = {}
    g_head = np.einsum("bs,bsk->sk", marg[-1], g_eta) / n_batch
    add_layer_grads(grads, "head", net.head.param_grads(states[-1], g_head))
    value = loss
    for k in range(len(layers) - 1, -1, -1):
        r = _score_weights(trans[k], probs[k], states[k])
        layer = layers[k]
        if k > 0:
            # sum_b m^{k-1}[b, s] v^k[b, t], then contract with r over t
            m_v = marg[k - 1].T @ value
            g_a = net.noise.pdf(pre[k]) * np.einsum("stj,st->sj", r, m_v) / n_batch
            h = states[k - 1].reshape((-1,) + tuple(shapes[k - 1]))
            add_layer_grads(grads, f"stages.{k}", layer.param_grads(h, g_a.reshape(layer.forward(h).shape)))
            value = value @ trans[k].T
        else:
            g_a = net.noise.pdf(pre[0]) * np.einsum("bsj,bs->bj", r, value) / n_batch
            add_layer_grads(grads, "stages.0", layer.param_grads(x, g_a.reshape(layer.forward(x).shape)))
    return np.einsum("bs,bs->b", marg[-1], loss).mean(), grads


def exact_gradient(net, x, y, rng=None):
    r"""Exact batch-mean expected loss and its exact gradient (keys of ``net.params``); ``rng`` is unused.

    With Bernoulli weights the expectation runs over their :func:`weight_configurations` as well,
    ``E = sum_w P(w) E_w``, and the latent gradient is the exact ``dE/deta = sum_w E_w dP(w)/deta``
    (whatever the layers' weight rule: the oracle, not a training direction); every other parameter
    gets ``sum_w P(w) dE_w/dparam``.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : ignored

    Returns
    -------
    loss : float
        The estimate of the batch-mean expected loss.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    if not net.latent_layers():
        loss, grads = _gradient_given_weights(net, net.stages, x, y)
        return finalize(net, loss, grads)
    latent = {prefix: layer.latent for prefix, layer in net.latent_layers()}
    params = net.params
    loss, total = 0.0, {k: np.zeros(p.shape) for k, p in params.items()}
    for prob, weights in weight_configurations(net):
        e_w, g_w = _gradient_given_weights(net, net.stage_layers(weights), x, y)
        loss += prob * e_w
        for prefix, param in latent.items():
            total[f"{prefix}.eta"] += prob * e_w * param.score(weights[prefix])
        for key in total:
            if key in g_w:
                total[key] += prob * g_w[key]
    return float(loss), {k: total[k].astype(p.dtype) for k, p in params.items()}


register_estimator("exact", exact_gradient)
