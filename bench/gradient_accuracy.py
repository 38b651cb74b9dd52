"""Gradient-accuracy study of the PSA paper (spec psa.md 5.1): a thin wrapper of ``sbnnumba.gradstudy``.

Run:  python bench/gradient_accuracy.py --out results/gradient_accuracy [--epochs 1 100 2000] [--draws 20000]

Default configuration (epochs 100 and 2000, 20,000 draws of 9 estimators) takes a few minutes on
2 cores; see ``docs/experiments/2026-11-22-gradient-accuracy.md`` for the protocol and the results.
"""
import sys

from sbnnumba.gradstudy import main

if __name__ == "__main__":
    sys.exit(main())
