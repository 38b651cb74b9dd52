"""Command line: ``python -m sbnnumba {train,evaluate,export,gradcheck,sweep} ...``.

``train``
    Train an SBN on Fashion-MNIST and write ``checkpoint.npz``, ``history.csv``, ``history.json``,
    ``loss.png``, ``accuracy.png``, ``entropy.png``, ``test_metrics.json`` and ``ensemble_accuracy.png``
    into ``--out``. ``--lr auto`` first chooses a constant learning rate for the method by the spec's
    search (:func:`sbnnumba.training.search_lr`: bounded minimization over ``log10(lr)`` in ``--lr-bounds``,
    at most ``--lr-trials`` trainings of ``--lr-trial-epochs`` epochs from the same init, scored by the
    mean running training loss), records the trials in ``lr_search.json`` and in the run's config
    (``metadata.lr_search`` of ``history.json`` and the checkpoint), then trains with it (``--lr-method grid``:
    a batched grid refinement whose rounds of trials run on ``--lr-workers N`` local processes); ``--resume``
    reuses the lr stored in the checkpoint instead of searching again, and takes every setting left out of the
    command line from it (:func:`checkpoint_settings`).
    The defaults (MLP 784-256-256-10, logistic noise, PSA, Adam lr 1e-3, batch 64, 3 epochs, data-dependent
    init, 10 % validation) train in 15-22 s on 2 CPU cores on the full Fashion-MNIST and in 4.5-10.4 s on the
    embedded subset (AMD EPYC and Intel Xeon; measured times and accuracies: ``docs/experiments/``).
    ``--distributed`` (under ``mpiexec -n N``): data-parallel training on N ranks, ``--batch-size`` being the
    global batch (:mod:`sbnnumba.distributed`, ``docs/cluster.md``); rank 0 prints and writes the files.
``evaluate CHECKPOINT``
    Test metrics of a checkpoint and the test accuracy vs number of ensemble samples (1..``--samples``),
    printed and saved as ``evaluate_ensemble_accuracy.png`` and ``evaluate_metrics.json`` (in ``--out``,
    default the checkpoint's folder: names that never overwrite the training run's results).
``export CHECKPOINT --format c --out DIR``
    Write a trained binary network as dependency-free C99 (:func:`sbnnumba.export.export_c`).
    ``CHECKPOINT`` is a packed network (:meth:`PackedNetwork.save`) or a training checkpoint, which
    is converted with :meth:`PackedNetwork.from_network` (``--input-quantization 1/255,8``: bit-plane
    first stage); normalization statistics of the deterministic mode missing from it are estimated on
    ``--calibration-size`` training images of ``--data``.
``gradcheck``
    The gradient-accuracy study (:mod:`sbnnumba.gradstudy`), all further arguments passed on.
``sweep``
    A grid of training runs on local workers or a Dask cluster (:mod:`sbnnumba.sweep.cli`), all further
    arguments passed on.

Every error (unknown name, invalid size, missing data directory, bad checkpoint, an operating-system error
such as an unwritable ``--out`` or a full disk, named with its path and cause) prints one line
``python -m sbnnumba <command>: error: ...`` naming the flag concerned and exits with status 2; a diverged
training exits with status 1, Ctrl-C with 130 and, for ``train``, SIGTERM with 143 (saying whether a
checkpoint was kept). Set ``SBNNUMBA_DEBUG=1`` to get the traceback instead. Every command that writes
checks its ``--out`` before any work; ``export`` and ``gradcheck`` refuse a non-empty
one that does not hold their own earlier output. ``train`` holds the lock of ``--out``
(:class:`sbnnumba.fileio.RunLock`) from before it loads the data: a second run on the same directory fails
at once, naming the process that holds it; a ``train`` that fails before writing anything removes the
directories it created.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from . import runtime
from .training.config import MOMENTUM_FIELDS, Check, Flag, Integer, Number, command_line_fields
from .training.config import Optional as OptionalCheck

PROG = "python -m sbnnumba"
DEFAULT_HIDDEN = "256,256"
DEFAULT_CHANNELS = "96,96,96,192,192,192,192,192"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Interrupted(Exception):
    """Ctrl-C (exit status 130) or SIGTERM (143) during ``train``: the message says whether a checkpoint was kept.

    Parameters
    ----------
    message : str
        What the interrupted run leaves (printed).
    status : int
        The exit status: 130 (SIGINT) or 143 (SIGTERM).
    """

    def __init__(self, message: str, status: int = 130):
        super().__init__(message)
        self.status = status


class _Terminated(KeyboardInterrupt):
    """SIGTERM during ``train``, raised where the signal arrives so that it unwinds like Ctrl-C (lock released,
    temporary files removed)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``<prog>: error: <message> (see --help)``; argparse's
    ``argument --flag: ...`` reads ``--flag: ...``, as the command's own messages do."""

    def error(self, message):
        message = re.sub(r"^argument (-[^:]*): ", r"\1: ", message)
        raise CLIError(f"{message} (see {self.prog} --help)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: ...)' only for real defaults not already described in the help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in text \
                or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _int_list(name, count=None):
    def parse(text):
        try:
            values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
        if count is not None and len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated integers, got {len(values)}")
        return values
    parse.__name__ = name
    return parse


def arg_type(check: Check, name: str | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` from a :class:`sbnnumba.training.config.Check`: the same checks and messages as the
    library's (``FitConfig``), reported as a usage error.

    Parameters
    ----------
    check : sbnnumba.training.config.Check
        Parses and checks one command-line value.
    name : str, optional
        What argparse calls the value in its messages (default: ``check.expected``).

    Returns
    -------
    callable
        ``parse(text) -> value``, raising ``argparse.ArgumentTypeError`` with the check's message.
    """
    def parse(text):
        try:
            return check.parse(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(_value_message(check, text, exc)) from None
    parse.__name__ = name or check.expected
    return parse


def _value_message(check, text, exc):
    """The command line's wording of a rejected value: what the flag accepts there (a name among its choices, the
    form of a number), without the library's ``name:`` prefix, ``None`` or Python objects."""
    if check.choices is not None:
        return f"expected one of {', '.join(check.choices)}; got {text!r}"
    if isinstance(check, OptionalCheck):  # None is not something the command line can pass
        try:
            check.inner.parse(text)
        except (TypeError, ValueError) as inner:
            exc = inner
    return re.sub(r"^[A-Za-z_]+: ", "", str(exc), count=1)


_POSITIVE_INT = arg_type(Integer(1), "positive integer")
_NONNEG_INT = arg_type(Integer(0), "non-negative integer")
_POSITIVE = Number(positive=True)


def _lr(text):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _POSITIVE.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None


_lr.__name__ = "learning rate"


def bn_gamma_arg(text: str) -> float | str:
    """``--bn-gamma``: a positive number or ``noise-std`` (shared with the bench scripts).

    Parameters
    ----------
    text : str
        The command-line value.

    Returns
    -------
    float or str
        The number, or ``"noise-std"``.

    Raises
    ------
    argparse.ArgumentTypeError
        For anything else.
    """
    if text.strip().lower() == "noise-std":
        return "noise-std"
    try:
        return _POSITIVE.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'noise-std', got {text!r}") from None


bn_gamma_arg.__name__ = "batch-norm gamma"


def _bounds(text):
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (log10 of the learning rate), got {text!r}") from None
    if len(values) != 2 or not all(np.isfinite(values)) or not values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"expected LO,HI with finite LO < HI (log10 of the learning rate), "
                                         f"got {text!r}")
    return values


_bounds.__name__ = "log10 bounds"


#: Help texts of FitConfig fields whose library wording names what only Python can pass.
_CLI_HELP = {"optimizer": "optimizer: adam or sgd (Nesterov momentum)"}


def _add_fit_options(parser):
    """The ``train`` options that are :class:`~sbnnumba.training.FitConfig` fields: flag, check, help text
    and default all come from the field (``dest`` is the field's name)."""
    for flag, f in command_line_fields():
        check, default = f.metadata["check"], f.metadata["cli_default"]
        text = _CLI_HELP.get(f.name, f.metadata["help"])
        if isinstance(check, Flag):  # --x sets True, --no-x sets False
            negated = flag.startswith("--no-")
            parser.add_argument(flag, dest=f.name, action="store_false" if negated else "store_true",
                                help=f"no {text}" if negated else text)
        else:
            parser.add_argument(flag, dest=f.name, type=arg_type(check, f.name), default=default, help=text,
                                choices=check.choices)


def build_parser(train_defaults: dict | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m sbnnumba`` with its ``train``, ``evaluate`` and ``export`` subcommands.

    ``gradcheck`` and ``sweep`` are listed but parsed by their own modules (:func:`main` hands them the
    remaining arguments). Usage errors raise :class:`CLIError` instead of exiting.

    Parameters
    ----------
    train_defaults : dict, optional
        ``train`` defaults that replace the built-in ones (``dest`` -> value): ``train --resume`` parses its
        arguments again with the settings of the run it continues (:func:`checkpoint_settings`).

    Returns
    -------
    argparse.ArgumentParser
    """
    from sbnnumba.architectures import ARCHITECTURES
    from sbnnumba.backends import backend_names
    from sbnnumba.noise import NOISES

    parser = _Parser(prog=PROG, description="Stochastic binary networks in NumPy + Numba.")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,export,gradcheck,sweep}",
                                parser_class=_Parser)
    sub.required = True

    tr = sub.add_parser("train", help="train an SBN on Fashion-MNIST",
                        description="Train an SBN on Fashion-MNIST. The defaults (3 epochs) train in 4.5-10.4 s on "
                                    "2 cores on the embedded subset (15-22 s on the full data set; AMD EPYC and "
                                    "Intel Xeon, run logs in docs/experiments/) and reach about 81 % test "
                                    "accuracy (85 % on the full data set).",
                        formatter_class=_Formatter)
    tr.add_argument("--data", default="auto",
                    help="'auto' (full Fashion-MNIST if found, else the embedded subset), 'embedded', or a "
                         "directory with the IDX files")
    tr.add_argument("--arch", default="mlp", choices=sorted(ARCHITECTURES), help="network architecture")
    tr.add_argument("--hidden", type=_int_list("hidden"), default=DEFAULT_HIDDEN,
                    help="mlp: comma-separated hidden widths")
    tr.add_argument("--channels", type=_int_list("channels", 8), default=DEFAULT_CHANNELS,
                    help="conv: the 8 comma-separated channel counts")
    tr.add_argument("--input-padding", type=_NONNEG_INT, default=0,
                    help="conv: zero padding of the first stage (2 on 28x28 images gives the paper's "
                         "32x32 map sizes)")
    tr.add_argument("--weights", default="real", choices=["real", "hidden", "bernoulli"],
                    help="Bernoulli (binary) weights: none, every stage but the first, or every stage "
                         "(the head stays real)")
    tr.add_argument("--weight-noise", default="logistic", choices=sorted(NOISES),
                    help="noise of the Bernoulli weights")
    tr.add_argument("--weight-grad", default="md", choices=["md", "latent"],
                    help="latent-weight rule: mirror descent (identity ST) or SGD on eta (2 p(eta) factor)")
    tr.add_argument("--normalize", action="store_true", help="batch normalization before every binary activation")
    tr.add_argument("--bn-gamma", type=bn_gamma_arg, default=1.0,
                    help="--normalize: starting gamma of the normalizations, or 'noise-std' for the activation "
                         "noise's standard deviation (the same signal-to-noise ratio for every noise)")
    tr.add_argument("--noise", default="logistic", choices=sorted(NOISES), help="noise of the binary units")
    _add_fit_options(tr)
    tr.add_argument("--lr", type=_lr, default=None,
                    help="learning rate, or 'auto' to search it for the method first (default: adam 1e-3, "
                         "sgd 0.01)")
    tr.add_argument("--lr-trials", type=_POSITIVE_INT, default=None,
                    help="--lr auto: most trial trainings (default 10)")
    tr.add_argument("--lr-trial-epochs", type=_POSITIVE_INT, default=None,
                    help="--lr auto: epochs per trial (default 5)")
    tr.add_argument("--lr-bounds", type=_bounds, default=None,
                    help="--lr auto: LO,HI of log10(lr) searched (default -6,0)")
    tr.add_argument("--lr-trial-subset", type=_POSITIVE_INT, default=None,
                    help="--lr auto: train the trials on N training images only (default: all)")
    tr.add_argument("--lr-method", choices=["bounded", "grid"], default=None,
                    help="--lr auto: 'bounded' (Brent, one trial at a time; default) or 'grid' (batched grid "
                         "refinement whose rounds of trials run in parallel with --lr-workers)")
    tr.add_argument("--lr-workers", type=_POSITIVE_INT, default=None,
                    help="--lr auto --lr-method grid: run each round's trials on N local worker processes")
    tr.add_argument("--train-subset", type=_POSITIVE_INT, default=None,
                    help="use only N training examples (random, before the validation split)")
    tr.add_argument("--out", default=None, help="output directory (default: runs/<arch>-<estimator>-<time>)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its checkpoint, with the settings it was started with (the "
                         "flags given now must agree with them)")
    tr.add_argument("--quiet", action="store_true",
                    help="no per-epoch lines and no progress bars (--no-progress hides the bars only)")
    tr.add_argument("--backend", default=None, choices=list(backend_names()),
                    help="kernel backend (default: $SBNNUMBA_BACKEND or cpu)")
    tr.add_argument("--distributed", action="store_true",
                    help="data-parallel training over MPI: launch with mpiexec -n N (needs the extra 'mpi': "
                         "pip install 'sbnnumba[mpi]'); --batch-size is the global batch; see docs/cluster.md")
    if train_defaults:
        tr.set_defaults(**train_defaults)

    ev = sub.add_parser("evaluate", help="test metrics of a checkpoint",
                        description="Test metrics and accuracy vs number of ensemble samples of a checkpoint.",
                        formatter_class=_Formatter)
    ev.add_argument("checkpoint", help="a checkpoint.npz written by 'train'")
    ev.add_argument("--data", default=None,
                    help="'auto', 'embedded' or a directory (default: the kind of data the run trained on)")
    ev.add_argument("--samples", type=_POSITIVE_INT, default=32, help="largest ensemble size")
    ev.add_argument("--seed", type=_NONNEG_INT, default=0, help="seed of the sampled noise of the evaluation")
    ev.add_argument("--out", default=None,
                    help="where to write the plot and metrics (default: the checkpoint's folder)")
    ev.add_argument("--backend", default=None, choices=list(backend_names()))
    ev.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    ex = sub.add_parser("export", help="export a trained binary network as dependency-free C",
                        description="Write a trained binary network as C99 source (header, source, example main.c, "
                                    "Makefile, README) with no dependency beyond the C library.")
    ex.add_argument("checkpoint", help="a packed network (PackedNetwork.save) or a checkpoint.npz written by 'train'")
    ex.add_argument("--format", required=True, choices=["c"], help="output format")
    ex.add_argument("--out", required=True,
                    help="output directory: new, empty, or holding an earlier export of the same --name (its files "
                         "are replaced); any other non-empty directory is refused")
    ex.add_argument("--name", default="model", help="C prefix of the files, functions and macros")
    ex.add_argument("--input-quantization", type=_quantization, default=None, metavar="SCALE,BITS",
                    help="training checkpoints: inputs are SCALE * q with BITS-bit codes q (e.g. 1/255,8 for "
                         "pixels): exact integer bit-plane first stage (dense, binary weights)")
    ex.add_argument("--data", default=None, help="training checkpoints without deterministic normalization "
                    "statistics: 'auto', 'embedded' or a directory (default: what it was trained on)")
    ex.add_argument("--calibration-size", type=_POSITIVE_INT, default=10000,
                    help="training images for those statistics")

    sub.add_parser("gradcheck", help="gradient-accuracy study (sbnnumba.gradstudy); arguments passed on; its --out "
                   "must be new, empty or hold an earlier study (replaced)", add_help=False)
    sub.add_parser("sweep", help="grid of training runs on local workers or a Dask cluster (sbnnumba.sweep.cli); "
                   "arguments passed on", add_help=False)
    return parser


def _quantization(text):
    """``SCALE,BITS`` with SCALE a number or a fraction ``a/b`` (e.g. ``1/255,8``)."""
    try:
        scale, bits = text.split(",")
        num, _, den = scale.partition("/")
        value = float(num) / (float(den) if den else 1.0)
        return value, int(bits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SCALE,BITS such as 1/255,8, got {text!r}") from None


# ================================================================================= data
def load_data(spec: str | None, verbose: bool = True) -> Any:
    """``"auto"``, ``"embedded"`` or a directory -> Dataset (CLIError for a bad directory).

    Parameters
    ----------
    spec : str or None
        ``--data``: ``"auto"`` (or None; full Fashion-MNIST if found, else the embedded subset),
        ``"embedded"`` or a directory of IDX files.
    verbose : bool
        Print which data is in use.

    Returns
    -------
    sbnnumba.datasets.Dataset
    """
    from sbnnumba import datasets

    if spec in (None, "auto"):
        return datasets.load_fashion_mnist(None, embedded="auto", verbose=verbose)
    if spec == "embedded":
        return datasets.load_fashion_mnist(embedded="force", verbose=verbose)
    if not os.path.isdir(spec):
        raise CLIError(f"--data: directory not found: {spec}")
    try:
        return datasets.load_fashion_mnist(spec, embedded="never", verbose=verbose)
    except (FileNotFoundError, ValueError) as exc:  # the library names its argument (data_dir:), the CLI its flag
        raise CLIError(f"--data: {re.sub(r'^data_dir: ', '', str(exc))}") from None


def _subset(ds, n, seed):
    if n is None or n >= ds.y_train.shape[0]:
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(ds.y_train.shape[0], size=n, replace=False))
    return dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])


def _default_out(arch, estimator):
    base = os.path.join("runs", f"{arch}-{estimator}-{time.strftime('%Y%m%d-%H%M%S')}")
    out, k = base, 1
    while os.path.exists(out):
        k += 1
        out = f"{base}-{k}"
    return out


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}%"


# ==================================================================== output directories
def _missing_dirs(path):
    """``path`` and those of its ancestors that do not exist, deepest first: what creating it would make."""
    missing, p = [], os.path.abspath(path)
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return missing


def _remove_empty(dirs):
    """Remove the directories ``dirs`` (deepest first) while they are empty: what a failed command created and
    left empty. A directory holding anything is kept, with its parents."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


def _writable_out(out, flag="--out"):
    """Check, before any work, that ``out`` is or can be created as a directory in which a file can be written:
    CLIError naming ``flag`` and the cause otherwise. Leaves the file system as it was (directories created
    for the check are removed). Every command that writes calls it first (``train`` before it takes the lock)."""
    from sbnnumba.fileio import TMP_PREFIX

    if os.path.lexists(out) and not os.path.isdir(out):
        raise CLIError(f"{flag}: {out} exists and is not a directory")
    missing = _missing_dirs(out)
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=".probe", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise CLIError(_cannot_write(flag, out, exc)) from None
    finally:
        _remove_empty(missing)


def _cannot_write(flag, out, exc):
    return f"{flag}: cannot create or write {exc.filename or out}: {exc.strerror or exc}"


def _entries(directory):
    """The names in ``directory`` other than temporary files and a run lock (none where it does not exist)."""
    from sbnnumba.fileio import LOCK_NAME, TMP_PREFIX

    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if not n.startswith(TMP_PREFIX) and n != LOCK_NAME)


def _out_option(argv, prog, default=None):
    """The ``--out`` of a command whose own module parses ``argv`` (gradcheck, sweep), read the way its
    argparse reads it (the last one given), so that it is checked before that module starts any work."""
    pre = _Parser(prog=prog, add_help=False)
    pre.add_argument("--out", default=default)
    return pre.parse_known_args(list(argv))[0].out


def _wants_help(argv):
    return any(a in ("-h", "--help") for a in argv)


def _npz_or_error(path, what, hint=""):
    """CLIError unless ``path`` (when it exists) starts like an ``.npz`` (zip) archive: a CSV, JSON or PNG file
    is named as not being ``what`` instead of failing in NumPy's loader."""
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not {what}{hint}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return  # missing or unreadable: the loader's message names it
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise CLIError(f"{path}: not {what} (not an .npz archive){hint}")


TRAIN_RESULTS = ("test_metrics.json", "ensemble_accuracy.png")
EVALUATE_RESULTS = ("evaluate_metrics.json", "evaluate_ensemble_accuracy.png")  # never a training run's names


def report_test(metrics: dict[str, Any], out: str, label: str = "test",
                names: Sequence[str] = TRAIN_RESULTS) -> list[str]:
    """Print the test metrics, save them and the ensemble curve in ``out`` under ``names`` (json, png).

    Parameters
    ----------
    metrics : dict
        As returned by :func:`sbnnumba.training.evaluate` (``loss``, ``acc1``, ``eacc``, ``det_acc``,
        ``samples``, ``n``, ``curve``, ...).
    out : str
        Directory of the two files.
    label : str
        Names the data in the printed line and the figure's title.
    names : (str, str)
        File names of the JSON metrics and the PNG ensemble curve.

    Returns
    -------
    list of str
        The two paths written.
    """
    from sbnnumba.fileio import atomic_write_text
    from sbnnumba.plots import plot_ensemble_curve

    s = metrics["samples"]
    print(f"{label}: expected loss {metrics['loss']:.4f} | single-sample acc {_pct(metrics['acc1'])} | "
          f"{s}-sample ensemble acc {_pct(metrics['eacc'])} | deterministic acc {_pct(metrics['det_acc'])} "
          f"({metrics['n']} images)")
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= s] + ([s] if s not in (1, 2, 4, 8, 16, 32, 64, 128) else [])
    print("ensemble accuracy vs samples: " + ", ".join(f"{k}: {_pct(metrics['curve'][k - 1])}" for k in ks))
    doc = json.dumps(metrics, indent=1)
    paths = [atomic_write_text(os.path.join(out, names[0]), doc),
             plot_ensemble_curve(metrics["curve"], os.path.join(out, names[1]),
                                 title=f"{label} accuracy vs number of samples")]
    return paths


# ============================================================================== commands
def _lr_search_args(args):
    """Check the --lr-* options; return the search settings (None without --lr auto)."""
    given = [name for name, v in (("--lr-trials", args.lr_trials), ("--lr-trial-epochs", args.lr_trial_epochs),
                                  ("--lr-bounds", args.lr_bounds), ("--lr-trial-subset", args.lr_trial_subset),
                                  ("--lr-method", args.lr_method), ("--lr-workers", args.lr_workers))
             if v is not None]
    if args.lr != "auto":
        if given:
            raise CLIError(f"{', '.join(given)} only apply with --lr auto")
        return None
    if args.lr_workers is not None and args.lr_method != "grid":
        raise CLIError("--lr-workers: the trials run in parallel only with --lr-method grid")
    return {"bounds": args.lr_bounds or [-6.0, 0.0], "max_trials": args.lr_trials or 10,
            "trial_epochs": args.lr_trial_epochs or 5, "trial_subset": args.lr_trial_subset,
            "method": args.lr_method or "bounded", "workers": args.lr_workers}


def _resume_lr(out):
    """The learning rate (and the search record) stored in the checkpoint of the run in ``out``."""
    from sbnnumba import training

    ck = training.load_checkpoint(os.path.join(out, training.CHECKPOINT_NAME))
    lr = ck.config.get("optimizer", {}).get("lr")
    if lr is None:
        raise CLIError(f"--lr auto --resume: the checkpoint in {out} records no learning rate")
    return float(lr), ck.config.get("metadata", {}).get("lr_search")


def _output_dir(args):
    """``--out`` (or a fresh ``runs/...`` name), checked against another run holding it and ``--resume``."""
    from sbnnumba.fileio import RunLock
    from sbnnumba.training import CHECKPOINT_NAME

    if args.resume and args.out is None:
        raise CLIError("--resume needs --out, the directory of the run to continue")
    out = args.out or _default_out(args.arch, args.estimator)
    busy = RunLock(out, "--out").busy_message() if os.path.isdir(out) else None
    if busy:  # another run is writing there: say so rather than what its checkpoint would mean
        raise CLIError(busy)
    held = os.path.isfile(os.path.join(out, CHECKPOINT_NAME))
    if args.resume and not held:
        raise CLIError(f"--resume: no checkpoint in {out}")
    if not args.resume and held:
        raise CLIError(f"--out: {out} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it "
                       "or choose another output directory")
    return out


def _architecture_options(args):
    """The ``--arch`` builder's options from the command line."""
    if args.bn_gamma != 1.0 and not args.normalize:
        raise CLIError("--bn-gamma: sets the starting gamma of batch normalization; add --normalize")
    if args.weights == "real" and (args.weight_noise != "logistic" or args.weight_grad != "md"):
        raise CLIError("--weight-noise, --weight-grad: set the Bernoulli weights' noise and rule; add --weights hidden "
                       "or --weights bernoulli")
    options = {"noise": args.noise}
    if args.weights != "real" or args.normalize:
        options.update(weight=args.weights, weight_noise=args.weight_noise, weight_grad=args.weight_grad,
                       normalize=args.normalize)
    if args.bn_gamma != 1.0:
        options["bn_gamma"] = args.bn_gamma
    if args.arch == "mlp":
        options["hidden"] = args.hidden
    elif args.arch == "conv":
        options["channels"] = args.channels
        if args.input_padding:
            options["input_padding"] = args.input_padding
    return options


def _searched_lr(args, search, net, ds, config, out, metadata, comm=None):
    """``--lr auto``: search the learning rate (or, resuming, reuse the checkpoint's); records it in ``metadata``.
    With ``comm`` the trials are data-parallel and rank 0 alone reads and writes files."""
    from sbnnumba import training
    from sbnnumba.fileio import atomic_write_text
    from sbnnumba.sweep.cli import open_executor

    metadata["lr"] = "auto"
    root = comm is None or comm.is_root
    if args.resume:  # the search was done by the session that started the run: reuse its lr
        lr, record = _resume_lr(out) if root else (None, None)
        if comm is not None:
            lr, record = comm.bcast_object((lr, record))
        if record is not None:
            metadata["lr_search"] = record
        print(f"--lr auto: resuming with the learning rate {lr:.4g} stored in the checkpoint")
        return lr
    b = search["bounds"]
    print(f"searching the learning rate for {args.estimator}: log10(lr) in [{b[0]:g}, {b[1]:g}], at most "
          f"{search['max_trials']} trials of {search['trial_epochs']} epochs"
          + (f" on {search['trial_subset']} training images" if search["trial_subset"] else ""), flush=True)
    search = dict(search)
    workers = search.pop("workers")
    try:
        executor, threads, close = open_executor(workers)
        try:  # a round of the grid refinement: one trial per worker (at least 2 points)
            batch = {"batch": max(2, workers)} if workers else {}
            found = training.search_lr(net, ds, config, **search, comm=comm, executor=executor, threads=threads,
                                       **batch)
        finally:
            close()
    except (TypeError, ValueError) as exc:
        raise CLIError(f"--lr auto: {exc}") from None
    metadata["lr_search"] = found.as_dict()
    if root:
        atomic_write_text(os.path.join(out, "lr_search.json"), json.dumps(metadata["lr_search"], indent=1))
    print(f"chosen learning rate: {found.lr:.4g} (mean training loss {found.score:.4f} over "
          f"{search['trial_epochs']} epochs; {len(found.trials)} trials in {found.seconds:.1f} s)", flush=True)
    return found.lr


def _communicator(args):
    """``--distributed``: the MPI job's communicator (its rank table printed), else None; without mpi4py a
    CLIError saying how to install it, before anything else is done."""
    if not args.distributed:
        return None
    from sbnnumba import distributed

    try:
        comm = distributed.world()
    except distributed.MPIUnavailable as exc:
        raise CLIError(f"--distributed: {exc}") from None
    distributed.announce_ranks(comm)
    return comm


def cmd_train(args: argparse.Namespace) -> int:
    """``train``; with ``--distributed`` every rank runs it, an error on any rank ends the job (naming the
    rank), and only rank 0 prints.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``train`` arguments (:func:`build_parser`).

    Returns
    -------
    int
        Exit status 0 (errors raise; :func:`main` maps them to statuses).
    """
    comm = _communicator(args)
    if comm is None:
        return _train(args)
    from sbnnumba.distributed import ReplicaMismatch, fail_fast
    from sbnnumba.training import TrainingDiverged

    with contextlib.ExitStack() as stack:
        if not comm.is_root:
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        stack.enter_context(fail_fast(comm, collective=(TrainingDiverged, ReplicaMismatch)))
        return _train(args, comm)


@contextlib.contextmanager
def _run_directory(out):
    """Hold the lock of ``out`` (checked writable by ``_writable_out``, then created, before any work).
    Ctrl-C or SIGTERM inside becomes :class:`Interrupted` saying whether a checkpoint is kept (the lock and
    temporary files removed on the way out); when the command fails, the directories it created are removed
    if they are still empty (a pre-existing directory, or one holding files, is kept)."""
    from sbnnumba.fileio import DirectoryBusy, RunLock

    with _sigterm_as_interrupt():
        _writable_out(out)
        created = _missing_dirs(out)
        try:
            lock = RunLock(out, "--out").__enter__()
        except DirectoryBusy as exc:
            raise CLIError(str(exc)) from None
        except OSError as exc:
            _remove_empty(created)
            raise CLIError(_cannot_write("--out", out, exc)) from None
        failed = True
        try:
            yield
            failed = False
        except KeyboardInterrupt as exc:
            raise Interrupted(_kept(out), 143 if isinstance(exc, _Terminated) else 130) from None
        finally:
            lock.__exit__(None, None, None)
            if failed:
                _remove_empty(created)


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the block runs (in the main thread), SIGTERM raises :class:`_Terminated`, a KeyboardInterrupt:
    ``timeout``, a batch system or ``kill`` end the run as Ctrl-C does (the previous handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _kept(out):
    """What an interrupted ``train`` leaves in ``out``."""
    from sbnnumba import training

    path = os.path.join(out, training.CHECKPOINT_NAME)
    try:
        epoch = training.load_checkpoint(path).epoch
    except (FileNotFoundError, training.CheckpointError):
        return f"interrupted before the first epoch ended; no checkpoint was written in {out}"
    return f"interrupted; {path} keeps epoch {epoch}, the last completed one (continue with --resume)"


def _train(args, comm=None):
    root = comm is None or comm.is_root
    out = _output_dir(args) if root else None  # rank 0's file system decides (other ranks may not see it)
    if comm is not None:
        out = comm.bcast_object(out)
    if args.resume:  # the flags left out take the run's settings (rank 0 reads them: others may not see the file)
        settings = checkpoint_settings(out) if root else None
        args = _resumed_args(args, settings if comm is None else comm.bcast_object(settings))
    search = _lr_search_args(args)
    if comm is not None:
        from sbnnumba.distributed import select_device

        select_device(comm, args.backend)
    with _run_directory(out) if root else contextlib.nullcontext():
        return _train_in(args, out, search, comm)


def _test_metrics(net, ds, config, comm):
    """The trained network on the test set; with ``comm``, split over the ranks with keyed noise (every rank
    calls it; the metrics do not depend on the number of ranks)."""
    from sbnnumba import training

    rng = np.random.default_rng([config.seed, 0x7E57])
    if comm is None:
        return training.evaluate(net, ds.x_test, ds.y_test, samples=config.eval_samples, rng=rng,
                                 progress="test images" if config.progress else None)
    from sbnnumba.distributed import split_evaluation

    def part(x, y, uniforms):
        return training.evaluate(net, x, y, samples=config.eval_samples, uniforms=uniforms)

    return split_evaluation(part, net, ds.x_test, ds.y_test, int(rng.integers(2 ** 63)), comm)


def _flag_names(message):
    """A FitConfig message as the command line says it: the field named by its flag (``momentum:`` ->
    ``--momentum:``), and ``optimizer='sgd'`` as ``--optimizer sgd``."""
    flags = {f.name: flag for flag, f in command_line_fields()}
    name, sep, rest = message.partition(": ")
    if sep and name in flags:
        message = f"{flags[name]}: {rest}"
    return re.sub(r"\boptimizer='(\w+)'", r"--optimizer \1", message)


#: The ``--arch`` options as recorded in a run's metadata: flag and the value an absent entry stands for.
_ARCH_FLAGS = {"noise": ("--noise", "logistic"), "hidden": ("--hidden", None), "channels": ("--channels", None),
               "input_padding": ("--input-padding", 0), "weight": ("--weights", "real"),
               "weight_noise": ("--weight-noise", "logistic"), "weight_grad": ("--weight-grad", "md"),
               "normalize": ("--normalize", False), "bn_gamma": ("--bn-gamma", 1.0)}
#: FitConfig fields with a flag that a resumed run must repeat: the trajectory ones and those of the optimizer.
_OPTIMIZER_FLAGS = ("optimizer", "momentum", "schedule", "clip_value")


def _shown(value, flag=None):
    """A setting as it is written on the command line (a switch: given or not)."""
    if isinstance(value, bool):
        return "given" if value != (flag or "").startswith("--no-") else "not given"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


#: FitConfig fields with a flag that a resumed run does not take from its checkpoint: how this session shows its work.
_SESSION_FIELDS = ("progress",)


def checkpoint_settings(out: str) -> list[tuple[str, str, Any]]:
    """The ``train`` settings of the run in ``out`` as ``(flag, dest, value)``, for ``--resume`` to parse the command
    line again with them as defaults (:func:`build_parser`): the architecture and its options, ``--data``,
    ``--train-subset``, ``--lr`` (``auto`` when it was searched) and the :class:`~sbnnumba.training.FitConfig`
    fields with a flag, except the session's display ones (:data:`_SESSION_FIELDS`). Settings the checkpoint does
    not record (a checkpoint of an older version, or one written by ``training.fit`` without the command line's
    metadata) are left out: their flags keep the command line's defaults, and ``fit`` checks what it can.

    Parameters
    ----------
    out : str
        The run's directory (holding its checkpoint).

    Returns
    -------
    list of (str, str, object)
        Flag, ``argparse`` destination and value in the form the command line's option gives it.
    """
    from sbnnumba import training

    saved = training.load_checkpoint(os.path.join(out, training.CHECKPOINT_NAME)).config
    meta, fit = saved.get("metadata") or {}, saved.get("fit") or {}
    settings = []
    arch = meta.get("architecture")
    if isinstance(arch, dict) and "name" in arch:
        settings.append(("--arch", "arch", arch["name"]))
        then = arch.get("options") or {}
        for key, (flag, default) in _ARCH_FLAGS.items():
            value = then.get(key, default)  # an option the builder was not given: the value its absence stands for
            if value is not None:
                settings.append((flag, flag[2:].replace("-", "_"), value))
    for key, flag in (("data", "--data"), ("train_subset", "--train-subset")):
        if key in meta:
            settings.append((flag, key, meta[key]))
    settings += [(flag, f.name, fit[f.name]) for flag, f in command_line_fields()
                 if f.name in fit and f.name not in _SESSION_FIELDS]
    lr = (saved.get("optimizer") or {}).get("lr")
    if meta.get("lr") == "auto":
        settings.append(("--lr", "lr", "auto"))
    elif lr is not None:
        settings.append(("--lr", "lr", float(lr)))
    return settings


def _resumed_args(args, settings):
    """``args`` parsed again from the same command line (``args.argv``) with the checkpoint's ``settings``
    (:func:`checkpoint_settings`) as defaults: a flag given now keeps its value (``_check_resume_flags`` compares
    it), one left out takes the run's. Prints the settings that came from the checkpoint."""
    resumed = build_parser(train_defaults={dest: value for _, dest, value in settings}).parse_args(args.argv)
    resumed.argv = args.argv
    taken = [f"{flag} {_shown(getattr(resumed, dest), flag)}" for flag, dest, _ in settings
             if getattr(resumed, dest) != getattr(args, dest)]
    if taken:
        print(f"--resume: continuing with the run's settings {' '.join(taken)}")
    return resumed


def _check_resume_flags(args, out, ds, options, config):
    """``--resume``: CLIError in one line listing, as flags, the settings of the command line that differ from
    those the run in ``out`` was trained with (what ``fit`` would refuse), before any training work. Settings
    that no flag maps to are left to ``fit``'s own check."""
    from sbnnumba import optim, training

    path = os.path.join(out, training.CHECKPOINT_NAME)
    saved = training.load_checkpoint(path).config
    meta, fit = saved.get("metadata") or {}, saved.get("fit") or {}
    diff = []

    def differ(flag, then, now, shown=None):
        if then != now:
            diff.append(f"{flag}: checkpoint {shown[0] if shown else _shown(then, flag)}, "
                        f"now {shown[1] if shown else _shown(now, flag)}")

    arch = meta.get("architecture")
    if isinstance(arch, dict):
        differ("--arch", arch.get("name"), args.arch)
        if arch.get("name") == args.arch:
            then = arch.get("options") or {}
            for key, (flag, default) in _ARCH_FLAGS.items():
                differ(flag, then.get(key, default), options.get(key, default))
    if "dataset" in meta and meta["dataset"] != ds.name:
        differ("--data", meta.get("data"), args.data,
               (f"{meta.get('data')} ({meta['dataset']})", f"{args.data} ({ds.name})"))
    if "train_subset" in meta:
        differ("--train-subset", meta["train_subset"], args.train_subset,
               (_shown(meta["train_subset"]).replace("none", "all"), _shown(args.train_subset).replace("none", "all")))
    now = config.to_dict()
    sgd = fit.get("optimizer") == now["optimizer"] == optim.SGD.name
    for flag, f in command_line_fields():
        if f.name not in fit or not (f.metadata["trajectory"] or f.name in _OPTIMIZER_FLAGS) \
                or (f.name in MOMENTUM_FIELDS and not sgd):  # only SGD has a momentum
            continue
        canonical = f.metadata["check"].canonical  # e.g. the library's None schedule and the CLI's "constant"
        differ(flag, canonical(fit[f.name]), canonical(now[f.name]))
    if args.lr != "auto":  # --lr auto resumes with the checkpoint's learning rate
        then_lr = (saved.get("optimizer") or {}).get("lr")
        now_lr = config.lr if config.lr is not None else optim.get_optimizer(config.optimizer).lr
        if then_lr is not None and not np.isclose(then_lr, now_lr, rtol=1e-12, atol=0):
            differ("--lr", then_lr, now_lr, (f"auto ({then_lr:g})" if meta.get("lr") == "auto" else f"{then_lr:g}",
                                            f"{now_lr:g}" + (" (default)" if config.lr is None else "")))
    if diff:
        raise CLIError(f"--resume: the run in {out} was trained with other settings ({'; '.join(diff)}); "
                       "leave those flags out (--resume takes them from the checkpoint) or start a new run")


def _train_in(args, out, search, comm):
    from sbnnumba import architectures, training

    root = comm is None or comm.is_root
    try:
        config = training.FitConfig(**{f.name: getattr(args, f.name) for _, f in command_line_fields()},
                                    lr=None if args.lr == "auto" else args.lr)
        if args.quiet:
            config = config.replace(progress=False, verbose=False)
    except (TypeError, ValueError) as exc:
        raise CLIError(_flag_names(str(exc))) from None
    ds = _subset(load_data(args.data, verbose=config.progress), args.train_subset, seed=1)
    options = _architecture_options(args)
    if args.resume and root:
        _check_resume_flags(args, out, ds, options, config)
    try:
        net = architectures.build(args.arch, ds.x_train.shape[1:], ds.n_classes, rng=args.seed,
                                  backend=args.backend, **options)
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:
        raise CLIError(f"could not build the {args.arch} network: {exc}") from None
    metadata = {"command": "train", "data": args.data, "train_subset": args.train_subset,
                "dataset": ds.name, "source": ds.source, "architecture": {"name": args.arch, "options": options},
                "distributed": comm is not None}
    if search is not None:
        config = config.replace(lr=_searched_lr(args, search, net, ds, config, out, metadata, comm))
    print(f"training {args.arch} {options} with {args.estimator} on {ds.name} ({ds.y_train.shape[0]} images, "
          f"{config.val_fraction:.0%} held out), {config.epochs} epochs, batch {config.batch_size}, "
          f"{config.optimizer}" + (f" lr {config.lr:.4g}" if config.lr is not None else "") + f"; output in {out}")
    t0 = time.perf_counter()
    with runtime.compile_timer() as compiling:
        result = training.fit(net, ds, config, out=out, resume=args.resume, metadata=metadata, comm=comm)
    t_train = time.perf_counter() - t0
    metrics = _test_metrics(net, ds, config, comm)
    if not root:  # the test files: rank 0
        return 0
    metrics.update(epochs=result.epochs_done, train_seconds=t_train, compile_seconds=compiling.seconds, dataset=ds.name)
    print(f"trained {result.epochs_this_run} epochs in this run in {t_train:.1f} s"
          f"{runtime.compile_note(compiling.seconds)}, {result.epochs_done} of {config.epochs} in total "
          f"({result.stopped})")
    report_test(metrics, out)
    print(f"wrote {out}/: checkpoint.npz, history.csv, history.json, loss.png, accuracy.png, entropy.png, "
          "test_metrics.json, ensemble_accuracy.png" + (", lr_search.json" if search and not args.resume else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate CHECKPOINT``: test metrics and the ensemble curve of a training checkpoint.

    Evaluates on the test images of ``--data`` (default: the data the checkpoint was trained on) and
    writes ``evaluate_metrics.json`` and ``evaluate_ensemble_accuracy.png`` into ``--out`` (default: the
    checkpoint's directory).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``evaluate`` arguments.

    Returns
    -------
    int
        Exit status 0.
    """
    from sbnnumba import training

    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    _writable_out(out)
    _npz_or_error(args.checkpoint, "a checkpoint", "; evaluate reads the checkpoint.npz that train writes")
    try:
        ck = training.load_checkpoint(args.checkpoint)
        net = training.load_network(ck, backend=args.backend)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    data = args.data
    if data is None:
        trained_on = ck.config.get("data", {}).get("name")
        data = "embedded" if trained_on == "fashion-mnist-subset" else "auto"
    ds = load_data(data)
    t0 = time.perf_counter()
    metrics = training.evaluate(net, ds.x_test, ds.y_test, samples=args.samples, rng=args.seed,
                                progress="test images" if args.progress else None)
    metrics.update(checkpoint=os.path.abspath(args.checkpoint), epoch=ck.epoch, dataset=ds.name,
                   seconds=time.perf_counter() - t0)
    paths = report_test(metrics, out, names=EVALUATE_RESULTS)
    print("wrote " + ", ".join(paths))
    return 0


def _packed_format(args):
    """Whether ``args.checkpoint`` is a packed network (else a training checkpoint), checked with the options
    against it: a quick look at the file, before ``--out`` is compared with what it holds."""
    from sbnnumba import packed as packed_mod

    _npz_or_error(args.checkpoint, "a packed network or training checkpoint")
    try:
        with np.load(args.checkpoint, allow_pickle=False) as z:
            fmt = str(z["meta/format"]) if "meta/format" in z.files else None
    except FileNotFoundError:
        raise CLIError(f"checkpoint not found: {args.checkpoint}") from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"{args.checkpoint}: not a readable .npz file ({exc})") from None
    if fmt == packed_mod.FORMAT and args.input_quantization is not None:
        raise CLIError("--input-quantization: the packed network file is already converted; it applies to "
                       "training checkpoints")
    return fmt == packed_mod.FORMAT


def _packed_network(args, packed):
    """The PackedNetwork of ``args.checkpoint``: loaded (``packed``), or converted from a training checkpoint."""
    from sbnnumba import datasets, training
    from sbnnumba import packed as packed_mod

    if packed:
        return packed_mod.PackedNetwork.load(args.checkpoint)
    ck = training.load_checkpoint(args.checkpoint)
    net = training.load_network(ck)
    if any(n.running.get("deterministic") is None for n in net.normalizations()):
        trained_on = ck.config.get("data", {}).get("name")
        ds = load_data(args.data or ("embedded" if trained_on == "fashion-mnist-subset" else "auto"))
        x = datasets.normalize(ds.x_train[:args.calibration_size], dtype=net.dtype)
        net.recalibrate_normalization(x, mode="deterministic")
    return packed_mod.PackedNetwork.from_network(net, input_quantization=args.input_quantization)


_EXPORT_README = re.compile(r"# (\w+): a binary network exported by sbnnumba")


def _export_name(directory):
    """The ``--name`` of the C export in ``directory`` (the title of its README.md), or None."""
    try:
        with open(os.path.join(directory, "README.md"), encoding="utf-8") as f:
            found = _EXPORT_README.match(f.readline())
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found else None


def _check_export_kind(out, name):
    """``export --out``: new, empty or holding an earlier export of the same ``--name`` (whose files are then
    replaced); anything else is refused before the network is loaded or converted."""
    if not _entries(out):
        return
    held = _export_name(out)
    if held is None:
        raise CLIError(f"--out: {out} is not empty and holds no C export of sbnnumba; choose a new or empty "
                       "directory")
    if held != name:
        raise CLIError(f"--out: {out} holds the C export {held!r}; pass --name {held} to replace it, or choose "
                       "another directory")


def cmd_export(args: argparse.Namespace) -> int:
    """``export CHECKPOINT --format c --out DIR``: write the packed network as C99 and print its size.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``export`` arguments.

    Returns
    -------
    int
        Exit status 0.
    """
    _writable_out(args.out)
    packed = _packed_format(args)
    _check_export_kind(args.out, args.name)
    result = _packed_network(args, packed).export_c(args.out, name=args.name)
    print("wrote " + ", ".join(result.files.values()))
    print(f"constant data {result.data_bytes:,d} bytes; the float32 network: "
          + ("?" if result.float32_bytes is None else f"{result.float32_bytes:,d} bytes "
             f"({result.float32_bytes / result.data_bytes:.1f}x)"))
    print(f"compile: cd {args.out} && make   (or: cc -std=c99 -O2 -o {args.name}_main main.c {args.name}.c)")
    return 0


def cmd_gradcheck(argv: Sequence[str]) -> int:
    """``gradcheck``: the gradient-accuracy study, :func:`sbnnumba.gradstudy.main` on ``argv``.

    Parameters
    ----------
    argv : sequence of str
        The arguments after ``gradcheck``.

    Returns
    -------
    int
        The study's exit status (its argparse's for ``--help`` and usage errors).

    Notes
    -----
    ``--out`` (default ``gradient_accuracy``) is checked first: it must be writable, and new, empty or
    holding an earlier study; after a successful study, the files of the earlier one that it did not
    rewrite (other epochs, figures) are removed, so that the directory holds one study. When the study
    fails in a directory this command created, its partial files and the directory are removed.
    """
    import importlib

    try:
        gradstudy = importlib.import_module("sbnnumba.gradstudy")
    except ModuleNotFoundError as exc:
        if exc.name != "sbnnumba.gradstudy":
            raise
        raise CLIError("the gradient study module sbnnumba.gradstudy is not available in this installation")
    prog = f"{PROG} gradcheck"
    if _wants_help(argv):
        return _study_main(gradstudy, argv, prog)
    out = _out_option(argv, prog, _GRADSTUDY_OUT)
    _writable_out(out)
    created, before = _missing_dirs(out), _study_files(out)
    if _entries(out) and not before:
        raise CLIError(f"--out: {out} is not empty and holds no gradient study; choose a new or empty directory")
    rc = 1
    try:
        rc = _study_main(gradstudy, argv, prog)
    finally:
        if rc == 0:
            _remove_earlier_study(out, before)
        elif created:  # partial files of a failed study in a directory of its own
            for name in _study_files(out):
                os.remove(os.path.join(out, name))
            _remove_empty(created)
    return rc


#: ``gradcheck``'s default ``--out`` and the files a study writes there (:mod:`sbnnumba.gradstudy`).
_GRADSTUDY_OUT = "gradient_accuracy"
_GRADSTUDY_FILES = ("gradient_accuracy.csv", "gradient_accuracy.md", "gradient_accuracy_epoch*.png",
                   "checkpoint_epoch*.npz")


def _study_main(gradstudy, argv, prog):
    try:
        rc = gradstudy.main(list(argv), prog=prog)
    except SystemExit as exc:  # its argparse (--help, usage errors)
        rc = exc.code
    return 0 if rc is None else int(rc) if isinstance(rc, int) else 1


def _study_files(directory):
    """``{name: (inode, mtime)}`` of the gradient study's files in ``directory``."""
    found = {}
    for name in _entries(directory):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in _GRADSTUDY_FILES):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(directory, name))
                found[name] = (st.st_ino, st.st_mtime_ns)
    return found


def _remove_earlier_study(out, before):
    """Remove the files of the study that was in ``out`` that the new one did not rewrite (its writes replace
    files: a new inode)."""
    now = _study_files(out)
    stale = sorted(name for name, stamp in before.items() if now.get(name) == stamp)
    for name in stale:
        os.remove(os.path.join(out, name))
    if stale:
        print(f"removed the earlier study's {', '.join(stale)} from {out}")


class _PrintHandler(logging.Handler):
    """Library log records (INFO and up) as plain lines on the current ``sys.stdout``."""

    def emit(self, record):
        print(self.format(record), flush=True)


@contextlib.contextmanager
def library_log() -> Iterator[None]:
    """Print the library's log lines (INFO and up: ``fit``'s epoch lines when ``progress`` is on, the
    learning-rate search's trials) while the block runs; shared with the bench scripts.

    A context manager: it adds a handler printing to ``sys.stdout`` to the ``"sbnnumba"`` logger at INFO
    level and restores the logger on exit.

    Yields
    ------
    None
    """
    logger = logging.getLogger("sbnnumba")
    handler, level = _PrintHandler(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _run(args):
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export}
    with library_log():
        return commands[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m sbnnumba``.

    Parameters
    ----------
    argv : sequence of str, optional
        Command and arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 ok, 1 training diverged, 2 usage or input error, 130 interrupted (Ctrl-C), 143
        ``train`` ended by SIGTERM.
    """
    from sbnnumba.training import CheckpointError, TrainingDiverged

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    prog = f"{PROG} {command}" if command in ("train", "evaluate", "export", "gradcheck", "sweep") else PROG
    try:
        if command == "gradcheck":
            return cmd_gradcheck(argv[1:])
        if command == "sweep":
            from sbnnumba.sweep.cli import main as sweep_main

            out = None if _wants_help(argv[1:]) else _out_option(argv[1:], prog)
            if out is not None:  # (a missing --out is the sweep parser's usage error)
                _writable_out(out)
            return sweep_main(argv[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return 0 if exc.code is None else int(exc.code)
        args.argv = argv  # train --resume parses it again with the run's settings as defaults (_resumed_args)
        runtime.retain_freed_memory()  # long array-heavy jobs: reuse freed pages (sbnnumba/runtime.py)
        return _run(args)
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except (CheckpointError, FileExistsError, FileNotFoundError, NotImplementedError, ValueError) as exc:
        if os.environ.get("SBNNUMBA_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable or invalid path, full disk: atomic writes kept the last good files
        if os.environ.get("SBNNUMBA_DEBUG"):
            raise
        print(f"{prog}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def os_error_line(exc: OSError) -> str:
    """One line naming the path and the cause of an OSError.

    Parameters
    ----------
    exc : OSError
        The error.

    Returns
    -------
    str
        ``<path>: <cause> (files written before are unchanged)``.
    """
    cause = exc.strerror or str(exc)
    where = exc.filename if exc.filename is None or exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{where or 'operating-system error'}: {cause} (files written before are unchanged)"
