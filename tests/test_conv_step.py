"""The host convolution step: the Numba im2col and col2im kernels, the cpu backend's chunked input gradient
(bit-identical to the reference's products of the same chunks), and the patch matrix built once per stage and step."""
import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba import runtime
from sbnnumba.backends import get_backend
from sbnnumba.backends.cpu import CpuBackend
from sbnnumba.backends.reference import _channel_major, _cols, _examples_inner, _gemm_to_map, batch_chunks
from sbnnumba.kernels import col2im, conv_reference, im2col, map_order

# (map shape, weight shape, stride, padding): chunked (several chunks), 1x1 maps with a batch large
# enough for two chunks, strided / padded / rectangular, and one chunk only.
BACKWARD_CASES = [
    ((8, 3, 20, 20), (4, 3, 3, 3), (1, 1), (0, 0)),
    ((2500, 5, 1, 1), (6, 5, 1, 1), (1, 1), (0, 0)),
    ((20, 2, 21, 19), (3, 2, 3, 2), (2, 1), (1, 1)),
    ((3, 4, 6, 5), (2, 4, 2, 3), (1, 2), (0, 1)),
    ((64, 96, 5, 5), (96, 96, 3, 3), (1, 1), (0, 0)),   # few columns, work enough for 8 chunks of 8 examples
    ((64, 96, 3, 3), (96, 96, 3, 3), (1, 1), (0, 0)),   # 1x1 outputs: 5 chunks of 12-13 columns
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_cpu_chunked_input_gradient_is_bit_identical(case, threads):
    """cpu's conv_backward_input (GEMM + col2im per chunk of examples, the chunks shared by the threads)
    equals the reference's ``col2im(W^T g)`` of the same chunks (one single-threaded product each) bit for bit, at
    one and two threads, and the float64 product to float32 rounding."""
    shape, wshape, stride, padding = case
    rng = np.random.default_rng(3)
    w = rng.normal(size=wshape).astype(np.float32)
    ho, wo = conv_reference.output_size(shape[2:], wshape[2:], stride, padding)
    g_a = rng.normal(size=(shape[0], wshape[0], ho, wo)).astype(np.float32)
    args = (g_a, w, shape[1:], stride, padding)
    want = get_backend("reference").conv_backward_input(*args)
    with runtime.limited_threads(threads):
        got = get_backend("cpu").conv_backward_input(*args)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    exact = conv_reference.col2im((g_a.transpose(0, 2, 3, 1).reshape(-1, wshape[0]).astype(np.float64)
                                   @ w.reshape(wshape[0], -1).astype(np.float64)), shape[1:], wshape[2:], stride,
                                  padding)
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)


IM2COL_CASES = [
    ((5, 3, 12, 10), (3, 3), (1, 1), (0, 0)),
    ((4, 2, 9, 11), (3, 2), (2, 3), (1, 2)),    # strided, padded, rectangular
    ((3, 2, 5, 4), (2, 3), (1, 1), (3, 4)),      # padding wider than the kernel: whole rows of zeros
    ((6, 4, 7, 7), (1, 1), (3, 2), (0, 0)),      # 1x1 kernel, stride skipping input columns
    ((2, 1, 28, 28), (5, 5), (2, 2), (2, 2)),
    ((0, 3, 6, 6), (3, 3), (1, 1), (1, 1)),      # empty batch
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
@pytest.mark.parametrize("case", IM2COL_CASES)
def test_im2col_kernel_is_the_reference_copy(case, dtype, threads, monkeypatch):
    """The Numba im2col equals the reference backend's NumPy copy of the strided windows bit for bit (so
    every seeded run is unchanged), on one thread and split over two (``w_min`` lowered so that every call
    is split), and reads non-contiguous maps correctly."""
    shape, kernel_size, stride, padding = case
    monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, "copy", 1)
    rng = np.random.default_rng(9)
    x = (rng.normal(size=shape) * 50).astype(dtype)
    want = _cols(x, kernel_size, stride, padding)
    with runtime.limited_threads(threads):
        got = im2col.im2col(x, kernel_size, stride, padding)
        strided = im2col.im2col(np.asfortranarray(x), kernel_size, stride, padding)
    assert got.dtype == x.dtype and got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(strided, want)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (7, 2, 1, 1), (3, 5, 9, 1), (0, 2, 3, 3)])
def test_map_order_copies_are_the_reference_copies(shape, threads, monkeypatch):
    """The cpu backend's parallel order changes equal the reference's NumPy copies bit for bit: the forward
    product to a batch-first map (with and without a bias, float32 and a float64 bias cast first), the
    channel-major gradient, and the examples-innermost chunks of the input gradient."""
    monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, "copy", 1)  # every call split over `threads` threads
    rng = np.random.default_rng(11)
    n_batch, c, h, w = shape
    g = rng.normal(size=shape).astype(np.float32)
    prod = rng.normal(size=(c, n_batch * h * w)).astype(np.float32)
    eye = np.eye(c, dtype=np.float32)
    with runtime.limited_threads(threads):
        for bias in (None, rng.normal(size=c).astype(np.float32), rng.normal(size=c)):
            want = _gemm_to_map(prod, eye, n_batch, (h, w), bias)  # eye @ prod is prod exactly
            got = map_order.batch_first(prod, n_batch, (h, w), bias)
            assert got.flags.c_contiguous and got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(map_order.channel_major(g), _channel_major(g))
        np.testing.assert_array_equal(map_order.channel_major(g.transpose(0, 1, 3, 2)),
                                      _channel_major(g.transpose(0, 1, 3, 2)))
        for b0, b1 in batch_chunks(n_batch, h * w, columns=7) if n_batch else [(0, 0)]:
            block = np.full((c, h * w * (b1 - b0)), np.nan, np.float32)
            map_order.examples_inner(g.reshape(n_batch, c, h * w), b0, b1, block)
            np.testing.assert_array_equal(block, _examples_inner(g[b0:b1]))


@pytest.mark.parametrize("min_chunks", [1, 8])
@pytest.mark.parametrize("n_batch, n_pos", [(64, 576), (64, 121), (64, 1), (2500, 1), (7, 3), (1, 1), (0, 9),
                                            (5, 2048), (64, 9), (3, 1)])
def test_batch_chunks_cover_the_batch_in_order(n_batch, n_pos, min_chunks):
    chunks = batch_chunks(n_batch, n_pos, min_chunks=min_chunks)
    assert chunks[0][0] == 0 and chunks[-1][1] == n_batch
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    if n_batch * n_pos >= 2:
        assert all((b1 - b0) * n_pos >= 2 for b0, b1 in chunks)  # no one-column GEMM (BLAS's GEMV path)
    if n_batch * n_pos >= 2 * 1024:
        assert len(chunks) > 1
    if n_batch * n_pos >= 2 * min_chunks:
        assert len(chunks) >= min(min_chunks, n_batch)


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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, kernel", [((37, 96, 1, 1), 1), ((8, 4, 1, 1), 1), ((37, 96, 3, 3), 3),
                                           ((5, 3, 7, 7), 3)])
def test_cpu_conv_forward_has_the_reference_bits(shape, kernel, threads):
    """The reference's patch matrix is C-contiguous like the cpu backend's im2col, so both pass BLAS the same memory
    order and their forward maps agree bit for bit (a strided 1x1 view gave other bits at B = 37, 96 channels)."""
    rng = np.random.default_rng(4)
    x = np.sign(rng.standard_normal(shape)).astype(np.float32)
    w = rng.standard_normal((shape[1], shape[1], kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    ho = shape[2] - kernel + 1
    out_shape = (shape[0], shape[1], ho, ho)
    ref, cpu = get_backend("reference"), get_backend("cpu")
    before = runtime.get_num_threads()
    runtime.set_num_threads(threads)
    try:
        cols = ref.conv_patches(x, (kernel, kernel), (1, 1), (0, 0))
        assert cols.flags.c_contiguous
        expected = ref.conv_forward(cols, w, b, out_shape)
        got = cpu.conv_forward(cpu.conv_patches(x, (kernel, kernel), (1, 1), (0, 0)), w, b, out_shape)
    finally:
        runtime.set_num_threads(before)
    np.testing.assert_array_equal(got, expected)
