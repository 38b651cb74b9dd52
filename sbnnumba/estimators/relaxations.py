r"""Relaxation and moment-propagation baselines (spec psa.md 4.1, 4.2; st.md 9.1).

All are *direct* estimators ``fn(net, x, y, rng, **options) -> (loss, grads)`` that backpropagate
through a real-valued surrogate network with the generic layer interface (``forward``,
``backward_input``, ``param_grads``, ``forward_moments``), so they work for any stage type.
Noise is drawn as ``u ~ U(0, 1)`` per unit and ``z = F^{-1}(u)`` (:meth:`~sbnnumba.noise.NoiseFamily.quantile`), so the
hard state ``sign(a - z)`` equals the library's ``x = +1 iff u < F(a)``.

Relaxed forward passes (per stage k, ``a^k = layer_k(h^{k-1})`` (B, ...), ``h^0 = x``)
----------------------------------------------------------------------------------------

``"concrete"`` (binary Concrete / Gumbel-softmax, option ``tau > 0``, default 1):
    ``h^k = x~ = tanh((a - z) / (2 tau))`` (the +-1 form of ``sigma((a - z)/tau)``); relaxed
    values feed the next stages and the head; pathwise gradient with
    ``dx~/da = (1 - x~^2) / (2 tau)``. For logistic noise this is the Gumbel-softmax (the
    difference of two Gumbels is logistic); for the other noises it is the same tanh relaxation
    of ``sign(a - Z)`` with the network's own ``Z`` (a generalization; ``x~ -> sign(a - Z)`` as
    ``tau -> 0``). Loss returned: the relaxed loss ``l(y, V h^L + c)``.
``"st-gumbel"`` (option ``tau``): forward with the hard sample ``h^k = x = sign(a - z)``,
    backward with ``dx/da := (1 - x~^2) / (2 tau)`` of the relaxed ``x~`` of the same ``z``
    (st.md 9.1). Loss: the sampled loss.
``"tanh"`` (deterministic mean propagation, "AP1"): ``h^k = 2F(a) - 1`` (``tanh(a/2)`` for
    logistic noise), ``dh/da = 2p(a)``; zero variance, constant bias. Loss: the deterministic
    network's loss. ``rng`` only samples Bernoulli weights, if the network has any.

Moment propagation (spec psa.md 4.2)
------------------------------------

Independent units with means ``mu`` and variances ``v``; the input has ``mu = x, v = 0``. Per stage
``(mu_a, v_a) = layer.forward_moments(mu, v)``, i.e. ``mu_a = W mu + b``, ``v_a = W^2 v``.

``"adf"`` ("AP2", assumed density filtering), deterministic:
    ``P(+1) = F(s mu_a / sqrt(v_a + s^2))`` with ``s^2 = Var Z`` (:attr:`~sbnnumba.noise.NoiseFamily.variance`: pi^2/3
    logistic, 1 normal, 1/3 uniform, 1/6 triangular): the probit approximation matched to the
    noise variance, exact when ``v_a = 0`` and, for normal noise, exact for Gaussian ``a``.
    ``mu_x = 2P - 1``, ``v_x = 4P(1 - P)``.
``"local-reparam"``: sample ``a~ = mu_a + sqrt(v_a) eps``, ``eps ~ N(0, 1)`` (reparameterized),
    then ``mu_x = 2F(a~) - 1``, ``v_x = 1 - mu_x^2``.

Head (option ``head``), with ``(mu_eta, v_eta) = head.forward_moments(mu_L, v_L)`` (B, K):

* ``"taylor"`` (default of ``"adf"``): the expected loss ``E[l(y, eta)]``, ``eta ~ N(mu_eta, diag v_eta)``,
  approximated to second order: ``l(mu) + 1/2 sum_k v_k p_k (1 - p_k)`` with ``p = softmax(mu)``
  (``p = sigma(mu)`` for a 1-logit head) — the diagonal of the Hessian of the loss. Deterministic.
* ``"mean"``: the plug-in ``l(y, mu_eta)``.
* ``"sample"`` (default of ``"local-reparam"``): ``l(y, mu_eta + sqrt(v_eta) eps)``.
* ``"moment-map"``: the reference implementation's quirk (psa.md 4.2): the logits are passed through
  the binary moment map above, ``(m, w) = (2P - 1, 4P(1 - P))``, and ``l(y, m + sqrt(w) eps)``
  is used; it limits the logits to [-1, 1]. Only for comparisons.

The loss returned is the (approximate or sampled) head loss. Gradients are exact pathwise
gradients of that loss: the variance path uses ``d v_a / d W = 2 W v`` (``2 W * param_grads(v, g_v)``)
and the transposed squared-weight map for ``d v_a / d v`` (see :func:`squared_weight_layer`).
The moment estimators therefore need plain affine stages (``Linear``, ``Conv2d``); batch-normalized
stages are refused with ``ValueError``.

Bernoulli weights (if any) are sampled once per call (``net.sample_weights``, computed with
through ``net.stage_layers``; the network is unchanged) and held fixed, as for every activation estimator;
``finalize`` maps ``dl/dw`` to the latent ``eta``.
"""
import numpy as np
from scipy import special

from ..losses import xent
from ..uniforms import random_uniforms
from ..validation import check_choice, check_positive_number
from .common import add_layer_grads, finalize
from .registry import register_estimator

HEADS = ("taylor", "mean", "sample", "moment-map")

_TINY = 1e-12


def _uniforms(rng, shape):
    return np.clip(random_uniforms(rng, shape, np.float64), _TINY, 1 - _TINY)


# --------------------------------------------------------------------- relaxed forward + backprop
def _relaxed_estimate(net, layers, x, y, activation):
    """Forward with ``h^k, slope^k = activation(a^k)`` per stage, then backprop with ``slope`` as dh/da.

    Returns (mean head loss, grads); ``slope`` replaces the derivative of the activation.
    """
    n = x.shape[0]
    inputs, saved, slopes, h = [], [], [], x
    for layer in layers:
        a, kept = layer.forward_saving(h)
        inputs.append(h)
        saved.append(kept)
        h, slope = activation(a)
        slopes.append(slope)
    loss, g_eta = xent(net.head.forward(h), y)
    g_eta = g_eta / n
    grads = {}
    add_layer_grads(grads, "head", net.head.param_grads(h, g_eta))
    delta = net.head.backward_input(g_eta, h.shape[1:])
    for k in range(len(layers) - 1, -1, -1):
        layer = layers[k]
        g_a = slopes[k] * delta
        add_layer_grads(grads, f"stages.{k}", layer.param_grads(inputs[k], g_a, saved[k]))
        if k > 0:
            delta = layer.backward_input(g_a, inputs[k].shape[1:])
    return finalize(net, loss.mean(), grads)


def _gumbel(net, rng, tau, hard):
    def activation(a):
        u = _uniforms(rng, a.shape)
        relaxed = np.tanh((a - net.noise.quantile(u)) / (2 * tau))
        slope = ((1 - relaxed * relaxed) / (2 * tau)).astype(a.dtype)
        h = net.noise.sample(a, u) if hard else relaxed.astype(a.dtype)
        return h, slope
    return activation


def concrete_gradient(net, x, y, rng, tau=1.0):
    """Binary Concrete / Gumbel-softmax: relaxed forward ``tanh((a - z)/(2 tau))``, pathwise gradient.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : numpy.random.Generator
    tau : float
        Temperature.

    Returns
    -------
    loss : float
        The estimate of the batch-mean expected loss.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    tau = check_positive_number(tau, "tau")
    layers = net.stage_layers(net.sample_weights(rng))
    return _relaxed_estimate(net, layers, x, y, _gumbel(net, rng, tau, hard=False))


def st_gumbel_gradient(net, x, y, rng, tau=1.0):
    """ST-Gumbel: hard sample forward, backward through ``(1 - x~^2)/(2 tau)`` of the same noise.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : numpy.random.Generator
    tau : float
        Temperature.

    Returns
    -------
    loss : float
        The estimate of the batch-mean expected loss.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    tau = check_positive_number(tau, "tau")
    layers = net.stage_layers(net.sample_weights(rng))
    return _relaxed_estimate(net, layers, x, y, _gumbel(net, rng, tau, hard=True))


def tanh_gradient(net, x, y, rng):
    """Deterministic mean propagation ``h = 2F(a) - 1`` with its exact gradient (``rng`` samples only
    Bernoulli weights, if any).

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : numpy.random.Generator

    Returns
    -------
    loss : float
        The estimate of the batch-mean expected loss.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    layers = net.stage_layers(net.sample_weights(rng))
    return _relaxed_estimate(net, layers, x, y, lambda a: (net.noise.mean(a), net.noise.mean_grad(a)))


# ------------------------------------------------------------------------------ moment propagation
def squared_weight_layer(layer):
    """A view of the affine ``layer`` with ``weight ** 2`` and a zero bias: the variance map ``v -> W^2 v``.

    Its ``backward_input`` is the transposed variance map (``layer`` itself is unchanged).

    Parameters
    ----------
    layer : AffineLayer

    Returns
    -------
    AffineLayer
        A view (:meth:`~sbnnumba.layers.AffineLayer.with_weight`).
    """
    sq = layer.with_weight(layer.weight ** 2)
    sq.bias = np.zeros_like(layer.bias)
    return sq


def _moment_param_grads(layer, mu, var, g_mu, g_var):
    """Gradients of ``mu_a = W mu + b`` and ``v_a = W^2 v`` w.r.t. the layer parameters."""
    g = layer.param_grads(mu, g_mu)
    if var is not None:
        g["weight"] = g["weight"] + 2 * layer.weight * layer.param_grads(var, g_var)["weight"]
    return g


def _moment_backward_input(layer, var, g_mu, g_var, in_shape):
    g_mu_in = layer.backward_input(g_mu, in_shape)
    g_var_in = squared_weight_layer(layer).backward_input(g_var, in_shape) if var is not None else None
    return g_mu_in, g_var_in


def binary_moment_map(noise, mu_a, v_a):
    """ADF moments of ``x = sign(a - Z)``, ``a ~ N(mu_a, v_a)``; returns ``(mu_x, v_x, backward)``.

    ``P = F(t)``, ``t = s mu_a / r``, ``r = sqrt(v_a + s^2)``; ``backward(g_mu_x, g_v_x) -> (g_mu_a, g_v_a)``.

    Parameters
    ----------
    noise : NoiseFamily
    mu_a, v_a : ndarrays of one shape
        Mean and variance of the pre-activation.

    Returns
    -------
    mu_x, v_x : ndarrays
    backward : callable
    """
    s2 = noise.variance
    r = np.sqrt(v_a + s2)
    t = np.sqrt(s2) * mu_a / r
    p_plus = noise.cdf(t)
    mu_x, v_x = 2 * p_plus - 1, 4 * p_plus * (1 - p_plus)

    def backward(g_mu_x, g_v_x):
        g_t = noise.pdf(t) * (2 * g_mu_x + 4 * (1 - 2 * p_plus) * g_v_x)
        return g_t * np.sqrt(s2) / r, -0.5 * g_t * t / (r * r)

    return mu_x, v_x, backward


def _local_reparam_map(noise, rng):
    def moment_map(mu_a, v_a):
        eps = rng.standard_normal(mu_a.shape).astype(mu_a.dtype)
        sd = np.sqrt(v_a)
        a_tilde = mu_a + sd * eps
        mu_x = noise.mean(a_tilde)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_sd = np.where(sd > 0, eps / (2 * np.where(sd > 0, sd, 1)), 0).astype(mu_a.dtype)

        def backward(g_mu_x, g_v_x):
            g_a = noise.mean_grad(a_tilde) * (g_mu_x - 2 * mu_x * g_v_x)
            return g_a, g_a * d_sd

        return mu_x, 1 - mu_x * mu_x, backward
    return moment_map


def _head_loss(net, head, mu, var, y, rng):
    """Head loss per example and its gradients w.r.t. the logit moments: (loss, g_mu, g_var)."""
    if head in ("mean", "taylor"):
        loss, g_mu = xent(mu, y)
        g_var = np.zeros_like(var)
        if head == "taylor":
            p = special.expit(mu) if mu.shape[-1] == 1 else special.softmax(mu, axis=-1)
            hess = p * (1 - p)
            loss = loss + 0.5 * np.sum(var * hess, axis=-1)
            if mu.shape[-1] == 1:  # d/dmu of 1/2 v sigma(mu) sigma(-mu)
                g_mu = g_mu + 0.5 * var * hess * (1 - 2 * p)
            else:  # dp_k/dmu_j = p_k (delta_kj - p_j)
                c = 0.5 * var * (1 - 2 * p) * p
                g_mu = g_mu + c - p * c.sum(axis=-1, keepdims=True)
            g_var = 0.5 * hess
        return loss, g_mu, g_var
    back = None
    if head == "moment-map":
        mu, var, back = binary_moment_map(net.noise, mu, var)
    eps = rng.standard_normal(mu.shape).astype(mu.dtype)
    sd = np.sqrt(var)
    loss, g = xent(mu + sd * eps, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_var = np.where(sd > 0, g * eps / (2 * np.where(sd > 0, sd, 1)), 0)
    g_mu = g
    if back is not None:
        g_mu, g_var = back(g_mu, g_var)
    return loss, g_mu, g_var


def _moment_estimate(net, x, y, rng, moment_map, head):
    """Propagate (mu, v) through the stages with ``moment_map``, evaluate the head, backprop."""
    if net.normalizations():
        raise ValueError("net: moment propagation (adf, local-reparam) supports plain affine stages only, "
                         "not batch-normalized ones")
    layers = net.stage_layers(net.sample_weights(rng))
    n = x.shape[0]
    mu, var, cache = x, None, []
    for layer in layers:
        mu_a, v_a = layer.forward_moments(mu, np.zeros_like(mu) if var is None else var)
        mu_x, v_x, back = moment_map(mu_a, v_a)
        cache.append((mu, var, back))
        mu, var = mu_x, v_x
    mu_eta, v_eta = net.head.forward_moments(mu, var)
    loss, g_mu_eta, g_v_eta = _head_loss(net, head, mu_eta, v_eta, y, rng)
    g_mu_eta, g_v_eta = g_mu_eta / n, g_v_eta / n
    grads = {}
    add_layer_grads(grads, "head", _moment_param_grads(net.head, mu, var, g_mu_eta, g_v_eta))
    g_mu, g_var = _moment_backward_input(net.head, var, g_mu_eta, g_v_eta, mu.shape[1:])
    for k in range(len(layers) - 1, -1, -1):
        layer, (mu_in, var_in, back) = layers[k], cache[k]
        g_mu_a, g_v_a = back(g_mu, g_var)
        add_layer_grads(grads, f"stages.{k}", _moment_param_grads(layer, mu_in, var_in, g_mu_a, g_v_a))
        if k > 0:
            g_mu, g_var = _moment_backward_input(layer, var_in, g_mu_a, g_v_a, mu_in.shape[1:])
    return finalize(net, loss.mean(), grads)


def adf_gradient(net, x, y, rng, head="taylor"):
    """ADF ("AP2") moment propagation with the noise-matched probit approximation; see module docstring.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : numpy.random.Generator
    head : {"taylor", "mean", "sample", "moment-map"}
        How the loss of the Gaussian logits is evaluated (module docstring).

    Returns
    -------
    loss : float
        The estimate of the batch-mean expected loss.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    head = check_choice(head, "head", HEADS)
    return _moment_estimate(net, x, y, rng, lambda m, v: binary_moment_map(net.noise, m, v), head)


def local_reparam_gradient(net, x, y, rng, head="sample"):
    """Local reparameterization: ``a~ ~ N(mu_a, v_a)`` per stage, ``mu_x = 2F(a~) - 1``, ``v_x = 1 - mu_x^2``.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : numpy.random.Generator
    head : {"sample", "taylor", "mean", "moment-map"}
        How the loss of the Gaussian logits is evaluated (module docstring).

    Returns
    -------
    loss : float
        The estimate of the batch-mean expected loss.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    head = check_choice(head, "head", HEADS)
    return _moment_estimate(net, x, y, rng, _local_reparam_map(net.noise, rng), head)


register_estimator("concrete", concrete_gradient)
register_estimator("st-gumbel", st_gumbel_gradient)
register_estimator("tanh", tanh_gradient)
register_estimator("adf", adf_gradient)
register_estimator("local-reparam", local_reparam_gradient)
