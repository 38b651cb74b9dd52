"""Validation curves of a ``bench/binary_weights.py --pretrain-epochs N`` run, both phases in one figure.

Reads ``RUNS_DIR/{arch}-{i}-real/history.csv`` (real weights) and ``RUNS_DIR/{arch}-{i}/history.csv``
(Bernoulli weights) for each configuration index ``i`` and draws the validation ensemble and
deterministic accuracy over the epochs of both phases, with the conversion marked.

Usage: python bench/plot_binary_phases.py RUNS_DIR OUT.png [--arch conv] [--only 0,1,2,3] [--title T]
"""
import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from binary_weights import CONFIGS  # noqa: E402


def read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs_dir")
    p.add_argument("out")
    p.add_argument("--arch", default="conv", choices=["mlp", "conv"])
    p.add_argument("--only", default="0,1,2,3", help="comma-separated indices of binary_weights.CONFIGS")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    n_real = None
    for i in (int(s) for s in args.only.split(",")):
        base = os.path.join(args.runs_dir, f"{args.arch}-{i}")
        real, binary = read_history(base + "-real/history.csv"), read_history(base + "/history.csv")
        n_real = len(real)
        epochs = range(1, len(real) + len(binary) + 1)
        for ax, key in zip(axes, ("val_eacc", "val_det_acc")):
            ax.plot(epochs, [100 * float(r[key]) for r in real + binary], "o-", label=CONFIGS[i][0], color=f"C{i}")
    for ax, title in zip(axes, ("validation ensemble", "validation deterministic")):
        ax.axvline(n_real + 0.5, color="gray", ls=":")  # the conversion to Bernoulli weights
        ax.set_xlabel(f"epoch (1-{n_real}: real weights, then Bernoulli weights)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")  # the deterministic panel has room below its curves
    fig.suptitle(args.title or f"fully binary {args.arch}: real-weight phase, then binary weights")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
