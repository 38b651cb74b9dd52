r"""Device-resident training of dense and conv SBNs on the GPU (``backend="cuda"``): :class:`CudaTrainer`.

The training step is the host's: :class:`CudaTrainer` makes, once, a copy of the network whose arrays
live on the GPU (:meth:`sbnnumba.Network.on_backend` with the ``cuda`` backend), samples a path through
it with :meth:`~sbnnumba.Network.sample_path` and runs the estimator of the registry on it
(:func:`sbnnumba.estimators.registry.lookup`: :func:`~sbnnumba.estimators.psa.psa_path_gradient`,
:func:`~sbnnumba.estimators.st.st_path_gradient`). The layers' forward and backward rules, the batch
normalization, the latent-weight rule and PSA's head are the methods the host step runs; on the
device copy they call the ``cuda`` backend's training-step operations
(:mod:`sbnnumba.backends.cuda.layer_ops`), kernels on device arrays. What is specific to the device
is here, and only this:

* residency: the parameters (those of the device copy), the running statistics and the optimizer
  state are uploaded once, when the trainer is made; :meth:`CudaTrainer.sync` copies them back into
  ``net.params`` (in place), the normalizations and the optimizer, e.g. before validation or a
  checkpoint;
* data: a dataset is uploaded once (:meth:`CudaTrainer.upload`); :meth:`CudaTrainer.train_epoch`
  gathers its mini-batches on the device from a shuffled index (one small upload per epoch: the
  permutation);
* randomness: the weights and states are sampled on the device by xoroshiro128+ generators (seeded
  once, :meth:`CudaTrainer.reseed`), or from given uniforms (:meth:`CudaTrainer.gradients`, common
  random numbers with the host);
* the update: the optimizers' element-wise rules (:mod:`sbnnumba.kernels.optim_rules`, shared with
  the host optimizers) as update kernels, then the network's constraint projection
  (:meth:`~sbnnumba.Network.apply_constraints`, on the device copy);
* synchronization: the loss is accumulated on the device and downloaded once per epoch
  (:meth:`CudaTrainer.pop_loss`).

Per step the host only launches kernels and nothing is copied between host and device (the PSA ratio
form's count of active saturated units stays on the device and gates the exact pass there, see
:mod:`sbnnumba.backends.cuda.ops`).

Scope: :class:`~sbnnumba.network.Network` of :class:`~sbnnumba.layers.Linear` and
:class:`~sbnnumba.conv.Conv2d` stages (any noise family; real or Bernoulli weights; optionally
:class:`~sbnnumba.normalization.Normalized`) with a real softmax head (K >= 2); the estimators
registered with ``device_step=True`` (:mod:`sbnnumba.estimators.registry`: ``"psa"``, ``"st"``), with
their default options; optimizers :class:`~sbnnumba.optim.SGD` and :class:`~sbnnumba.optim.Adam`
(schedules, weight decay and element-wise clipping; global-norm clipping is not). Anything else raises
``NotImplementedError`` naming what is missing: train it with the per-call ``backend="cuda"`` routing
or on the CPU. ``tests/test_cuda_training.py`` checks the step against the host step from the same
uniforms.
"""
from __future__ import annotations

import numpy as np

from ..backends import get_backend
from ..backends.cuda import device as cb
from ..backends.cuda import layer_ops
from ..conv import Conv2d
from ..estimators.registry import DEVICE_STEPS, has_device_step, lookup
from ..layers import Linear
from ..normalization import Normalized
from ..optim import SGD, Adam


def _cuda():
    from numba import cuda
    return cuda


def _generators(n, seed):
    """``n`` xoroshiro128+ generator states on the device (initialized on the host, uploaded once)."""
    import warnings

    from numba.core.errors import NumbaWarning
    from numba.cuda.random import create_xoroshiro128p_states
    with warnings.catch_warnings():
        if cb.in_simulator():  # the simulator initializes the states in object mode, loudly
            warnings.simplefilter("ignore", NumbaWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
        return create_xoroshiro128p_states(n, seed=seed)


class CudaTrainer:
    """Run PSA / deep-ST training steps of a dense or conv SBN entirely on the GPU.

    Parameters
    ----------
    net : Network
        :class:`~sbnnumba.layers.Linear` / :class:`~sbnnumba.conv.Conv2d` stages (real or Bernoulli weights,
        optionally wrapped in :class:`~sbnnumba.normalization.Normalized`), real softmax head; float32 or
        float64. A device copy of it is made now (:attr:`device_net`); call :meth:`sync` to see the
        trained values on the host.
    method : str
        An estimator registered with ``device_step=True`` (:func:`sbnnumba.estimators.registry.has_device_step`:
        ``"psa"``, ``"st"``); it runs with its default options.
    optimizer : SGD or Adam
        Its hyperparameters, schedule and step counter are used; its state (if any) is uploaded.
    seed : int
        Seed of the device generators that draw the weight and state uniforms.
    max_batch : int
        Largest batch size a step will see (sizes the generators).
    input_shape : tuple, optional
        Per-example input shape; default: the first stage's (``Linear``: ``(n_in,)``; ``Conv2d``: its
        recorded ``in_shape``, else ValueError).

    Attributes
    ----------
    device_net : Network
        The device copy: the network's classes, arrays on the GPU, backend ``cuda``.
    params : dict
        ``device_net.params`` (device arrays, updated in place by the steps).
    grads : dict
        The gradients of the last step (device arrays, the keys and order of ``params``; uninitialized
        buffers before the first step).

    Raises
    ------
    RuntimeError
        When CUDA is not usable here (the reason is named; see :func:`sbnnumba.backends.cuda.device.require_cuda`).
    NotImplementedError
        For networks, methods or optimizer settings outside the scope above.
    """

    def __init__(self, net, method="psa", optimizer=None, seed=0, max_batch=128, input_shape=None):
        cb.require_cuda()
        if not has_device_step(method):
            raise ValueError(f"method: expected one of {sorted(DEVICE_STEPS)} for the device-resident step, "
                             f"got {method!r}")
        self._check_network(net)
        if optimizer is None:
            optimizer = Adam()
        if not isinstance(optimizer, (SGD, Adam)):
            raise TypeError(f"optimizer: expected sbnnumba.optim.SGD or Adam, got {type(optimizer).__name__}")
        if optimizer.clip_norm is not None:
            raise NotImplementedError("optimizer.clip_norm: global-norm clipping is not implemented in the "
                                      "device-resident step (element-wise clip_value is)")
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch: expected a positive integer, got {max_batch!r}")
        cuda = _cuda()
        self.net, self.method, self.optimizer = net, method, optimizer
        self.dtype = np.dtype(net.dtype)
        self.max_batch = int(max_batch)
        _, self._estimator, self._options = lookup(method, {})
        self.device_net = net.on_backend(get_backend("cuda"), lambda a: cuda.to_device(np.ascontiguousarray(a)))
        self.params = self.device_net.params
        self.grads = {k: cuda.device_array(p.shape, dtype=self.dtype) for k, p in net.params.items()}
        self._upload_optimizer_state()
        self.input_shape = self._input_shape(net, input_shape)
        units = max(int(np.prod(shape)) for shape in net.stage_shapes(self.input_shape))
        n_weights = max([int(np.prod(layer.latent.eta.shape)) for _, layer in net.latent_layers()], default=0)
        # One generator per unit or weight; a step draws the weights, then the states, from the same
        # generators (sequential launches: no generator is used by two threads at once).
        self._n_generators, self._seed, self._states = max(self.max_batch * units, n_weights), int(seed), None
        self._loss = cuda.to_device(np.zeros(1, dtype=np.float64))

    def _upload_optimizer_state(self):
        """Optimizer buffers on the device now (zeros where the optimizer has none yet), not in a step."""
        cuda, optimizer = _cuda(), self.optimizer
        self.state = {}
        for name, p in self.net.params.items():
            host = optimizer.state.get(name, {})
            names = ("exp_avg", "exp_avg_sq") if isinstance(optimizer, Adam) else \
                (("momentum_buffer",) if optimizer.momentum else ())
            self.state[name] = {b: cuda.to_device(np.ascontiguousarray(host[b], dtype=self.dtype) if b in host
                                                  else np.zeros(p.shape, self.dtype)) for b in names}
        self._momentum_started = isinstance(optimizer, SGD) and bool(optimizer.state)

    # -- scope -------------------------------------------------------------------------------------
    @staticmethod
    def _input_shape(net, input_shape):
        if input_shape is not None:
            return tuple(int(n) for n in input_shape)
        first = net.stages[0].inner
        if isinstance(first, Conv2d):
            if first.in_shape is None:
                raise ValueError("input_shape: the first stage is a Conv2d without a recorded in_shape; pass "
                                 "input_shape=(C, H, W)")
            return tuple(first.in_shape)
        return (first.weight_shape[1],)

    @staticmethod
    def _check_network(net):
        for k, stage in enumerate(net.stages):
            layer = stage.inner
            if type(layer) not in (Linear, Conv2d) or type(stage) not in (type(layer), Normalized):
                got = type(stage).__name__ + (f" wrapping {type(layer).__name__}" if layer is not stage else "")
                raise NotImplementedError(f"stages.{k}: the device-resident step handles Linear and Conv2d stages "
                                          f"(optionally Normalized) only, got {got}; train it with the per-call "
                                          "backend='cuda' routing or on the CPU")
        if net.head.latent is not None or net.head.weight.shape[0] < 2:
            raise NotImplementedError("head: the device-resident step needs a real softmax head with K >= 2 classes")
        if np.dtype(net.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"net: expected float32 or float64 parameters, got {net.dtype}")

    # -- data --------------------------------------------------------------------------------------
    def upload(self, x, y):
        """Copy a dataset to the device once.

        Parameters
        ----------
        x : ndarray (N, ...)
            Flattened to (N, D) in the network's dtype.
        y : int ndarray (N,)
            Labels in [0, K), stored as int32.

        Returns
        -------
        x_dev, y_dev : device arrays
            For :meth:`train_epoch` (device arrays are passed through unchecked).
        """
        cuda = _cuda()
        if cb.is_device_array(x) and cb.is_device_array(y):
            return x, y
        x = np.ascontiguousarray(np.asarray(x, dtype=self.dtype).reshape(len(x), -1))
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise ValueError(f"y: expected {x.shape[0]} integer labels, got shape {y.shape} dtype {y.dtype}")
        n_classes = self.net.n_classes
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"y: labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
        if x.shape[1] != int(np.prod(self.input_shape)):
            raise ValueError(f"x: expected examples of shape {self.input_shape} ({int(np.prod(self.input_shape))} "
                             f"values), got {x.shape[1]} values per example")
        return cuda.to_device(x), cuda.to_device(y.astype(np.int32))

    # -- the step ----------------------------------------------------------------------------------
    @property
    def _rng(self):
        """The device generators, made on first use (steps with given uniforms need none)."""
        if self._states is None:
            self._states = _generators(self._n_generators, self._seed)
        return self._states

    def _draw(self, t, noise, u):
        """+-1 samples ``+1 if u < F(t) else -1`` (shape of ``t``), ``u`` given (host) or from the generators."""
        from ..backends.cuda import train_kernels as kt
        if u is not None:
            u = cb.to_device(np.asarray(u, dtype=self.dtype).reshape(t.shape), self.dtype)
            return self.device_net.backend.sample_states(t, u, noise)
        out = layer_ops.empty(t.shape, self.dtype)
        layer_ops.launch(kt.sample_rng, t.size, int(noise.code), layer_ops.flat2(t), self._rng, layer_ops.flat2(out))
        return out

    def _sample(self, x, uniforms, weight_uniforms):
        """A path through :attr:`device_net`: Bernoulli weights first (once for the batch), then the states."""
        dnet = self.device_net
        weights = {prefix: self._draw(layer.latent.eta, layer.latent.noise,
                                      None if weight_uniforms is None else weight_uniforms[prefix])
                   for prefix, layer in dnet.latent_layers()}
        x = x.reshape((x.shape[0],) + self.input_shape)
        return dnet.sample_path(x, weights, lambda k, a: self._draw(a, dnet.noise,
                                                                    None if uniforms is None else uniforms[k]))

    def _estimate(self, x, y, uniforms, weight_uniforms):
        """The registry's estimator on a device path of the batch (weights ``1/B``): ``(loss, grads)`` on the
        device; :attr:`grads` holds the gradients."""
        x, y = self._batch(x, y)
        path = self._sample(x, uniforms, weight_uniforms)
        weights = layer_ops.full(x.shape[0], 1.0 / x.shape[0], self.dtype)
        loss, self.grads = self._estimator(self.device_net, path, y, weights, **self._options)
        return loss

    def gradients(self, x, y, uniforms=None, weight_uniforms=None):
        """Loss estimate and gradients of one batch, without an update (for checks and tests).

        Normalizations update their running statistics, as a host training step does.

        Parameters
        ----------
        x : array (B, ...)
        y : int array (B,)
        uniforms : list of ndarrays, optional
            One (B, ...) array per stage (common random numbers with ``net.sample(x, uniforms=...)``);
            else drawn on the device.
        weight_uniforms : dict, optional
            prefix -> uniforms of the shape of ``eta`` of each Bernoulli-weight stage.

        Returns
        -------
        loss : float
        grads : dict
            NumPy arrays with the keys of ``net.params``.
        """
        loss = self._estimate(x, y, uniforms, weight_uniforms)
        return float(loss.copy_to_host()[0]), {k: g.copy_to_host() for k, g in self.grads.items()}

    def _batch(self, x, y):
        cuda = _cuda()
        if not cb.is_device_array(x):
            x = cuda.to_device(np.ascontiguousarray(np.asarray(x, dtype=self.dtype).reshape(len(x), -1)))
        if not cb.is_device_array(y):
            y = cuda.to_device(np.asarray(y, dtype=np.int32))
        if x.shape[0] > self.max_batch:
            raise ValueError(f"x: batch of {x.shape[0]} examples exceeds max_batch={self.max_batch}")
        return x, y

    def step(self, x, y, uniforms=None, weight_uniforms=None):
        """One training step (forward, backward, optimizer update) on a batch; nothing is downloaded.

        Parameters
        ----------
        x : array (B, ...)
            A device array (no transfer) or a host array (flattened to (B, D) and uploaded).
        y : int array (B,)
        uniforms, weight_uniforms : optional
            As for :meth:`gradients`.

        Returns
        -------
        None
            The batch's summed loss estimates go to a device accumulator (:meth:`pop_loss`).
        """
        from ..backends.cuda import train_kernels as kt
        loss = self._estimate(x, y, uniforms, weight_uniforms)
        layer_ops.launch(kt.accumulate_loss, 1, loss, float(x.shape[0]), self._loss)
        self._update()

    def _update(self):
        """The optimizer's update of :attr:`params` from :attr:`grads`, then the constraint projection."""
        from ..backends.cuda import train_kernels as kt
        opt, dt = self.optimizer, self.dtype.type
        lr = opt.lr
        t = opt.step_count + 1
        clip = dt(opt.clip_value or 0.0)
        for name, p in self.params.items():
            g = self.grads[name]
            flat_p, flat_g = cb.flat(p), cb.flat(g)
            st = self.state[name]
            if isinstance(opt, Adam):
                decoupled = opt.decoupled and opt.weight_decay
                layer_ops.launch(kt.adam_update, flat_p.size, flat_p, flat_g, cb.flat(st["exp_avg"]),
                                 cb.flat(st["exp_avg_sq"]), *opt.rule_scalars(lr, t, dt),
                                 dt(0.0 if decoupled else opt.weight_decay),
                                 dt(1.0 - lr * opt.weight_decay if decoupled else 1.0), clip)
            else:
                buf = st.get("momentum_buffer", flat_g)  # unused without momentum
                layer_ops.launch(kt.sgd_update, flat_p.size, flat_p, flat_g, cb.flat(buf), dt(lr), dt(opt.momentum),
                                 bool(opt.nesterov), not self._momentum_started, dt(opt.weight_decay), clip)
        self.device_net.apply_constraints()  # the mirror-descent projection of latent weights (e.g. [-1, 1])
        opt.record_step(self.params)
        self._momentum_started = True

    def reseed(self, seed):
        """Re-initialize the device generators from ``seed`` (e.g. per epoch, from a checkpointed host rng)."""
        self._seed, self._states = int(seed), None

    def train_epoch(self, x, y, batch_size, rng=None, callback=None):
        """One pass over a device dataset (:meth:`upload`) in shuffled mini-batches; returns the mean loss.

        The permutation is drawn on the host from ``rng`` and uploaded (N int64); batches are gathered
        on the device; the last partial batch is used. One download (the loss) at the end.
        ``callback()``, if given, is called after every step (e.g. a progress bar).
        """
        from ..backends.cuda import train_kernels as kt
        from ..validation import as_generator
        cuda = _cuda()
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not \
                1 <= batch_size <= self.max_batch:
            raise ValueError(f"batch_size: expected an integer in [1, max_batch={self.max_batch}], got {batch_size!r}")
        n = x.shape[0]
        order = cuda.to_device(as_generator(rng).permutation(n).astype(np.int64))
        xb = cuda.device_array((batch_size, x.shape[1]), dtype=self.dtype)
        yb = cuda.device_array(batch_size, dtype=np.int32)
        self.pop_loss()
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            bx, by = (xb, yb) if size == batch_size else (xb[:size], yb[:size])
            layer_ops.launch(kt.gather_rows, size * x.shape[1], x, order, start, bx)
            layer_ops.launch(kt.gather_labels, size, y, order, start, by)
            self.step(bx, by)
            if callback is not None:
                callback()
        return self.pop_loss() / max(1, n)

    def pop_loss(self):
        """The summed per-example losses accumulated by :meth:`step` since the last call (one download);
        resets the accumulator."""
        total = float(self._loss.copy_to_host()[0])
        self._loss.copy_to_device(np.zeros(1, dtype=np.float64))
        return total

    def sync(self):
        """Copy the device parameters into ``net.params`` (in place), the running statistics of the
        normalizations and the optimizer state to the host."""
        for name, p in self.net.params.items():
            p[...] = self.params[name].copy_to_host()
        for norm, device_norm in zip(self.net.normalizations(), self.device_net.normalizations()):
            norm.running["stochastic"] = tuple(t.copy_to_host() for t in device_norm.running["stochastic"])
        self.optimizer.state = {name: {b: v.copy_to_host() for b, v in bufs.items()}
                                for name, bufs in self.state.items() if bufs}
        return self.net

    def apply_gradients(self, flat):
        """One optimizer step on the device with given gradients (the update of :meth:`step`).

        For data-parallel training (:mod:`sbnnumba.distributed`): each rank computes its shard's
        gradients (:meth:`gradients`), the ranks sum them on the host in one Allreduce, and every rank
        applies the sum here, so only the gradient crosses to the host and back.

        Parameters
        ----------
        flat : ndarray (P,)
            Every gradient, ravelled and concatenated in ``net.params`` order (``P`` = the number of
            parameters); uploaded into the gradient buffers in the network's dtype.
        """
        flat = np.asarray(flat)
        sizes = [g.size for g in self.grads.values()]
        if flat.ndim != 1 or flat.size != sum(sizes):
            raise ValueError(f"flat: expected a 1-d array of {sum(sizes)} gradient values, got shape {flat.shape}")
        offsets = np.cumsum([0] + sizes)
        for (name, g), lo, hi in zip(self.grads.items(), offsets[:-1], offsets[1:]):
            g.copy_to_device(np.ascontiguousarray(flat[lo:hi], dtype=self.dtype).reshape(g.shape))
        self._update()

    def gradients_drawn(self, x, y, draw_states, draw_weights, example_weight=None):
        """Loss estimate and gradients of one batch, the uniforms drawn on the device by the caller.

        What :meth:`gradients` computes from given uniforms, except that those never exist on the host:
        ``draw_states(k, shape)`` and ``draw_weights(prefix, shape)`` return device arrays (e.g. the
        keyed, counter-based uniforms of :func:`sbnnumba.backends.cuda.keyed_random.keyed_uniforms`,
        which the data-parallel step draws from the examples' global positions).

        Parameters
        ----------
        x : array (B, ...)
        y : int array (B,)
        draw_states : callable
            ``(k, shape) -> device array of shape`` (``shape = (B, *stage_shape)``): stage ``k``'s uniforms.
        draw_weights : callable
            ``(prefix, shape) -> device array of shape`` (the shape of ``eta``): the uniforms of that
            Bernoulli-weight stage (one sample for the batch).
        example_weight : float, optional
            The weight of each example's estimate (default ``1/B``: the batch mean); the data-parallel
            step gives ``1/B_global``, which batch norm over all ranks needs (its backward pass sums the
            weighted per-example gradients of every rank).

        Returns
        -------
        loss : float
        grads : dict
            NumPy arrays with the keys of ``net.params``.
        """
        x, y = self._batch(x, y)
        dnet = self.device_net
        sample = dnet.backend.sample_states
        weights = {prefix: sample(layer.latent.eta, draw_weights(prefix, layer.latent.eta.shape), layer.latent.noise)
                   for prefix, layer in dnet.latent_layers()}
        path = dnet.sample_path(x.reshape((x.shape[0],) + self.input_shape), weights,
                                lambda k, a: sample(a, draw_states(k, a.shape), dnet.noise))
        weight = 1.0 / x.shape[0] if example_weight is None else float(example_weight)
        loss, self.grads = self._estimator(dnet, path, y, layer_ops.full(x.shape[0], weight, self.dtype),
                                           **self._options)
        return float(loss.copy_to_host()[0]), {k: g.copy_to_host() for k, g in self.grads.items()}
