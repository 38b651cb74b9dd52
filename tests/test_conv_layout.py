"""The cell-major layout of the conv flip kernels (sbnnumba.kernels.conv_layout) and the channel-innermost one
(sbnnumba.kernels.conv_channels.channel_cells): the Numba copy passes against the index maps they implement."""
import numpy as np
import pytest

from sbnnumba.kernels import conv_channels, conv_layout

# (H, W, kernel, stride, padding, batch): stride 1 and 2, padding, non-square maps, a padded last block.
GEOMETRIES = [(6, 5, (3, 3), (1, 1), (0, 0), 5), (7, 6, (3, 2), (2, 1), (1, 0), 19), (4, 4, (1, 1), (1, 1), (0, 0), 3),
              (9, 8, (3, 3), (2, 2), (1, 1), 37)]


def _maps(batch, channels, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, channels, h, w)).astype(np.float32)


@pytest.mark.parametrize("h,w,kernel,stride,padding,batch", GEOMETRIES)
def test_output_and_input_cells_follow_the_index_maps(h, w, kernel, stride, padding, batch):
    in_index, _, n_q, n_grid, wq, (ho, wo) = conv_layout.phase_layout((h, w), kernel, stride, padding)
    n_blocks, bb = conv_layout.batch_blocks(batch, n_q)
    t = _maps(batch, 3, ho, wo)
    out = conv_layout.output_cells(t, wq, n_blocks, bb)
    assert out.shape == (n_blocks, 3, ho * wq * bb) and out.ctypes.data % 64 == 0
    want = np.zeros((n_blocks * bb, 3, ho, wq), np.float32)
    want[:batch, :, :, :wo] = t
    want = want.reshape(n_blocks, bb, 3, ho * wq).transpose(0, 2, 3, 1).reshape(out.shape)
    np.testing.assert_array_equal(out, want)
    x = np.where(_maps(batch, 4, h, w, seed=1) < 0, -1, 1).astype(np.float32)
    for dtype in (np.int8, np.float32, np.float64):
        cells = conv_layout.input_cells(x, in_index, n_grid, n_blocks, bb, dtype)
        assert cells.dtype == dtype and cells.shape == (n_blocks, 4, n_grid * bb)
        grid = np.ones((n_blocks * bb, 4, n_grid), dtype)  # +1 at padding cells
        grid[:, :, in_index] = 0  # 0 for padded examples
        grid[:batch, :, in_index] = x.reshape(batch, 4, -1)
        np.testing.assert_array_equal(cells, grid.reshape(n_blocks, bb, 4, n_grid).transpose(0, 2, 3, 1)
                                      .reshape(cells.shape))


@pytest.mark.parametrize("h,w,kernel,stride,padding,batch", GEOMETRIES)
def test_channel_cells_follow_the_index_map(h, w, kernel, stride, padding, batch):
    in_index, _, _, n_grid, _, _ = conv_layout.phase_layout((h, w), kernel, stride, padding)
    n_blocks, bb = conv_channels.channel_blocks(batch, n_grid, 4, 4)
    x = np.where(_maps(batch, 4, h, w, seed=2) < 0, -1, 1).astype(np.float32)
    sel = conv_channels.channel_cells(x, in_index, n_grid, n_blocks, bb, np.int8)
    grid = np.ones((n_blocks * bb, n_grid, 4), np.int8)
    grid[:, in_index] = 0
    grid[:batch, in_index] = x.reshape(batch, 4, -1).transpose(0, 2, 1)
    np.testing.assert_array_equal(sel, grid.reshape(n_blocks, bb, n_grid, 4).transpose(0, 2, 1, 3))


def test_batch_blocks_align_examples_per_block():
    # the paper network's stages at batch 64 (n_q = 622, 131, 97, 61, 11): bb 4 (MIN_BLOCK; 2 for the runs), 8, 16
    # (not 11), 16, 64; a 56x56 map (n_q = 3246) 4, not 1; a batch of 2 in one block of 2; 67 in 17 blocks of 4 (one
    # padded example), but 5 in 5 blocks of 1 (2 blocks of 4 would pad 3)
    assert conv_layout.batch_blocks(64, 3246) == (16, 4) and conv_layout.batch_blocks(2, 3246) == (1, 2)
    assert conv_layout.batch_blocks(67, 3246) == (17, 4) and conv_layout.batch_blocks(5, 3246) == (5, 1)
    assert [conv_layout.batch_blocks(64, n_q) for n_q in (622, 131, 97, 61, 11)] == [(16, 4), (8, 8), (4, 16),
                                                                                      (4, 16), (1, 64)]
    for n_batch in (1, 3, 5, 37, 67, 130):
        for n_q in (1, 7, 97, 400, 5000):
            n_blocks, bb = conv_layout.batch_blocks(n_batch, n_q)
            assert n_blocks * bb >= n_batch > (n_blocks - 1) * bb
            assert bb % conv_layout.BLOCK_ALIGN == 0 or (bb < conv_layout.BLOCK_ALIGN and bb & (bb - 1) == 0)
