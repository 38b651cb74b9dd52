"""Figures of training runs: loss and accuracy curves, accuracy vs number of ensemble samples.

All figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no global
backend switch, no display needed) and saved as PNG **atomically**: the image is written to a
temporary file in the target directory and moved into place with ``os.replace``, so a reader never
sees a half-written file.

A *history* is a list of per-epoch dicts as written by :func:`sbnnumba.training.fit` (keys such as
``"epoch"``, ``"train_loss"``, ``"val_loss"``, ``"train_acc1"``, ``"val_acc1"``, ``"val_eacc"``,
``"val_det_acc"``, ``"val_entropy"``, ``"val_entropy.0"``, ...). Every plotting function accepts
either one history or a mapping ``label -> history`` to compare runs (e.g. estimators) in one figure;
missing keys or non-finite values are skipped.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from .fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: One run's per-epoch rows, or several runs by label.
History = Union[Sequence[Mapping[str, Any]], Mapping[str, Sequence[Mapping[str, Any]]]]
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["save_figure", "plot_loss", "plot_accuracy", "plot_entropy", "plot_training_curves", "plot_ensemble_curve"]

#: key -> (legend text, line style) of the loss curves.
LOSS_KEYS = {"train_loss": ("train (running)", "-"), "val_loss": ("validation", "--")}
#: key -> (legend text, line style) of the accuracy curves.
ACCURACY_KEYS = {
    "train_acc1": ("train, 1 sample", "-"),
    "val_acc1": ("val, 1 sample", "--"),
    "val_eacc": ("val, ensemble", "-."),
    "val_det_acc": ("val, deterministic", ":"),
}


def _new_figure(figsize=(6.4, 4.2)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike, dpi: int = 100) -> str:
    """Save ``fig`` as PNG at ``path`` atomically (temp file in the same directory + ``os.replace``).

    Creates the parent directory if needed.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure (with a canvas; the plotting functions here use Agg).
    path : str or os.PathLike
        Where the PNG goes.
    dpi : int
        Resolution in dots per inch.

    Returns
    -------
    str
        ``path`` as a string.
    """
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def _as_runs(history):
    """One history (list of dicts) or a mapping label -> history  ->  dict label -> history."""
    if isinstance(history, Mapping):
        return {str(k): list(v) for k, v in history.items()}
    return {"": list(history)}


def _series(hist, key):
    xs, ys = [], []
    for i, row in enumerate(hist):
        v = row.get(key)
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            xs.append(float(row.get("epoch", i + 1)))
            ys.append(v)
    return xs, ys


def _integer_epochs(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curves(ax, runs, keys, positive=False):
    colors = [f"C{i % 10}" for i in range(len(runs))]
    drawn = 0
    for (label, hist), color in zip(runs.items(), colors):
        for key, (text, style) in keys.items():
            xs, ys = _series(hist, key)
            if positive:  # log scale: drop values <= 0
                keep = [i for i, b in enumerate(ys) if b > 0]
                xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
            if not xs:
                continue
            name = f"{label}: {text}" if label else text
            multi_color = len(runs) > 1
            ax.plot(xs, ys, linestyle=style, marker="o" if len(xs) < 30 else None, markersize=3,
                    color=color if multi_color else None, label=name)
            drawn += 1
    return drawn


def plot_loss(history: History, path: PathLike, title: str = "Loss",
              keys: Mapping[str, tuple[str, str]] | None = None) -> str:
    """Training and validation loss (log-y) vs epochs, saved as PNG at ``path``.

    Parameters
    ----------
    history : list of dict, or mapping label -> list of dict
        Per-epoch rows of one run, or of several runs by legend label.
    path : str or os.PathLike
        Where the PNG goes.
    title : str
        Figure title.
    keys : dict, optional
        ``key -> (legend text, line style)``; default :data:`LOSS_KEYS`.

    Returns
    -------
    str
        ``path`` as a string.
    """
    runs = _as_runs(history)
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = _curves(ax, runs, keys or LOSS_KEYS, positive=True)
    ax.set_yscale("log")
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("expected loss (NLL)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_accuracy(history: History, path: PathLike, title: str = "Accuracy",
                  keys: Mapping[str, tuple[str, str]] | None = None) -> str:
    """Accuracy curves (train / validation, single sample, ensemble, deterministic) vs epochs.

    Accuracies are fractions in [0, 1], plotted in percent.

    Parameters
    ----------
    history : list of dict, or mapping label -> list of dict
        Per-epoch rows of one run, or of several runs by legend label.
    path : str or os.PathLike
        Where the PNG goes.
    title : str
        Figure title.
    keys : dict, optional
        ``key -> (legend text, line style)``; default :data:`ACCURACY_KEYS`.

    Returns
    -------
    str
        ``path`` as a string.
    """
    runs = _as_runs(history)
    scaled = {label: [{k: (100 * v if isinstance(v, (int, float)) and k != "epoch" else v)
                       for k, v in row.items()} for row in hist] for label, hist in runs.items()}
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = _curves(ax, scaled, keys or ACCURACY_KEYS)
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def _stage_entropy_keys(runs, prefix="val"):
    """``{prefix}_entropy.<k>`` keys present in any row, sorted by stage index."""
    found = set()
    head = f"{prefix}_entropy."
    for hist in runs.values():
        for row in hist:
            for key in row:
                if key.startswith(head) and key[len(head):].isdigit():
                    found.add(int(key[len(head):]))
    return [f"{head}{k}" for k in sorted(found)]


def plot_entropy(history: History, path: PathLike, title: str = "Unit entropy",
                 keys: Mapping[str, tuple[str, str]] | None = None, prefix: str = "val") -> str:
    """Unit entropy (bits per binary unit, see :func:`sbnnumba.training.evaluate`) vs epochs.

    Parameters
    ----------
    history : list of dict, or mapping label -> list of dict
        One run: the mean over all units (``<prefix>_entropy``, thick black) and one line per stage
        (``<prefix>_entropy.<k>``). Several runs: the mean over all units of each run.
    path : str or os.PathLike
        Where the PNG goes.
    title : str
        Figure title.
    keys : dict, optional
        ``key -> (legend text, line style)`` overriding the default choice above.
    prefix : str
        Which evaluation's entropy (``"val"``).

    Returns
    -------
    str
        ``path`` as a string.
    """
    runs = _as_runs(history)
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    if keys is None and len(runs) == 1:
        hist = next(iter(runs.values()))
        label = next(iter(runs))
        drawn = 0
        for i, key in enumerate(_stage_entropy_keys(runs, prefix)):
            xs, ys = _series(hist, key)
            if xs:
                text = f"stage {key.rsplit('.', 1)[1]}"
                ax.plot(xs, ys, color=f"C{i % 10}", marker="o" if len(xs) < 30 else None, markersize=3,
                        label=f"{label}: {text}" if label else text)
                drawn += 1
        xs, ys = _series(hist, f"{prefix}_entropy")
        if xs:
            ax.plot(xs, ys, color="k", linewidth=2.2, linestyle="--",
                    label=f"{label}: all units" if label else "all units")
            drawn += 1
    else:
        drawn = _curves(ax, runs, keys or {f"{prefix}_entropy": ("all units", "-")})
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("entropy per unit (bits)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_training_curves(history: History, out_dir: PathLike, prefix: str = "",
                         title: str = "") -> tuple[str, str, str]:
    """Write ``<prefix>loss.png``, ``<prefix>accuracy.png`` and ``<prefix>entropy.png`` into ``out_dir``.

    The entropy figure shows the unit entropy per stage (:func:`plot_entropy`): on the validation images,
    or on the training images evaluated after each epoch when a run has no validation part.

    Parameters
    ----------
    history : list of dict, or mapping label -> list of dict
        Per-epoch rows of one run, or of several runs by legend label.
    out_dir : str or os.PathLike
        Directory of the three files (created if needed).
    prefix : str
        Prepended to the file names.
    title : str
        Prepended to each figure's title.

    Returns
    -------
    tuple of str
        The paths of the loss, accuracy and entropy figures.
    """
    out_dir = os.fspath(out_dir)
    sep = " - " if title else ""
    which = "val" if any("val_entropy" in r for h in _as_runs(history).values() for r in h) else "train"
    return (plot_loss(history, os.path.join(out_dir, f"{prefix}loss.png"), title=f"{title}{sep}loss"),
            plot_accuracy(history, os.path.join(out_dir, f"{prefix}accuracy.png"),
                          title=f"{title}{sep}accuracy"),
            plot_entropy(history, os.path.join(out_dir, f"{prefix}entropy.png"), prefix=which,
                         title=f"{title}{sep}unit entropy" + ("" if which == "val" else " (training images)")))


def plot_ensemble_curve(curves: Sequence[float] | Mapping[str, Sequence[float]], path: PathLike,
                        title: str = "Test accuracy vs number of samples") -> str:
    """Ensemble accuracy vs number of averaged samples (log-2 x axis).

    Parameters
    ----------
    curves : sequence of float, or mapping label -> sequence of float
        ``curve[k - 1]`` = accuracy (fraction) of the ensemble of the first ``k`` samples.
    path : str or os.PathLike
        Where the PNG goes.
    title : str
        Figure title.

    Returns
    -------
    str
        ``path`` as a string.
    """
    if not isinstance(curves, Mapping):
        curves = {"": curves}
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for label, curve in curves.items():
        ys = [100 * float(v) for v in curve]
        if not ys:
            continue
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) <= 64 else None, markersize=3,
                label=str(label) or None)
        drawn += bool(label)
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    n_max = max((len(c) for c in curves.values()), default=1)
    ax.xaxis.set_major_locator(FixedLocator([k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= max(n_max, 1)]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("number of samples in the ensemble")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    return save_figure(fig, path)
