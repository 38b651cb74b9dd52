"""The NoiseFamily extension point (#33): every registered family implements the whole interface and its
jitable twins equal its NumPy methods; a family defined in this file, outside the library, trains with
PSA and ST; kernel codes outside the registry raise instead of falling into a default family."""
import numba
import numpy as np
import pytest
from scipy import integrate

import sbnnumba as sb
from sbnnumba import noise as noise_mod
from sbnnumba.kernels import scalar
from sbnnumba.noise import NOISES, NoiseFamily, get_noise, register_noise
from sbnnumba.testing import exact_expected_loss, expected_estimate

FORMS = ("ratio", "bounded", "probit", "generic")


class Laplace(NoiseFamily):
    """Standard Laplace noise, defined here and nowhere in the library: ``F(a) = e^a / 2`` below 0,
    ``1 - e^-a / 2`` above, ``p(a) = e^-|a| / 2``, variance 2. No kernel twins: runs on the ``"reference"`` backend."""

    name = "laplace-test"
    std = float(np.sqrt(2.0))

    @staticmethod
    def _typed(out, a):
        a = np.asarray(a)
        return np.asarray(out, dtype=a.dtype if a.dtype.kind == "f" else np.float64)

    def cdf(self, a):
        a_ = np.asarray(a)
        tail = 0.5 * np.exp(-np.abs(a_))
        return self._typed(np.where(a_ < 0, tail, 1 - tail), a)

    def pdf(self, a):
        return self._typed(0.5 * np.exp(-np.abs(np.asarray(a))), a)

    def log_cdf(self, a):
        a_ = np.asarray(a)
        return self._typed(np.where(a_ < 0, np.log(0.5) + np.minimum(a_, 0),
                                    np.log1p(-0.5 * np.exp(-np.abs(a_)))), a)

    def quantile(self, u):
        u_ = np.asarray(u)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(u_ < 0.5, np.log(2 * u_), -np.log(2 * (1 - u_)))
        return self._typed(out, u)


ALL_FAMILIES = [NOISES[name] for name in sorted(NOISES)] + [Laplace()]


def _entropy_reference(f, a):
    p = np.asarray(f.cdf(a), dtype=np.float64)
    q = 1 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0) + np.where(q > 0, q * np.log2(q), 0))
    return h


@pytest.mark.parametrize("f", ALL_FAMILIES, ids=lambda f: f.name)
def test_family_implements_the_whole_interface(f):
    """Each method against its definition from cdf/pdf (finite differences, integrals, the inverse)."""
    a = np.linspace(-3, 3, 61)
    u = np.linspace(0.02, 0.98, 49)
    np.testing.assert_allclose(f.cdf(-a), 1 - f.cdf(a), atol=1e-15)                       # symmetric
    np.testing.assert_allclose(f.cdf(f.quantile(u)), u, atol=1e-12)                       # quantile = F^-1
    keep = f.cdf(a) > 1e-300
    np.testing.assert_allclose(f.log_cdf(a[keep]), np.log(f.cdf(a[keep])), rtol=1e-12)
    second, _ = integrate.quad(lambda t: t * t * float(f.pdf(np.array(t))), -60, 60, points=[-1, 0, 1], limit=200)
    assert abs(f.variance - second) < 1e-8 and abs(f.std ** 2 - f.variance) < 1e-12
    np.testing.assert_allclose(f.mean(a), 2 * f.cdf(a) - 1, atol=1e-15)
    np.testing.assert_allclose(f.mean_grad(a), 2 * f.pdf(a), atol=1e-15)
    ratio = np.where(keep, f.pdf(a) / np.where(keep, f.cdf(a), 1), 0)
    np.testing.assert_allclose(f.score_ratio(a), ratio, rtol=1e-12, atol=1e-300)
    draws = np.random.default_rng(0).random(a.shape)
    np.testing.assert_array_equal(f.sample(a, draws), np.where(draws < f.cdf(a), 1.0, -1.0))
    np.testing.assert_allclose(f.entropy_bits(a), _entropy_reference(f, a), atol=1e-12)
    assert f.weight_clip is None or f.weight_clip > 0
    assert set(f.flip_forms) <= set(FORMS)
    assert f.has_kernels == (f.name in scalar.NOISE_CODES)
    np.testing.assert_allclose(f.matched_scale(2.0), f.quantile(np.array(1 / (1 + np.exp(-2.0)))), rtol=1e-12)
    for fn in (f.cdf, f.pdf, f.log_cdf, f.mean, f.mean_grad, f.score_ratio, f.entropy_bits):
        assert fn(a.astype(np.float32)).dtype == np.float32, fn
    assert f.sample(a.astype(np.float32), draws).dtype == np.float32


@pytest.mark.parametrize("f", ALL_FAMILIES, ids=lambda f: f.name)
def test_arm_psi_is_the_score_of_the_noise_or_refused(f):
    """ARM's psi(u) = -(log p)'(F^-1(u)) where the family defines it; otherwise a ValueError naming ARM."""
    u = np.linspace(0.05, 0.95, 19)
    u = u[np.abs(u - 0.5) > 0.01]  # skip the kink of p at 0 (Laplace)
    try:
        psi = f.arm_psi(u)
    except ValueError as exc:
        assert "ARM" in str(exc) and f.name in str(exc)
        return
    z, h = f.quantile(u), 1e-6
    log_p_slope = (np.log(f.pdf(z + h)) - np.log(f.pdf(z - h))) / (2 * h)
    np.testing.assert_allclose(psi, -log_p_slope, atol=1e-6)


@numba.njit(cache=True)
def _twins_compiled(code, a, out):
    for i in range(a.shape[0]):
        out[0, i] = scalar.cdf(code, a[i])
        out[1, i] = scalar.pdf(code, a[i])
        out[2, i] = scalar.entropy_bits(code, a[i])


@pytest.mark.parametrize("name", sorted(NOISES))
def test_jitable_twins_equal_numpy_methods(name):
    """scalar.cdf / pdf / entropy_bits of the family's kernel code, as Python and compiled by Numba, against
    the family's NumPy methods, deep into both tails."""
    f = get_noise(name)
    a = np.concatenate([np.linspace(-6, 6, 241), [-40.0, -12.5, 12.5, 40.0, -1.0, 1.0, 0.0]])
    compiled = np.empty((3, a.size))
    _twins_compiled(f.code, a, compiled)
    want = np.stack([f.cdf(a), f.pdf(a), _entropy_reference(f, a)])
    python = np.array([[scalar.cdf(f.code, v), scalar.pdf(f.code, v), scalar.entropy_bits(f.code, v)] for v in a]).T
    for got in (python, compiled):
        np.testing.assert_allclose(got[:2], want[:2], rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(np.array([scalar.cdf_lower(f.code, -abs(v)) for v in a]), f.cdf(-np.abs(a)),
                               rtol=1e-13, atol=1e-300)
    assert f.flip_forms == scalar.flip_forms(f.code) and f.flip_forms


def test_kernel_codes_come_from_one_table_and_unknown_codes_raise():
    assert [get_noise(name).code for name in scalar.KERNEL_FAMILIES] == list(range(len(scalar.KERNEL_FAMILIES)))
    unknown = len(scalar.KERNEL_FAMILIES)
    for fn in (scalar.cdf, scalar.pdf, scalar.cdf_lower, scalar.entropy_bits):
        with pytest.raises(ValueError, match="noise_code"):
            fn(unknown, 0.3)
    with pytest.raises(ValueError, match="noise_code"):
        _twins_compiled(unknown, np.zeros(2), np.empty((3, 2)))  # compiled: raises too, no default family
    for bad in (unknown, -1, True, 1.0):
        with pytest.raises(ValueError, match="noise_code: expected one of 0 .logistic."):
            scalar.check_code(bad)


def test_family_without_kernels_names_the_reference_backend():
    f = Laplace()
    assert not f.has_kernels and f.flip_forms == ()
    with pytest.raises(ValueError, match="backend='reference'"):
        f.code
    net = sb.Network.dense([3, 4, 3], 2, noise=f, rng=0, dtype=np.float64)  # "cpu" backend
    with pytest.raises(ValueError, match="backend='reference'"):
        sb.estimate("psa", net, np.zeros((2, 3)), [0, 1], rng=0)


def test_register_noise(monkeypatch):
    monkeypatch.setattr(noise_mod, "NOISES", dict(NOISES))  # registration is undone after the test
    family = register_noise(Laplace())
    assert get_noise("laplace-test") is family
    net = sb.Network.dense([3, 2], 2, noise="laplace-test", rng=0)
    assert net.noise is family
    with pytest.raises(ValueError, match="laplace-test"):
        register_noise(Laplace())
    with pytest.raises(TypeError, match="family: expected a NoiseFamily"):
        register_noise("laplace")
    with pytest.raises(TypeError, match="Can't instantiate abstract class"):
        type("Partial", (NoiseFamily,), {"name": "partial"})()


def test_psa_is_exact_for_the_new_family_where_theory_says():
    """Every binary layer after the first of width 1: PSA's expectation (path enumeration) equals the exact
    gradient, for a family the library has never seen."""
    rng = np.random.default_rng(5)
    net = sb.Network.dense([3, 4, 1], 3, noise=Laplace(), rng=rng, dtype=np.float64, backend="reference")
    for p in net.params.values():
        p[...] = 0.8 * rng.normal(size=p.shape)
    x, y = rng.normal(size=(2, 3)), np.array([0, 2])
    _, exact = sb.estimate("exact", net, x, y)
    _, psa = expected_estimate("psa", net, x, y)
    for key in exact:
        np.testing.assert_allclose(psa[key], exact[key], atol=1e-12, err_msg=key)


@pytest.mark.parametrize("method", ["psa", "st"])
def test_new_family_trains_with_psa_and_st(method):
    """A few SGD steps with the new family lower the exact expected loss of a small network."""
    rng = np.random.default_rng(7)
    net = sb.Network.dense([4, 5, 4], 3, noise=Laplace(), rng=rng, dtype=np.float64, backend="reference")
    x = rng.normal(size=(24, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    before = exact_expected_loss(net, x, y).mean()
    opt = sb.optim.SGD(lr=0.2, momentum=0.9)
    for _ in range(30):
        loss, grads = sb.estimate(method, net, x, y, rng=rng)
        assert np.isfinite(loss)
        opt.update(net.params, grads)
    after = exact_expected_loss(net, x, y).mean()
    assert after < 0.9 * before, (before, after)
