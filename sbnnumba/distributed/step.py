r"""One synchronous data-parallel training step (the gradient of a global batch, on every rank).

With ``N`` ranks and a global batch of ``B`` examples, rank ``r`` takes the contiguous shard
``[lo_r, hi_r)`` (:func:`~sbnnumba.distributed.shard_bounds`), samples one path per example with the
keyed per-example noise (:class:`~sbnnumba.distributed.KeyedNoise`) and the shared Bernoulli weight
sample, and runs a path estimator with the per-example weight ``1/B``:

.. math:: \hat g_r = \sum_{i=lo_r}^{hi_r - 1} \frac{1}{B} \hat g(x_i, y_i, u_i), \qquad
          \hat g = \sum_{r=0}^{N-1} \hat g_r,

the second sum being one in-place ``Allreduce`` of one contiguous buffer holding every gradient
(in ``net.params`` order) and the loss. Batch normalization takes its statistics over the global batch
(:attr:`sbnnumba.normalization.Normalized.reducer`), so ``hat g`` is what one process computes for the
whole batch with the same noise, up to the order of float sums.

Estimators that draw their own randomness (the registry's *direct* estimators, e.g. ``"arm"``,
``"reinforce-baseline"`` with ``S`` paths per example, the relaxations) run once per example ``i`` of the
shard, on the one-example batch ``(x_i, y_i)`` with the generator of ``i``
(:meth:`~sbnnumba.distributed.KeyedNoise.example_generator`), and their results are summed with the
weight ``1/B``:

.. math:: \hat g_r = \sum_{i=lo_r}^{hi_r - 1} \frac{1}{B}\, \mathrm{fn}(x_i, y_i, \mathrm{rng}_i),

so every example's draws (its ``S`` paths, its suffix passes, its Bernoulli weight sample: one per
example here, not one per batch) are those of a one-process run. Cost: one estimator call per example.
Batch statistics cannot be formed from one-example calls, so batch normalization in training mode is
refused with these estimators (``net.eval()`` uses the running statistics).
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..estimators import registry
from .comm import Communicator
from .sharding import shard_bounds
from .streams import KeyedNoise


@contextlib.contextmanager
def synchronized_batch_norm(net, comm):
    """Within the block, every batch normalization of ``net`` takes batch statistics over all ranks.

    Parameters
    ----------
    net : Network
    comm : Communicator
        Set as each normalization's ``reducer`` (sums of the statistics over the ranks), reset after.

    Yields
    ------
    Network
        ``net``.
    """
    norms = net.normalizations()
    for n in norms:
        n.reducer = comm
    try:
        yield net
    finally:
        for n in norms:
            n.reducer = None


class GradientBuffer:
    """One contiguous array holding every gradient of ``net`` (in ``net.params`` order) and the loss.

    Parameters
    ----------
    net : Network
    """

    def __init__(self, net):
        params = net.params
        self.keys = list(params)
        self.shapes = [p.shape for p in params.values()]
        sizes = [p.size for p in params.values()]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.buffer = np.zeros(int(self.offsets[-1]) + 1, dtype=net.dtype)  # last entry: the loss

    @property
    def nbytes(self):
        return self.buffer.nbytes

    def pack(self, loss, grads):
        """Copy ``grads`` (dict like ``net.params``) and ``loss`` into the buffer; returns it."""
        for k, key in enumerate(self.keys):
            self.buffer[self.offsets[k]:self.offsets[k + 1]] = grads[key].ravel()
        self.buffer[-1] = loss
        return self.buffer

    def add(self, loss, grads, scale):
        """``buffer += scale * (grads, loss)`` (an example's share of a batch sum); returns the buffer."""
        for k, key in enumerate(self.keys):
            self.buffer[self.offsets[k]:self.offsets[k + 1]] += scale * grads[key].ravel()
        self.buffer[-1] += scale * loss
        return self.buffer

    def unpack(self):
        """``(loss, grads)``: the gradients are views of the buffer (valid until the next :meth:`pack`)."""
        grads = {key: self.buffer[self.offsets[k]:self.offsets[k + 1]].reshape(shape)
                 for k, (key, shape) in enumerate(zip(self.keys, self.shapes))}
        return float(self.buffer[-1]), grads


class DataParallelStep:
    """Gradient of the global batch mean loss, computed by all ranks together.

    Parameters
    ----------
    net : Network
        The same parameters on every rank (:func:`~sbnnumba.distributed.broadcast_state`).
    comm : Communicator
    estimator : str
        Any registered estimator: a path estimator (``"psa"``, ``"st"``, ...: one sampled path per
        example, batched) or a direct one (``"arm"``, ``"reinforce-baseline"``, ...: called per example
        with that example's generator, see the module docstring).
    estimator_options : dict, optional
    seed : int
        Keys the per-example noise streams.
    """

    def __init__(self, net, comm, estimator="psa", estimator_options=None, seed=0):
        if not isinstance(comm, Communicator):
            raise TypeError(f"comm: expected a sbnnumba.distributed.Communicator, got {type(comm).__name__}")
        kind, self.fn, self.options = registry.lookup(estimator, dict(estimator_options or {}))
        self.per_example = kind == "direct"
        self.estimator = estimator
        self.net, self.comm, self.noise = net, comm, KeyedNoise(seed)
        self.buffer = GradientBuffer(net)

    def shard(self, batch_size):
        """This rank's ``(lo, hi)`` positions in a global batch of ``batch_size`` examples."""
        return shard_bounds(batch_size, self.comm.rank, self.comm.size)

    def __call__(self, x, y, step):
        """Loss and gradient of the global batch ``(x, y)`` at global step ``step``.

        Parameters
        ----------
        x : ndarray (B, ...)
            The whole global batch (every rank holds it; each computes only its shard).
        y : int ndarray (B,)
        step : int
            Global step index (keys the noise; the optimizer's step count).

        Returns
        -------
        loss : float
            ``(1/B) sum_i`` of the per-example loss estimates, identical on every rank.
        grads : dict
            Like ``net.params``: the global batch gradient estimate (views of the buffer).
        """
        net = self.net
        batch = x.shape[0]
        # a batch smaller than N (the end of an epoch) would leave ranks without examples: every rank
        # then computes all of it alone, with the same keyed noise, hence the same result everywhere
        replicated = batch < self.comm.size
        lo, hi = (0, batch) if replicated else self.shard(batch)
        xs, ys = net.check_batch(x[lo:hi], y[lo:hi])
        if self.per_example:
            self._examples(xs, ys, step, lo, batch)
        else:
            uniforms = self.noise.activation_uniforms(net.stage_shapes(xs.shape[1:]), step, lo, hi, net.dtype)
            weights = np.full(hi - lo, 1.0 / batch, dtype=net.dtype)
            sync = contextlib.nullcontext() if replicated else synchronized_batch_norm(net, self.comm)
            with sync:
                path = net.sample(xs, uniforms=uniforms, weight_uniforms=self.noise.weight_uniforms(net, step))
                loss, grads = self.fn(net, path, ys, weights, **self.options)
            self.buffer.pack(loss, grads)
        if not replicated:
            self.comm.allreduce_sum_(self.buffer.buffer)
        return self.buffer.unpack()

    def _examples(self, xs, ys, step, lo, batch):
        """Sum of ``(1/B) fn(x_i, y_i, rng_i)`` over the shard (starting at global position ``lo``) into the buffer."""
        if any(n.training for n in self.net.normalizations()):
            raise ValueError(f"estimator: {self.estimator!r} runs once per example in data-parallel training, which "
                             "cannot form batch statistics; expected normalizations with fixed statistics (net.eval()) "
                             "or a path estimator (psa, st, ...)")
        self.buffer.buffer[:] = 0
        for j in range(xs.shape[0]):
            loss, grads = self.fn(self.net, xs[j:j + 1], ys[j:j + 1], self.noise.example_generator(step, lo + j),
                                  **self.options)
            self.buffer.add(loss, grads, 1.0 / batch)
