r"""Evaluation of a stochastic binary network: expected loss, accuracies, unit entropy.

Hard +-1 sampling with the Rao-Blackwellized head (spec section 2.6, :mod:`sbnnumba.estimators.rbhead`):
for a sampled last state ``x^L`` with single-flip logits ``eta^(i) = eta - 2 x^L_i V[:, i]`` and weights
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
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .. import losses
from ..estimators import rbhead
from ..network import Network
from ..noise import get_noise
from ..progress import progress_bar
from ..validation import as_generator, check_positive_int
from .checkpoint import load_network
from .data import as_float

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..noise import NoiseFamily
    from .checkpoint import Checkpoint


def unit_entropy(a: npt.ArrayLike, noise: str | NoiseFamily = "logistic") -> np.ndarray:
    """Entropy in bits of stochastic binary units with pre-activations ``a``.

    A unit ``x = sign(a - Z)`` is +1 with probability ``p = F(a) = 1 - F(-a)`` (``F`` the noise cdf);
    its entropy is ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``. Computed from the smaller probability
    ``q = F(-|a|)`` (:meth:`sbnnumba.noise.NoiseFamily.entropy_bits`: one fused Numba pass for the
    families with kernels; other families go through their log-cdf), so it is 1 at
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
    return get_noise(noise).entropy_bits(a)


#: :func:`evaluate`'s most examples per chunk (:meth:`sbnnumba.Network.chunk_size` takes fewer where a chunk's conv
#: patch matrices would pass :data:`sbnnumba.network.CHUNK_BYTES`).
EVAL_CHUNK = 500


def evaluate(net: Network | str | os.PathLike[str] | Checkpoint, x: npt.ArrayLike, y: npt.ArrayLike, samples: int = 10,
             rng: None | int | np.random.Generator = None, *, rb: bool = True, deterministic: bool = True,
             batch_size: int | None = None, backend: str | Backend | None = None, entropy: bool = True,
             uniforms: Callable[[int, int, int], Any] | None = None, progress: str | None = None) -> dict[str, Any]:
    """Test metrics of a stochastic binary network (see the module docstring for the definitions).

    Parameters
    ----------
    net : Network, or str / os.PathLike / Checkpoint
        A network, or a checkpoint to load it from (:func:`load_network`).
    x : ndarray (N, ...)
        Inputs; uint8 images are scaled to [0, 1].
    y : int ndarray (N,)
        Labels.
    samples : int
        Independent network samples per example ``S`` (ensemble size).
    rng : None, int or Generator
        Draws the samples.
    rb : bool
        Rao-Blackwellized head (the protocol); False uses the plain sampled softmax.
    deterministic : bool
        Also compute ``det_acc`` (the sign network).
    batch_size : int, optional
        Examples per chunk (memory: the stages' product operands, e.g. a conv stage's patch matrix, and
        ``batch_size * N_L * K`` floats for the RB head); default :meth:`sbnnumba.Network.chunk_size` with at most
        :data:`EVAL_CHUNK`.
    backend : str or Backend, optional
        Where a network loaded from a checkpoint runs.
    entropy : bool
        Also compute the unit entropy (:func:`unit_entropy` of every sampled path's pre-activations).
    uniforms : callable, optional
        ``uniforms(lo, hi, s) -> (stage uniforms, weight uniforms)`` of sample ``s`` of the examples
        ``x[lo:hi]`` (what :meth:`~sbnnumba.Network.sample` accepts), in place of draws from ``rng``:
        noise keyed by each example's position, which makes the metrics independent of how the set
        is split (data-parallel validation, :meth:`sbnnumba.distributed.KeyedNoise.evaluation_uniforms`).
    progress : str, optional
        A label: show a progress bar over the examples with it (:func:`sbnnumba.progress.progress_bar`, updated
        after each chunk's samples); None (the default) shows none. It does not change the results.

    Returns
    -------
    dict
        ``loss``, ``acc1``, ``eacc`` (S-sample ensemble), ``det_acc`` (or None), ``curve`` (list of
        S ensemble accuracies for 1..S samples), ``entropy`` (bits, mean over all binary units, images
        and samples; None with ``entropy=False``), ``entropy_stages`` (list: the same per stage; None
        with ``entropy=False``), ``samples``, ``n``.
    """
    if not isinstance(net, Network):
        net = load_network(net, backend=backend)
    samples = check_positive_int(samples, "samples")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if progress is not None and not isinstance(progress, str):
        raise TypeError(f"progress: expected a label (str) or None, got {type(progress).__name__}")
    rng = as_generator(rng)
    x = np.asarray(x)
    y = np.asarray(y)
    n = x.shape[0]
    if y.shape != (n,):
        raise ValueError(f"y: expected shape ({n},) matching x, got {y.shape}")
    if batch_size is None:
        net.check_input_shape(x.shape)  # (each chunk is converted and checked again as it is taken)
        batch_size = net.chunk_size(x.shape[1:], EVAL_CHUNK)
    net.check_params()  # NaN or inf parameters would give metrics of garbage
    loss_sum, correct1, det_correct = 0.0, 0, 0
    curve_correct = np.zeros(samples, dtype=np.int64)
    ent_sum = np.zeros(len(net.stages), dtype=np.float64)  # summed bits per stage
    ent_count = np.zeros(len(net.stages), dtype=np.int64)  # unit evaluations per stage
    bar = progress_bar(total=n, desc=progress, unit="image", enabled=progress is not None)
    with bar, net.evaluating("stochastic"):  # normalization layers use running statistics
        for start in range(0, n, batch_size):
            xb = as_float(x[start:start + batch_size], net.dtype)
            xb, yb = net.check_batch(xb, y[start:start + batch_size])
            acc = None
            for s in range(samples):
                drawn = () if uniforms is None else uniforms(start, start + xb.shape[0], s)
                path = net.sample(xb, rng, *drawn, keep_patches=False)  # forward only: no patches kept
                if entropy:
                    for k, st in enumerate(path.stages):  # st.pre is what the noise sees (after normalization)
                        ent_sum[k] += float(np.sum(unit_entropy(st.pre, net.noise), dtype=np.float64))
                        ent_count[k] += st.pre.size
                if rb:
                    probs, loss = rbhead.probabilities_and_loss(net, path, yb)
                else:
                    probs, loss = losses.probabilities(path.logits), losses.xent(path.logits, yb, grad=False)
                loss_sum += float(np.sum(loss, dtype=np.float64))
                correct1 += int(np.sum(np.argmax(probs, axis=1) == yb))
                acc = probs.astype(np.float64) if acc is None else acc + probs
                curve_correct[s] += int(np.sum(np.argmax(acc, axis=1) == yb))
            if deterministic:
                det_probs = losses.probabilities(net.forward_deterministic(xb))
                det_correct += int(np.sum(np.argmax(det_probs, axis=1) == yb))
            bar.update(xb.shape[0])
    n_eff = max(n, 1)
    curve = (curve_correct / n_eff).tolist()
    ent_total = ent_stages = None
    if entropy:
        ent_total = float(ent_sum.sum() / max(int(ent_count.sum()), 1))
        ent_stages = (ent_sum / np.maximum(ent_count, 1)).tolist()
    return {"loss": loss_sum / (n_eff * samples), "acc1": correct1 / (n_eff * samples), "eacc": curve[-1],
            "det_acc": det_correct / n_eff if deterministic else None, "curve": curve,
            "entropy": ent_total, "entropy_stages": ent_stages, "samples": int(samples), "n": int(n)}


def metrics_row(prefix: str, metrics: dict) -> dict:
    """History-row entries ``<prefix>_loss``, ``_acc1``, ``_eacc``, ``_det_acc`` (and entropies) of :func:`evaluate`.

    Parameters
    ----------
    prefix : str
        ``"train"`` or ``"val"``.
    metrics : dict
        As returned by :func:`evaluate`.

    Returns
    -------
    dict
        ``<prefix>_loss``, ``<prefix>_acc1``, ``<prefix>_eacc``, ``<prefix>_det_acc`` and, when the
        entropy was measured, ``<prefix>_entropy`` and ``<prefix>_entropy.<k>`` per stage.
    """
    row = {f"{prefix}_loss": metrics["loss"], f"{prefix}_acc1": metrics["acc1"],
           f"{prefix}_eacc": metrics["eacc"], f"{prefix}_det_acc": metrics["det_acc"]}
    if metrics.get("entropy") is not None:
        row[f"{prefix}_entropy"] = metrics["entropy"]
        row.update({f"{prefix}_entropy.{k}": v for k, v in enumerate(metrics["entropy_stages"])})
    return row
