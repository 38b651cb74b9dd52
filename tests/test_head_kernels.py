"""PSA head differences: the fused Numba passes (sbnnumba.kernels.head) == the NumPy formula, bit for bit."""
import numpy as np
import pytest

from sbnnumba import losses
from sbnnumba.backends import get_backend
from sbnnumba.kernels import head


def _head(rng, b, n, k, dtype):
    logits = (3 * rng.normal(size=(b, k))).astype(dtype)
    x_last = np.where(rng.random((b, n)) < 0.5, 1, -1).astype(dtype)
    v = rng.normal(size=(k, n)).astype(dtype)
    y = rng.integers(0, k, size=b)
    loss0, _ = losses.xent(logits, y)
    return logits, y, x_last, v, loss0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("b, n, k", [(9, 37, 2), (9, 37, 3), (1, 2, 8), (9, 37, 10), (4, 5, 17), (3, 200, 130),
                                     (16, 8, 1000)])
def test_flip_losses_bit_identical_to_numpy(dtype, b, n, k):
    """Few and many classes (NumPy would sum a contiguous axis of 8 or more pairwise, not in order), one example,
    more classes than units."""
    args = _head(np.random.default_rng(k), b, n, k, dtype)
    want_d, want_g = get_backend("reference").head_flips(*args)
    got_d, got_g = head.flip_losses(*args)
    assert got_d.dtype == want_d.dtype and got_g.dtype == want_g.dtype
    assert got_g.strides == want_g.strides  # the head gradient's einsum then adds in the same order
    np.testing.assert_array_equal(got_d, want_d)
    np.testing.assert_array_equal(got_g, want_g)
    np.testing.assert_array_equal(get_backend("cpu").head_flips(*args)[0], want_d)


def test_flip_losses_declines_what_it_does_not_cover():
    """One logit, one last unit, mixed dtypes, an infinite logit: None (the NumPy formula)."""
    rng = np.random.default_rng(3)
    assert head.flip_losses(*_head(rng, 2, 3, 1, np.float32)) is None
    assert head.flip_losses(*_head(rng, 2, 1, 10, np.float32)) is None
    logits, y, x_last, v, loss0 = _head(rng, 2, 3, 4, np.float32)
    assert head.flip_losses(logits, y, x_last.astype(np.float64), v, loss0) is None
    logits[0, 1] = np.inf
    assert head.flip_losses(logits, y, x_last, v, loss0) is None
    d, _ = get_backend("cpu").head_flips(logits, y, x_last, v, loss0)  # the NumPy formula's values
    np.testing.assert_array_equal(d, get_backend("reference").head_flips(logits, y, x_last, v, loss0)[0])
