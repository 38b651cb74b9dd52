"""The per-epoch history of a run: ``history.csv``, ``history.json``, the training plots and the summary line.

A history is a list of dict rows, one per completed epoch: ``epoch``, ``steps``, ``lr``, ``train_loss``
(running mean over the epoch), ``train_*`` / ``val_*`` metrics of :func:`~sbnnumba.training.evaluate`
(``val_entropy`` and ``val_entropy.<k>`` in bits), and the seconds :data:`TIMING_KEYS`: ``epoch_time`` (the
epoch's steps), ``compile_time`` (the part of ``epoch_time`` that Numba spent compiling kernels: only on a cold
cache, :func:`sbnnumba.runtime.compile_timer`) and ``eval_time`` (the validation after it).
Every file is written atomically (:mod:`sbnnumba.fileio`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from typing import Any

from ..fileio import atomic_write
from ..runtime import compile_note
from .checkpoint import jsonable

#: The history entries that are wall-clock seconds (they differ between runs of the same trajectory).
TIMING_KEYS = ("epoch_time", "compile_time", "eval_time")
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"


def write_history(out: str | os.PathLike[str], history: list[dict[str, Any]],
                  config: dict[str, Any] | None = None) -> tuple[str, str]:
    """Write ``history.csv`` and ``history.json`` (with ``config``) into ``out``.

    The CSV has one column per key in order of first appearance (empty cells for missing or None values).

    Parameters
    ----------
    out : str or os.PathLike
        The run directory.
    history : list of dict
        One row per epoch.
    config : dict, optional
        The run's configuration, stored beside the history in the JSON file.

    Returns
    -------
    tuple of str
        The paths of ``history.csv`` and ``history.json``.
    """
    columns = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    p_csv = atomic_write(os.path.join(out, HISTORY_CSV), lambda f: f.write(buf.getvalue().encode()))
    doc = json.dumps(jsonable({"config": config, "history": history}), indent=1, sort_keys=False)
    p_json = atomic_write(os.path.join(out, HISTORY_JSON), lambda f: f.write(doc.encode()))
    return p_csv, p_json


def write_plots(history: list[dict[str, Any]], out: str | os.PathLike[str]) -> dict[str, str]:
    """``loss.png``, ``accuracy.png``, ``entropy.png`` into ``out``; a failure only warns (a broken plot must
    not end a long run).

    Parameters
    ----------
    history : list of dict
        One row per epoch.
    out : str or os.PathLike
        The run directory.

    Returns
    -------
    dict str -> str
        ``loss_png``, ``accuracy_png``, ``entropy_png`` -> path; empty when plotting failed.
    """
    try:
        from ..plots import plot_training_curves

        loss, accuracy, entropy = plot_training_curves(history, out)
    except Exception as exc:  # noqa: BLE001 - any plotting failure
        warnings.warn(f"could not write the training plots: {exc}", RuntimeWarning)
        return {}
    return {"loss_png": loss, "accuracy_png": accuracy, "entropy_png": entropy}


def summary_line(row: dict[str, Any], epochs: int, eval_samples: int) -> str:
    """One line per epoch: training loss, validation loss / accuracies / entropy (if any), seconds.

    Parameters
    ----------
    row : dict
        The epoch's history row.
    epochs : int
        Total epochs of the run (``epoch k/epochs``).
    eval_samples : int
        Samples of the ensemble accuracy (``ens<k>``).

    Returns
    -------
    str
    """
    parts = [f"epoch {row['epoch']}/{epochs}", f"train loss {row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts += [f"val loss {row['val_loss']:.4f}", f"acc1 {100 * row['val_acc1']:.2f}%",
                  f"ens{eval_samples} {100 * row['val_eacc']:.2f}%", f"det {100 * row['val_det_acc']:.2f}%",
                  f"H {row['val_entropy']:.3f} bit"]
    parts.append(f"{row['epoch_time']:.1f}s" + compile_note(row["compile_time"]))  # a cold Numba cache
    if "comm_time" in row:  # data-parallel runs: the reductions' share of the training time (incl. waiting)
        parts.append(f"communication {100 * row['comm_time'] / max(row['epoch_time'], 1e-9):.1f}%")
    return " | ".join(parts)
