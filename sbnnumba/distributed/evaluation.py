"""Validation split across ranks: each rank evaluates a contiguous part, the metrics are reduced.

Every metric of :func:`sbnnumba.train.evaluate` is a mean over examples (the entropy a mean over
examples times a fixed number of units and samples), so the global value is the example-count
weighted mean of the ranks' values: ``m = sum_r n_r m_r / sum_r n_r``.
"""
from __future__ import annotations

import numpy as np

from .sharding import shard_bounds

_MEANS = ("loss", "acc1", "eacc", "det_acc", "entropy")
_LISTS = ("curve", "entropy_stages")


def shard_of(x, y, comm):
    """This rank's contiguous part ``(x[lo:hi], y[lo:hi])`` of an evaluation set."""
    lo, hi = shard_bounds(len(y), comm.rank, comm.size)
    return x[lo:hi], y[lo:hi]


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
