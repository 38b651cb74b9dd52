r"""The element-wise update rules of :class:`sbnnumba.optim.SGD` and :class:`sbnnumba.optim.Adam`, written once.

:func:`sgd_rule` and :func:`adam_rule` are ``register_jitable`` scalar functions: the host optimizers
run them over whole arrays through the Numba loops :func:`sgd_arrays` / :func:`adam_arrays`, and the
device-resident step of the ``cuda`` backend calls the same functions inside its kernels
(:mod:`sbnnumba.backends.cuda.train_kernels`), so the two cannot drift. Every scalar is passed in the
parameters' dtype (the callers convert them, as NumPy did with ``dtype.type(...)``) and every
operation is one IEEE operation in that dtype, in the order written here (no ``fastmath``, so no
contraction into FMAs): the host results are bit-identical to the NumPy expressions these loops
replaced (``tests/test_golden.py``).

Adam (``m``, ``v`` the moment buffers, ``lr_bc1 = lr / (1 - beta1^t)``, ``bc2 = 1 - beta2^t``)::

    m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
    p <- p - lr_bc1 m / (sqrt(v / bc2) + eps)

SGD (``buf`` the momentum buffer, set to ``g`` on the first step)::

    buf <- g (first step) or momentum buf + g;   g <- g + momentum buf (Nesterov) or buf
    p <- p - lr g

Weight decay and clipping are applied to ``g`` (or ``p``) before the rule, by the callers.
"""
import math

import numba
from numba.extending import register_jitable


@register_jitable
def adam_rule(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1):
    """One Adam step of one entry (see the module docstring).

    Parameters
    ----------
    p, g : float
        Parameter entry and its gradient.
    m, v : float
        First and second moment buffers.
    b1, one_minus_b1, b2, one_minus_b2 : float
        ``beta1``, ``1 - beta1``, ``beta2``, ``1 - beta2``.
    bc2 : float
        ``1 - beta2^t``.
    eps : float
        Added to the root of the second moment.
    lr_bc1 : float
        ``lr / (1 - beta1^t)``.

    Returns
    -------
    p, m, v : float
        The updated entry and buffers.
    """
    m = b1 * m + one_minus_b1 * g
    v = b2 * v + one_minus_b2 * (g * g)
    return p - lr_bc1 * m / (math.sqrt(v / bc2) + eps), m, v


@register_jitable
def sgd_rule(p, g, buf, lr, momentum, nesterov, first):
    """One SGD step of one entry (``momentum == 0``: plain SGD, ``buf`` unchanged).

    Parameters
    ----------
    p, g : float
        Parameter entry and its gradient.
    buf : float
        Momentum buffer.
    lr, momentum : float
        Step size and momentum.
    nesterov : bool
        Nesterov momentum.
    first : bool
        First step: the buffer starts at ``g``.

    Returns
    -------
    p, buf : float
        The updated entry and buffer.
    """
    if momentum != 0:
        buf = g if first else momentum * buf + g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g, buf


# Element-wise and independent per entry, so the parallel loops give the same bits at any thread count.
@numba.njit(cache=True, parallel=True)
def adam_arrays(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1):
    """:func:`adam_rule` over flat arrays ``p``, ``g``, ``m``, ``v`` (updated in place except ``g``)."""
    for i in numba.prange(p.shape[0]):
        p[i], m[i], v[i] = adam_rule(p[i], g[i], m[i], v[i], b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1)


@numba.njit(cache=True, parallel=True)
def sgd_arrays(p, g, buf, lr, momentum, nesterov, first):
    """:func:`sgd_rule` over flat arrays ``p``, ``g``, ``buf`` (``p`` and ``buf`` updated in place)."""
    for i in numba.prange(p.shape[0]):
        if momentum != 0:
            p[i], buf[i] = sgd_rule(p[i], g[i], buf[i], lr, momentum, nesterov, first)
        else:  # no buffer: ``buf`` may be any array, it is neither read nor written
            p[i] = sgd_rule(p[i], g[i], g[i], lr, momentum, nesterov, first)[0]
