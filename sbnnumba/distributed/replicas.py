"""Keeping the ranks' copies of the model identical: broadcast from rank 0, and a cheap check.

Every rank applies the same optimizer step to the same reduced gradient, so the copies stay
identical by construction; :func:`check_replicas` verifies it once per epoch (a digest per parameter
tensor, gathered: a few bytes per tensor on the wire) and fails loudly if they ever differ (a
non-deterministic kernel, a rank that skipped a step, different library versions).
"""
from __future__ import annotations

import hashlib

import numpy as np


class ReplicaMismatch(RuntimeError):
    """The ranks' parameters differ."""


def _state_arrays(net):
    return {**net.params, **net.buffers}


def broadcast_state(net, comm, root=0):
    """Overwrite every rank's parameters and normalization statistics with rank ``root``'s.

    Parameters travel in one contiguous buffer (one ``Bcast``); the normalization statistics (small,
    and present on rank ``root`` only after a resume) as one pickled object.

    Parameters
    ----------
    net : Network
        Overwritten in place on every rank but ``root``; the ranks must hold networks of the same
        architecture (same keys, shapes and dtypes): ValueError otherwise.
    comm : Communicator
    root : int
        The rank whose state is copied.
    """
    params = net.params
    layout = [(k, a.shape, a.dtype.str) for k, a in params.items()]
    root_layout = comm.bcast_object(layout, root)
    if root_layout != layout:
        raise ValueError(f"net: expected the architecture of rank {root}'s network on rank {comm.rank}, "
                         f"got a different set of parameters ({len(layout)} vs {len(root_layout)} arrays)")
    flat = np.concatenate([a.astype(np.float64).ravel() for a in params.values()])
    comm.bcast_(flat, root)
    start = 0
    for a in params.values():
        a[...] = flat[start:start + a.size].reshape(a.shape)  # in place: params are the layers' arrays
        start += a.size
    buffers = comm.bcast_object({k: np.array(v) for k, v in net.buffers.items()}, root)
    net.load_buffers(buffers)


def digests(net):
    """Per-array BLAKE2b digests of the parameters and normalization statistics.

    Parameters
    ----------
    net : Network

    Returns
    -------
    dict
        Array name -> 16-byte digest of its bytes.
    """
    return {k: hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()
            for k, a in _state_arrays(net).items()}


def check_replicas(net, comm, where=""):
    """Raise :class:`ReplicaMismatch` on every rank if any rank's parameters differ from rank 0's.

    Parameters
    ----------
    net : Network
    comm : Communicator
    where : str
        Context for the message (e.g. ``"after epoch 3"``); the message names the ranks and the arrays
        that differ.
    """
    table = comm.allgather_object(digests(net))
    bad = {r: sorted(k for k in table[0] if d.get(k) != table[0][k]) for r, d in enumerate(table) if d != table[0]}
    if bad:
        parts = "; ".join(f"rank {r}: {', '.join(keys) or 'different arrays'}" for r, keys in bad.items())
        raise ReplicaMismatch(f"replicas: expected identical parameters on every rank{' ' + where if where else ''}, "
                              f"got differences from rank 0 in {parts}")
