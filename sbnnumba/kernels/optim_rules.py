r"""The element-wise update rules of :class:`sbnnumba.optim.SGD` and :class:`sbnnumba.optim.Adam`, written once.

:func:`sgd_rule` and :func:`adam_rule` are ``register_jitable`` scalar functions: the host optimizers
run them over all parameters in one pass, :func:`sgd_rows` / :func:`adam_rows` over blocks of a chunk table, and the
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
import numpy as np
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


# One pass over every parameter: ``chunks`` rows ``(j, lo, hi)`` name entries ``lo:hi`` of array ``j`` of the lists,
# and a call updates the rows ``r0:r1``; sbnnumba.runtime.run_range_blocks cuts the rows into blocks that the threads
# take as they come free (a prange splits statically, so a thread on a busy core holds up its whole share: the prange
# this replaced ran on one thread below 2^21 entries a thread, the dense network's update always). Element-wise and
# independent per entry, so the results are the same bits at any thread count and any cut. Each chunk's loop is a
# function of its own over slices from 0 with NumPy's error model (an index known to be >= 0 needs no wraparound, a
# division no test for zero): without these the loop is not vectorized (measured 5-10x slower), and inlined into the
# row loop it ran 8-25 % slower.
@numba.njit(cache=True, error_model="numpy")
def _adam_run(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1):
    for i in range(p.shape[0]):
        p[i], m[i], v[i] = adam_rule(p[i], g[i], m[i], v[i], b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def adam_rows(ps, gs, ms, vs, chunks, r0, r1, b1, one_minus_b1, b2, one_minus_b2, bc2, eps, lr_bc1):
    """:func:`adam_rule` over the entries that rows ``r0:r1`` of ``chunks`` (n_chunks, 3) name in the flat arrays
    ``ps[j]``, ``gs[j]``, ``ms[j]``, ``vs[j]`` (tuples of flat arrays, updated in place except ``gs``)."""
    for c in range(r0, r1):
        j, lo, hi = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        _adam_run(ps[j][lo:hi], gs[j][lo:hi], ms[j][lo:hi], vs[j][lo:hi], b1, one_minus_b1, b2, one_minus_b2, bc2,
                  eps, lr_bc1)


@numba.njit(cache=True, error_model="numpy")
def _sgd_run(p, g, buf, lr, momentum, nesterov, first):
    if momentum != 0:
        for i in range(p.shape[0]):
            p[i], buf[i] = sgd_rule(p[i], g[i], buf[i], lr, momentum, nesterov, first)
    else:  # no buffer: ``buf`` may be any array, it is neither read nor written
        for i in range(p.shape[0]):
            p[i] = sgd_rule(p[i], g[i], g[i], lr, momentum, nesterov, first)[0]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def sgd_rows(ps, gs, bufs, firsts, chunks, r0, r1, lr, momentum, nesterov):
    """:func:`sgd_rule` over the entries that rows ``r0:r1`` of ``chunks`` (n_chunks, 3) name in the flat arrays
    ``ps[j]``, ``gs[j]``, ``bufs[j]`` (tuples of flat arrays; ``ps`` and ``bufs`` updated in place; with
    ``momentum == 0`` ``bufs`` is neither read nor written), ``firsts[j]`` whether array ``j``'s buffer starts now."""
    for c in range(r0, r1):
        j, lo, hi = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        _sgd_run(ps[j][lo:hi], gs[j][lo:hi], bufs[j][lo:hi], lr, momentum, nesterov, firsts[j])


#: Entries per row of the chunk table: the blocks of the fused passes are cut between rows (small arrays are one
#: chunk, so a bias costs a row, not a call of its own; a row costs about 0.6 us, 2^16 entries 30 us).
CHUNK = 1 << 16


def chunk_table(sizes):
    """The ``chunks`` argument of :func:`adam_rows` / :func:`sgd_rows` for flat arrays of ``sizes``.

    Parameters
    ----------
    sizes : sequence of int
        Entries of each array.

    Returns
    -------
    ndarray (n_chunks, 3) int64
        Rows ``(j, lo, hi)``: entries ``lo:hi`` of array ``j``, at most :data:`CHUNK` each, in array order.
    """
    rows = [(j, lo, min(lo + CHUNK, size)) for j, size in enumerate(sizes) for lo in range(0, size, CHUNK)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


class FlatViews:
    """Tuples of the flat views of groups of arrays, kept from call to call, for the fused update passes.

    A tuple of same-typed arrays is a Numba ``UniTuple``: the kernels compiled for it are cached on disk like any
    other signature (one per number of arrays). A ``numba.typed.List`` is not: its methods are compiled in every
    new process, about 0.9 s of CPU at the first list (measured), which every sweep worker and every new training
    process paid. The parameters and the optimizer's buffers are the same arrays from step to step (updated in
    place) and the gradients change, so a group's tuple is kept and rebuilt only when an array changed (by
    identity).
    """

    def __init__(self):
        self._kept = {}

    def get(self, role, arrays):
        """The tuple of ``a.reshape(-1)`` for the C-contiguous ``arrays``, kept for ``role``.

        Parameters
        ----------
        role : hashable
            Which group (e.g. ``("param", dtype)``).
        arrays : sequence of ndarray

        Returns
        -------
        tuple of ndarray
            One flat view per array.
        """
        arrays = list(arrays)
        kept = self._kept.get(role)
        if kept is None or len(kept[0]) != len(arrays) or any(a is not h for a, h in zip(arrays, kept[0])):
            kept = self._kept[role] = (arrays, tuple(a.reshape(-1) for a in arrays))
        return kept[1]
