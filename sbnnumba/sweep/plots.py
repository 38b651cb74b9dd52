"""Figures of a sweep: final accuracy per configuration with the spread over seeds, learning curves.

Configurations that differ only in ``seed`` (the replicate label) form one *group*; a group's label is
its values of the options that vary across the sweep (``estimator=psa, lr=0.001``). Both figures are
drawn with matplotlib's object API and saved atomically (:func:`sbnnumba.plots.save_figure`).
"""
from __future__ import annotations

import math
from typing import Any

from ..plots import _integer_epochs, _new_figure, save_figure
from .grid import format_value
from .table import varying_names

__all__ = ["groups", "plot_final_accuracy", "plot_learning_curves"]


def groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{group label: [row, ...]}`` in first-seen order: rows equal in every varying option but ``seed``.

    Parameters
    ----------
    rows : list of dict
        Table rows (:mod:`sbnnumba.sweep.table`), each with ``options``.

    Returns
    -------
    dict str -> list of dict
        Label (``name=value, ...`` of the varying options other than ``seed``, or ``"all"``) -> its rows.
    """
    names = [k for k in varying_names(rows) if k != "seed"]
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        label = ", ".join(f"{k}={format_value(row['options'].get(k))}" for k in names) or "all"
        out.setdefault(label, []).append(row)
    return out


def _value(row, metric):
    v = row.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def plot_final_accuracy(rows: list[dict[str, Any]], path: str, metric: str = "test_eacc",
                        title: str | None = None) -> str:
    """Dots: each finished run's ``metric`` (in %); bar: the group's mean; whiskers: min to max over seeds.

    Parameters
    ----------
    rows : list of dict
        Table rows (:mod:`sbnnumba.sweep.table`); rows without the metric are left out.
    path : str
        PNG file.
    metric : str
        A metric column, default the test ensemble accuracy.
    title : str, optional
        Figure title.

    Returns
    -------
    str
        ``path``.
    """
    grouped = {label: [v for v in (_value(r, metric) for r in members) if v is not None]
               for label, members in groups(rows).items()}
    grouped = {k: v for k, v in grouped.items() if v}
    fig = _new_figure(figsize=(6.4, 1.2 + 0.45 * max(1, len(grouped))))
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, values) in enumerate(grouped.items()):
        pct = [100 * v for v in values]
        mean = sum(pct) / len(pct)
        ax.barh(i, mean, color=f"C{i % 10}", alpha=0.35, height=0.6)
        ax.errorbar(mean, i, xerr=[[mean - min(pct)], [max(pct) - mean]], color="k", capsize=4, lw=1)
        ax.plot(pct, [i] * len(pct), "o", color=f"C{i % 10}", markersize=4)
        ax.text(mean, i + 0.32, f" {mean:.2f} % (n={len(pct)})", fontsize=7, va="center")
    ax.set_yticks(range(len(grouped)), list(grouped), fontsize=8)
    ax.invert_yaxis()
    if grouped:
        lo = min(min(v) for v in grouped.values())
        ax.set_xlim(max(0.0, 100 * lo - 5), min(100.0, 100 * max(max(v) for v in grouped.values()) + 3))
    ax.set_xlabel(f"{metric} (%): runs (dots), mean (bar), min-max over seeds")
    ax.set_title(title or "Final accuracy per configuration", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_learning_curves(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]], path: str,
                         metric: str = "val_eacc", title: str | None = None) -> str:
    """``metric`` against the epoch for every run: one colour per group, one line per seed.

    Parameters
    ----------
    rows : list of dict
        Table rows (for the grouping).
    histories : dict key -> list of dict
        Each run's per-epoch history (``history.json``).
    path : str
        PNG file.
    metric : str
        A history column, default the validation ensemble accuracy.
    title : str, optional
        Figure title.

    Returns
    -------
    str
        ``path``.
    """
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, members) in enumerate(groups(rows).items()):
        for j, row in enumerate(members):
            points = [(r["epoch"], 100 * r[metric]) for r in histories.get(row["key"], ())
                      if isinstance(r.get(metric), (int, float))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, "-o", color=f"C{i % 10}", markersize=3, lw=1.2, alpha=0.8,
                        label=label if j == 0 else None)
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or "Learning curves (one line per seed)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return save_figure(fig, path)
