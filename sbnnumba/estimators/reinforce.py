r"""REINFORCE (score-function) estimators, without and with a leave-one-out baseline.

For one sampled path ``x^1..x^L`` of an example, the log-probability of the path is

.. math::

    S = \sum_k \sum_j \log F(x^k_j a^k_j), \qquad
    \frac{\partial S}{\partial a^k_j} = x^k_j \frac{p(a^k_j)}{F(x^k_j a^k_j)}
    \quad (= x^k_j \sigma(-x^k_j a^k_j) \text{ for logistic noise}),

and the (unbiased) estimate of the gradient of ``E_Z[l(y, eta)]`` is

.. math::

    \hat g = \nabla l(x)\big|_{\text{head}} + (l(x) - \beta)\, \nabla S,

i.e. pathwise for the head ``(V, c)`` and, for stage k, ``g_a^k = (l - beta) x^k p(a^k)/F(x^k a^k)``
(B, N_k) chained to the parameters with the sampled input ``x^{k-1}`` (``layer.param_grads``).

* ``"reinforce"`` (path estimator, spec psa.md 4.1): ``beta = 0``, no baseline.
* ``"reinforce-baseline"`` (direct estimator, option ``samples=S >= 2``, default 2): ``S``
  independent paths per example and the **leave-one-out** baseline
  ``beta_s = mean_{s' != s} l(x_{(s')})``; the estimate is the mean over the S samples. The
  baseline of sample s is independent of sample s and ``E[grad S] = 0``, so the estimator stays
  unbiased; it reduces the variance when the loss is far from 0 on average. Cost: S forward passes.

The ratio ``p(z)/F(z)`` (``z = x a``) is the family's :meth:`~sbnnumba.noise.NoiseFamily.score_ratio`
(stable: ``sigma(-z)`` for logistic noise, ``exp(log phi(z) - log Phi(z))`` for normal noise, ``p/F``
with 0 where ``F = 0``, states of probability zero, for the compactly supported noises). Shapes:
``path.stages[k].pre`` (B, ...), weights (B,).
"""

import numpy as np

from ..losses import xent
from ..validation import check_int
from .common import add_layer_grads, finalize, flat_last_state, path_layers
from .registry import register_estimator, register_path_estimator


def _bcast(v, ndim):
    """(B,) -> (B, 1, ..., 1) with ``ndim`` dimensions."""
    return v.reshape((-1,) + (1,) * (ndim - 1))


def _reinforce_grads(net, path, g_eta, coef):
    """Head gradients from weighted logit gradients ``g_eta`` (rows, K) plus the score terms.

    ``coef`` (rows,) multiplies ``grad S`` of each row: stage k gets ``g_a = coef x p(a)/F(x a)``.
    """
    grads = {}
    add_layer_grads(grads, "head", net.head.param_grads(flat_last_state(path), g_eta))
    for k, (layer, st) in enumerate(zip(path_layers(net, path), path.stages)):
        g_a = _bcast(coef, st.pre.ndim) * st.state * net.noise.score_ratio(st.state * st.pre)
        add_layer_grads(grads, f"stages.{k}", layer.param_grads(st.input, g_a.astype(st.pre.dtype), st.saved))
    return grads


def reinforce_path_gradient(net, path, y, weights):
    """REINFORCE without baseline on given paths: ``grad l|head + l grad S``.

    Parameters
    ----------
    net : Network
    path : Path
    y : int array (B,)
    weights : array (B,)
        Per-example weights.

    Returns
    -------
    loss : float
        The weighted sum of the sampled losses.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    loss, g_eta = xent(path.logits, y)
    grads = _reinforce_grads(net, path, g_eta * weights[:, None], weights * loss)
    return finalize(net, np.dot(weights, loss), grads)


def reinforce_loo_path_gradient(net, path, y, weights, samples):
    """REINFORCE with the leave-one-out baseline on ``samples`` paths per example.

    Parameters
    ----------
    path : Path with ``samples * B`` rows, sample-major: row ``s * B + b`` is sample s of example b.
    y : (B,) labels; weights : (B,) per-example weights (``1/B`` for the batch mean).
    samples : int >= 2

    Returns
    -------
    (loss, grads): the weighted mean over examples of ``(1/S) sum_s [grad l_s|head + (l_s - beta_s) grad S_s]``
    with ``beta_s = (sum_{s'} l_{s'} - l_s) / (S - 1)``; loss is the weighted mean of the sampled losses.
    """
    n = len(weights)
    loss, g_eta = xent(path.logits, np.tile(y, samples))
    per = loss.reshape(samples, n)
    baseline = (per.sum(axis=0, keepdims=True) - per) / (samples - 1)
    w_rows = np.tile(weights, samples) / samples
    coef = (w_rows * (per - baseline).ravel()).astype(loss.dtype)
    grads = _reinforce_grads(net, path, g_eta * w_rows[:, None], coef)
    return finalize(net, np.dot(w_rows, loss), grads)


def reinforce_baseline_gradient(net, x, y, rng, samples=2):
    """REINFORCE with a leave-one-out baseline over ``samples`` independent paths per example.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : int ndarray (B,)
    rng : numpy.random.Generator
    samples : int >= 2

    Returns
    -------
    loss : float
        The estimate of the batch-mean expected loss.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    samples = check_int(samples, "samples", 2)  # the leave-one-out baseline needs two paths
    path = net.sample(np.concatenate([x] * samples), rng)
    weights = np.full(x.shape[0], 1.0 / x.shape[0], dtype=net.dtype)
    return reinforce_loo_path_gradient(net, path, y, weights, samples)


register_path_estimator("reinforce", reinforce_path_gradient)
register_estimator("reinforce-baseline", reinforce_baseline_gradient)
