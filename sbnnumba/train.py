r"""Training and evaluation of SBNs: :func:`fit`, :func:`evaluate`, checkpoints, history files.

Protocol (spec ``psa.md`` section 5.2, adapted to Fashion-MNIST)
----------------------------------------------------------------
* Objective: the expected NLL ``E_Z[l(y, eta)]``, one sampled path per image per step, batch mean;
  gradients from any registered estimator (:func:`sbnnumba.estimate`).
* Element-wise gradient clipping to ``[-1e3, 1e3]`` (the optimizer's ``clip_value``); training stops
  with :class:`TrainingDiverged` at the first non-finite loss or gradient.
* Optional data-dependent initialization on the first ``batch_size`` training images
  (:meth:`Network.initialize_from_data`), then SGD (Nesterov) or Adam.
* Validation after every epoch on a held-out part of the training set (``val_fraction``, split
  with ``split_seed``) with ``eval_samples`` samples per image, see :func:`evaluate`.

Evaluation (:func:`evaluate`)
-----------------------------
Hard +-1 sampling with the Rao-Blackwellized head (spec section 2.6): for a sampled last state
``x^L`` with single-flip logits ``eta^(i) = eta - 2 x^L_i V[:, i]`` and weights
``w_i = (1 - P(X^L_i = x^L_i | x^{L-1})) / N_L``,

.. math::

    \hat p = (1 - \textstyle\sum_i w_i)\, \mathrm{softmax}(\eta) + \sum_i w_i\, \mathrm{softmax}(\eta^{(i)}),
    \qquad
    \hat l = l(\eta) + \sum_i w_i\, (l(\eta^{(i)}) - l(\eta)).

Metrics over ``S`` independent samples per image: ``loss`` = mean of ``\hat l`` (the estimate of
``E[l]``), ``acc1`` = single-sample accuracy (mean over the S draws of ``argmax \hat p``), ``eacc`` =
ensemble accuracy (argmax of the mean of ``\hat p`` over the S draws), ``curve[k-1]`` = ensemble
accuracy of the first ``k`` draws, ``det_acc`` = accuracy of the deterministic sign network
(:meth:`Network.forward_deterministic`, zero noise).

Unit entropy (spec section 5.2, "entropy in bits of the binary units' conditional distributions, per
unit"): along each sampled path every binary unit ``j`` of stage ``k`` has the conditional law
``P(X^k_j = +1 | x^{k-1}) = p = F(a^k_j)``, with ``a^k_j`` the pre-activation actually fed to the
noise (after normalization, if any). Its entropy ``H(p) = -p log2 p - (1 - p) log2 (1 - p)`` bits
(:func:`unit_entropy`, computed from the lower-tail cdf, so saturated units give exactly 0) is averaged over
the units, the images and the S samples: ``entropy`` over all units, ``entropy_stages[k]`` over the
units of stage ``k``. 1 bit = a fair coin, 0 = a deterministic unit. History rows hold them as
``val_entropy`` and ``val_entropy.<k>``.

Files written into ``out`` (each atomically: temp file + ``os.replace``)
-----------------------------------------------------------------------
``checkpoint.npz`` (after every epoch), ``history.csv``, ``history.json``, ``loss.png``,
``accuracy.png``, ``entropy.png`` (unit entropy vs epochs, per stage).

Learning-rate search (:func:`search_lr`)
----------------------------------------
The spec's per-method choice of a constant learning rate: bounded scalar minimization
(``scipy.optimize.minimize_scalar(method="bounded")``) over ``log10(lr)`` in ``bounds`` (default
``[-6, 0]``), at most ``max_trials`` (default 10) trials; each trial trains ``trial_epochs`` (default 5)
epochs from the same initial parameters and the same seed and is scored by the mean running training
loss; a diverging trial scores ``inf`` (a large finite penalty, growing with the lr, for the minimizer).

Checkpoint format (version 1)
-----------------------------
One ``.npz`` (no pickles) with ``meta/format`` = ``"sbnnumba-checkpoint"``, ``meta/version`` = 1,
``meta/epoch`` (completed epochs), ``meta/rng_state`` (JSON of the training generator's
``bit_generator.state``), ``meta/history`` and ``meta/config`` (JSON; the config holds the
architecture name, options, input shape and classes needed to rebuild the network), ``param/<key>``
(the parameters) and ``optim/<key>`` (the optimizer's ``state_dict``). Resuming restores parameters,
optimizer state and generator state, so a resumed run reproduces an uninterrupted one bit for bit.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import architectures, datasets, losses, optim
from .estimators import common as _common
from .estimators import registry as _registry
from .layers import Linear
from .fileio import atomic_write, read_versioned_npz
from .kernels.entropy import unit_entropy_flat
from .kernels.scalar import NOISE_CODES
from .validation import as_generator

__all__ = [
    "FORMAT", "FORMAT_VERSION", "CHECKPOINT_NAME", "HISTORY_CSV", "HISTORY_JSON",
    "TrainingDiverged", "CheckpointError", "Checkpoint", "FitResult",
    "build_network", "arch_spec", "network_from_spec", "save_checkpoint", "load_checkpoint",
    "load_network", "unit_entropy", "evaluate", "fit", "write_history", "LRTrial", "LRSearchResult", "search_lr",
]

FORMAT = "sbnnumba-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"

#: Configuration entries that must agree between a checkpoint and a resumed run (they determine the
#: training trajectory). Others (epochs, eval_samples, max_time, ...) may change on resume.
TRAJECTORY_KEYS = ("arch", "data", "estimator", "estimator_options", "batch_size", "seed", "split_seed",
                   "val_fraction", "augment", "augment_pad", "data_init", "optimizer")
_EVAL_SALT = 0x5EB1  # eval generators: default_rng([seed, epoch, _EVAL_SALT]), separate from training


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient appeared during training.

    Attributes
    ----------
    epoch, step : int
        The epoch (1-based) and the batch within it (1-based) where it happened.
    checkpoint : str or None
        The last good checkpoint (written after the last completed epoch), if any.
    """

    def __init__(self, message, epoch=None, step=None, checkpoint=None):
        super().__init__(message)
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


class CheckpointError(ValueError):
    """A checkpoint file is missing entries, has the wrong format/version, or is corrupt."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (see the module docstring)."""

    path: str
    epoch: int
    params: dict
    optimizer_state: dict
    rng_state: dict
    history: list
    config: dict
    buffers: dict = None


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of dict
        One row per completed epoch (also the rows of earlier sessions when resuming).
    optimizer : sbnnumba.optim.Optimizer
    epochs_done : int
        Completed epochs (counting earlier sessions).
    stopped : str
        ``"completed"``, ``"time budget"`` or ``"already complete"`` (resumed at or past ``epochs``).
    config : dict
    out : str or None
    checkpoint : str or None
    """

    history: list
    optimizer: object
    epochs_done: int
    stopped: str
    config: dict
    out: str | None = None
    checkpoint: str | None = None
    files: dict = field(default_factory=dict)


# ====================================================================================== helpers
def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.dtype, type)):
        return np.dtype(obj).name
    return obj


def _dumps(obj):
    return json.dumps(_jsonable(obj))  # insertion order: a resumed history keeps its CSV columns


def _device_trainer(net, estimator, estimator_options, augment, opt, batch_size, input_shape):
    """A :class:`~sbnnumba.device_training.CudaTrainer` when ``net.backend == "cuda"`` and the whole step can
    stay on the device (dense and conv stages with real or Bernoulli weights, optionally batch-normalized;
    "psa" or "st" without options, no augmentation, SGD/Adam without global-norm clipping); else None and
    the per-call routing is used."""
    if net.backend != "cuda" or estimator not in ("psa", "st") or estimator_options or augment:
        return None
    from .device_training import CudaTrainer
    try:
        return CudaTrainer(net, estimator, opt, max_batch=batch_size, input_shape=input_shape)
    except NotImplementedError as exc:
        warnings.warn(f"backend 'cuda': the step is not device-resident for this run ({exc}); only the PSA flip "
                      "propagation runs on the GPU", RuntimeWarning)
        return None


def _as_float(x, dtype):
    """uint8 images -> ``x / 255`` in ``dtype``; anything else cast to ``dtype``."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return datasets.normalize(x, dtype=dtype)
    return np.asarray(x, dtype=dtype)


def _generator_from_state(state):
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


def _first_nonfinite(loss, grads):
    if not math.isfinite(loss):
        return "loss"
    for k, g in grads.items():
        if not np.all(np.isfinite(g)):
            return f"gradient of {k!r}"
    return None


def _fingerprint(x, y):
    """Shapes plus CRC-32 of the bytes of the training and validation arrays."""
    crc = 0
    for a in (x, y):
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc) if a.size else crc
    return {"x_shape": list(x.shape), "x_dtype": x.dtype.name, "n": int(y.shape[0]), "crc32": int(crc)}


# ================================================================================ architectures
def build_network(name, input_shape, n_classes, seed=None, dtype=np.float32, backend=None, **options):
    """Build a registered architecture and remember how (``net.arch_spec``) for checkpoints.

    Parameters
    ----------
    name : str
        ``"mlp"``, ``"conv"``, ... (see :data:`sbnnumba.architectures.ARCHITECTURES`).
    input_shape : tuple of int
        Per-example input shape, e.g. ``(1, 28, 28)``.
    n_classes : int
    seed : None, int or Generator
        Initialization randomness (passed as ``rng``).
    dtype, backend :
        As for the architecture.
    **options
        Architecture options (``hidden=...``, ``channels=...``, ``noise=...``); must be JSON-able.
    """
    net = architectures.build(name, tuple(input_shape), n_classes, rng=seed, dtype=dtype, backend=backend,
                              **options)
    opts = dict(options)
    opts.setdefault("noise", net.noise.name)
    net.arch_spec = {"name": name, "options": _jsonable(opts), "input_shape": [int(s) for s in input_shape],
                     "n_classes": int(n_classes), "dtype": np.dtype(dtype).name}
    return net


def arch_spec(net, input_shape=None):
    """How to rebuild ``net``: ``net.arch_spec`` if set (see :func:`build_network`), else inferred
    for real-weight all-dense networks (``"mlp"`` with the stage widths); None if unknown."""
    spec = getattr(net, "arch_spec", None)
    if spec is not None:
        spec = dict(spec)
        if input_shape is not None:
            spec["input_shape"] = [int(s) for s in input_shape]
        return spec
    if input_shape is not None and all(type(s) is Linear and s.latent is None for s in net.stages):
        return {"name": "mlp", "options": {"hidden": [int(s.weight.shape[0]) for s in net.stages],
                                           "noise": net.noise.name},
                "input_shape": [int(s) for s in input_shape], "n_classes": int(net.n_classes),
                "dtype": np.dtype(net.dtype).name}
    return None


def network_from_spec(spec, backend=None):
    """Build an (untrained) network from an architecture spec dict (parameters to be loaded)."""
    try:
        net = architectures.build(spec["name"], tuple(spec["input_shape"]), int(spec["n_classes"]), rng=0,
                                  dtype=np.dtype(spec.get("dtype", "float32")), backend=backend,
                                  **spec.get("options", {}))
    except KeyError as exc:
        raise CheckpointError(f"architecture spec lacks the entry {exc}") from None
    net.arch_spec = dict(spec)
    return net


# =================================================================================== checkpoints
def save_checkpoint(path, net, optimizer, rng, epoch, history, config):
    """Write a checkpoint atomically (see the module docstring for the format). Returns ``path``."""
    arrays = {"meta/format": np.array(FORMAT), "meta/version": np.array(FORMAT_VERSION),
              "meta/epoch": np.array(int(epoch)),
              "meta/rng_state": np.array(_dumps(rng.bit_generator.state)),
              "meta/history": np.array(_dumps(history)), "meta/config": np.array(_dumps(config))}
    for k, p in net.params.items():
        arrays[f"param/{k}"] = p
    for k, b in net.buffers.items():
        arrays[f"buffer/{k}"] = b
    for k, v in optimizer.state_dict().items():
        arrays[f"optim/{k}"] = np.array(v) if not (isinstance(v, list) and not v) else np.array([], dtype=str)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


_REQUIRED = ("meta/format", "meta/version", "meta/epoch", "meta/rng_state", "meta/history", "meta/config",
             "optim/optimizer", "optim/step_count", "optim/keys")


def load_checkpoint(path):
    """Read and check a checkpoint file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        Not an sbnnumba checkpoint, another format version, missing entries, or a corrupt /
        truncated file. The message names the file and the problem.
    """
    path = os.fspath(path)
    _, z = read_versioned_npz(path, FORMAT, (FORMAT_VERSION,), CheckpointError, "sbnnumba checkpoint",
                              article="an")
    missing = [k for k in _REQUIRED if k not in z]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks the entries {missing}")

    def prefixed(prefix):
        return {k[len(prefix):]: z[k] for k in sorted(z) if k.startswith(prefix)}

    params = prefixed("param/")
    if not params:
        raise CheckpointError(f"{path}: checkpoint holds no parameters ('param/...' entries)")
    try:
        ck = Checkpoint(path=path, epoch=int(z["meta/epoch"]), params=params, optimizer_state=prefixed("optim/"),
                        rng_state=json.loads(str(z["meta/rng_state"])), history=json.loads(str(z["meta/history"])),
                        config=json.loads(str(z["meta/config"])), buffers=prefixed("buffer/"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if "arch" not in ck.config:
        raise CheckpointError(f"{path}: checkpoint config lacks the architecture ('arch')")
    return ck


def _load_params(net, params, where):
    own = net.params
    if set(own) != set(params):
        raise CheckpointError(f"{where}: parameter names differ from the network's: missing "
                              f"{sorted(set(own) - set(params))}, unexpected {sorted(set(params) - set(own))}")
    for k, p in own.items():
        if p.shape != params[k].shape:
            raise CheckpointError(f"{where}: parameter {k!r} has shape {params[k].shape}, the network "
                                  f"expects {p.shape}")
        p[...] = params[k]


def _load_state(net, ck):
    """Parameters and buffers (normalization statistics) of a checkpoint into ``net``."""
    _load_params(net, ck.params, ck.path)
    try:
        net.load_buffers(ck.buffers or {})
    except ValueError as exc:
        raise CheckpointError(f"{ck.path}: {exc}") from None


def load_network(checkpoint, backend=None):
    """Rebuild the network stored in a checkpoint (a path or a :class:`Checkpoint`) with its parameters."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    net = network_from_spec(ck.config["arch"], backend=backend)
    _load_state(net, ck)
    return net


# ==================================================================================== evaluation
def _rb_head(net, path, y):
    """Rao-Blackwellized class probabilities (B, K') and per-example loss (B,) of one sampled path."""
    logits = path.logits
    p0, l0 = losses.probabilities(logits), losses.xent(logits, y, grad=False)
    last = path.stages[-1]
    x_last = _common.flat_last_state(path)
    w = (1 - net.noise.cdf(last.state * last.pre).reshape(x_last.shape)) / x_last.shape[1]  # (B, N_L)
    flipped = _common.head_flip_logits(net, path)  # (B, N_L, K)
    if flipped.shape[-1] == 1:
        p_flip = losses.probabilities(flipped)
        l_flip = losses.xent(flipped, y[:, None], grad=False)
    else:  # one exp for both: log-softmax z - log(sum exp z), z = eta - max(eta)
        z = flipped - flipped.max(axis=-1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=-1)
        p_flip = e / s[..., None]
        l_flip = np.log(s) - np.take_along_axis(z, np.broadcast_to(y[:, None, None], z.shape[:2] + (1,)), -1)[..., 0]
    probs = p0 * (1 - w.sum(axis=1))[:, None] + np.einsum("bi,bik->bk", w, p_flip)
    loss = l0 + np.einsum("bi,bi->b", w, l_flip - l0[:, None])
    return probs, loss


_LN2 = math.log(2.0)


def unit_entropy(a, noise="logistic"):
    """Entropy in bits of stochastic binary units with pre-activations ``a``.

    A unit ``x = sign(a - Z)`` is +1 with probability ``p = F(a) = 1 - F(-a)`` (``F`` the noise cdf);
    its entropy is ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``. Computed from the smaller probability
    ``q = F(-|a|)`` (the accurate lower tail, :func:`sbnnumba.kernels.scalar.entropy_bits`, one fused
    Numba pass for the built-in families; other families go through their log-cdf), so it is 1 at
    ``a = 0``, decays smoothly to 0 for saturated units (no ``0 * log 0``; exactly 0 once ``q``
    underflows, e.g. ``|a| = inf``) and never produces NaN for finite or infinite ``a``.

    Parameters
    ----------
    a : array_like
        Pre-activations (any shape); float32 stays float32.
    noise : str or NoiseFamily
        The units' noise (see :mod:`sbnnumba.noise`).

    Returns
    -------
    ndarray
        ``H`` in bits, the shape of ``a``, values in [0, 1].
    """
    from .noise import get_noise

    noise = get_noise(noise)
    a = np.asarray(a)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    code = NOISE_CODES.get(noise.name)
    if code is not None:  # the built-in families: one fused Numba pass (kernels/entropy.py)
        work = np.float32 if a.dtype == np.float32 else np.float64  # the kernel's two signatures
        flat = np.ascontiguousarray(a, dtype=work).reshape(-1)
        out = np.empty_like(flat)
        unit_entropy_flat(flat, code, out)
        return out.reshape(a.shape).astype(a.dtype, copy=False)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        lp, lq = noise.log_cdf(a), noise.log_cdf(-a)  # log p, log(1 - p) (symmetric noise)
        p, q = np.exp(lp), np.exp(lq)
        h = np.abs(np.where(p > 0, p * lp, 0) + np.where(q > 0, q * lq, 0))  # both terms <= 0; abs: no -0
    return np.minimum(h / a.dtype.type(_LN2), 1).astype(a.dtype, copy=False)


def evaluate(net, x, y, samples=10, rng=None, *, rb=True, deterministic=True, batch_size=500, backend=None,
             entropy=True):
    """Test metrics of a stochastic binary network (see the module docstring for the definitions).

    Parameters
    ----------
    net : Network, or str / os.PathLike / Checkpoint
        A network, or a checkpoint to load it from (:func:`load_network`).
    x : ndarray (N, ...)
        Inputs; uint8 images are scaled to [0, 1].
    y : int ndarray (N,)
    samples : int
        Independent network samples per example ``S`` (ensemble size).
    rng : None, int or Generator
    rb : bool
        Rao-Blackwellized head (the protocol); False uses the plain sampled softmax.
    deterministic : bool
        Also compute ``det_acc`` (the sign network).
    batch_size : int
        Examples per chunk (memory: ``batch_size * N_L * K`` floats for the RB head).
    entropy : bool
        Also compute the unit entropy (:func:`unit_entropy` of every sampled path's pre-activations).

    Returns
    -------
    dict
        ``loss``, ``acc1``, ``eacc`` (S-sample ensemble), ``det_acc`` (or None), ``curve`` (list of
        S ensemble accuracies for 1..S samples), ``entropy`` (bits, mean over all binary units, images
        and samples; None with ``entropy=False``), ``entropy_stages`` (list: the same per stage; None
        with ``entropy=False``), ``samples``, ``n``.
    """
    if not hasattr(net, "sample"):
        net = load_network(net, backend=backend)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples: expected a positive integer, got {samples!r}")
    rng = as_generator(rng)
    x = np.asarray(x)
    y = np.asarray(y)
    n = x.shape[0]
    if y.shape != (n,):
        raise ValueError(f"y: expected shape ({n},) matching x, got {y.shape}")
    loss_sum, correct1, det_correct = 0.0, 0, 0
    curve_correct = np.zeros(samples, dtype=np.int64)
    ent_sum = np.zeros(len(net.stages), dtype=np.float64)  # summed bits per stage
    ent_count = np.zeros(len(net.stages), dtype=np.int64)  # unit evaluations per stage
    with net.evaluating("stochastic"):  # normalization layers use running statistics
        for start in range(0, n, batch_size):
            xb = _as_float(x[start:start + batch_size], net.dtype)
            xb, yb = net.check_batch(xb, y[start:start + batch_size])
            acc = None
            for s in range(samples):
                path = net.sample(xb, rng)
                if entropy:
                    for k, st in enumerate(path.stages):  # st.pre is what the noise sees (after normalization)
                        ent_sum[k] += float(np.sum(unit_entropy(st.pre, net.noise), dtype=np.float64))
                        ent_count[k] += st.pre.size
                if rb:
                    probs, loss = _rb_head(net, path, yb)
                else:
                    probs, loss = losses.probabilities(path.logits), losses.xent(path.logits, yb, grad=False)
                loss_sum += float(np.sum(loss, dtype=np.float64))
                correct1 += int(np.sum(np.argmax(probs, axis=1) == yb))
                acc = probs.astype(np.float64) if acc is None else acc + probs
                curve_correct[s] += int(np.sum(np.argmax(acc, axis=1) == yb))
            if deterministic:
                det_probs = losses.probabilities(net.forward_deterministic(xb))
                det_correct += int(np.sum(np.argmax(det_probs, axis=1) == yb))
    n_eff = max(n, 1)
    curve = (curve_correct / n_eff).tolist()
    ent_total = ent_stages = None
    if entropy:
        ent_total = float(ent_sum.sum() / max(int(ent_count.sum()), 1))
        ent_stages = (ent_sum / np.maximum(ent_count, 1)).tolist()
    return {"loss": loss_sum / (n_eff * samples), "acc1": correct1 / (n_eff * samples), "eacc": curve[-1],
            "det_acc": det_correct / n_eff if deterministic else None, "curve": curve,
            "entropy": ent_total, "entropy_stages": ent_stages, "samples": int(samples), "n": int(n)}


# ======================================================================================== history
def write_history(out, history, config=None):
    """Write ``history.csv`` and ``history.json`` into ``out`` (atomically); return their paths."""
    columns = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    p_csv = atomic_write(os.path.join(out, HISTORY_CSV), lambda f: f.write(buf.getvalue().encode()))
    doc = json.dumps(_jsonable({"config": config, "history": history}), indent=1, sort_keys=False)
    p_json = atomic_write(os.path.join(out, HISTORY_JSON), lambda f: f.write(doc.encode()))
    return p_csv, p_json


# ============================================================================================ fit
def _split_data(data, val_fraction, split_seed):
    """-> x_tr, y_tr, x_val, y_val, name."""
    name = getattr(data, "name", None)
    if hasattr(data, "x_train"):
        x, y = data.x_train, data.y_train
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        x_tr, y_tr, x_val, y_val = (np.asarray(a) for a in data)
        return x_tr, y_tr, x_val, y_val, name
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise TypeError("data: expected a Dataset (x_train, y_train), a pair (x, y) or a 4-tuple "
                        f"(x_train, y_train, x_val, y_val), got {type(data).__name__}")
    x, y = np.asarray(x), np.asarray(y)
    if val_fraction:
        x_tr, y_tr, x_val, y_val = datasets.train_val_split(x, y, val_fraction, split_seed)
    else:
        x_tr, y_tr, x_val, y_val = x, y, x[:0], y[:0]
    return x_tr, y_tr, x_val, y_val, name


def _make_optimizer(optimizer, lr, momentum, nesterov, weight_decay, clip_value, schedule, steps_per_epoch,
                    epochs):
    if isinstance(optimizer, optim.Optimizer):
        return optimizer
    if isinstance(schedule, str):
        total = max(1, epochs * steps_per_epoch)
        if schedule == "cosine":
            schedule = optim.CosineLR(total=total)
        elif schedule == "step":  # x0.1 after each third of the budget
            schedule = optim.StepLR(step_size=max(1, math.ceil(epochs / 3)) * steps_per_epoch, gamma=0.1)
        elif schedule != "constant":
            raise ValueError(f"schedule: expected 'constant', 'step', 'cosine' or a callable, got {schedule!r}")
        else:
            schedule = None
    name = str(optimizer).lower()
    if name == "sgd":
        return optim.SGD(lr=0.01 if lr is None else lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                         weight_decay=weight_decay, clip_value=clip_value, schedule=schedule)
    if name == "adam":
        return optim.Adam(lr=1e-3 if lr is None else lr, weight_decay=weight_decay, clip_value=clip_value,
                          schedule=schedule)
    return optim.get_optimizer(optimizer, lr=lr, clip_value=clip_value, schedule=schedule)


def _check_resume(saved, current, path):
    def differences(key, a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in differences(f"{key}.{k}", a.get(k), b.get(k))]
        return [] if a == b else [f"{key}: checkpoint {a!r} vs now {b!r}"]

    diff = [d for k in TRAJECTORY_KEYS for d in differences(k, _jsonable(saved.get(k)), _jsonable(current.get(k)))]
    if diff:
        detail = "; ".join(diff)
        raise ValueError(f"resume: {path} was written with different settings ({detail}); use the same "
                         "settings or another output directory")


def _metrics_row(prefix, metrics):
    row = {f"{prefix}_loss": metrics["loss"], f"{prefix}_acc1": metrics["acc1"],
           f"{prefix}_eacc": metrics["eacc"], f"{prefix}_det_acc": metrics["det_acc"]}
    if metrics.get("entropy") is not None:
        row[f"{prefix}_entropy"] = metrics["entropy"]
        row.update({f"{prefix}_entropy.{k}": v for k, v in enumerate(metrics["entropy_stages"])})
    return row


def fit(net, data, *, estimator="psa", estimator_options=None, epochs=5, batch_size=64, optimizer="adam",
        lr=None, momentum=0.9, nesterov=True, weight_decay=0.0, schedule=None, clip_value=1e3, seed=0,
        split_seed=1, val_fraction=0.1, augment=False, augment_pad=4, data_init=True, eval_samples=10,
        train_eval_size=2000, eval_batch_size=500, out=None, resume=False, max_time=None, plots=True,
        progress=True, arch=None, metadata=None):
    """Train ``net`` in place on ``data`` with a gradient estimator; validate after every epoch.

    Parameters
    ----------
    net : Network
        Updated in place. Build it with :func:`build_network` (or pass ``arch``) so checkpoints know how
        to rebuild it; all-dense networks are recognized automatically.
    data : Dataset, (x, y) or (x_train, y_train, x_val, y_val)
        Training images (uint8 images are scaled to [0, 1] batch by batch) and labels. With a
        Dataset or a pair, ``val_fraction`` of it is held out for validation (split with ``split_seed``).
    estimator : str
        A registered method (:func:`sbnnumba.known_methods`), e.g. ``"psa"``, ``"st"``.
    estimator_options : dict, optional
        Passed to :func:`sbnnumba.estimate`.
    epochs : int
        Total number of epochs (counting epochs of earlier sessions when resuming).
    batch_size : int
    optimizer : {"adam", "sgd"} or Optimizer
        By name: Adam (default lr 1e-3) or SGD with ``momentum`` / ``nesterov`` (default lr 0.01).
        Element-wise gradient clipping at ``clip_value`` (default 1e3, the paper protocol).
    lr, momentum, nesterov, weight_decay, clip_value :
        Optimizer settings (ignored for an Optimizer instance).
    schedule : None, "constant", "step", "cosine" or callable ``(step, base_lr) -> lr``
        ``"cosine"`` anneals to 0 over the whole run; ``"step"`` multiplies by 0.1 after each third.
    seed : int
        Seeds the training generator (batch order, augmentation, sampled paths) and the evaluation
        generators (``default_rng([seed, epoch, salt])``, independent of training).
    split_seed : int
        Seed of the train/validation split.
    val_fraction : float in [0, 1)
        Validation part; 0 skips validation.
    augment : bool
        Random horizontal flip + padded random crop of each training batch (images (B, C, H, W)), see
        :func:`sbnnumba.datasets.augment_flip_crop`.
    augment_pad : int
        Zero padding of the crop (shifts of up to ``augment_pad`` pixels each way); 4 is the CIFAR
        protocol, 2 keeps 28x28 Fashion-MNIST items inside the frame more often.
    data_init : bool
        Data-dependent initialization on the first ``batch_size`` training images before the first epoch
        (not when resuming).
    eval_samples : int
        Samples per image in the per-epoch evaluation (ensemble size).
    train_eval_size : int
        Training images (fixed, the first of the split) evaluated after each epoch like the validation
        set (train accuracy); 0 disables.
    eval_batch_size : int
    out : str or os.PathLike, optional
        Output directory for the checkpoint, history and plots; None writes nothing.
    resume : bool
        Continue from ``out/checkpoint.npz`` (parameters, optimizer and generator state, history). The
        settings that determine the trajectory must be unchanged (ValueError otherwise); the result is
        bitwise identical to an uninterrupted run. Without ``resume`` an existing checkpoint in ``out``
        is an error (FileExistsError).
    max_time : float, optional
        Time budget in seconds for this call: training stops after the first epoch that ends past it.
    plots : bool
        Write ``loss.png``, ``accuracy.png`` and ``entropy.png`` into ``out`` after each epoch.
    progress : bool
        tqdm bar per epoch (running loss) and a summary line per epoch.
    arch : dict, optional
        Architecture spec ``{"name", "options"}`` overriding ``net.arch_spec``.
    metadata : dict, optional
        JSON-able extra information stored in the config (e.g. command-line settings).

    Returns
    -------
    FitResult

    Raises
    ------
    TrainingDiverged
        At the first non-finite loss or gradient (or parameter after an epoch); ``out/checkpoint.npz``
        keeps the last completed epoch.
    CheckpointError, FileNotFoundError, FileExistsError, ValueError
        Bad checkpoint, missing checkpoint with ``resume``, existing one without, changed settings.
    """
    from tqdm.auto import tqdm

    _registry.lookup(estimator, dict(estimator_options or {}))  # validates name and options early
    for name, v, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("eval_samples", eval_samples, 1),
                        ("augment_pad", augment_pad, 0),
                        ("train_eval_size", train_eval_size, 0), ("eval_batch_size", eval_batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    if max_time is not None and not (isinstance(max_time, (int, float)) and max_time > 0):
        raise ValueError(f"max_time: expected a positive number of seconds or None, got {max_time!r}")
    x_tr, y_tr, x_val, y_val, data_name = _split_data(data, val_fraction, split_seed)
    if x_tr.shape[0] == 0:
        raise ValueError("data: no training examples")
    if augment and x_tr.ndim != 4:
        raise ValueError(f"augment: needs images of shape (N, C, H, W), got training data of shape {x_tr.shape}")
    input_shape = tuple(x_tr.shape[1:])
    spec = dict(arch) if arch is not None else arch_spec(net, input_shape)
    if spec is not None:
        spec.setdefault("options", {})
        spec.update(input_shape=list(input_shape), n_classes=int(net.n_classes),
                    dtype=np.dtype(net.dtype).name)
        net.arch_spec = spec
    elif out is not None:
        raise ValueError("arch: cannot tell how to rebuild this network for the checkpoint; build it with "
                         "sbnnumba.train.build_network or pass arch={'name': ..., 'options': {...}}")
    steps_per_epoch = math.ceil(x_tr.shape[0] / batch_size)
    opt = _make_optimizer(optimizer, lr, momentum, nesterov, weight_decay, clip_value, schedule,
                          steps_per_epoch, epochs)
    config = {
        "format_version": FORMAT_VERSION, "arch": spec,
        "data": {"name": data_name, "train": _fingerprint(x_tr, y_tr), "val": _fingerprint(x_val, y_val)},
        "estimator": estimator, "estimator_options": dict(estimator_options or {}), "epochs": int(epochs),
        "batch_size": int(batch_size), "seed": int(seed), "split_seed": int(split_seed),
        "val_fraction": float(val_fraction), "augment": bool(augment),
        "augment_pad": int(augment_pad) if augment else None, "data_init": bool(data_init),
        "optimizer": opt.hyperparameters, "eval_samples": int(eval_samples),
        "train_eval_size": int(train_eval_size), "backend": net.backend, "metadata": metadata or {},
    }
    config = _jsonable(config)

    ckpt_path = os.path.join(os.fspath(out), CHECKPOINT_NAME) if out is not None else None
    if resume:
        if out is None:
            raise ValueError("resume: needs the output directory 'out' holding the checkpoint")
        ck = load_checkpoint(ckpt_path)
        _check_resume(ck.config, config, ckpt_path)
        _load_state(net, ck)
        opt.load_state_dict(ck.optimizer_state)
        rng = _generator_from_state(ck.rng_state)
        history, start = list(ck.history), ck.epoch
    else:
        if ckpt_path is not None and os.path.exists(ckpt_path):
            raise FileExistsError(f"out: {ckpt_path} already exists; pass resume=True (--resume) to continue "
                                  "that run or choose another output directory")
        rng = np.random.default_rng(seed)
        history, start = [], 0
        if data_init:
            net.initialize_from_data(_as_float(x_tr[:batch_size], net.dtype))
    if out is not None:
        os.makedirs(out, exist_ok=True)

    files, stopped, t_begin = {}, "completed", time.perf_counter()
    if start >= epochs:
        stopped = "already complete"
    x_tr_eval, y_tr_eval = x_tr[:train_eval_size], y_tr[:train_eval_size]
    device = _device_trainer(net, estimator, estimator_options, augment, opt, batch_size, input_shape)
    if device is not None:  # the dataset goes to the device once; see sbnnumba.device_training
        x_dev, y_dev = device.upload(_as_float(x_tr, net.dtype).reshape(x_tr.shape[0], -1), y_tr)
    epoch = start
    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter()
        running, seen = 0.0, 0
        net.train()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not progress,
                   leave=False, dynamic_ncols=True)
        try:
            if device is not None:
                # generator seed drawn from the checkpointed rng: a resumed run samples the same states
                device.reseed(int(rng.integers(2 ** 63)))
                seen = x_tr.shape[0]
                running = seen * device.train_epoch(x_dev, y_dev, batch_size, rng=rng, callback=lambda: bar.update(1))
                device.sync()
                if not np.isfinite(running):
                    raise TrainingDiverged(f"training diverged: non-finite loss in epoch {epoch} on the device "
                                           f"(estimator {estimator!r}, lr {opt.lr:g}); the last good checkpoint "
                                           f"is {ckpt_path}", epoch=epoch, checkpoint=ckpt_path)
            batches = () if device is not None else \
                datasets.iterate_minibatches(x_tr, y_tr, batch_size, rng=rng, shuffle=True)
            for step, (xb, yb) in enumerate(batches, start=1):
                if augment:
                    xb = datasets.augment_flip_crop(xb, rng, pad=augment_pad)
                loss, grads = _registry.estimate(estimator, net, _as_float(xb, net.dtype), yb, rng,
                                                 **(estimator_options or {}))
                bad = _first_nonfinite(loss, grads)
                if bad is not None:
                    last = (f"the last good checkpoint is {ckpt_path} (epoch {epoch - 1})"
                            if ckpt_path and os.path.exists(ckpt_path) else "no checkpoint was written")
                    raise TrainingDiverged(f"training diverged: non-finite {bad} at epoch {epoch}, step {step} "
                                           f"(estimator {estimator!r}, lr {opt.lr:g}); {last}",
                                           epoch=epoch, step=step,
                                           checkpoint=ckpt_path if ckpt_path and os.path.exists(ckpt_path) else None)
                opt.update(net.params, grads)
                net.apply_constraints()  # projection of latent weights (mirror descent), if any
                running += loss * len(yb)
                seen += len(yb)
                bar.update(1)
                if step % 10 == 0 or step == steps_per_epoch:
                    bar.set_postfix(loss=f"{running / seen:.4f}")
        finally:
            bar.close()
        train_time = time.perf_counter() - t0
        bad = [k for k, p in net.params.items() if not np.all(np.isfinite(p))]
        if bad:
            raise TrainingDiverged(f"training diverged: non-finite parameters {bad} after epoch {epoch}; the last "
                                   f"good checkpoint is {ckpt_path}", epoch=epoch, checkpoint=ckpt_path)

        t1 = time.perf_counter()
        if net.normalizations():  # deterministic mode is a different network: re-estimate its statistics
            net.recalibrate_normalization(_as_float(x_tr[:2000], net.dtype), mode="deterministic")
        row = {"epoch": epoch, "steps": opt.step_count, "lr": opt.lr, "train_loss": running / seen}
        eval_rng = np.random.default_rng([int(seed), epoch, _EVAL_SALT])
        if train_eval_size:
            m = evaluate(net, x_tr_eval, y_tr_eval, eval_samples, eval_rng, batch_size=eval_batch_size,
                         entropy=False)
            row.update({"train_eval_loss": m["loss"], "train_acc1": m["acc1"], "train_eacc": m["eacc"],
                        "train_det_acc": m["det_acc"]})
        if x_val.shape[0]:
            row.update(_metrics_row("val", evaluate(net, x_val, y_val, eval_samples, eval_rng,
                                                    batch_size=eval_batch_size)))
        row.update(epoch_time=train_time, eval_time=time.perf_counter() - t1)
        history.append(row)
        if progress:
            parts = [f"epoch {epoch}/{epochs}", f"train loss {row['train_loss']:.4f}"]
            if "val_loss" in row:
                parts += [f"val loss {row['val_loss']:.4f}", f"acc1 {100 * row['val_acc1']:.2f}%",
                          f"ens{eval_samples} {100 * row['val_eacc']:.2f}%", f"det {100 * row['val_det_acc']:.2f}%",
                          f"H {row['val_entropy']:.3f} bit"]
            parts.append(f"{train_time:.1f}s")
            tqdm.write(" | ".join(parts))
        if out is not None:
            save_checkpoint(ckpt_path, net, opt, rng, epoch, history, config)
            files["history_csv"], files["history_json"] = write_history(out, history, config)
            if plots:
                try:
                    from .plots import plot_training_curves
                    files["loss_png"], files["accuracy_png"], files["entropy_png"] = plot_training_curves(history, out)
                except Exception as exc:  # a broken plot must not end a long run
                    warnings.warn(f"could not write the training plots: {exc}", RuntimeWarning)
        if max_time is not None and time.perf_counter() - t_begin >= max_time and epoch < epochs:
            stopped = "time budget"
            break
    if ckpt_path is not None:
        files["checkpoint"] = ckpt_path
    return FitResult(history=history, optimizer=opt, epochs_done=len(history) and history[-1]["epoch"],
                     stopped=stopped, config=config, out=None if out is None else os.fspath(out),
                     checkpoint=ckpt_path if ckpt_path and os.path.exists(ckpt_path) else None, files=files)


# ================================================================================= lr search
#: fit() options a learning-rate search sets itself (per trial) and so does not accept.
_SEARCH_OWN = ("lr", "epochs", "out", "resume", "max_time", "plots", "progress", "train_eval_size", "eval_samples",
               "eval_batch_size", "arch", "metadata")
_DIVERGED_PENALTY = 1e6  # objective of a diverged trial (times 1..2, growing with log10 lr)


@dataclass
class LRTrial:
    """One trial of :func:`search_lr`.

    Attributes
    ----------
    trial : int
        1-based index.
    lr, log10_lr : float
    score : float
        Mean running training loss over the trial's epochs; ``inf`` if the trial diverged.
    status : str
        ``"ok"`` or ``"diverged"`` (non-finite loss / gradient / parameters).
    epochs : int
        Completed epochs (fewer than ``trial_epochs`` if it diverged).
    seconds : float
    error : str or None
        The divergence message.
    """

    trial: int
    lr: float
    log10_lr: float
    score: float
    status: str
    epochs: int
    seconds: float
    error: str | None = None

    def as_dict(self):
        d = dict(self.__dict__)
        d["score"] = self.score if math.isfinite(self.score) else None  # JSON has no inf
        return d


@dataclass
class LRSearchResult:
    """What :func:`search_lr` returns.

    Attributes
    ----------
    lr : float
        The learning rate of the best (lowest-score) trial.
    score : float
        Its score.
    trials : list of LRTrial
        In the order run.
    settings : dict
        Bounds, max_trials, trial_epochs, trial_subset, estimator, xatol.
    seconds : float
        Wall time of the whole search.
    """

    lr: float
    score: float
    trials: list
    settings: dict
    seconds: float

    @property
    def table(self):
        """``[(lr, score), ...]`` of the trials in the order run."""
        return [(t.lr, t.score) for t in self.trials]

    def as_dict(self):
        """JSON-able record (stored in the run's config as ``metadata["lr_search"]`` by the CLI)."""
        return _jsonable({"lr": self.lr, "score": self.score, "seconds": self.seconds, "settings": self.settings,
                          "trials": [t.as_dict() for t in self.trials]})


def _snapshot(net):
    """Copies of the parameters and the normalization statistics of ``net``."""
    params = {k: p.copy() for k, p in net.params.items()}
    running = [{m: None if st is None else (st[0].copy(), st[1].copy()) for m, st in n.running.items()}
               for n in net.normalizations()]
    return params, running


def _restore(net, snap):
    params, running = snap
    for k, p in net.params.items():
        p[...] = params[k]
    for n, saved in zip(net.normalizations(), running):
        n.running = {m: None if st is None else (st[0].copy(), st[1].copy()) for m, st in saved.items()}


def search_lr(net, data, *, estimator="psa", bounds=(-6.0, 0.0), max_trials=10, trial_epochs=5, trial_subset=None,
              xatol=0.05, progress=True, **fit_options):
    """Choose a constant learning rate for one method: bounded scalar minimization over ``log10(lr)``.

    Every trial restores the same initial parameters, trains ``trial_epochs`` epochs with :func:`fit`
    (same seed, so the same batches and noise draws: common random numbers) and is scored by the mean
    running training loss over its epochs. A trial that diverges (:class:`TrainingDiverged`) scores
    ``inf`` in the table; the minimizer sees a large finite penalty that grows with the lr and the search
    goes on. The minimizer is ``scipy.optimize.minimize_scalar(method="bounded")`` with
    ``maxiter=max_trials`` and ``xatol``; the number of trials never exceeds ``max_trials`` (a point
    proposed twice is not re-run).

    Parameters
    ----------
    net : Network or callable
        The network to tune (its current parameters are the common initialization; they are restored on
        return, so ``fit(net, ...)`` afterwards starts from the same point), or a zero-argument factory
        returning one (called once).
    data : Dataset, (x, y) or (x_train, y_train, x_val, y_val)
        As for :func:`fit`; split the same way (``val_fraction``, ``split_seed``). Only the training part
        is used; no validation is run during the trials.
    estimator : str
        The gradient estimator (method) to tune for.
    bounds : (float, float)
        ``(lo, hi)`` of ``log10(lr)``, ``lo < hi``; default the spec's ``(-6, 0)``.
    max_trials : int >= 1
        Most trials (trainings) run.
    trial_epochs : int >= 1
        Epochs per trial.
    trial_subset : int, optional
        Train the trials on this many training examples (a fixed random subset of the training part,
        drawn with ``split_seed``) to make the search affordable; None uses the whole training part.
    xatol : float > 0
        Absolute tolerance on ``log10(lr)`` at which the minimizer stops early.
    progress : bool
        Print one line per trial.
    **fit_options
        Passed to every trial's :func:`fit` (``batch_size``, ``optimizer`` (a name), ``momentum``,
        ``nesterov``, ``weight_decay``, ``schedule``, ``clip_value``, ``seed``, ``split_seed``,
        ``val_fraction``, ``augment``, ``data_init``, ``estimator_options``). With ``data_init`` (the
        default), the data-dependent initialization is done once on the first ``batch_size`` images of the
        full training part, exactly as :func:`fit` would, and every trial starts from its result.

    Returns
    -------
    LRSearchResult
        ``.lr`` (best trial), ``.score``, ``.trials`` (``.table`` = ``[(lr, score), ...]``), ``.as_dict()``.

    Raises
    ------
    ValueError, TypeError
        Invalid bounds / counts / options (e.g. ``lr`` or ``epochs`` among ``fit_options``, an Optimizer
        instance instead of a name).
    TrainingDiverged
        If every trial diverged (lower the upper bound).
    """
    from scipy.optimize import minimize_scalar

    bad = sorted(set(fit_options) & set(_SEARCH_OWN))
    if bad:
        raise TypeError(f"search_lr: {bad} are set by the search itself, not accepted as fit options")
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds: expected (lo, hi) of log10(lr), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds: expected finite log10(lr) bounds with lo < hi, got {bounds!r}")
    for name, v in (("max_trials", max_trials), ("trial_epochs", trial_epochs)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if trial_subset is not None and (isinstance(trial_subset, bool) or not isinstance(trial_subset, (int, np.integer))
                                     or trial_subset < 1):
        raise ValueError(f"trial_subset: expected a positive integer or None, got {trial_subset!r}")
    if not (isinstance(xatol, (int, float)) and math.isfinite(xatol) and xatol > 0):
        raise ValueError(f"xatol: expected a positive number, got {xatol!r}")
    if isinstance(fit_options.get("optimizer"), optim.Optimizer):
        raise ValueError("optimizer: pass the optimizer by name; an Optimizer instance would carry its state "
                         "from one trial to the next")
    _registry.lookup(estimator, dict(fit_options.get("estimator_options") or {}))
    if not hasattr(net, "sample"):
        if not callable(net):
            raise TypeError(f"net: expected a Network or a callable returning one, got {type(net).__name__}")
        net = net()

    opts = dict(fit_options)
    batch_size = opts.get("batch_size", 64)
    x_tr, y_tr, _, _, _ = _split_data(data, opts.get("val_fraction", 0.1), opts.get("split_seed", 1))
    if x_tr.shape[0] == 0:
        raise ValueError("data: no training examples")
    if trial_subset is not None and trial_subset < x_tr.shape[0]:
        idx = np.sort(np.random.default_rng([int(opts.get("split_seed", 1)), 0x1A5E]).choice(
            x_tr.shape[0], size=int(trial_subset), replace=False))
        x_sub, y_sub = x_tr[idx], y_tr[idx]
    else:
        x_sub, y_sub = x_tr, y_tr
    trial_data = (x_sub, y_sub, x_sub[:0], y_sub[:0])

    original = _snapshot(net)
    trials, cache = [], {}
    t_begin = time.perf_counter()
    try:
        if opts.pop("data_init", True):
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
            net.initialize_from_data(_as_float(x_tr[:batch_size], net.dtype))  # as fit() would
        start = _snapshot(net)

        class _Budget(Exception):
            pass

        def objective(log_lr):
            log_lr = float(log_lr)
            if log_lr in cache:
                return cache[log_lr]
            if len(trials) >= max_trials:
                raise _Budget
            lr = 10.0 ** log_lr
            _restore(net, start)
            t0 = time.perf_counter()
            try:
                res = fit(net, trial_data, estimator=estimator, epochs=int(trial_epochs), lr=lr, data_init=False,
                          train_eval_size=0, out=None, progress=False, plots=False, **opts)
                trial = LRTrial(len(trials) + 1, lr, log_lr, float(np.mean([r["train_loss"] for r in res.history])),
                                "ok", len(res.history), time.perf_counter() - t0)
                value = trial.score
            except TrainingDiverged as exc:
                trial = LRTrial(len(trials) + 1, lr, log_lr, math.inf, "diverged", (exc.epoch or 1) - 1,
                                time.perf_counter() - t0, error=str(exc))
                value = _DIVERGED_PENALTY * (1.0 + (log_lr - lo) / (hi - lo))
            trials.append(trial)
            cache[log_lr] = value
            if progress:
                score = f"score {trial.score:.5g}" if trial.status == "ok" else f"diverged at epoch {trial.epochs + 1}"
                print(f"lr search [{estimator}] trial {trial.trial}/{max_trials}: lr {lr:.3e} (log10 {log_lr:+.3f}): "
                      f"{score} ({trial.seconds:.1f} s)", flush=True)
            return value

        try:
            minimize_scalar(objective, bounds=(lo, hi), method="bounded",
                            options={"maxiter": int(max_trials), "xatol": float(xatol)})
        except _Budget:
            pass
    finally:
        _restore(net, original)
    ok = [t for t in trials if t.status == "ok"]
    settings = {"estimator": estimator, "bounds": [lo, hi], "max_trials": int(max_trials),
                "trial_epochs": int(trial_epochs), "trial_subset": None if trial_subset is None else int(trial_subset),
                "trial_examples": int(x_sub.shape[0]), "xatol": float(xatol)}
    if not ok:
        raise TrainingDiverged(f"lr search: all {len(trials)} trials diverged (log10 lr in [{lo:g}, {hi:g}]); "
                               "lower the upper bound")
    best = min(ok, key=lambda t: (t.score, t.trial))
    return LRSearchResult(lr=best.lr, score=best.score, trials=trials, settings=settings,
                          seconds=time.perf_counter() - t_begin)
