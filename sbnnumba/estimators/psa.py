r"""PSA: the path sample-analytic gradient estimator (Shekhovtsov, Yanush, Flach, NeurIPS 2020).

One sampled path ``x^1..x^L`` per example, then (spec psa.md, section 2):

* head differences (exact): ``d^L_i = l(y, eta - 2 x^L_i V[:, i]) - l(y, eta)``            (B, N_L)
* per stage k = L..1:
    ``g_a^k = -x^k * p(a^k) * d^k``  -> parameter gradients ``g_a^k (x^{k-1})^T``, ``sum g_a^k``
    ``d^{k-1}_i = sum_j Delta^k_ij d^k_j``,
    ``Delta^k_ij = F(-x^k_j (a^k_j - 2 W^k_ji x^{k-1}_i)) - F(-x^k_j a^k_j)``  (layer.flip_propagate)
* head gradient: the Rao-Blackwellized mixture ``(1 - sum_i w_i) grad l(x) + sum_i w_i grad l(x_flip_i)``
  with ``w_i = (1 - p_x_i) / N_L`` (``head="rb"``, default) or ``grad l(x)`` (``head="sample"``);
* loss value: ``E_hat = l(x) + sum_i w_i d^L_i`` (unbiased for ``E[l | x^{L-1}]``).

Exact (unbiased) for the head and the last binary layer, for one-binary-layer networks and for
networks whose binary layers after the first have width 1; elsewhere biased by the linearization
(joint flips ignored). ``linearize=True`` replaces Delta by ``2 x_j x_i W_ji p(a_j)`` and the head
differences by ``-2 x^L dl/dx^L``: that is exactly deep ST (spec section 3), kept for verification.
"""
from ..validation import check_bool
from . import rbhead
from .common import add_layer_grads, finalize, flat_last_state, path_layers
from .registry import register_path_estimator


def psa_path_gradient(net, path, y, weights, head="rb", linearize=False):
    """PSA estimate on given paths; see the module docstring.

    Written in the layer interface and the training-step operations of ``net.backend``
    (:mod:`sbnnumba.backends.step`), so the same code runs on host arrays and, in the device-resident
    step, on a device copy of the network (``linearize`` is a host-only verification form).

    Parameters
    ----------
    net : Network
    path : Path
        One sampled path per example (:meth:`sbnnumba.Network.sample`).
    y : int array (B,)
    weights : array (B,)
        Per-example weights (``1/B`` for a batch mean; path probabilities in the exact oracle).
    head : {"rb", "sample"}
        Rao-Blackwellized head gradient, or the sampled one.
    linearize : bool
        Deep ST written as PSA (verification).

    Returns
    -------
    loss : float
        ``sum_b weights_b E_hat_b`` (a one-entry device array on a device copy).
    grads : dict
        The keys and shapes of ``net.params``.
    """
    if head not in ("rb", "sample"):
        raise ValueError(f"head: expected 'rb' or 'sample', got {head!r}")
    linearize = check_bool(linearize, "linearize")
    be, noise, V = net.backend, net.noise, net.head.weight
    x_last = flat_last_state(path)
    loss0, g_eta = be.softmax_xent(path.logits, y)
    grads = {}
    # Rao-Blackwellized value and head gradient (spec section 2.6, estimators/rbhead.py); w is a constant.
    w_rb = rbhead.flip_weights(net, path)
    if head == "rb" and not linearize:
        d, grads["head.weight"], grads["head.bias"] = be.psa_rb_head(path.logits, y, x_last, V, loss0, g_eta, w_rb,
                                                                     weights)
    else:
        if linearize:
            d = -2 * x_last * (g_eta @ V)
        else:
            d, _ = be.head_flips(path.logits, y, x_last, V, loss0)
        add_layer_grads(grads, "head", net.head.param_grads(x_last, be.scale_rows(g_eta, weights)))
    value = rbhead.value(net, loss0, w_rb, d) if not linearize else loss0

    layers = path_layers(net, path)
    for k in range(len(layers) - 1, -1, -1):
        layer, st = layers[k], path.stages[k]
        d = d.reshape(st.pre.shape)
        g_a = be.psa_preactivation_grad(st.state, st.pre, d, noise)
        add_layer_grads(grads, f"stages.{k}", layer.param_grads(st.input, be.scale_rows(g_a, weights), st.saved))
        if k > 0:
            if linearize:
                lin = st.state * noise.pdf(st.pre) * d
                d = 2 * st.input * layer.backward_input(lin, st.input.shape[1:])
            else:
                d = layer.flip_propagate(st.input, st.pre, st.state, d, noise, be)
    return finalize(net, be.weighted_sum(weights, value), grads)


register_path_estimator("psa", psa_path_gradient, device_step=True)
