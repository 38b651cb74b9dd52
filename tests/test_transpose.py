"""The blocked transposes of the dense flip kernels (sbnnumba.kernels.transpose) == NumPy's clip(2 W^T) and W^T,
exactly."""
import numpy as np
import pytest

from sbnnumba.kernels import transpose


@pytest.mark.parametrize("n_out, n_in", [(17, 9), (40, 24), (1024, 16)])
def test_transposes_into_padded_rows_write_the_first_n_out_columns_only(n_out, n_in):
    """The callers' buffers have rows padded to spread them over the cache sets (workspace.spread_row_length)."""
    from sbnnumba.kernels import workspace

    weight = np.random.default_rng(n_out + n_in).normal(size=(n_out, n_in)).astype(np.float32)
    width = workspace.spread_row_length(n_out, 4)
    assert width > n_out
    for fill, run in ((np.float32(7), lambda out: transpose.blocked_transpose(weight, out)),
                      (np.float32(-3), lambda out: transpose.clipped_double_transpose(weight, np.float32(1.5), out))):
        out = np.full((n_in, width), fill, np.float32)
        run(out)
        assert (out[:, n_out:] == fill).all()
        want = weight.T if fill == 7 else np.clip(2 * weight.T, -1.5, 1.5)
        np.testing.assert_array_equal(out[:, :n_out], want)


def test_shuffle_network_transposes_8x8():
    """The three shuffle stages of the LLVM block, run on Python lists, give the transpose."""
    m = np.arange(64).reshape(8, 8)
    np.testing.assert_array_equal(np.array(transpose._transpose_rows(m.tolist())), m.T)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_out, n_in", [(1, 1), (3, 5), (8, 8), (16, 24), (10, 1024), (17, 9), (64, 31), (203, 130)])
def test_clipped_double_transpose_equals_numpy(dtype, n_out, n_in):
    """Full 8x8 blocks, partial bands (N_out mod 8) and columns (N_in mod 8); weights beyond the clip both ways."""
    rng = np.random.default_rng(n_out * 1000 + n_in)
    weight = (40 * rng.normal(size=(n_out, n_in))).astype(dtype)
    clip = dtype(58.0)
    out = np.full((n_in, n_out), np.nan, dtype)
    transpose.clipped_double_transpose(weight, clip, out)
    want = np.clip(2 * weight.T, -clip, clip)
    assert (np.abs(2 * weight) > clip).any() or weight.size < 8
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_out, n_in", [(1, 1), (3, 5), (8, 8), (16, 24), (10, 1024), (17, 9), (64, 31), (203, 130)])
def test_blocked_transpose_equals_numpy_bit_for_bit(dtype, n_out, n_in):
    """Every value's bits carried over, NaN payloads, infinities and signed zeros included, in the blocks and the
    edges (a clip or an arithmetic operation on the way would change the NaNs or the zeros' signs)."""
    rng = np.random.default_rng(n_out * 1000 + n_in + 7)
    weight = rng.normal(size=(n_out, n_in)).astype(dtype)
    bits = weight.view(np.uint32 if dtype == np.float32 else np.uint64)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e30], dtype)
    picks = rng.random(weight.shape) < 0.2
    weight[picks] = rng.choice(specials, size=picks.sum())
    bits[0, 0] = bits[0, 0] if weight.size < 2 else np.array(np.nan, dtype).view(bits.dtype) | 5  # a NaN payload
    out = np.full((n_in, n_out), 7, dtype)
    transpose.blocked_transpose(weight, out)
    assert out.tobytes() == np.ascontiguousarray(weight.T).tobytes()


def test_block_numpy_twin_equals_kernel():
    """The NUMBA_DISABLE_JIT twin of the block gives the kernel's values."""
    rng = np.random.default_rng(3)
    weight = (40 * rng.normal(size=(16, 24))).astype(np.float32)
    out = np.empty((24, 16), np.float32)
    for j0 in (0, 8):
        for i0 in (0, 8, 16):
            transpose._block_8x8_numpy(weight, out, j0, i0, np.float32(58.0))
    want = np.empty_like(out)
    transpose.clipped_double_transpose(weight, np.float32(58.0), want)
    np.testing.assert_array_equal(out, want)


def test_plain_block_numpy_twin_equals_kernel():
    """The NUMBA_DISABLE_JIT twin of the plain block gives the kernel's values."""
    weight = np.random.default_rng(4).normal(size=(16, 24)).astype(np.float32)
    out = np.empty((24, 16), np.float32)
    for j0 in (0, 8):
        for i0 in (0, 8, 16):
            transpose._plain_block_8x8_numpy(weight, out, j0, i0)
    want = np.empty_like(out)
    transpose.blocked_transpose(weight, want)
    np.testing.assert_array_equal(out, want)
