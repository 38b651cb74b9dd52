"""Softmax cross-entropy against scipy's logsumexp/softmax, including extreme and -inf logits."""
import numpy as np
import pytest
from scipy import special

from sbnnumba import losses


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xent_equals_scipy(dtype):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 3, 7)) * 5).astype(dtype)
    logits[0, 0] = [1e4, -1e4, 0, 3, 1e4 - 1, -np.inf, 2]      # overflow-prone and a -inf class
    y = rng.integers(0, 7, size=(4, 3))
    y[0, 0] = 1
    loss, g = losses.xent(logits, y)
    ref = special.logsumexp(logits.astype(np.float64), axis=-1) - np.take_along_axis(
        logits.astype(np.float64), y[..., None], -1)[..., 0]
    soft = special.softmax(logits.astype(np.float64), axis=-1)
    np.put_along_axis(soft, y[..., None], np.take_along_axis(soft, y[..., None], -1) - 1, -1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss.dtype == dtype and g.dtype == dtype
    np.testing.assert_allclose(loss, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(g, soft, atol=tol)
    np.testing.assert_array_equal(losses.xent(logits, y, grad=False), loss)


def test_xent_broadcasts_labels():
    logits = np.array([[[0.0, 1.0], [2.0, -1.0]]])
    loss = losses.xent(logits, np.array([1, 0]), grad=False)
    np.testing.assert_allclose(loss, special.logsumexp(logits, -1) - np.array([[1.0, 2.0]]))
