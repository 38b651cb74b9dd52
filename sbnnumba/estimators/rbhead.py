r"""The Rao-Blackwellized head (spec psa.md, section 2.6), written once for PSA and evaluation.

For one sampled last state ``x^L`` (B, N_L) with logits ``eta = V x^L + c`` (B, K), the head is summed
analytically over single flips of the last binary stage:

* single-flip logits ``eta^(i) = eta - 2 x^L_i V[:, i]`` (``common.head_flip_logits``)         (B, N_L, K)
* weights ``w_i = (1 - P(X^L_i = x^L_i | x^{L-1})) / N_L = F(-x^L_i a^L_i) / N_L``             (B, N_L)
* mixture of any per-logit quantity ``q`` (class probabilities, loss gradients)

  .. math:: \bar q = (1 - \textstyle\sum_i w_i)\, q(\eta) + \sum_i w_i\, q(\eta^{(i)})      \qquad (B, K)

* value ``\hat l = l(\eta) + \sum_i w_i (l(\eta^{(i)}) - l(\eta))``                              (B,)

``\hat l`` is unbiased for ``E[l | x^{L-1}]``. The weights, the mixture, the value and PSA's head
gradients are training-step operations of the backend (``rb_flip_weights``, ``rb_mix``, ``rb_value``,
``rb_head_grads`` of :mod:`sbnnumba.backends.step`; the NumPy definitions in
:mod:`sbnnumba.backends.reference`). :mod:`sbnnumba.estimators.psa` uses the weights, the
value and the mixture of the loss gradients; :func:`sbnnumba.training.evaluate` the value and the
mixture of the class probabilities (:func:`probabilities_and_loss`).
"""
from __future__ import annotations

import numpy as np

from .. import losses
from .common import flat_last_state, head_flip_logits


def flip_weights(net, path):
    """``w_i = F(-x^L_i a^L_i) / N_L``: the probability of flipping unit i, over ``N_L`` (symmetric noise:
    ``F(-z) = 1 - F(z)``, computed without the cancellation of ``1 - F`` for confident units, spec psa.md pitfall 5).

    Parameters
    ----------
    net : Network
    path : Path

    Returns
    -------
    array (B, N_L), on ``net.backend``'s arrays (:meth:`~sbnnumba.backends.step.StepOperations.rb_flip_weights`)
    """
    last = path.stages[-1]
    x_last = flat_last_state(path)
    return net.backend.rb_flip_weights(x_last, last.pre.reshape(x_last.shape), net.noise)


def mix(net, w, q0, q_flip):
    """``(1 - sum_i w_i) q0 + sum_i w_i q_flip[:, i]``.

    Parameters
    ----------
    net : Network
        Its backend runs the mixture.
    w : array (B, N_L)
    q0 : array (B, K)
    q_flip : array (B, N_L, K)

    Returns
    -------
    array (B, K)
    """
    return net.backend.rb_mix(w, q0, q_flip)


def value(net, loss0, w, d):
    """``l0 + sum_i w_i d_i`` per example for head differences ``d_i = l(eta^(i)) - l(eta)``.

    Parameters
    ----------
    net : Network
        Its backend runs the sum.
    loss0 : array (B,)
    w, d : arrays (B, N_L)

    Returns
    -------
    array (B,)
    """
    return net.backend.rb_value(loss0, w, d)


def probabilities_and_loss(net, path, y):
    """Rao-Blackwellized class probabilities and per-example loss ``\\hat l`` of one sampled path (host arrays).

    The flipped heads' losses and probabilities are PSA's head differences (the backend's ``head_flips``, e.g. the
    CPU backend's factored form): ``softmax(eta^(i)) = g_flip[:, i] + onehot(y)``, so the mixture of the
    probabilities is that of ``g_flip`` plus ``sum_i w_i`` at the label. A 1-logit head (two class
    probabilities from one logit) evaluates its flipped logits directly.

    Parameters
    ----------
    net : Network
    path : Path
    y : int ndarray (B,)

    Returns
    -------
    probs : ndarray (B, K')
        K' = K, or 2 for a 1-logit head.
    loss : ndarray (B,)
    """
    p0, l0 = losses.probabilities(path.logits), losses.xent(path.logits, y, grad=False)
    w = flip_weights(net, path)
    if path.logits.shape[-1] == 1:
        flipped = head_flip_logits(net, path)
        p_flip, l_flip = losses.probabilities(flipped), losses.xent(flipped, y[:, None], grad=False)
        return mix(net, w, p0, p_flip), value(net, l0, w, l_flip - l0[:, None])
    d, g_flip = net.backend.head_flips(path.logits, y, flat_last_state(path), net.head.weight, l0)
    probs = mix(net, w, p0, g_flip)
    probs[np.arange(len(y)), y] += w.sum(axis=1)
    return probs, value(net, l0, w, d)
