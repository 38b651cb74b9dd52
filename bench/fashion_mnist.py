"""Fashion-MNIST benchmark: train an MLP SBN and the paper-style all-conv SBN with several gradient
estimators under the same budget, then write the dated page ``docs/experiments/YYYY-MM-DD-results.md`` and the
curves under ``docs/figures/``.

Every (architecture, estimator) pair is trained by :func:`sbnnumba.training.fit` with the same settings
(data, split, init seed, optimizer, learning rate, batch size, epochs / time budget), validated after
every epoch (expected loss, single-sample, ensemble and deterministic accuracy) and finally tested on
the official test set (accuracy vs number of ensemble samples 1..``--test-samples``). Estimators that
are not registered in this installation are skipped with a message; a run that diverges is reported
as such (its last good checkpoint is still evaluated).

``--lr auto`` chooses each method's constant learning rate first by the PSA paper's search
(:func:`sbnnumba.training.search_lr`: bounded minimization over ``log10(lr)`` in [-6, 0], at most
``--lr-trials`` trainings of ``--lr-trial-epochs`` epochs from the same init, scored by the mean running
training loss); the trials are kept in ``results.json`` and in each run's config.

Runs are kept under ``--runs-dir`` (checkpoints, histories, per-run plots, ``results.json``); with
``--resume`` finished runs are reused and interrupted ones continue from their checkpoint;
``--report-only`` rewrites the report from ``results.json`` without training. ``--sharpen F`` continues
each finished run with its activation noise divided by ``F`` (``Network.scale_preactivations``) for
``--sharpen-epochs`` epochs and reports both the run and its continuation.

Cost on 2 CPU cores (batch 64, 54,000 training images per epoch, measured on an idle / a busy
machine): MLP 784-1024-1024-10: PSA 0.5-3 min per epoch, ST 0.15-1 min, the others about 0.2-1 min;
the paper's conv SBN (96-96-96-192x5 channels, 1x28x28 input): PSA 40-60 min per epoch, ST 17-37 min,
ST-hardtanh 12-30 min, REINFORCE 10-23 min, Concrete about 9 min, plus about 7 min of validation per
epoch (8,000 images x 10 samples) and about 30 min for the final test with 32 samples. Use
``--time-budget`` (seconds per run), ``--train-subset`` or fewer ``--test-samples`` for the conv network.

Examples
--------
Smoke test (about 8 minutes, most of it evaluating the paper-size conv network)::

    python bench/fashion_mnist.py --epochs 1 --train-subset 500 --test-subset 1000 --test-samples 8 \\
        --runs-dir /tmp/fm-bench --docs /tmp/fm-docs

The real benchmark (MLP: 1-3 hours for 5 estimators x 20 epochs; conv: one hour of training per
method plus evaluation)::

    python bench/fashion_mnist.py --archs mlp --epochs 20
    python bench/fashion_mnist.py --archs conv --epochs 100 --time-budget 3600
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402

try:
    import sbnnumba
except ImportError:  # run from a source checkout without installation
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import sbnnumba

from sbnnumba import architectures, datasets, plots, runtime, training  # noqa: E402
from sbnnumba.backends import backend_names  # noqa: E402
from sbnnumba.cli import bn_gamma_arg, library_log  # noqa: E402
from sbnnumba.fileio import atomic_write_text  # noqa: E402

DEFAULT_METHODS = "psa,st,st-hardtanh,concrete,reinforce"
METHOD_NOTES = {
    "psa": "path sample-analytic (PSA)",
    "st": "deep straight-through derived from PSA (2p(a))",
    "st-hardtanh": "ad-hoc ST with the hard-tanh derivative 1[|a| <= 1]",
    "concrete": "binary Concrete / Gumbel-softmax relaxation",
    "reinforce": "REINFORCE (score function), no baseline",
}


#: Settings that must not change when a benchmark is resumed (they change the runs' results).
SAME_ON_RESUME = ("data", "train_subset", "test_subset", "hidden", "channels", "input_padding", "normalize",
                  "bn_gamma", "noise", "batch_size", "optimizer", "lr", "lr_for", "schedule", "seed", "val_fraction",
                  "eval_samples", "train_eval_size", "test_samples", "augment", "augment_pad", "lr_trials",
                  "lr_trial_epochs", "lr_trial_subset")


def _int_list(text):
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _lr_overrides(items):
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--lr-for: expected METHOD=LR, got {item!r}")
        out[name] = _lr(value)
    return out


def _lr(text):
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive learning rate or 'auto', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive learning rate or 'auto', got {text!r}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="mlp,conv", help="comma-separated architectures")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated estimators")
    p.add_argument("--data", default="auto", help="'auto', 'embedded' or a directory with the IDX files")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (the same for every method)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training per run; a run stops after the epoch that passes it")
    p.add_argument("--train-subset", type=int, default=None, help="use only N training images (before the split)")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--hidden", type=_int_list, default=[1024, 1024], help="MLP hidden widths")
    p.add_argument("--channels", type=_int_list, default=[96, 96, 96, 192, 192, 192, 192, 192],
                   help="conv: the 8 channel counts (paper: 96,96,96,192,192,192,192,192)")
    p.add_argument("--input-padding", type=int, default=0,
                   help="conv: zero padding of the first stage (2: the paper's map sizes, as for 32x32 input)")
    p.add_argument("--normalize", action="store_true",
                   help="batch normalization before every binary activation (the paper's networks have none)")
    p.add_argument("--bn-gamma", type=bn_gamma_arg, default=1.0,
                   help="--normalize: starting gamma of the normalizations, or 'noise-std' (the activation "
                        "noise's standard deviation: pre-activations start with the noise's spread)")
    p.add_argument("--noise", default="logistic")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--schedule", default="constant", choices=["constant", "step", "cosine"],
                   help="learning-rate schedule over the --epochs of each run")
    p.add_argument("--lr", type=_lr, default=1e-3,
                   help="learning rate of every method, or 'auto': searched per method (sbnnumba.training.search_lr)")
    p.add_argument("--lr-trials", type=int, default=10, help="--lr auto: most trial trainings per method")
    p.add_argument("--lr-trial-epochs", type=int, default=5, help="--lr auto: epochs per trial")
    p.add_argument("--lr-trial-subset", type=int, default=None, help="--lr auto: train the trials on N images only")
    p.add_argument("--lr-for", action="append", metavar="METHOD=LR", help="per-method learning rate (repeatable)")
    p.add_argument("--seed", type=int, default=1, help="init and training seed (the same for every method)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--eval-samples", type=int, default=10, help="samples per image in validation")
    p.add_argument("--train-eval-size", type=int, default=2000,
                   help="training images evaluated after each epoch (train accuracy)")
    p.add_argument("--test-samples", type=int, default=32, help="largest ensemble on the test set")
    p.add_argument("--augment", action="store_true", help="random flip + padded crop of training batches")
    p.add_argument("--augment-pad", type=int, default=4, help="--augment: zero padding of the crop in pixels")
    p.add_argument("--sharpen", type=float, default=None, metavar="FACTOR",
                   help="after a run completes, multiply its pre-activations by FACTOR (activation noise / FACTOR, "
                        "Network.scale_preactivations) and train --sharpen-epochs more epochs; both are tested")
    p.add_argument("--sharpen-epochs", type=int, default=2, help="--sharpen: epochs of the continuation")
    p.add_argument("--sharpen-lr", type=float, default=None,
                   help="--sharpen: starting lr of the continuation's cosine schedule (default: the run's lr / 5)")
    p.add_argument("--runs-dir", default=os.path.join("runs", "fashion_mnist_bench"))
    p.add_argument("--docs", default="docs", help="documentation folder: the page goes to "
                   "DOCS/experiments/YYYY-MM-DD-results.md, the figures to DOCS/figures/")
    p.add_argument("--resume", action="store_true", help="reuse finished runs, continue interrupted ones")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: also continue the runs a --time-budget stopped, under this call's budget "
                        "(same trajectory as one uninterrupted run; lets a long run span several sessions)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from results.json")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--backend", default=None, choices=list(backend_names()),
                   help="kernel backend (default: $SBNNUMBA_BACKEND or cpu); 'cuda' trains PSA/ST runs of real-weight "
                        "networks device-resident (see docs/guide/gpu.md)")
    args = p.parse_args(argv)
    if args.extend and not args.resume:
        p.error("--extend continues runs of an earlier call: use it with --resume")
    if args.sharpen is not None and not (np.isfinite(args.sharpen) and args.sharpen > 0):
        p.error(f"--sharpen: expected a positive factor, got {args.sharpen!r}")
    if args.sharpen_epochs < 1:
        p.error(f"--sharpen-epochs: expected a positive int, got {args.sharpen_epochs!r}")
    if args.sharpen_lr is not None and not args.sharpen_lr > 0:
        p.error(f"--sharpen-lr: expected a positive learning rate, got {args.sharpen_lr!r}")
    return args


def machine_line():
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from common import machine_info

        info = machine_info(print_it=False)
        return (f"{info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy {info['numpy']}, "
                f"numba {info['numba']}")
    except Exception:  # the helper is optional
        return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
                f"Python {platform.python_version()}")


def run_one(args, ds, arch, method, results):
    key = f"{arch}-{method}"
    out = os.path.join(args.runs_dir, key)
    ckpt = os.path.join(out, training.CHECKPOINT_NAME)
    done = results.get(key, {})
    final = ("diverged",) if args.extend else ("time budget", "diverged")
    if args.resume and (done.get("status") in final
                        or (done.get("status") == "completed" and done.get("epochs", 0) >= args.epochs)):
        print(f"[{key}] reusing the finished run in {out}")
        return done
    # Calls of this script that trained the run: more than one when --extend continued it.
    calls = done.get("calls", 1) + 1 if args.resume and done.get("status") == "time budget" else 1
    options = {"noise": args.noise}
    options["hidden" if arch == "mlp" else "channels"] = args.hidden if arch == "mlp" else args.channels
    if arch == "conv" and args.input_padding:
        options["input_padding"] = args.input_padding
    if args.normalize:
        options["normalize"] = True
        if args.bn_gamma != 1.0:
            options["bn_gamma"] = args.bn_gamma
    net = architectures.build(arch, ds.x_train.shape[1:], ds.n_classes, rng=args.seed, backend=args.backend,
                              **options)
    lr = _lr_overrides(args.lr_for).get(method, args.lr)
    resume = args.resume and os.path.isfile(ckpt)
    if not resume and os.path.isfile(ckpt):
        raise SystemExit(f"{ckpt} exists: pass --resume to continue/reuse it, or choose another --runs-dir")
    lr_search = None
    if lr == "auto" and resume:  # searched when the run started: the checkpoint holds the chosen lr
        saved = training.load_checkpoint(ckpt).config
        lr, lr_search = float(saved["optimizer"]["lr"]), saved.get("metadata", {}).get("lr_search")
    elif lr == "auto":
        print(f"[{key}] searching the learning rate ({args.lr_trials} trials of {args.lr_trial_epochs} epochs)",
              flush=True)
        found = training.search_lr(net, ds, estimator=method, max_trials=args.lr_trials,
                                   trial_epochs=args.lr_trial_epochs, trial_subset=args.lr_trial_subset,
                                   batch_size=args.batch_size, optimizer=args.optimizer, seed=args.seed,
                                   val_fraction=args.val_fraction, augment=args.augment, augment_pad=args.augment_pad)
        lr, lr_search = found.lr, found.as_dict()
    print(f"[{key}] {arch} {options}, {method}, lr {lr:g}, {args.epochs} epochs"
          + (f", time budget {args.time_budget:g} s" if args.time_budget else "") + f" -> {out}", flush=True)
    row = {"arch": arch, "method": method, "lr": lr, "options": options, "out": out, "lr_search": lr_search,
           "calls": calls}
    t0 = time.perf_counter()
    try:
        res = training.fit(net, ds, estimator=method, epochs=args.epochs, batch_size=args.batch_size,
                           optimizer=args.optimizer, lr=lr, schedule=args.schedule, seed=args.seed,
                           val_fraction=args.val_fraction, augment=args.augment, augment_pad=args.augment_pad,
                           eval_samples=args.eval_samples,
                           train_eval_size=args.train_eval_size, out=out, resume=resume, max_time=args.time_budget,
                           progress=not args.no_progress, verbose=not args.no_progress,
                           metadata={"command": "bench/fashion_mnist.py", "lr_search": lr_search})
        history, row["status"] = res.history, res.stopped
    except training.TrainingDiverged as exc:
        print(f"[{key}] {exc}", flush=True)
        row.update(status="diverged", error=str(exc))
        if not os.path.isfile(ckpt):
            row["history"] = []
            return row
        ck = training.load_checkpoint(ckpt)
        history = ck.history
        net = training.load_network(ck)
    row["wall_seconds"] = time.perf_counter() - t0 + (done.get("wall_seconds", 0.0) if calls > 1 else 0.0)
    row["history"] = history
    row["epochs"] = len(history)
    row["seconds_per_epoch"] = float(np.mean([r["epoch_time"] for r in history])) if history else None
    m = row["test"] = test_metrics(args, ds, net)
    print(f"[{key}] test: loss {m['loss']:.4f}, acc1 {100 * m['acc1']:.2f}%, "
          f"ensemble({m['samples']}) {100 * m['eacc']:.2f}%, det {100 * m['det_acc']:.2f}% "
          f"({row['seconds_per_epoch'] or 0:.1f} s/epoch)", flush=True)
    return row


def test_metrics(args, ds, net):
    """Test metrics of ``net`` (accuracy vs samples 1..--test-samples), with the bench's fixed test seed."""
    x_te, y_te = ds.x_test, ds.y_test
    if args.test_subset:
        x_te, y_te = x_te[:args.test_subset], y_te[:args.test_subset]
    t1 = time.perf_counter()
    m = training.evaluate(net, x_te, y_te, samples=args.test_samples, rng=np.random.default_rng([args.seed, 0x7E57]))
    m["seconds"] = time.perf_counter() - t1
    return m


def run_sharpened(args, ds, row):
    """``--sharpen F``: continue the finished run ``row`` with its activation noise divided by ``F``.

    Loads the run's final checkpoint, multiplies every stage's pre-activation by ``F``
    (:meth:`sbnnumba.Network.scale_preactivations`: ``P(x = 1) = F_noise(F a)``), then trains
    ``--sharpen-epochs`` epochs with the same estimator, a fresh optimizer and a cosine schedule from
    ``--sharpen-lr``, shuffled with seed + 1 (same validation split), in ``<run>-sharpen<F>``, and
    tests the result. Resumable like the runs; changed continuation settings are refused.
    """
    settings = {"factor": args.sharpen, "epochs": args.sharpen_epochs,
                "lr": args.sharpen_lr if args.sharpen_lr is not None else row["lr"] / 5}
    key = f"{row['arch']}-{row['method']}"
    out = f"{row['out']}-sharpen{args.sharpen:g}"
    done = row.get("sharpened") or {}
    if done and done.get("settings") != settings:
        raise SystemExit(f"--sharpen: {key} was continued with other settings ({done.get('settings')} vs {settings}); "
                         "use the same settings or another --runs-dir")
    if done.get("status") == "completed":
        print(f"[{key}] reusing the sharpened continuation in {out}")
        return done
    ckpt = os.path.join(out, training.CHECKPOINT_NAME)
    resume = os.path.isfile(ckpt)
    if resume and not args.resume:
        raise SystemExit(f"{ckpt} exists: pass --resume to continue/reuse it, or choose another --runs-dir")
    net = training.load_network(os.path.join(row["out"], training.CHECKPOINT_NAME))
    if not resume:
        net.scale_preactivations(args.sharpen)
    print(f"[{key}] sharpened x{args.sharpen:g} (activation noise / {args.sharpen:g}), {args.sharpen_epochs} more "
          f"epochs, cosine from lr {settings['lr']:g} -> {out}", flush=True)
    res = training.fit(net, ds, estimator=row["method"], epochs=args.sharpen_epochs, batch_size=args.batch_size,
                       optimizer=args.optimizer, lr=settings["lr"], schedule="cosine", seed=args.seed + 1,
                       val_fraction=args.val_fraction, augment=args.augment, augment_pad=args.augment_pad,
                       data_init=False, eval_samples=args.eval_samples, train_eval_size=args.train_eval_size, out=out,
                       resume=resume, progress=not args.no_progress, verbose=not args.no_progress,
                       metadata={"command": "bench/fashion_mnist.py --sharpen", "sharpen": settings})
    m = test_metrics(args, ds, net)
    print(f"[{key}] sharpened x{args.sharpen:g}, test: loss {m['loss']:.4f}, acc1 {100 * m['acc1']:.2f}%, "
          f"ensemble({m['samples']}) {100 * m['eacc']:.2f}%, det {100 * m['det_acc']:.2f}%", flush=True)
    return {"settings": settings, "out": out,
            "status": "completed" if res.stopped == "already complete" else res.stopped, "history": res.history,
            "epochs": len(res.history), "test": m}


def _fmt(v, pct=False, digits=4):
    if v is None:
        return "-"
    return f"{100 * v:.2f}" if pct else f"{v:.{digits}f}"


def write_report(args, results, meta):
    figdir = os.path.join(args.docs, "figures")
    os.makedirs(figdir, exist_ok=True)
    lines = ["# Fashion-MNIST results", "",
             f"Generated by `python bench/fashion_mnist.py {' '.join(meta['argv'])}` on {meta['date']}.", "",
             f"Machine: {meta['machine']}.", "",
             "## Setup", "",
             f"* Data: {meta['data']} ({meta['n_train']} training images after the {args.val_fraction:.0%} "
             f"validation split, {meta['n_val']} validation, {meta['n_test']} test images).",
             f"* Budget, the same for every method: {args.epochs} epochs"
             + (f", at most {args.time_budget:g} s of training per run (checked at epoch ends)"
                if args.time_budget else "")
             + f"; batch {args.batch_size}; {args.optimizer} lr "
             + (f"{args.lr:g}" if args.lr != "auto" else
                f"searched per method (at most {args.lr_trials} trials of {args.lr_trial_epochs} epochs, "
                "log10(lr) in [-6, 0], mean running training loss; chosen lr in the table)")
             + (f" (overrides: {', '.join(args.lr_for)})" if args.lr_for else "")
             + (f", {args.schedule} schedule" if getattr(args, "schedule", "constant") != "constant" else "")
             + "".join(f" ({r['arch']}/{r['method']} trained over {r['calls']} calls continued with --extend, "
                       "each under the time budget)" for r in results.values() if r.get("calls", 1) > 1)
             + "; element-wise gradient clipping at 1e3; data-dependent init on the first batch; init and "
               f"training seed {args.seed}"
             + (f"; flip + crop augmentation (crop padding {args.augment_pad})" if args.augment else "") + ".",
             f"* MLP: 784-{'-'.join(map(str, args.hidden))}-10; conv: the PSA paper's all-conv SBN "
             f"(channels {','.join(map(str, args.channels))}, 1x28x28 input"
             + (f", first stage zero-padded by {args.input_padding}" if args.input_padding else "")
             + f"); {args.noise} noise"
             + ("; batch normalization before every binary activation" if args.normalize else "")
             + (f" (gamma starting at {args.bn_gamma})" if args.normalize and args.bn_gamma != 1.0 else "") + ".",
             "* Evaluation (every method alike): hard +-1 samples with the Rao-Blackwellized head; "
             f"validation after each epoch with {args.eval_samples} samples per image; test accuracy with "
             f"1 sample (mean over draws), the ensemble of {args.test_samples} samples (averaged softmax) and "
             "the deterministic sign network (zero noise). Expected loss = mean RB loss over the samples.",
             "* Time per epoch: training only (no evaluation), mean over the epochs.", ""]
    skipped = meta.get("skipped", [])
    for arch in meta["archs"]:
        rows = [r for r in results.values() if r["arch"] == arch]
        if not rows:
            continue
        lines += [f"## {arch}", "",
                  "| method | lr | status | epochs | s / epoch | train loss | val loss | val unit entropy (bits) "
                  "| test loss | test acc 1 sample (%) "
                  f"| test acc ensemble {args.test_samples} (%) | test acc deterministic (%) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            h = r.get("history") or [{}]
            t = r.get("test", {})
            lines.append(f"| {r['method']} | {r['lr']:.3g} | {r['status']} | {r.get('epochs', 0)} "
                         f"| {_fmt(r.get('seconds_per_epoch'), digits=1)} "
                         f"| {_fmt(h[-1].get('train_loss'))} | {_fmt(h[-1].get('val_loss'))} "
                         f"| {_fmt(h[-1].get('val_entropy'), digits=3)} | {_fmt(t.get('loss'))} "
                         f"| {_fmt(t.get('acc1'), True)} | {_fmt(t.get('eacc'), True)} "
                         f"| {_fmt(t.get('det_acc'), True)} |")
            s = r.get("sharpened")
            if s and s.get("test"):  # the --sharpen continuation of this run
                hs, ts, cfg = s["history"] or [{}], s["test"], s["settings"]
                epoch_time = float(np.mean([h["epoch_time"] for h in s["history"]])) if s["history"] else None
                lines.append(f"| {r['method']}, then pre-activations x{cfg['factor']:g} + {cfg['epochs']} epochs "
                             f"| {cfg['lr']:.3g} | {s['status']} | +{s.get('epochs', 0)} "
                             f"| {_fmt(epoch_time, digits=1)} "
                             f"| {_fmt(hs[-1].get('train_loss'))} | {_fmt(hs[-1].get('val_loss'))} "
                             f"| {_fmt(hs[-1].get('val_entropy'), digits=3)} | {_fmt(ts.get('loss'))} "
                             f"| {_fmt(ts.get('acc1'), True)} | {_fmt(ts.get('eacc'), True)} "
                             f"| {_fmt(ts.get('det_acc'), True)} |")
        lines.append("")
        hists = {r["method"]: r["history"] for r in rows if r.get("history")}
        curves = {r["method"]: r["test"]["curve"] for r in rows if r.get("test")}
        if hists:
            plots.plot_loss(hists, os.path.join(figdir, f"fashion_mnist_{arch}_loss.png"),
                            title=f"Fashion-MNIST, {arch}: loss")
            plots.plot_accuracy(hists, os.path.join(figdir, f"fashion_mnist_{arch}_accuracy.png"),
                                title=f"Fashion-MNIST, {arch}: accuracy",
                                keys={"train_acc1": ("train, 1 sample", "-"), "val_eacc": ("val, ensemble", "--")})
            plots.plot_entropy(hists, os.path.join(figdir, f"fashion_mnist_{arch}_entropy.png"),
                               title=f"Fashion-MNIST, {arch}: validation unit entropy")
            lines += [f"![{arch} loss](../figures/fashion_mnist_{arch}_loss.png)",
                      f"![{arch} accuracy](../figures/fashion_mnist_{arch}_accuracy.png)",
                      f"![{arch} unit entropy](../figures/fashion_mnist_{arch}_entropy.png)"]
        if curves:
            plots.plot_ensemble_curve(curves, os.path.join(figdir, f"fashion_mnist_{arch}_ensemble.png"),
                                      title=f"Fashion-MNIST, {arch}: test accuracy vs samples")
            lines.append(f"![{arch} ensemble](../figures/fashion_mnist_{arch}_ensemble.png)")
        lines.append("")
    lines += ["## Methods", ""] + [f"* `{m}`: {METHOD_NOTES.get(m, '')}" for m in meta["methods"]]
    if skipped:
        lines += ["", "Skipped (not registered in this installation): " + ", ".join(f"`{m}`" for m in skipped) + "."]
    diverged = [f"{r['arch']}/{r['method']}" for r in results.values() if r["status"] == "diverged"]
    if diverged:
        lines += ["", "Diverged (non-finite loss or gradient; the last good checkpoint is reported): "
                  + ", ".join(diverged) + "."]
    lines.append("")
    os.makedirs(os.path.join(args.docs, "experiments"), exist_ok=True)
    path = os.path.join(args.docs, "experiments", time.strftime("%Y-%m-%d") + "-results.md")
    text = "\n".join(lines)
    atomic_write_text(path, text)
    return path


def main(argv=None):
    args = parse_args(argv)
    runtime.retain_freed_memory()  # reuse the pages of freed temporaries (sbnnumba/runtime.py)
    with library_log():  # per-epoch lines (unless --no-progress) and lr-search trials
        return run(args, argv)


def run(args, argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    archs = [a for a in args.archs.split(",") if a]
    methods = [m for m in args.methods.split(",") if m]
    known = sbnnumba.known_methods()
    from sbnnumba.architectures import ARCHITECTURES

    for a in archs:
        if a not in ARCHITECTURES:
            raise SystemExit(f"--archs: unknown architecture {a!r}; known: {sorted(ARCHITECTURES)}")
    skipped = [m for m in methods if m not in known]
    for m in skipped:
        print(f"skipping estimator {m!r}: not registered in this installation (known: {', '.join(known)})")
    methods = [m for m in methods if m in known]
    os.makedirs(args.runs_dir, exist_ok=True)
    results_path = os.path.join(args.runs_dir, "results.json")
    results, meta = {}, {}
    if os.path.isfile(results_path) and (args.resume or args.report_only):
        with open(results_path) as f:
            saved = json.load(f)
        results, meta = saved["results"], saved["meta"]
        old = meta.get("settings", {})
        changed = [k for k in SAME_ON_RESUME if k in old and old[k] != vars(args)[k]]
        if args.resume and changed:
            raise SystemExit(f"--resume: {results_path} was produced with other settings ("
                             + ", ".join(f"{k}: {old[k]!r} vs {vars(args)[k]!r}" for k in changed)
                             + "); use the same settings or another --runs-dir")
    if args.report_only:
        if not results:
            raise SystemExit(f"--report-only: no results in {results_path}")
        for k, v in meta.get("settings", {}).items():  # describe the settings the runs used
            if k not in ("docs", "runs_dir", "report_only", "resume"):
                setattr(args, k, v)
        print("wrote " + write_report(args, results, meta))
        return 0

    ds = datasets.load_fashion_mnist(None if args.data in ("auto", "embedded") else args.data,
                                     embedded="force" if args.data == "embedded" else "auto")
    if args.train_subset and args.train_subset < ds.y_train.shape[0]:
        idx = np.sort(np.random.default_rng(1).choice(ds.y_train.shape[0], args.train_subset, replace=False))
        ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])
    n_val = int(round(args.val_fraction * ds.y_train.shape[0]))
    meta = {"argv": argv, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_line(),
            "data": f"{ds.name} ({ds.source})", "n_train": int(ds.y_train.shape[0] - n_val), "n_val": n_val,
            "n_test": int(min(args.test_subset or ds.y_test.shape[0], ds.y_test.shape[0])),
            "archs": archs, "methods": methods, "skipped": skipped, "settings": vars(args)}
    print(f"machine: {meta['machine']}")
    t0 = time.perf_counter()
    for arch in archs:
        for method in methods:
            row = results[f"{arch}-{method}"] = run_one(args, ds, arch, method, results)
            if args.sharpen is not None and row["status"] == "completed":
                doc = json.dumps(training.checkpoint.jsonable({"meta": meta, "results": results}), indent=1)
                atomic_write_text(results_path, doc)  # the finished run is saved before the continuation
                row["sharpened"] = run_sharpened(args, ds, row)
            doc = json.dumps(training.checkpoint.jsonable({"meta": meta, "results": results}), indent=1)
            atomic_write_text(results_path, doc)
    path = write_report(args, results, meta)
    print(f"benchmark done in {time.perf_counter() - t0:.0f} s; wrote {path} and {os.path.join(args.docs, 'figures')}/")
    for key, r in results.items():
        if r.get("seconds_per_epoch"):
            print(f"  {key}: {r['seconds_per_epoch']:.1f} s per epoch of {meta['n_train']} images "
                  f"-> {r['seconds_per_epoch'] * 54000 / meta['n_train'] / 60:.1f} min per full epoch (54,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
