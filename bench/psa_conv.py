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
   (bounded flip form) and with normal noise (probit flip form) against the logistic one. Also the step's flip
   propagations (the calls of part 3 at this width) and the PSA / ST ratio the step would have with them at the
   divider's bound and at the speed of the ratio kernels' innermost loops alone (part 3).

3. the conv flip propagation of every stage of the paper's network at width 1.0 (``--stage-width``) on
   1x28x28 images, batch 64 (stages 2-8: the first one's input is the real image), in G connections/s
   per core: ``B C_out H_out W_out C_in kh kw`` over the wall time times the threads, and over the
   process CPU time (the cycles the process got: on a shared machine the wall time also counts the
   other processes' turns). Target: >= 5 G connections/s per core on every stage. Timed with them, interleaved:
   the divider's bound (:func:`division_bound`): the ratio form spends one correctly rounded float32 division
   per two connections (``ratio_pair.pair_term``), so twice this core's division rate is the most any kernel of
   that form reaches; each stage is printed as a fraction of it. Also timed with them: each stage's kernel alone
   (the ratio kernel of its layout called on copies of the arguments it got in the stage's call,
   :func:`captured_kernel`), so that the call's fixed cost (layout copy, factor passes, ``exp``, Python) shows as the
   difference between the two figures (the 1x1 stage runs one region, ``conv_single_cell``, whose kernel includes its
   factor passes: there the difference is the NumPy ``tanh``, the all-ones term and Python); and each stage's call
   repeated at once after an untimed call of its own ("call again at once"), so that what the stages before it leave
   in (or take out of) the caches shows as the difference between it and the call in the sequence. And the innermost
   loop of each layout's ratio kernel alone on L1-resident rows (:func:`loop_floors`:
   ``conv_channels.channel_pair_terms`` and ``conv_cpu.cell_pair_terms`` with the kernels' fastmath flags, no tasks,
   no cache misses), about the most a kernel of that loop reaches here;
   each stage's kernel is printed as a fraction of its layout's loop.

4. the stages of part 3 that run channel-innermost (``conv_cpu.channel_inner``: 192 channels here), timed
   with ``layout="cells"`` and ``layout="channels"`` (same bits, checked), G connections/s per core by CPU
   time.

5. each stage's flip propagation of part 3 inside real PSA training steps of the same network (``sbnnumba.estimate``;
   the CPU backend's ``conv_cpu.flip_propagate_conv`` wrapped with a timer): the order and the cache state training
   gives them: the backward pass calls them from the last stage to the first, each right after its own stage's
   pre-activation and parameter gradients (``estimators/psa.py``), which read the same maps (part 3 calls each
   stage after the larger stage before it). G connections/s per core by wall time and by CPU time, and the flips'
   share of the step.

Parts 1 and 2 print their ratios and parts 3, 4 and 5 their throughput at one thread and at the default thread count
(``sbnnumba.set_num_threads``: Numba and BLAS together).

Usage: python bench/psa_conv.py [--repeats 11] [--width 0.5] [--stage-width 1.0] [--generic] [--parts 1,2,3,4,5]
"""
import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians, interleaved_wall_cpu_medians, machine_info, thread_counts, wrapped  # noqa: E402

import sbnnumba as sb  # noqa: E402
from sbnnumba.architectures import build  # noqa: E402
from sbnnumba.conv import Conv2d  # noqa: E402
from sbnnumba.kernels import conv_channels, conv_cpu, conv_layout, conv_single_cell  # noqa: E402
from sbnnumba.kernels.ratio_pair import PAIR_FASTMATH, RATIO_CLAMP  # noqa: E402


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


def layer_section(rng, repeats, threads, generic):
    """Part 1 at ``threads`` threads."""
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
    med = interleaved_medians(contenders, repeats)
    if generic:
        for label, code in (("PSA flip, generic F form (1 run)", 0), ("PSA flip, generic form, triangular (1 run)", 3)):
            start = time.perf_counter()
            conv_cpu.flip_propagate_conv(x_in, a, x_out, layer.weight, d_out, layer.stride, layer.padding, code,
                                         form="generic")
            med[label] = time.perf_counter() - start
    base = med["forward conv (im2col + GEMM)"]
    print(f"\n1) conv flip propagation, 64->64 ch, 3x3, stride 1, pad 1, 14x14, B=64, float32, {threads} thread(s)")
    for name, t in med.items():
        print(f"   {name:40s} {t * 1e3:9.2f} ms   {t / base:7.2f}x forward")
    print(f"   => PSA flip (ratio form) / forward conv = {med['PSA flip, ratio form'] / base:.2f}x (target <= 6x)")
    bounded = med["PSA flip, bounded form, triangular"]
    print(f"   => PSA flip, bounded form (triangular) / ratio form (logistic) = "
          f"{bounded / med['PSA flip, ratio form']:.2f}x"
          + (f"; generic / bounded form (triangular) = "
             f"{med['PSA flip, generic form, triangular (1 run)'] / bounded:.1f}x" if generic else ""))
    print(f"   => with 5 % inert saturated units: "
          f"{med['PSA flip, 5 % inert saturated units'] / med['PSA flip, ratio form']:.2f}x the unsaturated flip; "
          f"summing them directly would add "
          f"{med['direct sum over those units (left out)'] / med['PSA flip, ratio form']:.2f}x")


def paper_network(rng, width):
    """The paper's conv network on 1x28x28 at ``width``, initialized from a random batch of 64: ``(net, x, y)``."""
    net = build("conv", (1, 28, 28), 10, width=width, rng=1)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    net.initialize_from_data(x)
    return net, x, y


def step_section(rng, repeats, threads, width):
    """Part 2 at ``threads`` threads."""
    net, x, y = paper_network(rng, width)
    channels = [layer.inner.weight.shape[0] for layer in net.stages]
    net_tri = build("conv", (1, 28, 28), 10, width=width, rng=1, noise="triangular")
    net_tri.initialize_from_data(x)
    net_normal = build("conv", (1, 28, 28), 10, width=width, rng=1, noise="normal")
    net_normal.initialize_from_data(x)
    steps = {m: (lambda m=m: sb.estimate(m, net, x, y, rng=rng)) for m in ("st", "psa")}
    steps["psa, triangular noise"] = lambda: sb.estimate("psa", net_tri, x, y, rng=rng)
    steps["psa, normal noise (probit form)"] = lambda: sb.estimate("psa", net_normal, x, y, rng=rng)
    # the step's flip propagations (one per stage 2-8, same shapes) and the divider's bound, timed with the steps
    problems = stage_problems(rng, width)
    steps["flip propagations (stages 2-8)"] = lambda: [call() for _, _, call, _ in problems]
    steps["divider"], divider_conns = division_bound(threads)
    floors = loop_floors(threads)
    steps.update({("floor", name): run for name, (run, _) in floors.items()})
    layouts = [captured_kernel(call)[1] for _, _, call, _ in problems]
    for fn in steps.values():
        fn()
    med = interleaved_medians(steps, repeats)
    divider, flip = med.pop("divider"), med["flip propagations (stages 2-8)"]
    flip_at_bound = sum(conns for _, conns, _, _ in problems) / (divider_conns / divider)
    floor_rate = {name: n / med.pop(("floor", name)) for name, (_, n) in floors.items()}  # connections/s, all threads
    flip_at_floor = sum(conns / floor_rate[layout] for (_, conns, _, _), layout in zip(problems, layouts))
    print(f"\n2) training step (forward + backward), conv SBN on 1x28x28, channels {channels}, B=64, float32, "
          f"{threads} thread(s)")
    for name, t in med.items():
        print(f"   {name:40s} {t * 1e3:9.2f} ms")
    print(f"   => PSA step / ST step = {med['psa'] / med['st']:.2f}x (targets: <= 3x of #3, <= 2.0x of #39); "
          f"triangular / logistic PSA step = {med['psa, triangular noise'] / med['psa']:.2f}x; "
          f"normal / logistic PSA step = {med['psa, normal noise (probit form)'] / med['psa']:.2f}x")
    print(f"   => with its flip propagations at the divider's bound ({flip_at_bound * 1e3:.0f} instead of "
          f"{flip * 1e3:.0f} ms: two connections per float32 division, part 3) the PSA step would be "
          f"{(med['psa'] - flip + flip_at_bound) / med['st']:.2f}x the ST step; at the speed of the kernels' "
          f"innermost loops alone ({flip_at_floor * 1e3:.0f} ms: part 3) "
          f"{(med['psa'] - flip + flip_at_floor) / med['st']:.2f}x")


# Not cached: tests load this script as a module under another name, and a cached function's globals are rebuilt
# by importing its module by the name it was compiled under (a script run caches it as __main__).
@numba.njit(parallel=True, fastmath=PAIR_FASTMATH, error_model="numpy")
def _accumulate_quotients(num, den, acc, repeats):
    # acc[t] += num[t] / den[t], `repeats` times per task row: one division and one accumulate per value, as in the
    # ratio kernels' innermost loops, on L1-resident rows (the accumulate keeps the repeats from being folded).
    for t in prange(num.shape[0]):
        for _ in range(repeats):
            for i in range(num.shape[1]):
                acc[t, i] += num[t, i] / den[t, i]


@numba.njit(parallel=True, fastmath=PAIR_FASTMATH, error_model="numpy")
def _channel_loop_l1(sel, acc, k_pos, k_neg, g, e, repeats, big):
    # The channel-innermost kernel's innermost loop (conv_channels.channel_pair_terms: one output-channel pair, one
    # tap, cell and example; r over the input channels) on L1-resident rows, `repeats` times per thread row t; the
    # pair's scalars g, e^{-a} cycle through four values.
    one = acc.dtype.type(1)
    c_in = acc.shape[1]
    for t in prange(acc.shape[0]):
        kp0, kn0, kp1, kn1 = k_pos[t, 0], k_neg[t, 0], k_pos[t, 1], k_neg[t, 1]
        for i in range(repeats):
            g0, e0, g1, e1 = g[t, i % 4], e[t, i % 4], g[t, (i + 1) % 4], e[t, (i + 1) % 4]
            conv_channels.channel_pair_terms(c_in, acc[t], sel[t], kp0, kn0, kp1, kn1, g0, e0, g1, e1, one, big)


@numba.njit(parallel=True, fastmath=PAIR_FASTMATH, error_model="numpy")
def _cell_loop_l1(sel, acc, g, e, w, repeats, big):
    # The cell-major kernel's innermost loop (conv_cpu.cell_pair_terms: two input channels, one output-channel pair
    # and one tap; q over the tile) on L1-resident rows, `repeats` times per thread row t; the eight weight factors
    # come from w[t] (the first one cycling through four values).
    one = acc.dtype.type(1)
    n = acc.shape[2]
    for t in prange(acc.shape[0]):
        w_t = w[t]
        for i in range(repeats):
            factors = (w_t[i % 4], w_t[4], w_t[5], w_t[6], w_t[7], w_t[8], w_t[9], w_t[10])
            conv_cpu.cell_pair_terms(n, acc[t, 0], acc[t, 1], sel[t, 0], sel[t, 1], g[t, 0], g[t, 1], e[t, 0],
                                     e[t, 1], factors, one, big)


def loop_floors(threads, connections=2 ** 27, c_in=192, tile=256):
    """The ratio kernels' innermost loops alone (:func:`_channel_loop_l1`, :func:`_cell_loop_l1`), one L1-resident
    task per thread: about the most a ratio kernel as written reaches on this core, whatever its tasks and caches.

    Returns
    -------
    dict
        ``{"channel-innermost": (call, n), "cell-major": (call, n)}``: ``call()`` runs ``n >= connections``
        connections (whole passes: ``c_in`` input channels x 2 output channels, ``tile`` positions x 4).
    """
    rng = np.random.default_rng(0)
    big = np.float32(RATIO_CLAMP["float32"])

    def states(*shape):
        return np.where(rng.random(shape) < 0.5, 1, -1).astype(np.int8)

    def values(*shape, low=0.0, scale=1.0):
        return (low + scale * rng.random(shape)).astype(np.float32)

    ch = (states(threads, c_in), np.zeros((threads, c_in), np.float32), values(threads, 2, c_in, low=1.0),
          values(threads, 2, c_in, low=1.0), values(threads, 4, scale=1e-3), values(threads, 4, low=1.0))
    cells = (states(threads, 2, tile), np.zeros((threads, 2, tile), np.float32), values(threads, 2, tile, scale=1e-3),
             values(threads, 2, tile, low=1.0), values(threads, 11, low=1.0))
    per_pass = {"channel-innermost": 2 * c_in, "cell-major": 4 * tile}
    kernels = {"channel-innermost": (_channel_loop_l1, ch), "cell-major": (_cell_loop_l1, cells)}
    floors = {}
    for name, (kernel, args) in kernels.items():
        kernel(*args, 1, big)  # compile
        repeats = -(-connections // (threads * per_pass[name]))
        floors[name] = ((lambda kernel=kernel, args=args, repeats=repeats: kernel(*args, repeats, big)),
                        threads * repeats * per_pass[name])
    return floors


def division_bound(threads, n=2048, repeats=2000):
    """The ratio form's connections/s per core allowed by this core's float32 divider.

    Returns ``(call, connections)``: ``call()`` runs ``threads x repeats x n`` divisions (one task row of ``n``
    values per thread, each divided ``repeats`` times with an accumulate, compiled with the ratio kernels'
    fastmath flags, so as the same correctly rounded vector division); ``connections`` is twice that count (the
    pair form: :func:`sbnnumba.kernels.ratio_pair.pair_term`), to be divided by the call's time and the threads."""
    rng = np.random.default_rng(0)
    num = (1e-3 * rng.random((threads, n))).astype(np.float32)
    den = (1 + rng.random((threads, n))).astype(np.float32)
    acc = np.zeros((threads, n), np.float32)
    _accumulate_quotients(num, den, acc, 1)
    return (lambda: _accumulate_quotients(num, den, acc, repeats)), 2 * threads * repeats * n


def stage_label(index, in_shape, out_shape):
    """How parts 3 and 5 name stage ``index`` (0-based): ``"stage 8: 192x1x1 -> 192x1x1"``."""
    return f"stage {index + 1}: " + " -> ".join("x".join(map(str, s)) for s in (in_shape, out_shape))


def stage_connections(layer, batch, out_shape):
    """Connections of a conv stage's flip propagation: every output unit of ``batch`` examples times its receptive
    field (``C_in kh kw``)."""
    return batch * math.prod(out_shape) * layer.weight[0].size


def stage_problems(rng, width, batch=64):
    """Per stage 2-8 of the paper's conv network on 1x28x28 (data-initialized): ``(label, connections,
    call, args)``, ``call`` the stage's logistic flip propagation on random +-1 inputs and outputs, ``args``
    its ``(x_in, a, x_out, weight, d_out, stride, padding)``."""
    net = build("conv", (1, 28, 28), 10, width=width, rng=1)
    net.initialize_from_data(rng.random((batch, 1, 28, 28), dtype=np.float32))
    shape, problems = (1, 28, 28), []
    for index, layer in enumerate(net.stages):
        out_shape = layer.output_shape(shape)
        if index > 0:
            x_in = np.where(rng.random((batch,) + shape) < 0.5, 1, -1).astype(np.float32)
            a = layer.forward(x_in)
            x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(np.float32)
            d_out = (1e-3 * rng.normal(size=a.shape)).astype(np.float32)
            label = stage_label(index, shape, out_shape)
            call = (lambda layer=layer, x_in=x_in, a=a, x_out=x_out, d_out=d_out:
                    layer.flip_propagate(x_in, a, x_out, d_out, "logistic", "cpu"))
            args = (x_in, a, x_out, layer.weight, d_out, layer.stride, layer.padding)
            problems.append((label, stage_connections(layer, batch, out_shape), call, args))
        shape = out_shape
    return problems


def captured_kernel(call):
    """The ratio kernel that ``call()`` (a stage's flip propagation) runs, in either layout, as a zero-argument
    function on copies of the arguments it got (the call's own buffers are reused by the next call).

    Returns
    -------
    (callable, str, bool)
        Runs the kernel alone (what the stage's call spends beyond it is the call's fixed cost); its innermost
        loop: ``"cell-major"`` or ``"channel-innermost"`` (the keys of :func:`loop_floors`); and whether it is the
        one-region kernel of 1x1 maps (``conv_single_cell``), which runs the channel-innermost loop and whose "kernel
        alone" includes the factors' exponentials (the other kernels get them from a pass before theirs).
    """
    captured = []
    layouts = {conv_cpu._flip_conv_ratio: "cell-major", conv_channels.flip_conv_ratio_channels: "channel-innermost",
               conv_single_cell._flip_ratio_single_cell: "channel-innermost"}

    def spy(kernel):
        def run(*args):
            captured.append((kernel, tuple(np.array(a) if isinstance(a, np.ndarray) else a for a in args)))
            return kernel(*args)
        return run

    with wrapped(conv_cpu, "_flip_conv_ratio", spy), wrapped(conv_channels, "flip_conv_ratio_channels", spy), \
            wrapped(conv_single_cell, "_flip_ratio_single_cell", spy):
        call()
    if len(captured) != 1:
        raise AssertionError(f"expected one ratio kernel call in the stage's flip propagation, got {len(captured)}")
    kernel, args = captured[0]
    return (lambda: kernel(*args)), layouts[kernel], kernel is conv_single_cell._flip_ratio_single_cell


def stage_section(rng, repeats, threads, width):
    """Part 3 at ``threads`` threads."""
    problems = stage_problems(rng, width)
    for _, _, call, _ in problems:
        call()
    divider, divider_conns = division_bound(threads)
    calls = {label: call for label, _, call, _ in problems}
    layout, one_region = {}, {}
    for label, _, call, _ in problems:
        calls[(label, "kernel")], layout[label], one_region[label] = captured_kernel(call)
        calls[(label, "kernel")]()  # compiled for the copies' layout before the timed rounds
    calls["divider"] = divider
    floors = loop_floors(threads)
    calls.update({("floor", name): run for name, (run, _) in floors.items()})
    # each stage's call once more right after an untimed call of its own: its data in the caches, the rest as in
    # the sequence (what the stages before it leave behind costs the difference)
    again = {(label, "again"): call for label, _, call, _ in problems}  # each its own untimed prepare
    calls.update(again)
    med = interleaved_wall_cpu_medians(calls, repeats, prepare=again)
    bound = divider_conns / med["divider"][0] / threads / 1e9
    print(f"\n3) conv flip propagation per stage, paper network at width {width}, 1x28x28, B=64, float32 (logistic "
          f"ratio form), {threads} thread(s); G connections/s per core (target >= 5)")
    print(f"   divider bound (two connections per float32 division, timed with the stages): {bound:5.2f} per core")
    floor = {name: n / med[("floor", name)][0] / threads / 1e9 for name, (_, n) in floors.items()}
    print("   the kernels' innermost loops alone on L1-resident rows (about the most a ratio kernel as written reaches "
          "here, timed with the stages): " + ", ".join(f"{name} {rate:5.2f} per core" for name, rate in floor.items()))
    worst = float("inf")
    for label, conns, _, _ in problems:
        wall, cpu = med[label]
        kernel_wall, again_wall = med[(label, "kernel")][0], med[(label, "again")][0]
        per_core_wall, per_core_cpu = conns / wall / threads / 1e9, conns / cpu / 1e9
        per_core_kernel, per_core_again = (conns / t / threads / 1e9 for t in (kernel_wall, again_wall))
        worst = min(worst, per_core_wall)
        print(f"   {label:34s} {conns / 1e6:7.0f} M conn  {wall * 1e3:8.2f} ms  {per_core_wall:5.2f} per core (wall), "
              f"{per_core_wall / bound:4.2f} of the bound  {per_core_cpu:5.2f} per core (CPU time);  kernel alone "
              f"{kernel_wall * 1e3:8.2f} ms  {per_core_kernel:5.2f} ({per_core_kernel / bound:4.2f} of the bound, "
              f"{per_core_kernel / floor[layout[label]]:4.2f} of its {layout[label]} loop);  "
              f"call again at once {again_wall * 1e3:8.2f} ms  {per_core_again:5.2f}"
              + ("  (one region: the kernel alone includes its factors)" if one_region[label] else ""))
    print(f"   => slowest stage: {worst:.2f} G connections/s per core (wall); the divider allows {bound:.2f}, the "
          f"kernels' loops {min(floor.values()):.2f}-{max(floor.values()):.2f}")


def flip_calls_in_steps(step, steps):
    """Wall and process CPU seconds of every conv flip propagation that ``steps`` calls of ``step()`` make.

    Returns
    -------
    dict
        ``(x_in shape, a shape) -> list of (wall, cpu)``, one entry per call (``conv_cpu.flip_propagate_conv``, the
        CPU backend's conv flip, wrapped for the duration of the calls and restored after).
    """
    times = {}

    def timer(flip):
        def timed(x_in, a, *rest, **options):
            cpu_start, start = time.process_time(), time.perf_counter()
            d_in = flip(x_in, a, *rest, **options)
            times.setdefault((x_in.shape, a.shape), []).append((time.perf_counter() - start,
                                                               time.process_time() - cpu_start))
            return d_in
        return timed

    with wrapped(conv_cpu, "flip_propagate_conv", timer):
        for _ in range(steps):
            step()
    return times


def in_step_section(rng, repeats, threads, width):
    """Part 5 at ``threads`` threads: each stage's flip propagation inside PSA training steps."""
    net, x, y = paper_network(rng, width)
    batch = x.shape[0]
    step = lambda: sb.estimate("psa", net, x, y, rng=rng)  # noqa: E731
    flip_calls_in_steps(step, 2)  # compiled, buffers grown
    start = time.perf_counter()
    times = flip_calls_in_steps(step, repeats)
    step_time = (time.perf_counter() - start) / repeats
    print(f"\n5) conv flip propagation per stage inside PSA training steps (the backward pass: from the "
          f"last stage to the first, each after its own stage's parameter gradients), width {width}, 1x28x28, "
          f"B={batch}, float32, {threads} thread(s), medians of {repeats} steps; G connections/s per core "
          f"(target >= 5)")
    shape, worst, flip_total = (1, 28, 28), float("inf"), 0.0
    for index, layer in enumerate(net.stages):
        out_shape = layer.output_shape(shape)
        if index > 0:
            calls = times[((batch,) + shape, (batch,) + out_shape)]
            if len(calls) != repeats:  # the calls are told apart by their shapes
                raise AssertionError(f"stage {index + 1}: {len(calls)} flip propagations of its shapes in {repeats} "
                                     f"steps (another stage has the same input and output shapes)")
            wall = statistics.median(t for t, _ in calls)
            cpu = statistics.median(c for _, c in calls)
            conns = stage_connections(layer, batch, out_shape)
            per_core = conns / wall / threads / 1e9
            worst, flip_total = min(worst, per_core), flip_total + wall
            label = stage_label(index, shape, out_shape)
            print(f"   {label:34s} {conns / 1e6:7.0f} M conn  {wall * 1e3:8.2f} ms  {per_core:5.2f} per core (wall)  "
                  f"{conns / cpu / 1e9:5.2f} per core (CPU time)")
        shape = out_shape
    print(f"   => slowest stage: {worst:.2f} G connections/s per core (wall); the flip propagations "
          f"{flip_total * 1e3:.0f} ms of a {step_time * 1e3:.0f} ms step")


def layout_section(rng, repeats, threads, width):
    """Part 4 at ``threads`` threads: the stages where ``conv_cpu.channel_inner`` picks the channel-innermost
    kernels, timed in both layouts (logistic ratio form; the results are bit-identical)."""
    calls = {}
    for label, conns, _, (x_in, a, x_out, weight, d_out, stride, padding) in stage_problems(rng, width):
        for layout in ("cells", "channels"):
            calls[(label, layout)] = (conns, lambda layout=layout, x_in=x_in, a=a, x_out=x_out, weight=weight,
                                      d_out=d_out, stride=stride, padding=padding:
                                      conv_cpu.flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, 0,
                                                                   form="ratio", layout=layout))
        if conv_cpu.flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, 0, layout="cells").tobytes() \
                != conv_cpu.flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, 0,
                                                layout="channels").tobytes():
            raise AssertionError(f"{label}: the two layouts differ")
        _, _, n_q, n_grid, _, _ = conv_layout.phase_layout(x_in.shape[2:], weight.shape[2:], stride, padding)
        if not conv_cpu.channel_inner(n_q, n_grid, x_in.shape[1], x_in.shape[0], a.dtype.itemsize):
            del calls[(label, "cells")], calls[(label, "channels")]
    med = interleaved_wall_cpu_medians({key: call for key, (_, call) in calls.items()}, repeats)
    print(f"\n4) the stages that run channel-innermost, both layouts, width {width}, B=64, float32, {threads} "
          f"thread(s); G connections/s per core by CPU time (bit-identical results checked)")
    for (label, layout), (conns, _) in calls.items():
        print(f"   {label:34s} {layout:9s} {med[(label, layout)][0] * 1e3:8.2f} ms  "
              f"{conns / med[(label, layout)][1] / 1e9:5.2f} per core (CPU time)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--stage-width", type=float, default=1.0)
    parser.add_argument("--generic", action="store_true", help="also time the generic F form once")
    parser.add_argument("--parts", default="1,2,3,4,5", help="comma-separated parts to run (default 1,2,3,4,5)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    machine_info()  # includes the load average: other processes on a 2-core machine skew every figure
    rng = np.random.default_rng(0)
    for threads in thread_counts():
        sb.set_num_threads(threads)
        if "1" in parts:
            layer_section(rng, args.repeats, threads, args.generic)
        if "2" in parts:
            step_section(rng, args.repeats, threads, args.width)
        if "3" in parts:
            stage_section(rng, args.repeats, threads, args.stage_width)
        if "4" in parts:
            layout_section(rng, args.repeats, threads, args.stage_width)
        if "5" in parts:
            in_step_section(rng, args.repeats, threads, args.stage_width)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
