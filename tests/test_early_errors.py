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


# ------------------------------------------------------------------------------------ input validation audit
def _toy():
    return sb.datasets.toy2d(40, rng=0)


def _nan_dense():
    net = sb.Network.dense([2, 5, 5], 1, rng=0)
    net.params["stages.0.weight"][0, 0] = np.nan
    return net


@pytest.mark.parametrize("call", [
    lambda net, x, y: sb.estimate("psa", net, x, y, rng=0),
    lambda net, x, y: sb.estimate("arm", net, x, y, rng=0),
    lambda net, x, y: net.predict(x, rng=0),
    lambda net, x, y: net.predict(x, mode="deterministic"),
    lambda net, x, y: net.predict_proba(x, samples=2, rng=0),
    lambda net, x, y: net.forward_deterministic(x),
    lambda net, x, y: sb.PackedNetwork.from_network(net),
])
def test_non_finite_parameters_are_refused_naming_the_parameter(call):
    x, y = _toy()
    with pytest.raises(ValueError, match=r"params\['stages\.0\.weight'\]: expected finite values"):
        call(_nan_dense(), x, y)


def test_non_finite_latent_weights_are_refused_by_the_packed_conversion():
    net = sb.Network.dense([8, 6], 3, rng=0, weight="bernoulli")
    net.params["stages.0.eta"][1, 2] = np.inf
    with pytest.raises(ValueError, match=r"params\['stages\.0\.eta'\]: expected finite values"):
        sb.PackedNetwork.from_network(net)


@pytest.mark.parametrize("opt", [lambda: sb.optim.SGD(lr=0.1, clip_norm=1.0),
                                 lambda: sb.optim.SGD(lr=0.1, momentum=0.9, clip_value=1.0),
                                 lambda: sb.optim.Adam(clip_value=1.0, weight_decay=0.1, decoupled=True)])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_optimizer_refuses_a_non_finite_gradient_before_changing_anything(opt, bad):
    net = sb.Network.dense([2, 3], 2, rng=0)
    opt = opt()
    before = {k: v.copy() for k, v in net.params.items()}
    grads = {k: np.zeros_like(v) for k, v in net.params.items()}
    grads["head.bias"][0] = bad
    with pytest.raises(sb.optim.NonFiniteGradient, match=r"grads\['head\.bias'\]: expected finite values") as info:
        opt.update(net.params, grads)
    assert isinstance(info.value, ValueError) and info.value.key == "head.bias"
    assert all(np.array_equal(before[k], net.params[k]) for k in before)
    assert opt.step_count == 0 and opt.state == {}


def test_fit_reports_a_non_finite_gradient_found_by_the_optimizer_as_divergence(monkeypatch):
    x, y = _toy()
    net = sb.Network.dense([2, 4], 2, rng=0)

    def estimate(self, xb, yb):
        return 0.5, {k: np.full_like(v, np.nan) if k == "head.weight" else np.zeros_like(v)
                     for k, v in self.net.params.items()}

    monkeypatch.setattr(training.Trainer, "estimate", estimate)
    with pytest.raises(training.TrainingDiverged, match="non-finite gradient of 'head.weight' at epoch 1, step 1"):
        training.fit(net, (x, y), epochs=1, data_init=False, progress=False, plots=False, verbose=False,
                     train_eval_size=0, val_fraction=0.0)
    assert all(np.all(np.isfinite(p)) for p in net.params.values())


def test_gradient_study_training_stops_at_a_non_finite_gradient(monkeypatch):
    from sbnnumba import gradstudy

    x, y = _toy()
    net = sb.Network.dense([2, 4], 2, rng=0)
    before = {k: v.copy() for k, v in net.params.items()}
    monkeypatch.setattr(gradstudy, "estimate", lambda method, net, xb, yb, rng: (
        0.5, {k: np.full_like(v, np.inf) for k, v in net.params.items()}))
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        gradstudy.train_checkpoints(net, x, y, [1], np.random.default_rng(0), progress=False)
    assert all(np.array_equal(before[k], net.params[k]) for k in before)


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_optimizer_refuses_parameters_of_other_float_dtypes(dtype):
    if np.dtype(dtype) == np.float64:
        pytest.skip("longdouble is float64 on this platform")
    for opt in (sb.optim.SGD(0.1), sb.optim.Adam()):
        with pytest.raises(TypeError, match=rf"params\['a'\]: expected float32 or float64 parameters, got "
                                            rf"{np.dtype(dtype)}"):
            opt.update({"a": np.ones(3, dtype)}, {"a": np.ones(3)})


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (0, ValueError), (2.0, TypeError), (True, TypeError)])
@pytest.mark.parametrize("call", [
    lambda net, x, y, b: net.predict_proba(x, batch_size=b, rng=0),
    lambda net, x, y, b: net.predict_proba(x, mode="deterministic", batch_size=b),
    lambda net, x, y, b: training.evaluate(net, x, y, samples=2, rng=0, batch_size=b),
    lambda net, x, y, b: net.add_normalization(x, batch_size=b, rng=0),
    lambda net, x, y, b: sb.Network.dense([2, 5], 2, rng=0, normalize=True).recalibrate_normalization(
        x, batch_size=b),
    lambda net, x, y, b: sb.PackedNetwork.from_network(net).predict_logits(x, batch_size=b),
])
def test_batch_size_is_checked_everywhere(call, bad, error):
    x, y = _toy()
    with pytest.raises(error, match="batch_size: expected an integer"):
        call(sb.Network.dense([2, 5], 2, rng=0), x, y, bad)


@pytest.mark.parametrize("call", [lambda net, x: net.recalibrate_normalization(x),
                                  lambda net, x: net.recalibrate_normalization(x, mode="stochastic", rng=0),
                                  lambda net, x: sb.Network.dense([2, 5], 2, rng=0).add_normalization(x, rng=0)])
def test_normalization_statistics_of_no_example_are_refused(call):
    x, _ = _toy()
    with pytest.raises(ValueError, match=r"x: expected a batch of at least one example, got shape \(0, 2\)"):
        call(sb.Network.dense([2, 5], 2, rng=0, normalize=True), x[:0])


def test_forward_deterministic_refuses_an_unknown_activation():
    x, _ = _toy()
    net = sb.Network.dense([2, 5], 2, rng=0)
    with pytest.raises(ValueError, match=r"activation: expected one of \('sign', 'mean'\), got 'relu'"):
        net.forward_deterministic(x, activation="relu")
    assert not np.array_equal(net.forward_deterministic(x), net.forward_deterministic(x, activation="mean"))


@pytest.mark.parametrize("build, error, match", [
    (lambda: sb.architectures.mlp((784,), 10, hidden="256"), TypeError, "hidden: expected a sequence"),
    (lambda: sb.architectures.mlp((784,), 10, hidden=[256.9]), TypeError, r"hidden\[0\]: expected an integer"),
    (lambda: sb.architectures.mlp((784,), 10, hidden=[8, True]), TypeError, r"hidden\[1\]: expected an integer"),
    (lambda: sb.architectures.mlp((784,), 10, hidden=[8, 0]), ValueError, r"hidden\[1\]: expected an integer >= 1"),
    (lambda: sb.architectures.mlp((-2, -2), 10, hidden=[3]), ValueError, r"input_shape\[0\]: expected an integer"),
    (lambda: sb.architectures.mlp("784", 10, hidden=[3]), TypeError, "input_shape: expected a sequence"),
    (lambda: sb.architectures.mlp((784,), 10, hidden=[]), ValueError, "hidden: expected at least one"),
    (lambda: sb.architectures.conv((1, 28, 28), 10, channels=[-4] * 8), ValueError,
     r"channels\[0\]: expected an integer >= 1"),
    (lambda: sb.architectures.conv((1, 28, 28), 10, channels=[4.0] * 8), TypeError, r"channels\[0\]"),
    (lambda: sb.architectures.conv((1, 28.5, 28), 10), TypeError, r"input_shape\[1\]: expected an integer"),
    (lambda: sb.architectures.conv((1, -28, 28), 10), ValueError, r"input_shape\[1\]: expected an integer >= 1"),
    (lambda: sb.architectures.conv((28, 28), 10), ValueError, "input_shape: expected 3 positive integers"),
    (lambda: sb.architectures.conv((1, 28, 28), 10, width=True), TypeError, "width"),
    (lambda: sb.architectures.conv((1, 28, 28), 10, width="0.5"), TypeError, "width"),
    (lambda: sb.architectures.conv((1, 28, 28), 10, width=float("inf")), ValueError, "width: expected a finite"),
    (lambda: sb.architectures.conv((1, 28, 28), 10, width=1e307), ValueError, "width: expected a finite"),
    (lambda: sb.architectures.conv((1, 28, 28), 10, width=0), ValueError, "width: expected a finite positive"),
])
def test_architecture_arguments_are_checked_not_reinterpreted(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_conv_width_accepts_numpy_scalars():
    a = sb.architectures.conv((1, 28, 28), 10, width=np.float32(0.25), rng=0)
    b = sb.architectures.conv((1, 28, 28), 10, width=0.25, rng=0)
    assert repr(a) == repr(b)
    c = sb.architectures.mlp(np.array([1, 4, 4]), 3, hidden=np.array([5, 6]), rng=0)
    assert [s.inner.n_in for s in c.stages] == [16, 5]


def test_a_conv_network_built_for_an_input_shape_refuses_another():
    net = sb.architectures.conv((1, 28, 28), 10, width=0.05, rng=0)
    with pytest.raises(ValueError, match=r"x: Conv2d\(1, 5, .*\) was built for maps of per-example shape "
                                         r"\(1, 28, 28\), got shape \(1, 29, 29\)"):
        net.predict(np.zeros((2, 1, 29, 29)), rng=0)
    assert net.stages[0].in_shape == (1, 28, 28)
    for shape in [(1, 29, 29), (1, 32, 32)]:
        with pytest.raises(ValueError, match=r"input_shape: Conv2d\(1, 5, .*\) was built for maps of per-example "
                                             r"shape \(1, 28, 28\)"):
            sb.summary(net, shape, print_fn=None)
    assert [s.inner.in_shape for s in net.stages][:2] == [(1, 28, 28), (5, 26, 26)]
    packed = sb.PackedNetwork.from_network(net)
    assert packed.input_shape == (1, 28, 28) and packed.predict(np.zeros((2, 1, 28, 28))).shape == (2,)


def test_a_conv_network_built_without_an_input_shape_takes_any_and_summary_keeps_it():
    net = sb.Network([sb.Conv2d(1, 2, 3, rng=0)], sb.Linear(2, 2, rng=0))
    rows = sb.summary(net, (1, 3, 3), print_fn=None)
    assert rows[0]["output_shape"] == (2, 1, 1) and net.stages[0].in_shape is None  # not recorded by summary
    assert net.predict(np.zeros((2, 1, 3, 3)), rng=0).shape == (2,)
    assert net.stages[0].in_shape == (1, 3, 3)
    with pytest.raises(ValueError, match="input_shape: a Linear"):
        sb.summary(net, (1, 4, 4), print_fn=None)
    assert net.stages[0].in_shape == (1, 3, 3)
    wide = sb.Network([sb.Conv2d(1, 2, 3, rng=0)], sb.Linear(4, 2, rng=0))
    assert wide.predict(np.zeros((2, 1, 4, 3)), rng=0).shape == (2,)
    assert wide.predict(np.zeros((2, 1, 3, 4)), rng=0).shape == (2,)  # another map of the same size


@pytest.mark.parametrize("changes, named", [
    ({"lr": 1e-3}, "lr"), ({"schedule": "cosine", "clip_value": 1.0}, "schedule, clip_value"),
    ({"weight_decay": 0.1}, "weight_decay"), ({"momentum": 0.5, "nesterov": False}, "momentum, nesterov"),
    ({"clip_value": None}, "clip_value"),
])
def test_fit_refuses_optimizer_settings_that_an_optimizer_instance_would_ignore(changes, named):
    x, y = _toy()
    net = sb.Network.dense([2, 4], 2, rng=0)
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(ValueError, match=rf"optimizer: an Optimizer instance \(SGD\) uses its own settings; "
                                         rf"{named} would be ignored: set them on the optimizer instead"):
        training.fit(net, (x, y), optimizer=sb.optim.SGD(lr=0.5), epochs=1, progress=False, plots=False, **changes)
    assert all(np.array_equal(before[k], net.params[k]) for k in before)
    assert training.FitConfig(optimizer=sb.optim.SGD(lr=0.5)).optimizer.base_lr == 0.5  # alone: fine


@pytest.mark.parametrize("changes, first", [({"momentum": 0.1}, "momentum"), ({"nesterov": False}, "nesterov"),
                                            ({"momentum": 0.0, "nesterov": False}, "momentum")])
def test_momentum_options_are_refused_with_an_optimizer_without_momentum(changes, first):
    with pytest.raises(ValueError, match=rf"{first}: 'adam' has no momentum"):
        training.FitConfig(optimizer="adam", **changes)
    assert training.FitConfig(optimizer="sgd", **changes).optimizer == "sgd"


@pytest.mark.parametrize("call, name", [
    (lambda x, y: sb.estimate("psa", sb.Network.dense([2, 5], 1, rng=0), x, y, rng=0, linearize="no"), "linearize"),
    (lambda x, y: sb.estimate("psa", sb.Network.dense([2, 5], 1, rng=0), x, y, rng=0, linearize=1), "linearize"),
    (lambda x, y: sb.Network.dense([2, 5], 2, normalize="no"), "normalize"),
    (lambda x, y: sb.architectures.conv((1, 28, 28), 2, width=0.05, normalize=1), "normalize"),
    (lambda x, y: sb.PackedNetwork.from_network(sb.Network.dense([2, 5], 2, rng=0)).predict(x, codes="no"), "codes"),
    (lambda x, y: sb.optim.SGD(momentum=0.5, nesterov="yes"), "nesterov"),
])
def test_flags_must_be_bools(call, name):
    x, y = _toy()
    with pytest.raises(TypeError, match=f"{name}: expected True or False, got"):
        call(x, y)


def test_flags_accept_numpy_bools():
    x, y = _toy()
    net = sb.Network.dense([2, 5], 1, rng=0)
    assert sb.estimate("psa", net, x, y, rng=0, linearize=np.bool_(True))[0] == \
        sb.estimate("psa", net, x, y, rng=0, linearize=True)[0]
    assert sb.Network.dense([2, 5], 2, normalize=np.True_).normalizations()
    packed = sb.PackedNetwork.from_network(sb.Network.dense([2, 5], 2, rng=0))
    assert np.array_equal(packed.predict(x, codes=np.False_), packed.predict(x))


@pytest.mark.parametrize("build, name", [
    (lambda: sb.Network.dense([2, 5], 2, weight_noise="uniform"), "weight_noise"),
    (lambda: sb.Network.dense([2, 5], 2, weight_grad="latent"), "weight_grad"),
    (lambda: sb.Network.dense([2, 5], 2, weight_noise="x", weight_grad="x"), "weight_noise"),
    (lambda: sb.Network.dense([2, 5, 3], 2, weight=["real", "real"], weight_grad="latent"), "weight_grad"),
    (lambda: sb.Linear(2, 3, weight_noise="normal"), "weight_noise"),
    (lambda: sb.Conv2d(1, 2, 3, weight_grad="latent"), "weight_grad"),
    (lambda: sb.architectures.conv((1, 28, 28), 2, width=0.05, weight_noise="uniform"), "weight_noise"),
    (lambda: sb.architectures.mlp((4,), 2, hidden=[3], weight_grad="latent"), "weight_grad"),
])
def test_bernoulli_weight_options_are_refused_where_every_weight_is_real(build, name):
    with pytest.raises(ValueError, match=f"{name}: .* has no effect with real weights"):
        build()


def test_bernoulli_weight_options_apply_to_the_bernoulli_stages_only():
    net = sb.Network.dense([2, 5, 3], 2, rng=0, weight="hidden", weight_noise="uniform", weight_grad="latent")
    assert net.stages[0].latent is None
    assert net.stages[1].latent.noise.name == "uniform" and net.stages[1].latent.grad == "latent"
    conv = sb.architectures.conv((1, 28, 28), 2, width=0.05, rng=0, weight="hidden", weight_noise="uniform")
    assert conv.stages[0].latent is None and all(s.latent.noise.name == "uniform" for s in conv.stages[1:])
    assert sb.Network.dense([2, 5], 2, weight_noise=sb.noise.get_noise("logistic")).stages[0].latent is None


def test_fit_refuses_validation_labels_of_another_length():
    x, y = _toy()
    net = sb.Network.dense([2, 4], 2, rng=0)
    with pytest.raises(ValueError, match=r"y_val: expected shape \(10,\)"):
        training.fit(net, (x[:30], y[:30], x[30:], y[29:]), epochs=1, progress=False, plots=False)
    with pytest.raises(ValueError, match=r"y_val: expected shape \(0,\)"):
        training.fit(net, (x, y, x[:0], y), epochs=1, progress=False, plots=False)


def test_initialize_from_data_takes_a_list_and_warns_with_its_shape():
    net = sb.Network.dense([2, 5], 2, rng=0)
    with pytest.warns(RuntimeWarning, match=r"shape \(4, 2\): identical rows"):
        net.initialize_from_data([[1.0, 2.0]] * 4)


def _fit_data(bad):
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 6)), np.arange(200) % 3
    if bad == "label":
        y[-1] = 3
    elif bad == "negative":
        y[-1] = -1
    elif bad == "float label":
        y = y + 0.5
    elif bad == "nan":
        x[-1, 0] = np.nan
    elif bad == "shape":
        x = x[:, :5]
    return x, y


@pytest.mark.parametrize("bad, error, match", [
    ("label", ValueError, r"y: expected labels in \[0, 3\), got range \[0, 3\]"),
    ("negative", ValueError, r"y: expected labels in \[0, 3\)"),
    ("float label", TypeError, "y: expected integer class labels"),
    ("nan", ValueError, "x: expected finite values"),
    ("shape", ValueError, "x: a Linear"),
])
@pytest.mark.parametrize("val_fraction", [0.0, 0.5])
def test_fit_checks_all_data_before_changing_the_network(bad, error, match, val_fraction):
    x, y = _fit_data(bad)
    net = sb.Network.dense([6, 4], 3, rng=0)
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(error, match=match):
        training.fit(net, (x, y), epochs=1, batch_size=20, val_fraction=val_fraction, progress=False, plots=False,
                     verbose=False, train_eval_size=0)
    assert all(np.array_equal(before[k], net.params[k]) for k in before)


def test_fit_names_the_parts_of_a_four_tuple():
    x, y = _fit_data(None)
    y_val = y[150:].copy()
    y_val[0] = 7
    net = sb.Network.dense([6, 4], 3, rng=0)
    with pytest.raises(ValueError, match=r"y_val: expected labels in \[0, 3\)"):
        training.fit(net, (x[:150], y[:150], x[150:], y_val), epochs=1, progress=False, plots=False)
    x_val = x[150:].copy()
    x_val[3, 2] = np.inf
    with pytest.raises(ValueError, match="x_val: expected finite values"):
        training.fit(net, (x[:150], y[:150], x_val, y[150:]), epochs=1, progress=False, plots=False)
    assert net.input_convention is None
    images = np.zeros((150, 6), np.uint8)
    with pytest.raises(ValueError, match="y_train: expected labels"):
        training.fit(net, (images, np.full(150, 5), x[150:], y[150:]), epochs=1, progress=False, plots=False)
    assert net.input_convention is None  # the uint8 convention is recorded only once the data passed


@pytest.mark.parametrize("call, error, match", [
    (lambda x, y: sb.estimate("psa", None, x, y), TypeError, "net: expected a sbnnumba.Network, got NoneType"),
    (lambda x, y: training.fit(None, (x, y)), TypeError, "net: expected a sbnnumba.Network, got NoneType"),
    (lambda x, y: sb.summary(None, (2,)), TypeError, "net: expected a sbnnumba.Network, got NoneType"),
    (lambda x, y: sb.estimate(["psa"], sb.Network.dense([2, 5], 2, rng=0), x, y), TypeError,
     r"method: expected an estimator name \(str\), got list"),
    (lambda x, y: sb.Network.dense(5, 2), TypeError, "sizes: expected a sequence of positive integers, got int 5"),
    (lambda x, y: sb.Network.dense([2], 2), ValueError, "sizes: expected .* at least one binary layer"),
    (lambda x, y: sb.Network.dense([2, 0], 2), ValueError, r"sizes\[1\]: expected an integer >= 1"),
    (lambda x, y: sb.Network.dense([2, 5], 2, dtype="foo"), ValueError,
     "dtype: expected float32 or float64, got 'foo'"),
    (lambda x, y: sb.architectures.conv((1, 28, 28), 2, width=0.05, dtype="foo"), ValueError, "dtype: expected"),
    (lambda x, y: sb.architectures.mlp((2,), 2, hidden=[3], dtype=np.int32), TypeError,
     "dtype: expected float32 or float64 parameters, got int32"),
    (lambda x, y: sb.summary(sb.Network.dense([2, 5], 2, rng=0), 4, print_fn=None), TypeError,
     "input_shape: expected a sequence of positive integers, got int 4"),
    (lambda x, y: sb.summary(sb.Network.dense([2, 5], 2, rng=0), (3,), print_fn=None), ValueError,
     r"input_shape: a Linear\(2, 5\) layer expects 2 input features per example, got shape \(3,\)"),
])
def test_messages_name_the_argument(call, error, match):
    x, y = _toy()
    with pytest.raises(error, match=match):
        call(x, y)
