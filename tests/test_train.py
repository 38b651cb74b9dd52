"""Training loop, evaluation, checkpoints, plots and the command line (tiny sizes: < 1 min in all)."""
import glob
import json
import os
import sys

import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba import cli, datasets, plots, train
from sbnnumba.estimators import registry
from sbnnumba.estimators.exact import exact_expected_loss

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    """200 training and 200 test images of the embedded Fashion-MNIST subset (uint8, (N, 1, 28, 28))."""
    ds = datasets.load_embedded()
    return ds.x_train[:200], ds.y_train[:200], ds.x_test[:200], ds.y_test[:200]


def tiny_net(seed=1, hidden=(32,)):
    return train.build_network("mlp", (1, 28, 28), 10, seed=seed, hidden=list(hidden))


FIT = dict(epochs=2, batch_size=32, lr=3e-3, eval_samples=3, train_eval_size=100, progress=False, seed=5)


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------ fit
def test_fit_improves_loss_and_writes_files(tiny, tmp_path):
    x, y, _, _ = tiny
    net = tiny_net()
    res = train.fit(net, (x, y), **{**FIT, "epochs": 3}, out=tmp_path)
    h = res.history
    assert [r["epoch"] for r in h] == [1, 2, 3] and res.epochs_done == 3 and res.stopped == "completed"
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_loss"] < h[0]["val_loss"]
    for r in h:
        for k in ("val_acc1", "val_eacc", "val_det_acc", "train_acc1"):
            assert 0.0 <= r[k] <= 1.0
    for name in ("checkpoint.npz", "history.csv", "history.json", "loss.png", "accuracy.png"):
        assert (tmp_path / name).is_file(), name
    for name in ("loss.png", "accuracy.png"):
        assert file_bytes(tmp_path / name)[:8] == PNG_MAGIC
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and "val_eacc" in lines[0] and len(lines) == 4
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["history"][-1]["val_loss"] == pytest.approx(h[-1]["val_loss"])
    assert doc["config"]["arch"]["name"] == "mlp" and doc["config"]["optimizer"]["clip_value"] == 1e3
    assert not glob.glob(str(tmp_path / ".tmp-*"))
    # the checkpoint rebuilds the network exactly
    net2 = train.load_network(tmp_path / "checkpoint.npz")
    for k, p in net.params.items():
        np.testing.assert_array_equal(net2.params[k], p)


def test_fit_without_output_and_explicit_validation(tiny):
    x, y, xt, yt = tiny
    res = train.fit(tiny_net(), (x, y, xt[:50], yt[:50]), **{**FIT, "epochs": 1}, estimator="st")
    assert res.out is None and res.checkpoint is None and len(res.history) == 1
    assert "val_loss" in res.history[0]


def test_resume_is_bitwise_identical(tiny, tmp_path):
    x, y, _, _ = tiny
    a, b = tmp_path / "a", tmp_path / "b"
    net_a = tiny_net()
    res_a = train.fit(net_a, (x, y), **FIT, out=a, plots=False)
    train.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, out=b, plots=False)
    net_b = tiny_net(seed=99)  # parameters come from the checkpoint
    res_b = train.fit(net_b, (x, y), **FIT, out=b, resume=True, plots=False)
    for k, p in net_a.params.items():
        assert p.tobytes() == net_b.params[k].tobytes(), k
    ck_a, ck_b = train.load_checkpoint(a / "checkpoint.npz"), train.load_checkpoint(b / "checkpoint.npz")
    assert ck_a.epoch == ck_b.epoch == 2 and ck_a.rng_state == ck_b.rng_state
    assert ck_a.optimizer_state.keys() == ck_b.optimizer_state.keys()
    for k, v in ck_a.optimizer_state.items():
        assert np.array_equal(v, ck_b.optimizer_state[k]), k
    timing = {"epoch_time", "eval_time"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in res_a.history]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in res_b.history]
    # resuming a finished run does nothing
    res_c = train.fit(tiny_net(), (x, y), **FIT, out=b, resume=True, plots=False)
    assert res_c.stopped == "already complete" and len(res_c.history) == 2


def test_resume_errors(tiny, tmp_path):
    x, y, _, _ = tiny
    with pytest.raises(FileNotFoundError):
        train.fit(tiny_net(), (x, y), **FIT, out=tmp_path / "none", resume=True)
    train.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, out=tmp_path, plots=False)
    with pytest.raises(FileExistsError, match="resume"):
        train.fit(tiny_net(), (x, y), **FIT, out=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        train.fit(tiny_net(), (x, y), **{**FIT, "batch_size": 16}, out=tmp_path, resume=True)
    with pytest.raises(ValueError, match="estimator"):
        train.fit(tiny_net(), (x, y), **FIT, estimator="no-such-method")


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
    with pytest.raises(train.TrainingDiverged, match="epoch 2, step 3") as info:
        train.fit(net, (x, y), **{**FIT, "epochs": 3}, estimator="nan-after", out=tmp_path, plots=False)
    assert info.value.epoch == 2 and info.value.step == 3
    assert info.value.checkpoint == str(tmp_path / "checkpoint.npz")
    assert "last good checkpoint" in str(info.value)
    assert file_bytes(tmp_path / "checkpoint.npz") == fake.snapshot
    ck = train.load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.epoch == 1 and len(ck.history) == 1
    restored = train.load_network(ck)
    assert all(np.all(np.isfinite(p)) for p in restored.params.values())


# ---------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint_file(tiny, tmp_path_factory):
    x, y, _, _ = tiny
    out = tmp_path_factory.mktemp("ck")
    train.fit(tiny_net(), (x, y), **{**FIT, "epochs": 1}, out=out, plots=False)
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
    with pytest.raises(train.CheckpointError, match="bad.npz") as info:
        train.load_checkpoint(bad)
    expected = {"version": "version 99", "missing": "meta/config", "foreign": "not an sbnnumba checkpoint",
                "no-params": "no parameters"}.get(kind)
    if expected:
        assert expected in str(info.value)
    with pytest.raises(train.CheckpointError):
        train.evaluate(str(bad), np.zeros((2, 1, 28, 28), np.uint8), np.zeros(2, np.int64))


def test_checkpoint_with_wrong_shapes(checkpoint_file, tmp_path):
    bad = tmp_path / "shape.npz"
    _rewrite(checkpoint_file, bad, replace={"param/head.bias": np.zeros(3, np.float32)})
    with pytest.raises(train.CheckpointError, match="head.bias"):
        train.load_network(bad)


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
        train.fit(tiny_net(), (x, y), **FIT, out=tmp_path, plots=False)
    monkeypatch.setattr(np, "savez", real_savez)
    assert len(calls) == 2
    ck = train.load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck.epoch == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "history.csv", "history.json"]


# ---------------------------------------------------------------------------------- evaluation
def test_evaluate_metrics(tiny):
    x, y, xt, yt = tiny
    net = tiny_net()
    m = train.evaluate(net, xt, yt, samples=5, rng=0, batch_size=64)
    assert m["n"] == 200 and m["samples"] == 5 and len(m["curve"]) == 5
    assert m["eacc"] == m["curve"][-1] and 0 <= m["acc1"] <= 1 and 0 <= m["det_acc"] <= 1
    assert m["loss"] > 0
    assert train.evaluate(net, xt, yt, samples=5, rng=0, batch_size=64) == m  # reproducible
    m2 = train.evaluate(net, xt, yt, samples=2, rng=0, rb=False, deterministic=False)
    assert m2["det_acc"] is None and len(m2["curve"]) == 2
    with pytest.raises(ValueError, match="samples"):
        train.evaluate(net, xt, yt, samples=0)


def test_rao_blackwellized_loss_is_unbiased():
    """The RB value averaged over many samples approaches the exact expected loss (enumeration)."""
    rng = np.random.default_rng(0)
    net = sb.Network.dense([3, 4, 3], 3, rng=rng, dtype=np.float64)
    for p in net.params.values():
        p[...] = rng.normal(size=p.shape)
    x = rng.normal(size=(4, 3))
    y = np.array([0, 1, 2, 1])
    exact = float(np.mean(exact_expected_loss(net, x, y)))
    m = train.evaluate(net, x, y, samples=4000, rng=1)
    assert m["loss"] == pytest.approx(exact, rel=0.03)


# ------------------------------------------------------------------------------------------ plots
def test_plots(tmp_path):
    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_acc1": 0.5 + 0.1 * e,
             "val_acc1": 0.4 + 0.1 * e, "val_eacc": 0.45 + 0.1 * e, "val_det_acc": None} for e in (1, 2, 3)]
    paths = [plots.plot_loss({"psa": hist, "st": hist[:2]}, tmp_path / "sub" / "l.png"),
             plots.plot_accuracy(hist, tmp_path / "a.png"),
             plots.plot_ensemble_curve({"psa": [0.5, 0.6, 0.65]}, tmp_path / "e.png"),
             *plots.plot_training_curves(hist, tmp_path, prefix="x-")]
    for p in paths:
        assert file_bytes(p)[:8] == PNG_MAGIC
    assert not glob.glob(str(tmp_path / ".tmp-*"))


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
    ck = train.load_checkpoint(out / "checkpoint.npz")
    assert ck.config["arch"]["options"]["hidden"] == [32]
    assert ck.config["metadata"]["train_subset"] == 200

    rc = cli.main(["train", "--data", "embedded", "--train-subset", "200", "--hidden", "32", "--epochs", "2",
                   "--eval-samples", "3", "--out", str(out), "--no-progress", "--resume"])
    assert rc == 0, capsys.readouterr().err
    assert train.load_checkpoint(out / "checkpoint.npz").epoch == 2

    rc = cli.main(["evaluate", str(out / "checkpoint.npz"), "--samples", "4", "--out", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "embedded" in captured.out and "4-sample ensemble acc" in captured.out
    metrics = json.loads((tmp_path / "ev" / "test_metrics.json").read_text())
    assert metrics["n"] == 2000 and len(metrics["curve"]) == 4
    assert file_bytes(tmp_path / "ev" / "ensemble_accuracy.png")[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv", [
    ["train", "--hidden", "0"],
    ["train", "--hidden", "12,x"],
    ["train", "--arch", "no-such-arch"],
    ["train", "--estimator", "no-such-method"],
    ["train", "--epochs", "-1"],
    ["train", "--batch-size", "zero"],
    ["train", "--lr", "nan"],
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


def test_cli_gradcheck_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sbnnumba.gradstudy", None)
    assert cli.main(["gradcheck", "--anything"]) == 2
    assert "sbnnumba.gradstudy" in capsys.readouterr().err


def test_cli_gradcheck_dispatches(monkeypatch):
    import types

    seen = []
    fake = types.ModuleType("sbnnumba.gradstudy")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "sbnnumba.gradstudy", fake)
    assert cli.main(["gradcheck", "--a", "1"]) == 0 and seen == [["--a", "1"]]


def test_cli_help_exits_0(capsys):
    assert cli.main(["train", "--help"]) == 0
    assert "--estimator" in capsys.readouterr().out
