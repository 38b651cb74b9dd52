"""Packed deployment (sbnnumba.packed): the packed network must reproduce the float deterministic
network (``Network.forward_deterministic``) exactly: same +-1 states at every stage, bitwise equal
logits, equal predictions, on random and real data, with ties at the thresholds.

The bit-plane first stage (``input_quantization``) is checked against an exact integer (int64)
reference of the deterministic network (bitwise), and against the float network on real data
(agreement bounds derived in ``test_bitplane_agreement_with_float_network_on_real_data``)."""
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import has_avx512_vpopcntdq, randomize_normalization, run_without_jit

import sbnnumba as sb
from sbnnumba import bitpack, datasets, runtime
from sbnnumba.kernels import bitplane as bp_kernels
from sbnnumba.packed import (
    FORMAT_VERSION,
    PackedFormatError,
    PackedNetwork,
    _float_thresholds,
    _integer_thresholds,
    _preactivation_fn,
    quantized_reference_logits,
)


# ------------------------------------------------------------------------------------------- helpers
def float_run(net, x):
    """Pre-activations and states of every stage of the float deterministic network (as in
    ``Network._forward_deterministic``), and its logits from ``forward_deterministic``."""
    pres, states = [], []
    with net.evaluating("deterministic"):
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
    layer.inner.bias[:] = rng.choice([0.0, 1.0, -3.0, 0.1], size=n)
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
        inner = layer.inner
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
        first, second = (s.inner for s in net.stages)
        with net.evaluating("deterministic"):
                y0 = runtime.gemm(x.reshape(len(x), -1), first.weight.T)  # the first stage's raw float product
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
    with pytest.raises(ValueError, match="input_shape:"):
        PackedNetwork.from_network(conv, input_shape=(1, 2, 2))
    packed = PackedNetwork.from_network(conv, calibration_x=real_x[:8])  # checks itself on calibration_x
    with pytest.raises(ValueError, match=r"x: expected inputs of shape \(B, 1, 28, 28\)"):
        packed.predict(np.zeros((2, 784), np.float32))
    np.testing.assert_array_equal(packed.predict(real_x[:40], batch_size=16), packed.predict(real_x[:40]))


# ==================================================================================================
# Bit-plane first stage: binary weights on quantized inputs x = scale * q (input_quantization)
# ==================================================================================================

def grid_values(q, scale, dtype=np.float32):
    """The grid points ``dtype(scale * q)`` (float64 product, rounded once), as pack_planes defines them."""
    return (scale * np.asarray(q, np.float64)).astype(dtype)


def pm1_weights(rng, n, k):
    return np.where(rng.random((n, k)) < 0.5, -1, 1).astype(np.int8)


def check_bitplane_kernels(m, k, n, bits, rng):
    """pack_planes (codes and grid values), bitplane_matmul and its fused threshold form against the
    NumPy references and the int64 product ``q @ w.T``."""
    q = rng.integers(0, 1 << bits, size=(m, k))
    q[0] = (1 << bits) - 1  # extreme codes
    if m > 1:
        q[1] = 0
    w = pm1_weights(rng, n, k)
    planes = bitpack.pack_planes(q.astype(np.uint8), bits)
    assert planes.shape == (m, bits, bitpack.n_words(k)) and planes.dtype == np.uint64
    np.testing.assert_array_equal(planes, bp_kernels.planes_reference(q, bits))
    np.testing.assert_array_equal(bitpack.pack_planes(q.astype(np.int32), bits), planes)
    for scale in (1 / 255, 0.37, 4.0):
        for dtype in (np.float32, np.float64):
            np.testing.assert_array_equal(bitpack.pack_planes(grid_values(q, scale, dtype), bits, scale), planes)
    w_words = bitpack.pack(w)
    z = q.astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(bp_kernels.bitplane_matmul_reference(planes, w_words, k), z)
    for weights in (w_words, bitpack.prepare_weights(w_words)):
        got = bitpack.bitplane_matmul(planes, weights, k)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, z)
    # thresholds at attained products (ties z == t), out of range, fractional, +-inf; with and without flips
    z_max = ((1 << bits) - 1) * k
    t = z[rng.integers(0, m, n), np.arange(n)].astype(np.float64)
    t[::5] = rng.integers(-z_max - 3, z_max + 4, size=t[::5].shape)
    t[3::11] += 0.5
    t[1::7], t[2::7] = np.inf, -np.inf
    flip = rng.random(n) < 0.5
    for f in (None, flip):
        got = bitpack.bitplane_matmul_threshold(planes, w_words, k, t, f)
        np.testing.assert_array_equal(got, bp_kernels.bitplane_threshold_reference(z, t, f))
    # the packed output is the +-1 input of the next binary layer
    np.testing.assert_array_equal(bitpack.unpack(got, n, np.int8), np.where(flip, -1, 1) * np.where(z >= t, 1, -1))


@pytest.mark.parametrize("m, k, n, bits", [(1, 1, 1, 1), (1, 64, 1, 8), (2, 63, 31, 2), (4, 65, 33, 5),
                                           (5, 128, 64, 8), (7, 130, 70, 3), (3, 784, 100, 8), (33, 200, 97, 7),
                                           (1, 1, 65, 4), (9, 1, 3, 6), (6, 9, 129, 8)])
def test_bitplane_kernels_equal_numpy_reference(m, k, n, bits):
    """Edges: one element, K and N one above/below a multiple of 64 (and of the 32-column panels),
    K not a multiple of 8 (the packing works in groups of 8 codes), all-zero and all-max codes."""
    check_bitplane_kernels(m, k, n, bits, np.random.default_rng(1000 * m + 10 * k + n + bits))


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 13), k=st.integers(1, 300), n=st.integers(1, 100), bits=st.integers(1, 8),
       seed=st.integers(0, 2 ** 16))
def test_bitplane_kernels_random_shapes(m, k, n, bits, seed):
    check_bitplane_kernels(m, k, n, bits, np.random.default_rng(seed))


def test_pack_planes_rejects_inputs_off_the_grid():
    q = np.arange(256).reshape(2, 128)
    x = grid_values(q, 1 / 255)
    planes = bitpack.pack_planes(x, 8, 1 / 255)
    y = x.copy()
    y[0, 0] = -0.0  # -0 is the grid point 0
    np.testing.assert_array_equal(bitpack.pack_planes(y, 8, 1 / 255), planes)
    for bad in (np.nextafter(x[1, 5], np.float32(2)), np.float32(-1 / 255), np.float32(256 / 255),
                np.float32(0.5 / 255), np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 5] = bad
        with pytest.raises(ValueError, match=r"x: expected values on the grid .*row 1 "):
            bitpack.pack_planes(y, 8, 1 / 255)
    with pytest.raises(ValueError, match=r"x: expected values on the grid x = scale \* q, q integer in \[0, 16\)"):
        bitpack.pack_planes(x, 4, 1 / 255)  # on the 8-bit grid, but codes >= 16
    with pytest.raises(ValueError, match=r"x: expected integer codes in \[0, 16\)"):
        bitpack.pack_planes(q.astype(np.uint8), 4)
    with pytest.raises(ValueError, match=r"x: expected integer codes in \[0, 256\)"):
        bitpack.pack_planes(np.array([[0, -1]]), 8)
    with pytest.raises(ValueError, match=r"x: expected integer codes in \[0, 256\)"):
        bitpack.pack_planes(np.array([[0, 256]], np.int16), 8)
    with pytest.raises(TypeError, match="x: expected integer codes"):
        bitpack.pack_planes(x, 8)
    with pytest.raises(TypeError, match="x: expected real values"):
        bitpack.pack_planes(np.array([[1j]]), 8, 1.0)
    for bits in (0, 9):
        with pytest.raises(ValueError, match="bits"):
            bitpack.pack_planes(q, bits)
    for scale in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="scale"):
            bitpack.pack_planes(x, 8, scale)
    w_words = bitpack.pack(np.ones((3, 128)))
    with pytest.raises(ValueError, match=r"planes: expected shape \(M, bits, n_words\) with 1 <= bits <= 8"):
        bitpack.bitplane_matmul(np.zeros((2, 9, 2), np.uint64), w_words, 128)
    with pytest.raises(ValueError, match="k: k=200 needs"):
        bitpack.bitplane_matmul(planes, w_words, 200)
    with pytest.raises(ValueError, match="w_words"):
        bitpack.bitplane_matmul(planes, w_words[:, :1], 128)
    with pytest.raises(TypeError, match="planes"):
        bitpack.bitplane_matmul(planes.astype(np.int64), w_words, 128)
    with pytest.raises(ValueError, match="thresholds"):
        bitpack.bitplane_matmul_threshold(planes, w_words, 128, np.zeros(4))
    with pytest.raises(TypeError, match="flip"):
        bitpack.bitplane_matmul_threshold(planes, w_words, 128, 0, np.zeros(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitplane_thresholds_match_float_arithmetic_at_every_product(dtype):
    """Bisection on z (scaled integer thresholds) against exhaustive evaluation of the float
    network's arithmetic at y = dtype(scale * z) for every z of a small range, with exact ties;
    and, on the range of 8-bit 784-pixel inputs, the sign on both sides of every threshold."""
    rng = np.random.default_rng(3)
    n = 300
    layer = sb.Normalized(sb.Linear(6, n, rng=rng, dtype=dtype, weight="bernoulli"))
    layer.training, layer.stats_mode = False, "deterministic"
    layer.gamma[:] = rng.normal(size=n)
    layer.gamma[:4] = [0, 0, -0.0, 1e-30]
    layer.beta[:] = rng.choice([0.0, 0.0, 0.5, -1.25], size=n)
    layer.inner.bias[:] = rng.choice([0.0, 1.0, -3.0, 0.1], size=n)
    evaluate = _preactivation_fn(layer)
    for scale, z_max in ((0.5, 7 * 6), (1 / 255, 255 * 6), (3.0, 3 * 6)):
        d = np.arange(-z_max, z_max + 1)
        y = np.broadcast_to(grid_values(d, scale, dtype)[:, None], (d.size, n))
        # running means at attained values of y + bias: exact ties (z_hat = 0, beta = 0) for many units
        mean = (y[rng.integers(0, d.size, n), np.arange(n)] + layer.inner.bias).astype(dtype)
        layer.running["deterministic"] = (mean, rng.choice([0.0, 1.0, 7.3], size=n).astype(dtype))
        t, flip = _integer_thresholds(evaluate, n, z_max, dtype, "test", scale=scale)
        want = evaluate(y) >= 0
        np.testing.assert_array_equal(np.where(flip, d[:, None] < t, d[:, None] >= t), want)
        assert np.any(evaluate(y) == 0), "ties must occur"
    z_max = 255 * 784
    layer.running["deterministic"] = (rng.normal(scale=30, size=n).astype(dtype),
                                      rng.uniform(0.5, 50, size=n).astype(dtype))
    t, flip = _integer_thresholds(evaluate, n, z_max, dtype, "test", scale=1 / 255)
    probe = np.stack([t - 1, t, np.full(n, -z_max), np.full(n, z_max)] +
                     [rng.integers(-z_max, z_max + 1, n) for _ in range(20)])
    probe = np.clip(probe, -z_max, z_max)
    plus = np.stack([evaluate(grid_values(p, 1 / 255, dtype)[None, :])[0] >= 0 for p in probe])
    np.testing.assert_array_equal(np.where(flip, probe < t, probe >= t), plus)


def exact_first_stage_reference(net, q, scale):
    """The deterministic network with its first raw product in exact integer arithmetic.

    ``z = q @ sign(eta).T`` in int64, ``y = dtype(scale * z)`` (float64 product rounded once), fed to
    the network's own first layer (its Linear stands replaced by ``y + bias``, as Linear.forward adds
    the bias; Normalized then normalizes with the deterministic statistics), then every later stage and
    the head as ``forward_deterministic``. Returns (first pre-activation, states, logits)."""
    dtype = np.dtype(net.dtype)
    first = net.stages[0]
    inner = first.inner
    w = inner.latent.mode().astype(np.int64)
    z = np.asarray(q).reshape(len(q), -1).astype(np.int64) @ w.T
    y = (scale * z.astype(np.float64)).astype(dtype)

    with net.evaluating("deterministic"):  # Bernoulli stages compute with sign(eta)
        z_first = y + inner.bias  # Linear.forward's bias add
        a = first.affine(z_first, "deterministic") if first.normalization is not None else z_first
        h = np.where(a >= 0, 1, -1).astype(dtype)
        states = [h]
        for layer in net.stages[1:]:
            h = np.where(layer.forward(h) >= 0, 1, -1).astype(dtype)
            states.append(h)
        return a, states, net.head.forward(h)


@pytest.mark.parametrize("sizes, bits, scale, normalize, dtype", [
    ([70, 40, 33], 8, 1 / 255, True, np.float32), ([70, 40, 33], 8, 1 / 255, False, np.float32),
    ([129, 65], 3, 0.5, True, np.float32), ([64, 64, 64], 1, 1.0, True, np.float32),
    ([1, 2, 3], 2, 0.25, True, np.float32), ([70, 40], 5, 0.37, True, np.float64),
    ([200, 31, 7], 8, 1 / 255, True, np.float64)])
def test_bitplane_network_equals_exact_integer_reference(sizes, bits, scale, normalize, dtype):
    """Stage by stage and bitwise logits against the int64 reference, with exact ties in the first
    stage (example 0 on the threshold of every unit), both signs of gamma and zero gammas."""
    rng = np.random.default_rng(sum(sizes) + bits)
    net = sb.Network.dense(sizes, 4, weight="bernoulli", normalize=normalize, rng=rng, dtype=dtype)
    q = rng.integers(0, 1 << bits, size=(64, sizes[0]))
    x = grid_values(q, scale, dtype)
    first = net.stages[0].inner
    w = first.latent.mode().astype(np.int64)
    y0 = grid_values(q[0] @ w.T, scale, dtype)  # example 0's exact first product
    if normalize:
        net.recalibrate_normalization(x, mode="deterministic")
        randomize_normalization(net, rng, zero_gammas=sizes[1] > 2)
        norm = net.stages[0]
        norm.running["deterministic"] = ((y0 + first.bias).astype(dtype), norm.running["deterministic"][1])
        norm.beta[norm.gamma != 0] = 0  # a = gamma * 0 + 0: exact ties
    else:
        first.bias[:] = -y0
    packed = PackedNetwork.from_network(net, calibration_x=x, input_quantization=(scale, bits))
    assert [s.kind for s in packed.stages] == ["bitplane_dense"] + ["binary_dense"] * (len(sizes) - 2)
    assert packed.input_quantization == (scale, bits)
    a, states, logits = exact_first_stage_reference(net, q, scale)
    assert np.any(a[0] == 0), "the construction must produce exact ties"
    for k, (want, got) in enumerate(zip(states, packed.forward_states(x))):
        np.testing.assert_array_equal(got, want, err_msg=f"stage {k}")
    np.testing.assert_array_equal(packed.predict_logits(x), logits)
    np.testing.assert_array_equal(packed.predict_logits(q.astype(np.uint8), codes=True), logits)
    np.testing.assert_array_equal(packed.predict(q, batch_size=7, codes=True), np.argmax(logits, 1))
    np.testing.assert_array_equal(quantized_reference_logits(net, x, (scale, bits)), logits)
    assert packed.predict_logits(x[:0]).shape == (0, 4)


def test_bitplane_agreement_with_float_network_on_real_data(real_x):
    """Real Fashion-MNIST (the embedded 2,000 test images), a random fully binary network whose
    normalization is recalibrated in deterministic mode: the bit-plane stage equals the exact
    reference bitwise, and agrees with the float32 BLAS network except where float32 rounding
    crosses a threshold.

    Why >= 99.99% of first-layer states and >= 99.9% of predictions (derived, not fitted):
    a state differs only where unit j's threshold T_j (in y) lies between the float network's
    y_blas = fl32(x @ w_j) and fl(z_j / 255) (asserted exactly below). |y_blas - z_j / 255| is at most
    gamma_{K+1} sum|x| ~ 785 u * 225 ~ 1e-2 (u = 2^-24, worst case, asserted), but float32 summation
    errors are ~K roundings of either sign, each <= u |partial sum| with partial sums ~ |y| ~ 8 (the
    spread of y_j over images: a sum of 784 +-pixels), so typically ~ u sqrt(K / 3) * 8 ~ 8e-6. The
    recalibrated thresholds (beta = 0) sit at the mean of y_j, where its density is highest,
    ~ 1 / (sqrt(2 pi) * 8) ~ 0.05 per unit of y. Expected fraction of differing states:
    ~ 0.05 * 8e-6 = 4e-7, 250x below the 1e-4 allowed. A prediction can change only through a
    differing first-layer state (every later stage and the head are exact): at most 256 * 4e-7 ~ 1e-4
    of the images, 10x below the 1e-3 allowed.
    """
    ds = datasets.load_embedded()
    q = ds.x_test
    x = datasets.normalize(q)
    net = sb.Network.dense([784, 256, 128], 10, weight="bernoulli", normalize=True, rng=0)
    net.recalibrate_normalization(datasets.normalize(ds.x_train[:2000]), mode="deterministic")
    packed = PackedNetwork.from_network(net, calibration_x=x[:100], input_quantization=(1 / 255, 8))
    _, states, logits = float_run(net, x)
    got = packed.forward_states(x)
    _, exact_states, exact_logits = exact_first_stage_reference(net, q, 1 / 255)
    for k in range(2):
        np.testing.assert_array_equal(got[k], exact_states[k])
    np.testing.assert_array_equal(packed.predict_logits(x), exact_logits)

    first = net.stages[0].layer
    with net.evaluating("deterministic"):
        w = first.weight
    y_blas = raw_product(net, first, x).astype(np.float64)  # the float network's own x @ w.T (bias 0)
    y_true = (q.reshape(len(q), -1).astype(np.int64) @ w.astype(np.int64).T) / 255.0  # z / 255 (float64)
    y_fl = (q.reshape(len(q), -1).astype(np.int64) @ w.astype(np.int64).T * (1 / 255)).astype(np.float32)
    u, k = 2.0 ** -24, 784
    gamma = (k + 1) * u / (1 - (k + 1) * u)
    err = np.abs(y_blas - y_true)
    assert np.all(err <= gamma * np.abs(x).reshape(len(x), -1).sum(axis=1, keepdims=True))
    threshold, flip = _float_thresholds(_preactivation_fn(net.stages[0]), 256, np.float32)
    side_blas = np.where(flip, y_blas <= threshold, y_blas >= threshold)
    side_exact = np.where(flip, y_fl <= threshold, y_fl >= threshold)
    differ = states[0] != got[0]
    np.testing.assert_array_equal(differ, side_blas != side_exact)
    state_agreement = 1 - differ.mean()
    prediction_agreement = np.mean(np.argmax(logits, 1) == packed.predict(x))
    assert state_agreement >= 0.9999, (state_agreement, differ.sum(), err.max())
    assert prediction_agreement >= 0.999, prediction_agreement


def test_bitplane_save_load_round_trip_and_format_versions(tmp_path, real_x):
    net = dense_net("bernoulli", normalize=True, seed=7, calib=real_x)
    packed = PackedNetwork.from_network(net, input_quantization=(1 / 255, 8))
    path = tmp_path / "quantized.npz"
    packed.save(path)
    with np.load(path) as z:
        assert int(z["meta/version"]) == FORMAT_VERSION == 2
    loaded = PackedNetwork.load(path)
    assert [s.kind for s in loaded.stages] == ["bitplane_dense", "binary_dense"]
    assert loaded.input_quantization == (1 / 255, 8)
    np.testing.assert_array_equal(loaded.predict_logits(real_x), packed.predict_logits(real_x))
    np.testing.assert_array_equal(loaded.predict_logits(real_x), quantized_reference_logits(net, real_x, (1 / 255, 8)))
    assert loaded.size_report() == packed.size_report()
    assert packed.size_report()[0]["kind"] == "bitplane_dense (8-bit input)"

    plain = PackedNetwork.from_network(net)  # no bit-plane stage: still written as version 1, and read
    plain.save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz") as z:
        assert int(z["meta/version"]) == 1
    np.testing.assert_array_equal(PackedNetwork.load(tmp_path / "plain.npz").predict_logits(real_x),
                                  net.forward_deterministic(real_x))

    def spec_change(change):
        def apply(arrays):
            spec = json.loads(str(arrays["meta/spec"]))
            change(spec)
            arrays["meta/spec"] = np.array(json.dumps(spec))
        return apply

    cases = {
        "as_v1.npz": (lambda a: a.update({"meta/version": np.array(1)}),
                      r"unknown kind 'bitplane_dense' \(format version 1\)"),
        "v3.npz": (lambda a: a.update({"meta/version": np.array(3)}), "version 3"),
        "bits.npz": (spec_change(lambda s: s["stages"][0]["meta"].update(bits=9)), "inconsistent"),
        "scale.npz": (spec_change(lambda s: s["stages"][0]["meta"].update(scale=-1.0)), "inconsistent"),
        "no_scale.npz": (spec_change(lambda s: s["stages"][0]["meta"].pop("scale")), "inconsistent"),
        "second.npz": (spec_change(lambda s: s["stages"][1].update(kind="bitplane_dense")),
                       "stage 1: a bit-plane stage must read the real input"),
        "threshold.npz": (lambda a: a.update({"stages/0/threshold": a["stages/0/threshold"].astype(np.int64)}),
                          "stages/0/threshold"),
        "weights.npz": (lambda a: a.pop("stages/0/weight_bits"), "stages/0/weight_bits"),
    }
    for name, (change, message) in cases.items():
        _rewrite(path, tmp_path / name, change)
        with pytest.raises(PackedFormatError, match=message) as info:
            PackedNetwork.load(tmp_path / name)
        assert name in str(info.value)


def test_bitplane_conversion_and_input_errors(real_x):
    net = dense_net("bernoulli", normalize=True, seed=8, calib=real_x)
    for bad, error in (((1 / 255,), TypeError), ("1/255, 8", TypeError), ((0.0, 8), ValueError),
                       ((-1.0, 8), ValueError), ((np.nan, 8), ValueError), ((1 / 255, 0), ValueError),
                       ((1 / 255, 9), ValueError), ((1 / 255, 8.0), TypeError)):
        with pytest.raises(error, match="input_quantization"):
            PackedNetwork.from_network(net, input_quantization=bad)
    with pytest.raises(ValueError, match="input_quantization: .*real weights"):
        PackedNetwork.from_network(dense_net("hidden", normalize=True, seed=8, calib=real_x),
                                   input_quantization=(1 / 255, 8))
    conv = conv_net("bernoulli")
    conv.recalibrate_normalization(real_x, mode="deterministic")
    with pytest.raises(NotImplementedError, match="input_quantization: .*convolution"):
        PackedNetwork.from_network(conv, input_shape=(1, 28, 28), input_quantization=(1 / 255, 8))
    with pytest.raises(ValueError, match="calibration_x: expected values on the grid"):
        PackedNetwork.from_network(net, calibration_x=real_x[:8] + 1e-3, input_quantization=(1 / 255, 8))

    packed = PackedNetwork.from_network(net, input_quantization=(1 / 255, 8))
    x = real_x[:8].copy()
    x[3, 0, 5, 5] = np.nextafter(x[3, 0, 5, 5], np.float32(2))
    with pytest.raises(ValueError, match="x: expected values on the grid .*row 3 "):
        packed.predict(x)
    x[3, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="x: expected finite values"):
        packed.predict(x)
    with pytest.raises(ValueError, match="x: expected 784 input features"):
        packed.predict(np.zeros((2, 783), np.float32))
    with pytest.raises(TypeError, match="x: expected integer codes"):
        packed.predict(real_x[:2], codes=True)
    with pytest.raises(ValueError, match=r"x: expected integer codes in \[0, 256\)"):
        packed.predict(np.full((2, 784), 300, np.int16), codes=True)
    with pytest.raises(ValueError, match="codes"):
        PackedNetwork.from_network(net).predict(np.zeros((2, 784), np.uint8), codes=True)


def test_bitplane_kernels_run_as_python_without_jit():
    """With NUMBA_DISABLE_JIT=1 the bit-plane kernels run as Python (intrinsics replaced by NumPy twins)."""
    script = """
        import numpy as np
        from sbnnumba import bitpack
        from sbnnumba.kernels import bitplane
        rng = np.random.default_rng(0)
        q = rng.integers(0, 32, size=(5, 70))
        w = np.where(rng.random((33, 70)) < 0.5, -1, 1)
        planes = bitpack.pack_planes(q.astype(np.uint8), 5)
        assert (planes == bitplane.planes_reference(q, 5)).all()
        assert (bitpack.pack_planes((q * 0.25).astype(np.float32), 5, 0.25) == planes).all()
        z = q @ w.T
        assert (bitpack.bitplane_matmul(planes, bitpack.pack(w), 70) == z).all()
        t = z[0]
        got = bitpack.bitplane_matmul_threshold(planes, bitpack.pack(w), 70, t, t % 2 == 0)
        assert (got == bitplane.bitplane_threshold_reference(z, t, t % 2 == 0)).all()
        print("ok")
    """
    run_without_jit(script)



@pytest.mark.skipif(not has_avx512_vpopcntdq(), reason="needs a CPU with AVX-512 VPOPCNTDQ")
def test_bitplane_kernel_uses_vector_popcount():
    import numba

    twin = numba.njit(parallel=True)(bp_kernels.bitplane_gemm_threshold.py_func)  # uncached: keeps its assembly
    out = np.zeros((4, 1), np.uint64)
    twin(np.zeros((4, 8, 1), np.uint64), np.zeros((1, 32), np.uint64), np.zeros(32, np.int64),
         np.zeros(1, np.uint64), out)
    assert "vpopcntq" in twin.inspect_asm(twin.signatures[0])
