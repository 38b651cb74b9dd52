import numpy as np
import pytest
from conftest import random_net

import sbnnumba as sb


def test_params_names_and_shapes():
    net = sb.Network.dense([4, 5, 6], 3, rng=0)
    assert list(net.params) == ["stages.0.weight", "stages.0.bias", "stages.1.weight", "stages.1.bias",
                                "head.weight", "head.bias"]
    assert net.params["stages.1.weight"].shape == (6, 5)
    assert net.params["head.weight"].shape == (3, 6)
    assert net.params["stages.0.weight"] is net.stages[0].weight  # no copies: optimizers update in place


def test_default_init_bounds():
    layer = sb.Linear(16, 8, rng=0)
    assert np.abs(layer.weight).max() <= 0.25 and np.abs(layer.bias).max() <= 0.25
    assert layer.weight.dtype == np.float32


def test_sample_path_structure_and_probabilities():
    net = random_net([3, 4, 2], seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    path = net.sample(x, rng=1)
    assert len(path.stages) == 2
    assert path.stages[0].input.shape == (5, 3) and path.stages[1].input is path.stages[0].state
    for st in path.stages:
        assert set(np.unique(st.state)) <= {-1.0, 1.0}
    np.testing.assert_allclose(path.logits, path.stages[-1].state @ net.head.weight.T + net.head.bias)
    # empirical frequency of +1 for one unit matches F(a)
    n = 20000
    p = net.sample(np.repeat(x[:1], n, 0), rng=2)
    freq = (p.stages[0].state[:, 0] > 0).mean()
    f = net.noise.cdf(p.stages[0].pre[0, 0])
    assert abs(freq - f) < 5 * np.sqrt(f * (1 - f) / n)


def test_sample_without_patches_has_the_same_values():
    """keep_patches=False (forward-only callers) drops each conv stage's patch matrix from the path and changes
    nothing else: the same pre-activations, states and logits bit for bit."""
    net = sb.architectures.conv((1, 28, 28), 3, channels=[4, 4, 4, 6, 6, 6, 6, 6], rng=0)
    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    kept, dropped = net.sample(x, rng=5), net.sample(x, rng=5, keep_patches=False)
    assert any(st.saved is not None for st in kept.stages) and all(st.saved is None for st in dropped.stages)
    for a, b in zip(kept.stages, dropped.stages):
        for name in ("pre", "state"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(kept.logits, dropped.logits)


def test_common_random_numbers():
    net = random_net([3, 4, 2], seed=2)
    x = np.ones((2, 3))
    u = [np.full((2, 4), 0.5), np.full((2, 2), 0.5)]
    a = net.sample(x, uniforms=u)
    b = net.sample(x, uniforms=u)
    np.testing.assert_array_equal(a.logits, b.logits)


def test_predict_proba_modes():
    net = random_net([3, 4, 2], seed=3)
    x = np.random.default_rng(0).normal(size=(7, 3))
    p = net.predict_proba(x, samples=5, rng=0)
    assert p.shape == (7, 3)
    np.testing.assert_allclose(p.sum(1), 1)
    det = net.predict_proba(x, mode="deterministic")
    h = x
    for layer in net.stages:
        h = np.where(layer.forward(h) >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(np.argmax(det, 1), np.argmax(h @ net.head.weight.T + net.head.bias, 1))
    assert net.predict(x, mode="deterministic").shape == (7,)
    with pytest.raises(ValueError, match="mode"):
        net.predict_proba(x, mode="mean")
    with pytest.raises(ValueError, match="samples"):
        net.predict_proba(x, samples=0)


def test_binary_head_probabilities():
    net = random_net([2, 3], n_classes=1, seed=4)
    p = net.predict_proba(np.zeros((3, 2)), samples=2, rng=0)
    assert p.shape == (3, 2)


def test_data_dependent_init():
    rng = np.random.default_rng(5)
    net = sb.Network.dense([10, 20, 30], 4, rng=rng, dtype=np.float64)
    x = rng.normal(loc=2.0, size=(256, 10))
    net.initialize_from_data(x)
    a = net.stages[0].forward(x)
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(a.std(0), 1, atol=1e-10)
    h = net.noise.mean(a)
    a2 = net.stages[1].forward(h)
    np.testing.assert_allclose(a2.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(a2.std(0), 1, atol=1e-10)


@pytest.mark.parametrize("normalize", [False, True])
def test_scale_preactivations(normalize):
    # Every stage's pre-activation, on the same input states, becomes factor * a; the head is unchanged.
    rng = np.random.default_rng(6)
    net = sb.Network.dense([5, 7, 6], 3, rng=rng, dtype=np.float64, normalize=normalize)
    x = rng.normal(size=(32, 5))
    states = [x] + [st.state for st in net.sample(x, rng=1).stages[:-1]]
    before = [layer.forward(h) for layer, h in zip(net.stages, states)]
    head = net.head.weight.copy()
    assert net.scale_preactivations(2.5) is net
    for layer, h, a in zip(net.stages, states, before):
        np.testing.assert_allclose(layer.forward(h), 2.5 * a, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(net.head.weight, head)


def test_scale_preactivations_conv_and_errors():
    rng = np.random.default_rng(7)
    net = sb.architectures.conv((1, 28, 28), 3, channels=[4, 4, 4, 6, 6, 6, 6, 6], rng=rng, dtype=np.float64,
                                input_padding=2)
    x = rng.normal(size=(3, 1, 28, 28))
    a0 = net.stages[0].forward(x)
    net.scale_preactivations(0.5)
    np.testing.assert_allclose(net.stages[0].forward(x), 0.5 * a0, rtol=1e-12, atol=1e-12)
    for bad in (0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="factor"):
            net.scale_preactivations(bad)
    binary = sb.Network.dense([4, 5, 3], 2, rng=0, weight="hidden")
    with pytest.raises(ValueError, match="stage 1 has Bernoulli weights"):
        binary.scale_preactivations(2.0)
