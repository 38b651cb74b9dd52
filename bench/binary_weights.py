"""Fully binary networks on Fashion-MNIST: noise/proxy pairs, mirror descent vs SGD on eta, PSA vs ST.

Every configuration trains the same network (binary weights and activations everywhere except the
real input of the first stage and the real head; batch normalization before every binary activation)
with the same budget, then reports test accuracy in the three evaluation modes of spec st.md
section 6: single sample (mean over draws), ensemble of samples, deterministic (``sign(eta)``
weights, ``sign(a)`` activations, statistics re-estimated for that mode). Results go to the
dated page ``docs/experiments/YYYY-MM-DD-results-binary-<arch>.md`` and ``docs/figures/binary_*.png``.

Usage: python bench/binary_weights.py [--arch mlp] [--epochs 3] [--hidden 512,512] [--train-subset N]
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info  # noqa: E402

from sbnnumba import architectures, datasets, plots, runtime, training  # noqa: E402
from sbnnumba.backends import backend_names  # noqa: E402
from sbnnumba.cli import bn_gamma_arg  # noqa: E402
from sbnnumba.fileio import atomic_write_text  # noqa: E402
from sbnnumba.noise import NOISES  # noqa: E402
from sbnnumba.weights import matched_scale  # noqa: E402

# (label, estimator, estimator options, activation noise, weight noise, weight rule)
CONFIGS = [
    ("logistic + tanh(a/2)' (ST), MD", "st", {}, "logistic", "logistic", "md"),
    ("uniform + htanh' (ST), MD", "st", {}, "uniform", "uniform", "md"),
    ("triangular + ApproxSign' (ST), MD", "st", {}, "triangular", "triangular", "md"),
    ("normal + 2 phi (ST), MD", "st", {}, "normal", "normal", "md"),
    ("logistic (ST), SGD on eta", "st", {}, "logistic", "logistic", "latent"),
    ("logistic (PSA), MD", "psa", {}, "logistic", "logistic", "md"),
    ("logistic + identity ST (mismatch), MD", "st-identity", {}, "logistic", "logistic", "md"),
    ("logistic + htanh' (Hard ST mismatch), MD", "st-hardtanh", {}, "logistic", "logistic", "md"),
    ("deterministic-forward ST, MD", "st-deterministic", {}, "logistic", "logistic", "md"),
]

WEIGHTS_TEXT = {
    "bernoulli": "Binary weights (Bernoulli) in every stage and binary activations; real: the input of the "
                 "first stage and the head.",
    "hidden": "Binary weights (Bernoulli) in every stage but the first, binary activations; real: the first "
              "stage's weights and input, and the head.",
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mlp", choices=["mlp", "conv"])
    p.add_argument("--hidden", default="512,512")
    p.add_argument("--width", type=float, default=0.25, help="conv: channel multiplier")
    p.add_argument("--input-padding", type=int, default=0,
                   help="conv: zero padding of the first stage (2: the paper's map sizes, 2x2 last maps)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (latent weights and the rest)")
    p.add_argument("--schedule", default="constant", choices=["constant", "step", "cosine"],
                   help="learning-rate schedule over the whole run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=None,
                   help="ensemble size of the per-epoch validation (default: --test-samples)")
    p.add_argument("--train-eval-size", type=int, default=2000,
                   help="training images scored after each epoch")
    p.add_argument("--weights", default="bernoulli", choices=["bernoulli", "hidden"],
                   help="'bernoulli': binary weights in every stage (the first stage's input stays real); "
                        "'hidden': every stage but the first")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="first train the same network with real weights for N epochs, then convert it "
                        "(Network.to_bernoulli); without it eta ~ U[-1, 1]")
    p.add_argument("--eta-scale", type=float, default=3.0,
                   help="--pretrain-epochs / --init-from: eta = s W / std(W) with logistic weight noise; other "
                        "noises get the scale with the same P(w = sign W) at one std, F^-1(sigma(s)) "
                        "(sbnnumba.weights.matched_scale); see --eta-units")
    p.add_argument("--eta-units", default="logistic", choices=["logistic", "noise"],
                   help="'logistic': --eta-scale is s above, matched to the weight noise; 'noise': eta = s W / std(W) "
                        "directly in units of the weight noise (for triangular noise on [-1, 1], s = 2 leaves every "
                        "weight beyond std(W) / 2 deterministic, the matched s = 6 only those beyond 1.08 std(W))")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this trained real-weight network (e.g. a bench/fashion_mnist.py run) instead "
                        "of --pretrain-epochs: the architecture comes from the checkpoint; batch normalization "
                        "is added where it has none (Network.add_normalization, same function), then the "
                        "weights are converted (Network.to_bernoulli)")
    p.add_argument("--sharpen", type=float, default=None, metavar="FACTOR",
                   help="after the binary phase, --sharpen-steps times: multiply every stage's pre-activation by "
                        "FACTOR (batch-norm gamma and beta: activation noise / FACTOR, "
                        "Network.scale_preactivations), then train --sharpen-epochs epochs (cosine from "
                        "--sharpen-lr); tested before and after")
    p.add_argument("--sharpen-steps", type=int, default=1, help="--sharpen: how many times")
    p.add_argument("--sharpen-epochs", type=int, default=2, help="--sharpen: epochs after each step")
    p.add_argument("--sharpen-lr", type=float, default=None,
                   help="--sharpen: starting lr of each continuation's cosine schedule (default: --lr / 5)")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-samples", type=int, default=10)
    p.add_argument("--only", default=None, help="comma-separated indices of CONFIGS to run")
    p.add_argument("--runs-dir", default="runs/binary")
    p.add_argument("--docs", default="docs")
    p.add_argument("--bn-gamma", type=bn_gamma_arg, default=1.0,
                   help="starting gamma of the batch normalizations, or 'noise-std' (each configuration's "
                        "activation-noise std: the same signal-to-noise ratio for every noise)")
    p.add_argument("--backend", default=None, choices=list(backend_names()),
                   help="'cuda': psa/st configurations train device-resident (sbnnumba.training.resident)")
    args = p.parse_args(argv)
    runtime.retain_freed_memory()  # reuse the pages of freed temporaries (sbnnumba/runtime.py)
    if args.init_from and args.pretrain_epochs:
        p.error("--init-from and --pretrain-epochs: choose one way to start the latent weights")
    if args.init_from and args.bn_gamma != 1.0:
        p.error("--bn-gamma: with --init-from the normalizations are set to keep the checkpoint's function")
    if args.sharpen is not None and not (np.isfinite(args.sharpen) and args.sharpen > 0):
        p.error(f"--sharpen: expected a positive factor, got {args.sharpen!r}")
    if args.sharpen_steps < 1 or args.sharpen_epochs < 1:
        p.error("--sharpen-steps, --sharpen-epochs: expected positive ints")
    if args.sharpen_lr is not None and not args.sharpen_lr > 0:
        p.error(f"--sharpen-lr: expected a positive learning rate, got {args.sharpen_lr!r}")
    machine_info()
    ds = datasets.load_fashion_mnist()
    if args.train_subset:
        keep = np.random.default_rng(1).permutation(ds.y_train.shape[0])[:args.train_subset]
        ds.x_train, ds.y_train = ds.x_train[keep], ds.y_train[keep]
    x_test = datasets.normalize(ds.x_test)
    chosen = range(len(CONFIGS)) if args.only is None else [int(i) for i in args.only.split(",")]
    rows, histories = [], {}
    for idx in chosen:
        label, method, opts, noise, w_noise, rule = CONFIGS[idx]
        options = dict(noise=noise, weight_noise=w_noise, weight_grad=rule, normalize=True, bn_gamma=args.bn_gamma)
        if args.arch == "mlp":
            options["hidden"] = [int(h) for h in args.hidden.split(",")]
        else:
            options["width"] = args.width
            if args.input_padding:
                options["input_padding"] = args.input_padding
        out = os.path.join(args.runs_dir, f"{args.arch}-{idx}")
        t0 = time.perf_counter()
        if args.init_from:
            net = start_from_checkpoint(args, ds, noise)
        elif args.pretrain_epochs:  # real weights first
            real = {k: v for k, v in options.items() if k not in ("weight_noise", "weight_grad")}  # to_bernoulli's
            net = architectures.build(args.arch, ds.x_train.shape[1:], ds.n_classes, rng=1, weight="real",
                                      backend=args.backend, **real)
            fit_phase(args, net, ds, method, opts, args.pretrain_epochs, out + "-real")
        else:
            net = architectures.build(args.arch, ds.x_train.shape[1:], ds.n_classes, rng=1, weight=args.weights,
                                      backend=args.backend, **options)
        if args.init_from or args.pretrain_epochs:  # eta = s' W / std(W), s' from --eta-scale and --eta-units
            net.to_bernoulli(args.weights, scale=eta_scale(args, w_noise), noise=w_noise, grad=rule)
        result = fit_phase(args, net, ds, method, opts, args.epochs, out,
                           data_init=not (args.pretrain_epochs or args.init_from))
        stages = [(label, result.history)]
        if args.sharpen is not None:  # tested before the continuations too
            rows.append(test_row(args, net, x_test, ds, idx, label, CONFIGS[idx], t0))
            lr = args.sharpen_lr if args.sharpen_lr is not None else args.lr / 5
            for step in range(1, args.sharpen_steps + 1):
                step_out = f"{out}-sharpen{step}"
                if not os.path.exists(os.path.join(step_out, training.CHECKPOINT_NAME)):  # else fit resumes it
                    net.scale_preactivations(args.sharpen)
                stage_label = f"{label}, then noise / {args.sharpen:g}^{step}"
                res = fit_phase(args, net, ds, method, opts, args.sharpen_epochs, step_out, data_init=False, lr=lr,
                                schedule="cosine")
                stages.append((stage_label, res.history))
            label = stage_label
        rows.append(test_row(args, net, x_test, ds, idx, label, CONFIGS[idx], t0))
        histories[label] = [h for _, hist in stages for h in hist]
    write_report(args, ds, rows, histories)


def test_row(args, net, x_test, ds, idx, label, config, t0):
    """Test metrics of ``net`` in the three modes, as a row of the report (minutes since ``t0``)."""
    _, method, _, noise, w_noise, rule = config
    minutes = (time.perf_counter() - t0) / 60
    m = training.evaluate(net, x_test, ds.y_test, samples=args.test_samples, rng=0)
    print(f"[{idx}] {label}: single {100 * m['acc1']:.2f}% | ensemble({args.test_samples}) "
          f"{100 * m['eacc']:.2f}% | deterministic {100 * m['det_acc']:.2f}% | {minutes:.1f} min", flush=True)
    return dict(label=label, method=method, noise=noise, weight_noise=w_noise, rule=rule, acc1=m["acc1"],
                eacc=m["eacc"], det_acc=m["det_acc"], minutes=minutes)


def eta_scale(args, weight_noise):
    """The conversion scale s' of eta = s' W / std(W) for this weight noise (see --eta-units)."""
    return float(args.eta_scale) if args.eta_units == "noise" else matched_scale(args.eta_scale, weight_noise)


def checkpoint_architecture(ck):
    """``(name, options)`` of the network in a checkpoint: as recorded by the command line (or a version-1
    checkpoint), else read from its description (conv stages: ``"conv"`` with the channels, else ``"mlp"``
    with the hidden widths)."""
    recorded = ck.config.get("metadata", {}).get("architecture")
    if recorded is not None:
        return recorded["name"], recorded.get("options", {})
    stages = ck.config["network"]["stages"]
    if stages[0]["layer"] == "conv2d":
        return "conv", {"channels": [st["args"]["c_out"] for st in stages]}
    return "mlp", {"hidden": [st["args"]["n_out"] for st in stages]}


def start_from_checkpoint(args, ds, noise, calibration_images=2000):
    """The real-weight network of ``--init-from``, with batch normalization in front of every binary
    activation (added with the same function where missing, statistics from the first
    ``calibration_images`` training images: pixels only, no labels)."""
    ck = training.load_checkpoint(args.init_from)
    net = training.load_network(ck, backend=args.backend)
    name, _ = checkpoint_architecture(ck)
    if name != args.arch:
        raise SystemExit(f"--init-from: the checkpoint holds a {name!r} network, not --arch {args.arch!r}")
    if net.noise.name != noise:
        raise SystemExit(f"--init-from: the checkpoint's activation noise is {net.noise.name!r}; this "
                         f"configuration needs {noise!r}")
    if net.latent_layers():
        raise SystemExit("--init-from: the checkpoint already has Bernoulli weights; expected a real-weight network")
    x = datasets.normalize(ds.x_train[:calibration_images], dtype=net.dtype)
    return net.add_normalization(x, rng=np.random.default_rng(1))


def fit_phase(args, net, ds, method, opts, epochs, out, data_init=True, lr=None, schedule=None):
    """``training.fit`` with the bench's settings (``lr``, ``schedule``: overrides of --lr, --schedule),
    resuming from ``out`` if a checkpoint is there."""
    return training.fit(net, ds, estimator=method, estimator_options=opts, epochs=epochs,
                        lr=args.lr if lr is None else lr, data_init=data_init, schedule=schedule or args.schedule,
                        batch_size=args.batch_size, out=out,
                        resume=os.path.exists(os.path.join(out, training.CHECKPOINT_NAME)), progress=False,
                        eval_samples=args.eval_samples or args.test_samples, train_eval_size=args.train_eval_size,
                        plots=False)


def _gamma_text(bn_gamma):
    if bn_gamma == "noise-std":
        stds = ", ".join(f"{name} {family.std:.3g}" for name, family in NOISES.items())
        return f" (gamma starting at the activation noise's std: {stds})"
    return "" if bn_gamma == 1.0 else f" (gamma starting at {bn_gamma:g})"


def write_report(args, ds, rows, histories):
    os.makedirs(os.path.join(args.docs, "figures"), exist_ok=True)
    os.makedirs(os.path.join(args.docs, "experiments"), exist_ok=True)
    fig = os.path.join("figures", f"binary_{args.arch}_val_accuracy.png")
    plots.plot_accuracy(histories, os.path.join(args.docs, fig), title=f"fully binary {args.arch}: validation",
                        keys={"val_eacc": ("ensemble", "-"), "val_det_acc": ("deterministic", "--")})
    if args.init_from:  # the architecture is the checkpoint's
        arch_options = checkpoint_architecture(training.load_checkpoint(args.init_from))[1]
        size = ", ".join(f"{k} {v}" for k, v in arch_options.items() if k in ("hidden", "channels", "width",
                                                                             "input_padding"))
    else:
        size = args.hidden if args.arch == "mlp" else f"conv width {args.width}" + (
            f", first stage padded by {args.input_padding}" if args.input_padding else "")
    scale_text = (f"s = {args.eta_scale:g} in units of the weight noise" if args.eta_units == "noise" else
                  f"s = {args.eta_scale:g} for logistic weight noise, F^-1(sigma(s)) for the others")
    lines = [f"# Fully binary networks on Fashion-MNIST ({args.arch}, {size})", "",
             f"Data: {ds.name} ({ds.y_train.shape[0]} training images before the 10 % validation split, "
             f"{ds.y_test.shape[0]} test images). " + WEIGHTS_TEXT[args.weights] + " "
             + (f"Latent weights from a real-weight network trained first for {args.pretrain_epochs} epochs "
                f"(same estimator and settings), eta = s W / std(W) per output channel ({scale_text}, "
                "`Network.to_bernoulli`). " if args.pretrain_epochs else
                f"Latent weights from the trained real-weight network `{args.init_from}`, eta = s W / std(W) per "
                f"output channel ({scale_text}, `Network.to_bernoulli`), batch normalization added where it had "
                "none with the same function (`Network.add_normalization`). " if args.init_from else
                "Latent weights eta ~ U[-1, 1]. ")
             + "Batch normalization before each binary activation" + _gamma_text(args.bn_gamma)
             + f"; Adam lr {args.lr} ({args.schedule} schedule), "
             f"batch {args.batch_size}, {args.epochs} epochs, seed 1. Command: "
             "`python bench/binary_weights.py " + " ".join(sys.argv[1:]) + "`."
             + (f" Then, {args.sharpen_steps} time(s): every stage's pre-activation multiplied by {args.sharpen:g} "
                "(batch-norm gamma and beta; the activation noise divided by that relative to the signal, "
                f"`Network.scale_preactivations`) and {args.sharpen_epochs} more epochs with a fresh Adam, cosine "
                f"schedule from lr {args.sharpen_lr if args.sharpen_lr is not None else args.lr / 5:g}; each "
                "configuration is tested before and after." if args.sharpen is not None else ""), "",
             f"| configuration | estimator | single sample | ensemble ({args.test_samples}) | deterministic | "
             "train min |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | `{r['method']}` | {100 * r['acc1']:.2f} % | {100 * r['eacc']:.2f} % | "
                     f"{100 * r['det_acc']:.2f} % | {r['minutes']:.1f} |")
    lines += ["", f"![training curves](../{fig})", ""]
    path = os.path.join(args.docs, "experiments", f"{time.strftime('%Y-%m-%d')}-results-binary-{args.arch}.md")
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(os.path.join(args.runs_dir, f"{args.arch}-results.json"), json.dumps(rows, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
