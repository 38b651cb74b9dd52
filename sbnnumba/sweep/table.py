"""The results table of a sweep: one row per configuration, written as ``sweep.csv`` and ``sweep.json``.

Columns: ``key``, ``status`` (``finished``, ``incomplete``: stopped before its last epoch, e.g. its
worker died or the sweep was interrupted, ``failed``: raised an error), ``action`` (what this call did:
``trained``, ``resumed``, ``skipped`` (finished before), ``lost`` (the worker died), ``not run``,
``failed``), ``epochs_done``, ``epochs``, one column per option, the final training and validation
metrics (last epoch), the test metrics (``test_eacc``: ensemble accuracy with ``eval_samples``
samples), ``seconds``, the derived seeds, the run directory and the error message.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from ..fileio import atomic_write_text
from .grid import format_value

__all__ = ["TABLE_CSV", "TABLE_JSON", "HEAD_COLUMNS", "METRIC_COLUMNS", "TAIL_COLUMNS", "option_names",
           "varying_names", "write_table"]

TABLE_CSV = "sweep.csv"
TABLE_JSON = "sweep.json"
HEAD_COLUMNS = ("key", "status", "action", "epochs_done", "epochs")
METRIC_COLUMNS = ("train_loss", "val_loss", "val_acc1", "val_eacc", "val_det_acc", "test_loss", "test_acc1",
                  "test_eacc", "test_det_acc")
TAIL_COLUMNS = ("seconds", "init_seed", "fit_seed", "run_dir", "error")


def option_names(rows: list[dict[str, Any]]) -> list[str]:
    """Every option name of the rows' configurations, in first-seen order.

    Parameters
    ----------
    rows : list of dict
        Table rows, each with ``options``.

    Returns
    -------
    list of str
    """
    names = []
    for row in rows:
        names += [k for k in row["options"] if k not in names]
    return names


def varying_names(rows: list[dict[str, Any]]) -> list[str]:
    """Option names whose value is not the same in every row (the grid's axes).

    Values are compared by :func:`~sbnnumba.sweep.grid.format_value`; a name missing from a row counts as
    None there.

    Parameters
    ----------
    rows : list of dict
        Table rows, each with ``options``.

    Returns
    -------
    list of str
        In first-seen order.
    """
    names = option_names(rows)
    return [k for k in names if len({format_value(r["options"].get(k)) for r in rows}) > 1]


def _csv_text(rows):
    options = option_names(rows)
    columns = list(HEAD_COLUMNS) + [f"opt.{k}" for k in options] + list(METRIC_COLUMNS) + list(TAIL_COLUMNS)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        flat = {k: row.get(k) for k in columns}
        flat.update({f"opt.{k}": format_value(row["options"][k]) for k in options if k in row["options"]})
        writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    return buf.getvalue()


def write_table(out: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[str, str]:
    """Write ``sweep.csv`` (one line per row, options as ``opt.<name>`` columns) and ``sweep.json``
    (``{"meta": meta, "runs": rows}``) into ``out`` atomically.

    Parameters
    ----------
    out : str
        The sweep directory.
    rows : list of dict
        One row per run (key, status, epochs, options, metrics, seeds, ...).
    meta : dict
        The sweep's settings, stored in the JSON file.

    Returns
    -------
    tuple of str
        The paths of ``sweep.csv`` and ``sweep.json``.
    """
    p_csv = atomic_write_text(os.path.join(out, TABLE_CSV), _csv_text(rows))
    p_json = atomic_write_text(os.path.join(out, TABLE_JSON), json.dumps({"meta": meta, "runs": rows}, indent=1,
                                                                         default=str))
    return p_csv, p_json
