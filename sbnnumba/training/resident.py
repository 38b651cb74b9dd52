r"""Device-resident training of dense and conv SBNs on the GPU (``backend="cuda"``): :class:`CudaTrainer`.

The layers, estimators and optimizers of the library are NumPy code; with ``backend="cuda"`` they
send only the PSA flip propagation to the GPU, uploading the activations per call. A
:class:`CudaTrainer` instead runs the whole PSA or deep-ST training step on the device, with the
kernels of :mod:`sbnnumba.backends.cuda.train_kernels` and :mod:`sbnnumba.backends.cuda.kernels`:

* the parameters and the optimizer state are uploaded once, when the trainer is made, and stay
  on the device; :meth:`CudaTrainer.sync` copies them back into ``net.params`` (in place) and the
  optimizer's state, e.g. before validation or a checkpoint;
* a dataset is uploaded once (:meth:`CudaTrainer.upload`); :meth:`CudaTrainer.train_epoch` gathers its
  mini-batches on the device from a shuffled index (one small upload per epoch: the permutation);
* the states are sampled on the device (xoroshiro128+ generators, seeded once), or from given
  uniforms (:meth:`CudaTrainer.gradients`, for comparison with the host, common random numbers);
* the loss is accumulated on the device and downloaded once per epoch.

Per step the host only launches kernels. The one transfer left inside a step is the PSA ratio
form's one-integer download per layer that tells whether a unit saturated (``|a| > A``, see
:mod:`sbnnumba.backends.cuda.ops`).

Step of PSA (spec psa.md, section 2; host version :func:`sbnnumba.estimators.psa.psa_path_gradient`,
head ``"rb"``), batch weights ``w = 1/B``:

.. math::

    a^k = x^{k-1} W^{kT} + b^k,\quad x^k = \pm 1 \text{ sampled},\quad \eta = x^L V^T + c, \\
    d^L_i = l(\eta - 2 x^L_i V_{:,i}) - l(\eta),\quad
    g_a^k = -x^k p(a^k) d^k,\quad \partial W^k = w\, g_a^{kT} x^{k-1},\quad
    d^{k-1} = \textstyle\sum_j \Delta^k_{:,j} d^k_j.

Deep ST (spec section 3): ``delta^L = w (dl/deta) V``, ``g_a = 2 p(a) delta``, ``delta^{k-1} = g_a W``.

Conv stages go through a patch matrix on the device (:func:`~sbnnumba.backends.cuda.train_kernels.im2col_rows`,
the layout of the CPU's ``im2col``): ``a = rows_to_map(cols W^T) + b``, ``dW = g_rows^T cols``, the ST
backward ``col2im(g_rows W)``, and the PSA flip propagation of
:func:`sbnnumba.backends.cuda.ops.flip_propagate_conv`.

Binary networks (spec st.md): stages with **Bernoulli weights** draw ``w = +1 if u < F'(eta) else -1``
once per step on the device (shared by the batch); the stage then runs with ``w`` as above, and
``dL/dw`` is mapped to the eta gradient by the layer's rule (``2 g_w``, mirror descent, or
``2 p(eta) g_w``), with the mirror-descent projection (eta clipped, uniform weight noise) after
the update. **Batch-normalized** stages (:class:`~sbnnumba.normalization.Normalized`) use the batch
statistics per channel (deterministic block reductions), update the running statistics, and
backpropagate through them; PSA's flip propagation uses the weights scaled by ``gamma / sigma``
(statistics held constant, as on the host).

Scope: :class:`~sbnnumba.network.Network` of :class:`~sbnnumba.layers.Linear` and
:class:`~sbnnumba.conv.Conv2d` stages (any noise family; real or Bernoulli weights; optionally
normalized) with a real softmax head (K >= 2); methods ``"psa"`` and ``"st"``; optimizers
:class:`~sbnnumba.optim.SGD` and :class:`~sbnnumba.optim.Adam` (schedules, weight decay and
element-wise clipping; global-norm clipping is not). Anything else raises ``NotImplementedError``
naming what is missing: train it with the per-call ``backend="cuda"`` routing or on the CPU.

Shared with the host step, written once: the optimizers' element-wise update rules
(:mod:`sbnnumba.kernels.optim_rules`, called by the host loops and by the update kernels), which
estimators have this step (``device_step=True`` in :mod:`sbnnumba.estimators.registry`), the
backend's kernels for sampling from given uniforms, PSA's ``g_a`` and the flip propagation, and the
noise scalars (:mod:`sbnnumba.kernels.scalar`). Not shared (issue #32, still open): the forward
pass, the head and the backward sweep, and the batch-norm and Bernoulli-weight rules, are kernel
sequences here and NumPy methods of the layers on the host; the tests keep the two equal
(``tests/test_cuda_training.py``), but a change to a layer's rule must be made in both places.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backends.cuda import device as cb
from ..backends.cuda import kernels as k_elem
from ..backends.cuda import ops as cuda_ops
from ..conv import Conv2d
from ..estimators.registry import DEVICE_STEPS, has_device_step
from ..layers import Linear
from ..normalization import Normalized
from ..optim import SGD, Adam


class _StageRecord(NamedTuple):
    """One stage of a sampled path on the device."""
    x_in: object   # the stage's input (dense: (B, N_in); conv: (B, C, H, W))
    a: object      # pre-activation (after the normalization, if any)
    state: object  # sampled +-1 states, the shape of ``a``
    cols: object   # conv: the patch matrix (B P, C kh kw); dense: None
    norm: object   # normalized stage: (z_hat, out_scale); else None


def _cuda():
    from numba import cuda
    return cuda


def _flat2(t):
    """(B, ...) device array as a (B, prod(...)) view (C-contiguous arrays only)."""
    return t.reshape(t.shape[0], int(np.prod(t.shape[1:]))) if len(t.shape) != 2 else t


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


def _launch(kernel, n, *args):
    if n > 0:
        threads = _threads_1d()
        kernel[cb.blocks(n, threads), threads](*args)


def _threads_1d():
    # numba's simulator runs every thread as a Python thread: small blocks keep its launches cheap
    # (the kernels take any block size; the PTX checks compile the device configuration).
    from ..backends.cuda import kernels as k
    return 32 if cb.in_simulator() else k.THREADS_1D


def _reduce_threads():
    from ..backends.cuda import train_kernels as kt
    return 32 if cb.in_simulator() else kt.REDUCE_THREADS


def _gemm_tile():
    from ..backends.cuda import train_kernels as kt
    return 4 if cb.in_simulator() else kt.GEMM_FLOAT_TILE


class CudaTrainer:
    """Run PSA / deep-ST training steps of a dense or conv SBN entirely on the GPU.

    Parameters
    ----------
    net : Network
        :class:`~sbnnumba.layers.Linear` / :class:`~sbnnumba.conv.Conv2d` stages (real or Bernoulli weights,
        optionally wrapped in :class:`~sbnnumba.normalization.Normalized`), real softmax head; float32 or
        float64. Its parameters and running statistics are uploaded now; call :meth:`sync` to see the
        trained values on the host.
    method : str
        An estimator registered with ``device_step=True`` (:func:`sbnnumba.estimators.registry.has_device_step`:
        ``"psa"``, ``"st"``).
    optimizer : SGD or Adam
        Its hyperparameters, schedule and step counter are used; its state (if any) is uploaded.
    seed : int
        Seed of the device generators that draw the state uniforms.
    max_batch : int
        Largest batch size a step will see (sizes the generators and buffers).
    input_shape : tuple, optional
        Per-example input shape; default: the first stage's (``Linear``: ``(n_in,)``; ``Conv2d``: its
        recorded ``in_shape``, else ValueError).

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
        self.code = int(net.noise.code)
        self.params = {k: cuda.to_device(np.ascontiguousarray(p)) for k, p in net.params.items()}
        self.grads = {k: cuda.device_array(p.shape, dtype=self.dtype) for k, p in net.params.items()}
        # Optimizer buffers are uploaded now (zeros where the optimizer has none yet), not in a step.
        self.state = {}
        for name, p in net.params.items():
            host = optimizer.state.get(name, {})
            names = ("exp_avg", "exp_avg_sq") if isinstance(optimizer, Adam) else \
                (("momentum_buffer",) if optimizer.momentum else ())
            self.state[name] = {b: cuda.to_device(np.ascontiguousarray(host[b], dtype=self.dtype) if b in host
                                                  else np.zeros(p.shape, self.dtype)) for b in names}
        self._momentum_started = isinstance(optimizer, SGD) and bool(optimizer.state)
        self.input_shape = self._input_shape(net, input_shape)
        self.stage_shapes = net.stage_shapes(self.input_shape)
        # Bernoulli weights: a buffer for the sample w = sign(eta - Z') (drawn once per step) and one for
        # dL/dw, which the layer's rule maps to the eta gradient. Normalizations: running statistics.
        self._sampled, self._weight_grad, self._running = {}, {}, {}
        self._layers = [stage.inner for stage in net.stages]  # inside any Normalized
        for k, (stage, layer) in enumerate(zip(net.stages, self._layers)):
            if layer.latent is not None:
                self._sampled[k] = cuda.device_array(layer.latent.eta.shape, dtype=self.dtype)
                self._weight_grad[k] = cuda.device_array(layer.latent.eta.shape, dtype=self.dtype)
            if stage.normalization is not None:
                self._running[k] = tuple(cuda.to_device(np.ascontiguousarray(r, dtype=self.dtype))
                                         for r in stage.normalization.running["stochastic"])
        units = max(int(np.prod(shape)) for shape in self.stage_shapes)
        n_weights = max([int(np.prod(w.shape)) for w in self._sampled.values()], default=0)
        # One generator per unit or weight; a step draws the weights, then the states, from the same
        # generators (sequential launches: no generator is used by two threads at once).
        self._n_generators, self._seed, self._states = max(self.max_batch * units, n_weights), int(seed), None
        self._loss = cuda.to_device(np.zeros(1, dtype=np.float64))

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
        return (first.weight.shape[1],)

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
        """Copy a dataset to the device once: ``x`` (N, ...) flattened to (N, D) in the network's dtype,
        ``y`` (N,) int32 labels.

        Returns ``(x_dev, y_dev)`` for :meth:`train_epoch` (device arrays are passed through unchecked).
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

    def _weight(self, k):
        """Device weights of stage ``k`` as used by this step: the real weights or the current sample."""
        return self._sampled[k] if k in self._sampled else self.params[f"stages.{k}.weight"]

    def _sample_weights(self, weight_uniforms):
        """``w = +1 if u < F(eta) else -1`` for every Bernoulli-weight stage, once per step (shared by the
        batch); ``weight_uniforms``: dict prefix -> uniforms of the shape of eta, else device draws."""
        from ..backends.cuda import train_kernels as kt
        for k, w in self._sampled.items():
            layer = self._layers[k]
            code, eta = int(layer.latent.noise.code), _flat2(self.params[f"stages.{k}.eta"])
            if weight_uniforms is None:
                _launch(kt.sample_rng, w.size, code, eta, self._rng, _flat2(w))
            else:
                u = cb.to_device(np.asarray(weight_uniforms[f"stages.{k}"], dtype=self.dtype).reshape(eta.shape),
                                 self.dtype)
                _launch(k_elem.sample_states, w.size, code, cb.flat(eta), cb.flat(u), cb.flat(w))

    @staticmethod
    def _channel_sums(t, u):
        """Per-channel ``sum t`` and ``sum t u`` (float64 device arrays) of two tensors of one dense (B, N) or
        conv (B, C, H, W) shape, viewed as (B, C, P); returns ``(s1, s2, (B, C, P))``."""
        from ..backends.cuda import train_kernels as kt
        cuda = _cuda()
        n_batch, n_ch, n_pos = t.shape[0], t.shape[1], int(np.prod(t.shape[2:]))
        s1, s2 = (cuda.device_array(n_ch, dtype=np.float64) for _ in range(2))
        threads = _reduce_threads()
        kt.channel_sums_kernel(threads)[n_ch, threads](cb.flat(t), cb.flat(u), n_batch, n_ch, n_pos, s1, s2)
        return s1, s2, (n_batch, n_ch, n_pos)

    def _normalize(self, k, z):
        """Batch normalization of stage ``k`` in training mode (host: :class:`~sbnnumba.normalization.Normalized`):
        batch statistics per channel, running statistics updated; returns ``a`` and ``(z_hat, gamma inv_std)``."""
        from ..backends.cuda import train_kernels as kt
        cuda = _cuda()
        dt, stage = self.dtype, self.net.stages[k]
        s1, s2, (n_batch, n_ch, n_pos) = self._channel_sums(z, z)
        flat = cb.flat(z)
        mean, inv_std, scale = (cuda.device_array(n_ch, dtype=dt) for _ in range(3))
        gamma, beta = self.params[f"stages.{k}.gamma"], self.params[f"stages.{k}.beta"]
        r_mean, r_var = self._running[k]
        _launch(kt.bn_statistics, n_ch, s1, s2, 1.0 / (n_batch * n_pos), float(stage.eps), float(stage.momentum),
                gamma, r_mean, r_var, mean, inv_std, scale)
        z_hat, a = cuda.device_array(z.shape, dtype=dt), cuda.device_array(z.shape, dtype=dt)
        _launch(kt.bn_apply, flat.size, flat, mean, inv_std, gamma, beta, n_ch, n_pos, cb.flat(z_hat), cb.flat(a))
        return a, (z_hat, scale)

    def _forward(self, x, uniforms, weight_uniforms=None):
        """Sampled path on the device: a :class:`_StageRecord` per stage, in the layer's own shapes, and the
        logits. Bernoulli weights are sampled first (once for the batch)."""
        from ..backends.cuda import train_kernels as kt
        cuda = _cuda()
        dt = self.dtype
        n_batch = x.shape[0]
        self._sample_weights(weight_uniforms)
        h, shape, stages = x, self.input_shape, []
        for k, layer in enumerate(self._layers):
            w, bias = self._weight(k), self.params[f"stages.{k}.bias"]
            out_shape = self.stage_shapes[k]
            if isinstance(layer, Conv2d):
                x_in = h.reshape((n_batch,) + tuple(shape))
                (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
                n_pos = out_shape[1] * out_shape[2]
                cols = cuda.device_array((n_batch * n_pos, w.shape[1] * kh * kw), dtype=dt)
                _launch(kt.im2col_rows, cols.size, x_in, kh, kw, sh, sw, ph, pw, cols)
                rows = cuda.device_array((n_batch * n_pos, w.shape[0]), dtype=dt)
                self._gemm(cols, _flat2(w), rows, trans_b=True)
                a = cuda.device_array((n_batch,) + tuple(out_shape), dtype=dt)
                _launch(kt.rows_to_map, a.size, rows, bias, True, a)
            else:
                x_in, cols = _flat2(h), None
                a = cuda.device_array((n_batch, w.shape[0]), dtype=dt)
                self._gemm(x_in, w, a, trans_b=True)
                _launch(kt.add_bias, a.size, a, bias)
            norm = None
            if k in self._running:
                a, norm = self._normalize(k, a)
            s = cuda.device_array(a.shape, dtype=dt)
            if uniforms is None:
                _launch(kt.sample_rng, a.size, self.code, _flat2(a), self._rng, _flat2(s))
            else:
                u = cb.to_device(np.asarray(uniforms[k], dtype=dt).reshape(n_batch, -1), dt)
                _launch(k_elem.sample_states, a.size, self.code, cb.flat(a), cb.flat(u), cb.flat(s))
            stages.append(_StageRecord(x_in, a, s, cols, norm))
            h, shape = s, out_shape
        v, c = self.params["head.weight"], self.params["head.bias"]
        logits = cuda.device_array((n_batch, v.shape[0]), dtype=dt)
        self._gemm(_flat2(h), v, logits, trans_b=True)
        _launch(kt.add_bias, logits.size, logits, c)
        return stages, logits

    def _gemm(self, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        from ..backends.cuda import train_kernels as kt
        t = _gemm_tile()
        kern = kt.gemm_kernel(self.dtype.name, bool(trans_a), bool(trans_b), t)
        grid = (cb.blocks(c.shape[1], t), cb.blocks(c.shape[0], t))
        kern[grid, (t, t)](a, b, self.dtype.type(alpha), self.dtype.type(beta), c)

    def _layer_grads(self, k, stage, g_a, weight):
        """Weight and bias gradients of stage ``k`` (or the head, ``k = None``) from the gradient ``g_a`` of its
        affine output, times ``weight``; returns ``g_a`` as GEMM rows (conv: (B P, C_out); dense: ``g_a``).
        Bernoulli weights: ``dL/dw`` goes to a buffer and the layer's rule gives the eta gradient."""
        from ..backends.cuda import train_kernels as kt
        prefix = "head" if k is None else f"stages.{k}"
        latent = k is not None and k in self._sampled
        gw = self._weight_grad[k] if latent else self.grads[f"{prefix}.weight"]
        gb = self.grads[f"{prefix}.bias"]
        if stage.cols is not None:  # conv: dW = g_rows^T cols, db = column sums of g_rows
            g_rows = _cuda().device_array((stage.cols.shape[0], g_a.shape[1]), dtype=self.dtype)
            _launch(kt.map_to_rows, g_a.size, g_a, g_rows)
            self._gemm(g_rows, stage.cols, _flat2(gw), trans_a=True, alpha=weight)
            _launch(kt.column_sum, g_rows.shape[1], g_rows, self.dtype.type(weight), gb)
        else:
            g_rows = g_a
            self._gemm(g_a, stage.x_in, gw, trans_a=True, alpha=weight)
            _launch(kt.column_sum, g_a.shape[1], g_a, self.dtype.type(weight), gb)
        if latent:
            latent_w = self._layers[k].latent
            _launch(kt.latent_grad, gw.size, int(latent_w.noise.code), latent_w.grad == "md",
                    cb.flat(self.params[f"{prefix}.eta"]), cb.flat(gw), cb.flat(self.grads[f"{prefix}.eta"]))
        return g_rows

    def _normalize_backward(self, k, stage, g_a, weight):
        """Through stage ``k``'s normalization: gamma and beta gradients (times ``weight``) and the gradient of
        the affine output, ``g_z = gamma inv_std (g_a - mean(g_a) - z_hat mean(g_a z_hat))``; stages without
        normalization return ``g_a``."""
        if stage.norm is None:
            return g_a
        from ..backends.cuda import train_kernels as kt
        cuda = _cuda()
        z_hat, scale = stage.norm
        s1, s2, (n_batch, n_ch, n_pos) = self._channel_sums(g_a, z_hat)
        _launch(kt.scale_copy, n_ch, s2, float(weight), self.grads[f"stages.{k}.gamma"])
        _launch(kt.scale_copy, n_ch, s1, float(weight), self.grads[f"stages.{k}.beta"])
        g_z = cuda.device_array(g_a.shape, dtype=self.dtype)
        _launch(kt.bn_backward, g_a.size, cb.flat(g_a), cb.flat(z_hat), s1, s2, scale, 1.0 / (n_batch * n_pos),
                n_ch, n_pos, cb.flat(g_z))
        return g_z

    def _flip_weight(self, k, stage):
        """Weights of stage ``k``'s PSA flip propagation: the (sampled) weights, scaled per output by
        ``gamma inv_std`` behind a normalization (batch statistics held constant, as on the host)."""
        w = self._weight(k)
        if stage.norm is None:
            return w
        from ..backends.cuda import train_kernels as kt
        scaled = _cuda().device_array(w.shape, dtype=self.dtype)
        _launch(kt.scale_rows, w.size, _flat2(w), stage.norm[1], _flat2(scaled))
        return scaled

    def _backward(self, stages, logits, y):
        """Gradients into ``self.grads`` (batch means); returns the per-example loss values (device)."""
        from ..backends.cuda import train_kernels as kt
        cuda = _cuda()
        dt = self.dtype
        n_batch = logits.shape[0]
        weight = 1.0 / n_batch
        x_last, a_last = _flat2(stages[-1].state), _flat2(stages[-1].a)
        n_last, n_k = x_last.shape[1], logits.shape[1]
        v = self.params["head.weight"]
        head = _StageRecord(x_last, None, None, None, None)
        loss0 = cuda.device_array(n_batch, dtype=dt)
        g_eta = cuda.device_array(logits.shape, dtype=dt)
        _launch(kt.xent_rows, n_batch, logits, y, loss0, g_eta)
        if self.method == "psa":
            d = cuda.device_array((n_batch, n_last), dtype=dt)
            g_flip = cuda.device_array((n_batch, n_last, n_k), dtype=dt)
            _launch(kt.head_flips, n_batch * n_last, logits, y, x_last, v, loss0, d, g_flip)
            w_rb = cuda.device_array((n_batch, n_last), dtype=dt)
            w_sum = cuda.device_array(n_batch, dtype=dt)
            value = cuda.device_array(n_batch, dtype=dt)
            _launch(kt.rb_weights, n_batch, self.code, x_last, a_last, d, loss0, w_rb, w_sum, value)
            g_mix = cuda.device_array(logits.shape, dtype=dt)
            _launch(kt.rb_mix, g_mix.size, g_eta, g_flip, w_rb, w_sum, dt.type(weight), g_mix)
            self._layer_grads(None, head, g_mix, 1.0)
            _launch(kt.rb_head_correction, v.size, g_flip, w_rb, x_last, dt.type(weight), self.grads["head.weight"])
            for k in range(len(stages) - 1, -1, -1):
                st = stages[k]
                g_a = cuda.device_array(st.a.shape, dtype=dt)
                _launch(k_elem.psa_preactivation_grad, g_a.size, self.code, cb.flat(st.state), cb.flat(st.a), cb.flat(d),
                        cb.flat(g_a))
                self._layer_grads(k, st, self._normalize_backward(k, st, g_a, weight), weight)
                if k > 0:
                    layer, w = self._layers[k], self._flip_weight(k, st)
                    if isinstance(layer, Conv2d):
                        d = cuda_ops.flip_propagate_conv(st.x_in, st.a, st.state, w, d.reshape(st.a.shape),
                                                         layer.stride, layer.padding, self.code)
                    else:
                        d = cuda_ops.flip_propagate_dense(st.x_in, st.a, st.state, w, _flat2(d), self.code)
            return value
        self._layer_grads(None, head, g_eta, weight)
        delta = cuda.device_array((n_batch, n_last), dtype=dt)
        self._gemm(g_eta, v, delta, alpha=weight)
        for k in range(len(stages) - 1, -1, -1):
            st = stages[k]
            g_a = cuda.device_array(st.a.shape, dtype=dt)
            _launch(kt.st_grad, g_a.size, self.code, _flat2(st.a), _flat2(delta), _flat2(g_a))
            g_z = self._normalize_backward(k, st, g_a, 1.0)
            g_rows = self._layer_grads(k, st, g_z, 1.0)
            if k > 0:
                w = self._weight(k)
                delta = cuda.device_array(st.x_in.shape, dtype=dt)
                if st.cols is not None:  # conv: delta_in = col2im(g_rows W)
                    layer = self._layers[k]
                    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
                    d_cols = cuda.device_array(st.cols.shape, dtype=dt)
                    self._gemm(g_rows, _flat2(w), d_cols)
                    _launch(kt.col2im_gather, delta.size, d_cols, kh, kw, sh, sw, ph, pw, delta)
                else:
                    self._gemm(g_z, w, delta)
        return loss0

    def gradients(self, x, y, uniforms=None, weight_uniforms=None):
        """Loss estimate (float) and gradients (dict of NumPy arrays, the keys of ``net.params``) of one batch,
        without an update; ``uniforms``: one (B, N_k) array per stage, ``weight_uniforms``: dict prefix ->
        uniforms of each Bernoulli-weight stage (common random numbers with
        ``net.sample(x, uniforms=..., weight_uniforms=...)`` on the host), else drawn on the device. For
        checks and tests. Normalizations update their running statistics, as a host training step does."""
        x, y = self._batch(x, y)
        stages, logits = self._forward(x, uniforms, weight_uniforms)
        value = self._backward(stages, logits, y)
        loss = float(value.copy_to_host().astype(np.float64).mean())
        return loss, {k: g.copy_to_host() for k, g in self.grads.items()}

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

        ``x`` (B, ...) (flattened to (B, D) like :meth:`upload`), ``y`` (B,): device arrays (no transfer)
        or host arrays (uploaded). The per-example
        loss estimates are summed into a device accumulator (:meth:`pop_loss`).
        """
        from ..backends.cuda import train_kernels as kt
        x, y = self._batch(x, y)
        stages, logits = self._forward(x, uniforms, weight_uniforms)
        value = self._backward(stages, logits, y)
        _launch(kt.accumulate_loss, 1, value, 1.0, self._loss)
        self._update()

    def _update(self):
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
                b1, b2 = opt.betas
                decoupled = opt.decoupled and opt.weight_decay
                _launch(kt.adam_update, flat_p.size, flat_p, flat_g, cb.flat(st["exp_avg"]),
                        cb.flat(st["exp_avg_sq"]), dt(b1), dt(1.0 - b1), dt(b2), dt(1.0 - b2), dt(1.0 - b2 ** t),
                        dt(opt.eps), dt(lr / (1.0 - b1 ** t)), dt(0.0 if decoupled else opt.weight_decay),
                        dt(1.0 - lr * opt.weight_decay if decoupled else 1.0), clip)
            else:
                buf = st.get("momentum_buffer", flat_g)  # unused without momentum
                _launch(kt.sgd_update, flat_p.size, flat_p, flat_g, cb.flat(buf), dt(lr), dt(opt.momentum),
                        bool(opt.nesterov), not self._momentum_started, dt(opt.weight_decay), clip)
        for k in self._sampled:  # the mirror-descent projection of latent weights (e.g. [-1, 1], uniform noise)
            clip = self._layers[k].latent.clip
            if clip is not None:
                eta = cb.flat(self.params[f"stages.{k}.eta"])
                _launch(kt.clip_values, eta.size, eta, dt(clip))
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
            _launch(kt.gather_rows, size * x.shape[1], x, order, start, bx)
            _launch(kt.gather_labels, size, y, order, start, by)
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
        for k, (r_mean, r_var) in self._running.items():
            self.net.stages[k].normalization.running["stochastic"] = (r_mean.copy_to_host(), r_var.copy_to_host())
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
