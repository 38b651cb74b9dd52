"""The training package's declared pieces: FitConfig (one validation, stored in checkpoints, shown by
``train --help``), Trainer phases, ``describe`` round trips, and version-1 checkpoints still loading."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba import architectures, cli, training
from sbnnumba.training import FitConfig
from sbnnumba.training.config import command_line_fields

DATA = Path(__file__).with_name("data")
V1_CHECKPOINTS = ["v1-mlp-bernoulli-bn", "v1-conv-bn"]


def _fixture_data():
    """The images the version-1 fixtures were trained and evaluated on (tests/data, written by train.py)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(80, 1, 28, 28), dtype=np.uint8)
    return x, rng.integers(0, 3, size=80)


# ------------------------------------------------------------------------------------ FitConfig
@pytest.mark.parametrize("field, value, error, words", [
    ("epochs", 0, ValueError, "epochs: expected an integer >= 1, got 0"),
    ("epochs", 2.0, TypeError, "epochs: expected an integer, got float"),
    ("batch_size", True, TypeError, "batch_size"),
    ("lr", -1e-3, ValueError, "lr: expected None or a positive number"),
    ("lr", "fast", TypeError, "lr"),
    ("val_fraction", 1.0, ValueError, "val_fraction: expected a number in [0, 1)"),
    ("momentum", float("nan"), ValueError, "momentum"),
    ("optimizer", "rmsprop", ValueError, "optimizer: expected one of ['adam', 'sgd']"),
    ("optimizer", 3, TypeError, "optimizer"),
    ("schedule", "linear", ValueError, "schedule"),
    ("estimator", "no-such-method", ValueError, "no-such-method"),
    ("estimator_options", {"nope": 1}, ValueError, "nope"),
    ("estimator_options", [1], TypeError, "estimator_options"),
    ("augment", "yes", TypeError, "augment: expected True or False"),
    ("max_time", 0, ValueError, "max_time"),
])
def test_fit_config_checks_every_field(field, value, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        FitConfig(**{field: value})
    with pytest.raises(error):  # fit takes the same options and checks them the same way
        training.fit(sb.Network.dense([4, 3], 2, rng=0), (np.zeros((8, 4)), np.zeros(8, int)), **{field: value})


def test_fit_config_replace_to_dict_and_trajectory():
    c = FitConfig(epochs=3, lr=1e-2, optimizer="SGD", estimator_options={"head": "sample"})
    assert c.optimizer == "sgd" and c.estimator_options == {"head": "sample"}
    d = json.loads(json.dumps(c.to_dict()))  # JSON-able
    assert FitConfig(**d) == c
    assert c.replace(seed=4).seed == 4 and c.seed == 0
    with pytest.raises(TypeError, match="unknown fit option"):
        c.replace(colour="red")
    assert set(c.trajectory()) == {"estimator", "estimator_options", "batch_size", "seed", "split_seed",
                                   "val_fraction", "augment", "augment_pad", "data_init"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 4
    assert FitConfig(optimizer=sb.optim.Adam(lr=1.0)).to_dict()["optimizer"] == "adam"


def test_train_help_shows_the_fit_config_fields(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, f in command_line_fields():
        assert flag in text
        assert " ".join(f.metadata["help"].split())[:30] in text, flag
    assert "(default: 3)" in text  # --epochs: the command line's own default


# ---------------------------------------------------------------------------------- Trainer phases
def test_trainer_phases_equal_fit(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.random((120, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, 120)
    config = FitConfig(epochs=2, batch_size=16, eval_samples=2, train_eval_size=0, progress=False, plots=False)
    net_fit = architectures.build("mlp", (1, 4, 4), 3, rng=1, hidden=[6])
    result = training.fit(net_fit, (x, y), config, out=tmp_path / "fit")
    net = architectures.build("mlp", (1, 4, 4), 3, rng=1, hidden=[6])
    trainer = training.Trainer(net, (x, y), config, out=tmp_path / "phases")
    trainer.start()
    (tmp_path / "phases").mkdir()
    for epoch in (1, 2):
        row = trainer.validate(trainer.run_epoch(epoch))
        trainer.history.append(row)
        trainer.save()
    for k, p in net_fit.params.items():
        assert p.tobytes() == net.params[k].tobytes(), k
    assert [r["val_loss"] for r in trainer.history] == [r["val_loss"] for r in result.history]
    assert training.load_checkpoint(tmp_path / "phases" / training.CHECKPOINT_NAME).config["fit"] == config.to_dict()


# ------------------------------------------------------------------------------------ describe
@pytest.mark.parametrize("build, shape", [
    (lambda: architectures.build("conv", (1, 28, 28), 3, rng=0, width=0.03, normalize=True, weight="hidden",
                                 input_padding=2), (1, 28, 28)),
    (lambda: architectures.build("mlp", (1, 5, 5), 2, rng=0, hidden=[4, 3], dtype=np.float64, noise="normal"),
     (1, 5, 5)),
    (lambda: sb.Network([sb.Conv2d(1, 2, (3, 2), stride=(2, 1), padding=1, rng=0), sb.Linear(2 * 3 * 6, 4, rng=0)],
                        sb.Linear(4, 3, rng=0), noise="triangular"), (1, 5, 5)),
])
def test_describe_round_trip(build, shape):
    net = build()
    desc = training.describe(net, shape)
    assert json.loads(json.dumps(desc)) == desc
    rebuilt = training.network_from_description(desc)
    assert training.describe(rebuilt, shape) == desc
    assert {k: p.shape for k, p in rebuilt.params.items()} == {k: p.shape for k, p in net.params.items()}
    assert rebuilt.noise.name == net.noise.name and rebuilt.dtype == net.dtype
    x = np.random.default_rng(0).random((3,) + shape)
    for k, p in rebuilt.params.items():
        p[...] = net.params[k]
    np.testing.assert_array_equal(rebuilt.forward_deterministic(x), net.forward_deterministic(x))


def test_describe_refuses_an_unregistered_layer_type():
    class Odd(sb.Linear):
        pass

    net = sb.Network([Odd(3, 2, rng=0)], sb.Linear(2, 2, rng=0))
    with pytest.raises(TypeError, match="stages.0: expected a layer of a registered kind.*Odd"):
        training.describe(net)


# ------------------------------------------------------------------------- version-1 checkpoints
@pytest.mark.parametrize("name", V1_CHECKPOINTS)
def test_version_1_checkpoints_still_load(name):
    """Checkpoints written by the code before the training package (train.py, format version 1) load, rebuild
    the same network and evaluate to the metrics recorded when they were written (the accuracies exactly; the loss to
    float32 rounding, as the Rao-Blackwellized head's rounding changed since, 2026-12-07)."""
    path = DATA / f"checkpoint_{name}.npz"
    ck = training.load_checkpoint(path)
    assert ck.version == 1 and ck.epoch == 1 and ck.config["metadata"]["architecture"]["name"] in ("mlp", "conv")
    net = training.load_network(ck)
    for k, p in net.params.items():
        np.testing.assert_array_equal(p, ck.params[k])
    x, y = _fixture_data()
    m = training.evaluate(net, x[:20], y[:20], samples=2, rng=0)
    expected = json.loads((DATA / f"checkpoint_{name}.json").read_text())
    assert {k: m[k] for k in expected if k != "loss"} == {k: v for k, v in expected.items() if k != "loss"}
    assert m["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_version_1_checkpoint_resumes(tmp_path):
    """A version-1 run continues under the new code: its settings are read into FitConfig's layout."""
    import shutil

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(DATA / "checkpoint_v1-mlp-bernoulli-bn.npz", out / training.CHECKPOINT_NAME)
    x, y = _fixture_data()
    net = architectures.build("mlp", (1, 28, 28), 3, rng=9, hidden=[6, 5], weight="hidden", weight_noise="uniform",
                              normalize=True)
    res = training.fit(net, (x, y), estimator="st", epochs=2, batch_size=40, lr=0.01, seed=4, eval_samples=2,
                       train_eval_size=0, out=out, resume=True, plots=False, progress=False)
    assert [r["epoch"] for r in res.history] == [1, 2]
    assert training.load_checkpoint(out / training.CHECKPOINT_NAME).version == training.FORMAT_VERSION
    with pytest.raises(ValueError, match="fit.batch_size: checkpoint 40 vs now 20"):
        training.fit(net, (x, y), estimator="st", epochs=3, batch_size=20, lr=0.01, seed=4, out=out, resume=True)


# ---------------------------------------------------------------------------------- logging, lr search
def test_fit_logs_one_line_per_epoch(caplog):
    rng = np.random.default_rng(3)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 2, 64)
    for verbose, level in ((True, "INFO"), (False, "DEBUG")):  # progress (the bars) does not decide it (#41)
        caplog.clear()
        with caplog.at_level("DEBUG", logger="sbnnumba.training"):
            training.fit(sb.Network.dense([6, 4], 2, rng=0), (x, y), epochs=2, batch_size=16, eval_samples=2,
                         train_eval_size=0, progress=False, verbose=verbose, plots=False)
        lines = [r for r in caplog.records if r.name == "sbnnumba.training.fit"]
        assert [r.levelname for r in lines] == [level] * 2
        assert lines[1].getMessage().startswith("epoch 2/2 | train loss ")


def test_search_lr_takes_a_config():
    """A FitConfig gives the trials their options; the search's own fields (epochs, max_time, ...) are its."""
    rng = np.random.default_rng(4)
    x, y = rng.random((96, 6), dtype=np.float32), rng.integers(0, 2, 96)
    config = FitConfig(estimator="st", batch_size=32, seed=5, epochs=9, max_time=1e-9, progress=True)
    by_config = training.search_lr(sb.Network.dense([6, 4], 2, rng=0), (x, y), config, trial_epochs=1, max_trials=2)
    by_keywords = training.search_lr(sb.Network.dense([6, 4], 2, rng=0), (x, y), estimator="st", batch_size=32,
                                     seed=5, trial_epochs=1, max_trials=2)
    assert by_config.table == by_keywords.table and by_config.settings["estimator"] == "st"
    assert all(t.epochs == 1 for t in by_config.trials)
    with pytest.raises(TypeError, match="set by the search itself"):
        training.search_lr(sb.Network.dense([6, 4], 2, rng=0), (x, y), config, epochs=2)


def test_resume_compares_settings_in_their_checks_canonical_form():
    fields = {f.name: f for f in dataclasses.fields(FitConfig)}
    schedule, seed = fields["schedule"].metadata["check"], fields["seed"].metadata["check"]
    # the library's default schedule (None) and the command line's ("constant") are one setting; "step" is another
    assert schedule.canonical(None) == schedule.canonical("constant") != schedule.canonical("step")
    assert seed.canonical(3) == 3 and seed.canonical(None) is None  # other fields compare as they are
