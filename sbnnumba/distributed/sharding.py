"""Which examples of a global batch each rank computes.

A global batch of ``B`` examples is cut into ``N`` contiguous shards whose sizes differ by at most
one: rank ``r`` takes positions ``[r B // N, (r + 1) B // N)``. Contiguous shards keep each rank's
part of the batch one slice (no gather) and make the global position of every example obvious,
which keys its noise (:mod:`sbnnumba.distributed.streams`).
"""
from __future__ import annotations

from ..validation import check_int


def shard_bounds(n, rank, size):
    """Half-open range ``(lo, hi)`` of the ``n`` items (examples of a batch, validation images) that
    rank ``rank`` of ``size`` takes: ``lo = rank * n // size``, ``hi = (rank + 1) * n // size``.

    Parameters
    ----------
    n : int
        Number of items (>= 0).
    rank : int
        In ``[0, size)``.
    size : int
        Number of ranks (>= 1).

    Returns
    -------
    tuple of int
        ``(lo, hi)``. The ranges of ranks ``0..size-1`` are disjoint, cover ``[0, n)`` in order, and
        their lengths differ by at most one (a rank gets an empty range when ``n < size``).
    """
    n, size = check_int(n, "n", 0), check_int(size, "size", 1)
    rank = check_int(rank, "rank", 0, size - 1)
    return rank * n // size, (rank + 1) * n // size
