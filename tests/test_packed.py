"""Packed deployment (sbnnumba.packed): the packed network must reproduce the float deterministic
network (``Network.forward_deterministic``) exactly: same +-1 states at every stage, bitwise equal
logits, equal predictions, on random and real data, with ties at the thresholds."""
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sbnnumba as sb
from sbnnumba import datasets
from sbnnumba.packed import FORMAT_VERSION, PackedFormatError, PackedNetwork, _float_thresholds, \
    _integer_thresholds, _preactivation_fn


# ------------------------------------------------------------------------------------------- helpers
def float_run(net, x):
    """Pre-activations and states of every stage of the float deterministic network (as in
    ``Network._forward_deterministic``), and its logits from ``forward_deterministic``."""
    pres, states = [], []
    with net.evaluating("deterministic"):
        net.set_mode_weights()
        h = net.check_input(x)
        for layer in net.stages:
            a = layer.forward(h)
            h = np.where(a >= 0, 1, -1).astype(a.dtype)
            pres.append(a)
            states.append(h)
    return pres, states, net.forward_deterministic(x)


def assert_reproduces(net, packed, x):
    """Every stage's states equal, logits bitwise equal (hence allclose and argmax equal)."""
    pres, states, logits = float_run(net, x)
    for k, (want, got) in enumerate(zip(states, packed.forward_states(x))):
        assert got.shape == want.shape, k
        mismatch = np.flatnonzero(got.ravel() != want.ravel())
        assert mismatch.size == 0, f"stage {k}: {mismatch.size} states differ (pre-activations " \
                                   f"{pres[k].ravel()[mismatch[:5]]})"
    got = packed.predict_logits(x)
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(packed.predict(x), np.argmax(logits, axis=1))
    np.testing.assert_array_equal(got, logits)
    return pres


def randomize_normalization(net, rng, zero_gammas=True):
    """Random gammas (both signs, a few exactly 0), betas and deterministic-mode running statistics."""
    for norm in net.normalizations():
        n = norm.gamma.size
        norm.gamma[:] = rng.normal(size=n) * rng.choice([0.1, 1.0, 10.0], size=n)
        if zero_gammas:
            norm.gamma[:2] = 0
            norm.beta[:2] = [0.5, -0.5]
        norm.beta[2:] = rng.normal(scale=0.5, size=n - 2)
        mean, var = norm.running["deterministic"]
        norm.running["deterministic"] = ((mean + rng.normal(scale=2.0, size=n)).astype(mean.dtype),
                                         (var * rng.uniform(0.2, 5.0, size=n)).astype(var.dtype))


@pytest.fixture(scope="module")
def real_x():
    ds = datasets.load_embedded()
    return datasets.normalize(ds.x_test[:256])


@pytest.fixture(scope="module")
def random_x():
    rng = np.random.default_rng(123)
    x = rng.random((192, 1, 28, 28)).astype(np.float32)
    x[:8] = rng.normal(scale=3.0, size=(8, 1, 28, 28))  # also values outside [0, 1]
    return x


def dense_net(weight="hidden", normalize=True, seed=0, calib=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    net = sb.Network.dense([784, 64, 48], 10, weight=weight, normalize=normalize, rng=rng, dtype=dtype)
    if normalize:
        net.recalibrate_normalization(calib.astype(dtype), mode="deterministic")
        randomize_normalization(net, rng)
    return net


def conv_net(first="real", seed=0):
    """Conv stages (first real or Bernoulli, the others Bernoulli; stride, padding, C not a multiple
    of 64, a non-normalized stage), then a normalized Linear stage and the head."""
    r = np.random.default_rng(seed)
    stages = [sb.Normalized(sb.Conv2d(1, 8, 3, padding=1, rng=r, weight=first)),
              sb.Normalized(sb.Conv2d(8, 70, 3, stride=2, padding=1, rng=r, weight="bernoulli")),
              sb.Conv2d(70, 20, 3, stride=2, rng=r, weight="bernoulli"),
              sb.Normalized(sb.Conv2d(20, 66, (3, 2), stride=(1, 2), padding=(1, 0), rng=r, weight="bernoulli")),
              sb.Normalized(sb.Linear(66 * 6 * 3, 40, rng=r, weight="bernoulli"))]
    return sb.Network(stages, sb.Linear(40, 10, rng=r))


# ---------------------------------------------------------------------------- threshold folding rule
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thresholds_match_float_arithmetic_at_every_dot(dtype):
    rng = np.random.default_rng(0)
    k, n = 37, 300
    layer = sb.Normalized(sb.Linear(k, n, rng=rng, dtype=dtype, weight="bernoulli"))
    layer.training, layer.stats_mode = False, "deterministic"
    layer.gamma[:] = rng.normal(size=n)
    layer.gamma[:4] = [0, 0, -0.0, 1e-30]
    layer.beta[:] = rng.choice([0.0, 0.5, -1.25], size=n)
    layer.bias[:] = rng.choice([0.0, 1.0, -3.0, 0.1], size=n)
    mean = rng.integers(-k, k + 1, size=n).astype(dtype)  # many exact ties: z == mean, beta == 0
    layer.running["deterministic"] = (mean, rng.choice([0.0, 1.0, 7.3], size=n).astype(dtype))
    evaluate = _preactivation_fn(layer)
    t, flip = _integer_thresholds(evaluate, n, k, dtype, "test")
    d = np.arange(-k, k + 1)
    want = evaluate(np.broadcast_to(d.astype(dtype)[:, None], (d.size, n))) >= 0
    got = np.where(flip, d[:, None] < t, d[:, None] >= t)
    np.testing.assert_array_equal(got, want)
    assert np.any(evaluate(np.broadcast_to(d.astype(dtype)[:, None], (d.size, n))) == 0)  # ties occurred

    thr, fl = _float_thresholds(evaluate, n, dtype)
    y = np.concatenate([d.astype(dtype), rng.normal(scale=50, size=200).astype(dtype)])
    # the floats adjacent to every threshold
    finite = thr[np.isfinite(thr)]
    y = np.concatenate([y, finite, np.nextafter(finite, dtype(np.inf)), np.nextafter(finite, dtype(-np.inf))])
    grid = np.broadcast_to(y[:, None], (y.size, n)).astype(dtype)
    want = evaluate(grid) >= 0
    got = np.where(fl, grid <= thr, grid >= thr)
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- whole networks
@pytest.mark.parametrize("data", ["random", "real"])
def test_dense_normalized_binary_net(data, real_x, random_x):
    x = real_x if data == "real" else random_x
    net = dense_net("hidden", normalize=True, calib=real_x)
    packed = PackedNetwork.from_network(net, calibration_x=x[:32])
    assert [s.kind for s in packed.stages] == ["float_dense", "binary_dense"]
    assert_reproduces(net, packed, x)


@pytest.mark.parametrize("weight", ["hidden", "bernoulli", "real"])
def test_dense_without_normalization(weight, real_x, random_x):
    net = dense_net(weight, normalize=False, seed=1)
    packed = PackedNetwork.from_network(net)
    kinds = {"hidden": ["float_dense", "binary_dense"], "bernoulli": ["float_dense", "binary_dense"],
             "real": ["float_dense", "float_dense"]}[weight]
    assert [s.kind for s in packed.stages] == kinds
    for x in (real_x, random_x):
        assert_reproduces(net, packed, x)


def test_float64_network(real_x):
    net = dense_net("bernoulli", normalize=True, seed=2, calib=real_x, dtype=np.float64)
    packed = PackedNetwork.from_network(net)
    assert packed.predict_logits(real_x).dtype == np.float64
    assert_reproduces(net, packed, real_x)


@pytest.mark.parametrize("first", ["real", "bernoulli"])
def test_conv_net(first, real_x, random_x):
    net = conv_net(first)
    net.recalibrate_normalization(real_x, mode="deterministic")
    randomize_normalization(net, np.random.default_rng(5))
    packed = PackedNetwork.from_network(net, input_shape=(1, 28, 28))
    assert [s.kind for s in packed.stages] == ["float_conv", "binary_conv", "binary_conv", "binary_conv",
                                               "binary_dense"]
    for x in (real_x[:96], random_x[:64]):
        assert_reproduces(net, packed, x)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 140), min_size=2, max_size=4), normalize=st.booleans(),
       weight=st.sampled_from(["hidden", "bernoulli"]), seed=st.integers(0, 2 ** 16))
def test_random_dense_shapes(sizes, normalize, weight, seed):
    """Any widths (partial words, a single unit), integer-valued inputs that make ties frequent."""
    rng = np.random.default_rng(seed)
    net = sb.Network.dense(sizes, 3, weight=weight, normalize=normalize, rng=rng)
    x = rng.integers(-2, 3, size=(17, sizes[0])).astype(np.float32)
    for layer in net.stages:
        inner = getattr(layer, "layer", layer)
        inner.bias[:] = rng.integers(-2, 3, size=inner.bias.shape)  # integer biases: exact ties
        if inner.latent is None:
            inner.weight[:] = rng.integers(-1, 2, size=inner.weight.shape)
    if normalize:
        net.recalibrate_normalization(x, mode="deterministic")
        for norm in net.normalizations():
            mean, var = norm.running["deterministic"]
            norm.running["deterministic"] = (np.round(mean), var)
            norm.gamma[:] = rng.choice([-2.0, -0.5, 0.0, 0.5, 3.0], size=norm.gamma.shape)
            norm.beta[:] = rng.choice([0.0, 0.0, 0.25, -1.0], size=norm.beta.shape)
    assert_reproduces(net, PackedNetwork.from_network(net), x)


# ---------------------------------------------------------------------------------------- ties
def test_ties_dense(real_x):
    """Pre-activations exactly 0 (sign(0) = +1) in the float first stage and the binary stage,
    with and without normalization and for both signs of gamma."""
    x = real_x[:64]
    for normalize in (True, False):
        net = dense_net("hidden", normalize=normalize, seed=3, calib=real_x)
        first, second = (getattr(s, "layer", s) for s in net.stages)
        with net.evaluating("deterministic"):
            net.set_mode_weights()
            y0 = x.reshape(len(x), -1) @ first.weight.T  # the raw float product of the first stage
        first.bias[:] = -y0[0]  # example 0 sits exactly on every first-stage threshold ...
        if normalize:
            for norm in net.normalizations():
                mean, var = norm.running["deterministic"]
                norm.running["deterministic"] = (np.zeros_like(mean), var)
                norm.beta[:] = 0
        _, states, _ = float_run(net, x)
        dots = states[0] @ second.weight.T  # exact integers
        second.bias[:] = 0 if normalize else -dots[1]  # ... example 1 on every second-stage threshold
        if normalize:
            norm = net.stages[1]
            norm.running["deterministic"] = (dots[1].astype(np.float32), norm.running["deterministic"][1])
            norm.gamma[:] = np.where(np.arange(norm.gamma.size) % 2, -1.0, 1.0) * np.abs(norm.gamma) + 0.1
        pres = assert_reproduces(net, PackedNetwork.from_network(net), x)
        assert np.all(pres[0][0] == 0) and np.all(pres[1][1] == 0), "the construction must produce exact ties"


def raw_product(net, layer, h):
    """``y`` of the deterministic network's layer (the product without the bias): exact integers here."""
    saved = layer.bias.copy()
    layer.bias[:] = 0
    try:
        with net.evaluating("deterministic"):
            net.set_mode_weights()
            return layer.forward(h)
    finally:
        layer.bias[:] = saved


def test_ties_conv(real_x):
    """Exact ties in binary conv stages: normalized (mean = an attained z, beta = 0, both signs of
    gamma) and plain (bias = -dot); each stage is set after the earlier ones (its input is final)."""
    x = real_x[:32]
    net = conv_net("bernoulli", seed=4)
    net.recalibrate_normalization(real_x, mode="deterministic")
    for k in (1, 2, 3):
        _, states, _ = float_run(net, x)
        stage = net.stages[k]
        if isinstance(stage, sb.Normalized):
            z = raw_product(net, stage.layer, states[k - 1]) + stage.layer.bias[None, :, None, None]
            stage.running["deterministic"] = (z[0, :, 1, 1].copy(), stage.running["deterministic"][1])
            stage.beta[:] = 0
            stage.gamma[::2] *= -1
        else:
            stage.bias[:] = -raw_product(net, stage, states[k - 1])[1, :, 0, 0]
    pres = assert_reproduces(net, PackedNetwork.from_network(net, input_shape=(1, 28, 28)), x)
    assert np.all(pres[1][0, :, 1, 1] == 0) and np.all(pres[2][1, :, 0, 0] == 0) and np.all(pres[3][0, :, 1, 1] == 0)


# ------------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def small_packed(real_x):
    net = dense_net("hidden", normalize=True, seed=6, calib=real_x)
    return net, PackedNetwork.from_network(net)


def test_save_load_round_trip(tmp_path, small_packed, real_x):
    net, packed = small_packed
    path = tmp_path / "model.npz"
    assert packed.save(path) == os.fspath(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temp file left behind
    loaded = PackedNetwork.load(path)
    np.testing.assert_array_equal(loaded.predict_logits(real_x), net.forward_deterministic(real_x))
    assert loaded.size_report() == packed.size_report()
    packed.save(path)  # overwriting works (os.replace)
    conv_float = conv_net("real")
    conv_float.recalibrate_normalization(real_x, mode="deterministic")
    conv = PackedNetwork.from_network(conv_float, input_shape=(1, 28, 28))
    conv.save(tmp_path / "conv.npz")
    np.testing.assert_array_equal(PackedNetwork.load(tmp_path / "conv.npz").predict_logits(real_x[:16]),
                                  conv.predict_logits(real_x[:16]))


def _rewrite(src, dst, change):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def test_bad_files(tmp_path, small_packed):
    _, packed = small_packed
    good = tmp_path / "good.npz"
    packed.save(good)
    raw = good.read_bytes()
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        PackedNetwork.load(tmp_path / "missing.npz")
    cases = {}
    (tmp_path / "truncated.npz").write_bytes(raw[:len(raw) // 2])
    cases["truncated.npz"] = "corrupt"
    corrupt = bytearray(raw)
    corrupt[len(raw) // 3:len(raw) // 3 + 64] = bytes(64)
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    cases["corrupt.npz"] = "corrupt"
    (tmp_path / "text.npz").write_text("not a zip file")
    cases["text.npz"] = "corrupt"
    _rewrite(good, tmp_path / "version.npz", lambda a: a.update({"meta/version": np.array(FORMAT_VERSION + 1)}))
    cases["version.npz"] = f"version {FORMAT_VERSION + 1}"
    _rewrite(good, tmp_path / "format.npz", lambda a: a.update({"meta/format": np.array("sbnnumba-checkpoint")}))
    cases["format.npz"] = "not a packed"
    _rewrite(good, tmp_path / "shape.npz",
             lambda a: a.update({"stages/1/threshold": a["stages/1/threshold"][:-1]}))
    cases["shape.npz"] = "stages/1/threshold"
    _rewrite(good, tmp_path / "missing_array.npz", lambda a: a.pop("stages/0/weight"))
    cases["missing_array.npz"] = "stages/0/weight"
    _rewrite(good, tmp_path / "spec.npz", lambda a: a.update({"meta/spec": np.array("{not json")}))
    cases["spec.npz"] = "corrupt"
    for name, message in cases.items():
        with pytest.raises(PackedFormatError, match=message) as info:
            PackedNetwork.load(tmp_path / name)
        assert name in str(info.value)
    assert isinstance(PackedFormatError("x"), ValueError)
    with zipfile.ZipFile(good) as zf:  # the good file is a plain npz of named arrays
        assert {"meta/format.npy", "meta/version.npy", "meta/spec.npy"} <= set(zf.namelist())


# -------------------------------------------------------------------------------------------- size
@pytest.mark.filterwarnings("ignore:PackedNetwork.from_network")
def test_size_report_known_model():
    net = sb.Network.dense([100, 70, 130], 10, weight="bernoulli", normalize=True, rng=0)
    rows = PackedNetwork.from_network(net).size_report()
    by_name = {r["name"]: r for r in rows}
    # stage 0: float compute with 1-bit weights: 70 rows x 2 words + float32 thresholds + flip bytes
    assert by_name["stages.0"]["packed_bytes"] == 70 * 2 * 8 + 70 * 4 + 70
    assert by_name["stages.0"]["float32_bytes"] == 4 * (70 * 100 + 70 + 4 * 70)
    # stage 1: binary: 130 rows x 2 words + int32 thresholds + flip bytes
    assert by_name["stages.1"]["packed_bytes"] == 130 * 2 * 8 + 130 * 4 + 130
    assert by_name["stages.1"]["float32_bytes"] == 4 * (130 * 70 + 130 + 4 * 130)
    assert by_name["head"]["packed_bytes"] == by_name["head"]["float32_bytes"] == 4 * (10 * 130 + 10)
    total = by_name["total"]
    assert total["packed_bytes"] == 1470 + 2730 + 5240
    assert total["float32_bytes"] == 29400 + 39000 + 5240
    assert total["ratio"] == pytest.approx(73640 / 9440)


# ------------------------------------------------------------------------------- checks and errors
def test_conversion_checks_and_input_errors(real_x):
    net = sb.Network.dense([784, 16], 3, weight="hidden", normalize=True, rng=0)
    with pytest.warns(RuntimeWarning, match="recalibrate_normalization"):
        packed = PackedNetwork.from_network(net)  # no deterministic statistics yet: both use the stochastic ones
    assert_reproduces(net, packed, real_x[:32])
    with pytest.raises(ValueError, match="x: expected 784 input features"):
        packed.predict(np.zeros((2, 783), np.float32))
    with pytest.raises(ValueError, match="finite"):
        packed.predict(np.full((2, 784), np.nan, np.float32))
    with pytest.raises(TypeError, match="net"):
        PackedNetwork.from_network("not a network")

    odd = sb.Network([sb.Linear(4, 3, rng=0), sb.Normalized(sb.Linear(3, 2, rng=0))], sb.Linear(2, 2, rng=0))
    odd.stages[0] = object.__new__(type("Pool", (), {"__repr__": lambda self: "Pool()"}))
    with pytest.raises(NotImplementedError, match="Pool"):
        PackedNetwork.from_network(odd, input_shape=(4,))
    conv = conv_net("real")
    conv.recalibrate_normalization(real_x, mode="deterministic")
    with pytest.raises(ValueError, match="x:"):
        PackedNetwork.from_network(conv, input_shape=(1, 2, 2))
    packed = PackedNetwork.from_network(conv, calibration_x=real_x[:8])  # checks itself on calibration_x
    with pytest.raises(ValueError, match=r"x: expected inputs of shape \(B, 1, 28, 28\)"):
        packed.predict(np.zeros((2, 784), np.float32))
    np.testing.assert_array_equal(packed.predict(real_x[:40], batch_size=16), packed.predict(real_x[:40]))
