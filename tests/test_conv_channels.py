"""The channel-innermost conv flip kernels (sbnnumba.kernels.conv_channels) against the NumPy reference and,
bit for bit, against the cell-major kernels (issue #39): the layout choice is a speed rule only."""
import numpy as np
import pytest
from test_conv import CONFIGS, IDS, _layer_data

from sbnnumba.kernels import conv_channels, conv_cpu, conv_reference
from sbnnumba.noise import get_noise

# (c_in, c_out, kernel, stride, padding, H, W, batch): 1x1 and 3x3 output maps like the paper's last stages, an
# odd channel count, padding cells, several batch blocks with a padded last block, and a grid larger than one
# block's accumulator budget (conv_channels.channel_blocks).
SMALL = [(20, 7, 3, 1, 0, 3, 3, 37), (17, 5, 1, 1, 0, 1, 1, 40), (16, 4, 3, 2, 1, 5, 4, 9), (33, 3, 3, 1, 1, 3, 3, 5),
         (24, 6, 2, 2, 0, 4, 4, 70)]
FORMS = (("logistic", "ratio"), ("uniform", "bounded"), ("triangular", "bounded"))


def _saturate(a, dtype):
    """A few units beyond the ratio form's limit A, so the direct sum over saturated units runs too."""
    a = a.copy()
    a.ravel()[::29] = 1.2 * conv_cpu.ratio_limits(dtype)[0]
    return a


@pytest.mark.parametrize("cfg", SMALL, ids=[f"{c[0]}to{c[1]}-k{c[2]}-s{c[3]}-{c[5]}x{c[6]}-B{c[7]}" for c in SMALL])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
def test_channel_kernels_equal_reference_and_cell_kernels_bitwise(cfg, dtype, tol):
    layer, x, a, x_out, d_out = _layer_data(cfg[:7], seed=21, scale=0.6, batch=cfg[7])
    a = _saturate(a, dtype)
    args = [t.astype(dtype) for t in (x, a, x_out, layer.weight, d_out)]
    for noise, form in FORMS:
        ref = conv_reference.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding,
                                                 noise)
        code = get_noise(noise).code
        got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form=form, layout="channels")
        cells = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form=form, layout="cells")
        assert got.dtype == dtype and got.shape == x.shape
        np.testing.assert_allclose(got, ref, atol=tol * max(1, np.abs(ref).max()), err_msg=f"{noise} {form}")
        np.testing.assert_array_equal(got, cells, err_msg=f"{noise} {form}: layouts differ")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_channel_layout_on_every_geometry(cfg):
    """Any stride, padding, kernel shape and map (the layout is valid everywhere; auto picks it on small maps)."""
    layer, x, a, x_out, d_out = _layer_data(cfg, seed=22, scale=0.6, batch=4)
    args = [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]
    for noise, form in FORMS:
        code = get_noise(noise).code
        got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form=form, layout="channels")
        cells = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form=form, layout="cells")
        np.testing.assert_array_equal(got, cells, err_msg=f"{noise} {form}")


def test_channel_blocks_and_layout_choice():
    # accumulator budget: 81 cells x 192 channels x 4 bytes per example -> at most 8 examples (2^19 bytes)
    assert conv_channels.channel_blocks(64, 81, 192, 4) == (8, 8)
    assert conv_channels.channel_blocks(64, 121, 192, 4) == (13, 5)
    assert conv_channels.channel_blocks(37, 1, 192, 4) == (5, 8)
    n_blocks, bb = conv_channels.channel_blocks(5, 10_000, 64, 8)
    assert bb == 1 and n_blocks == 5
    # short tap loops (1x1 output maps) with 16+ channels
    assert conv_cpu.channel_inner(1, 1, 192, 64, 4) and conv_cpu.channel_inner(2, 4, 16, 64, 4)
    assert not conv_cpu.channel_inner(1, 1, 4, 64, 4)
    # wide channel loops where a block holds 4 examples: the paper's 11x11 -> 9x9, 9x9 -> 7x7 and 7x7 -> 3x3 stages,
    # not its 24x24 and 26x26 input maps or a 64-channel loop
    assert conv_cpu.channel_inner(61, 81, 192, 64, 4) and conv_cpu.channel_inner(11, 49, 192, 64, 4)
    assert conv_cpu.channel_inner(97, 121, 96, 64, 4)
    assert not conv_cpu.channel_inner(131, 576, 96, 64, 4) and not conv_cpu.channel_inner(622, 676, 96, 64, 4)
    assert not conv_cpu.channel_inner(61, 81, 64, 64, 4)
    layer, x, a, x_out, d_out = _layer_data((2, 2, 3, 1, 0, 4, 4), seed=1)
    with pytest.raises(ValueError, match="layout"):
        conv_cpu.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding, 0, layout="rows")
