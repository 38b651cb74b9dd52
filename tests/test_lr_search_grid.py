"""The learning-rate search's batched grid refinement (``search_lr(method="grid")``): its rounds, its
optimum against Brent's on the same scores, and its trials on an executor against the serial run."""
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from sbnnumba import architectures, cli, datasets, runtime, sweep, training
from sbnnumba.training.lr_search import grid_rounds


def _recorder(f, rounds):
    def evaluate(points):
        rounds.append(list(points))
        return [f(x) for x in points]
    return evaluate


@pytest.mark.parametrize("minimum", [-4.37, -2.7, -0.2, -5.9])
def test_grid_rounds_find_the_optimum_brent_finds(minimum):
    f = lambda x: (x - minimum) ** 2 + 0.1 * np.sin(3 * x) ** 2  # noqa: E731 - smooth, unimodal near the minimum
    rounds = []
    scores = grid_rounds(_recorder(f, rounds), -6.0, 0.0, max_trials=16, batch=4, xatol=0.01)
    best = min(scores, key=scores.get)
    brent = minimize_scalar(f, bounds=(-6, 0), method="bounded", options={"xatol": 0.01}).x
    assert abs(best - brent) < 0.1  # the same optimum, to the grid's final spacing
    assert rounds[0] == list(np.linspace(-6, 0, 4))  # round 1 spans the bounds, ends included
    assert len(scores) <= 16 and all(len(r) <= 4 for r in rounds)
    assert len({x for r in rounds for x in r}) == sum(len(r) for r in rounds)  # no point evaluated twice


@pytest.mark.parametrize("max_trials, batch", [(1, 4), (2, 4), (3, 3), (7, 2), (10, 5)])
def test_grid_rounds_budget_and_termination(max_trials, batch):
    rounds = []
    scores = grid_rounds(_recorder(lambda x: abs(x + 3), rounds), -6.0, 0.0, max_trials, batch, xatol=1e-9)
    assert len(scores) == max_trials and all(1 <= len(r) <= batch for r in rounds)
    assert all(-6 <= x <= 0 for x in scores)


def test_grid_rounds_prefer_the_first_of_equal_scores_and_survive_divergence():
    rounds = []
    scores = grid_rounds(_recorder(lambda x: np.inf if x > -3 else 1.0, rounds), -6.0, 0.0, 8, 4, 0.05)
    assert min(scores, key=lambda x: (scores[x], list(scores).index(x))) == -6.0
    assert np.isinf(scores[0.0]) and len(scores) <= 8


@pytest.fixture(scope="module")
def tiny():
    ds = datasets.load_embedded()
    return ds.x_train[:256], ds.y_train[:256]


def _net():
    return architectures.build("mlp", (1, 28, 28), 10, rng=3, hidden=(16,))


SEARCH = dict(estimator="st", trial_epochs=1, batch_size=32, seed=5, method="grid", max_trials=5, batch=3)


def test_grid_search_on_an_executor_gives_the_serial_trials(tiny):
    with runtime.limited_threads(1):
        serial = training.search_lr(_net(), tiny, **SEARCH)
    with sweep.LocalPool(2) as pool:
        parallel = training.search_lr(_net(), tiny, **SEARCH, executor=pool, threads=1)
    assert parallel.table == serial.table and parallel.lr == serial.lr and len(serial.trials) == 5
    assert [t.trial for t in parallel.trials] == [1, 2, 3, 4, 5]
    assert parallel.settings["method"] == "grid"
    # each trial started from the same initialization: training it with a recorded lr gives the recorded score
    t = serial.trials[-1]
    fit = training.fit(_net(), tiny, estimator="st", epochs=1, batch_size=32, seed=5, lr=t.lr, train_eval_size=0,
                       progress=False)
    assert fit.history[0]["train_loss"] == t.score


@pytest.mark.parametrize("kwargs, error, match", [
    ({"method": "golden"}, ValueError, "method: expected"),
    ({"method": "bounded", "executor": sweep.SerialExecutor()}, ValueError, "executor: expected None"),
    ({"executor": "pool"}, TypeError, "executor: expected"),
    ({"batch": 1}, ValueError, "batch"),
])
def test_grid_search_argument_errors(tiny, kwargs, error, match):
    with pytest.raises(error, match=match):
        training.search_lr(_net(), tiny, **{**SEARCH, **kwargs})


def test_cli_lr_auto_grid_with_workers(tmp_path, capsys):
    common = ["train", "--data", "embedded", "--train-subset", "200", "--hidden", "8", "--epochs", "1",
              "--eval-samples", "2", "--no-progress", "--lr", "auto", "--lr-trials", "3", "--lr-trial-epochs", "1"]
    assert cli.main([*common, "--lr-workers", "1", "--out", str(tmp_path / "a")]) == 2
    assert "--lr-method grid" in capsys.readouterr().err
    assert cli.main([*common, "--lr-method", "grid", "--lr-workers", "1", "--out", str(tmp_path / "b")]) == 0
    assert "chosen learning rate" in capsys.readouterr().out
    assert '"method": "grid"' in (tmp_path / "b" / "lr_search.json").read_text()
