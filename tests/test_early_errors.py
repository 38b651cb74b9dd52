"""Early, clear errors (#41 item 7): an empty batch, a network of integer or float16 dtype, data-dependent
initialization on identical rows, hand-made checkpoints with NaN or integer parameters, and the entropy
plot of a run without a validation part."""
import json

import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba import training


@pytest.mark.parametrize("method", ["psa", "st", "exact", "arm", "reinforce"])
def test_empty_batch_is_refused_naming_x(method):
    net = sb.Network.dense([4, 3], 3, rng=0)
    with pytest.raises(ValueError, match=r"x: expected a batch of at least one example, got shape \(0, 4\)"):
        sb.estimate(method, net, np.zeros((0, 4)), np.zeros(0, int), rng=0)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16])
def test_integer_or_half_precision_networks_are_refused(dtype):
    with pytest.raises(TypeError, match=f"dtype: expected float32 or float64 parameters, got {np.dtype(dtype)}"):
        sb.Network.dense([4, 3], 2, rng=0, dtype=dtype)


def test_data_init_on_identical_rows_warns_and_keeps_the_weights_bounded():
    net = sb.Network.dense([4, 3, 3], 3, rng=0)
    before = max(np.abs(p).max() for p in net.params.values())
    with pytest.warns(RuntimeWarning, match="identical rows"):
        net.initialize_from_data(np.ones((5, 4)))
    assert max(np.abs(p).max() for p in net.params.values()) < 10 * max(before, 1.0)  # was ~1e6


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6)), np.arange(40) % 2
    training.fit(sb.Network.dense([6, 4], 2, rng=0), (x, y), out=tmp_path, epochs=1, batch_size=20,
                 progress=False, eval_samples=2, train_eval_size=0, plots=False)
    return tmp_path / training.CHECKPOINT_NAME


@pytest.mark.parametrize("bad, match", [(np.nan, "holds NaN or inf"), (np.inf, "holds NaN or inf"),
                                        ("int", "has dtype int64, expected floating-point values")])
def test_checkpoint_loader_rejects_non_finite_or_integer_parameters(saved, bad, match):
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.startswith("param/"))
    arrays[key] = arrays[key].astype(np.int64) if bad == "int" else np.full_like(arrays[key], bad)
    np.savez(saved, **arrays)
    with pytest.raises(training.CheckpointError, match=match):
        training.load_network(saved)


def test_entropy_is_measured_and_plotted_without_a_validation_part(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6)), np.arange(40) % 2
    result = training.fit(sb.Network.dense([6, 4, 3], 2, rng=0), (x, y), out=tmp_path, epochs=2, batch_size=20,
                          progress=False, eval_samples=2, train_eval_size=20, val_fraction=0.0)
    assert all(0 < row["train_entropy"] <= 1 and "train_entropy.1" in row for row in result.history)
    assert (tmp_path / "entropy.png").is_file()
    assert json.loads((tmp_path / training.HISTORY_JSON).read_text())
