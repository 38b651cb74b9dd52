r"""Gradient-accuracy study of the PSA paper on the 2-D toy set (spec psa.md 5.1, st.md 7).

Protocol (defaults; every number is a command-line option of :func:`main`):

* data: ``sbnnumba.datasets.toy2d(200)`` (NumPy seed 1; the paper's points cannot be reproduced
  bit-exactly), labels ``y in {0, 1}``;
* network: ``Network.dense([2, 5, 5, 5], 1, dtype=float64)``, logistic noise, three binary layers
  of 5 units and a 1-logit head with the logistic loss ``log(1 + exp(-eta (2y - 1)))``;
* init: ``U(-1, 1)`` for all weights and biases, then the data-dependent rescale of
  :func:`adf_rescale` (ADF moments; every binary layer's pre-activation gets mean 0 and variance 1
  over the data and the noise);
* training: REINFORCE, SGD lr 0.03, momentum 0.9 (no Nesterov), batch 10, one sample per point,
  snapshots at the requested epochs (default 100 and 2000; epoch 0 is the initialization);
* ground truth: the exact gradient of ``mean_n E_Z[l]`` by enumeration (``estimate("exact", ...)``);
* estimates: ``draws`` (20,000) independent full-data gradients per estimator (one noise sample
  per data point per draw, averaged over the 200 points);
* metrics: for ``M`` in {1..9, 10, 20..90, ..., 1000, 2000..9000} (``M <= draws / 2``) the draws
  are split into ``floor(draws / M)`` groups and each group is averaged; per layer (layer k = stage
  k's ``W, b``; the last layer is the head ``V, c``) the relative RMSE
  ``sqrt(mean_groups ||g_M - g||^2 / ||g||^2)`` and the cosine ``<g_M, g> / (||g_M|| ||g||)`` (mean,
  15 % and 85 % quantiles over the groups).

**Encoding.** The paper runs the study with {0,1} states (and PSA through a parameter conversion);
this library's SBNs use +-1 states, ``x = sign(a - Z)``. Both are valid SBNs (an affine
reparameterization of each layer maps one onto the other); every estimator and the exact oracle
here use the same +-1 model, so the comparison is consistent, but the trained weights and the
numbers differ from the paper's. The ST factor is ``2 p(a)`` in this coding.

**Batched draws.** Path estimators (``psa``, ``st*``, ``reinforce``) get one sampled path of
``chunk * n`` rows (``chunk`` draws of the n points) and are called on each draw's n-row slice
with weights ``1/n``: the estimator code is used as registered, the sampling is batched. Direct
estimators (``arm``, ``concrete``, ``tanh``, ...) are called once per draw. Both cost well under a
millisecond per draw for this network.

**Distributed draws.** Block ``b`` of ``chunk`` draws of estimator ``i`` at checkpoint ``E`` has its
own generator ``default_rng([seed, E, i, b])`` (:func:`draw_gradients`), so ``--workers N`` (local
processes) or ``--scheduler tcp://HOST:8786`` (a Dask cluster) compute the blocks in parallel and
the outputs are identical to the serial run with the same seed and ``--chunk`` (only the ms/draw
timings differ). The training to the checkpoints stays serial, in the calling process.

Outputs in ``--out`` (written atomically: temp file + rename): ``gradient_accuracy_epoch{E}.png``
(log-log RMSE and cosine vs M, one panel per layer, one line per estimator),
``gradient_accuracy.csv`` (every number), ``gradient_accuracy.md`` (tables at M = 1, 10, 100) and
``checkpoint_epoch{E}.npz`` (the parameters).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, as_completed
from pathlib import Path as FsPath
from typing import Any

import numpy as np
import numpy.typing as npt

from .backends import backend_names
from .datasets import iterate_minibatches, toy2d
from .estimators.registry import estimate, lookup
from .estimators.relaxations import binary_moment_map
from .fileio import atomic_write, atomic_write_text
from .network import Network, Path, StageSample
from .progress import progress_bar
from .runtime import limited_threads

# ARM with its suffix noise named: the plots and tables say which variant they show (the PSA paper's
# baseline is ``arm:independent_suffixes=true``; the shared-noise default has the lower variance)
DEFAULT_METHODS = ("psa", "st", "reinforce", "arm:independent_suffixes=false", "concrete:tau=0.1", "concrete:tau=1",
                   "tanh", "st-identity", "st-hardtanh")
DEFAULT_EPOCHS = (100, 2000)
TABLE_M = (1, 10, 100)


def m_values(draws: int) -> list[int]:
    """The sample sizes M of the protocol that leave at least two groups (``M <= draws // 2``).

    Parameters
    ----------
    draws : int
        Number of single-draw estimates.

    Returns
    -------
    list of int
        The M in {1..9, 10..90, 100..900, 1000..9000} with ``M <= max(1, draws // 2)``, increasing.
    """
    ms = list(range(1, 10)) + list(range(10, 100, 10)) + list(range(100, 1000, 100)) + list(range(1000, 10000, 1000))
    return [m for m in ms if m <= max(1, draws // 2)]


# ------------------------------------------------------------------------------------ setup
def parse_method(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (label, name, options).

    Values are parsed as ``true``/``false`` (bool), int or float where possible, else kept as strings.

    Parameters
    ----------
    spec : str
        An estimator with options, e.g. ``"concrete:tau=0.1"``.

    Returns
    -------
    label : str
        ``name`` or ``name(key=value, ...)``, e.g. ``concrete(tau=0.1)``.
    name : str
        The registered estimator name.
    options : dict
        Option name -> parsed value.

    Raises
    ------
    ValueError
        For an item without ``=``, an unknown estimator or an unknown option name.
    """
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    value: Any  # the option's text, then its parsed value
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"methods: expected 'name:key=value,...', got {spec!r}")
        if value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        for cast in (int, float):
            try:
                value = cast(value) if isinstance(value, str) else value
                break
            except ValueError:
                pass
        options[key.strip()] = value
    lookup(name, options)  # validates the name and the option names
    label = name if not options else f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})"
    return label, name, options


def adf_rescale(net: Network, x: npt.ArrayLike) -> Network:
    r"""Data-dependent init: rescale every binary stage with ADF moments (spec psa.md 5.1).

    Stage by stage, with the moments ``(mu_a, v_a)`` of the pre-activation propagated by ADF from
    the data (input moments ``(x, 0)``; ``binary_moment_map`` of the network's noise between stages),
    the statistic is the mean and the total variance of ``a`` over the data *and* the noise:
    ``m = mean_n mu_a``, ``s^2 = mean_n v_a + var_n mu_a`` (law of total variance), per unit (per
    channel for maps, pooled over positions); then ``W <- W / s``, ``b <- (b - m) / s`` so that the
    propagated pre-activation has mean 0 and variance 1. The head is not rescaled.

    Parameters
    ----------
    net : Network
        Modified in place.
    x : array_like, shape (N, ...)
        The data the moments are taken over.

    Returns
    -------
    Network
        ``net``.
    """
    mu, var = net.check_input(x), None
    for layer in net.stages:
        mu_a, v_a = layer.forward_moments(mu, np.zeros_like(mu) if var is None else var)
        axes = (0,) + tuple(range(2, mu_a.ndim))
        mean = mu_a.mean(axis=axes)
        std = np.sqrt(v_a.mean(axis=axes) + mu_a.var(axis=axes))
        rescaled = layer.rescale_(mean, np.maximum(std, 1e-6))  # a view with sign(eta) / s for Bernoulli weights
        mu_a, v_a = rescaled.forward_moments(mu, np.zeros_like(mu) if var is None else var)
        mu, var, _ = binary_moment_map(net.noise, mu_a, v_a)
    return net


def make_network(x: npt.ArrayLike, rng: np.random.Generator, sizes: Sequence[int] = (2, 5, 5, 5),
                 backend: str = "reference") -> Network:
    """The study's network: dense float64, ``U(-1, 1)`` parameters, then :func:`adf_rescale`.

    The default backend is ``"reference"``: for 200-row batches of 5-unit layers the NumPy reference
    PSA kernel is as fast as the parallel Numba one and, unlike it, does not slow down tenfold when
    the cores are shared with other processes.

    Parameters
    ----------
    x : array_like, shape (N, sizes[0])
        Data of the initialization.
    rng : numpy.random.Generator
        Draws the initial parameters.
    sizes : sequence of int
        Input width and the widths of the binary stages (a 1-logit head follows).
    backend : str
        Backend name.

    Returns
    -------
    Network
    """
    net = Network.dense(list(sizes), 1, rng=rng, dtype=np.float64, backend=backend)
    for p in net.params.values():
        p[...] = rng.uniform(-1, 1, size=p.shape)
    return adf_rescale(net, x)


def train_checkpoints(net: Network, x: np.ndarray, y: np.ndarray, epochs: Iterable[int], rng: np.random.Generator,
                      method: str = "reinforce", lr: float = 0.03, momentum: float = 0.9, batch_size: int = 10,
                      progress: bool = True) -> dict[int, dict[str, np.ndarray]]:
    """Train with SGD (+momentum) and ``method``, keeping copies of the parameters at ``epochs``.

    Parameters
    ----------
    net : Network
        Trained in place.
    x : ndarray, shape (N, ...)
        Training inputs.
    y : ndarray, shape (N,)
        Labels.
    epochs : iterable of int
        Epochs to snapshot (0: before training); training runs to the largest.
    rng : numpy.random.Generator
        Draws the minibatch order and the estimator's noise.
    method : str
        Estimator of the training gradient.
    lr, momentum : float
        SGD step size and momentum (no Nesterov).
    batch_size : int
        Examples per step.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict int -> dict str -> ndarray
        ``{epoch: copy of net.params}``.

    Raises
    ------
    FloatingPointError
        When a gradient is not finite.
    """
    from .optim import SGD, NonFiniteGradient

    wanted = sorted(set(int(e) for e in epochs))
    snaps = {0: {k: v.copy() for k, v in net.params.items()}} if 0 in wanted else {}
    opt = SGD(lr=lr, momentum=momentum)
    bar = progress_bar(range(1, max(wanted) + 1), desc=f"train ({method})", enabled=progress)
    for epoch in bar:
        for xb, yb in iterate_minibatches(x, y, batch_size, rng=rng):
            _, grads = estimate(method, net, xb, yb, rng=rng)
            try:  # the optimizer refuses a non-finite gradient before changing anything
                opt.update(net.params, grads)
            except NonFiniteGradient:
                raise FloatingPointError(f"training diverged at epoch {epoch}: non-finite gradient") from None
        if epoch in wanted:
            snaps[epoch] = {k: v.copy() for k, v in net.params.items()}
    return snaps


# ------------------------------------------------------------------------------------- draws
def flat_gradient(net: Network, grads: dict[str, np.ndarray]) -> np.ndarray:
    """All gradient entries as one vector, in the order of ``net.params``.

    Parameters
    ----------
    net : Network
        Gives the parameter order.
    grads : dict str -> ndarray
        One array per parameter name.

    Returns
    -------
    ndarray, shape (n_params,)
    """
    return np.concatenate([np.ravel(grads[k]) for k in net.params])


def layer_groups(net: Network) -> list[tuple[str, np.ndarray]]:
    """The entries of each layer in the flat gradient (:func:`flat_gradient`).

    Parameters
    ----------
    net : Network
        The study's network.

    Returns
    -------
    list of (str, ndarray of int)
        ``(layer prefix, indices into the flat gradient)`` per stage and for the head.
    """
    keys = list(net.params)
    bounds = np.cumsum([0] + [net.params[k].size for k in keys])
    return [(prefix, np.concatenate([np.arange(bounds[i], bounds[i + 1])
                                     for i, k in enumerate(keys) if k.startswith(prefix + ".")]))
            for prefix, _ in net.layers()]


def draw_block(net: Network, x: np.ndarray, y: np.ndarray, name: str, options: dict[str, Any], count: int,
               rng: np.random.Generator) -> np.ndarray:
    """``count`` independent full-data gradient estimates ``(count, n_params)`` of one estimator.

    Path estimators get one sampled path of ``count * n`` rows and are called on each draw's n-row
    slice; direct estimators are called ``count`` times. All randomness comes from ``rng``.

    Parameters
    ----------
    net : Network
        The network at the checkpoint.
    x : ndarray, shape (n, ...)
        All data points.
    y : ndarray, shape (n,)
        Labels.
    name : str
        Estimator name.
    options : dict
        Its options.
    count : int
        Number of draws.
    rng : numpy.random.Generator
        Source of all noise.

    Returns
    -------
    ndarray, shape (count, n_params), float64
        One flat gradient (:func:`flat_gradient`) per row, each the mean over the ``n`` points.
    """
    kind, fn, opts = lookup(name, options)
    x, y = net.check_batch(x, y)
    n = x.shape[0]
    out = np.empty((count, sum(p.size for p in net.params.values())))
    weights = np.full(n, 1.0 / n, dtype=net.dtype)
    if kind == "path":
        path = net.sample(np.concatenate([x] * count), rng)
        for r in range(count):
            rows = slice(r * n, (r + 1) * n)
            sub = Path([StageSample(s.input[rows], s.pre[rows], s.state[rows]) for s in path.stages],
                       path.logits[rows], path.weights, path.layers)
            out[r] = flat_gradient(net, fn(net, sub, y, weights, **opts)[1])
    else:
        for r in range(count):
            out[r] = flat_gradient(net, fn(net, x, y, rng, **opts)[1])
    return out


def _block_task(net, x, y, name, options, count, seed_words, threads):
    """One block on an executor's worker, with ``threads`` Numba/BLAS threads (None: as they are)."""
    with limited_threads(threads):
        return draw_block(net, x, y, name, options, count, np.random.default_rng(seed_words))


def draw_gradients(net: Network, x: np.ndarray, y: np.ndarray, name: str, options: dict[str, Any], draws: int,
                   seed: int | Sequence[int], chunk: int = 500, executor: Executor | None = None,
                   threads: int | None = None, progress: bool = True, desc: str | None = None) -> np.ndarray:
    """``draws`` independent full-data gradient estimates ``(draws, n_params)`` of one estimator.

    The draws are cut into blocks of ``chunk`` (the last may be shorter); block ``b`` is
    :func:`draw_block` with the generator ``default_rng([*seed, b])``. The result depends only on
    ``seed`` and ``chunk``, not on where or in which order the blocks run: with an ``executor``
    (any :class:`concurrent.futures.Executor`) the blocks run there in parallel and the output is
    identical to the serial run (``executor=None``, in this process).

    Parameters
    ----------
    net, x, y, name, options
        As in :func:`draw_block`.
    draws : int
        Total number of draws.
    seed : int or sequence of int
        Entropy of the blocks' generators (the study uses ``[seed, epoch, method index]``).
    chunk : int >= 1
        Draws per block: one batched forward pass of ``chunk * n`` rows, and the unit of distribution.
    executor : concurrent.futures.Executor, optional
        Where the blocks run (None: serially here).
    threads : int, optional
        Numba/BLAS threads per block on the executor's workers.
    progress : bool
        Show a progress bar.
    desc : str, optional
        Its label (default ``name``).

    Returns
    -------
    ndarray, shape (draws, n_params), float64
        The blocks concatenated in block order.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected an integer >= 1, got {chunk!r}")
    seed = [int(s) for s in np.atleast_1d(seed)]
    sizes = [min(chunk, draws - start) for start in range(0, draws, chunk)]
    bar = progress_bar(total=draws, desc=desc or name, enabled=progress)
    if executor is None:
        blocks = []
        for b, count in enumerate(sizes):
            blocks.append(draw_block(net, x, y, name, options, count, np.random.default_rng(seed + [b])))
            bar.update(count)
    else:
        draw_block(net, x, y, name, options, 1, np.random.default_rng(0))  # compile here once, not per worker
        futures = [executor.submit(_block_task, net, x, y, name, options, count, seed + [b], threads)
                   for b, count in enumerate(sizes)]
        for fut in as_completed(futures):
            bar.update(len(fut.result()))
        blocks = [fut.result() for fut in futures]
    bar.close()
    return np.concatenate(blocks)


# ------------------------------------------------------------------------------------ metrics
def accuracy_metrics(draws: npt.ArrayLike, g_true: npt.ArrayLike, groups: Sequence[tuple[str, np.ndarray]],
                     ms: Iterable[int]) -> list[dict[str, Any]]:
    """Relative RMSE and cosine of M-sample averages, per layer.

    Parameters
    ----------
    draws : (D, P) independent single-draw gradient estimates
    g_true : (P,) exact gradient
    groups : [(layer label, index array)]
    ms : iterable of M (each <= D)

    Returns
    -------
    list of dicts with keys ``layer, M, groups, rel_rmse, cos_mean, cos_q15, cos_q85``.
    ``rel_rmse = sqrt(mean_groups ||g_M - g||^2 / ||g||^2)``; a zero group mean has cosine 0.
    """
    draws, g_true = np.asarray(draws, dtype=np.float64), np.asarray(g_true, dtype=np.float64)
    rows = []
    for m in ms:
        n_groups = draws.shape[0] // m
        if n_groups < 1:
            raise ValueError(f"M: {m} exceeds the number of draws {draws.shape[0]}")
        means = draws[:n_groups * m].reshape(n_groups, m, -1).mean(axis=1)
        for label, idx in groups:
            g, e = g_true[idx], means[:, idx]
            g_norm = np.linalg.norm(g)
            err2 = np.sum((e - g) ** 2, axis=1)
            e_norm = np.linalg.norm(e, axis=1)
            denom = e_norm * g_norm
            cos = np.divide(e @ g, denom, out=np.zeros(n_groups), where=denom > 0)
            rows.append({"layer": label, "M": m, "groups": n_groups,
                         "rel_rmse": float(np.sqrt(err2.mean()) / g_norm) if g_norm > 0 else float("nan"),
                         "cos_mean": float(cos.mean()), "cos_q15": float(np.quantile(cos, 0.15)),
                         "cos_q85": float(np.quantile(cos, 0.85))})
    return rows


# ------------------------------------------------------------------------------------ outputs
def layer_title(label: str, n_stages: int) -> str:
    """Panel and table title of a layer, in the paper's numbering (``W1, b1`` is the first stage).

    Parameters
    ----------
    label : str
        ``"stages.<k>"`` or ``"head"`` (:func:`layer_groups`).
    n_stages : int
        Number of binary stages.

    Returns
    -------
    str
        E.g. ``"layer 0: W1, b1"``, ``"layer 3: head (V, c)"``.
    """
    if label == "head":
        return f"layer {n_stages}: head (V, c)"
    k = int(label.split(".")[1])
    last = " — last binary" if k == n_stages - 1 else ""
    return f"layer {k}: W{k + 1}, b{k + 1}{last}"


def plot_checkpoint(path: str | os.PathLike[str], epoch: int, results: dict[str, list[dict[str, Any]]],
                    layers: Sequence[str], n_stages: int, dpi: int = 80) -> None:
    """One figure: top row relative RMSE (log-log), bottom row cosine (mean and 15-85 % band).

    One column per layer, one line per estimator; written atomically as a palette PNG.

    Parameters
    ----------
    path : str or os.PathLike
        The PNG file.
    epoch : int
        Checkpoint epoch (in the title).
    results : dict str -> list of dict
        Estimator label -> rows of :func:`accuracy_metrics`.
    layers : sequence of str
        Layer labels, one panel column each.
    n_stages : int
        Number of binary stages (for :func:`layer_title`).
    dpi : int
        Resolution.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(layers), figsize=(3.6 * len(layers), 6.4), sharex=True, squeeze=False)
    colors = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]  # a ListedColormap
    for i, (label, rows) in enumerate(results.items()):
        style = dict(color=colors[i % 10], lw=2.2 if label == "psa" else 1.3, label=label)
        for j, layer in enumerate(layers):
            r = [row for row in rows if row["layer"] == layer]
            m = [row["M"] for row in r]
            axes[0, j].loglog(m, [row["rel_rmse"] for row in r], **style)
            axes[1, j].semilogx(m, [row["cos_mean"] for row in r], **style)
            axes[1, j].fill_between(m, [row["cos_q15"] for row in r], [row["cos_q85"] for row in r],
                                    color=style["color"], alpha=0.12, lw=0)
    for j, layer in enumerate(layers):
        axes[0, j].set_title(layer_title(layer, n_stages), fontsize=9)
        axes[0, j].grid(True, which="major", alpha=0.3)
        axes[1, j].grid(True, alpha=0.3)
        axes[1, j].set_ylim(-1.05, 1.05)
        axes[1, j].set_xlabel("M (averaged samples)")
    axes[0, 0].set_ylabel("relative RMSE")
    axes[1, 0].set_ylabel("cosine to exact gradient")
    axes[0, -1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Gradient accuracy, 2-5-5-5 SBN on the 2-D toy set, epoch {epoch}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write(path, lambda f: _save_small_png(buf, f))


def _save_small_png(buf, f):
    """Re-encode a PNG with a 256-colour adaptive palette (about 3x smaller, visually identical) into the
    binary file ``f``."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        f.write(buf.getvalue())
        return
    buf.seek(0)
    with Image.open(buf) as img:
        img.convert("RGB").quantize(colors=256).save(f, format="PNG", optimize=True)


CSV_FIELDS = ("epoch", "method", "layer", "M", "groups", "rel_rmse", "cos_mean", "cos_q15", "cos_q85")


def write_csv(path: str | os.PathLike[str], study: dict[str, Any]) -> None:
    """Write every metric row of ``study`` as CSV, columns :data:`CSV_FIELDS`.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file (written atomically).
    study : dict
        As returned by :func:`run_study`.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for epoch, ck in study["checkpoints"].items():
        for label, rows in ck["metrics"].items():
            for row in rows:
                writer.writerow({"epoch": epoch, "method": label, **{k: row[k] for k in CSV_FIELDS[2:]}})
    atomic_write_text(path, buf.getvalue())


def markdown_tables(study: dict[str, Any]) -> str:
    """Markdown: per checkpoint, relative RMSE and cosine at M = 1 / 10 / 100 per layer and method.

    Parameters
    ----------
    study : dict
        As returned by :func:`run_study`.

    Returns
    -------
    str
        The document, ending with a newline.
    """
    cfg = study["config"]
    lines = ["# Gradient accuracy on the 2-D toy set", "",
             f"Network 2-5-5-5, logistic noise, +-1 states, 1-logit head; {cfg['n_points']} points; "
             f"trained with {cfg['train_method']} (SGD lr {cfg['lr']}, momentum {cfg['momentum']}, batch "
             f"{cfg['batch_size']}); {cfg['draws']} draws per estimator; seed {cfg['seed']}.",
             "Cells: value at M = " + " / ".join(str(m) for m in TABLE_M) + " averaged samples.", ""]
    for epoch, ck in study["checkpoints"].items():
        layers = ck["layers"]
        head = "| method | " + " | ".join(layer_title(la, ck["n_stages"]) for la in layers) + " | ms/draw |"
        sep = "|---" * (len(layers) + 2) + "|"
        lines += [f"## Epoch {epoch}", "",
                  f"Exact expected training loss {ck['loss']:.4f}; 20-sample ensemble training accuracy "
                  f"{ck['accuracy']:.3f}.", ""]
        for metric, title in (("rel_rmse", "Relative RMSE"), ("cos_mean", "Mean cosine similarity")):
            lines += [f"{title}:", "", head, sep]
            for label, rows in ck["metrics"].items():
                cells = []
                for layer in layers:
                    vals = {r["M"]: r[metric] for r in rows if r["layer"] == layer}
                    cells.append(" / ".join(f"{vals[m]:.3g}" if m in vals else "-" for m in TABLE_M))
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {ck['ms_per_draw'][label]:.3f} |")
            lines.append("")
    lines.append(f"Training to epoch {max(study['checkpoints'])} took {study['train_seconds']:.0f} s; "
                 f"the whole study {study['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- study
def run_study(out: str | os.PathLike[str], epochs: Sequence[int] = DEFAULT_EPOCHS, draws: int = 20000,
              methods: Sequence[str] = DEFAULT_METHODS, seed: int = 1, n_points: int = 200, lr: float = 0.03,
              momentum: float = 0.9, batch_size: int = 10, train_method: str = "reinforce", chunk: int = 500,
              progress: bool = True, dpi: int = 80, backend: str = "reference", executor: Executor | None = None,
              threads: int | None = None, plots: bool = True) -> dict[str, Any]:
    """Run the whole study and write its outputs to ``out``; returns the results as a dict.

    The training runs here; the draws of every estimator go to ``executor`` (any
    :class:`concurrent.futures.Executor`, with ``threads`` Numba/BLAS threads per block) when given, with
    output identical to ``executor=None`` (see :func:`draw_gradients`); only the ms/draw timings differ.

    Parameters
    ----------
    out : str or os.PathLike
        Output directory (created).
    epochs : sequence of int
        Checkpoints (0 = initialization).
    draws : int
        Single-draw estimates per estimator and checkpoint.
    methods : sequence of str
        Estimators as ``name`` or ``name:key=value,...`` (:func:`parse_method`).
    seed : int
        Seed of the initialization, the training and the draws.
    n_points : int
        Size of the toy set (:func:`sbnnumba.datasets.toy2d`).
    lr, momentum, batch_size, train_method
        Training to the checkpoints (:func:`train_checkpoints`).
    chunk : int
        Draws per block (:func:`draw_gradients`).
    progress : bool
        Show progress bars.
    dpi : int
        Resolution of the figures.
    backend : str
        Backend of the network.
    executor : concurrent.futures.Executor, optional
        Where the draw blocks run.
    threads : int, optional
        Numba/BLAS threads per block on the executor's workers.
    plots : bool
        ``False`` skips the figures (seconds each on a loaded machine).

    Returns
    -------
    dict
        ``"config"`` (the arguments), ``"checkpoints"`` (epoch -> ``loss``, ``accuracy``, ``layers``,
        ``n_stages``, ``metrics`` label -> rows of :func:`accuracy_metrics`, ``ms_per_draw``, ``exact``
        flat gradient), ``"seconds"`` and ``"train_seconds"``.

    Raises
    ------
    ValueError
        For ``draws < 1``, no or negative epochs, or an invalid method.
    """
    start = time.perf_counter()
    if draws < 1:
        raise ValueError(f"draws: expected a positive integer, got {draws!r}")
    if not epochs or min(epochs) < 0:
        raise ValueError(f"epochs: expected non-negative epoch numbers, got {epochs!r}")
    parsed = [parse_method(m) for m in methods]
    out = FsPath(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y = toy2d(n_points)
    net = make_network(x, rng, backend=backend)
    snaps = train_checkpoints(net, x, y, epochs, rng, method=train_method, lr=lr, momentum=momentum,
                              batch_size=batch_size, progress=progress)
    train_seconds = time.perf_counter() - start
    ms = m_values(draws)
    groups = layer_groups(net)
    study: dict[str, Any] = {"config": dict(epochs=sorted(set(epochs)), draws=draws, methods=list(methods), seed=seed,
                            n_points=n_points, lr=lr, momentum=momentum, batch_size=batch_size,
                            train_method=train_method, backend=backend),
             "checkpoints": {}}
    for epoch in sorted(snaps):
        for k, p in net.params.items():
            p[...] = snaps[epoch][k]
        arrays: dict[str, Any] = snaps[epoch]
        atomic_write(out / f"checkpoint_epoch{epoch}.npz", lambda f: np.savez(f, **arrays))
        loss, g = estimate("exact", net, x, y)
        g_true = flat_gradient(net, g)
        ck: dict[str, Any] = {"loss": loss, "layers": [la for la, _ in groups], "n_stages": len(net.stages),
              "accuracy": float(np.mean(net.predict(x, samples=20, rng=np.random.default_rng([seed, epoch])) == y)),
              "metrics": {}, "ms_per_draw": {}, "exact": g_true}
        for i, (label, name, options) in enumerate(parsed):
            t0 = time.perf_counter()
            d = draw_gradients(net, x, y, name, options, draws, [seed, epoch, i], chunk=chunk, executor=executor,
                               threads=threads, progress=progress, desc=f"epoch {epoch}: {label}")
            ck["ms_per_draw"][label] = 1e3 * (time.perf_counter() - t0) / draws
            ck["metrics"][label] = accuracy_metrics(d, g_true, groups, ms)
        study["checkpoints"][epoch] = ck
        if plots:
            plot_checkpoint(out / f"gradient_accuracy_epoch{epoch}.png", epoch, ck["metrics"], ck["layers"],
                            ck["n_stages"], dpi=dpi)
    study["seconds"] = time.perf_counter() - start
    study["train_seconds"] = train_seconds
    write_csv(out / "gradient_accuracy.csv", study)
    text = markdown_tables(study)
    atomic_write_text(out / "gradient_accuracy.md", text)
    return study


def main(argv: Sequence[str] | None = None, prog: str = "python -m sbnnumba.gradstudy") -> int:
    """Command line: ``python -m sbnnumba.gradstudy --out DIR [--epochs 1 100 2000] [--draws 20000] ...``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).
    prog : str
        The command named in usage and error messages (``python -m sbnnumba gradcheck`` from the CLI).

    Returns
    -------
    int
        Exit status 0 (argument errors exit through argparse with status 2).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="Gradient-accuracy study of the PSA paper on the 2-D toy set (psa.md 5.1).")
    parser.add_argument("--out", default="gradient_accuracy", help="output directory (default: %(default)s)")
    parser.add_argument("--epochs", type=int, nargs="+", default=list(DEFAULT_EPOCHS),
                        help="checkpoints to study (0 = initialization; default: %(default)s)")
    parser.add_argument("--draws", type=int, default=20000, help="draws per estimator (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="estimators as name or name:key=value,... (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of init, training and draws (default: %(default)s)")
    parser.add_argument("--n-points", type=int, default=200, help="toy2d points (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.03, help="learning rate of the training (default: %(default)s)")
    parser.add_argument("--momentum", type=float, default=0.9,
                        help="SGD momentum of the training (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=10, help="training batch size (default: %(default)s)")
    parser.add_argument("--train-method", default="reinforce")
    parser.add_argument("--chunk", type=int, default=500,
                        help="draws sampled per batched forward pass (default: %(default)s)")
    parser.add_argument("--backend", default="reference", choices=backend_names(),
                        help="kernel backend of the PSA flip propagation (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="spread the draws over N local worker processes (default: all in this process)")
    parser.add_argument("--scheduler", default=None,
                        help="spread the draws over a dask.distributed cluster, tcp://HOST:8786")
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws: expected a positive integer, got {args.draws}")
    if min(args.epochs) < 0:
        parser.error(f"--epochs: expected non-negative epoch numbers, got {args.epochs}")
    for spec in args.methods:
        try:
            parse_method(spec)
        except ValueError as exc:
            parser.error(f"--methods: {exc}")
    from .sweep.cli import open_executor

    try:
        executor, threads, close = open_executor(args.workers, args.scheduler)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        study = run_study(args.out, epochs=args.epochs, draws=args.draws, methods=args.methods, seed=args.seed,
                          n_points=args.n_points, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size,
                          train_method=args.train_method, chunk=args.chunk, progress=not args.quiet, dpi=args.dpi,
                          backend=args.backend, executor=executor, threads=threads, plots=not args.no_plots)
    finally:
        close()
    for epoch, ck in study["checkpoints"].items():
        print(f"epoch {epoch}: exact loss {ck['loss']:.4f}; relative RMSE at M=1 per layer:")
        for label, rows in ck["metrics"].items():
            vals = "  ".join(f"{r['rel_rmse']:.3g}" for r in rows if r["M"] == 1)
            print(f"  {label:24s} {vals}")
    print(f"outputs in {args.out} ({study['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
