"""Validation split across ranks: each rank evaluates a contiguous part, the metrics are reduced.

The noise of sample ``s`` of the example at position ``i`` of the set comes from its own stream keyed by
the evaluation seed, ``i`` and ``s`` (:meth:`~sbnnumba.distributed.KeyedNoise.evaluation_uniforms`), so
each example's figures do not depend on which rank evaluates it: the reduced metrics of ``N`` ranks
are those of one process up to the order of float sums.

Every metric of :func:`sbnnumba.train.evaluate` is a mean over examples (the entropy a mean over
examples times a fixed number of units and samples), so the global value is the example-count
weighted mean of the ranks' values: ``m = sum_r n_r m_r / sum_r n_r``.
"""
from __future__ import annotations

import numpy as np

from .sharding import shard_bounds
from .streams import KeyedNoise

_MEANS = ("loss", "acc1", "eacc", "det_acc", "entropy")
_LISTS = ("curve", "entropy_stages")


def split_evaluation(evaluate, net, x, y, seed, comm):
    """Metrics of the evaluation set ``(x, y)`` computed by all ranks together (every rank calls it).

    Parameters
    ----------
    evaluate : callable
        ``evaluate(x_part, y_part, uniforms) -> metrics``: :func:`sbnnumba.training.evaluate` of a part,
        passing ``uniforms`` on (its ``uniforms`` argument).
    net : Network
        The network evaluated (its stage shapes and Bernoulli weights size the noise).
    x : ndarray (n, ...)
    y : int ndarray (n,)
    seed : int
        Keys the evaluation noise (the same on every rank).
    comm : Communicator

    Returns
    -------
    dict
        The metrics of the whole set (:func:`reduce_metrics`), identical on every rank.
    """
    lo, hi = shard_bounds(len(y), comm.rank, comm.size)
    noise, shape = KeyedNoise(seed), tuple(x.shape[1:])

    def uniforms(a, b, s):  # positions a..b-1 of this rank's part are lo+a..lo+b-1 in the whole set
        return noise.evaluation_uniforms(net, shape, s, lo + a, lo + b)

    return reduce_metrics(evaluate(x[lo:hi], y[lo:hi], uniforms), comm)


def reduce_metrics(metrics, comm):
    """Combine the per-rank metric dicts of ``evaluate`` into the metrics of the whole set (all ranks).

    Parameters
    ----------
    metrics : dict
        This rank's ``evaluate`` result (with ``n`` examples; None entries stay None).
    comm : Communicator

    Returns
    -------
    dict
        Same keys, each mean weighted by the ranks' ``n``; ``n`` is the total.
    """
    table = comm.allgather_object(metrics)
    n = np.array([m["n"] for m in table], dtype=np.float64)
    total = n.sum()
    out = dict(metrics, n=int(total))
    for key in _MEANS + _LISTS:
        if metrics.get(key) is None:
            continue
        values = np.array([m[key] for m in table], dtype=np.float64)
        mean = np.tensordot(n, values, axes=1) / max(total, 1)
        out[key] = mean.tolist() if key in _LISTS else float(mean)
    return out
