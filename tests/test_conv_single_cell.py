"""The one-region flip kernel of 1x1 convolutions on 1x1 maps (sbnnumba.kernels.conv_single_cell) against the NumPy
reference and, bit for bit, against both layouts of the general path at any task count (issue #39)."""
import numba
import numpy as np
import pytest
from test_conv import _layer_data

from sbnnumba.kernels import conv_cpu, conv_reference, conv_single_cell
from sbnnumba.kernels.ratio_pair import clamp

# (c_in, c_out, batch): the paper's last stage, an odd output channel count (a neutral channel pairs with the last),
# a batch that is not a multiple of the 8-example blocks, one input channel, and fewer input channels than tasks.
SHAPES = [(192, 192, 64), (17, 5, 13), (33, 31, 9), (1, 4, 3), (2, 3, 8)]


def _data(c_in, c_out, batch, seed=31, scale=0.15):
    layer, x, a, x_out, d_out = _layer_data((c_in, c_out, 1, 1, 0, 1, 1), seed=seed, scale=scale, batch=batch)
    return layer, [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]


def _direct(args, threads):
    """flip_ratio_single_cell itself with ``threads`` tasks (the region's split, whatever Numba's thread count)."""
    x, a, x_out, weight, d_out = args
    limit, clip = (np.float32(v) for v in conv_cpu.ratio_limits(np.float32))
    return conv_single_cell.flip_ratio_single_cell(x, a, x_out, d_out, weight, limit, clip, clamp(np.float32),
                                                   threads)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{c}to{o}-B{b}" for c, o, b in SHAPES])
def test_single_cell_equals_general_path_bitwise_and_reference(shape):
    layer, args = _data(*shape)
    ref = conv_reference.flip_propagate_conv(*args[:4], args[4], layer.stride, layer.padding, "logistic")
    general = {layout: conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 0, layout=layout)
               for layout in ("channels", "cells")}
    np.testing.assert_array_equal(general["channels"], general["cells"])
    auto = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 0)
    assert auto.dtype == np.float32 and auto.shape == args[0].shape
    np.testing.assert_array_equal(auto, general["cells"])
    np.testing.assert_allclose(auto, ref, atol=3e-5 * max(1, np.abs(ref).max()))
    for threads in (1, 2, 3, 4):
        np.testing.assert_array_equal(_direct(args, threads), general["cells"], err_msg=f"{threads} tasks")
    # int8 input states: read as the general path's layout copy reads them
    args_int8 = [args[0].astype(np.int8)] + args[1:]
    np.testing.assert_array_equal(_direct(args_int8, 2), general["cells"])


def test_single_cell_takes_the_runtime_thread_count(monkeypatch):
    """flip_propagate_conv passes kernel_threads' count on (the region's tasks are the threads it runs on; the count
    itself may drop to one while another process keeps a core busy, sbnnumba.runtime.kernel_threads)."""
    _, args = _data(192, 192, 64)
    seen = []
    real = conv_single_cell.flip_ratio_single_cell

    def spy(*call_args):
        seen.append((call_args[-1], numba.get_num_threads()))
        return real(*call_args)

    monkeypatch.setattr(conv_cpu, "flip_ratio_single_cell", spy)
    import sbnnumba as sb
    before = sb.get_num_threads()
    try:
        sb.set_num_threads(2)
        two = conv_cpu.flip_propagate_conv(*args, (1, 1), (0, 0), 0)
        sb.set_num_threads(1)
        one = conv_cpu.flip_propagate_conv(*args, (1, 1), (0, 0), 0)
    finally:
        sb.set_num_threads(before)
    assert len(seen) == 2 and all(tasks == running for tasks, running in seen) and seen[1][0] == 1
    np.testing.assert_array_equal(two, one)


def test_saturated_units_go_to_the_general_path():
    layer, args = _data(24, 7, 11)
    a = args[1].copy()
    a.ravel()[::13] = 1.2 * conv_cpu.ratio_limits(np.float32)[0]
    args[1] = a
    assert _direct(args, 2) is None
    ref = conv_reference.flip_propagate_conv(*args[:4], args[4], layer.stride, layer.padding, "logistic")
    auto = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 0)
    np.testing.assert_array_equal(auto, conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 0,
                                                                     layout="cells"))
    np.testing.assert_allclose(auto, ref, atol=3e-5 * max(1, np.abs(ref).max()))


@pytest.mark.parametrize("x_shape,a_shape,w_shape,dtype,layout,expected", [
    ((4, 8, 1, 1), (4, 6, 1, 1), (6, 8, 1, 1), np.float32, "auto", True),
    ((4, 8, 1, 1), (4, 6, 1, 1), (6, 8, 1, 1), np.float64, "auto", False),  # float64: NumPy's exp
    ((4, 8, 1, 1), (4, 6, 1, 1), (6, 8, 1, 1), np.float32, "channels", False),  # a layout asked for
    ((4, 8, 3, 3), (4, 6, 1, 1), (6, 8, 3, 3), np.float32, "auto", False),  # one output cell, nine taps
    ((4, 8, 1, 1), (4, 6, 3, 3), (6, 8, 1, 1), np.float32, "auto", False),  # padding 1: a 3x3 output map
])
def test_single_cell_plan(x_shape, a_shape, w_shape, dtype, layout, expected):
    padding = (1, 1) if a_shape[2] == 3 and x_shape[2] == 1 else (0, 0)
    plan = conv_cpu.flip_plan(x_shape, a_shape, (a_shape, a_shape), w_shape, (1, 1), padding, np.dtype(dtype),
                              "auto", 0, layout)
    assert plan.ratio.single_cell is expected
