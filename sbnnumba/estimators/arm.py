r"""ARM (augment-REINFORCE-merge, Yin & Zhou 2019), per layer, in +-1 coding (spec psa.md 4.1).

Derivation for one unit, ``x = sign(a - Z)``, ``u = F(Z) ~ U(0, 1)`` (so ``x = +1 iff u < F(a)``):
writing ``x = 1[eps > 0]`` with ``eps = a - Z`` and differentiating the density of eps (the
"augment-REINFORCE" step) gives

.. math::

    \frac{d}{da} E[f(x)] = E_u\big[f(b_2)\,(\log p)'(F^{-1}(u))\big],\qquad
    b_2 = +1 \text{ iff } u < F(a),

and averaging with the antithetic draw ``1 - u`` (``Z -> -Z``; ``(log p)'`` is odd for symmetric
noise), which turns ``b_2`` into ``b_1 = +1 iff u > F(-a)``, gives the ARM estimator

.. math::

    \hat g_{a_j} = \tfrac12 \big(f(b_1) - f(b_2)\big)\, \psi(u_j), \qquad
    \psi(u) = -(\log p)'(F^{-1}(u)).

* logistic noise: ``psi(u) = 2u - 1``, so ``g_a = (f1 - f2)(u - 1/2)``: the ARM of the paper
  (its {0,1} formula with ``b1 = 1[u > sigma(-a)]``, ``b2 = 1[u < sigma(a)]``);
* normal noise: ``psi(u) = Phi^{-1}(u)`` (a derived generalization; unbiased, finite variance);
* uniform noise: **not defined** (its density jumps at +-1, so the score identity misses the
  boundary terms and the estimator would be biased): ``ValueError``;
* triangular noise: unbiased in principle but ``psi = sign(z)/(1 - |z|)`` has infinite variance
  (``E[psi^2] = int dz / (1 - |z|) = inf``): refused with ``ValueError``.

Per layer (``f`` is vector-valued over the units of the layer; ``u`` has the layer's shape):

1. with the valid sample ``x^{k-1}`` of the layers below, ``a^k = layer_k(x^{k-1})`` (B, ...);
2. draw ``u ~ U(0,1)`` of the shape of ``a^k``; form ``b1``, ``b2`` (both valid samples);
3. run the rest of the network (stages k+1..L sampled, then the head and the loss) from ``b1`` and
   from ``b2``, giving ``f1``, ``f2`` (B,). By default the two suffix passes share their uniforms (common
   random numbers: each of ``f1``, ``f2`` is still an unbiased estimate of ``E[l | x^k = b]``, a valid,
   lower-variance choice); ``independent_suffixes=True`` draws them independently, as the PSA paper's
   ARM baseline does. Either way rows with ``b1 == b2`` contribute exactly 0 in expectation and are
   skipped (with shared noise exactly 0; with independent noise their zero-mean difference is dropped);
4. ``g_a^k = (f1 - f2) psi(u) / 2`` (B, ...), chained to ``W^k, b^k`` with ``x^{k-1}`` (``layer.param_grads``);
5. continue from ``x^k = b1`` (distributed as ``P(+1) = F(a)``).

The head gradient is the pathwise ``grad l`` at the final sample, and the loss is ``l`` there.
Unbiased in all parameters. Bernoulli weights (if any) are sampled once per call and held fixed,
as for every activation estimator (``finalize`` maps ``dl/dw`` to the latent ``eta``).
Batch normalization with *batch* statistics is refused (``ValueError``): it makes an example's
loss depend on the rest of the batch, which the sub-batch suffix passes would change; call
``net.eval()`` to use fixed statistics. Cost: ``2 (L - k)`` extra stage passes for layer k, O(L^2) per example
(the reason PSA, at O(L), is attractive).
"""
import numpy as np

from ..losses import xent
from ..uniforms import random_uniforms
from ..validation import check_bool
from .common import add_layer_grads, finalize
from .registry import register_estimator

_TINY = 1e-12


def _suffix_losses(net, layers, k, h, y, rng, independent):
    """Sampled loss (rows,) of the network continued from state ``h`` of stage k (rows, ...): the first and
    second halves of the rows (the ``b1`` and ``b2`` passes) with common uniforms, or independent ones."""
    for layer in layers[k + 1:]:
        a = layer.forward(h)
        if independent:
            u = random_uniforms(rng, a.shape, np.float64)
        else:
            u = random_uniforms(rng, (a.shape[0] // 2,) + a.shape[1:], np.float64)
            u = np.concatenate([u, u])  # common random numbers for b1 / b2
        h = net.noise.sample(a, u)
    return xent(net.head.forward(h), y, grad=False)


def arm_gradient(net, x, y, rng, independent_suffixes=False):
    """Per-layer ARM estimate; returns (loss at the final sample, grads). See the module docstring.

    Parameters
    ----------
    net : Network
    x : ndarray (B, ...)
    y : ndarray (B,) int
    rng : numpy.random.Generator
    independent_suffixes : bool
        Draw the ``b1`` and ``b2`` suffix passes with independent noise (the PSA paper's baseline)
        instead of common random numbers (the default; lower variance, equally unbiased).

    Returns
    -------
    loss : float
        The batch-mean loss at the final sample.
    grads : dict
        The keys and shapes of ``net.params``.
    """
    independent_suffixes = check_bool(independent_suffixes, "independent_suffixes")
    noise = net.noise
    noise.arm_psi(np.zeros(1))  # refuse unsupported noises before any work
    if any(n.training for n in net.normalizations()):
        raise ValueError("net: ARM needs fixed normalization statistics (the suffix passes run on sub-batches); "
                         "call net.eval() first")
    layers = net.stage_layers(net.sample_weights(rng))
    n = x.shape[0]
    weight = 1.0 / n
    grads, h = {}, x
    for k, layer in enumerate(layers):
        a, saved = layer.forward_saving(h)
        u = np.clip(random_uniforms(rng, a.shape, np.float64), _TINY, 1 - _TINY)
        b1 = np.where(u > noise.cdf(-a), 1, -1).astype(a.dtype)
        b2 = np.where(u < noise.cdf(a), 1, -1).astype(a.dtype)
        diff = np.zeros(n, dtype=a.dtype)
        rows = np.flatnonzero((b1 != b2).reshape(n, -1).any(axis=1))
        if rows.size:
            f = _suffix_losses(net, layers, k, np.concatenate([b1[rows], b2[rows]]), np.concatenate([y[rows]] * 2),
                               rng, bool(independent_suffixes))
            diff[rows] = f[:rows.size] - f[rows.size:]
        g_a = (weight * 0.5) * diff.reshape((n,) + (1,) * (a.ndim - 1)) * noise.arm_psi(u)
        add_layer_grads(grads, f"stages.{k}", layer.param_grads(h, g_a.astype(a.dtype), saved))
        h = b1
    loss, g_eta = xent(net.head.forward(h), y)
    add_layer_grads(grads, "head", net.head.param_grads(h, g_eta * weight))
    return finalize(net, loss.mean(), grads)


register_estimator("arm", arm_gradient)
