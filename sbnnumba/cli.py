"""Command line: ``python -m sbnnumba {train,evaluate,gradcheck} ...``.

``train``
    Train an SBN on Fashion-MNIST and write ``checkpoint.npz``, ``history.csv``, ``history.json``,
    ``loss.png``, ``accuracy.png``, ``entropy.png``, ``test_metrics.json`` and ``ensemble_accuracy.png``
    into ``--out``. ``--lr auto`` first chooses a constant learning rate for the method by the spec's
    search (:func:`sbnnumba.train.search_lr`: bounded minimization over ``log10(lr)`` in ``--lr-bounds``,
    at most ``--lr-trials`` trainings of ``--lr-trial-epochs`` epochs from the same init, scored by the
    mean running training loss), records the trials in ``lr_search.json`` and in the run's config
    (``metadata.lr_search`` of ``history.json`` and the checkpoint), then trains with it; ``--resume``
    reuses the lr stored in the checkpoint instead of searching again.
    The defaults (MLP 784-256-256-10, logistic noise, PSA, Adam lr 1e-3, batch 64, 3 epochs, data-dependent
    init, 10 % validation) finish in about 1 minute on 2 idle CPU cores on the full Fashion-MNIST
    (54,000 training images; measured 51 s, test accuracy 83.8 % single sample, 85.1 % 10-sample
    ensemble, 84.7 % deterministic) and in about 25 s on the embedded subset (9,000 training images;
    78.2 % / 81.7 % / 80.7 % on its 2,000 test images).
``evaluate CHECKPOINT``
    Test metrics of a checkpoint and the test accuracy vs number of ensemble samples (1..``--samples``),
    printed and saved as ``ensemble_accuracy.png`` and ``test_metrics.json``.
``gradcheck``
    The gradient-accuracy study (:mod:`sbnnumba.gradstudy`), all further arguments passed on.

Every error (unknown name, invalid size, missing data directory, bad checkpoint) prints one line
``python -m sbnnumba <command>: error: ...`` and exits with status 2; a diverged training exits with
status 1. Set ``SBNNUMBA_DEBUG=1`` to get the traceback of a ValueError instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from . import runtime

PROG = "python -m sbnnumba"
DEFAULT_HIDDEN = "256,256"
DEFAULT_CHANNELS = "96,96,96,192,192,192,192,192"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``<prog>: error: <message> (see --help)``."""

    def error(self, message):
        raise CLIError(f"{message} (see {self.prog} --help)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: ...)' only for real defaults not already described in the help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text or action.default is argparse.SUPPRESS:
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


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not v > 0 or (kind is float and not np.isfinite(v)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return v
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def _lr(text):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _positive(float)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None


_lr.__name__ = "learning rate"


def bn_gamma_arg(text):
    """``--bn-gamma``: a positive number or ``noise-std`` (shared with the bench scripts)."""
    if text.strip().lower() == "noise-std":
        return "noise-std"
    try:
        return _positive(float)(text)
    except argparse.ArgumentTypeError:
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


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def build_parser():
    import sbnnumba
    from sbnnumba.architectures import ARCHITECTURES
    from sbnnumba.layers import BACKENDS
    from sbnnumba.noise import NOISES

    parser = _Parser(prog=PROG, description="Stochastic binary networks in NumPy + Numba.")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,gradcheck}", parser_class=_Parser)
    sub.required = True

    tr = sub.add_parser("train", help="train an SBN on Fashion-MNIST",
                        description="Train an SBN on Fashion-MNIST. The defaults (3 epochs) take about 1 min on 2 "
                                    "cores on the full data set (about 25 s on the embedded subset) and reach "
                                    "about 85 % test accuracy (82 % on the embedded subset).",
                        formatter_class=_Formatter)
    tr.add_argument("--data", default="auto",
                    help="'auto' (full Fashion-MNIST if found, else the embedded subset), 'embedded', or a "
                         "directory with the IDX files")
    tr.add_argument("--arch", default="mlp", choices=sorted(ARCHITECTURES), help="network architecture")
    tr.add_argument("--hidden", type=_int_list("hidden"), default=DEFAULT_HIDDEN,
                    help="mlp: comma-separated hidden widths")
    tr.add_argument("--channels", type=_int_list("channels", 8), default=DEFAULT_CHANNELS,
                    help="conv: the 8 comma-separated channel counts")
    tr.add_argument("--input-padding", type=int, default=0,
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
    tr.add_argument("--estimator", default="psa", choices=sbnnumba.known_methods(), help="gradient estimator")
    tr.add_argument("--noise", default="logistic", choices=sorted(NOISES), help="noise of the binary units")
    tr.add_argument("--epochs", type=_positive(int), default=3)
    tr.add_argument("--batch-size", type=_positive(int), default=64)
    tr.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    tr.add_argument("--lr", type=_lr, default=None,
                    help="learning rate, or 'auto' to search it for the method first (default: adam 1e-3, "
                         "sgd 0.01)")
    tr.add_argument("--lr-trials", type=_positive(int), default=None,
                    help="--lr auto: most trial trainings (default 10)")
    tr.add_argument("--lr-trial-epochs", type=_positive(int), default=None,
                    help="--lr auto: epochs per trial (default 5)")
    tr.add_argument("--lr-bounds", type=_bounds, default=None,
                    help="--lr auto: LO,HI of log10(lr) searched (default -6,0)")
    tr.add_argument("--lr-trial-subset", type=_positive(int), default=None,
                    help="--lr auto: train the trials on N training images only (default: all)")
    tr.add_argument("--momentum", type=_fraction, default=0.9, help="sgd: Nesterov momentum (0 = plain SGD)")
    tr.add_argument("--schedule", default="constant", choices=["constant", "step", "cosine"],
                    help="learning-rate schedule over the run (step: x0.1 after each third)")
    tr.add_argument("--clip", type=_positive(float), default=1e3, help="element-wise gradient clipping")
    tr.add_argument("--seed", type=_nonneg_int, default=1, help="initialization and training seed")
    tr.add_argument("--val-fraction", type=_fraction, default=0.1, help="held-out part of the training set")
    tr.add_argument("--train-subset", type=_positive(int), default=None,
                    help="use only N training examples (random, before the validation split)")
    tr.add_argument("--eval-samples", type=_positive(int), default=10, help="samples per image in evaluation")
    tr.add_argument("--no-data-init", action="store_true", help="skip the data-dependent initialization")
    tr.add_argument("--augment", action="store_true", help="random flip + padded crop of training batches")
    tr.add_argument("--augment-pad", type=_nonneg_int, default=4,
                    help="--augment: zero padding of the random crop in pixels")
    tr.add_argument("--out", default=None, help="output directory (default: runs/<arch>-<estimator>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    tr.add_argument("--backend", default=None, choices=list(BACKENDS),
                    help="kernel backend (default: $SBNNUMBA_BACKEND or cpu)")
    tr.add_argument("--max-time", type=_positive(float), default=None,
                    help="time budget in seconds (stops after the epoch that passes it)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = sub.add_parser("evaluate", help="test metrics of a checkpoint",
                        description="Test metrics and accuracy vs number of ensemble samples of a checkpoint.",
                        formatter_class=_Formatter)
    ev.add_argument("checkpoint", help="a checkpoint.npz written by 'train'")
    ev.add_argument("--data", default=None,
                    help="'auto', 'embedded' or a directory (default: the kind of data the run trained on)")
    ev.add_argument("--samples", type=_positive(int), default=32, help="largest ensemble size")
    ev.add_argument("--seed", type=_nonneg_int, default=0)
    ev.add_argument("--out", default=None, help="where to write the plot and metrics (default: the checkpoint's folder)")
    ev.add_argument("--backend", default=None, choices=list(BACKENDS))

    sub.add_parser("gradcheck", help="gradient-accuracy study (sbnnumba.gradstudy); arguments passed on",
                   add_help=False)
    return parser


# ================================================================================= data
def load_data(spec, verbose=True):
    """``"auto"``, ``"embedded"`` or a directory -> Dataset (CLIError for a bad directory)."""
    from sbnnumba import datasets

    if spec in (None, "auto"):
        return datasets.load_fashion_mnist(None, embedded="auto", verbose=verbose)
    if spec == "embedded":
        return datasets.load_fashion_mnist(embedded="force", verbose=verbose)
    if not os.path.isdir(spec):
        raise CLIError(f"--data: directory not found: {spec}")
    try:
        return datasets.load_fashion_mnist(spec, embedded="never", verbose=verbose)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(f"--data: {exc}") from None


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


def report_test(metrics, out, label="test"):
    """Print the test metrics, save ``test_metrics.json`` and ``ensemble_accuracy.png`` in ``out``."""
    from sbnnumba.plots import plot_ensemble_curve
    from sbnnumba.fileio import atomic_write_text

    s = metrics["samples"]
    print(f"{label}: expected loss {metrics['loss']:.4f} | single-sample acc {_pct(metrics['acc1'])} | "
          f"{s}-sample ensemble acc {_pct(metrics['eacc'])} | deterministic acc {_pct(metrics['det_acc'])} "
          f"({metrics['n']} images)")
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= s] + ([s] if s not in (1, 2, 4, 8, 16, 32, 64, 128) else [])
    print("ensemble accuracy vs samples: " + ", ".join(f"{k}: {_pct(metrics['curve'][k - 1])}" for k in ks))
    doc = json.dumps(metrics, indent=1)
    paths = [atomic_write_text(os.path.join(out, "test_metrics.json"), doc),
             plot_ensemble_curve(metrics["curve"], os.path.join(out, "ensemble_accuracy.png"),
                                 title=f"{label} accuracy vs number of samples")]
    return paths


# ============================================================================== commands
def _lr_search_args(args):
    """Check the --lr-* options; return the search settings (None without --lr auto)."""
    given = [name for name, v in (("--lr-trials", args.lr_trials), ("--lr-trial-epochs", args.lr_trial_epochs),
                                  ("--lr-bounds", args.lr_bounds), ("--lr-trial-subset", args.lr_trial_subset))
             if v is not None]
    if args.lr != "auto":
        if given:
            raise CLIError(f"{', '.join(given)} only apply with --lr auto")
        return None
    return {"bounds": args.lr_bounds or [-6.0, 0.0], "max_trials": args.lr_trials or 10,
            "trial_epochs": args.lr_trial_epochs or 5, "trial_subset": args.lr_trial_subset}


def _resume_lr(out, train):
    """The learning rate (and the search record) stored in the checkpoint of the run in ``out``."""
    ck = train.load_checkpoint(os.path.join(out, train.CHECKPOINT_NAME))
    lr = ck.config.get("optimizer", {}).get("lr")
    if lr is None:
        raise CLIError(f"--lr auto --resume: the checkpoint in {out} records no learning rate")
    return float(lr), ck.config.get("metadata", {}).get("lr_search")


def cmd_train(args):
    from sbnnumba import train

    search = _lr_search_args(args)
    if args.resume and args.out is None:
        raise CLIError("--resume needs --out, the directory of the run to continue")
    out = args.out or _default_out(args.arch, args.estimator)
    if args.resume and not os.path.isfile(os.path.join(out, train.CHECKPOINT_NAME)):
        raise CLIError(f"--resume: no checkpoint in {out}")
    if not args.resume and os.path.isfile(os.path.join(out, train.CHECKPOINT_NAME)):
        raise CLIError(f"--out: {out} already holds a run ({train.CHECKPOINT_NAME}); pass --resume to continue it "
                       "or choose another output directory")
    if args.bn_gamma != 1.0 and not args.normalize:
        raise CLIError("--bn-gamma: sets the starting gamma of batch normalization; add --normalize")
    ds = load_data(args.data, verbose=not args.no_progress)
    ds = _subset(ds, args.train_subset, seed=1)
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
    try:
        net = train.build_network(args.arch, ds.x_train.shape[1:], ds.n_classes, seed=args.seed,
                                  backend=args.backend, **options)
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:
        raise CLIError(f"could not build the {args.arch} network: {exc}") from None
    n_tr = ds.y_train.shape[0]
    metadata = {"command": "train", "data": args.data, "train_subset": args.train_subset,
                "dataset": ds.name, "source": ds.source}
    common = dict(batch_size=args.batch_size, optimizer=args.optimizer, momentum=args.momentum,
                  nesterov=args.momentum > 0, schedule=args.schedule, clip_value=args.clip, seed=args.seed,
                  val_fraction=args.val_fraction, augment=args.augment, augment_pad=args.augment_pad,
                  data_init=not args.no_data_init)
    lr = args.lr
    if search is not None:
        metadata["lr"] = "auto"
        if args.resume:  # the search was done by the session that started the run: reuse its lr
            lr, record = _resume_lr(out, train)
            if record is not None:
                metadata["lr_search"] = record
            print(f"--lr auto: resuming with the learning rate {lr:.4g} stored in the checkpoint")
        else:
            b = search["bounds"]
            print(f"searching the learning rate for {args.estimator}: log10(lr) in [{b[0]:g}, {b[1]:g}], at most "
                  f"{search['max_trials']} trials of {search['trial_epochs']} epochs"
                  + (f" on {search['trial_subset']} training images" if search["trial_subset"] else ""), flush=True)
            try:
                found = train.search_lr(net, ds, estimator=args.estimator, **search, progress=True, **common)
            except (TypeError, ValueError) as exc:
                raise CLIError(f"--lr auto: {exc}") from None
            lr = found.lr
            metadata["lr_search"] = found.as_dict()
            from sbnnumba.fileio import atomic_write_text

            atomic_write_text(os.path.join(out, "lr_search.json"), json.dumps(metadata["lr_search"], indent=1))
            print(f"chosen learning rate: {lr:.4g} (mean training loss {found.score:.4f} over "
                  f"{search['trial_epochs']} epochs; {len(found.trials)} trials in {found.seconds:.1f} s)", flush=True)
    print(f"training {args.arch} {options} with {args.estimator} on {ds.name} ({n_tr} images, "
          f"{args.val_fraction:.0%} held out), {args.epochs} epochs, batch {args.batch_size}, {args.optimizer}"
          + (f" lr {lr:.4g}" if lr is not None else "") + f"; output in {out}")
    t0 = time.perf_counter()
    result = train.fit(net, ds, estimator=args.estimator, epochs=args.epochs, lr=lr, **common,
                       eval_samples=args.eval_samples, out=out, resume=args.resume, max_time=args.max_time,
                       progress=not args.no_progress, metadata=metadata)
    t_train = time.perf_counter() - t0
    metrics = train.evaluate(net, ds.x_test, ds.y_test, samples=args.eval_samples,
                             rng=np.random.default_rng([args.seed, 0x7E57]))
    metrics.update(epochs=result.epochs_done, train_seconds=t_train, dataset=ds.name)
    print(f"trained {result.epochs_done} epochs in {t_train:.1f} s ({result.stopped})")
    report_test(metrics, out)
    print(f"wrote {out}/: checkpoint.npz, history.csv, history.json, loss.png, accuracy.png, entropy.png, "
          "test_metrics.json, ensemble_accuracy.png" + (", lr_search.json" if search and not args.resume else ""))
    return 0


def cmd_evaluate(args):
    from sbnnumba import train

    try:
        ck = train.load_checkpoint(args.checkpoint)
        net = train.load_network(ck, backend=args.backend)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    data = args.data
    if data is None:
        trained_on = ck.config.get("data", {}).get("name")
        data = "embedded" if trained_on == "fashion-mnist-subset" else "auto"
    ds = load_data(data)
    t0 = time.perf_counter()
    metrics = train.evaluate(net, ds.x_test, ds.y_test, samples=args.samples, rng=args.seed)
    metrics.update(checkpoint=os.path.abspath(args.checkpoint), epoch=ck.epoch, dataset=ds.name,
                   seconds=time.perf_counter() - t0)
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    paths = report_test(metrics, out)
    print("wrote " + ", ".join(paths))
    return 0


def cmd_gradcheck(argv):
    import importlib

    try:
        gradstudy = importlib.import_module("sbnnumba.gradstudy")
    except ModuleNotFoundError as exc:
        if exc.name != "sbnnumba.gradstudy":
            raise
        raise CLIError("the gradient study module sbnnumba.gradstudy is not available in this installation")
    try:
        rc = gradstudy.main(list(argv))
    except SystemExit as exc:  # its argparse (--help, usage errors)
        rc = exc.code
    return 0 if rc is None else int(rc) if isinstance(rc, int) else 1


def main(argv=None):
    """Entry point; returns the exit status (0 ok, 1 training diverged, 2 usage/input error)."""
    from sbnnumba.train import CheckpointError, TrainingDiverged

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    prog = f"{PROG} {command}" if command in ("train", "evaluate", "gradcheck") else PROG
    try:
        if command == "gradcheck":
            return cmd_gradcheck(argv[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return 0 if exc.code is None else int(exc.code)
        runtime.retain_freed_memory()  # long array-heavy jobs: reuse freed pages (sbnnumba/runtime.py)
        return cmd_train(args) if args.command == "train" else cmd_evaluate(args)
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("SBNNUMBA_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the last completed epoch is kept in the checkpoint (continue with --resume)",
              file=sys.stderr)
        return 130
