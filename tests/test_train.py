"""Training loop, evaluation, checkpoints, plots and the command line (tiny sizes: < 1 min in all)."""
import glob
import json
import logging
import os
import sys

import numba
import numpy as np
import pytest
from kernel_checks import at_one_and_two_threads

import sbnnumba as sb
from sbnnumba import architectures, cli, datasets, plots, training
from sbnnumba.estimators import registry
from sbnnumba.estimators.exact import exact_expected_loss

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    """200 training and 200 test images of the embedded Fashion-MNIST subset (uint8, (N, 1, 28, 28))."""
    ds = datasets.load_embedded()
    return ds.x_train[:200], ds.y_train[:200], ds.x_test[:200], ds.y_test[:200]


def tiny_net(seed=1, hidden=(32,)):
    return architectures.build("mlp", (1, 28, 28), 10, rng=seed, hidden=list(hidden))


FIT = dict(epochs=2, batch_size=32, lr=3e-3, eval_samples=3, train_eval_size=100, progress=False, seed=5)


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------ fit
def test_fit_improves_loss_and_writes_files(tiny, tmp_path):
    x, y, _, _ = tiny
    net = tiny_net()
    res = training.fit(net, (x, y), **{**FIT, "epochs": 3}, out=tmp_path)
    h = res.history
    assert [r["epoch"] for r in h] == [1, 2, 3] and res.epochs_done == 3 and res.stopped == "completed"
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_loss"] < h[0]["val_loss"]
    for r in h:
        for k in ("val_acc1", "val_eacc", "val_det_acc", "train_acc1"):
            assert 0.0 <= r[k] <= 1.0
    for r in h:  # unit entropy (bits) of the validation samples: overall and per stage (one stage here)
        assert 0.0 < r["val_entropy"] < 1.0 and r["val_entropy.0"] == pytest.approx(r["val_entropy"])
        assert "train_entropy" not in r
    for name in ("checkpoint.npz", "history.csv", "history.json", "loss.png", "accuracy.png", "entropy.png"):
        assert (tmp_path / name).is_file(), name
    for name in ("loss.png", "accuracy.png", "entropy.png"):
        assert file_bytes(tmp_path / name)[:8] == PNG_MAGIC
    assert res.files["entropy_png"] == str(tmp_path / "entropy.png")
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and "val_eacc" in lines[0] and len(lines) == 4
    assert "val_entropy" in lines[0].split(",") and "val_entropy.0" in lines[0].split(",")
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["history"][-1]["val_loss"] == pytest.approx(h[-1]["val_loss"])
    assert doc["history"][-1]["val_entropy.0"] == pytest.approx(h[-1]["val_entropy.0"])
    assert [st["args"]["n_out"] for st in doc["config"]["network"]["stages"]] == [32]
    assert doc["config"]["optimizer"]["clip_value"] == 1e3 and doc["config"]["fit"]["epochs"] == 3
    assert not glob.glob(str(tmp_path / ".tmp-*"))
    # the checkpoint rebuilds the network exactly
    net2 = training.load_network(tmp_path / "checkpoint.npz")
    for k, p in net.params.items():
        np.testing.assert_array_equal(net2.params[k], p)


def test_fit_without_output_and_explicit_validation(tiny):
    x, y, xt, yt = tiny
    res = training.fit(tiny_net(), (x, y, xt[:50], yt[:50]), **{**FIT, "epochs": 1}, estimator="st")
    assert res.out is None and res.checkpoint is None and len(res.history) == 1
    assert "val_loss" in res.history[0]


def test_resume_is_bitwise_identical(tiny, tmp_path):
    x, y, _, _ = tiny
    a, b = tmp_path / "a", tmp_path / "b"
    net_a = tiny_net()
    res_a = training.fit(net_a, (x, y), **FIT, out=a, plots=False)
    training.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, out=b, plots=False)
    net_b = tiny_net(seed=99)  # parameters come from the checkpoint
    res_b = training.fit(net_b, (x, y), **FIT, out=b, resume=True, plots=False)
    for k, p in net_a.params.items():
        assert p.tobytes() == net_b.params[k].tobytes(), k
    ck_a, ck_b = training.load_checkpoint(a / "checkpoint.npz"), training.load_checkpoint(b / "checkpoint.npz")
    assert ck_a.epoch == ck_b.epoch == 2 and ck_a.rng_state == ck_b.rng_state
    assert ck_a.optimizer_state.keys() == ck_b.optimizer_state.keys()
    for k, v in ck_a.optimizer_state.items():
        assert np.array_equal(v, ck_b.optimizer_state[k]), k
    strip = [{k: v for k, v in r.items() if k not in training.TIMING_KEYS} for r in res_a.history]
    assert strip == [{k: v for k, v in r.items() if k not in training.TIMING_KEYS} for r in res_b.history]
    header = lambda d: (d / training.HISTORY_CSV).read_text().splitlines()[0]  # noqa: E731
    assert header(a) == header(b)  # the checkpointed history keeps its column order
    # resuming a finished run does nothing
    res_c = training.fit(tiny_net(), (x, y), **FIT, out=b, resume=True, plots=False)
    assert res_c.stopped == "already complete" and len(res_c.history) == 2


def _row_sums(a):
    out = np.zeros(a.shape[0])
    for i in numba.prange(a.shape[0]):
        out[i] = a[i].sum()
    return out


def test_epoch_time_says_how_much_was_compilation(tiny, monkeypatch, caplog):
    # an epoch that compiles a kernel (here: a new Numba function, never cached) records and shows the seconds of
    # compilation; an epoch that compiles nothing records 0 and says nothing of it
    x, y, _, _ = tiny
    real = training.Trainer.run_epoch

    def run_epoch(self, epoch):
        if epoch == 1:  # a fresh function: compiled here whatever the cache holds (a parallel loop: tenths of s)
            numba.njit(parallel=True)(_row_sums)(np.ones((4, 3)))
        return real(self, epoch)

    monkeypatch.setattr(training.Trainer, "run_epoch", run_epoch)
    with caplog.at_level(logging.INFO, logger="sbnnumba.training.fit"):
        res = training.fit(tiny_net(), (x, y), **FIT, plots=False)
    first, second = res.history
    assert 0.05 <= first["compile_time"] <= first["epoch_time"] and second["compile_time"] == 0.0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert "s of it compiling kernels, once: cached for later runs)" in lines[0] and "compiling" not in lines[1]


def test_resume_errors(tiny, tmp_path):
    x, y, _, _ = tiny
    with pytest.raises(FileNotFoundError):
        training.fit(tiny_net(), (x, y), **FIT, out=tmp_path / "none", resume=True)
    training.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, out=tmp_path, plots=False)
    with pytest.raises(FileExistsError, match="resume"):
        training.fit(tiny_net(), (x, y), **FIT, out=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        training.fit(tiny_net(), (x, y), **{**FIT, "batch_size": 16}, out=tmp_path, resume=True)
    with pytest.raises(ValueError, match="estimator"):
        training.fit(tiny_net(), (x, y), **FIT, estimator="no-such-method")


def test_fit_augment_pad_reaches_the_crop_and_is_checked_on_resume(tiny, tmp_path, monkeypatch):
    x, y, _, _ = tiny
    pads, crop = [], datasets.augment_flip_crop

    def recording_crop(xb, rng, pad=4, flip=True):
        pads.append(pad)
        return crop(xb, rng, pad=pad, flip=flip)

    monkeypatch.setattr(datasets, "augment_flip_crop", recording_crop)
    training.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, augment=True, augment_pad=2, out=tmp_path, plots=False)
    assert len(pads) == 6 and set(pads) == {2}  # 180 training images in batches of 32
    with pytest.raises(ValueError, match="augment_pad"):
        training.fit(tiny_net(), (x, y), **FIT, augment=True, augment_pad=3, out=tmp_path, resume=True, plots=False)
    with pytest.raises(ValueError, match="augment_pad: expected an integer >= 0"):
        training.fit(tiny_net(), (x, y), **FIT, augment=True, augment_pad=-1)


class _NaNAfter:
    """A test estimator: PSA for the first ``good`` calls, then a NaN loss or gradient."""

    def __init__(self, good, where, ckpt):
        self.calls, self.good, self.where, self.ckpt, self.snapshot = 0, good, where, ckpt, None

    def __call__(self, net, x, y, rng):
        self.calls += 1
        loss, grads = sb.estimate("psa", net, x, y, rng)
        if self.calls > self.good:
            self.snapshot = file_bytes(self.ckpt)  # the checkpoint as it is when things go wrong
            if self.where == "loss":
                loss = float("nan")
            else:
                grads["stages.0.weight"][0, 0] = np.inf
        return loss, grads


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_divergence_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch, where):
    x, y, _, _ = tiny
    steps_per_epoch = int(np.ceil(180 / FIT["batch_size"]))  # 200 images, 10 % validation
    fake = _NaNAfter(steps_per_epoch + 2, where, tmp_path / "checkpoint.npz")
    monkeypatch.setitem(registry.DIRECT_ESTIMATORS, "nan-after", (fake, {}))
    net = tiny_net()
    with pytest.raises(training.TrainingDiverged, match="epoch 2, step 3") as info:
        training.fit(net, (x, y), **{**FIT, "epochs": 3}, estimator="nan-after", out=tmp_path, plots=False)
    assert info.value.epoch == 2 and info.value.step == 3
    assert info.value.checkpoint == str(tmp_path / "checkpoint.npz")
    assert "last good checkpoint" in str(info.value)
    assert file_bytes(tmp_path / "checkpoint.npz") == fake.snapshot
    ck = training.load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.epoch == 1 and len(ck.history) == 1
    restored = training.load_network(ck)
    assert all(np.all(np.isfinite(p)) for p in restored.params.values())


# ---------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint_file(tiny, tmp_path_factory):
    x, y, _, _ = tiny
    out = tmp_path_factory.mktemp("ck")
    training.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, out=out, plots=False)
    return out / "checkpoint.npz"


def _rewrite(src, dst, drop=(), replace=None):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    arrays.update(replace or {})
    np.savez(dst, **arrays)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing", "version", "foreign", "no-params"])
def test_corrupt_checkpoint_is_a_clear_error(checkpoint_file, tmp_path, kind):
    bad = tmp_path / "bad.npz"
    data = file_bytes(checkpoint_file)
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"this is not a checkpoint" * 100)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "missing":
        _rewrite(checkpoint_file, bad, drop=("meta/config",))
    elif kind == "version":
        _rewrite(checkpoint_file, bad, replace={"meta/version": np.array(99)})
    elif kind == "foreign":
        np.savez(bad, a=np.zeros(3))
    else:
        with np.load(checkpoint_file) as z:
            _rewrite(checkpoint_file, bad, drop=[k for k in z.files if k.startswith("param/")])
    with pytest.raises(training.CheckpointError, match="bad.npz") as info:
        training.load_checkpoint(bad)
    expected = {"version": "version 99", "missing": "meta/config", "foreign": "not an sbnnumba checkpoint",
                "no-params": "no parameters"}.get(kind)
    if expected:
        assert expected in str(info.value)
    with pytest.raises(training.CheckpointError):
        training.evaluate(str(bad), np.zeros((2, 1, 28, 28), np.uint8), np.zeros(2, np.int64))


def test_checkpoint_with_wrong_shapes(checkpoint_file, tmp_path):
    bad = tmp_path / "shape.npz"
    _rewrite(checkpoint_file, bad, replace={"param/head.bias": np.zeros(3, np.float32)})
    with pytest.raises(training.CheckpointError, match="head.bias"):
        training.load_network(bad)


def test_interrupted_write_keeps_the_old_checkpoint(tiny, tmp_path, monkeypatch):
    x, y, _, _ = tiny
    real_savez, calls = np.savez, []

    def failing_savez(file, **arrays):
        calls.append(1)
        if len(calls) == 1:
            return real_savez(file, **arrays)
        file.write(b"PK\x03\x04 half-written")  # the temp file exists and holds a partial write
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="simulated"):
        training.fit(tiny_net(), (x, y), **FIT, out=tmp_path, plots=False)
    monkeypatch.setattr(np, "savez", real_savez)
    assert len(calls) == 2
    ck = training.load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.epoch == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "history.csv", "history.json"]


# ---------------------------------------------------------------------------------- evaluation
def test_evaluate_metrics(tiny):
    x, y, xt, yt = tiny
    net = tiny_net()
    m = training.evaluate(net, xt, yt, samples=5, rng=0, batch_size=64)
    assert m["n"] == 200 and m["samples"] == 5 and len(m["curve"]) == 5
    assert m["eacc"] == m["curve"][-1] and 0 <= m["acc1"] <= 1 and 0 <= m["det_acc"] <= 1
    assert m["loss"] > 0
    assert 0 < m["entropy"] < 1 and len(m["entropy_stages"]) == 1
    assert training.evaluate(net, xt, yt, samples=5, rng=0, batch_size=64) == m  # reproducible
    m2 = training.evaluate(net, xt, yt, samples=2, rng=0, rb=False, deterministic=False)
    assert m2["det_acc"] is None and len(m2["curve"]) == 2
    m3 = training.evaluate(net, xt, yt, samples=2, rng=0, entropy=False)
    assert m3["entropy"] is None and m3["entropy_stages"] is None
    with pytest.raises(ValueError, match="samples"):
        training.evaluate(net, xt, yt, samples=0)


def test_default_chunks_bound_the_patch_matrices():
    # forward-only passes chunk by Network.chunk_size: at most `most` examples, fewer where a stage's per-example
    # product operand (a conv stage's patch matrix H_out W_out x C_in kh kw) would make a chunk's pass CHUNK_BYTES
    from sbnnumba.network import CHUNK_BYTES, PREDICT_CHUNK
    from sbnnumba.training.evaluation import EVAL_CHUNK

    paper = architectures.build("conv", (1, 28, 28), 10, width=1.0, rng=1)  # stage 2: 24 x 24 x (96 x 3 x 3)
    assert paper.chunk_size((1, 28, 28), EVAL_CHUNK) == CHUNK_BYTES // (24 * 24 * 96 * 9 * 4) == 33
    assert tiny_net().chunk_size((784,), EVAL_CHUNK) == EVAL_CHUNK  # dense: 784 floats an example
    assert tiny_net().chunk_size((784,), PREDICT_CHUNK) == PREDICT_CHUNK
    cifar = architectures.build("conv", (3, 32, 32), 10, width=1.0, rng=1)  # stage 2: 28 x 28 x (96 x 3 x 3)
    assert cifar.chunk_size((3, 32, 32), EVAL_CHUNK) == CHUNK_BYTES // (28 * 28 * 96 * 9 * 4) == 24
    # the defaults are those chunks: the same results as passing them (a seed's draws depend on the chunk)
    net = architectures.build("conv", (1, 28, 28), 10, width=0.25, rng=1)  # 24 x 24 x (24 x 3 x 3) an example
    x = np.random.default_rng(0).random((140, 1, 28, 28), dtype=np.float32)
    y = np.arange(140) % 10
    chunk = net.chunk_size((1, 28, 28), EVAL_CHUNK)
    assert chunk == net.chunk_size((1, 28, 28), PREDICT_CHUNK) == CHUNK_BYTES // (24 * 24 * 24 * 9 * 4) == 134
    assert training.evaluate(net, x, y, samples=2, rng=3) == training.evaluate(net, x, y, samples=2, rng=3,
                                                                                batch_size=chunk)
    np.testing.assert_array_equal(net.predict_proba(x, samples=2, rng=3),
                                  net.predict_proba(x, samples=2, rng=3, batch_size=chunk))
    assert not np.array_equal(net.predict_proba(x, samples=2, rng=3),  # 140 examples in one chunk: other draws
                              net.predict_proba(x, samples=2, rng=3, batch_size=140))
    with pytest.raises(ValueError, match="batch_size"):
        training.evaluate(net, x, y, samples=2, rng=3, batch_size=0)
    with pytest.raises(ValueError, match="most"):
        net.chunk_size((1, 28, 28), 0)
    with pytest.raises(ValueError, match=r"x: expected a batch \(B, ...\) of inputs, got shape \(784,\)"):
        training.evaluate(tiny_net(), np.zeros(784, np.float32), np.zeros(784, np.int64))  # the default chunk's check


def test_evaluation_shows_progress_without_changing_results(tiny, capsys):
    # a labelled bar over the examples on stderr (tqdm), the same metrics as without; fit labels its validation
    x, y, xt, yt = tiny
    net = tiny_net()
    quiet = training.evaluate(net, xt, yt, samples=2, rng=0, batch_size=64)
    capsys.readouterr()
    assert training.evaluate(net, xt, yt, samples=2, rng=0, batch_size=64, progress="test images") == quiet
    err = capsys.readouterr().err
    assert "test images" in err and f"/{len(yt)}" in err
    training.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1, "progress": True}, plots=False)
    err = capsys.readouterr().err
    assert "epoch 1/1 validation" in err and "epoch 1/1 train eval" in err
    with pytest.raises(TypeError, match="progress: expected a label"):
        training.evaluate(net, xt, yt, samples=2, rng=0, progress=True)
    training.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, plots=False)  # progress=False: no bar
    assert "validation" not in capsys.readouterr().err


def test_rao_blackwellized_loss_is_unbiased():
    """The RB value averaged over many samples approaches the exact expected loss (enumeration)."""
    rng = np.random.default_rng(0)
    net = sb.Network.dense([3, 4, 3], 3, rng=rng, dtype=np.float64)
    for p in net.params.values():
        p[...] = rng.normal(size=p.shape)
    x = rng.normal(size=(4, 3))
    y = np.array([0, 1, 2, 1])
    exact = float(np.mean(exact_expected_loss(net, x, y)))
    m = training.evaluate(net, x, y, samples=4000, rng=1)
    assert m["loss"] == pytest.approx(exact, rel=0.03)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("n_classes", [1, 3, 10])
def test_rb_probabilities_and_loss_equal_the_flipped_heads(backend, dtype, tol, n_classes):
    """The RB head's probabilities and loss (from the backend's head differences) equal the mixture of every flipped
    head's softmax and loss computed one by one, within the dtype's rounding."""
    from sbnnumba import losses
    from sbnnumba.estimators import common, rbhead

    rng = np.random.default_rng(4)
    net = sb.Network.dense([5, 6, 7], n_classes, rng=rng, dtype=dtype, backend=backend)
    for p in net.params.values():
        p[...] = rng.normal(size=p.shape)
    x = rng.normal(size=(9, 5)).astype(dtype)
    y = rng.integers(0, max(n_classes, 2), 9)
    path = net.sample(x, rng)
    probs, loss = rbhead.probabilities_and_loss(net, path, y)
    w = rbhead.flip_weights(net, path).astype(np.float64)
    flipped = common.head_flip_logits(net, path).astype(np.float64)  # (B, N_L, K)
    logits = path.logits.astype(np.float64)
    p0, l0 = losses.probabilities(logits), losses.xent(logits, y, grad=False)
    want_p = (1 - w.sum(axis=1))[:, None] * p0 + np.einsum("bi,bik->bk", w, losses.probabilities(flipped))
    want_l = l0 + np.einsum("bi,bi->b", w, losses.xent(flipped, y[:, None], grad=False) - l0[:, None])
    assert probs.dtype == loss.dtype == dtype
    np.testing.assert_allclose(probs, want_p, rtol=0, atol=tol)
    np.testing.assert_allclose(loss, want_l, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------- unit entropy
def _bits(p):
    """H(p) in bits, the textbook formula (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log2(p), 0.0) + np.where(p < 1, -(1 - p) * np.log2(1 - p), 0.0)
    return t


@pytest.mark.parametrize("noise", sorted(sb.noise.NOISES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_entropy_values(noise, dtype):
    nz = sb.noise.get_noise(noise)
    a = np.array([0.0, 0.1, -0.3, 0.7, -0.95, 1.5, -2.5], dtype=dtype)
    h = training.unit_entropy(a, noise)
    assert h.dtype == dtype and h.shape == a.shape
    assert h[0] == pytest.approx(1.0, abs=1e-6)  # a fair coin at a = 0
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(h, _bits(nz.cdf(a.astype(np.float64))), atol=tol)
    np.testing.assert_allclose(h, training.unit_entropy(-a, noise), atol=tol)  # symmetric noise
    huge = np.array([60.0, -60.0, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf], dtype=dtype)
    hh = training.unit_entropy(huge, noise)
    assert np.all(np.isfinite(hh)) and np.all(hh >= 0) and np.all(hh < 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_entropy_kernel_and_log_cdf_fallback_agree(dtype):
    """The built-in families go through the Numba kernel (kernels/entropy.py); a family the kernels do not
    know (here a renamed triangular) through its log-cdf. Both give the same bits, keep the shape (also
    0-d and non-contiguous input) and let NaN through."""
    class RenamedTriangular(sb.noise.Triangular):
        name = "triangular-copy"

    a = np.random.default_rng(4).normal(scale=0.8, size=(3, 5, 4)).astype(dtype).transpose(2, 0, 1)
    a[0, 0, 0] = 0.0
    a[1, 1, 1] = 1.0  # the edge of the triangular support
    kernel, fallback = training.unit_entropy(a, "triangular"), training.unit_entropy(a, RenamedTriangular())
    assert kernel.shape == fallback.shape == a.shape and kernel.dtype == fallback.dtype == dtype
    np.testing.assert_allclose(kernel, fallback, atol=1e-6 if dtype == np.float32 else 1e-12)
    assert kernel[1, 1, 1] == 0 and kernel[0, 0, 0] == pytest.approx(1.0)
    assert training.unit_entropy(dtype(0.5), "normal").shape == ()
    half = training.unit_entropy(a.astype(np.float16), "triangular")  # computed in float64, returned as float16
    assert half.dtype == np.float16 and np.allclose(half, kernel, atol=2e-3)
    assert np.isnan(training.unit_entropy(np.array([np.nan], dtype), "logistic")[0])


def test_logistic_unit_entropy_closed_form_matches_the_log_cdf_formula():
    """The kernel's logistic branch (``H = q |a| + log1p(e)``, ``e = exp(-|a|)``) against the general
    log-cdf formula (a renamed Logistic is unknown to the kernel), from a fair coin out to |a| = 700,
    where q ~ 1e-304 and H ~ 1e-301 bits (relative agreement)."""
    class RenamedLogistic(sb.noise.Logistic):
        name = "logistic-copy"

    t = np.concatenate([[0.0], np.logspace(-8, np.log10(700.0), 400)])
    a = np.concatenate([t, -t])
    kernel, fallback = training.unit_entropy(a, "logistic"), training.unit_entropy(a, RenamedLogistic())
    np.testing.assert_allclose(kernel, fallback, rtol=1e-12, atol=0)
    assert kernel[0] == 1.0 and np.all(kernel > 0)
    assert training.unit_entropy(np.array([746.0, np.inf]), "logistic").tolist() == [0.0, 0.0]  # exp underflows


@pytest.mark.parametrize("noise", ["logistic", "normal", "uniform", "triangular"])
def test_unit_entropy_in_float32(noise):
    """Float32 units take the vectorized float32 pass (kernels/entropy.py): within 8 u relative of the float64 kernel
    (normal: (8 + 2 t^2) u, its tail's bound), from a fair coin out to the saturation (logistic |a| = 87, normal 12.7,
    uniform and triangular 1), 0 beyond, NaN kept, the same bits at one and two threads."""
    limit = {"logistic": 86.99, "normal": 12.69}.get(noise, 0.9999)
    t = np.concatenate([[0.0], np.logspace(-8, np.log10(limit), 4000)])
    a = np.concatenate([t, -t]).astype(np.float32)
    one, two = at_one_and_two_threads(lambda: training.unit_entropy(a, noise))
    assert one.dtype == np.float32 and one.tobytes() == two.tobytes()
    want = training.unit_entropy(a.astype(np.float64), noise)  # the scalar kernel in float64
    bound = (8 + 2 * np.float64(a) ** 2 if noise == "normal" else 8) * 2.0**-24
    keep = want > 0
    assert np.all(np.abs(one[keep] / want[keep] - 1) <= bound[keep] if noise == "normal" else
                  np.abs(one[keep] / want[keep] - 1) <= bound)
    assert np.all(one[~keep] == 0) and one[0] == pytest.approx(1.0, abs=4e-7)
    edges = np.array([limit + 0.02, -200.0, np.inf, -np.inf, np.nan], np.float32)
    got = training.unit_entropy(edges, noise)
    assert got[:4].tolist() == [0.0] * 4 and np.isnan(got[4])
    assert training.unit_entropy(np.float64(limit + 0.02), noise) < 2.0**-114


@pytest.mark.parametrize("normalize", [False, True])
def test_evaluate_entropy_matches_hand_computation(normalize):
    """Stage 0 sees the real input, so its pre-activations are known; stage 1 has zero weights, so its
    pre-activation is its bias (or beta with normalization) whatever the sampled states."""
    rng = np.random.default_rng(3)
    net = sb.Network.dense([3, 4, 2], 3, rng=rng, dtype=np.float64, normalize=normalize)
    w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=4)
    s0, s1 = (net.stages[0].layer, net.stages[1].layer) if normalize else (net.stages[0], net.stages[1])
    s0.weight[...], s0.bias[...] = w0, b0
    s1.weight[...], s1.bias[...] = 0.0, np.array([0.0, 2.0])
    x = rng.normal(size=(5, 3))
    y = np.array([0, 1, 2, 1, 0])
    a0 = x @ w0.T + b0
    a1 = np.broadcast_to(np.array([0.0, 2.0]), (5, 2))
    if normalize:  # evaluation uses the running statistics: the entropy must see the normalized values
        n0, n1 = net.stages
        n0.gamma[...], n0.beta[...] = [0.5, 2.0, 1.0, 3.0], [0.1, -0.2, 0.0, 1.0]
        n0.running["stochastic"] = (np.array([0.3, -1.0, 0.0, 2.0]), np.array([4.0, 0.25, 1.0, 9.0]))
        a0 = n0.gamma * (a0 - n0.running["stochastic"][0]) / np.sqrt(n0.running["stochastic"][1] + n0.eps) + n0.beta
        n1.beta[...] = [-1.0, 0.5]  # z = bias; default running stats (0, 1): a = z / sqrt(1 + eps) + beta
        a1 = np.broadcast_to(np.array([0.0, 2.0]) / np.sqrt(1 + n1.eps) + np.array([-1.0, 0.5]), (5, 2))
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    e0, e1 = _bits(sig(a0)).mean(), _bits(sig(a1)).mean()
    m = training.evaluate(net, x, y, samples=3, rng=0, batch_size=2)
    assert m["entropy_stages"] == pytest.approx([e0, e1], rel=1e-12)
    assert m["entropy"] == pytest.approx((20 * e0 + 10 * e1) / 30, rel=1e-12)  # mean over all 6 units
    # extreme pre-activations: a deterministic network has 0 bits, a zero one exactly 1 bit per unit
    for p in net.params.values():
        p[...] = 0.0
    if normalize:
        for n in net.stages:
            n.running["stochastic"] = (np.zeros(n.gamma.shape), np.ones(n.gamma.shape))
    assert training.evaluate(net, x, y, samples=2, rng=0)["entropy"] == pytest.approx(1.0)
    s0.bias[...], s1.bias[...] = 1e4, -1e4
    if normalize:
        for n in net.stages:
            n.beta[...] = -1e4
    assert training.evaluate(net, x, y, samples=2, rng=0)["entropy"] == 0.0


# ------------------------------------------------------------------------------------------ plots
def test_plots(tmp_path):
    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_acc1": 0.5 + 0.1 * e,
             "val_acc1": 0.4 + 0.1 * e, "val_eacc": 0.45 + 0.1 * e, "val_det_acc": None} for e in (1, 2, 3)]
    paths = [plots.plot_loss({"psa": hist, "st": hist[:2]}, tmp_path / "sub" / "l.png"),
             plots.plot_accuracy(hist, tmp_path / "a.png"),
             plots.plot_ensemble_curve({"psa": [0.5, 0.6, 0.65]}, tmp_path / "e.png"),
             *plots.plot_training_curves(hist, tmp_path, prefix="x-")]
    ent = [dict(r, **{"val_entropy": 0.5 / r["epoch"], "val_entropy.0": 0.6 / r["epoch"],
                      "val_entropy.1": 0.4 / r["epoch"]}) for r in hist]
    paths += [plots.plot_entropy(ent, tmp_path / "h.png"),
              plots.plot_entropy({"psa": ent, "st": hist}, tmp_path / "h2.png"),
              plots.plot_training_curves(ent, tmp_path, prefix="y-")[2]]
    assert paths[5].endswith("x-entropy.png") and paths[-1].endswith("y-entropy.png")
    for p in paths:
        assert file_bytes(p)[:8] == PNG_MAGIC
    assert not glob.glob(str(tmp_path / ".tmp-*"))


# ------------------------------------------------------------------------------------- lr search
SEARCH = dict(estimator="st", trial_epochs=1, batch_size=32, seed=5)


def test_search_lr_same_init_and_reproducible(tiny, caplog):
    x, y, _, _ = tiny
    net = tiny_net(hidden=(16,))
    before = {k: p.copy() for k, p in net.params.items()}
    with caplog.at_level("INFO", logger="sbnnumba.training.lr_search"):
        res = training.search_lr(net, (x, y), **SEARCH, max_trials=4)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lr search")]
    assert len(lines) == len(res.trials) and 1 <= len(res.trials) <= 4  # one line per trial
    for k, p in net.params.items():  # the network is left at its initial parameters
        np.testing.assert_array_equal(p, before[k])
    assert all(t.status == "ok" and np.isfinite(t.score) for t in res.trials)
    assert all(-6 <= t.log10_lr <= 0 and t.lr == pytest.approx(10 ** t.log10_lr) for t in res.trials)
    best = min(res.trials, key=lambda t: t.score)
    assert res.lr == best.lr and res.score == best.score and res.table[0] == (res.trials[0].lr, res.trials[0].score)
    # every trial started from the same point: training that init (data init included) with a recorded lr
    # reproduces the recorded score exactly, for the chosen lr and for the first trial
    for t in (best, res.trials[0]):
        net_t = tiny_net(hidden=(16,))
        fit = training.fit(net_t, (x, y), estimator="st", epochs=1, batch_size=32, seed=5, lr=t.lr, train_eval_size=0,
                           progress=False)
        assert fit.history[0]["train_loss"] == t.score
    # ... also when the search gets a factory; and on a subset of the training data
    sub = training.search_lr(lambda: tiny_net(hidden=(16,)), (x, y), **SEARCH, max_trials=2, trial_subset=50)
    assert sub.settings["trial_examples"] == 50 and len(sub.trials) <= 2
    doc = json.loads(json.dumps(res.as_dict()))
    assert doc["lr"] == res.lr and len(doc["trials"]) == len(res.trials) and doc["settings"]["bounds"] == [-6, 0]


def test_search_lr_never_exceeds_max_trials(tiny, monkeypatch):
    x, y, _, _ = tiny
    assert len(training.search_lr(tiny_net(hidden=(8,)), (x[:64], y[:64]), **SEARCH, max_trials=1).trials) == 1
    import scipy.optimize

    def greedy(fun, bounds, method, options):  # a minimizer that would ask for 25 points
        assert method == "bounded" and options["maxiter"] == 3
        for v in np.linspace(*bounds, 25):
            fun(v)

    monkeypatch.setattr(scipy.optimize, "minimize_scalar", greedy)
    res = training.search_lr(tiny_net(hidden=(8,)), (x[:64], y[:64]), **SEARCH, max_trials=3)
    assert len(res.trials) == 3 and [t.trial for t in res.trials] == [1, 2, 3]


class _NaNWhenLarge:
    """ST gradients, but a NaN loss once a parameter exceeds 5 in magnitude (a large lr blows up)."""

    def __call__(self, net, x, y, rng):
        loss, grads = sb.estimate("st", net, x, y, rng)
        if max(float(np.max(np.abs(p))) for p in net.params.values()) > 5:
            loss = float("nan")
        return loss, grads


def test_search_lr_survives_divergent_trials(tiny, monkeypatch):
    x, y, _, _ = tiny
    monkeypatch.setitem(registry.DIRECT_ESTIMATORS, "nan-when-large", (_NaNWhenLarge(), {}))
    opts = {**SEARCH, "estimator": "nan-when-large"}
    res = training.search_lr(tiny_net(hidden=(16,)), (x, y), **opts, bounds=(-4, 3), max_trials=6)
    status = [t.status for t in res.trials]
    assert "diverged" in status and "ok" in status and len(res.trials) <= 6
    first_bad = status.index("diverged")
    assert len(res.trials) > first_bad + 1  # the search went on after a diverged trial
    for t in res.trials:
        if t.status == "diverged":
            assert t.score == float("inf") and "diverged" in t.error and t.lr > 0.1
    assert np.isfinite(res.score) and res.lr < 1
    assert res.as_dict()["trials"][first_bad]["score"] is None  # JSON-able
    with pytest.raises(training.TrainingDiverged, match="all 2 trials diverged"):
        training.search_lr(tiny_net(hidden=(16,)), (x, y), **opts, bounds=(2, 3), max_trials=2)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bounds": (0, 0)}, ValueError, "bounds"),
    ({"bounds": (0, -6)}, ValueError, "bounds"),
    ({"bounds": (-6, np.inf)}, ValueError, "bounds"),
    ({"bounds": "x"}, ValueError, "bounds"),
    ({"max_trials": 0}, ValueError, "max_trials"),
    ({"trial_epochs": 0}, ValueError, "trial_epochs"),
    ({"trial_subset": 0}, ValueError, "trial_subset"),
    ({"xatol": 0}, ValueError, "xatol"),
    ({"lr": 0.1}, TypeError, "lr"),
    ({"epochs": 3}, TypeError, "epochs"),
    ({"estimator": "no-such-method"}, ValueError, "no-such-method"),
    ({"optimizer": sb.optim.Adam(lr=1e-3)}, ValueError, "by name"),
])
def test_search_lr_argument_errors(tiny, kwargs, error, match):
    x, y, _, _ = tiny
    with pytest.raises(error, match=match):
        training.search_lr(tiny_net(hidden=(8,)), (x, y), **{**SEARCH, **kwargs})


# -------------------------------------------------------------------------------------------- CLI
def test_cli_train_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", "embedded", "--train-subset", "200", "--hidden", "32", "--epochs", "1",
                   "--eval-samples", "3", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "test: expected loss" in captured.out
    for name in ("checkpoint.npz", "history.csv", "history.json", "loss.png", "accuracy.png",
                 "test_metrics.json", "ensemble_accuracy.png"):
        assert (out / name).is_file(), name
    ck = training.load_checkpoint(out / "checkpoint.npz")
    assert ck.config["metadata"]["architecture"]["options"]["hidden"] == [32]
    assert ck.config["network"]["stages"][0]["args"] == {"n_in": 784, "n_out": 32}
    assert ck.config["metadata"]["train_subset"] == 200

    rc = cli.main(["train", "--data", "embedded", "--train-subset", "200", "--hidden", "32", "--epochs", "2",
                   "--eval-samples", "3", "--out", str(out), "--no-progress", "--resume"])
    assert rc == 0, capsys.readouterr().err
    assert training.load_checkpoint(out / "checkpoint.npz").epoch == 2

    rc = cli.main(["evaluate", str(out / "checkpoint.npz"), "--samples", "4", "--out", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "embedded" in captured.out and "4-sample ensemble acc" in captured.out
    assert "test images" in captured.err  # its progress bar
    rc = cli.main(["evaluate", str(out / "checkpoint.npz"), "--samples", "4", "--out", str(tmp_path / "ev2"),
                   "--no-progress"])
    assert rc == 0 and "test images" not in capsys.readouterr().err
    metrics = json.loads((tmp_path / "ev" / "evaluate_metrics.json").read_text())
    assert metrics["n"] == 2000 and len(metrics["curve"]) == 4
    assert file_bytes(tmp_path / "ev" / "evaluate_ensemble_accuracy.png")[:8] == PNG_MAGIC


def test_cli_train_conv_input_padding_and_evaluate(tmp_path, capsys):
    out = tmp_path / "conv"
    rc = cli.main(["train", "--data", "embedded", "--train-subset", "128", "--arch", "conv",
                   "--channels", "2,2,2,4,4,4,4,4", "--input-padding", "2", "--epochs", "1", "--eval-samples", "2",
                   "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    ck = training.load_checkpoint(out / "checkpoint.npz")
    assert ck.config["metadata"]["architecture"]["options"]["input_padding"] == 2
    assert ck.config["network"]["stages"][0]["args"]["padding"] == [2, 2]
    rc = cli.main(["evaluate", str(out / "checkpoint.npz"), "--samples", "2", "--out", str(tmp_path / "ev")])
    assert rc == 0, capsys.readouterr().err
    assert training.load_network(ck).head.weight.shape == (10, 16)   # 4 channels x 2x2 maps


def test_cli_resume_takes_the_settings_left_out_from_the_checkpoint(tmp_path, capsys):
    # a run with many non-default settings, stopped after one epoch and resumed with no flag but --out and
    # --epochs, ends with the parameters and optimizer state of the same run trained without a stop
    flags = ["--data", "embedded", "--train-subset", "300", "--hidden", "16,8", "--noise", "triangular",
             "--estimator", "st", "--batch-size", "50", "--optimizer", "sgd", "--momentum", "0.5", "--lr", "0.05",
             "--schedule", "step", "--seed", "3", "--val-fraction", "0.2", "--augment", "--eval-samples", "2",
             "--no-progress"]
    assert cli.main(["train", *flags, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert cli.main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--epochs", "3", "--resume", "--quiet"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("--resume: continuing"))
    for part in ("--hidden 16,8", "--noise triangular", "--estimator st", "--optimizer sgd", "--momentum 0.5",
                 "--lr 0.05", "--schedule step", "--seed 3", "--val-fraction 0.2", "--augment given",
                 "--train-subset 300", "--data embedded"):
        assert part in line, (part, line)
    assert "--epochs" not in line  # given now
    a, b = (training.load_checkpoint(tmp_path / d / "checkpoint.npz") for d in ("run", "whole"))
    assert a.epoch == b.epoch == 3 and a.params.keys() == b.params.keys()
    for k in b.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    # a flag given now still has to agree with the run
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--epochs", "4", "--resume", "--seed", "1"]) == 2
    assert "--seed: checkpoint 3, now 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", "--hidden", "0"],
    ["train", "--hidden", "12,x"],
    ["train", "--arch", "no-such-arch"],
    ["train", "--arch", "conv", "--data", "embedded", "--input-padding", "-1"],
    ["train", "--estimator", "no-such-method"],
    ["train", "--epochs", "-1"],
    ["train", "--batch-size", "zero"],
    ["train", "--lr", "nan"],
    ["train", "--lr", "fast"],
    ["train", "--lr-trials", "3"],
    ["train", "--lr", "0.1", "--lr-trial-epochs", "2"],
    ["train", "--lr", "auto", "--lr-trials", "0"],
    ["train", "--lr", "auto", "--lr-bounds", "0,-6"],
    ["train", "--lr", "auto", "--lr-bounds", "1"],
    ["train", "--data", "MISSING"],
    ["train", "--resume"],
    ["train", "--no-such-flag"],
    ["evaluate", "MISSING"],
    ["evaluate", "GARBAGE"],
    ["frobnicate"],
    [],
])
def test_cli_errors_exit_2_with_one_line(argv, tmp_path, capsys):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"garbage")
    argv = [str(tmp_path / "missing") if a == "MISSING" else str(garbage) if a == "GARBAGE" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "Traceback" not in err


def test_cli_train_lr_auto_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", "embedded", "--train-subset", "200", "--hidden", "16", "--estimator", "st",
            "--eval-samples", "2", "--out", str(out), "--no-progress", "--lr", "auto"]
    rc = cli.main(base + ["--epochs", "1", "--lr-trials", "2", "--lr-trial-epochs", "1", "--lr-bounds=-4,-1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    trial_lines = [l for l in captured.out.splitlines() if l.startswith("lr search")]
    assert 1 <= len(trial_lines) <= 2 and "chosen learning rate" in captured.out
    search = json.loads((out / "lr_search.json").read_text())
    assert len(search["trials"]) == len(trial_lines) and search["settings"]["bounds"] == [-4, -1]
    assert search["settings"]["trial_epochs"] == 1 and -4 <= np.log10(search["lr"]) <= -1
    ck = training.load_checkpoint(out / "checkpoint.npz")
    assert ck.config["optimizer"]["lr"] == search["lr"] and ck.config["metadata"]["lr_search"] == search
    assert json.loads((out / "history.json").read_text())["config"]["metadata"]["lr_search"] == search
    assert (out / "entropy.png").is_file()
    # resuming does not search again: it trains on with the lr of the checkpoint (--lr auto and every other
    # setting taken from it)
    rc = cli.main(["train", "--out", str(out), "--epochs", "2", "--resume", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "lr search" not in captured.out and "stored in the checkpoint" in captured.out
    assert "--resume: continuing with the run's settings " in captured.out and "--lr auto" in captured.out
    ck = training.load_checkpoint(out / "checkpoint.npz")
    assert ck.epoch == 2 and ck.config["metadata"]["lr_search"] == search
    assert [r["lr"] for r in ck.history] == [search["lr"]] * 2


def test_cli_gradcheck_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sbnnumba.gradstudy", None)
    assert cli.main(["gradcheck", "--anything"]) == 2
    assert "sbnnumba.gradstudy" in capsys.readouterr().err


def test_cli_gradcheck_dispatches(monkeypatch, tmp_path):
    import types

    monkeypatch.chdir(tmp_path)  # its default --out, gradient_accuracy, is checked (and left uncreated) here
    seen = []
    fake = types.ModuleType("sbnnumba.gradstudy")
    fake.main = lambda argv, prog: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "sbnnumba.gradstudy", fake)
    assert cli.main(["gradcheck", "--a", "1"]) == 0 and seen == [["--a", "1"]]


def test_cli_help_exits_0(capsys):
    assert cli.main(["train", "--help"]) == 0
    assert "--estimator" in capsys.readouterr().out
