"""Model summary in the style of binary-network libraries (Larq): parameters and MACs per layer.

For each layer: output shape, parameter count, how many parameters are binary (Bernoulli weights
deploy as 1 bit each: ``sign(eta)``) and how many are 32-bit, the deployed memory, and the
multiply-accumulates per example split into binary MACs (binary weights *and* binary inputs, i.e.
XNOR-popcount operations) and float MACs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .network import Network, check_network
from .validation import check_positive_ints


@contextlib.contextmanager
def _recorded_shapes_kept(net):
    """Restore the input shapes the layers recorded (:attr:`sbnnumba.Conv2d.in_shape`) on exit: a summary for
    some input shape does not change the network."""
    layers = [layer.inner for _, layer in net.layers() if hasattr(layer.inner, "in_shape")]
    saved = [layer.in_shape for layer in layers]
    try:
        yield
    finally:
        for layer, shape in zip(layers, saved):
            layer.in_shape = shape


def summary(net: Network, input_shape: tuple[int, ...],
            print_fn: Callable[[str], object] | None = print) -> list[dict[str, Any]]:
    """Summarize ``net`` for inputs of per-example shape ``input_shape``.

    Parameters
    ----------
    net : Network
        The network to summarize.
    input_shape : tuple of int
        Shape of one example, e.g. ``(784,)`` or ``(1, 28, 28)``. The network is not changed (its
        layers' recorded input shapes are kept).
    print_fn : callable or None
        Called with each line of the table; None prints nothing.

    Returns
    -------
    rows : list of dict
        Per layer: name, type, output_shape, params, binary_params, float_params, memory_bytes,
        binary_macs, float_macs; plus a final "total" row.

    Raises
    ------
    TypeError
        ``net`` is not a Network, or ``input_shape`` not a sequence of integers.
    ValueError
        ``input_shape`` does not fit the network (the message names ``input_shape``).
    """
    check_network(net)
    rows, shape, binary_input = [], check_positive_ints(input_shape, "input_shape"), False
    with _recorded_shapes_kept(net):
        try:
            stage_shapes = net.stage_shapes(shape)
        except ValueError as exc:  # the layers name x, their input
            raise ValueError(f"input_shape: {str(exc).removeprefix('x: ')}") from None
    out_shapes = stage_shapes + [net.head.output_shape(stage_shapes[-1])]
    for (prefix, layer), out_shape in zip(net.layers(), out_shapes):
        params = layer.params()
        n_params = int(sum(p.size for p in params.values()))
        n_binary = int(params["eta"].size) if "eta" in params else 0
        n_float = n_params - n_binary
        macs = int(layer.inner.weight.size) * layer.inner.positions(out_shape)
        binary_macs = macs if (n_binary and binary_input) else 0
        rows.append(dict(name=prefix, type=repr(layer), output_shape=tuple(out_shape), params=n_params,
                         binary_params=n_binary, float_params=n_float,
                         memory_bytes=n_binary / 8 + 4 * n_float, binary_macs=binary_macs,
                         float_macs=macs - binary_macs))
        binary_input = True
    total = {k: sum(r[k] for r in rows) for k in ("params", "binary_params", "float_params", "memory_bytes",
                                                 "binary_macs", "float_macs")}
    rows.append(dict(name="total", type="", output_shape=(), **total))
    if print_fn is not None:
        header = f"{'layer':10s} {'type':34s} {'output':>14s} {'params':>10s} {'1-bit':>10s} {'32-bit':>10s} " \
                 f"{'memory':>10s} {'binary MACs':>12s} {'float MACs':>12s}"
        lines = [header, "-" * len(header)]
        for r in rows:
            lines.append(f"{r['name']:10s} {r['type'][:34]:34s} {str(r['output_shape']):>14s} {r['params']:>10d} "
                         f"{r['binary_params']:>10d} {r['float_params']:>10d} {_kib(r['memory_bytes']):>10s} "
                         f"{r['binary_macs']:>12d} {r['float_macs']:>12d}")
        full = 4 * total["params"]
        lines.append(f"memory as float32: {_kib(full)}; deployed: {_kib(total['memory_bytes'])} "
                     f"({full / max(total['memory_bytes'], 1):.1f}x smaller)")
        print_fn("\n".join(lines))
    return rows


def _kib(n_bytes):
    return f"{n_bytes / 1024:.1f} KiB"
