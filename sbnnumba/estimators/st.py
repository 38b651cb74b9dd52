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
* ``proxy="tanh"`` (``"st-tanh"``): ``phi = 1 - tanh(a)^2``, the common mismatch of tanh(a)' for
  tanh(a/2)' with logistic noise (spec st.md section 4).
* ``"st-deterministic"``: forward ``x = sign(a)`` without noise (the BNN default), backward ``2 p(a)``:
  a consistent estimator of neither model, kept for comparison.

Named noise/proxy pairs of [ST]: logistic + tanh(a/2)' (``"st"`` with logistic noise), uniform +
htanh' (``"st"`` with uniform noise), triangular + ApproxSign' (``"st"`` with triangular noise),
normal + 2 phi; mismatches via ``proxy=``.

Weight gradients use the sampled inputs, input gradients the real weights (spec st.md 3.1).
"""
import functools

import numpy as np

from ..noise import get_noise
from .common import add_layer_grads, finalize, flat_last_state, path_layers
from .registry import register_estimator, register_path_estimator

PROXIES = {
    "identity": np.ones_like,
    "tanh": lambda a: 1 - np.tanh(a) ** 2,
}


def backward_factor(proxy):
    """The function ``phi(a)`` replacing ``dx/da`` for a proxy other than the network's own noise.

    Parameters
    ----------
    proxy : str
        A noise-family name (``2 p_proxy``) or one of :data:`PROXIES` (host arrays).

    Returns
    -------
    callable
        ``a -> phi(a)``, the shape of ``a``.
    """
    if proxy in PROXIES:
        return PROXIES[proxy]
    try:
        return get_noise(proxy).mean_grad
    except ValueError:
        raise ValueError(f"proxy: expected None, a noise name or one of {sorted(PROXIES)}, got {proxy!r}") from None


def preactivation_grad(net, proxy):
    """The map ``(a, delta) -> g_a = phi(a) delta`` of ST's backward pass.

    Parameters
    ----------
    net : Network
    proxy : None or str
        None: the network's own noise, ``phi = 2 p(a)``, one backend operation on the network's backend
        (:meth:`~sbnnumba.backends.base.Backend.st_preactivation_grad`); else :func:`backward_factor` (host
        arrays).

    Returns
    -------
    callable
        ``(a, delta) -> g_a``, the shape of ``a``.
    """
    if proxy is None:
        return functools.partial(net.backend.st_preactivation_grad, noise=net.noise)
    factor = backward_factor(proxy)
    return lambda a, delta: net.backend.multiply(factor(a), delta)


def st_path_gradient(net, path, y, weights, proxy=None):
    """ST estimate on given paths (written in the layer interface and ``net.backend``'s training-step
    operations, so it also runs on the device copy of the device-resident step).

    Parameters
    ----------
    net : Network
    path : Path
    y : int array (B,)
    weights : array (B,)
        Per-example weights.
    proxy : None or str
        The backward factor (:func:`preactivation_grad`); proxies other than None run on host arrays.

    Returns
    -------
    loss : float
        ``sum_b weights_b l(y_b, eta_b)`` of the sampled path (a one-entry device array on a device copy).
    grads : dict
        The keys and shapes of ``net.params``.
    """
    be = net.backend
    grad_a = preactivation_grad(net, proxy)
    x_last = flat_last_state(path)
    loss0, g_eta = be.softmax_xent(path.logits, y)
    g_eta = be.scale_rows(g_eta, weights)
    grads = {}
    add_layer_grads(grads, "head", net.head.param_grads(x_last, g_eta))
    delta = net.head.backward_input(g_eta, path.stages[-1].state.shape[1:])
    layers = path_layers(net, path)
    for k in range(len(layers) - 1, -1, -1):
        layer, st = layers[k], path.stages[k]
        g_a = grad_a(st.pre, delta.reshape(st.pre.shape))
        add_layer_grads(grads, f"stages.{k}", layer.param_grads(st.input, g_a, st.saved))
        if k > 0:
            delta = layer.backward_input(g_a, st.input.shape[1:])
    return finalize(net, be.weighted_sum(weights, loss0), grads)


def st_deterministic(net, x, y, rng, proxy=None):
    """Deterministic-forward ST: states ``sign(a)`` (``sign(0) = +1``), Bernoulli weights sampled as usual.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : numpy.random.Generator
        Samples the Bernoulli weights (if any).
    proxy : None or str
        The backward factor (:func:`preactivation_grad`).

    Returns
    -------
    loss : float
        The batch-mean loss of the sign network.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    path = net.sample_path(x, net.sample_weights(rng), lambda k, a: np.where(a >= 0, 1, -1).astype(a.dtype))
    weights = np.full(x.shape[0], 1.0 / x.shape[0], dtype=net.dtype)
    return st_path_gradient(net, path, y, weights, proxy=proxy)


register_path_estimator("st", st_path_gradient, device_step=True)
register_path_estimator("st-tanh", st_path_gradient, proxy="tanh")
register_estimator("st-deterministic", st_deterministic)
register_path_estimator("st-identity", st_path_gradient, proxy="identity")
register_path_estimator("st-hardtanh", st_path_gradient, proxy="uniform")
