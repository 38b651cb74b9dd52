r"""Stochastic binary networks: stages (affine layer + stochastic binary activation) and a linear head.

.. math::

    X^0 = x^0, \qquad X^k = \mathrm{sign}(a^k(X^{k-1}) - Z^k) \quad (k = 1..L), \qquad
    \eta = V X^L + c,

with i.i.d. symmetric noise ``Z`` of the chosen family, states in {-1, +1} and
``P(X^k_j = +1 | x^{k-1}) = F(a^k_j)``. The training objective per example is the expected
loss ``E_Z[l(y, eta)]`` (softmax cross-entropy, or the logistic loss for a 1-logit head).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import numpy.typing as npt

from . import losses
from .backends import BackendAttribute
from .inputs import to_float
from .layers import Linear, check_weight_options
from .noise import get_noise
from .normalization import Normalized, moments_from_sums, normalization_factory
from .uniforms import random_uniforms
from .validation import (
    as_generator,
    check_choice,
    check_finite_arrays,
    check_float_dtype,
    check_labels,
    check_positive_int,
    check_positive_ints,
    check_positive_number,
)

#: The test modes of normalization statistics (and of prediction).
STATS_MODES = ("stochastic", "deterministic")
#: The activations of :meth:`Network.forward_deterministic`.
DETERMINISTIC_ACTIVATIONS = ("sign", "mean")
#: The most bytes that the largest product operand of one chunk of a forward-only pass (a conv stage's patch
#: matrix) may take: :meth:`Network.chunk_size`.
CHUNK_BYTES = 64 << 20
#: :meth:`Network.predict_proba`'s most examples per chunk.
PREDICT_CHUNK = 1024
_CONSTANT_STD = 1e-6  # initialize_from_data: a unit whose std is below this (relative) is constant


@dataclass
class StageSample:
    """One stage of a sampled path: its input, pre-activation and +-1 state (all batch first).

    Parameters
    ----------
    input, pre, state : arrays (B, ...)
        The stage's input, its pre-activation ``a`` and the sampled +-1 states (the shape of ``a``).
    saved : object or None
        What the stage's forward pass saved for its parameter gradients
        (:meth:`~sbnnumba.layers.Layer.forward_saving`: a convolution's patch matrix, built once per step);
        None: nothing (the gradients compute from ``input``; e.g. a path cut to some examples).
    """

    input: np.ndarray
    pre: np.ndarray
    state: np.ndarray
    saved: Any = None


@dataclass
class Path:
    """A sampled path through the network: per stage (input, pre-activation, state), the logits, the
    sampled Bernoulli weights and the stage layers that computed with them.

    Attributes
    ----------
    stages : list of StageSample
    logits : ndarray (B, K)
    weights : dict
        prefix -> the +-1 weights sampled for this path (Bernoulli layers only); they live here, never
        on the layers.
    layers : list of Layer or None
        The stage layers of the forward pass (views computing with ``weights``; the network's own
        stages where the weights are real). Estimators run their backward passes through these, so a
        normalization's cached forward values are the ones of this path. None: derive them from
        ``weights`` (:meth:`Network.stage_layers`).
    """

    stages: list = field(default_factory=list)
    logits: np.ndarray | None = None
    weights: dict = field(default_factory=dict)
    layers: list | None = None

    @property
    def last_state(self):
        return self.stages[-1].state


def stage_weight_kinds(weight, n_stages):
    """Per-stage weight kinds from ``"real"``, ``"bernoulli"``, ``"hidden"`` or an explicit list.

    Parameters
    ----------
    weight : str or list of str
        ``"hidden"``: real first stage, Bernoulli weights after it.
    n_stages : int

    Returns
    -------
    list of str
        ``"real"`` or ``"bernoulli"`` per stage.
    """
    if isinstance(weight, str):
        if weight == "hidden":
            return ["real"] + ["bernoulli"] * (n_stages - 1)
        if weight in ("real", "bernoulli"):
            return [weight] * n_stages
        raise ValueError(f"weight: expected 'real', 'bernoulli', 'hidden' or a list, got {weight!r}")
    kinds = list(weight)
    if len(kinds) != n_stages:
        raise ValueError(f"weight: expected {n_stages} per-stage kinds, got {len(kinds)}")
    return kinds


def check_network(net: object, name: str = "net") -> Network:
    """``net`` if it is a :class:`Network` (the entry points that take one check it first).

    Parameters
    ----------
    net : object
        The value to check.
    name : str
        The argument's name in error messages.

    Returns
    -------
    Network
        ``net``.

    Raises
    ------
    TypeError
        For anything else (e.g. None, a checkpoint path where a network is needed).
    """
    if not isinstance(net, Network):
        raise TypeError(f"{name}: expected a sbnnumba.Network, got {type(net).__name__}")
    return net


def _check_nonempty(x: np.ndarray, name: str = "x") -> np.ndarray:
    """``x`` (checked inputs) if it holds at least one example: a mean or a statistic over none has no value."""
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected a batch of at least one example, got shape {x.shape}")
    return x


class Network:
    """A stochastic binary network.

    Parameters
    ----------
    stages : list of layers (:class:`~sbnnumba.Linear`, :class:`~sbnnumba.Conv2d`, ...)
        Each layer is followed by a stochastic binary activation ``sign(a - Z)``. Conv stages
        come first; a dense stage (or the head) after a conv stage sees its output flattened
        in (C, H, W) order.
    head : Linear
        Real linear layer producing the class logits (``K = 1`` means a binary logistic head).
    noise : str or NoiseFamily
        ``"logistic"`` (default), ``"normal"``, ``"uniform"`` or ``"triangular"``.
    backend : str, Backend or None
        Where the kernels run (:func:`sbnnumba.backends.get_backend`: ``"cpu"``, ``"reference"``,
        ``"cuda"``); ``None`` reads ``SBNNUMBA_BACKEND`` (default "cpu"). Kept as the
        :class:`~sbnnumba.backends.Backend` object in :attr:`backend` (assigning a name converts it).

    Attributes
    ----------
    input_convention : None or str
        How raw inputs map to the float inputs (:mod:`sbnnumba.inputs`): every entry point scales uint8
        images by 1/255; ``"uint8/255"`` (recorded by ``fit`` when it trains on uint8 images, stored in
        checkpoints and packed networks) also refuses float inputs outside ``[0, 1]``.
    params : dict
        ``"stages.{k}.{name}"`` and ``"head.{name}"`` -> the parameter arrays themselves
        (optimizers update them in place).
    """

    backend = BackendAttribute()

    def __init__(self, stages: list, head, noise="logistic", backend=None) -> None:
        if not isinstance(stages, (list, tuple)) or len(stages) == 0:
            raise ValueError("stages: expected a non-empty list of layers")
        if not isinstance(head, Linear):
            raise TypeError(f"head: expected a Linear layer, got {type(head).__name__}")
        if head.latent is not None:
            raise ValueError("head: expected real weights (the head's weights are never sampled), "
                             "got Bernoulli weights")
        self.stages = list(stages)
        self.head = head
        self.noise = get_noise(noise)
        self.backend = backend
        self.dtype = check_float_dtype(head.weight.dtype)  # integer or float16 arithmetic would fail, or overflow
        self.input_convention: str | None = None  # sbnnumba.inputs: set by fit from its training data

    # ------------------------------------------------------------------ construction
    @classmethod
    def dense(cls, sizes, n_classes: int, noise="logistic", rng=None, dtype=np.float32, backend=None,
              weight="real", weight_noise="logistic", weight_grad="md", normalize=False, bn_gamma=1.0):
        """Dense network ``[D, N1, ..., NL]`` with a (real) linear head to ``n_classes`` logits.

        ``weight``: ``"real"``, ``"bernoulli"`` (every stage), ``"hidden"`` (Bernoulli weights in every
        stage but the first, whose input is real), or a list with one of "real"/"bernoulli" per stage;
        ``weight_noise`` and ``weight_grad`` are those of the Bernoulli weights (refused, unless left at their
        defaults, when every stage is real: :func:`~sbnnumba.layers.check_weight_options`).
        ``normalize`` (a bool): batch normalization before every binary activation, its ``gamma`` starting at
        ``bn_gamma`` (a positive number, or ``"noise-std"`` for the activation noise's standard
        deviation: :func:`~sbnnumba.normalization.initial_gamma`). ``sizes`` are positive integers and
        ``dtype`` float32 or float64.
        """
        given = sizes
        sizes = check_positive_ints(sizes, "sizes", min_length=0)
        if len(sizes) < 2:
            raise ValueError(f"sizes: expected [D, N1, ..., NL] with at least one binary layer, got {given!r}")
        dtype = check_float_dtype(dtype)
        rng = as_generator(rng)
        n_stages = len(sizes) - 1
        kinds = stage_weight_kinds(weight, n_stages)
        stage = normalization_factory(normalize, bn_gamma, noise)
        stages = []
        for (n_in, n_out), kind, options in zip(zip(sizes[:-1], sizes[1:]), kinds,
                                                check_weight_options(kinds, weight_noise, weight_grad)):
            stages.append(stage(Linear(n_in, n_out, rng=rng, dtype=dtype, weight=kind, **options)))
        return cls(stages, Linear(sizes[-1], n_classes, rng=rng, dtype=dtype), noise=noise, backend=backend)

    @property
    def params(self) -> dict[str, np.ndarray]:
        out = {}
        for k, layer in enumerate(self.stages):
            for name, arr in layer.params().items():
                out[f"stages.{k}.{name}"] = arr
        for name, arr in self.head.params().items():
            out[f"head.{name}"] = arr
        return out

    def layers(self) -> list[tuple[str, Any]]:
        """(prefix, layer) pairs, stages first, then the head."""
        return [(f"stages.{k}", layer) for k, layer in enumerate(self.stages)] + [("head", self.head)]

    @property
    def n_classes(self):
        return self.head.weight.shape[0]

    def stage_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-example output shapes of the stages for inputs of per-example shape ``input_shape``."""
        shapes, shape = [], tuple(input_shape)
        for layer in self.stages:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        self.head.output_shape(shape)
        return shapes

    def chunk_size(self, example_shape: tuple[int, ...], most: int) -> int:
        """Examples per chunk of a forward-only pass (evaluation, prediction): ``min(most, CHUNK_BYTES // b)``, at
        least 1.

        ``b`` is the largest per-example input operand of a stage's product, in bytes: ``P * F * itemsize`` with
        ``F`` the stage's fan-in (``prod(W.shape[1:])``) and ``P`` its output positions (:meth:`AffineLayer.positions`):
        the input row for a dense stage, the patch matrix (``H_out W_out`` rows of ``C_in kh kw``) for a conv
        stage, which every sampled path builds afresh, so the bound keeps a chunk's patch matrices near the caches
        (measurements: run log of 2026-12-07, session 26). The paper's conv SBN at width 1.0 on 28x28 images (stage
        2's patch matrix about 2 MB per image) gets 33 images per chunk, a dense SBN on 784 inputs (3 KB) ``most``.
        Which uniforms meet which units depends on the chunk, so sampled results for a seed do too.

        Parameters
        ----------
        example_shape : tuple of int
            Shape of one input example.
        most : int
            The most examples per chunk.

        Returns
        -------
        int
        """
        most = check_positive_int(most, "most")
        itemsize = np.dtype(self.dtype).itemsize
        widest = max(math.prod(layer.inner.weight_shape[1:]) * layer.inner.positions(shape)
                     for layer, shape in zip(self.stages, self.stage_shapes(example_shape)))
        return max(1, min(most, CHUNK_BYTES // (widest * itemsize)))

    def n_binary_units(self, input_shape: tuple[int, ...]) -> int:
        """Number of stochastic binary units per example."""
        return int(sum(np.prod(s) for s in self.stage_shapes(input_shape)))

    # ------------------------------------------------------------------ input checks
    def check_params(self) -> None:
        """ValueError naming the first parameter that holds NaN or inf
        (:func:`sbnnumba.validation.check_finite_arrays`, the rule ``fit`` and the checkpoint loader apply):
        the prediction and estimation entry points check this before computing anything."""
        check_finite_arrays(self.params, "params")

    def check_input(self, x: npt.ArrayLike, name: str = "x") -> np.ndarray:
        """``x`` as float inputs of this network (:func:`sbnnumba.inputs.to_float` under
        :attr:`input_convention`: uint8 images scaled by 1/255), checked against the stages' shapes."""
        x = to_float(x, self.dtype, self.input_convention, name)
        self.check_input_shape(x.shape, name)
        return x

    def check_input_shape(self, shape: tuple[int, ...], name: str = "x") -> None:
        """ValueError naming ``name`` unless ``shape`` is a batch ``(B, ...)`` of inputs this network takes (the
        shape part of :meth:`check_input`, for callers that convert their inputs chunk by chunk)."""
        if len(shape) < 2:
            raise ValueError(f"{name}: expected a batch (B, ...) of inputs, got shape {tuple(shape)}")
        self.stage_shapes(tuple(shape[1:]))

    def check_batch(self, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``check_input`` of a non-empty batch ``x`` (an estimate is a batch mean) and its labels ``y``."""
        xa = _check_nonempty(self.check_input(x))
        return xa, check_labels(y, xa.shape[0], self.n_classes)

    # ------------------------------------------------------------------ binary weights, modes
    def latent_layers(self) -> list[tuple[str, Any]]:
        """(prefix, inner affine layer) pairs of the layers with Bernoulli weights."""
        return [(p, l.inner) for p, l in self.layers() if l.latent is not None]

    def sample_weights(self, rng=None, uniforms: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Draw one sample of every Bernoulli weight tensor (once per forward pass, shared by the batch).

        ``uniforms``: optional dict prefix -> U(0,1) array of the shape of ``eta``. Returns the
        dict prefix -> sampled weights; the network is unchanged (:meth:`stage_layers` computes with them).
        """
        out = {}
        for prefix, layer in self.latent_layers():
            eta = layer.latent.eta
            u = uniforms[prefix] if uniforms is not None else random_uniforms(rng, eta.shape, eta.dtype)
            out[prefix] = layer.latent.sample(u)
        return out

    def stage_layers(self, weights: Mapping[str, np.ndarray] | None = None) -> list:
        """The stages computing with the Bernoulli weights ``weights`` (prefix -> tensor, e.g.
        :meth:`sample_weights`): views (:meth:`~sbnnumba.layers.Layer.with_weight`) of the stages named
        there, the stages themselves otherwise. Without ``weights``: the stages (deterministic weights)."""
        weights = weights or {}
        return [stage.with_weight(weights[f"stages.{k}"]) if f"stages.{k}" in weights else stage
                for k, stage in enumerate(self.stages)]

    def finalize_grads(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map the ``"<prefix>.weight"`` gradients ``dL/dw`` (at the weights in use) to the gradients of
        each layer's weight parameterization (``"<prefix>.eta"`` for Bernoulli weights), in place."""
        for prefix, layer in self.layers():
            if f"{prefix}.weight" in grads:
                grads.update({f"{prefix}.{name}": g for name, g in
                              layer.inner.weight_grads(grads.pop(f"{prefix}.weight")).items()})
        return grads

    def to_bernoulli(self, weight: str = "hidden", scale: float = 3.0, noise="logistic", grad: str = "md",
                     clip="auto") -> Network:
        """Convert the real weights of the chosen stages in place into Bernoulli weights that follow
        them (:func:`sbnnumba.weights.bernoulli_from_real`): ``eta = scale * W / std(W)`` per output
        unit or channel. ``weight``: ``"hidden"`` (every stage but the first), ``"bernoulli"`` (every
        stage) or a per-stage list of ``"real"`` / ``"bernoulli"``; stages that already have Bernoulli
        weights are left as they are. The head stays real. Optimizer state of the converted weights
        does not carry over (their parameter is now ``eta``). Returns the network."""
        from .weights import bernoulli_from_real

        for kind, stage in zip(stage_weight_kinds(weight, len(self.stages)), self.stages):
            layer = stage.inner
            if kind == "bernoulli" and layer.latent is None:
                bernoulli_from_real(layer, noise=noise, grad=grad, clip=clip, scale=scale)
            elif kind not in ("real", "bernoulli"):
                raise ValueError(f"weight: expected 'real' or 'bernoulli' per stage, got {kind!r}")
        return self

    def add_normalization(self, x: np.ndarray, batch_size=256, rng=None, momentum=0.1, eps=1e-5):
        r"""Put batch normalization (:class:`~sbnnumba.normalization.Normalized`) in front of every
        binary activation that has none, without changing what the network computes.

        The pre-activations ``z`` of each such stage are sampled over ``x`` (in batches, all earlier
        stages as they are) and the new normalization is set to undo itself:
        ``gamma = sqrt(var(z) + eps)``, ``beta = mean(z)`` per unit or channel, with the running
        (stochastic-mode) statistics ``(mean(z) - b, var(z))`` and the layer's bias ``b`` moved into
        ``beta`` (a bias in front of a normalization has no effect). In evaluation mode the network
        is then the same function as before, up to rounding. Use: a real-weight network trained
        without normalization, about to get Bernoulli weights (:meth:`to_bernoulli`), whose change
        of scale the normalization absorbs.

        Parameters
        ----------
        x : ndarray (N, ...)
            Inputs for the statistics (a few thousand training images).
        batch_size : int
        rng : None, int or Generator
            The activation samples.
        momentum, eps : float
            As for :class:`~sbnnumba.normalization.Normalized`.

        Returns the network.
        """
        x = _check_nonempty(self.check_input(x))
        batch_size = check_positive_int(batch_size, "batch_size")
        rng = as_generator(rng)
        todo = [k for k, st in enumerate(self.stages) if st.normalization is None]
        if not todo:
            return self
        sums: dict = {}
        with self.evaluating("stochastic"):  # existing normalizations: running statistics, not updated
            paths = (self.sample(x[start:start + batch_size], rng, keep_patches=False)
                     for start in range(0, x.shape[0], batch_size))
            for path in paths:
                for k in todo:
                    z = path.stages[k].pre.astype(np.float64)
                    axes = (0,) + tuple(range(2, z.ndim))
                    n, s1, s2 = sums.get(k, (0, 0.0, 0.0))
                    sums[k] = (n + z.size // z.shape[1], s1 + z.sum(axis=axes), s2 + (z * z).sum(axis=axes))
        for k in todo:
            mean, var = moments_from_sums(*sums[k])
            layer = self.stages[k]
            wrapped = Normalized(layer, momentum=momentum, eps=eps)
            dtype = wrapped.gamma.dtype
            wrapped.gamma[...] = np.sqrt(var + eps)
            wrapped.beta[...] = mean
            bias = layer.inner.bias
            wrapped.running["stochastic"] = ((mean - bias.astype(np.float64)).astype(dtype), var.astype(dtype))
            bias[...] = 0
            self.stages[k] = wrapped
        return self

    def apply_constraints(self) -> None:
        """Project latent weights after an optimizer step (``eta`` clipping, e.g. [-1, 1] for uniform noise)."""
        for _, layer in self.latent_layers():
            layer.project_()

    def normalizations(self) -> list:
        """The normalization wrappers of the stages, in order."""
        return [l.normalization for _, l in self.layers() if l.normalization is not None]

    @property
    def buffers(self):
        """Non-trainable state: normalization statistics per test mode, as a flat dict of arrays
        (``"stages.{k}.running.{mode}.mean"`` / ``".var"``), for checkpoints."""
        out = {}
        for prefix, layer in self.layers():
            norm = layer.normalization
            for mode, stats in ({} if norm is None else norm.running).items():
                if stats is not None:
                    out[f"{prefix}.running.{mode}.mean"], out[f"{prefix}.running.{mode}.var"] = stats
        return out

    def load_buffers(self, buffers: dict[str, np.ndarray]):
        """Restore the statistics saved from :attr:`buffers`."""
        norms = {prefix: layer.normalization for prefix, layer in self.layers() if layer.normalization is not None}
        for key in buffers:
            prefix, _, mode, what = key.rsplit(".", 3)
            if prefix not in norms or what not in ("mean", "var"):
                raise ValueError(f"buffers: unexpected entry {key!r} for this network")
        for prefix, norm in norms.items():
            for mode in norm.running:
                mean, var = buffers.get(f"{prefix}.running.{mode}.mean"), buffers.get(f"{prefix}.running.{mode}.var")
                if mean is not None and var is not None:
                    norm.running[mode] = (np.array(mean, dtype=self.dtype), np.array(var, dtype=self.dtype))

    def train(self) -> Network:
        """Training mode: normalization layers use (and update) batch statistics."""
        for n in self.normalizations():
            n.training = True
        return self

    def eval(self, stats: str = "stochastic") -> Network:
        """Evaluation mode: normalization layers use the running statistics of ``stats``."""
        check_choice(stats, "stats", STATS_MODES)
        for n in self.normalizations():
            n.training, n.stats_mode = False, stats
        return self

    @contextlib.contextmanager
    def evaluating(self, stats: str = "stochastic"):
        """Temporarily switch to evaluation mode (restores the previous modes on exit)."""
        saved = [(n.training, n.stats_mode) for n in self.normalizations()]
        self.eval(stats)
        try:
            yield self
        finally:
            for n, (training, mode) in zip(self.normalizations(), saved):
                n.training, n.stats_mode = training, mode

    def recalibrate_normalization(self, x: np.ndarray, mode="deterministic", batch_size=256, rng=None, forward=None):
        """Re-estimate the normalization statistics for a test mode by forward sweeps over ``x``.

        ``mode="deterministic"``: sign activations and ``sign(eta)`` weights (spec st.md section 6);
        ``mode="stochastic"``: sampled activations and weights. Statistics are exact averages over
        all of ``x`` (not running averages), stored for that mode and used by :meth:`eval`.
        ``forward``: optional callable ``forward(x_batch)`` run for each batch instead of the mode's
        own pass (e.g. a pass with only the weights at their mode); its statistics are stored under
        ``mode``.
        """
        check_choice(mode, "mode", STATS_MODES)
        batch_size = check_positive_int(batch_size, "batch_size")
        norms = self.normalizations()
        if not norms:
            return self
        x = _check_nonempty(self.check_input(x))
        rng = as_generator(rng)
        saved = [n.training for n in norms]
        for n in norms:
            n.training = True
            n.start_accumulating()
        try:
            for start in range(0, x.shape[0], batch_size):
                xb = x[start:start + batch_size]
                if forward is not None:
                    forward(xb)
                elif mode == "deterministic":
                    self._forward_deterministic(xb)
                else:
                    self.sample(xb, rng, keep_patches=False)
        finally:
            for n, training in zip(norms, saved):
                n.training = training
        for n in norms:
            n.finish_accumulating(mode)
        return self

    # ------------------------------------------------------------------ forward passes
    def sample(self, x: np.ndarray, rng=None, uniforms=None, weight_uniforms=None, *, keep_patches: bool = True):
        """Sample one path per example.

        Parameters
        ----------
        x : ndarray (B, ...)
        rng : None, int or Generator
            Draws ``u ~ U(0,1)`` per unit; ignored when ``uniforms`` is given.
        uniforms : list of ndarrays, optional
            One per stage, each of the stage's pre-activation shape: common random numbers.
        weight_uniforms : dict, optional
            prefix -> uniforms for the Bernoulli weights (sampled once for the whole batch).
        keep_patches : bool
            Keep each conv stage's patch matrix in the path for the parameter gradients (``StageSample.saved``).
            Forward-only callers (evaluation, prediction, normalization statistics) pass False: the patches of
            all stages held at once are the largest arrays of a conv path (``sum_k C_in kh kw H_out W_out`` entries
            per example), and each new path allocates them afresh; without them each is freed after its stage
            (timings: run log of 2026-12-07, session 25). The same values either way.

        Returns
        -------
        Path
            ``path.stages[k]`` holds ``input`` (B, ...), ``pre`` (B, ...) and ``state`` in {-1, +1};
            ``path.logits`` (B, K).
        """
        x = self.check_input(x)
        rng = None if uniforms is not None and weight_uniforms is not None else as_generator(rng)

        def states(k, a: np.ndarray):
            u = uniforms[k] if uniforms is not None else random_uniforms(rng, a.shape, a.dtype)  # rng.random's bits
            return self.noise.sample(a, u)

        return self.sample_path(x, self.sample_weights(rng, weight_uniforms), states, keep_patches=keep_patches)

    def sample_path(self, x: np.ndarray, weights, states, keep_patches: bool = True):
        """One path per example through the stages computing with the sampled Bernoulli weights ``weights``: the
        loop of :meth:`sample`; the device-resident step runs it on a device copy with device-drawn states.

        Parameters
        ----------
        x : array (B, ...)
            Checked inputs, on the stages' backend.
        weights : dict
            prefix -> sampled weight tensor of every Bernoulli-weight stage (:meth:`sample_weights`).
        states : callable
            ``states(k, a) -> x^k``: the +-1 states of stage ``k`` sampled at pre-activations ``a``.
        keep_patches : bool
            As in :meth:`sample` (False: ``saved`` is None, the layer's plain ``forward``).

        Returns
        -------
        Path
        """
        path, h = Path(weights=weights), x
        path.layers = self.stage_layers(weights)
        for k, layer in enumerate(path.layers):
            a, saved = layer.forward_saving(h) if keep_patches else (layer.forward(h), None)
            state = states(k, a)
            path.stages.append(StageSample(h, a, state, saved))
            h = state
        path.logits = self.head.forward(h)
        return path

    def on_backend(self, backend, convert: Callable[[np.ndarray], Any]) -> Network:
        """A copy whose layers hold ``convert(array)`` and run on ``backend``
        (:meth:`sbnnumba.layers.Layer.on_backend`); the device-resident training step trains such a copy and
        copies it back.

        Parameters
        ----------
        backend : Backend
        convert : callable
            ``array -> array`` on ``backend``.

        Returns
        -------
        Network
        """
        net = Network([stage.on_backend(backend, convert) for stage in self.stages],
                      self.head.on_backend(backend, convert), noise=self.noise, backend=backend)
        net.input_convention = self.input_convention
        return net

    def forward_deterministic(self, x: np.ndarray, activation="sign"):
        """Logits of the deterministic network: weights ``sign(eta)`` for Bernoulli layers, activations
        ``x^k = sign(a)`` (zero noise, ``sign(0) = +1``) or the mean response ``2F(a) - 1``
        (``activation="mean"``: deterministic mean propagation). Normalization layers use the
        statistics re-estimated for the deterministic mode (if any, else the running ones). ValueError for
        another ``activation``, or parameters holding NaN or inf (:meth:`check_params`)."""
        check_choice(activation, "activation", DETERMINISTIC_ACTIVATIONS)
        x = self.check_input(x)
        self.check_params()
        with self.evaluating("deterministic"):
            return self._forward_deterministic(x, activation)

    def _forward_deterministic(self, h, activation="sign"):
        for layer in self.stages:  # Bernoulli stages compute with sign(eta)
            a = layer.forward(h)
            h = np.where(a >= 0, 1, -1).astype(a.dtype) if activation == "sign" else self.noise.mean(a)
        return self.head.forward(h)

    def predict_proba(self, x: np.ndarray, samples: int = 10, rng=None, mode="stochastic", batch_size=None):
        """Class probabilities (B, K') (K' = 2 for a 1-logit head).

        ``mode="stochastic"``: average of the softmax over ``samples`` independent network samples
        (the ensemble; ``samples=1`` is a single sample). ``mode="deterministic"``: the sign network.
        ``batch_size`` examples are computed at a time (default :meth:`chunk_size` with at most
        :data:`PREDICT_CHUNK`). ValueError for parameters holding NaN or inf (:meth:`check_params`).
        """
        x = self.check_input(x)
        rng = as_generator(rng)
        check_choice(mode, "mode", STATS_MODES)
        if mode == "stochastic":
            check_positive_int(samples, "samples")
        batch_size = (self.chunk_size(x.shape[1:], PREDICT_CHUNK) if batch_size is None
                      else check_positive_int(batch_size, "batch_size"))
        self.check_params()
        out: list = []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            if mode == "deterministic":
                with self.evaluating("deterministic"):  # forward_deterministic without checking again
                    out.append(losses.probabilities(self._forward_deterministic(xb)))
            else:
                with self.evaluating("stochastic"):
                    probs = sum(losses.probabilities(self.sample(xb, rng, keep_patches=False).logits)
                                for _ in range(samples))
                out.append(probs / samples)
        if not out:  # an empty batch: no probabilities
            return np.zeros((0, max(self.n_classes, 2)), dtype=self.dtype)
        return np.concatenate(out)

    def predict(self, x: np.ndarray, samples: int = 10, rng=None, mode="stochastic"):
        """Predicted class labels (B,): argmax of :meth:`predict_proba`."""
        return np.argmax(self.predict_proba(x, samples=samples, rng=rng, mode=mode), axis=-1)

    def initialize_from_data(self, x: np.ndarray):
        """Data-dependent initialization (spec psa.md, section 5.2).

        Propagates ``x`` deterministically with the mean response ``2F(a) - 1`` (``tanh(a/2)`` for
        logistic noise) and rescales every stage so that its pre-activation has zero mean and unit
        standard deviation per output unit (per channel for conv layers; statistics over the batch
        and the spatial positions): ``W <- W / s``, ``b <- (b - m) / s``. The head is not rescaled.
        Returns ``self``.
        """
        h = _check_nonempty(self.check_input(x))
        shape, constant = h.shape, 0
        for layer in self.stages:
            a = layer.forward(h)
            axes = (0,) + tuple(range(2, a.ndim))
            mean, std = a.mean(axis=axes), a.std(axis=axes)
            # a unit constant over the batch (identical rows, one row) has no scale to measure: centre it only,
            # instead of multiplying its weights by up to 1e6
            flat = std <= _CONSTANT_STD * np.maximum(1.0, np.abs(mean))
            constant += int(flat.sum())
            rescaled = layer.rescale_(mean, np.where(flat, 1.0, std).astype(std.dtype))  # a view with sign(eta) / s
            h = self.noise.mean(rescaled.forward(h))                                   # for Bernoulli weights
        if constant:
            warnings.warn(f"initialize_from_data: {constant} units have the same pre-activation on every example of "
                          f"x (shape {shape}: identical rows?); they were centred, not rescaled", RuntimeWarning,
                          stacklevel=2)
        return self

    def scale_preactivations(self, factor: float):
        r"""Multiply every stage's pre-activation by ``factor`` in place: ``a -> factor * a``.

        Since each stage samples ``x = sign(a - Z)``, this divides the activation noise by ``factor``
        relative to the signal: :math:`P(x = 1) = F(\text{factor} \cdot a)` (``factor > 1`` sharpens
        the network towards its deterministic sign network, ``factor < 1`` makes it noisier). A
        normalized stage scales its ``gamma`` and ``beta``; a stage with real weights scales ``W``
        and ``b``. The head is unchanged (its input is ``+-1`` either way). Returns ``self``.

        Raises
        ------
        ValueError
            For a stage with Bernoulli weights and no normalization (its ``+-1`` weights cannot be
            scaled).
        """
        factor = check_positive_number(factor, "factor")
        for k, layer in enumerate(self.stages):
            if layer.normalization is None and layer.latent is not None:
                raise ValueError(f"scale_preactivations: stage {k} has Bernoulli weights and no normalization, "
                                 "so its pre-activation cannot be scaled")
        for layer in self.stages:
            norm = layer.normalization
            if norm is not None:
                norm.gamma *= norm.gamma.dtype.type(factor)
                norm.beta *= norm.beta.dtype.type(factor)
            else:
                n = layer.inner.bias.shape[0]
                layer.rescale_(np.zeros(n), np.full(n, 1.0 / factor))
        return self

    def loss(self, logits: np.ndarray, y: np.ndarray):
        """Per-example loss of logits (B, K) against labels (B,)."""
        return losses.xent(logits, y, grad=False)

    def __repr__(self):
        body = ", ".join(repr(s) for s in self.stages)
        return f"Network([{body}], head={self.head!r}, noise={self.noise.name!r}, backend={self.backend.name!r})"
