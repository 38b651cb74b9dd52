"""Baseline estimators (REINFORCE, ARM, relaxations, moment propagation) and the gradient-study metrics.

Unbiased estimators are checked against the exact enumeration gradient: exactly (path estimators
through ``expected_estimate``; REINFORCE with the leave-one-out baseline by enumerating tuples of
paths) or by z-tests over many draws with fixed seeds (ARM). Relaxations are checked against the
single-variable formulas of spec st.md 9.1/9.2 and, as deterministic/pathwise estimators, against
finite differences of their own loss under common random numbers.
"""
import itertools

import numpy as np
import pytest
from conftest import NOISE_NAMES, random_net
from scipy import integrate, special

import sbnnumba as sb
from sbnnumba import gradstudy
from sbnnumba.estimators.reinforce import reinforce_loo_path_gradient
from sbnnumba.estimators.relaxations import binary_moment_map, squared_weight_layer
from sbnnumba.network import Path, StageSample
from sbnnumba.testing import enumerate_paths, expected_estimate

BASELINES = ["reinforce", "reinforce-baseline", "arm", "concrete", "st-gumbel", "tanh", "adf", "local-reparam"]


def _batch(net, seed, n=2):
    rng = np.random.default_rng(200 + seed)
    x = rng.normal(size=(n, net.stages[0].n_in))
    return x, rng.integers(0, max(net.n_classes, 2), size=n)


def _assert_close(g_est, g_true, rtol=1e-10):
    for key in g_true:
        scale = max(1e-300, np.abs(g_true[key]).max())
        np.testing.assert_allclose(g_est[key], g_true[key], atol=rtol * scale, err_msg=key)


def _chunk_z(method, net, x, y, g_true, chunks, rows, seed, **opts):
    """z-scores of the mean of ``chunks`` independent batch-mean estimates (each over ``rows`` draws per example)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.repeat(x, rows, axis=0), np.repeat(y, rows)
    est = [sb.estimate(method, net, xs, ys, rng=rng, **opts)[1] for _ in range(chunks)]
    out = {}
    for key in g_true:
        e = np.stack([d[key] for d in est])
        se = e.std(axis=0, ddof=1) / np.sqrt(chunks)
        out[key] = np.where(se > 1e-14, (e.mean(axis=0) - g_true[key]) / np.maximum(se, 1e-300), 0.0)
    return out


# ----------------------------------------------------------------------------------- REINFORCE
@pytest.mark.parametrize("sizes,n_classes", [([3, 4], 3), ([2, 3, 3], 1), ([2, 2, 2, 2], 3)])
def test_reinforce_expectation_equals_exact_gradient(noise_name, sizes, n_classes):
    net = random_net(sizes, n_classes=n_classes, noise=noise_name, seed=1, scale=0.8)
    x, y = _batch(net, 1)
    loss, g = sb.estimate("exact", net, x, y)
    loss_r, g_r = expected_estimate("reinforce", net, x, y)
    assert abs(loss_r - loss) < 1e-12
    _assert_close(g_r, g)


def test_reinforce_monte_carlo_z_test_with_exact_variance():
    net = random_net([2, 3, 3], seed=2)
    x, y = _batch(net, 2, n=1)
    _, mean, (per_path, prob, _) = expected_estimate("reinforce", net, x, y, return_paths=True)
    n = 20000
    _, mc = sb.estimate("reinforce", net, np.repeat(x, n, 0), np.repeat(y, n), rng=np.random.default_rng(3))
    for key in mean:
        var = np.einsum("p,p...->...", prob, (per_path[key] - mean[key]) ** 2)
        z = (mc[key] - mean[key]) / np.sqrt(var / n + 1e-300)
        assert np.all(np.abs(z[var > 1e-20]) < 5), (key, z)


def _tuple_path(net, x, samples):
    """All ``samples``-tuples of paths per example, as one sample-major path (S * T rows) and weights (T,)."""
    path, prob, example = enumerate_paths(net, x)
    n_paths = len(prob) // x.shape[0]
    combos = np.array(list(itertools.product(range(n_paths), repeat=samples)))
    rows = [np.concatenate([b * n_paths + combos[:, s] for b in range(x.shape[0])]) for s in range(samples)]
    weights = np.prod([prob[r] for r in rows], axis=0) / x.shape[0]
    cat = np.concatenate(rows)
    tup = Path([StageSample(s.input[cat], s.pre[cat], s.state[cat]) for s in path.stages], path.logits[cat])
    return tup, weights, example[rows[0]]


@pytest.mark.parametrize("sizes,samples", [([2, 3, 2], 2), ([3, 2, 1], 3)])
def test_reinforce_leave_one_out_is_exactly_unbiased(noise_name, sizes, samples):
    """Enumerate every tuple of ``samples`` paths: the expected LOO estimate equals the exact gradient."""
    net = random_net(sizes, n_classes=3, noise=noise_name, seed=4, scale=0.8)
    x, y = _batch(net, 4)
    loss, g = sb.estimate("exact", net, x, y)
    path, weights, example = _tuple_path(net, x, samples)
    loss_loo, g_loo = reinforce_loo_path_gradient(net, path, y[example], weights, samples)
    assert abs(loss_loo - loss) < 1e-12
    _assert_close(g_loo, g)


def test_reinforce_baseline_registered_estimator_and_variance():
    net = random_net([2, 3, 3], seed=5)
    x, y = _batch(net, 5, n=1)
    y = np.array([int(np.argmax([sb.estimate("exact", net, x, [k])[0] for k in range(3)]))])
    _, g = sb.estimate("exact", net, x, y)
    z = _chunk_z("reinforce-baseline", net, x, y, g, chunks=30, rows=1000, seed=6, samples=3)
    assert max(np.abs(v).max() for v in z.values()) < 5
    # the LOO baseline with 2 samples beats the average of 2 plain REINFORCE draws (loss far from 0 here)
    rng = np.random.default_rng(7)
    spread = {}
    for method, opts, rows in (("reinforce", {}, 2), ("reinforce-baseline", {"samples": 2}, 1)):
        est = [sb.estimate(method, net, np.repeat(x, rows, 0), np.repeat(y, rows), rng=rng, **opts)[1]
               ["stages.0.weight"] for _ in range(3000)]
        spread[method] = np.var(np.stack(est), axis=0).sum()
    assert spread["reinforce-baseline"] < 0.8 * spread["reinforce"], spread


# ------------------------------------------------------------------------------------------ ARM
@pytest.mark.parametrize("noise", ["logistic", "normal"])
@pytest.mark.parametrize("sizes,n_classes", [([2, 3, 3], 3), ([2, 3, 2, 2], 1)])
@pytest.mark.parametrize("independent", [False, True])
def test_arm_is_unbiased(noise, sizes, n_classes, independent):
    net = random_net(sizes, n_classes=n_classes, noise=noise, seed=8, scale=0.8)
    x, y = _batch(net, 8)
    _, g = sb.estimate("exact", net, x, y)
    z = _chunk_z("arm", net, x, y, g, chunks=40, rows=1500, seed=9, independent_suffixes=independent)
    worst = max(np.abs(v).max() for v in z.values())
    assert worst < 4.5, {k: np.round(v, 1) for k, v in z.items()}


def test_arm_independent_suffixes_draw_other_noise_with_more_variance():
    """The paper's ARM (independent suffix passes) differs from the common-noise default draw by draw and has
    the larger variance in the first layer (whose suffix is longest); bad values are refused."""
    net = random_net([2, 4, 4, 4], n_classes=3, seed=3, scale=0.8)
    x, y = _batch(net, 3, n=1)
    xs, ys = np.repeat(x, 400, 0), np.repeat(y, 400)
    draws = {flag: [sb.estimate("arm", net, xs, ys, rng=s, independent_suffixes=flag)[1] for s in range(30)]
             for flag in (False, True)}
    first = {flag: np.stack([d["stages.0.weight"] for d in v]) for flag, v in draws.items()}
    assert not np.array_equal(first[False], first[True])
    assert first[True].var(axis=0).sum() > first[False].var(axis=0).sum()
    with pytest.raises(TypeError, match="independent_suffixes"):
        sb.estimate("arm", net, x, y, rng=0, independent_suffixes="yes")


def test_gradstudy_names_the_arm_variant_it_plots():
    labels = [gradstudy.parse_method(m)[0] for m in gradstudy.DEFAULT_METHODS]
    assert "arm(independent_suffixes=False)" in labels and "arm" not in labels
    assert gradstudy.parse_method("arm:independent_suffixes=true") == (
        "arm(independent_suffixes=True)", "arm", {"independent_suffixes": True})


def test_arm_single_unit_closed_form():
    """One unit, logistic noise: E[(f1 - f2)(u - 1/2)] = sigma'(a) (f(+1) - f(-1)), by quadrature over u."""
    a, f = 0.7, {1: 2.0, -1: -0.5}

    def integrand(u):
        b1 = 1 if u > special.expit(-a) else -1
        b2 = 1 if u < special.expit(a) else -1
        return (f[b1] - f[b2]) * (u - 0.5)

    brk = sorted([special.expit(-a), special.expit(a)])
    val = integrate.quad(integrand, 0, 1, points=brk)[0]
    assert abs(val - special.expit(a) * special.expit(-a) * (f[1] - f[-1])) < 1e-10


@pytest.mark.parametrize("noise", ["uniform", "triangular"])
def test_arm_refuses_noises_without_a_valid_arm(noise):
    net = random_net([2, 3], noise=noise)
    with pytest.raises(ValueError, match="ARM"):
        sb.estimate("arm", net, np.zeros((1, 2)), [0], rng=0)


# ------------------------------------------------------------------- Concrete / ST-Gumbel (st.md 9)
def _single_variable(fprime, eta, tau, hard):
    """Mean and variance over logistic z of GS / ST-GS: ``f'(x) (1 - x~^2) / (2 tau)`` (st.md 9.1)."""
    def est(z):
        xt = np.tanh((eta - z) / (2 * tau))
        return fprime(np.sign(eta - z) if hard else xt) * (1 - xt * xt) / (2 * tau)

    def moment(k):
        pdf = lambda z: special.expit(z) * special.expit(-z)  # noqa: E731
        return integrate.quad(lambda z: est(z) ** k * pdf(z), -60, 60, points=[eta], limit=400)[0]

    m = moment(1)
    return m, moment(2) - m * m


def test_single_variable_reference_values_of_st_md():
    """The quadrature helper reproduces spec st.md 9.2 (bias at eta = 0 and variances at tau = 1)."""
    linear, cubic = (lambda x: 3 + 0 * x), (lambda x: 3 * x * x - 2 * x)
    true_lin, true_cub = 1.5, 0.5
    m, v = _single_variable(linear, 0.0, 1.0, hard=False)
    assert abs(m - true_lin + 0.5) < 1e-3 and abs(v - 0.2) < 2e-3
    m, v = _single_variable(cubic, 0.0, 1.0, hard=True)
    assert abs(m - true_cub - 0.5) < 1e-3 and abs(v - 0.733) < 2e-3
    assert abs(_single_variable(cubic, 0.0, 0.01, hard=False)[0] - true_cub) < 0.02        # GS -> unbiased
    assert abs(_single_variable(cubic, 0.0, 0.01, hard=True)[0] - true_cub - 1.0) < 0.02   # ST-GS -> trapezoid


def _one_unit_net(eta, v=1.5, c=-0.3):
    """[1, 1] net with input 0: the binary unit's pre-activation is the bias ``eta``; head ``v x + c``."""
    net = sb.Network.dense([1, 1], 1, dtype=np.float64)
    net.stages[0].weight[...] = 0.0
    net.stages[0].bias[...] = eta
    net.head.weight[...] = v
    net.head.bias[...] = c
    return net, (lambda x: -v * special.expit(-(v * x + c)))  # f'(x) for label 1


@pytest.mark.parametrize("eta", [0.0, 1.5])
@pytest.mark.parametrize("tau", [1.0, 0.1])
@pytest.mark.parametrize("method", ["concrete", "st-gumbel"])
def test_gumbel_estimators_match_single_variable_formula(method, tau, eta):
    """On a 1-unit network the registered estimators have the mean of the st.md 9.1 formula (z-test)."""
    net, fprime = _one_unit_net(eta)
    mean, var = _single_variable(fprime, eta, tau, hard=(method == "st-gumbel"))
    n = 40000
    _, g = sb.estimate(method, net, np.zeros((n, 1)), np.ones(n, int), rng=10, tau=tau)
    assert abs(g["stages.0.bias"][0] - mean) < 4.5 * np.sqrt(var / n)


def test_gumbel_small_tau_limits_follow_the_spec():
    """As tau -> 0 GS becomes unbiased while ST-GS tends to the trapezoid rule (st.md 9.2): by quadrature of
    the formula for the 1-unit network's loss, and for the registered estimators at tau = 0.05 (z-tests)."""
    eta = 0.8
    net, fprime = _one_unit_net(eta, v=3.0, c=0.5)
    f = lambda x: np.logaddexp(0, -(3.0 * x + 0.5))  # noqa: E731
    p = special.expit(eta) * special.expit(-eta)
    truth, trapezoid = p * (f(1) - f(-1)), p * (fprime(1) + fprime(-1))
    assert abs(truth - trapezoid) > 0.05  # a loss where the two limits differ
    assert abs(_single_variable(fprime, eta, 0.01, hard=False)[0] - truth) < 0.005
    assert abs(_single_variable(fprime, eta, 0.01, hard=True)[0] - trapezoid) < 0.005
    n = 100000
    x, y = np.zeros((n, 1)), np.ones(n, int)
    for method, hard, target in (("concrete", False, truth), ("st-gumbel", True, trapezoid)):
        mean, var = _single_variable(fprime, eta, 0.05, hard=hard)
        g = sb.estimate(method, net, x, y, rng=11, tau=0.05)[1]["stages.0.bias"][0]
        assert abs(g - mean) < 4.5 * np.sqrt(var / n), (method, g, mean)
        other = trapezoid if target == truth else truth
        assert abs(g - target) < abs(g - other), (method, g, target, other)


def test_concrete_forward_tends_to_hard_sample():
    """Same seed, same uniforms: the relaxed loss of Concrete -> the hard-sample loss of ST-Gumbel."""
    net = random_net([3, 4, 3], seed=12)
    x, y = _batch(net, 12, n=500)
    relaxed = sb.estimate("concrete", net, x, y, rng=13, tau=1e-4)[0]
    hard = sb.estimate("st-gumbel", net, x, y, rng=13, tau=1e-4)[0]
    assert abs(relaxed - hard) < 1e-2 * abs(hard)


# ------------------------------------------------------------------ deterministic / pathwise checks
def _finite_difference_check(method, net, x, y, seed=5, h=1e-6, tol=1e-7, **opts):
    _, g = sb.estimate(method, net, x, y, rng=seed, **opts)
    for key, p in net.params.items():
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            plus = sb.estimate(method, net, x, y, rng=seed, **opts)[0]
            p[idx] = old - h
            minus = sb.estimate(method, net, x, y, rng=seed, **opts)[0]
            p[idx] = old
            assert abs((plus - minus) / (2 * h) - g[key][idx]) < tol, (method, opts, key, idx)


@pytest.mark.parametrize("method,opts", [("concrete", {"tau": 0.5}), ("tanh", {}), ("adf", {}),
                                         ("adf", {"head": "mean"}), ("adf", {"head": "moment-map"}),
                                         ("local-reparam", {}), ("local-reparam", {"head": "taylor"})])
@pytest.mark.parametrize("n_classes", [1, 3])
def test_pathwise_gradient_of_own_loss(noise_name, method, opts, n_classes):
    """Relaxations are exact gradients of their (relaxed / approximate / sampled) loss: finite differences
    of the returned loss with the same seed (common random numbers) match the returned gradient."""
    net = random_net([2, 3, 2], n_classes=n_classes, noise=noise_name, seed=14, scale=0.7)
    x, y = _batch(net, 14, n=3)
    _finite_difference_check(method, net, x, y, **opts)


def test_tanh_is_deterministic_mean_propagation(noise_name):
    net = random_net([3, 4, 3], noise=noise_name, seed=15)
    x, y = _batch(net, 15, n=4)
    a, b = sb.estimate("tanh", net, x, y, rng=1), sb.estimate("tanh", net, x, y, rng=2)
    assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    logits = net.forward_deterministic(x, activation="mean")
    assert abs(a[0] - net.loss(logits, y).mean()) < 1e-14


def test_adf_closed_form_on_tiny_net():
    """Hand-written ADF for a 2-3-2 logistic net with a 3-logit head and the second-order head."""
    net = random_net([2, 3, 2], seed=16, scale=0.9)
    x, y = _batch(net, 16, n=3)
    W1, b1, W2, b2 = (net.params[k] for k in ("stages.0.weight", "stages.0.bias", "stages.1.weight", "stages.1.bias"))
    V, c = net.params["head.weight"], net.params["head.bias"]
    s = np.pi / np.sqrt(3)
    P1 = special.expit(x @ W1.T + b1)                         # v_a = 0 in the first layer: exact
    m1, v1 = 2 * P1 - 1, 4 * P1 * (1 - P1)
    mu2, var2 = m1 @ W2.T + b2, v1 @ (W2 ** 2).T
    P2 = special.expit(s * mu2 / np.sqrt(var2 + s * s))
    m2, v2 = 2 * P2 - 1, 4 * P2 * (1 - P2)
    mu, var = m2 @ V.T + c, v2 @ (V ** 2).T
    p = special.softmax(mu, axis=1)
    expected = special.logsumexp(mu, axis=1) - mu[np.arange(3), y] + 0.5 * (var * p * (1 - p)).sum(axis=1)
    loss, grads = sb.estimate("adf", net, x, y, rng=0)
    assert abs(loss - expected.mean()) < 1e-13
    assert all(np.array_equal(grads[k], sb.estimate("adf", net, x, y, rng=1)[1][k]) for k in grads)


def test_adf_mean_head_equals_tanh_for_one_binary_layer(noise_name):
    """With one binary layer v_a = 0, so ADF's P is exact and ADF with a plug-in head is mean propagation."""
    net = random_net([3, 4], noise=noise_name, seed=17)
    x, y = _batch(net, 17, n=5)
    la, ga = sb.estimate("adf", net, x, y, head="mean")
    lt, gt = sb.estimate("tanh", net, x, y)
    assert abs(la - lt) < 1e-13
    _assert_close(ga, gt, rtol=1e-12)


def test_adf_probit_is_exact_for_gaussian_preactivations():
    """Normal noise: P(a - Z > 0) for a ~ N(mu, v) is Phi(mu / sqrt(v + 1)) exactly (moment map check)."""
    from sbnnumba.noise import get_noise

    mu, v = np.array([0.3, -1.2]), np.array([0.5, 2.0])
    m, var, _ = binary_moment_map(get_noise("normal"), mu, v)
    p = special.ndtr(mu / np.sqrt(v + 1))
    np.testing.assert_allclose(m, 2 * p - 1, atol=1e-15)
    np.testing.assert_allclose(var, 4 * p * (1 - p), atol=1e-15)


# ------------------------------------------------------------------------ interface, conv, options
# ARM is refused for the uniform and triangular noises (test_arm_refuses_noises_without_a_valid_arm)
@pytest.mark.parametrize("method, noise_name", [(method, noise) for method in BASELINES for noise in NOISE_NAMES
                                                if not (method == "arm" and noise in ("uniform", "triangular"))])
def test_every_baseline_with_every_noise_float32(method, noise_name):
    net = random_net([3, 4, 3], noise=noise_name, seed=18, dtype=np.float32, scale=0.5)
    x, y = _batch(net, 18, n=5)
    loss, grads = sb.estimate(method, net, x.astype(np.float32), y, rng=1)
    assert np.isfinite(loss) and set(grads) == set(net.params)
    for k, p in net.params.items():
        assert grads[k].shape == p.shape and grads[k].dtype == p.dtype and np.all(np.isfinite(grads[k])), k


def _conv_net(seed=19):
    conv = pytest.importorskip("sbnnumba.conv")
    rng = np.random.default_rng(seed)
    stages = [conv.Conv2d(1, 2, 2, rng=rng, dtype=np.float64), conv.Conv2d(2, 1, 2, rng=rng, dtype=np.float64)]
    net = sb.Network(stages, sb.Linear(1, 3, rng=rng, dtype=np.float64))
    for p in net.params.values():
        p[...] = 0.8 * rng.normal(size=p.shape)
    return net, rng.normal(size=(2, 1, 3, 3)), np.array([0, 2])


def test_conv_networks_through_the_generic_layer_interface():
    net, x, y = _conv_net()
    _, g = sb.estimate("exact", net, x, y)
    _assert_close(expected_estimate("reinforce", net, x, y)[1], g)
    for method in BASELINES:
        loss, grads = sb.estimate(method, net, x, y, rng=3)
        assert np.isfinite(loss) and all(grads[k].shape == p.shape for k, p in net.params.items())
    for method in ("concrete", "adf", "local-reparam"):
        _finite_difference_check(method, net, x, y)


def test_bernoulli_weights_and_batch_normalization():
    """Bernoulli weights: one weight sample per call, gradients mapped to eta. Batch-statistics
    normalization is refused where the estimator cannot respect it (ARM suffixes, moment propagation)."""
    x = np.random.default_rng(23).normal(size=(8, 3))
    y = np.arange(8) % 3
    net = sb.Network.dense([3, 4, 4], 3, rng=0, dtype=np.float64, weight="hidden")
    for method in BASELINES:
        loss, grads = sb.estimate(method, net, x, y, rng=1)
        assert np.isfinite(loss) and set(grads) == set(net.params) and "stages.1.eta" in grads
        assert all(np.all(np.isfinite(g)) for g in grads.values())
    net = sb.Network.dense([3, 4, 4], 3, rng=0, dtype=np.float64, normalize=True)
    for method, match in (("arm", "net.eval"), ("adf", "affine"), ("local-reparam", "affine")):
        with pytest.raises(ValueError, match=match):
            sb.estimate(method, net, x, y, rng=1)
    for method in ("reinforce", "concrete", "tanh"):
        assert np.isfinite(sb.estimate(method, net, x, y, rng=1)[0])
    net.eval()
    assert np.isfinite(sb.estimate("arm", net, x, y, rng=1)[0])


def test_squared_weight_layer_is_the_variance_map():
    layers = [sb.Linear(4, 3, rng=0, dtype=np.float64)]
    try:
        from sbnnumba.conv import Conv2d

        layers.append(Conv2d(2, 3, 3, stride=2, padding=1, rng=0, dtype=np.float64))
        shapes = [(4,), (2, 5, 6)]
    except ImportError:
        shapes = [(4,)]
    rng = np.random.default_rng(0)
    for layer, shape in zip(layers, shapes):
        v = rng.random((2,) + shape)
        sq = squared_weight_layer(layer)
        np.testing.assert_allclose(sq.forward(v), layer.forward_moments(np.zeros_like(v), v)[1], atol=1e-14)
        g = rng.normal(size=sq.forward(v).shape)
        # transpose: <g, M v> == <M^T g, v>
        assert abs(np.sum(g * sq.forward(v)) - np.sum(sq.backward_input(g, shape) * v)) < 1e-12


@pytest.mark.parametrize("method,opts,match,error", [
    ("concrete", {"tau": 0.0}, "tau", ValueError), ("concrete", {"tau": -1.0}, "tau", ValueError),
    ("st-gumbel", {"tau": "1"}, "tau", TypeError), ("concrete", {"tau": float("nan")}, "tau", ValueError),
    ("reinforce-baseline", {"samples": 1}, "samples", ValueError),
    ("reinforce-baseline", {"samples": 2.5}, "samples", TypeError), ("adf", {"head": "exact"}, "head", ValueError),
    ("local-reparam", {"head": None}, "head", TypeError), ("tanh", {"tau": 1.0}, "unknown option", ValueError),
    ("arm", {"samples": 2}, "unknown option", ValueError)])
def test_options_are_validated(method, opts, match, error):
    """Wrong values raise ValueError, wrong types TypeError (sbnnumba.validation's policy)."""
    net = random_net([3, 4, 3], seed=20)
    with pytest.raises(error, match=match):
        sb.estimate(method, net, np.zeros((1, 3)), [0], rng=0, **opts)


# --------------------------------------------------------------------------- study metrics + smoke
def test_metrics_on_synthetic_draws():
    rng = np.random.default_rng(21)
    g = np.array([3.0, -4.0, 1.0, 2.0, 2.0])            # layer a: first 2 (norm 5); layer b: last 3 (norm 3)
    groups = [("a", np.arange(2)), ("b", np.arange(2, 5))]
    sigma, bias = 0.5, np.array([0.0, 0.0, 0.3, 0.0, -0.4])  # ||bias_b|| = 0.5
    draws = g + bias + sigma * rng.normal(size=(40000, 5))
    rows = {(r["layer"], r["M"]): r for r in gradstudy.accuracy_metrics(draws, g, groups, [1, 4, 100])}
    for m in (1, 4, 100):
        assert rows[("a", m)]["groups"] == 40000 // m
        np.testing.assert_allclose(rows[("a", m)]["rel_rmse"], np.sqrt(2 * sigma ** 2 / m) / 5, rtol=0.05)
        np.testing.assert_allclose(rows[("b", m)]["rel_rmse"], np.sqrt(0.25 + 3 * sigma ** 2 / m) / 3, rtol=0.05)
    assert rows[("a", 100)]["cos_q15"] <= rows[("a", 100)]["cos_mean"] <= rows[("a", 100)]["cos_q85"] <= 1
    exact = gradstudy.accuracy_metrics(np.tile(2 * g, (10, 1)), g, groups, [1, 5])
    assert all(abs(r["rel_rmse"] - 1) < 1e-12 and abs(r["cos_mean"] - 1) < 1e-12 for r in exact)
    flipped = gradstudy.accuracy_metrics(np.tile(-g, (10, 1)), g, groups, [1])
    assert all(abs(r["cos_mean"] + 1) < 1e-12 and abs(r["cos_q85"] + 1) < 1e-12 for r in flipped)
    zero = gradstudy.accuracy_metrics(np.zeros((4, 5)), g, groups, [1])
    assert all(r["cos_mean"] == 0 and abs(r["rel_rmse"] - 1) < 1e-12 for r in zero)


def test_protocol_sample_sizes_and_layer_groups():
    ms = gradstudy.m_values(20000)
    assert ms[:10] == list(range(1, 11)) and ms[-1] == 9000 and 100 in ms and 1000 in ms and len(ms) == 36
    assert max(gradstudy.m_values(100)) == 50
    net = random_net([2, 5, 5, 5], n_classes=1)
    groups = gradstudy.layer_groups(net)
    assert [la for la, _ in groups] == ["stages.0", "stages.1", "stages.2", "head"]
    assert [len(i) for _, i in groups] == [15, 30, 30, 6]
    assert np.array_equal(np.concatenate([i for _, i in groups]), np.arange(81))


def test_adf_rescale_gives_unit_preactivation_moments():
    x, _ = sb.datasets.toy2d(200)
    net = gradstudy.make_network(x, np.random.default_rng(22))
    mu, var = x, np.zeros_like(x)
    for layer in net.stages:
        mu_a, v_a = layer.forward_moments(mu, var)
        np.testing.assert_allclose(mu_a.mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(v_a.mean(axis=0) + mu_a.var(axis=0), 1, atol=1e-12)
        mu, var, _ = binary_moment_map(net.noise, mu_a, v_a)


def test_parse_method():
    assert gradstudy.parse_method("concrete:tau=0.1") == ("concrete(tau=0.1)", "concrete", {"tau": 0.1})
    assert gradstudy.parse_method("reinforce-baseline:samples=3")[2] == {"samples": 3}
    with pytest.raises(ValueError, match="unknown estimator"):
        gradstudy.parse_method("magic")
    with pytest.raises(ValueError, match="unknown option"):
        gradstudy.parse_method("psa:tau=1")


def test_gradstudy_main_smoke(tmp_path, capsys):
    out = tmp_path / "study"
    code = gradstudy.main(["--out", str(out), "--epochs", "0", "2", "--draws", "12", "--n-points", "20",
                           "--methods", "psa", "arm", "concrete:tau=0.5", "tanh", "--quiet", "--chunk", "5"])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"gradient_accuracy.csv", "gradient_accuracy.md", "gradient_accuracy_epoch0.png",
            "gradient_accuracy_epoch2.png", "checkpoint_epoch0.npz", "checkpoint_epoch2.npz"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    lines = (out / "gradient_accuracy.csv").read_text().splitlines()
    assert lines[0].split(",") == list(gradstudy.CSV_FIELDS)
    assert len(lines) == 1 + 2 * 4 * 4 * len(gradstudy.m_values(12))  # epochs x methods x layers x M
    md = (out / "gradient_accuracy.md").read_text()
    assert "## Epoch 2" in md and "| concrete(tau=0.5) |" in md
    tanh_rows = [ln.split(",") for ln in lines[1:] if ln.split(",")[1] == "tanh"]
    m1 = {(r[0], r[2]): float(r[5]) for r in tanh_rows if r[3] == "1"}
    m6 = {(r[0], r[2]): float(r[5]) for r in tanh_rows if r[3] == "6"}
    assert all(abs(m1[k] - m6[k]) < 1e-12 for k in m1)  # deterministic: no variance, constant bias
    assert "relative RMSE at M=1" in capsys.readouterr().out
