"""Core estimators against the exact enumeration oracle (spec psa.md, section 8)."""
import numpy as np
import pytest
from conftest import group_rel_error, random_net

import sbnnumba as sb
from sbnnumba.testing import enumerate_paths, exact_expected_loss, expected_estimate

CORE_METHODS = ["exact", "psa", "st", "st-identity", "st-hardtanh"]


def _batch(net, seed, n=2):
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=(n, net.stages[0].n_in))
    y = rng.integers(0, max(net.n_classes, 2), size=n)
    return x, y


@pytest.mark.parametrize("sizes", [[3, 4], [2, 3, 3], [3, 1, 4]])
def test_exact_gradient_matches_central_differences(noise_name, sizes):
    net = random_net(sizes, noise=noise_name, seed=1, scale=0.6)
    x, y = _batch(net, 1)
    _, g = sb.estimate("exact", net, x, y)
    h = 1e-5
    for key, p in net.params.items():
        fd = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            plus = exact_expected_loss(net, x, y).mean()
            p[idx] = old - h
            minus = exact_expected_loss(net, x, y).mean()
            p[idx] = old
            fd[idx] = (plus - minus) / (2 * h)
        np.testing.assert_allclose(g[key], fd, atol=1e-8, err_msg=key)


def test_exact_binary_head_and_loss_value():
    net = random_net([2, 3, 2], n_classes=1, seed=2)
    x, y = _batch(net, 2, n=3)
    loss, _ = sb.estimate("exact", net, x, y)
    path, prob, ex = enumerate_paths(net, x)
    s = 2 * y[ex] - 1
    brute = np.bincount(ex, prob * np.logaddexp(0, -s * path.logits[:, 0])).mean()
    assert abs(loss - brute) < 1e-12


def test_exact_refuses_wide_stages():
    net = random_net([2, 11], seed=0)
    with pytest.raises(ValueError, match="at most 10 binary units"):
        sb.estimate("exact", net, np.zeros((1, 2)), [0])


@pytest.mark.parametrize("sizes", [[3, 4], [3, 1, 1, 1], [3, 4, 1, 1], [2, 5, 1]])
def test_psa_expectation_exact_where_theory_says(noise_name, sizes):
    """One binary layer, or every binary layer after the first of width 1: PSA is unbiased."""
    net = random_net(sizes, noise=noise_name, seed=3, scale=0.8)
    x, y = _batch(net, 3)
    _, g = sb.estimate("exact", net, x, y)
    _, g_psa = expected_estimate("psa", net, x, y)
    for key in g:
        np.testing.assert_allclose(g_psa[key], g[key], atol=1e-8 * max(1, np.abs(g[key]).max()), err_msg=key)


@pytest.mark.parametrize("sizes", [[2, 5, 5, 5], [2, 3, 3], [4, 3, 1, 2], [3, 1, 4]])
@pytest.mark.parametrize("head", ["rb", "sample"])
def test_psa_exact_in_head_and_last_binary_layer(noise_name, sizes, head):
    net = random_net(sizes, noise=noise_name, seed=4)
    x, y = _batch(net, 4)
    _, g = sb.estimate("exact", net, x, y)
    _, g_psa = expected_estimate("psa", net, x, y, head=head)
    last = len(sizes) - 2
    for key in g:
        if key.startswith("head") or key.startswith(f"stages.{last}."):
            np.testing.assert_allclose(g_psa[key], g[key], atol=1e-8 * max(1, np.abs(g[key]).max()), err_msg=key)


def test_psa_bias_small_below_deep_st_on_2555():
    """Observed on 12 random 2-5-5-5 nets (N(0,1) parameters, logistic): PSA's relative bias in the
    two lower binary layers has median about 0.07 (max about 0.4 on an unlucky seed); deep ST's median
    is about 0.27 in every binary layer. Bounds asserted: PSA median < 0.15, every seed < 0.5, and
    PSA's median below ST's in each lower layer."""
    psa, st = [], []
    for seed in range(12):
        net = random_net([2, 5, 5, 5], seed=seed)
        x, y = _batch(net, seed, n=1)
        _, g = sb.estimate("exact", net, x, y)
        e_psa = group_rel_error(g, expected_estimate("psa", net, x, y)[1], net)
        e_st = group_rel_error(g, expected_estimate("st", net, x, y)[1], net)
        psa.append([e_psa["stages.0"], e_psa["stages.1"]])
        st.append([e_st["stages.0"], e_st["stages.1"], e_st["stages.2"]])
    psa, st = np.array(psa), np.array(st)
    assert np.all(np.median(psa, axis=0) < 0.15), np.median(psa, axis=0)
    assert psa.max() < 0.5
    assert np.all(np.median(psa, axis=0) < np.median(st[:, :2], axis=0))
    assert np.median(st[:, 2]) > 0.05  # deep ST is biased even in the last binary layer


def test_psa_rb_value_is_unbiased():
    net = random_net([2, 3, 3], seed=5)
    x, y = _batch(net, 5, n=3)
    loss_psa, _ = expected_estimate("psa", net, x, y)
    assert abs(loss_psa - exact_expected_loss(net, x, y).mean()) < 1e-12


def test_psa_monte_carlo_converges_to_path_expectation():
    """Mean of n independent PSA draws vs the enumerated mean, z-scores from the enumerated variance."""
    net = random_net([2, 3, 3], seed=6)
    x, y = _batch(net, 6, n=1)
    _, mean, (per_path, prob, _) = expected_estimate("psa", net, x, y, return_paths=True)
    n = 4000
    _, mc = sb.estimate("psa", net, np.repeat(x, n, 0), np.repeat(y, n), rng=np.random.default_rng(7))
    for key in mean:
        var = np.einsum("p,p...->...", prob, (per_path[key] - mean[key]) ** 2)
        z = (mc[key] - mean[key]) / np.sqrt(var / n + 1e-300)
        assert np.all(np.abs(z[var > 1e-20]) < 5), (key, z)


@pytest.mark.parametrize("sizes", [[3, 4], [2, 5, 5, 5], [3, 1, 4]])
def test_deep_st_equals_linearized_psa_path_by_path(noise_name, sizes):
    net = random_net(sizes, noise=noise_name, seed=8, scale=0.7)
    x, y = _batch(net, 8, n=2)
    path, prob, ex = enumerate_paths(net, x)
    w = np.ones(len(prob))  # per-path sums: every path contributes with weight 1
    _, g_st = sb.estimators.PATH_ESTIMATORS["st"][0](net, path, y[ex], w)
    _, g_lin = sb.estimators.PATH_ESTIMATORS["psa"][0](net, path, y[ex], w, head="sample", linearize=True)
    for key in g_st:
        np.testing.assert_allclose(g_lin[key], g_st[key], atol=1e-12 * max(1, np.abs(g_st[key]).max()))


@pytest.mark.parametrize("method", CORE_METHODS)
def test_every_method_with_every_noise(method, noise_name):
    net = random_net([3, 4, 3], noise=noise_name, seed=9, dtype=np.float32, scale=0.5)
    x, y = _batch(net, 9, n=5)
    loss, grads = sb.estimate(method, net, x.astype(np.float32), y, rng=1)
    assert np.isfinite(loss)
    assert set(grads) == set(net.params)
    for k, p in net.params.items():
        assert grads[k].shape == p.shape and grads[k].dtype == p.dtype
        assert np.all(np.isfinite(grads[k]))


def test_st_variants_factors():
    """st-identity uses factor 1, st-hardtanh 1[|a| <= 1]: compare with the explicit proxy option."""
    net = random_net([3, 4, 2], seed=10)
    x, y = _batch(net, 10, n=4)
    for alias, proxy in (("st-identity", "identity"), ("st-hardtanh", "uniform")):
        a = sb.estimate(alias, net, x, y, rng=3)[1]
        b = sb.estimate("st", net, x, y, rng=3, proxy=proxy)[1]
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # ST with the matched proxy is exact for a single binary layer with a 1-logit linear loss? No:
    # the loss is nonlinear in the logit, so only check that identity and matched ST differ.
    g1 = sb.estimate("st", net, x, y, rng=3)[1]["stages.0.weight"]
    g2 = sb.estimate("st-identity", net, x, y, rng=3)[1]["stages.0.weight"]
    assert not np.allclose(g1, g2)


def test_estimate_reproducible_from_seed():
    net = random_net([3, 4, 3], seed=11)
    x, y = _batch(net, 11, n=6)
    a = sb.estimate("psa", net, x, y, rng=5)
    b = sb.estimate("psa", net, x, y, rng=5)
    assert a[0] == b[0]
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])


def test_backend_reference_equals_cpu():
    net = random_net([6, 8, 7, 5], seed=12)
    x, y = _batch(net, 12, n=4)
    g_cpu = sb.estimate("psa", net, x, y, rng=2)[1]
    net.backend = "reference"
    g_np = sb.estimate("psa", net, x, y, rng=2)[1]
    for k in g_cpu:
        np.testing.assert_allclose(g_cpu[k], g_np[k], atol=1e-12)


class TestBadInput:
    net = random_net([3, 4, 3], seed=13)

    def test_unknown_method_lists_known(self):
        with pytest.raises(ValueError, match="psa"):
            sb.estimate("magic", self.net, np.zeros((1, 3)), [0])

    def test_unknown_option(self):
        with pytest.raises(ValueError, match="tau"):
            sb.estimate("psa", self.net, np.zeros((1, 3)), [0], tau=1.0)

    def test_wrong_feature_count(self):
        with pytest.raises(ValueError, match="expects 3 input features"):
            sb.estimate("psa", self.net, np.zeros((2, 4)), [0, 1])

    def test_non_finite(self):
        with pytest.raises(ValueError, match="finite"):
            sb.estimate("st", self.net, np.array([[0.0, np.nan, 1.0]]), [0])

    def test_labels(self):
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            sb.estimate("st", self.net, np.zeros((2, 3)), [0, 3])
        with pytest.raises(ValueError, match="shape"):
            sb.estimate("st", self.net, np.zeros((2, 3)), [0])
        with pytest.raises(TypeError, match="integer"):
            sb.estimate("st", self.net, np.zeros((1, 3)), [0.5])

    def test_dtype(self):
        with pytest.raises(TypeError, match="numeric"):
            sb.estimate("st", self.net, np.array([["a", "b", "c"]]), [0])

    def test_constructor_errors(self):
        with pytest.raises(ValueError, match="n_out"):
            sb.Linear(3, 0)
        with pytest.raises(ValueError, match="noise"):
            sb.Network.dense([2, 3], 2, noise="laplace")
        with pytest.raises(TypeError, match="head"):
            sb.Network([sb.Linear(2, 3)], head="linear")
        with pytest.raises(ValueError, match="backend"):
            sb.Network.dense([2, 3], 2, backend="tpu")


def test_st_deterministic_forward_and_tanh_proxy():
    net = random_net([3, 4, 2], seed=14)
    x, y = _batch(net, 14, n=3)
    _, g = sb.estimate("st-deterministic", net, x, y, rng=0)
    # the same gradient from an explicit sign path
    from sbnnumba.network import Path, StageSample
    path, h = Path(), x
    for layer in net.stages:
        a = layer.forward(h)
        s = np.where(a >= 0, 1.0, -1.0)
        path.stages.append(StageSample(h, a, s))
        h = s
    path.logits = net.head.forward(h)
    _, g2 = sb.estimators.PATH_ESTIMATORS["st"][0](net, path, y, np.full(3, 1 / 3))
    for k in g:
        np.testing.assert_allclose(g[k], g2[k])
    a = sb.estimate("st-tanh", net, x, y, rng=1)[1]
    with pytest.raises(ValueError, match="proxy"):
        sb.estimate("st", net, x, y, proxy="sigmoid")
    assert np.all(np.isfinite(a["stages.0.weight"]))
