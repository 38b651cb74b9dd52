"""Bernoulli weights, ST for weights, mirror descent, normalization, deterministic mode, summary."""
import numpy as np
import pytest
from scipy import optimize, special
from script_loader import load_script

import sbnnumba as sb
from sbnnumba import architectures, cli, training
from sbnnumba.normalization import Normalized
from sbnnumba.optim import SGD
from sbnnumba.summary import summary
from sbnnumba.testing import exact_bernoulli, expected_estimate_bernoulli


def bernoulli_net(sizes, noise="logistic", weight_noise="logistic", weight_grad="md", seed=0, eta_scale=1.0,
                  weight="bernoulli", n_classes=3):
    rng = np.random.default_rng(seed)
    net = sb.Network.dense(sizes, n_classes, noise=noise, rng=rng, dtype=np.float64, weight=weight,
                           weight_noise=weight_noise, weight_grad=weight_grad)
    for key, p in net.params.items():
        p[...] = (eta_scale * rng.uniform(-1, 1, size=p.shape) if key.endswith(".eta")
                  else 0.5 * rng.normal(size=p.shape))
    return net


def test_exact_gradient_wrt_eta_matches_finite_differences():
    net = bernoulli_net([2, 2, 2], seed=1)
    x = np.array([[0.3, -0.8], [1.0, 0.2]])
    y = np.array([0, 2])
    loss, g_eta, g_theta = exact_bernoulli(net, x, y)
    h = 1e-6
    for key, p in net.params.items():
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            plus = exact_bernoulli(net, x, y)[0]
            p[idx] = old - h
            minus = exact_bernoulli(net, x, y)[0]
            p[idx] = old
            assert abs((plus - minus) / (2 * h) - g_eta[key][idx]) < 1e-7, (key, idx)
    # dE/dtheta = dE/deta / p(eta)
    eta = net.stages[0].latent.eta
    np.testing.assert_allclose(g_theta["stages.0.eta"] * special.expit(eta) * special.expit(-eta),
                               g_eta["stages.0.eta"])


@pytest.mark.parametrize("weight_grad", ["md", "latent"])
def test_st_for_weights_unbiased_when_multilinear(weight_grad):
    """Uniform activation noise with |a| < 1: E(W) is multilinear in the weights, and PSA is exact
    for one binary layer, so the weight estimate is exactly unbiased: 2 g_w -> dE/dtheta (md),
    2 p(eta) g_w -> dE/deta (latent)."""
    net = bernoulli_net([3, 2], noise="uniform", weight_grad=weight_grad, seed=2)
    net.stages[0].bias[...] = [0.2, -0.3]
    x = np.array([[0.1, -0.2, 0.15], [-0.1, 0.05, 0.2]])
    y = np.array([1, 0])
    for w in np.array(np.meshgrid(*[[-1, 1]] * 6)).reshape(6, -1).T:  # every weight configuration
        assert np.abs(x @ w.reshape(2, 3).T + net.stages[0].bias).max() < 1
    _, g_eta, g_theta = exact_bernoulli(net, x, y)
    _, g_est = expected_estimate_bernoulli("psa", net, x, y)
    target = g_theta if weight_grad == "md" else g_eta
    np.testing.assert_allclose(g_est["stages.0.eta"], target["stages.0.eta"], atol=1e-12)
    for key in ("stages.0.bias", "head.weight", "head.bias"):
        np.testing.assert_allclose(g_est[key], g_eta[key], atol=1e-12)


def test_st_for_weights_small_bias_elsewhere():
    """Logistic noise, 2-3-3 net with Bernoulli weights in both stages (spec st.md test 4): the exact
    expectation of ST has cosine > 0.95 to dE/dtheta; observed 0.99+ for this seed."""
    net = bernoulli_net([2, 3, 2], seed=3, weight="bernoulli")
    x = np.array([[0.5, -1.0]])
    y = np.array([1])
    _, _, g_theta = exact_bernoulli(net, x, y)
    _, g_st = expected_estimate_bernoulli("st", net, x, y)
    a = np.concatenate([g_theta[k].ravel() for k in sorted(g_theta)])
    b = np.concatenate([g_st[k].ravel() for k in sorted(g_theta)])
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos > 0.95, cos


def test_weights_sampled_once_per_batch_and_reused_in_backward():
    net = bernoulli_net([4, 5, 3], seed=4)
    x = np.random.default_rng(0).normal(size=(6, 4))
    path = net.sample(x, rng=0)
    w = path.weights["stages.0"]
    assert w.shape == (5, 4) and set(np.unique(w)) <= {-1.0, 1.0}
    assert path.layers[0].weight is w  # the backward pass (through path.layers) uses exactly this sample
    np.testing.assert_allclose(path.stages[0].pre, x @ w.T + net.stages[0].bias)
    freq = np.mean([net.sample(x[:1], rng=s).weights["stages.0"][0, 0] > 0 for s in range(3000)])
    p = special.expit(net.stages[0].latent.eta[0, 0])
    assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / 3000)


def test_mirror_descent_step_is_kl_proximal_logistic():
    """MD on theta with the logistic mirror map: eta <- eta - eps g equals argmin eps g theta + KL(theta||theta_t)."""
    for theta_t, g, eps in ((0.3, 1.7, 0.1), (0.9, -2.0, 0.5)):
        net = sb.Network([sb.Linear(1, 1, weight="bernoulli", dtype=np.float64)], sb.Linear(1, 1, dtype=np.float64))
        net.stages[0].latent.eta[...] = special.logit(theta_t)
        SGD(lr=eps).update({"e": net.stages[0].latent.eta}, {"e": np.array([[g]])})
        kl = lambda th: th * np.log(th / theta_t) + (1 - th) * np.log((1 - th) / (1 - theta_t))
        res = optimize.minimize_scalar(lambda th: eps * g * th + kl(th), bounds=(1e-12, 1 - 1e-12), method="bounded",
                                       options={"xatol": 1e-12})
        assert abs(special.expit(net.stages[0].latent.eta[0, 0]) - res.x) < 1e-8
        assert abs(res.x - special.expit(special.logit(theta_t) - eps * g)) < 1e-8


def test_mirror_descent_uniform_is_projected_step():
    layer = sb.Linear(3, 1, weight="bernoulli", weight_noise="uniform", dtype=np.float64)
    net = sb.Network([layer], sb.Linear(1, 2, dtype=np.float64))
    layer.latent.eta[...] = [[0.5, -0.9, 0.0]]
    g = np.array([[-2.0, 1.0, 0.3]])
    SGD(lr=0.5).update({"eta": layer.latent.eta}, {"eta": g})
    net.apply_constraints()
    np.testing.assert_allclose(layer.latent.eta, [[1.0, -1.0, -0.15]])
    # Euclidean argmin over theta in [0,1] of eps g theta + (theta - theta_t)^2 (eta = 2 theta - 1)
    for eta_t, gi in ((0.5, -2.0), (-0.9, 1.0), (0.0, 0.3)):
        th_t = (eta_t + 1) / 2
        res = optimize.minimize_scalar(lambda th: 0.5 * gi * th + (th - th_t) ** 2, bounds=(0, 1), method="bounded",
                                       options={"xatol": 1e-12})
        assert abs(np.clip(eta_t - 0.5 * gi, -1, 1) - (2 * res.x - 1)) < 1e-7


def test_weight_decay_is_kl_to_uniform_prior():
    th = np.linspace(0.05, 0.95, 7)
    kl = lambda t: t * np.log(2 * t) + (1 - t) * np.log(2 * (1 - t))
    h = 1e-6
    np.testing.assert_allclose((kl(th + h) - kl(th - h)) / (2 * h), special.logit(th), atol=1e-7)
    eta = np.array([1.5, -0.5])
    SGD(lr=0.1, weight_decay=0.2).update({"e": eta}, {"e": np.array([0.3, -1.0])})
    np.testing.assert_allclose(eta, (1 - 0.1 * 0.2) * np.array([1.5, -0.5]) - 0.1 * np.array([0.3, -1.0]))


def test_deterministic_mode_equals_hand_built_sign_network():
    net = bernoulli_net([4, 6, 5], seed=5, weight="hidden")
    x = np.random.default_rng(1).normal(size=(9, 4))
    h = np.where(x @ net.stages[0].weight.T + net.stages[0].bias >= 0, 1.0, -1.0)
    w1 = np.where(net.stages[1].latent.eta >= 0, 1.0, -1.0)
    h = np.where(h @ w1.T + net.stages[1].bias >= 0, 1.0, -1.0)
    np.testing.assert_allclose(net.forward_deterministic(x), h @ net.head.weight.T + net.head.bias)


def test_normalized_network_psa_exact_in_eval_mode():
    """With fixed statistics, normalization is an affine map: PSA stays exact for one binary layer."""
    from sbnnumba.testing import expected_estimate
    rng = np.random.default_rng(7)
    net = sb.Network.dense([3, 4], 2, rng=rng, dtype=np.float64, normalize=True)
    net.stages[0].running["stochastic"] = (rng.normal(size=4), rng.uniform(0.5, 2, 4))
    net.stages[0].gamma[...] = rng.uniform(0.5, 2, 4)
    net.eval()
    x = rng.normal(size=(2, 3))
    y = np.array([0, 1])
    _, g = sb.estimate("exact", net, x, y)
    _, g_psa = expected_estimate("psa", net, x, y)
    for key in g:
        np.testing.assert_allclose(g_psa[key], g[key], atol=1e-10, err_msg=key)


def test_bn_absorbs_noise_scale():
    """sign(gamma a_hat + beta - s Z) == sign((gamma/s) a_hat + beta/s - Z) under common random numbers."""
    rng = np.random.default_rng(8)
    a_hat = rng.normal(size=1000)
    u = rng.random(1000)
    z = special.logit(u)
    s, gamma, beta = 2.5, 1.3, -0.4
    lhs = np.where(gamma * a_hat + beta - s * z >= 0, 1, -1)
    rhs = sb.get_noise("logistic").sample((gamma / s) * a_hat + beta / s, u)  # Z <= t iff u <= F(t)
    np.testing.assert_array_equal(lhs, rhs)


def test_recalibrated_deterministic_statistics():
    rng = np.random.default_rng(9)
    net = sb.Network.dense([5, 8, 6], 3, rng=rng, dtype=np.float64, normalize=True, weight="hidden")
    x = rng.normal(size=(64, 5))
    net.recalibrate_normalization(x, mode="deterministic")
    mean, var = net.stages[1].running["deterministic"]
    h = np.where(net.stages[0].forward(x) >= 0, 1.0, -1.0)  # stage 0 normalized with batch statistics
    z = h @ np.where(net.stages[1].latent.eta >= 0, 1.0, -1.0).T + net.stages[1].inner.bias
    np.testing.assert_allclose(mean, z.mean(0))
    np.testing.assert_allclose(var, z.var(0))
    assert net.predict(x, mode="deterministic").shape == (64,)


def test_summary_on_known_model():
    net = sb.Network.dense([784, 100, 50], 10, rng=0, weight="hidden")
    rows = summary(net, (784,), print_fn=None)
    first, second, head, total = rows
    assert first["binary_params"] == 0 and first["float_params"] == 784 * 100 + 100
    assert second["binary_params"] == 100 * 50 and second["float_params"] == 50
    assert second["binary_macs"] == 5000 and first["binary_macs"] == 0 and first["float_macs"] == 78400
    assert head["float_params"] == 510
    assert total["memory_bytes"] == 5000 / 8 + 4 * (78500 + 50 + 510)


def test_bad_weight_options():
    with pytest.raises(ValueError, match="weight"):
        sb.Linear(2, 2, weight="ternary")
    with pytest.raises(ValueError, match="weight_grad"):
        sb.Linear(2, 2, weight="bernoulli", weight_grad="adam")
    with pytest.raises(ValueError, match="weight_noise|noise"):
        sb.Linear(2, 2, weight="bernoulli", weight_noise="cauchy")


def test_conv_bernoulli_weights_one_sample_per_kernel_weight():
    """A conv kernel weight has one sample per mini-batch, shared over positions and examples (st.md test 11)."""
    rng = np.random.default_rng(10)
    conv = sb.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=np.float64, weight="bernoulli")
    net = sb.Network([sb.Normalized(conv), sb.Linear(3 * 5 * 5, 4, rng=rng, dtype=np.float64)],
                     sb.Linear(4, 2, rng=rng, dtype=np.float64))
    x = rng.normal(size=(3, 2, 5, 5))
    path = net.sample(x, rng=1)
    w = path.weights["stages.0"]
    assert w.shape == (3, 2, 3, 3)
    assert path.layers[0].inner.weight is w  # the path's layers compute with the sample ...
    np.testing.assert_array_equal(net.stages[0].inner.weight, net.stages[0].latent.mode())  # ... the net is unchanged
    z = path.layers[0].inner.forward(x)
    from sbnnumba.kernels.conv_reference import conv_forward
    np.testing.assert_allclose(z, conv_forward(x, w, net.stages[0].layer.bias, (1, 1), (1, 1)), atol=1e-12)
    for method in ("psa", "st"):
        _, g = sb.estimate(method, net, x, [0, 1, 1], rng=2)
        assert set(g) == set(net.params) and "stages.0.eta" in g and g["stages.0.eta"].shape == (3, 2, 3, 3)


def test_normalized_conv_psa_exact_in_eval_mode():
    from sbnnumba.testing import expected_estimate
    rng = np.random.default_rng(11)
    conv = sb.Conv2d(1, 2, 2, rng=rng, dtype=np.float64)
    net = sb.Network([sb.Normalized(conv), sb.Conv2d(2, 1, 2, rng=rng, dtype=np.float64)],
                     sb.Linear(1, 3, rng=rng, dtype=np.float64))
    net.stages[0].running["stochastic"] = (rng.normal(size=2), rng.uniform(0.5, 2, 2))
    net.stages[0].gamma[...] = rng.uniform(0.5, 2, 2)
    net.eval()
    x = rng.normal(size=(1, 1, 3, 3))
    y = np.array([2])
    _, g = sb.estimate("exact", net, x, y)
    _, g_psa = expected_estimate("psa", net, x, y)
    for key in g:  # conv(8 units) -> conv(1 unit): exact everywhere
        np.testing.assert_allclose(g_psa[key], g[key], atol=1e-10, err_msg=key)


def test_fit_with_binary_weights_checkpoint_restores_statistics(tmp_path):
    """fit() projects latent weights, re-estimates deterministic statistics, and checkpoints them."""
    from sbnnumba import training
    rng = np.random.default_rng(12)
    x = rng.random((300, 1, 6, 6)).astype(np.float32)
    y = (x.reshape(300, -1).mean(1) > 0.5).astype(np.int64)
    net = architectures.build("mlp", (1, 6, 6), 2, rng=0, hidden=[16, 8], weight="hidden", weight_noise="uniform",
                              normalize=True)
    training.fit(net, (x, y), estimator="st", epochs=2, batch_size=32, lr=0.05, out=tmp_path, progress=False,
                 plots=False, eval_samples=2)
    eta = net.stages[1].latent.eta
    assert np.abs(eta).max() <= 1.0  # uniform weight noise: eta projected onto [-1, 1]
    assert net.stages[1].running["deterministic"] is not None
    loaded = training.load_network(tmp_path / training.CHECKPOINT_NAME)
    for key, b in net.buffers.items():
        np.testing.assert_array_equal(loaded.buffers[key], b)
    np.testing.assert_array_equal(loaded.forward_deterministic(x[:20]), net.forward_deterministic(x[:20]))


def test_to_bernoulli_follows_the_real_weights():
    """Network.to_bernoulli: eta = s W / std(W) per output channel, sign(eta) = sign(W), first stage
    and head stay real, parameters renamed, and the deterministic network is the sign network."""
    rng = np.random.default_rng(21)
    conv1 = sb.Conv2d(1, 3, 3, rng=rng, dtype=np.float64)
    conv2 = sb.Conv2d(3, 4, 2, stride=2, rng=rng, dtype=np.float64)
    net = sb.Network([Normalized(conv1), Normalized(conv2)], sb.Linear(4 * 2 * 2, 3, rng=rng, dtype=np.float64))
    w2 = conv2.weight.copy()
    x = rng.normal(size=(5, 1, 6, 6))
    net.to_bernoulli("hidden", scale=2.5)
    assert conv1.latent is None and conv2.latent is not None
    assert "stages.1.eta" in net.params and "stages.1.weight" not in net.params and "stages.0.weight" in net.params
    np.testing.assert_allclose(conv2.latent.eta.reshape(4, -1).std(axis=1), 2.5, rtol=1e-12)
    np.testing.assert_array_equal(np.sign(conv2.latent.eta), np.sign(w2))
    # deterministic mode: the real network with sign(W) in stage 1 (statistics: the running ones)
    want_net = sb.Network([Normalized(sb.Conv2d(1, 3, 3, rng=0, dtype=np.float64)),
                           Normalized(sb.Conv2d(3, 4, 2, stride=2, rng=0, dtype=np.float64))],
                          sb.Linear(16, 3, rng=0, dtype=np.float64))
    for name, p in want_net.params.items():
        p[...] = np.where(w2 >= 0, 1.0, -1.0) if name == "stages.1.weight" else net.params[name]
    np.testing.assert_allclose(net.forward_deterministic(x), want_net.forward_deterministic(x), atol=1e-12)
    net.to_bernoulli("hidden")  # already converted stages are left alone
    np.testing.assert_allclose(conv2.latent.eta.reshape(4, -1).std(axis=1), 2.5, rtol=1e-12)
    with pytest.raises(ValueError, match="scale"):
        net.to_bernoulli("bernoulli", scale=0)
    with pytest.raises(ValueError, match="already"):
        sb.weights.bernoulli_from_real(conv2)


@pytest.mark.parametrize("s", [0.5, 3.0, 6.0])
def test_matched_scale_gives_the_logistic_confidence(s):
    """matched_scale(s, noise) = F^-1(sigma(s)), against each family's closed-form inverse CDF."""
    p = special.expit(s)
    closed_form = {"logistic": s, "uniform": 2 * p - 1, "normal": special.ndtri(p),
                   "triangular": 1 - np.sqrt(2 * (1 - p))}  # F(a) = 1 - (1 - a)^2 / 2 on [0, 1]
    for noise, want in closed_form.items():
        np.testing.assert_allclose(sb.weights.matched_scale(s, noise), want, rtol=1e-9, err_msg=noise)
    assert sb.weights.matched_scale(s, "logistic") == s  # exact: logistic conversions are unchanged


def test_matched_scale_bad_input():
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="logistic_scale"):
            sb.weights.matched_scale(bad, "uniform")
    with pytest.raises(TypeError, match="logistic_scale"):
        sb.weights.matched_scale("3", "uniform")
    with pytest.raises(ValueError, match="below 36"):
        sb.weights.matched_scale(40.0, "normal")


def test_to_bernoulli_checkpoint_rebuilds_the_converted_network(tmp_path):
    """The checkpoint describes the network from its structure when saving (training.describe), so any
    conversion is rebuilt exactly: per-stage weight kinds, mixed weight noises, a non-default clip."""
    from sbnnumba import training

    rng = np.random.default_rng(4)
    ds, x_test = (rng.random((96, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, 96)), rng.random((8, 1, 6, 6))
    net = architectures.build("mlp", (1, 6, 6), 3, rng=1, hidden=[8, 8, 8], normalize=True)
    net.to_bernoulli(["real", "bernoulli", "real"], noise="triangular", grad="latent")
    assert [None if st["weights"] is None else st["weights"]["noise"] for st in training.describe(net)["stages"]] \
        == [None, "triangular", None]
    mixed = architectures.build("mlp", (1, 6, 6), 3, rng=1, hidden=[8, 8, 8], normalize=True)
    mixed.to_bernoulli(["real", "bernoulli", "real"]).to_bernoulli("hidden", noise="uniform")
    clipped = architectures.build("mlp", (1, 6, 6), 3, rng=1, hidden=[8, 8], normalize=True)
    clipped.to_bernoulli("hidden", clip=2.0)
    net.to_bernoulli("hidden", noise="triangular", grad="latent")
    for k, converted in enumerate((net, mixed, clipped)):
        out = tmp_path / str(k)
        training.fit(converted, ds, estimator="st", epochs=1, batch_size=32, out=out, progress=False, plots=False,
                     train_eval_size=8, eval_samples=2)
        loaded = training.load_network(out / training.CHECKPOINT_NAME)
        for key, p in converted.params.items():
            np.testing.assert_array_equal(loaded.params[key], p)
        assert [repr(s.layer.latent) for s in loaded.stages] == [repr(s.layer.latent) for s in converted.stages]
        np.testing.assert_array_equal(loaded.forward_deterministic(x_test), converted.forward_deterministic(x_test))
    assert clipped.stages[1].layer.latent.clip == 2.0


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_add_normalization_keeps_the_function(arch, tmp_path):
    """Network.add_normalization wraps the unnormalized stages so that they undo themselves: in
    evaluation mode the sampled pre-activations (same uniforms), logits and the deterministic network
    are unchanged; biases move into beta; running statistics are the sampled mean/var; the description
    (training.describe) rebuilds it with its normalizations; already normalized stages are left alone."""
    from sbnnumba import training

    rng = np.random.default_rng(8)
    if arch == "mlp":
        net = architectures.build("mlp", (1, 6, 6), 3, rng=2, hidden=[7, 5], dtype=np.float64)
        x = rng.random((300, 1, 6, 6))
    else:
        net = architectures.build("conv", (1, 28, 28), 3, rng=2, width=0.05, dtype=np.float64)
        x = rng.random((40, 1, 28, 28))
    for st in net.stages:
        st.bias[...] = rng.normal(size=st.bias.shape)
    ref = net.sample(x[:9], rng=5)
    det = net.forward_deterministic(x[:9])
    biases = [st.bias.copy() for st in net.stages]
    # statistics over x, sampled with the same generator seed as a hand computation
    pres = [p.pre for p in net.sample(x, rng=3).stages]
    net.add_normalization(x, batch_size=len(x), rng=3)
    assert all(isinstance(st, Normalized) for st in net.stages)
    for st, z, b in zip(net.stages, pres, biases):
        axes = (0,) + tuple(range(2, z.ndim))
        np.testing.assert_allclose(st.beta, z.mean(axis=axes), rtol=1e-12)
        np.testing.assert_allclose(st.gamma, np.sqrt(z.var(axis=axes) + st.eps), rtol=1e-12)
        np.testing.assert_allclose(st.running["stochastic"][0], z.mean(axis=axes) - b, rtol=1e-10, atol=1e-12)
        assert not st.layer.bias.any()
    with net.evaluating("stochastic"):
        got = net.sample(x[:9], rng=5)  # the same uniforms as ref
    for a, b in zip(got.stages, ref.stages):
        np.testing.assert_allclose(a.pre, b.pre, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_allclose(got.logits, ref.logits, rtol=1e-9, atol=1e-9)
    with net.evaluating("deterministic"):
        np.testing.assert_allclose(net.forward_deterministic(x[:9]), det, rtol=1e-9, atol=1e-9)
    gamma0 = net.stages[0].gamma.copy()
    net.add_normalization(x[:5])  # nothing left to wrap
    np.testing.assert_array_equal(net.stages[0].gamma, gamma0)
    rebuilt = training.network_from_description(training.describe(net, x.shape[1:]))
    assert all(isinstance(st, Normalized) for st in rebuilt.stages)
    assert sorted(rebuilt.params) == sorted(net.params)


def test_add_normalization_leaves_existing_normalizations_alone():
    """Only the stages without normalization are wrapped; the statistics pass uses (and does not
    update) the running statistics of the existing ones."""
    rng = np.random.default_rng(9)
    first = Normalized(sb.Linear(4, 5, rng=rng, dtype=np.float64))
    first.running["stochastic"] = (rng.normal(size=5), rng.uniform(0.5, 2, size=5))
    net = sb.Network([first, sb.Linear(5, 3, rng=rng, dtype=np.float64)], sb.Linear(3, 2, rng=rng, dtype=np.float64))
    saved = [a.copy() for a in first.running["stochastic"]]
    x = rng.normal(size=(200, 4))
    with net.evaluating("stochastic"):
        ref = net.sample(x[:7], rng=1)
    net.add_normalization(x, batch_size=64, rng=2)
    assert net.stages[0] is first and isinstance(net.stages[1], Normalized)
    for a, b in zip(first.running["stochastic"], saved):
        np.testing.assert_array_equal(a, b)
    with net.evaluating("stochastic"):
        got = net.sample(x[:7], rng=1)
    np.testing.assert_allclose(got.logits, ref.logits, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ starting gamma of the normalizations
@pytest.mark.parametrize("arch, options", [("mlp", dict(hidden=[16, 12])),
                                           ("conv", dict(channels=[3, 3, 3, 4, 4, 4, 4, 4]))])
def test_bn_gamma_noise_std_gives_every_noise_the_same_signal_to_noise_ratio(arch, options, noise_name):
    """With ``bn_gamma="noise-std"`` each pre-activation starts with batch std = the noise's std
    (up to eps), so ``std(a) / std(Z) = 1`` for every family; with the default it is ``1 / std(Z)``."""
    x = np.random.default_rng(3).uniform(0, 1, size=(32, 1, 28, 28))
    std = sb.get_noise(noise_name).std
    for bn_gamma, want in (("noise-std", 1.0), (1.0, 1 / std), (0.5, 0.5 / std)):
        net = architectures.build(arch, (1, 28, 28), 10, rng=1, dtype=np.float64, noise=noise_name,
                                  normalize=True, bn_gamma=bn_gamma, **options)
        assert all(isinstance(st, Normalized) for st in net.stages)
        path = net.sample(x, np.random.default_rng(0))
        for stage in path.stages:
            a = stage.pre.reshape(stage.pre.shape[0], stage.pre.shape[1], -1)
            ratio = a.std(axis=(0, 2)) / std
            ok = a.var(axis=(0, 2)) > 1e-3  # a unit whose input never varies keeps a = beta (z_hat = 0)
            np.testing.assert_allclose(ratio[ok], want, rtol=1e-3)


@pytest.mark.parametrize("bn_gamma, error", [("wide", ValueError), (-1.0, ValueError), (0, ValueError),
                                             (float("nan"), ValueError), (float("inf"), ValueError),
                                             (True, TypeError), (None, TypeError)])
def test_bn_gamma_bad_values_name_the_argument(bn_gamma, error):
    """A wrong value raises ValueError, a wrong type TypeError (sbnnumba.validation's policy)."""
    with pytest.raises(error, match="bn_gamma: expected a finite positive number or 'noise-std'"):
        sb.Network.dense([4, 3], 2, rng=0, normalize=True, bn_gamma=bn_gamma)


def test_bn_gamma_without_normalization_is_an_error():
    with pytest.raises(ValueError, match="bn_gamma: .* without normalize=True"):
        sb.architectures.conv((1, 28, 28), 10, width=0.1, rng=0, bn_gamma="noise-std")
    with pytest.raises(TypeError, match="gamma: expected a finite positive number"):
        Normalized(sb.Linear(3, 2, rng=0), gamma="noise-std")  # the layer takes a number; see initial_gamma


def test_cli_bn_gamma_is_kept_by_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", "embedded", "--train-subset", "128", "--hidden", "8", "--epochs", "1",
                   "--noise", "uniform", "--normalize", "--bn-gamma", "noise-std", "--eval-samples", "2",
                   "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    ck = training.load_checkpoint(out / training.CHECKPOINT_NAME)
    arch = ck.config["metadata"]["architecture"]
    assert arch["options"]["bn_gamma"] == "noise-std"
    net = training.load_network(ck)
    fresh = architectures.build(arch["name"], (1, 28, 28), 10, **arch["options"])
    np.testing.assert_allclose(fresh.stages[0].gamma, 1 / np.sqrt(3), rtol=1e-6)  # rebuilt: uniform std
    assert not np.allclose(net.stages[0].gamma, fresh.stages[0].gamma)  # loaded: the trained values
    for argv in (["--bn-gamma", "0.5"], ["--normalize", "--bn-gamma", "-1"], ["--normalize", "--bn-gamma", "wide"]):
        assert cli.main(["train", "--data", "embedded", "--out", str(tmp_path / "x")] + argv) == 2
        err = capsys.readouterr().err.strip()
        assert "--bn-gamma" in err and len(err.splitlines()) == 1
    for argv in (["--weight-noise", "uniform"], ["--normalize", "--weight-grad", "latent"]):  # real weights
        assert cli.main(["train", "--data", "embedded", "--out", str(tmp_path / "x")] + argv) == 2
        err = capsys.readouterr().err.strip()
        assert "--weight-noise, --weight-grad" in err and len(err.splitlines()) == 1


def test_bench_binary_modes_passes_match_the_network_and_its_recalibration():
    """bench/binary_modes.py rebuilds the sampling loop to fix weights or activations at their mode:
    its 'stochastic' pass is Network.sample with the same generator (same draw order), its
    'deterministic' pass and statistics are those of the deterministic mode, and its two middle modes
    are sampled in the noise they keep and constant in the other."""
    modes = load_script("bench/binary_modes.py", "binary_modes")
    net = architectures.build("mlp", (1, 5, 5), 3, rng=4, hidden=[9, 7], weight="hidden", normalize=True,
                              dtype=np.float64)
    x = np.random.default_rng(5).normal(size=(40, 1, 5, 5))
    net.eval("stochastic")
    np.testing.assert_array_equal(modes.mode_pass(net, x, "stochastic", np.random.default_rng(6)),
                                  net.sample(x, np.random.default_rng(6)).logits)
    net.recalibrate_normalization(x, mode="deterministic")
    expected = net.forward_deterministic(x)
    modes.recalibrate(net, x, "deterministic", np.random.default_rng(7))  # into the 'stochastic' slot
    np.testing.assert_allclose(modes.mode_pass(net, x, "deterministic", np.random.default_rng(8)), expected,
                               rtol=1e-12, atol=1e-12)
    # the middle modes: sampled in the noise they keep (two generators differ), at the mode in the other
    for mode, weights_at_mode in (("weights sign(eta)", True), ("activations sign(a)", False)):
        two = [modes.mode_pass(net, x, mode, np.random.default_rng(s)) for s in (9, 10)]
        assert not np.array_equal(*two), mode
        weights = net.sample_weights(np.random.default_rng(9), None if not weights_at_mode else {
            p: np.full(layer.latent.eta.shape, 0.5) for p, layer in net.latent_layers()})
        at_mode = [np.array_equal(weights[p], np.where(layer.latent.eta > 0, 1.0, -1.0))
                   for p, layer in net.latent_layers()]
        assert all(at_mode) if weights_at_mode else not all(at_mode), mode
        # sampling leaves the network unchanged: its Bernoulli stages still compute with sign(eta)
        assert all(np.array_equal(layer.weight, layer.latent.mode()) for _, layer in net.latent_layers())
    e, s = modes.mode_accuracy(net, x, np.zeros(40, dtype=np.int64), "deterministic", 5, np.random.default_rng(0))
    assert e == s == pytest.approx(np.mean(np.argmax(expected, axis=1) == 0))


def test_bench_binary_weights_sharpen_steps(tmp_path):
    """bench/binary_weights.py --sharpen 2 --sharpen-steps 2: each step doubles every stage's batch-norm
    gamma and beta before its continuation (lr 1e-12: the continuations end where they start), and the
    network is tested before and after."""
    import json
    bench = load_script("bench/binary_weights.py", "binary_weights")
    runs = tmp_path / "runs"
    bench.main(["--hidden", "10,8", "--epochs", "1", "--train-subset", "300", "--test-samples", "2",
                "--train-eval-size", "50", "--only", "0", "--runs-dir", str(runs), "--docs", str(tmp_path / "docs"),
                "--sharpen", "2", "--sharpen-steps", "2", "--sharpen-epochs", "1", "--sharpen-lr", "1e-12"])
    start = training.load_network(str(runs / "mlp-0" / training.CHECKPOINT_NAME)).params
    end = training.load_network(str(runs / "mlp-0-sharpen2" / training.CHECKPOINT_NAME)).params
    for k, v in start.items():
        factor = 4.0 if k.endswith((".gamma", ".beta")) else 1.0
        np.testing.assert_allclose(end[k], factor * v, rtol=1e-5, atol=1e-6, err_msg=k)
    rows = json.loads((runs / "mlp-results.json").read_text())
    assert [r["label"].endswith("noise / 2^2") for r in rows] == [False, True]
    assert "2 time(s)" in next((tmp_path / "docs" / "experiments").glob("*-results-binary-mlp.md")).read_text()


# ------------------------------------------------------------------ estimators are pure functions (#41)
def _pure_net():
    rng = np.random.default_rng(41)
    net = sb.Network.dense([3, 4, 3], 3, rng=rng, dtype=np.float64, weight=["real", "bernoulli"])
    return net, rng.normal(size=(5, 3)), rng.integers(0, 3, size=5)


@pytest.mark.parametrize("method", sorted(sb.known_methods()))
def test_every_estimator_is_a_pure_function_of_network_data_and_seed(method):
    """Sampled Bernoulli weights live in the path, not on the layers: an estimator called twice with the
    same seed, around calls that sample (other estimators, predictions, paths), gives the same result,
    and no call changes the network (its parameters, or the weights its layers compute with)."""
    net, x, y = _pure_net()
    params = {k: p.copy() for k, p in net.params.items()}
    weights = [layer.weight.copy() for _, layer in net.latent_layers()]
    loss1, g1 = sb.estimate(method, net, x, y, rng=5)
    for other in ("psa", "st", "reinforce", "tanh"):
        sb.estimate(other, net, x, y, rng=11)
    net.sample(x, rng=12)
    net.predict(x, samples=3, rng=13)
    loss2, g2 = sb.estimate(method, net, x, y, rng=5)
    assert loss1 == loss2
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)
    for k, p in net.params.items():
        np.testing.assert_array_equal(p, params[k], err_msg=k)
    for (_, layer), w in zip(net.latent_layers(), weights):
        np.testing.assert_array_equal(layer.weight, w)  # still sign(eta)


def test_exact_enumerates_bernoulli_weights_and_refuses_too_many():
    """``exact`` averages over every joint weight value (its loss is the finite-difference-checked oracle of
    test_exact_gradient_wrt_eta_matches_finite_differences), and refuses networks with more than 14
    Bernoulli weights with a message saying so."""
    net, x, y = _pure_net()
    loss, _ = sb.estimate("exact", net, x, y)
    from sbnnumba.estimators.exact import weight_configurations
    from sbnnumba.testing import enumerate_paths
    total = 0.0
    for prob, w in weight_configurations(net):
        path, p_path, example = enumerate_paths(net, x, w)
        l_path = sb.losses.xent(path.logits, y[example], grad=False)
        total += prob * np.sum(p_path * l_path) / x.shape[0]
    assert abs(loss - total) < 1e-12
    wide = sb.Network.dense([3, 5, 3], 3, rng=0, dtype=np.float64, weight="bernoulli")  # 15 + 15 weights
    with pytest.raises(ValueError, match="at most 14 Bernoulli weights in all .* got 30"):
        sb.estimate("exact", wide, x, y)
