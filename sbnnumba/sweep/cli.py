"""``python -m sbnnumba sweep``: a grid of training runs on local workers or a Dask cluster.

Example::

    python -m sbnnumba sweep --grid "estimator=psa,st lr=1e-3,3e-3 seed=0,1,2" --out sweeps/lr
    python -m sbnnumba sweep --grid "..." --scheduler tcp://HOST:8786 --out /shared/sweeps/lr

Options shared by every run go in ``--set "name=value ..."`` (same names and value syntax as the grid,
one value each); the defaults are those of ``train``: the 784-256-256-10 MLP, 3 epochs, ``--data auto``.
``--scheduler`` connects to a running ``dask.distributed`` scheduler (``pip install sbnnumba[dask]``) and
runs there; this is the only place the package imports ``distributed``, and only then. Exit status: 0
when every run finished, 1 when some failed or are incomplete (rerun the same command to resume them),
2 for a usage error.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import Executor
from typing import Callable, Sequence

from . import run
from .executors import LocalPool, plan_workers, usable_cores
from .grid import expand, format_value, parse_grid

PROG = "python -m sbnnumba sweep"
#: The ``train`` command's defaults (MLP 784-256-256-10, 3 epochs, full data if installed else the subset).
DEFAULT_BASE = {"data": "auto", "epochs": 3}
DEFAULT_MLP_HIDDEN = [256, 256]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m sbnnumba sweep`` (``--grid``, ``--out``, ``--set``, ``--workers``,
    ``--threads``, ``--scheduler``, ``--seed``, ``--no-plots``, ``--quiet``).

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(prog=PROG, description="A grid of training runs on local workers or a Dask "
                                     "cluster (docs/sweeps.md); each run in its own directory under --out.")
    parser.add_argument("--grid", required=True,
                        help="axes 'name=v1,v2 name=...' (fit, architecture or data options; seed = replicate)")
    parser.add_argument("--out", required=True, help="sweep directory (a rerun skips finished runs, resumes others)")
    parser.add_argument("--set", default="", dest="base",
                        help="options shared by every run, 'name=value ...' (e.g. 'hidden=64x64 epochs=5')")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"local worker processes (default: the cores, {usable_cores()}, at most one per run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba/BLAS threads per run (default: cores // workers locally, the cluster's setting "
                             "with --scheduler)")
    parser.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler, tcp://HOST:8786")
    parser.add_argument("--seed", type=int, default=0, help="sweep seed (each run's seeds derive from it and its key)")
    parser.add_argument("--no-plots", action="store_true", help="skip final_accuracy.png and learning_curves.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _configs(args):
    base = {}
    for name, values in (parse_grid(args.base) if args.base.strip() else {}).items():
        if len(values) != 1:
            raise ValueError(f"--set: expected one value per name, got {name}={','.join(map(format_value, values))}")
        base[name] = values[0]
    base = {**DEFAULT_BASE, **base}
    if base.get("arch", "mlp") == "mlp":  # the train command's default width, not the architecture's 1024
        base.setdefault("hidden", DEFAULT_MLP_HIDDEN)
    return expand(parse_grid(args.grid), base)


def open_executor(workers: int | None = None, scheduler: str | None = None
                  ) -> tuple[Executor | None, int | None, Callable[[], object]]:
    """The executor of a command's ``--workers N`` / ``--scheduler ADDR`` options.

    Parameters
    ----------
    workers : int, optional
        Local worker processes (:func:`~sbnnumba.sweep.executors.plan_workers` checks and sizes them).
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler, ``tcp://HOST:8786``.

    Returns
    -------
    (executor, threads, close)
        ``scheduler``: a ``dask.distributed`` client's executor (threads None: the cluster's setting);
        ``workers``: a :class:`~sbnnumba.sweep.executors.LocalPool` with ``cores // workers`` threads per
        task; neither: ``(None, None, no-op)``. ``close()`` releases it.

    Raises
    ------
    ValueError
        Both options given, ``dask.distributed`` not installed, or an invalid worker count.
    """
    if scheduler is not None:
        if workers is not None:
            raise ValueError("--workers: size the Dask cluster instead when --scheduler is given")
        try:
            from distributed import Client
        except ImportError:
            raise ValueError("--scheduler: needs dask.distributed (pip install 'sbnnumba[dask]')") from None
        client = Client(scheduler)
        return client.get_executor(), None, client.close
    if workers is None:
        return None, None, lambda: None
    workers, threads = plan_workers(workers)
    pool = LocalPool(workers)
    return pool, threads, pool.shutdown


def _report(result):
    print(f"{'status':10s} {'epochs':>7s} {'test ens.':>9s} {'seconds':>8s}  key")
    for r in result.rows:
        acc = f"{100 * r['test_eacc']:.2f}%" if isinstance(r.get("test_eacc"), float) else "-"
        secs = f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), float) else "-"
        print(f"{r['status']:10s} {r['epochs_done']:>3d}/{r['epochs']:<3d} {acc:>9s} {secs:>8s}  {r['key']}"
              + (f"\n{'':10s} error: {r['error']}" if r.get("error") else ""))
    print(f"wrote {', '.join(result.files.values())} ({result.seconds:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command (see the module docstring).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after ``sweep`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 when every run finished, 1 when some failed or are incomplete, 2 for a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else int(exc.code)
    close = None
    try:
        configs = _configs(args)
        # the local pool is run()'s own (it plans workers x threads); only a cluster is opened here
        executor, _, close = open_executor(None, args.scheduler) if args.scheduler else (None, None, None)
        if executor is not None and args.workers is not None:
            raise ValueError("--workers: size the Dask cluster instead when --scheduler is given")
        result = run(configs, executor, args.out, seed=args.seed, workers=args.workers, threads=args.threads,
                     progress=not args.quiet, plots=not args.no_plots)
    except (ValueError, TypeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if close is not None:
            close()
    _report(result)
    bad = result.keys("failed") + result.keys("incomplete")
    if bad:
        print(f"{len(bad)} run(s) failed or incomplete; rerun the same command to resume them", file=sys.stderr)
    return 1 if bad else 0
