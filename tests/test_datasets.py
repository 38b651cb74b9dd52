"""Tests for sbnnumba.datasets: toy data, IDX reading, Fashion-MNIST discovery, utilities."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from sbnnumba import datasets as ds

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL = all(
    (REAL_DIR / f"{n}.gz").is_file()
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
)
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"Fashion-MNIST not installed in {REAL_DIR}")


# ------------------------------------------------------------------------------------------------
# naive IDX writer (the oracle for the reader)
# ------------------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    arr = np.asarray(arr)
    header = bytes([0, 0, codes[arr.dtype], arr.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_dir(d: Path, n_train=20, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        write_idx(d / (name + (".gz" if gz else "")), a, gz=gz)
    return arrays


# ------------------------------------------------------------------------------------------------
# toy2d
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [200, 7, 2])
def test_toy2d_properties(n):
    x, y = ds.toy2d(n, rng=3)
    assert x.shape == (n, 2) and x.dtype == np.float64
    assert y.shape == (n,) and y.dtype == np.int64
    assert (y == 1).sum() == n // 2 and (y == 0).sum() == n - n // 2
    assert np.all(np.abs(x[:, 0]) <= np.pi / 2)
    pos, neg = x[y == 1], x[y == 0]
    assert np.all((pos[:, 1] >= 0) & (pos[:, 1] <= 1))
    assert np.all(neg[:, 1] >= -1)
    assert np.all(neg[:, 1] < np.cos(neg[:, 0]))


def test_toy2d_reproducible_and_default_seed():
    a = ds.toy2d()
    b = ds.toy2d(200, rng=ds.TOY2D_DEFAULT_SEED)
    c = ds.toy2d(200, rng=np.random.default_rng(ds.TOY2D_DEFAULT_SEED))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], c[0])
    d = ds.toy2d(200, rng=2)
    assert not np.array_equal(a[0], d[0])
    # class -1 fills the cos region: some points above 0 and some below
    neg = a[0][a[1] == 0]
    assert (neg[:, 1] > 0).any() and (neg[:, 1] < 0).any()


def test_toy2d_bad_args():
    with pytest.raises(ValueError, match="n: expected"):
        ds.toy2d(1)
    with pytest.raises(TypeError, match="n: expected"):
        ds.toy2d(10.0)
    with pytest.raises(TypeError, match="rng"):
        ds.toy2d(10, rng="seed")


# ------------------------------------------------------------------------------------------------
# IDX
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    p = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a, gz=gz)
    b = ds.load_idx(p)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    np.testing.assert_array_equal(ds.load_idx(write_idx(tmp_path / "l", labels, gz=gz)), labels)


def test_idx_magic_numbers(tmp_path):
    raw = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    assert int.from_bytes(raw[:4], "big") == 0x00000803
    assert int.from_bytes(idx_bytes(np.zeros(4, np.uint8))[:4], "big") == 0x00000801


def test_idx_checksum(tmp_path):
    p = write_idx(tmp_path / "a.gz", np.arange(10, dtype=np.uint8), gz=True)
    good = hashlib.sha256(p.read_bytes()).hexdigest()
    np.testing.assert_array_equal(ds.load_idx(p, sha256=good), np.arange(10))
    with pytest.raises(ValueError, match="sha256"):
        ds.load_idx(p, sha256="0" * 64)


def test_idx_errors(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    raw = idx_bytes(a)
    # corrupt magic
    bad = tmp_path / "bad_magic"
    bad.write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match=r"bad_magic.*magic"):
        ds.load_idx(bad)
    # unknown type code
    bad_code = tmp_path / "bad_code"
    bad_code.write_bytes(b"\x00\x00\x07" + raw[3:])
    with pytest.raises(ValueError, match="type code"):
        ds.load_idx(bad_code)
    # truncated data
    trunc = tmp_path / "trunc"
    trunc.write_bytes(raw[:-7])
    with pytest.raises(ValueError, match=r"trunc.*truncated"):
        ds.load_idx(trunc)
    # truncated header
    trunc_h = tmp_path / "trunc_h"
    trunc_h.write_bytes(raw[:9])
    with pytest.raises(ValueError, match="header"):
        ds.load_idx(trunc_h)
    # wrong size: trailing bytes
    extra = tmp_path / "extra"
    extra.write_bytes(raw + b"\x00\x00")
    with pytest.raises(ValueError, match="trailing"):
        ds.load_idx(extra)
    # truncated gzip stream
    tgz = tmp_path / "t.gz"
    tgz.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match=r"t\.gz.*gzip"):
        ds.load_idx(tgz)
    # too short
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short"):
        ds.load_idx(short)
    with pytest.raises(FileNotFoundError):
        ds.load_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------
# discovery and loading
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_load_from_directory(tmp_path, gz, capsys):
    arrays = write_mnist_dir(tmp_path / "mn", gz=gz)
    files = ds.find_fashion_mnist(tmp_path / "mn")
    assert set(files) == {"train_images", "train_labels", "test_images", "test_labels"}
    d = ds.load_fashion_mnist(tmp_path / "mn")
    assert "using Fashion-MNIST from" in capsys.readouterr().out
    assert d.x_train.shape == (20, 1, 28, 28) and d.x_train.dtype == np.uint8
    assert d.y_train.dtype == np.int64 and d.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(d.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert d.name == "fashion-mnist" and str(tmp_path / "mn") in d.source


def test_env_var(tmp_path, monkeypatch, capsys):
    write_mnist_dir(tmp_path / "env", n_train=30, gz=False)
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "env"))
    d = ds.load_fashion_mnist(verbose=False)
    assert d.x_train.shape[0] == 30
    assert capsys.readouterr().out == ""
    # argument wins over the variable
    write_mnist_dir(tmp_path / "arg", n_train=40)
    assert ds.load_fashion_mnist(tmp_path / "arg", verbose=False).x_train.shape[0] == 40
    # a variable naming a missing directory is an error, naming the variable
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=ds.ENV_VAR):
        ds.find_fashion_mnist()


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ds.find_fashion_mnist(tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    write_idx(tmp_path / "partial" / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        ds.load_fashion_mnist(tmp_path / "partial", verbose=False)


def test_mismatched_counts(tmp_path):
    write_mnist_dir(tmp_path / "m", gz=False)
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="20 images but 5 labels"):
        ds.load_fashion_mnist(tmp_path / "m", verbose=False)


def test_fallback_modes(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ds.ENV_VAR, raising=False)
    monkeypatch.setattr(ds, "DEFAULT_DATA_DIRS", (tmp_path / "none",))
    assert ds.find_fashion_mnist() is None
    d = ds.load_fashion_mnist()
    assert d.name == "fashion-mnist-subset"
    assert "embedded" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="not found"):
        ds.load_fashion_mnist(embedded="never")
    with pytest.raises(ValueError, match="embedded: expected"):
        ds.load_fashion_mnist(embedded="yes")


@pytest.fixture(scope="module")
def embedded():
    return ds.load_fashion_mnist(embedded="force", verbose=False)


def test_embedded_subset(embedded):
    d = embedded
    assert d.x_train.shape == (10000, 1, 28, 28) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (2000, 1, 28, 28) and d.x_test.dtype == np.uint8
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(d.y_train, minlength=10), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(d.y_test, minlength=10), [200] * 10)
    assert d.n_classes == 10 and d.x_train.max() > 200  # real images, not blank
    assert ds.EMBEDDED_PATH.stat().st_size < 8_000_000


@needs_real
def test_real_files_and_embedded_is_subset(embedded, monkeypatch):
    monkeypatch.delenv(ds.ENV_VAR, raising=False)
    full = ds.load_fashion_mnist(REAL_DIR, embedded="never", verbose=False)
    assert full.x_train.shape == (60000, 1, 28, 28) and full.y_train.shape == (60000,)
    assert full.x_test.shape == (10000, 1, 28, 28) and full.y_test.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(full.y_train), [6000] * 10)
    with np.load(ds.EMBEDDED_PATH) as z:
        tr, te = z["train_index"], z["test_index"]
    np.testing.assert_array_equal(embedded.x_train, full.x_train[tr])
    np.testing.assert_array_equal(embedded.y_train, full.y_train[tr])
    np.testing.assert_array_equal(embedded.x_test, full.x_test[te])
    np.testing.assert_array_equal(embedded.y_test, full.y_test[te])
    # independent of the stored indices: every embedded test image occurs in the real test set
    real = {bytes(im) for im in full.x_test.reshape(10000, -1)}
    assert all(bytes(im) in real for im in embedded.x_test.reshape(2000, -1))


# ------------------------------------------------------------------------------------------------
# utilities
# ------------------------------------------------------------------------------------------------

def test_normalize():
    x = np.array([[0, 128, 255]], np.uint8)
    y = ds.normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0, 128 / 255, 1]], rtol=1e-7)
    assert ds.normalize(x, np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="uint8"):
        ds.normalize(x.astype(np.float32))
    with pytest.raises(TypeError, match="dtype"):
        ds.normalize(x, np.int32)


def test_train_val_split():
    x = np.arange(100).reshape(50, 2)
    y = np.arange(50)
    xt, yt, xv, yv = ds.train_val_split(x, y, 0.1, rng=1)
    assert len(yv) == 5 and len(yt) == 45
    np.testing.assert_array_equal(np.sort(np.concatenate([yt, yv])), y)
    np.testing.assert_array_equal(xt[:, 0], 2 * yt)
    again = ds.train_val_split(x, y, 0.1, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(again[3], yv)
    with pytest.raises(ValueError, match="val_fraction"):
        ds.train_val_split(x, y, 1.0, rng=1)
    with pytest.raises(ValueError, match="first dimension"):
        ds.train_val_split(x, y[:-1], 0.1, rng=1)


@pytest.mark.parametrize("drop_last", [False, True])
def test_minibatches_cover_once(drop_last):
    x = np.arange(23)[:, None] * np.ones((1, 3))
    y = np.arange(23)
    rng = np.random.default_rng(5)
    seen = []
    for xb, yb in ds.iterate_minibatches(x, y, 5, rng=rng, drop_last=drop_last):
        assert len(yb) == 5 or (not drop_last and len(yb) == 3)
        np.testing.assert_array_equal(xb[:, 0], yb)
        seen.append(yb)
    seen = np.concatenate(seen)
    assert len(seen) == (20 if drop_last else 23)
    assert len(np.unique(seen)) == len(seen)
    if not drop_last:
        np.testing.assert_array_equal(np.sort(seen), y)
        assert not np.array_equal(seen, y)  # shuffled
    # reproducible from the seed; successive epochs from one Generator differ
    a = np.concatenate([b for _, b in ds.iterate_minibatches(x, y, 5, rng=7)])
    b = np.concatenate([b for _, b in ds.iterate_minibatches(x, y, 5, rng=7)])
    np.testing.assert_array_equal(a, b)
    g = np.random.default_rng(7)
    e1 = np.concatenate([b for _, b in ds.iterate_minibatches(x, y, 5, rng=g)])
    e2 = np.concatenate([b for _, b in ds.iterate_minibatches(x, y, 5, rng=g)])
    np.testing.assert_array_equal(e1, a)
    assert not np.array_equal(e1, e2)


def test_minibatches_no_shuffle_and_errors():
    x, y = np.arange(7), np.arange(7)
    batches = [b for _, b in ds.iterate_minibatches(x, y, 3, shuffle=False)]
    assert [list(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.iterate_minibatches(x, y, 0))
    with pytest.raises(TypeError, match="rng"):
        next(ds.iterate_minibatches(x, y, 2, rng=np.random.RandomState(0)))


def test_augment_shapes_identity_and_flip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 3, 8, 10), dtype=np.uint8)
    out = ds.augment_flip_crop(x, rng=1)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(ds.augment_flip_crop(x, rng=1, pad=0, flip=False), x)
    # the same seed flips the same images: applying twice is the identity
    once = ds.augment_flip_crop(x, rng=3, pad=0)
    assert not np.array_equal(once, x)
    np.testing.assert_array_equal(ds.augment_flip_crop(once, rng=3, pad=0), x)
    # each image is either itself or its mirror
    flipped = np.all(once == x[..., ::-1], axis=(1, 2, 3))
    same = np.all(once == x, axis=(1, 2, 3))
    assert np.all(flipped | same)
    # reproducible; 3-D input accepted
    np.testing.assert_array_equal(ds.augment_flip_crop(x, rng=4), ds.augment_flip_crop(x, rng=4))
    assert ds.augment_flip_crop(x[:, 0], rng=4).shape == (16, 8, 10)


def test_augment_crop_matches_naive():
    rng = np.random.default_rng(2)
    x = rng.random((6, 2, 5, 7)).astype(np.float32)
    pad = 2
    out = ds.augment_flip_crop(x, rng=9, pad=pad, flip=True)
    g = np.random.default_rng(9)
    mask = g.random(6) < 0.5
    oy = g.integers(0, 2 * pad + 1, size=6)
    ox = g.integers(0, 2 * pad + 1, size=6)
    for i in range(6):
        im = x[i, :, :, ::-1] if mask[i] else x[i]
        padded = np.pad(im, ((0, 0), (pad, pad), (pad, pad)))
        np.testing.assert_array_equal(out[i], padded[:, oy[i]:oy[i] + 5, ox[i]:ox[i] + 7])
    with pytest.raises(ValueError, match="shape"):
        ds.augment_flip_crop(x[0, 0], rng=0)
    with pytest.raises(ValueError, match="pad"):
        ds.augment_flip_crop(x, rng=0, pad=-1)
