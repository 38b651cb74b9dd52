r"""Straight-through estimators: deep ST derived from PSA and the ad-hoc variants.

Forward with the sampled +-1 states; ordinary backprop in which each ``sign`` is replaced on the
backward pass by a factor ``phi(a)``:

.. math::

    \delta^L = V^T \partial l / \partial \eta, \quad g_a^k = \phi(a^k) \odot \delta^k, \quad
    \delta^{k-1} = W^{kT} g_a^k, \quad \partial W^k = g_a^k x^{k-1 T}.

* ``"st"`` (deep ST, spec psa.md section 3): ``phi(a) = 2 p(a)``, the derivative of the mean
  response ``2F(a) - 1`` of the network's own noise (tanh(a/2)' for logistic noise).
* ``proxy=<noise name>``: ``phi = 2 p_proxy`` of another family (a noise/proxy mismatch unless
  it equals the network's noise); ``"st-hardtanh"`` is ``proxy="uniform"``, i.e. ``1[|a| <= 1]``.
* ``proxy="identity"`` (``"st-identity"``): ``phi = 1``.

Weight gradients use the sampled inputs, input gradients the real weights (spec st.md 3.1).
"""
import numpy as np

from ..losses import xent
from ..noise import get_noise
from .common import add_layer_grads, finalize, flat_last_state
from .registry import register_path_estimator


def backward_factor(net, proxy):
    """The function ``phi(a)`` replacing ``dx/da`` for the given proxy choice."""
    if proxy is None:
        return net.noise.mean_grad
    if proxy == "identity":
        return np.ones_like
    return get_noise(proxy).mean_grad


def st_path_gradient(net, path, y, weights, proxy=None):
    """ST estimate on given paths; returns (mean sampled loss, grads)."""
    factor = backward_factor(net, proxy)
    x_last = flat_last_state(path)
    loss0, g_eta = xent(path.logits, y)
    g_eta = g_eta * weights[:, None]
    grads = {}
    add_layer_grads(grads, "head", net.head.param_grads(x_last, g_eta))
    delta = net.head.backward_input(g_eta, path.stages[-1].state.shape[1:])
    for k in range(len(net.stages) - 1, -1, -1):
        layer, st = net.stages[k], path.stages[k]
        g_a = factor(st.pre) * delta.reshape(st.pre.shape)
        add_layer_grads(grads, f"stages.{k}", layer.param_grads(st.input, g_a))
        if k > 0:
            delta = layer.backward_input(g_a, st.input.shape[1:])
    return finalize(net, np.dot(weights, loss0), grads)


register_path_estimator("st", st_path_gradient)
register_path_estimator("st-identity", st_path_gradient, proxy="identity")
register_path_estimator("st-hardtanh", st_path_gradient, proxy="uniform")
