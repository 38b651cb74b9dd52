"""Pieces shared by the estimators: head terms, parameter-gradient bookkeeping."""
import numpy as np


def flat_last_state(path):
    state = path.last_state
    return state.reshape(state.shape[0], -1)


def head_flip_logits(net, path):
    r"""Single-flip logits ``eta^(i) = eta - 2 x^L_i V[:, i]`` for every unit i of the last stage: (B, N_L, K)."""
    x_last = flat_last_state(path)
    return path.logits[:, None, :] - 2 * x_last[:, :, None] * net.head.weight.T[None, :, :]


def add_layer_grads(grads, prefix, layer_grads):
    for name, g in layer_grads.items():
        grads[f"{prefix}.{name}"] = g


def path_layers(net, path):
    """The stage layers that computed ``path`` (views with its sampled Bernoulli weights)."""
    return path.layers if path.layers is not None else net.stage_layers(path.weights)


def finalize(net, loss, grads):
    """Order ``grads`` like ``net.params`` and cast to the parameter dtypes.

    For layers with Bernoulli weights the gradient w.r.t. the sampled weights is mapped to the
    latent ``eta`` by the layer's weight rule (mirror descent or latent SGD, :mod:`sbnnumba.weights`;
    :meth:`~sbnnumba.Network.finalize_grads`).
    """
    net.finalize_grads(grads)
    return float(loss), {k: np.asarray(grads[k], dtype=p.dtype).reshape(p.shape) for k, p in net.params.items()}
