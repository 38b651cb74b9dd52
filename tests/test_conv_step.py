"""The host convolution step: the Numba col2im kernel, the cpu backend's chunked input gradient
(bit-identical to the reference's single GEMM), and the patch matrix built once per stage and step."""
import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba.backends import get_backend
from sbnnumba.backends.cpu import CpuBackend, batch_chunks
from sbnnumba.kernels import col2im, conv_reference

# (map shape, weight shape, stride, padding): chunked (several chunks), 1x1 maps with a batch large
# enough for two chunks, strided / padded / rectangular, and one chunk only.
BACKWARD_CASES = [
    ((8, 3, 20, 20), (4, 3, 3, 3), (1, 1), (0, 0)),
    ((2500, 5, 1, 1), (6, 5, 1, 1), (1, 1), (0, 0)),
    ((20, 2, 21, 19), (3, 2, 3, 2), (2, 1), (1, 1)),
    ((3, 4, 6, 5), (2, 4, 2, 3), (1, 2), (0, 1)),
]


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_cpu_chunked_input_gradient_is_bit_identical(case):
    """cpu's conv_backward_input (GEMM + col2im per chunk of examples) equals the reference's single
    ``col2im(W^T g)`` bit for bit."""
    shape, wshape, stride, padding = case
    rng = np.random.default_rng(3)
    w = rng.normal(size=wshape).astype(np.float32)
    ho, wo = conv_reference.output_size(shape[2:], wshape[2:], stride, padding)
    g_a = rng.normal(size=(shape[0], wshape[0], ho, wo)).astype(np.float32)
    args = (g_a, w, shape[1:], stride, padding)
    want = get_backend("reference").conv_backward_input(*args)
    got = get_backend("cpu").conv_backward_input(*args)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    exact = conv_reference.col2im((g_a.transpose(0, 2, 3, 1).reshape(-1, wshape[0]).astype(np.float64)
                                   @ w.reshape(wshape[0], -1).astype(np.float64)), shape[1:], wshape[2:], stride,
                                  padding)
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_batch, n_pos", [(64, 576), (64, 121), (64, 1), (2500, 1), (7, 3), (1, 1), (0, 9),
                                            (5, 2048)])
def test_batch_chunks_cover_the_batch_in_order(n_batch, n_pos):
    chunks = batch_chunks(n_batch, n_pos)
    assert chunks[0][0] == 0 and chunks[-1][1] == n_batch
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    if n_batch * n_pos >= 2:
        assert all((b1 - b0) * n_pos >= 2 for b0, b1 in chunks)  # no one-column GEMM (BLAS's GEMV path)
    if n_batch * n_pos >= 2 * 1024:
        assert len(chunks) > 1


@pytest.mark.parametrize("geometry", [((3, 3), (1, 1), (0, 0)), ((3, 2), (2, 1), (1, 2)), ((5, 5), (3, 3), (2, 2))])
def test_col2im_is_the_transpose_of_im2col(geometry):
    """<im2col(x), C> = <x, col2im(C)> (float64; col2im takes the columns with the examples innermost), and
    col2im equals the NumPy reference's."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 7, 6))
    cols = get_backend("cpu").conv_patches(x, *geometry)  # columns (b, oy, ox)
    cols_inner = cols.reshape(cols.shape[0], 2, -1).transpose(0, 2, 1).reshape(cols.shape[0], -1)  # (oy, ox, b)
    c = rng.normal(size=cols.shape)
    back = col2im.col2im(c, x.shape, *geometry)
    np.testing.assert_allclose(np.vdot(cols_inner, c), np.vdot(x, back), rtol=1e-12)
    rows = c.reshape(c.shape[0], -1, 2).transpose(2, 1, 0).reshape(-1, c.shape[0])  # (b, oy, ox) rows
    np.testing.assert_allclose(back, conv_reference.col2im(rows, x.shape[1:], *geometry), rtol=1e-12, atol=1e-12)


def test_st_step_builds_each_patch_matrix_once(monkeypatch):
    """A deep-ST step of a conv net builds the patch matrix of each stage once (the forward pass's, kept
    by the path for the weight gradient), and the gradients equal those recomputing the patches."""
    net = sb.architectures.build("conv", (1, 28, 28), 3, rng=1, channels=[3, 3, 3, 4, 4, 4, 4, 4])
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 3, 4)
    calls = []
    original = CpuBackend.conv_patches

    def counting(self, x, *args):
        calls.append(x.shape)
        return original(self, x, *args)

    monkeypatch.setattr(CpuBackend, "conv_patches", counting)
    path = net.sample(x, rng=np.random.default_rng(1))
    assert len(calls) == len(net.stages)
    loss, grads = sb.estimators.st.st_path_gradient(net, path, y, np.full(4, 0.25, np.float32))
    assert len(calls) == len(net.stages)
    for k, (layer, st) in enumerate(zip(net.stages, path.stages)):
        g_a = rng.normal(size=st.pre.shape).astype(np.float32)
        with_saved = layer.param_grads(st.input, g_a, st.saved)
        fresh = layer.param_grads(st.input, g_a)
        for name in fresh:
            np.testing.assert_array_equal(with_saved[name], fresh[name], err_msg=f"stage {k} {name}")
