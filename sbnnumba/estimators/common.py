"""Pieces shared by the estimators: head terms, parameter-gradient bookkeeping."""
from ..backends.reference import flip_logits


def flat_last_state(path):
    """The last stage's states as (B, N_L) (a conv map flattened in (C, H, W) order).

    Parameters
    ----------
    path : Path

    Returns
    -------
    array (B, N_L)
    """
    state = path.last_state
    return state.reshape(state.shape[0], -1)


def head_flip_logits(net, path):
    r"""Single-flip logits ``eta^(i) = eta - 2 x^L_i V[:, i]`` for every unit i of the last stage (host arrays).

    Parameters
    ----------
    net : Network
    path : Path

    Returns
    -------
    ndarray (B, N_L, K)
    """
    return flip_logits(path.logits, flat_last_state(path), net.head.weight)


def add_layer_grads(grads, prefix, layer_grads):
    """Store a layer's gradients under ``"{prefix}.{name}"`` in ``grads`` (in place).

    Parameters
    ----------
    grads : dict
    prefix : str
        ``"stages.{k}"`` or ``"head"``.
    layer_grads : dict
        name -> gradient (:meth:`sbnnumba.layers.Layer.param_grads`).

    Returns
    -------
    None
    """
    for name, g in layer_grads.items():
        grads[f"{prefix}.{name}"] = g


def path_layers(net, path):
    """The stage layers that computed ``path`` (views with its sampled Bernoulli weights).

    Parameters
    ----------
    net : Network
    path : Path

    Returns
    -------
    list of Layer
    """
    return path.layers if path.layers is not None else net.stage_layers(path.weights)


def finalize(net, loss, grads):
    """Order ``grads`` like ``net.params`` and cast to the parameter dtypes.

    For layers with Bernoulli weights the gradient w.r.t. the sampled weights is mapped to the
    latent ``eta`` by the layer's weight rule (mirror descent or latent SGD, :mod:`sbnnumba.weights`;
    :meth:`~sbnnumba.Network.finalize_grads`).

    Parameters
    ----------
    net : Network
    loss : scalar
        The estimate's loss (:meth:`~sbnnumba.backends.step.StepOperations.loss_scalar` makes it a float on
        the host; a device copy keeps it on the device).
    grads : dict
        ``"{prefix}.{name}"`` -> gradient, ``"weight"`` as ``dL/dw``.

    Returns
    -------
    loss : float (or a one-entry device array)
    grads : dict
        The keys, shapes and dtypes of ``net.params``.
    """
    net.finalize_grads(grads)
    be = net.backend
    return be.loss_scalar(loss), {k: be.asarray(grads[k], p.dtype).reshape(p.shape) for k, p in net.params.items()}
