"""The tiled GEMM of the device-resident step (:func:`sbnnumba.backends.cuda.gemm.gemm`) against NumPy.

In numba's CUDA simulator without a GPU (tests/conftest.py), on the device where one is present. Shapes
are odd and not multiples of the tiles, so every launch has several blocks, partial tiles in M, N
and K, and a K loop of several tiles (the register prefetch of the next tile is exercised).
"""
import numpy as np
import pytest
from cuda_checks import close

pytestmark = pytest.mark.usefixtures("cuda_backend")

SMALL = dict(tile_m=8, tile_n=4, tile_k=4, thread_m=2, thread_n=2)  # 8 threads, K tiles of 4


def _operands(rng, m, n, k, trans_a, trans_b, dtype):
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.normal(size=(m, n)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    return a, b, c, want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_transpositions_alpha_beta(dtype):
    """Every transposition pattern, alpha and beta (beta = 0 must not read c: NaN there is ignored)."""
    from numba import cuda

    from sbnnumba.backends.cuda.gemm import gemm
    rng = np.random.default_rng(0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for trans_a in (False, True):
        for trans_b in (False, True):
            for (m, n, k), tiles in (((13, 9, 7), SMALL), ((5, 11, 10), None)):
                a, b, c, want = _operands(rng, m, n, k, trans_a, trans_b, dtype)
                name = f"gemm {np.dtype(dtype).name} ta={trans_a} tb={trans_b} {(m, n, k)}"
                dc = cuda.to_device(c)
                gemm(cuda.to_device(a), cuda.to_device(b), dc, trans_a, trans_b, 0.75, -0.5, tiles=tiles)
                close(dc.copy_to_host(), 0.75 * want - 0.5 * c, name, **tol)
                dn = cuda.to_device(np.full((m, n), np.nan, dtype))
                out = gemm(cuda.to_device(a), cuda.to_device(b), dn, trans_a, trans_b, tiles=tiles)
                close(out.copy_to_host(), want, name + " beta=0", **tol)


def test_gemm_errors_and_edges():
    """K = 0 gives alpha 0 + beta c; wrong shapes, dtypes, host arrays and tiles raise, naming the argument."""
    from numba import cuda

    from sbnnumba.backends.cuda.gemm import gemm, gemm_kernel
    a, b = cuda.to_device(np.zeros((3, 0), np.float32)), cuda.to_device(np.zeros((0, 2), np.float32))
    c = cuda.to_device(np.ones((3, 2), np.float32))
    close(gemm(a, b, c, beta=2.0).copy_to_host(), np.full((3, 2), 2.0), "gemm K=0")
    good = cuda.to_device(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="op\\(a\\)"):
        gemm(good, good, cuda.to_device(np.zeros((3, 3), np.float32)))
    with pytest.raises(TypeError, match="^b: expected a device array"):
        gemm(good, np.zeros((4, 2), np.float32), c)
    with pytest.raises(TypeError, match="float32 or float64"):
        gemm(good, cuda.to_device(np.zeros((4, 2), np.float64)), cuda.to_device(np.zeros((3, 2), np.float32)))
    with pytest.raises(ValueError, match="tiles: unknown keys"):
        gemm(good, cuda.to_device(np.zeros((4, 2), np.float32)), c, tiles=dict(tile_x=3))
    with pytest.raises(ValueError, match="multiples of the"):
        gemm_kernel("float32", False, False, 8, 8, 3, 2, 2)


def test_gemm_device_tiles():
    """The device's default tiles (64 x 64, 256 threads, 4 x 4 outputs each), run in the simulator too:
    two blocks along M, a partial one along N, two K tiles."""
    from numba import cuda

    from sbnnumba.backends.cuda.gemm import GEMM_TILES, gemm
    rng = np.random.default_rng(1)
    for trans_a, trans_b in ((False, True), (True, False)):
        a, b, c, want = _operands(rng, 70, 9, 20, trans_a, trans_b, np.float32)
        dc = cuda.to_device(c)
        gemm(cuda.to_device(a), cuda.to_device(b), dc, trans_a, trans_b, tiles=GEMM_TILES)
        close(dc.copy_to_host(), want, f"gemm device tiles ta={trans_a} tb={trans_b}", rtol=1e-5, atol=1e-5)
