#!/usr/bin/env python3
"""Build the embedded Fashion-MNIST subset ``sbnnumba/data/fashion_mnist_subset.npz``.

A class-balanced subset of the REAL Fashion-MNIST files: by default 1,000 training images per class
(10,000) from ``train-*`` and 200 test images per class (2,000) from ``t10k-*``, chosen without
replacement with ``numpy.random.default_rng(seed)`` (seed 1). Within a split the chosen images keep
their original order (indices sorted ascending).

Usage (from the repository root)::

    python tools/make_embedded_subset.py                      # Debian's /usr/share/datasets/fashion-mnist
    python tools/make_embedded_subset.py --source DIR --seed 1 --out sbnnumba/data/fashion_mnist_subset.npz

Stored arrays (``np.savez_compressed``, no pickles):

- ``x_train`` uint8 (10000, 28, 28), ``y_train`` uint8 (10000,)
- ``x_test`` uint8 (2000, 28, 28), ``y_test`` uint8 (2000,)
- ``train_index`` / ``test_index`` int32: positions of the images in the official train / t10k files
- ``seed`` int64 scalar; ``source_files`` / ``source_sha256``: names and SHA-256 of the files read;
  ``description``: a one-line text.

The per-class draw: for class ``c = 0..9`` in order (train split first, then test),
``rng.choice(np.flatnonzero(labels == c), size=k, replace=False)``.
The output is written atomically (temporary file + rename).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sbnnumba.datasets import DEFAULT_DATA_DIRS, find_fashion_mnist, load_idx  # noqa: E402
from sbnnumba.fileio import atomic_write  # noqa: E402


def choose_balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of every class 0..9 (without replacement)."""
    chosen = []
    for c in range(10):
        pool = np.flatnonzero(labels == c)
        if pool.size < per_class:
            raise ValueError(f"class {c} has only {pool.size} examples, {per_class} requested")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def build(source: Path, out: Path, seed: int = 1, n_train: int = 1000, n_test: int = 200) -> Path:
    files = find_fashion_mnist(source)
    arrays = {role: load_idx(path) for role, path in files.items()}
    rng = np.random.default_rng(seed)
    tr = choose_balanced(arrays["train_labels"], n_train, rng)
    te = choose_balanced(arrays["test_labels"], n_test, rng)
    payload = dict(
        x_train=arrays["train_images"][tr].astype(np.uint8),
        y_train=arrays["train_labels"][tr].astype(np.uint8),
        x_test=arrays["test_images"][te].astype(np.uint8),
        y_test=arrays["test_labels"][te].astype(np.uint8),
        train_index=tr,
        test_index=te,
        seed=np.int64(seed),
        source_files=np.array([files[k].name for k in sorted(files)]),
        source_sha256=np.array(
            [hashlib.sha256(files[k].read_bytes()).hexdigest() for k in sorted(files)]
        ),
        description=np.array(
            f"Class-balanced subset of Fashion-MNIST: {n_train}/class train, {n_test}/class test, "
            f"numpy default_rng({seed}); built by tools/make_embedded_subset.py"
        ),
    )
    atomic_write(out, lambda f: np.savez_compressed(f, **payload))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_DATA_DIRS[0],
                    help="directory with the four Fashion-MNIST IDX files (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "sbnnumba" / "data" / "fashion_mnist_subset.npz")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-train-per-class", type=int, default=1000)
    ap.add_argument("--n-test-per-class", type=int, default=200)
    args = ap.parse_args(argv)
    out = build(args.source, args.out, args.seed, args.n_train_per_class, args.n_test_per_class)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
