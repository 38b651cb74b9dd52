"""PSA's pre-activation gradient ``-x p(a) d`` (spec psa.md, section 2.4): the fused logistic kernel
(sbnnumba.kernels.psa_factors) equals the NumPy expression bit for bit, and every family's ``psa_grad`` equals it."""
import numpy as np
import pytest

from sbnnumba import get_noise
from sbnnumba.backends import get_backend
from sbnnumba.kernels.psa_factors import logistic_psa_grad


def _inputs(dtype, shape=(5, 3, 7, 6), seed=0):
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=shape) * np.array([0.1, 3.0, 40.0])[None, :, None, None]).astype(dtype)
    a.ravel()[::17] = 0
    x = np.where(rng.random(shape) < 0.5, 1, -1).astype(dtype)
    d = rng.normal(size=shape).astype(dtype)
    return x, a, d


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_logistic_grad_is_bit_identical_to_numpy(dtype):
    x, a, d = _inputs(dtype)
    ref = -x * get_noise("logistic").pdf(a) * d
    got = logistic_psa_grad(x, a, d)
    assert got.dtype == dtype and got.shape == a.shape
    assert got.tobytes() == ref.tobytes()
    # a non-contiguous view and 1-d arrays take the same path
    assert logistic_psa_grad(x[:, 1], a[:, 1], d[:, 1]).tobytes() == ref[:, 1].tobytes()


def test_fused_logistic_grad_declines_mixed_inputs():
    x, a, d = _inputs(np.float32)
    assert logistic_psa_grad(x, a, d.astype(np.float64)) is None
    assert logistic_psa_grad(x, a.astype(np.int64), d) is None
    assert logistic_psa_grad(x, a, d[:2]) is None


def test_psa_grad_of_every_family_and_the_cpu_backend(noise_name):
    noise = get_noise(noise_name)
    for dtype in (np.float32, np.float64):
        x, a, d = _inputs(dtype, seed=1)
        ref = -x * noise.pdf(a) * d
        assert noise.psa_grad(x, a, d).tobytes() == ref.tobytes()
        assert get_backend("cpu").psa_preactivation_grad(x, a, d, noise).tobytes() == ref.tobytes()
    x, a, d = _inputs(np.float32, seed=2)
    assert noise.psa_grad(x, a, d.astype(np.float64)).dtype == np.float64  # NumPy's promotion, kernel declined
