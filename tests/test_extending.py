"""docs/extending.md works: its python blocks run as written, and each example does what the page says.

The registrations the page makes (an estimator, a layer kind, a backend) are undone after the test, so
the rest of the suite sees the library's own registries.
"""
import numpy as np
import pytest
from doc_snippets import ROOT, run_page

import sbnnumba as sb
from sbnnumba import noise
from sbnnumba.backends import registry as backend_registry
from sbnnumba.estimators import registry as estimator_registry
from sbnnumba.testing import expected_estimate
from sbnnumba.training import description

PAGE = ROOT / "docs" / "extending.md"


@pytest.fixture(scope="module")
def page():
    registries = (estimator_registry.PATH_ESTIMATORS, description.LAYER_KINDS, backend_registry._CLASSES,
                  backend_registry._INSTANCES, noise.NOISES)
    saved = [dict(r) for r in registries]
    try:
        yield run_page(PAGE)
    finally:
        for live, before in zip(registries, saved):
            live.clear()
            live.update(before)


def test_estimator_is_registered_and_scale_one_is_deep_st(page):
    net, x, y = page["net"], page["x"], page["y"]
    assert "wide-st" in sb.known_methods()
    _, ours = sb.estimate("wide-st", net, x, y, rng=np.random.default_rng(5), scale=1.0)
    _, st = sb.estimate("st", net, x, y, rng=np.random.default_rng(5))
    for k in st:
        np.testing.assert_allclose(ours[k], st[k], rtol=1e-12, atol=1e-14, err_msg=k)
    with pytest.raises(ValueError, match="unknown option"):
        sb.estimate("wide-st", net, x, y, temperature=1.0)


def test_noise_family_is_consistent_and_the_oracle_uses_it(page):
    family, net, x, y = page["Laplace"](), page["laplace_net"], page["x"], page["y"]
    a = np.linspace(-4, 4, 81)
    np.testing.assert_allclose(family.cdf(a) + family.cdf(-a), 1.0, rtol=0, atol=1e-15)     # symmetric
    np.testing.assert_allclose((family.cdf(a + 1e-6) - family.cdf(a - 1e-6)) / 2e-6, family.pdf(a), rtol=1e-5)
    np.testing.assert_allclose(np.exp(family.log_cdf(a)), family.cdf(a), rtol=1e-12)
    np.testing.assert_allclose(family.cdf(family.quantile(np.linspace(0.01, 0.99, 9))), np.linspace(0.01, 0.99, 9))
    # the exact gradient of the Laplace network against central differences of its exact loss
    exact = page["exact_grads"]
    w = net.stages[0].weight
    for idx in [(0, 0), (3, 1)]:
        old = w[idx]
        w[idx] = old + 1e-6
        up = sb.estimate("exact", net, x, y)[0]
        w[idx] = old - 1e-6
        down = sb.estimate("exact", net, x, y)[0]
        w[idx] = old
        np.testing.assert_allclose((up - down) / 2e-6, exact["stages.0.weight"][idx], rtol=1e-5, atol=1e-9)
    assert all(np.all(np.isfinite(g)) for g in page["st_grads"].values())
    assert sb.get_noise("laplace") is net.noise
    # PSA with the new family: exact in the last binary layer and the head (expectation over all paths)
    expected = expected_estimate("psa", net, x[:6], y[:6])[1]
    exact6 = sb.estimate("exact", net, x[:6], y[:6])[1]
    for k in ("stages.1.weight", "stages.1.bias", "head.weight"):
        np.testing.assert_allclose(expected[k], exact6[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_layer_trains_with_psa_and_is_described_for_checkpoints(page):
    net, x, y = page["masked_net"], page["x"], page["y"]
    # PSA is exact in the last binary layer and the head: its expectation over all paths equals the oracle
    expected = expected_estimate("psa", net, x[:8], y[:8])[1]
    exact = sb.estimate("exact", net, x[:8], y[:8])[1]
    for k in ("stages.1.weight", "stages.1.bias", "head.weight", "head.bias"):
        np.testing.assert_allclose(expected[k], exact[k], rtol=1e-9, atol=1e-12, err_msg=k)
    masked = net.stages[0].mask == 0
    assert masked.any() and np.all(page["psa_grads"]["stages.0.weight"][masked] == 0)
    rebuilt = description.network_from_description(description.describe(net))
    assert [type(s).__name__ for s in rebuilt.stages] == ["MaskedLinear", "MaskedLinear"]
    np.testing.assert_array_equal(rebuilt.stages[1].mask, net.stages[1].mask)


def test_backend_is_registered_and_matches_reference(page):
    x, y = page["x"], page["y"]
    assert "counting" in backend_registry.backend_names()
    assert page["CountingBackend"].calls >= 1
    reference = sb.Network.dense([2, 5, 5], n_classes=2, rng=0, dtype=np.float64, backend="reference")
    _, grads_r = sb.estimate("psa", reference, x, y, rng=np.random.default_rng(2))
    for k, g in page["grads_c"].items():
        np.testing.assert_array_equal(g, grads_r[k], err_msg=k)
