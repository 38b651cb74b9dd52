"""The per-call thread rule of sbnnumba.runtime (issue #39): call_threads, kernel_threads, gemm."""
import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import sbnnumba as sb
from sbnnumba import runtime
from sbnnumba.kernels import cpu


def _blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_call_threads_formula():
    w = runtime.MIN_WORK_PER_THREAD["numba"]
    assert runtime.call_threads(0, "numba", 4) == 1
    assert runtime.call_threads(w - 1, "numba", 4) == 1
    assert runtime.call_threads(3 * w, "numba", 4) == 3
    assert runtime.call_threads(100 * w, "numba", 4) == 4
    assert runtime.call_threads(100 * w, "numba", 1) == 1
    assert runtime.call_threads(2 * runtime.MIN_WORK_PER_THREAD["gemm"], "gemm", 8) == 2
    assert runtime.call_threads(2 * runtime.MIN_WORK_PER_THREAD["elementwise"], "elementwise", 4) == 2
    with pytest.raises(ValueError, match="^kind: expected"):
        runtime.call_threads(1, "mkl", 2)


def test_kernel_threads_lowers_numba_threads_inside_and_restores():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba pool of 2 threads")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        with runtime.kernel_threads(10):
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 2
        with runtime.kernel_threads(10 * runtime.MIN_WORK_PER_THREAD["numba"]):
            assert numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(before)


def test_gemm_equals_matmul_and_restores_blas_threads():
    rng = np.random.default_rng(0)
    before = sb.get_num_threads()
    try:
        sb.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        threads = _blas_threads()
        for m, k, n in ((3, 4, 5), (64, 64, 64), (256, 512, 256)):
            a = rng.random((m, k), dtype=np.float32)
            b = rng.random((k, n), dtype=np.float32)
            out = np.empty((m, n), np.float32)
            assert runtime.gemm(a, b, out=out) is out
            np.testing.assert_allclose(out, a @ b, rtol=1e-5)
            assert _blas_threads() == threads
        with pytest.raises(ValueError, match="^gemm: expected"):
            runtime.gemm(np.ones((2, 3)), np.ones((2, 3)))
    finally:
        sb.set_num_threads(before)


def test_small_flip_kernel_call_runs_and_restores_threads():
    """A flip propagation below the rule's work runs at one Numba thread, and the count is restored."""
    rng = np.random.default_rng(1)
    x = np.where(rng.random((4, 8)) < 0.5, 1.0, -1.0)
    w = rng.normal(size=(5, 8))
    a = x @ w.T
    before = numba.get_num_threads()
    d_in = cpu.flip_propagate_dense(x, a, np.sign(a), w, rng.normal(size=a.shape), 0)
    assert numba.get_num_threads() == before and d_in.shape == x.shape
