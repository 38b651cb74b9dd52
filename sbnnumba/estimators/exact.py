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
"""
import numpy as np

from ..losses import xent
from .common import add_layer_grads, finalize
from .registry import register_estimator

EXACT_MAX_STAGE_UNITS = 10


def all_states(n, dtype=np.float64):
    """All 2^n vectors in {-1, +1}^n, (2^n, n); row s has x_j = +1 iff bit j of s is 0."""
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


def _forward_chain(net, x):
    shapes, sizes = _check_sizes(net, x)
    n_batch = x.shape[0]
    states = [all_states(n, x.dtype) for n in sizes]
    pre, trans, probs = [], [], []
    for k, layer in enumerate(net.stages):
        h = x if k == 0 else states[k - 1].reshape((-1,) + tuple(shapes[k - 1]))
        a = layer.forward(h).reshape(h.shape[0], -1)
        t, f = _transition(net.noise, a, states[k])
        pre.append(a), trans.append(t), probs.append(f)
    marg = [trans[0]]
    for t in trans[1:]:
        marg.append(marg[-1] @ t)
    logits = net.head.forward(states[-1].reshape((-1,) + tuple(shapes[-1])))
    return shapes, states, pre, trans, probs, marg, logits, n_batch


def exact_expected_loss(net, x, y):
    """Exact ``E_Z[l(y_b, eta_b)]`` per example, (B,)."""
    x, y = net.check_batch(x, y)
    *_, marg, logits, _ = _forward_chain(net, x)
    return np.einsum("bs,bs->b", marg[-1], xent(logits[None], y[:, None], grad=False))


def _score_weights(trans, probs, states):
    """T_{.,t} x_tj / F_{.,t,j}: derivative of T w.r.t. a_j divided by p(a_j); 0 where F = 0 (then T = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = trans[..., None] * states / probs
    return np.where(probs > 0, r, 0.0)


def exact_gradient(net, x, y, rng=None):
    """Exact batch-mean expected loss and its gradient (keys of ``net.params``)."""
    shapes, states, pre, trans, probs, marg, logits, n_batch = _forward_chain(net, x)
    loss, g_eta = xent(logits[None], y[:, None])          # (B, S_L), (B, S_L, K)
    grads = {}
    g_head = np.einsum("bs,bsk->sk", marg[-1], g_eta) / n_batch
    add_layer_grads(grads, "head", net.head.param_grads(states[-1], g_head))
    value = loss
    for k in range(len(net.stages) - 1, -1, -1):
        r = _score_weights(trans[k], probs[k], states[k])
        layer = net.stages[k]
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
    expected = np.einsum("bs,bs->b", marg[-1], loss)
    return finalize(net, expected.mean(), grads)


register_estimator("exact", exact_gradient)
