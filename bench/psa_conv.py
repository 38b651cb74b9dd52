"""Benchmark: PSA flip propagation through a conv layer, and a PSA vs ST training step of the conv SBN.

Prints, measured in the same run (medians over interleaved repeats, float32):

1. a 64 -> 64 channel 3x3 layer (stride 1, padding 1) on 14x14 maps, batch 64 (462M connections):
   the Numba PSA flip propagation (logistic ratio form) vs the forward convolution of the same layer
   (``Conv2d.forward``: im2col + one BLAS GEMM), with the ordinary ST backward of that layer
   (``backward_input`` + ``param_grads``) for context. Target: flip propagation within 6x of the
   forward convolution. ``--generic`` also times the generic (any-noise) F form, once: it evaluates
   two cdfs per connection and is ~100x slower than the ratio form, and the generic form for triangular
   noise against its default, the branch-free bounded form (which is timed with the others for uniform
   and triangular noise, against the logistic ratio form). Also: the same layer with 5 % of
   its units saturated beyond the ratio form's limit (``|a| > A``) but inert (their flips stay in
   sigma's flat tail, as in trained networks), which the kernel leaves out, against the direct sum
   over those units (one ``exp`` per connection) that it would otherwise add.
2. one full training step (``sbnnumba.estimate``: sampled forward + backward) of the paper's
   all-convolutional SBN adapted to 1x28x28 (``architectures.conv``; ``--width`` multiplies the
   paper's channels 96, 96, 96, 192 x 5; default 0.5, i.e. 48, 48, 48, 96 x 5), batch 64: PSA vs ST.
   Target: PSA step within 3x of an ST step. Also a PSA step of the same network with triangular noise
   (bounded flip form) against the logistic one.

Usage: python bench/psa_conv.py [--repeats 11] [--width 0.5] [--generic]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians, machine_info  # noqa: E402

import sbnnumba as sb  # noqa: E402
from sbnnumba.architectures import build  # noqa: E402
from sbnnumba.conv import Conv2d  # noqa: E402
from sbnnumba.kernels import conv_cpu  # noqa: E402


def layer_inputs(rng, batch=64, channels=64, size=14):
    layer = Conv2d(channels, channels, 3, stride=1, padding=1, rng=rng)
    x_in = np.where(rng.random((batch, channels, size, size)) < 0.5, 1, -1).astype(np.float32)
    a = layer.forward(x_in)
    x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(np.float32)
    d_out = (1e-3 * rng.normal(size=a.shape)).astype(np.float32)
    return layer, x_in, a, x_out, d_out


def saturated_variant(rng, layer, x_in, a, x_out, d_out, fraction=0.05):
    """``a`` with ``fraction`` of its units moved beyond the ratio form's limit ``A`` (all inert: ``|a| - 2
    max|W| > T``), and a function that sums those units directly, one ``exp`` per connection, as the
    kernel did before it left inert units out."""
    from sbnnumba.kernels import cpu
    lim_a = cpu.ratio_limits(np.float32)[0]
    margin = lim_a + cpu.SIGMA_FLAT[np.dtype(np.float32)] + cpu.flip_reach(layer.weight).max() + 1
    mask = rng.random(a.shape) < fraction
    a_sat = np.where(mask, np.where(a >= 0, 1, -1) * margin, a).astype(np.float32)
    assert not cpu.active_saturated(a_sat, layer.weight).any()
    row_start, units = cpu.saturated_rows(mask)
    weight = np.ascontiguousarray(layer.weight, dtype=np.float32)
    g = x_out * d_out
    lim = np.float32(cpu.EXP_ARG_LIMIT[np.dtype(np.float32)])
    d_in = np.zeros(x_in.shape, np.float32)
    (sh, sw), (ph, pw) = layer.stride, layer.padding

    def direct_sum():
        conv_cpu._flip_conv_logistic_saturated(x_in, a_sat, g, weight, row_start, units, sh, sw, ph, pw, lim, d_in)

    return a_sat, direct_sum


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--generic", action="store_true", help="also time the generic F form once")
    args = parser.parse_args(argv)
    machine_info()  # includes the load average: other processes on a 2-core machine skew every figure
    rng = np.random.default_rng(0)

    layer, x_in, a, x_out, d_out = layer_inputs(rng)
    a_sat, direct_sum = saturated_variant(rng, layer, x_in, a, x_out, d_out)
    contenders = {
        "forward conv (im2col + GEMM)": lambda: layer.forward(x_in),
        "PSA flip, ratio form": lambda: layer.flip_propagate(x_in, a, x_out, d_out, "logistic", "cpu"),
        "PSA flip, bounded form, triangular": lambda: layer.flip_propagate(x_in, a, x_out, d_out, "triangular", "cpu"),
        "PSA flip, bounded form, uniform": lambda: layer.flip_propagate(x_in, a, x_out, d_out, "uniform", "cpu"),
        "ST backward_input (GEMM + col2im)": lambda: layer.backward_input(d_out, x_in.shape[1:]),
        "param_grads (im2col + GEMM)": lambda: layer.param_grads(x_in, d_out),
        "PSA flip, 5 % inert saturated units": lambda: layer.flip_propagate(x_in, a_sat, x_out, d_out, "logistic",
                                                                           "cpu"),
        "direct sum over those units (left out)": direct_sum,
    }
    for fn in contenders.values():  # compile and warm up
        fn()
    med = interleaved_medians(contenders, args.repeats)
    if args.generic:
        start = time.perf_counter()
        conv_cpu.flip_propagate_conv(x_in, a, x_out, layer.weight, d_out, layer.stride, layer.padding, 0,
                                     form="generic")
        med["PSA flip, generic F form (1 run)"] = time.perf_counter() - start
        start = time.perf_counter()
        conv_cpu.flip_propagate_conv(x_in, a, x_out, layer.weight, d_out, layer.stride, layer.padding, 3,
                                     form="generic")
        med["PSA flip, generic form, triangular (1 run)"] = time.perf_counter() - start
    base = med["forward conv (im2col + GEMM)"]
    print("\n1) conv flip propagation, 64->64 ch, 3x3, stride 1, pad 1, 14x14, B=64, float32")
    for name, t in med.items():
        print(f"   {name:40s} {t * 1e3:9.2f} ms   {t / base:7.2f}x forward")
    print(f"   => PSA flip (ratio form) / forward conv = {med['PSA flip, ratio form'] / base:.2f}x (target <= 6x)")
    print(f"   => PSA flip, bounded form (triangular) / ratio form (logistic) = "
          f"{med['PSA flip, bounded form, triangular'] / med['PSA flip, ratio form']:.2f}x"
          + (f"; generic / bounded form (triangular) = {med['PSA flip, generic form, triangular (1 run)'] / med['PSA flip, bounded form, triangular']:.1f}x"
             if args.generic else ""))
    print(f"   => with 5 % inert saturated units: "
          f"{med['PSA flip, 5 % inert saturated units'] / med['PSA flip, ratio form']:.2f}x the unsaturated flip; "
          f"summing them directly would add "
          f"{med['direct sum over those units (left out)'] / med['PSA flip, ratio form']:.2f}x")

    net = build("conv", (1, 28, 28), 10, width=args.width, rng=1)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    net.initialize_from_data(x)
    channels = [layer.weight.shape[0] for layer in net.stages]
    net_tri = build("conv", (1, 28, 28), 10, width=args.width, rng=1, noise="triangular")
    net_tri.initialize_from_data(x)
    steps = {m: (lambda m=m: sb.estimate(m, net, x, y, rng=rng)) for m in ("st", "psa")}
    steps["psa, triangular noise"] = lambda: sb.estimate("psa", net_tri, x, y, rng=rng)
    for fn in steps.values():
        fn()
    med = interleaved_medians(steps, args.repeats)
    print(f"\n2) training step (forward + backward), conv SBN on 1x28x28, channels {channels}, B=64, float32")
    for name, t in med.items():
        print(f"   {name:40s} {t * 1e3:9.2f} ms")
    print(f"   => PSA step / ST step = {med['psa'] / med['st']:.2f}x (target <= 3x); triangular / logistic PSA step "
          f"= {med['psa, triangular noise'] / med['psa']:.2f}x")
    try:
        print(f"load average at end: {os.getloadavg()}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
