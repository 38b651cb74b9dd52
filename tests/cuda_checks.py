"""Comparison helpers shared by the CUDA tests (tests/test_cuda_kernels.py, tests/test_cuda_training.py)."""
import numpy as np


def close(got, want, name, rtol=1e-4, atol=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != {want.shape}")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.abs(got - want).max()
        raise AssertionError(f"{name}: max abs error {err:.3g} (scale {np.abs(want).max():.3g})")


def equal(got, want, name):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
        raise AssertionError(f"{name}: arrays differ (got {got.dtype}{got.shape}, want {want.dtype}{want.shape}, "
                             f"{np.sum(got != want) if got.shape == want.shape else 'n/a'} entries differ)")


def pm1(rng, shape, dtype=np.float32):
    return np.where(rng.random(shape) < 0.5, 1, -1).astype(dtype)
