r"""Classification losses on logits, vectorized over arbitrary leading dimensions.

* ``K > 1`` logits: softmax cross-entropy ``l(eta, y) = logsumexp(eta) - eta_y``,
  ``dl/deta = softmax(eta) - onehot(y)``.
* ``K == 1`` logit (binary head, as in the 2-D toy experiment): logistic loss with labels
  ``y in {0, 1}`` mapped to ``s = 2y - 1``: ``l = log(1 + exp(-s eta))``,
  ``dl/deta = -s sigma(-s eta)``.
"""
from __future__ import annotations

from typing import Literal, overload

import numpy as np
import numpy.typing as npt
from scipy import special


@overload
def xent(logits: np.ndarray, y: npt.ArrayLike, grad: Literal[True] = ...) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def xent(logits: np.ndarray, y: npt.ArrayLike, grad: Literal[False]) -> np.ndarray: ...


def xent(logits: np.ndarray, y: npt.ArrayLike, grad: bool = True) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Loss per example, and optionally its gradient w.r.t. the logits.

    Parameters
    ----------
    logits : ndarray (..., K)
        Logits; ``K = 1`` is a binary head with the logistic loss ``log(1 + exp(-(2y - 1) eta))``, else the
        softmax cross-entropy ``logsumexp(eta) - eta_y``.
    y : int ndarray broadcastable to ``logits.shape[:-1]``
        Labels (in {0, 1} for ``K = 1``).
    grad : bool
        Also return the gradient (softmax minus one-hot; ``-(2y - 1) sigma(-(2y - 1) eta)`` for ``K = 1``).

    Returns
    -------
    loss : ndarray (...)
    dloss : ndarray (..., K), only if ``grad``
    """
    y = np.asarray(y)
    if y.shape != logits.shape[:-1]:  # broadcast only where needed: the three calls cost about 9 us on every step
        lead = np.broadcast_shapes(logits.shape[:-1], y.shape)
        logits = np.broadcast_to(logits, lead + logits.shape[-1:])
        y = np.broadcast_to(y, lead)
    if logits.shape[-1] == 1:
        s = (2 * y - 1).astype(logits.dtype)
        z = -s * logits[..., 0]
        loss = np.logaddexp(0, z)
        if not grad:
            return loss
        return loss, (-s * special.expit(z))[..., None].astype(logits.dtype)
    # logsumexp by hand (scipy.special.logsumexp's generality costs more than the arithmetic here, on
    # PSA's (B, N_L, K) head-difference logits); e = exp(eta - max) serves the loss and the softmax.
    m = logits.max(axis=-1, keepdims=True)
    if not np.all(np.isfinite(m)):
        m = np.where(np.isfinite(m), m, 0)
    e = np.exp(logits - m)
    total = e.sum(axis=-1, keepdims=True)
    lse = np.log(total[..., 0]) + m[..., 0]
    picked = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    loss = lse - picked
    if not grad:
        return loss
    g = e / total
    np.put_along_axis(g, y[..., None], np.take_along_axis(g, y[..., None], axis=-1) - 1, axis=-1)
    return loss, g


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities: softmax, or ``(1 - sigma(eta), sigma(eta))`` for a 1-logit head.

    Parameters
    ----------
    logits : ndarray (..., K)
        Logits ``eta``; ``K = 1`` is a binary head with the logistic loss.

    Returns
    -------
    ndarray (..., K')
        Probabilities summing to 1 over the last axis; ``K' = K``, or 2 for a 1-logit head.
    """
    if logits.shape[-1] == 1:
        p1 = special.expit(logits[..., 0])
        return np.stack([1 - p1, p1], axis=-1)
    return special.softmax(logits, axis=-1)
