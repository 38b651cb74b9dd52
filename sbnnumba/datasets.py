"""Datasets: the 2-D toy set of the PSA paper, Fashion-MNIST from IDX files, and data utilities.

Contents
--------
toy2d
    The two-class 2-D toy data of the PSA gradient-accuracy study (spec ``psa.md`` section 5.1).
load_idx, find_fashion_mnist, load_fashion_mnist, load_embedded, Dataset
    Fashion-MNIST (or any MNIST-format directory) read from IDX files, gzipped or not, with
    verification; falls back to a class-balanced subset of real Fashion-MNIST shipped with the
    package (``sbnnumba/data/fashion_mnist_subset.npz``, built by ``tools/make_embedded_subset.py``).
normalize, train_val_split, iterate_minibatches, augment_flip_crop
    Preprocessing, splitting, batching and the flip + crop augmentation of the paper's protocol.

Conventions
-----------
Images are kept as ``uint8`` arrays of shape ``(N, C, H, W)`` (batch first) and converted to floats in
``[0, 1]`` by :func:`normalize`; labels are ``int64``. Every function that samples takes ``rng``: a
``numpy.random.Generator`` or an ``int`` seed (a seed creates ``numpy.random.default_rng(seed)``), so
runs are reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import numpy.typing as npt

from .validation import as_generator, check_choice, check_int, check_real

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "DEFAULT_DATA_DIRS",
    "EMBEDDED_PATH",
    "ENV_VAR",
    "TOY2D_DEFAULT_SEED",
    "Dataset",
    "toy2d",
    "load_idx",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "load_embedded",
    "normalize",
    "train_val_split",
    "iterate_minibatches",
    "augment_flip_crop",
]

logger = logging.getLogger(__name__)

#: Seed used by :func:`toy2d` when ``rng`` is None.
TOY2D_DEFAULT_SEED = 1

#: Environment variable naming a directory with MNIST-format IDX files.
ENV_VAR = "SBNNUMBA_DATA"

#: Directories searched (in order) after the argument and the environment variable.
#: Debian's package ``dataset-fashion-mnist`` installs the four ``*.gz`` files in the first one.
DEFAULT_DATA_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)

#: The embedded class-balanced subset of real Fashion-MNIST.
EMBEDDED_PATH = Path(__file__).resolve().parent / "data" / "fashion_mnist_subset.npz"

#: Class names of Fashion-MNIST, index = label.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: Role -> accepted file names (first match wins; uncompressed names are tried first).
FASHION_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte", "train-images-idx3-ubyte.gz"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte", "train-labels-idx1-ubyte.gz"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte", "t10k-images-idx3-ubyte.gz"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------------------------------
# 2-D toy data
# --------------------------------------------------------------------------------------------------

def toy2d(n: int = 200, rng: None | int | np.random.Generator = None) -> tuple[np.ndarray, np.ndarray]:
    """Two-class 2-D toy data of the PSA paper (spec section 5.1), float64.

    Class +1 (``n // 2`` points, label 1): ``x1 ~ U(-pi/2, pi/2)``, ``x2 ~ U(0, 1)``.
    Class -1 (``n - n // 2`` points, label 0): ``x1 ~ U(-pi/2, pi/2)``, ``x2 ~ U(-1, 1)``,
    rejection-sampled until ``x2 < cos(x1)``. The classes overlap.

    Parameters
    ----------
    n : int, default 200
        Total number of points (>= 2).
    rng : numpy.random.Generator or int or None
        Source of randomness; None uses seed :data:`TOY2D_DEFAULT_SEED` (= 1).

    Returns
    -------
    x : ndarray, shape (n, 2), float64
        The first ``n // 2`` rows are class +1, the remaining rows class -1.
    y : ndarray, shape (n,), int64
        1 for class +1, 0 for class -1 (use ``2 * y - 1`` for +-1 targets).

    Notes
    -----
    The paper's original points were drawn with seed 1 of another framework's RNG; they cannot be
    reproduced bit-exactly with NumPy. This function is reproducible for a given NumPy seed.
    """
    n = check_int(n, "n", 2)
    g = as_generator(rng, default_seed=TOY2D_DEFAULT_SEED)
    n_pos = n // 2
    n_neg = n - n_pos
    pos = np.empty((n_pos, 2))
    pos[:, 0] = g.uniform(-np.pi / 2, np.pi / 2, size=n_pos)
    pos[:, 1] = g.uniform(0.0, 1.0, size=n_pos)
    # Rejection sampling, vectorized in chunks; the acceptance probability per draw is
    # (2 + pi) / (2 pi) ~ 0.82. Accepted points are kept in draw order.
    accepted = []
    have = 0
    while have < n_neg:
        m = max(2 * (n_neg - have), 16)
        x1 = g.uniform(-np.pi / 2, np.pi / 2, size=m)
        x2 = g.uniform(-1.0, 1.0, size=m)
        ok = x2 < np.cos(x1)
        chunk = np.stack([x1[ok], x2[ok]], axis=1)
        accepted.append(chunk)
        have += chunk.shape[0]
    neg = np.concatenate(accepted, axis=0)[:n_neg]
    x = np.concatenate([pos, neg], axis=0).astype(np.float64, copy=False)
    y = np.concatenate([np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)])
    return x, y


# --------------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------------

def load_idx(path: str | os.PathLike[str], sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian NumPy array, with verification.

    The format: 2 zero bytes, a type code byte (0x08 = uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a byte with the number of dimensions ``ndim``, ``ndim`` big-endian
    uint32 sizes, then the data in C order. MNIST images have magic ``0x00000803`` (uint8, 3-D),
    labels ``0x00000801`` (uint8, 1-D). Gzip is detected from the content (magic ``1f 8b``), not from
    the file name.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    sha256 : str, optional
        Expected SHA-256 hex digest of the file **as stored** (i.e. of the ``.gz`` bytes for a
        gzipped file). A mismatch raises ``ValueError``.

    Returns
    -------
    ndarray
        Shape from the header; dtype is the native-endian version of the IDX type (uint8 for MNIST).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Corrupt gzip stream, bad magic number, unknown type code, zero dimensions, or a data size that
        does not match the header (truncated file or trailing bytes), or a checksum mismatch. The
        message names the file and what is wrong.
    """
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"IDX file not found: {p}")
    raw = p.read_bytes()
    if sha256 is not None:
        if not isinstance(sha256, str):
            raise TypeError(f"sha256: expected a hex string or None, got {type(sha256).__name__}")
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256.strip().lower():
            raise ValueError(f"{p}: sha256 checksum mismatch: expected {sha256}, got {digest}")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{p}: corrupt or truncated gzip stream ({exc})") from None
    if len(raw) < 4:
        raise ValueError(f"{p}: file too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        magic = int.from_bytes(raw[:4], "big")
        raise ValueError(
            f"{p}: bad IDX magic number 0x{magic:08X} (expected 0x0000TTNN: two zero bytes, "
            "type code, number of dimensions; e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{p}: unknown IDX type code 0x{code:02X} (expected one of "
            f"{', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)})"
        )
    if ndim == 0:
        raise ValueError(f"{p}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{p}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{p}: file size does not match header: shape {shape} of {dtype.name} needs {expected} "
            f"bytes (decompressed), got {len(raw)} ({what})"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find_in_dir(d: Path, origin: str) -> dict[str, Path]:
    if not d.is_dir():
        raise FileNotFoundError(f"{origin}: data directory does not exist: {d}")
    found, missing = {}, []
    for role, names in FASHION_MNIST_FILES.items():
        for name in names:
            if (d / name).is_file():
                found[role] = d / name
                break
        else:
            missing.append(" or ".join(names))
    if missing:
        raise FileNotFoundError(
            f"{origin}: directory {d} lacks MNIST-format IDX files: " + "; ".join(missing)
        )
    return found


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path] | None:
    """Locate the four Fashion-MNIST (or any MNIST-format) IDX files.

    Search order: ``data_dir`` if given; else the environment variable ``SBNNUMBA_DATA`` if set; else
    :data:`DEFAULT_DATA_DIRS` (``/usr/share/datasets/fashion-mnist``, where Debian's package
    ``dataset-fashion-mnist`` installs the files). In each directory, for each file, the names
    ``train-images-idx3-ubyte``, ``train-images.idx3-ubyte`` and ``train-images-idx3-ubyte.gz`` (and
    likewise ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``) are
    accepted.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory to search (only this one when given).

    Returns
    -------
    dict or None
        ``{"train_images", "train_labels", "test_images", "test_labels"} -> Path``; None if neither an
        argument nor the environment variable was given and no default directory holds the files.

    Raises
    ------
    FileNotFoundError
        If an explicitly given directory (argument or environment variable) does not exist or lacks a
        file; the message names the directory and the missing names.
    """
    if data_dir is not None:
        return _find_in_dir(Path(os.fspath(data_dir)).expanduser(), "data_dir")
    env = os.environ.get(ENV_VAR)
    if env:
        return _find_in_dir(Path(env).expanduser(), f"environment variable {ENV_VAR}")
    for d in DEFAULT_DATA_DIRS:
        try:
            return _find_in_dir(d, "default location")
        except FileNotFoundError:
            continue
    return None


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """An image classification dataset held in memory.

    Attributes
    ----------
    x_train, x_test : ndarray, uint8, shape (N, 1, 28, 28)
    y_train, y_test : ndarray, int64, shape (N,)
    name : str
        ``"fashion-mnist"`` or ``"fashion-mnist-subset"``.
    source : str
        Where the data came from (directory or embedded file).
    classes : tuple of str
        Class names, index = label.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source: str
    classes: tuple = FASHION_MNIST_CLASSES

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"source={self.source!r})"
        )


def _check_pair(images: np.ndarray, labels: np.ndarray, what: str, where: str, n_classes: int = 10):
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{where}: expected {what} images of dtype uint8 with 3 dims (N, H, W), got "
                         f"{images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{where}: expected 1-D {what} labels, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{where}: expected as many {what} labels as images, got {images.shape[0]} images but "
                         f"{labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{where}: expected {what} labels in [0, {n_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")


def _say(msg: str, verbose: bool) -> None:
    if verbose:
        print(msg)
    else:
        logger.info(msg)


def load_embedded(path: str | os.PathLike[str] | None = None) -> Dataset:
    """Load the embedded class-balanced subset of real Fashion-MNIST.

    10,000 training images (1,000 per class) and 2,000 test images (200 per class) drawn with a fixed
    seed from the official files, stored as uint8 in ``sbnnumba/data/fashion_mnist_subset.npz``
    (built by ``tools/make_embedded_subset.py``). The file also stores ``train_index`` /
    ``test_index``: the positions of the chosen images in the official train / t10k files.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Another file with the same layout; default :data:`EMBEDDED_PATH`.

    Returns
    -------
    Dataset
        Images uint8 ``(N, 1, 28, 28)``, labels int64 (10,000 train / 2,000 test for the default file).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it lacks an array or holds arrays of the wrong shape, dtype or label range.
    """
    p = EMBEDDED_PATH if path is None else Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"embedded data file not found: {p} (build it with "
                                "tools/make_embedded_subset.py)")
    with np.load(p, allow_pickle=False) as z:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
        if missing:
            raise ValueError(f"{p}: embedded data file lacks arrays {sorted(missing)}")
        x_tr, y_tr, x_te, y_te = (np.asarray(z[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    x_tr = x_tr[:, None] if x_tr.ndim == 3 else x_tr
    x_te = x_te[:, None] if x_te.ndim == 3 else x_te
    for split, xs, ys in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if xs.ndim != 4 or xs.shape[1] != 1:
            raise ValueError(f"{p}: expected {split} images of shape (N, 1, H, W), got {xs.shape}")
        _check_pair(xs[:, 0], ys, split, str(p))
    return Dataset(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64),
                   name="fashion-mnist-subset", source=f"embedded subset {p}")


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, embedded: str = "auto",
                       verbose: bool = True) -> Dataset:
    """Load Fashion-MNIST (or any MNIST-format IDX directory), or the embedded subset.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory with the IDX files; see :func:`find_fashion_mnist` for the search order when None.
    embedded : {"auto", "force", "never"}
        ``"auto"``: use the full files if found, else the embedded subset (10,000 / 2,000 images);
        ``"force"``: always the embedded subset; ``"never"``: raise ``FileNotFoundError`` if no full
        copy is found. An explicitly given directory (argument or ``SBNNUMBA_DATA``) that does not
        hold the files raises ``FileNotFoundError`` in every mode except ``"force"``.
    verbose : bool
        Print one line saying which data is in use (otherwise it goes to the module logger).

    Returns
    -------
    Dataset
        Images uint8 ``(N, 1, 28, 28)``, labels int64; 60,000 / 10,000 for the full set.
    """
    check_choice(embedded, "embedded", ("auto", "force", "never"))
    if embedded == "force":
        ds = load_embedded()
        _say(f"sbnnumba: using the embedded Fashion-MNIST subset ({len(ds.y_train)} train / "
             f"{len(ds.y_test)} test images)", verbose)
        return ds
    files = find_fashion_mnist(data_dir)
    if files is None:
        if embedded == "never":
            raise FileNotFoundError(
                "Fashion-MNIST IDX files not found: pass data_dir, set the environment variable "
                f"{ENV_VAR}, or install them in {DEFAULT_DATA_DIRS[0]} (Debian package "
                "dataset-fashion-mnist)"
            )
        ds = load_embedded()
        _say(f"sbnnumba: full Fashion-MNIST not found; using the embedded subset "
             f"({len(ds.y_train)} train / {len(ds.y_test)} test images)", verbose)
        return ds
    arrays = {role: load_idx(path) for role, path in files.items()}
    directory = files["train_images"].parent
    for split in ("train", "test"):
        imgs, labs = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_pair(imgs, labs, split, str(directory))
    ds = Dataset(
        x_train=arrays["train_images"][:, None],
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=arrays["test_images"][:, None],
        y_test=arrays["test_labels"].astype(np.int64),
        name="fashion-mnist",
        source=str(directory),
    )
    _say(f"sbnnumba: using Fashion-MNIST from {directory} ({len(ds.y_train)} train / "
         f"{len(ds.y_test)} test images)", verbose)
    return ds


# --------------------------------------------------------------------------------------------------
# utilities
# --------------------------------------------------------------------------------------------------

def normalize(x_uint8: npt.ArrayLike, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """Scale uint8 pixels to ``[0, 1]``: ``x / 255`` in ``dtype`` (float32 by default).

    The result lies on the grid ``q / 255``, ``q`` in ``{0, ..., 255}`` (what
    :func:`sbnnumba.bitpack.pack_planes` reads back with ``scale=1/255``).

    Parameters
    ----------
    x_uint8 : array_like of uint8, any shape
        Pixels.
    dtype : floating dtype, default float32
        Dtype of the result.

    Returns
    -------
    ndarray, same shape as ``x_uint8``, of ``dtype``

    Raises
    ------
    TypeError
        If ``x_uint8`` is not uint8 or ``dtype`` is not floating.
    """
    x = np.asarray(x_uint8)
    if x.dtype != np.uint8:
        raise TypeError(f"x_uint8: expected dtype uint8, got {x.dtype}")
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype (float32 or float64), got {dt}")
    return x.astype(dt) / dt.type(255)


def _check_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 1:
        raise ValueError(f"x: expected a batch dimension, got shape {x.shape}")
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y: expected the same first dimension as x ({x.shape[0]}), got shape {y.shape}")
    return x, y


def train_val_split(x: npt.ArrayLike, y: npt.ArrayLike, val_fraction: float,
                    rng: None | int | np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random split into training and validation parts.

    ``n_val = round(val_fraction * N)`` examples chosen uniformly without replacement (a permutation
    from ``rng``) go to validation, the rest (in permuted order) to training.

    Parameters
    ----------
    x : array_like, shape (N, ...)
        Inputs.
    y : array_like, shape (N, ...)
        Labels (or any per-example values).
    val_fraction : float
        In ``[0, 1)``.
    rng : None, int or numpy.random.Generator
        Draws the permutation.

    Returns
    -------
    x_train : ndarray, shape (N - n_val, ...)
    y_train : ndarray, shape (N - n_val, ...)
    x_val : ndarray, shape (n_val, ...)
    y_val : ndarray, shape (n_val, ...)
    """
    x, y = _check_xy(x, y)
    val_fraction = check_real(val_fraction, "val_fraction", 0.0, 1.0, high_open=True)
    g = as_generator(rng)
    n = x.shape[0]
    n_val = int(round(float(val_fraction) * n))
    perm = g.permutation(n)
    val, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[val], y[val]


def iterate_minibatches(x: npt.ArrayLike, y: npt.ArrayLike, batch_size: int,
                        rng: None | int | np.random.Generator = None, shuffle: bool = True,
                        drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)`` pairs covering the data once (one epoch).

    With ``shuffle=True`` the order is a permutation drawn from ``rng`` (a Generator is advanced, so
    successive epochs differ; an int seed gives the same order each call; None draws a fresh,
    non-reproducible seed). ``drop_last=True`` drops a final incomplete batch.

    Parameters
    ----------
    x : array_like, shape (N, ...)
        Inputs.
    y : array_like, shape (N, ...)
        Labels.
    batch_size : int
        Examples per batch (>= 1).
    rng : None, int or numpy.random.Generator
        Draws the order (with ``shuffle``).
    shuffle : bool
        Visit the examples in a random order (else in order).
    drop_last : bool
        Drop the last batch when it has fewer than ``batch_size`` examples.

    Yields
    ------
    x_batch : ndarray, shape (b, ...)
        ``b = batch_size`` except possibly for the last batch.
    y_batch : ndarray, shape (b, ...)
    """
    x, y = _check_xy(x, y)
    batch_size = check_int(batch_size, "batch_size", 1)
    n = x.shape[0]
    if shuffle:
        idx = as_generator(rng).permutation(n)
    else:
        idx = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if idx is None:
            yield x[start:end], y[start:end]
        else:
            sel = idx[start:end]
            yield x[sel], y[sel]


def augment_flip_crop(x: npt.ArrayLike, rng: int | np.random.Generator, pad: int = 4, flip: bool = True) -> np.ndarray:
    """Random horizontal flip, then random crop of the original size from a zero-padded image.

    For each image independently: with probability 1/2 (if ``flip``) reverse the last axis; then pad
    ``pad`` zeros on each side of the last two axes and cut a window of the original ``(H, W)`` at a
    uniform offset ``(oy, ox) in {0..2 pad}^2``. Vectorized (one gather for the whole batch).

    Parameters
    ----------
    x : ndarray, shape (B, C, H, W) or (B, H, W)
        Any dtype; the result has the same shape and dtype (a new array).
    rng : numpy.random.Generator or int
        Draws, in order: ``B`` flip decisions (only if ``flip``), then ``B`` row and ``B`` column
        offsets.
    pad : int, default 4
        Zero padding on each side before cropping (the largest shift).
    flip : bool, default True
        Whether to flip at random.

    Returns
    -------
    ndarray, same shape and dtype as ``x``
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"x: expected shape (B, C, H, W) or (B, H, W), got {x.shape}")
    pad = check_int(pad, "pad", 0)
    g = as_generator(rng)
    squeeze = x.ndim == 3
    x4 = x[:, None] if squeeze else x
    b, c, h, w = map(int, x4.shape)  # ints, so the typed Generator calls return arrays
    if flip:
        mask = g.random(b) < 0.5
        x4 = np.where(mask[:, None, None, None], x4[..., ::-1], x4)
    oy = g.integers(0, 2 * pad + 1, size=b)
    ox = g.integers(0, 2 * pad + 1, size=b)
    if pad == 0:
        out = np.array(x4, copy=True)
    else:
        padded = np.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=x4.dtype)
        padded[:, :, pad:pad + h, pad:pad + w] = x4
        rows = oy[:, None] + np.arange(h)  # (B, H)
        cols = ox[:, None] + np.arange(w)  # (B, W)
        out = padded[
            np.arange(b)[:, None, None, None],
            np.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    return out[:, 0] if squeeze else out
