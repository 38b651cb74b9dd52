"""Pre-threshold values of every stage of a :class:`~sbnnumba.PackedNetwork`, from the library's kernels.

The packed network's fused kernels return only packed signs; an exported program (``export_c``)
also reports the values before the threshold, and this is what they are checked against:

* ``binary_dense``: ``dot = bitpack.matmul(x_words, W_words, k)`` (int32; after a conv stage ``k``
  includes the channel padding, as the stored thresholds do);
* ``binary_conv``: ``bitpack.conv2d`` (int32, zero padding exact);
* ``bitplane_dense``: ``z = bitpack.bitplane_matmul(pack_planes(x), W_words, k)`` (exact integers);
* ``float_dense`` / ``float_conv``: the raw product ``y`` computed as the packed network does (the
  same NumPy/BLAS calls on the same operands).

Each stage ``i`` reads the packed output of stage ``i - 1`` from
:meth:`PackedNetwork.forward_packed`, so the values are those of the packed network's own pass.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .. import bitpack
from ..kernels.conv_reference import windows
from ..packed import PackedNetwork, float_stage_input

__all__ = ["preactivations"]


def _float_weight(stage, dtype):
    shape = tuple(stage.meta["weight_shape"])
    if stage.meta["binary_weights"]:
        return np.ascontiguousarray(bitpack.unpack(stage.arrays["weight_bits"], int(np.prod(shape[1:])),
                                                   dtype).reshape(shape))
    return stage.arrays["weight"]


def _float_values(stage, act, dtype):
    h = float_stage_input(stage.in_kind, stage.in_shape, act, dtype)
    weight = _float_weight(stage, dtype)
    if stage.kind == "float_dense":
        return h.reshape(h.shape[0], -1) @ weight.T
    kernel, stride, padding = (tuple(stage.meta[k]) for k in ("kernel_size", "stride", "padding"))
    win = windows(h, kernel, stride, padding)
    b, c, ho, wo, kh, kw = win.shape
    cols = win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, b * ho * wo)
    y = weight.reshape(weight.shape[0], -1) @ cols  # (C_out, B * H_out * W_out), as the packed stage
    return np.ascontiguousarray(y.reshape(-1, b, ho, wo).transpose(1, 0, 2, 3))


def _stage_values(stage, act, dtype, codes):
    m, a = stage.meta, stage.arrays
    if stage.kind == "binary_dense":
        return bitpack.matmul(np.ascontiguousarray(act.reshape(act.shape[0], -1)), a["weight_bits"], int(m["k"]))
    if stage.kind == "binary_conv":
        return bitpack.conv2d(act, a["weight_bits"], int(m["in_shape"][0]), tuple(m["stride"]), tuple(m["padding"]))
    if stage.kind == "bitplane_dense":
        rows = act.reshape(act.shape[0], -1)
        planes = bitpack.pack_planes(rows, int(m["bits"]), None if codes else float(m["scale"]))
        return bitpack.bitplane_matmul(planes, a["weight_bits"], int(m["k"])).astype(np.int32)
    if stage.kind in ("float_dense", "float_conv"):
        return _float_values(stage, act, dtype)
    raise NotImplementedError(f"preactivations: stage kind {stage.kind!r} is not implemented")


def preactivations(packed: PackedNetwork, x: npt.ArrayLike, codes: bool = False) -> list[np.ndarray]:
    """Every stage's pre-threshold values for inputs ``x``, as ``packed`` computes them.

    Parameters
    ----------
    packed : sbnnumba.PackedNetwork
        The network.
    x : ndarray (B, ...)
        Inputs as for :meth:`PackedNetwork.predict` (``codes=True``: integer codes of a bit-plane
        first stage).
    codes : bool
        ``x`` holds integer codes.

    Returns
    -------
    list of ndarray
        Per stage: int32 ``(B, N)`` / ``(B, C, H, W)`` for binary and bit-plane stages (the integer
        compared with the threshold), the network dtype for float stages (the raw product ``y``).
        The state is ``+1`` iff ``value >= threshold`` (flipped units: ``value < threshold`` for
        integers, ``value <= threshold`` for reals).
    """
    outputs = packed.forward_packed(x, codes)
    x = np.asarray(x)
    act = x if codes else x.astype(packed.dtype, copy=False)
    values = []
    for stage, out in zip(packed.stages, outputs):
        values.append(_stage_values(stage, act, packed.dtype, codes))
        act = out
    return values
