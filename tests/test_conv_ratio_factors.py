"""The conv ratio form's factor passes (sbnnumba.kernels.conv_cpu._ratio_factors, _all_ones_term) against the NumPy
expressions they replace, bit for bit (issue #39): -a, x_out d_out, a / 2 and the clipped (2W, -2W) in the kernels'
layouts, and the all-ones term from t = einsum(g, sigma(a)) over the channels. If a NumPy release changed einsum's
summation order, the second test would say so (the golden digests would then move as well)."""
import numpy as np
import pytest
from kernel_checks import assert_same_output_compiled_and_cached, vector_width_targets

from sbnnumba.kernels import conv_cpu, conv_layout

# (channels, H_out, W_out, batch, in_hw, kernel, stride, padding): the paper's map sizes and odd ones, a padded block
CASES = [(96, 24, 24, 7, (26, 26), (3, 3), (1, 1), (0, 0)), (9, 11, 11, 19, (24, 24), (3, 3), (2, 2), (0, 0)),
         (5, 3, 2, 37, (5, 4), (3, 3), (2, 2), (1, 1)), (7, 2, 1, 3, (2, 1), (1, 1), (1, 1), (0, 0)),
         (11, 1, 1, 5, (1, 1), (1, 1), (1, 1), (0, 0))]


def _maps(cfg, dtype, seed=0):
    c, ho, wo, batch = cfg[:4]
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(batch, c, ho, wo)) * 4).astype(dtype)
    a.ravel()[::13] = 31.0  # beyond the float32 ratio limit A = 30
    x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(dtype)
    d_out = rng.normal(size=a.shape).astype(dtype)
    d_out.ravel()[::7] = 0.0  # signed zeros in g
    return a, x_out, d_out


@pytest.mark.parametrize("cfg", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["cells", "maps"])
@pytest.mark.parametrize("threads", [1, 2])  # the task order (conv_cpu.mixed_order) follows the caller's count
def test_ratio_factors_are_numpy_values_in_the_kernel_layout(cfg, dtype, layout, threads):
    a, x_out, d_out = _maps(cfg, dtype)
    batch, c, ho, wo = a.shape
    _, _, n_q, _, wq, _ = conv_layout.phase_layout(*cfg[4:])
    n_blocks, bb = conv_layout.batch_blocks(batch, n_q) if layout == "cells" else (batch, 1)
    wq = wq if layout == "cells" else wo
    c_pad = c + c % 2  # the kernels take output channels in pairs: an odd layer gets a neutral last channel
    neg_a, g = (np.full((n_blocks, c_pad * ho * wq * bb), np.nan, dtype) for _ in range(2))
    half = np.empty((batch, c * ho * wo), dtype)
    limit, clip = (dtype(v) for v in conv_cpu.ratio_limits(dtype))
    w3 = np.random.default_rng(4).normal(size=(c, 3, 5)).astype(dtype) * 40
    two_w = np.full((2, c_pad, 5, 3) if layout == "maps" else (2, c_pad, 3, 5), np.nan, dtype)
    n_unsafe = conv_cpu._ratio_factors(*(t.reshape(batch, -1) for t in (a, x_out, d_out)), limit, ho, wq, bb, neg_a, g,
                                       half, w3, clip, layout == "maps", two_w, None, threads)
    assert n_unsafe == np.count_nonzero(np.abs(a) > limit)
    np.testing.assert_array_equal(half.reshape(a.shape), a * 0.5)
    w2 = np.clip(2 * w3, -clip, clip)
    w2 = w2.transpose(0, 2, 1) if layout == "maps" else w2  # the channel kernels' (C_out, taps, C_in)
    want_w = np.zeros((2, c_pad) + w2.shape[1:], dtype)  # neutral channel: +-2W = +0
    want_w[0, :c], want_w[1, :c] = w2, -w2
    assert two_w.tobytes() == want_w.tobytes()
    for got, want, neutral in ((neg_a, -a, -np.inf), (g, x_out * d_out, 0)):
        grid = np.zeros((n_blocks * bb, c_pad, ho, wq), dtype)
        grid[:batch, :c, :, :wo] = want
        grid[:, c:] = neutral  # e^{-a} = 0 and g = 0: the pair's partner adds nothing (ratio_pair)
        grid = grid.reshape(n_blocks, bb, c_pad, ho * wq).transpose(0, 2, 3, 1).reshape(got.shape)
        assert got.tobytes() == grid.tobytes()  # bytes: the signs of zeros too


@pytest.mark.parametrize("cfg", CASES)
@pytest.mark.parametrize("taps_inner", [False, True])
def test_ratio_factors_with_the_exp_are_exp_in_place_of_the_plain_ones(cfg, taps_inner):
    """float32: the pass that writes -a and (2W, -2W) with their exp (exp_f32) fused gives the bytes of the plain pass
    followed by exp_in_place over the same buffer (padding and the neutral channel included: e^0 = 1, e^-inf = 0)."""
    a, x_out, d_out = _maps(cfg, np.float32, seed=2)
    batch, c, ho, wo = a.shape
    _, _, n_q, _, wq, _ = conv_layout.phase_layout(*cfg[4:])
    n_blocks, bb = (batch, 1) if taps_inner else conv_layout.batch_blocks(batch, n_q)
    wq = wo if taps_inner else wq
    c_pad = c + c % 2
    w3 = np.random.default_rng(5).normal(size=(c, 3, 5)).astype(np.float32) * 40
    limit, clip = (np.float32(v) for v in conv_cpu.ratio_limits(np.float32))
    n_f = n_blocks * c_pad * ho * wq * bb
    outputs = []
    for fused in (None, True):
        exps = np.full(n_f + 2 * c_pad * 15, np.nan, np.float32)
        g = np.full((n_blocks, c_pad * ho * wq * bb), np.nan, np.float32)
        half = np.empty((batch, c * ho * wo), np.float32)
        k_shape = (2, c_pad, 5, 3) if taps_inner else (2, c_pad, 3, 5)
        n_unsafe = conv_cpu._ratio_factors(*(t.reshape(batch, -1) for t in (a, x_out, d_out)), limit, ho, wq, bb,
                                           exps[:n_f].reshape(n_blocks, -1), g, half, w3, clip, taps_inner,
                                           exps[n_f:].reshape(k_shape), fused)
        if fused is None:
            conv_cpu.exp_in_place(exps)
        outputs.append((n_unsafe, exps.tobytes(), g.tobytes(), half.tobytes()))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("n_first, n_second", [(0, 5), (5, 0), (1, 1), (4, 96), (64, 192), (97, 3), (8, 9)])
def test_mixed_order_gives_each_thread_its_share_of_both_kinds(n_first, n_second):
    """conv_cpu.mixed_order: a permutation of the tasks; as numbered at one thread; on more, every prefix (so every
    contiguous share of a static split) holds the first kind's share of its length, within one task."""
    n = n_first + n_second
    assert list(conv_cpu.mixed_order(n_first, n_second, 1)) == list(range(n))
    order = conv_cpu.mixed_order(n_first, n_second, 2)
    assert sorted(order) == list(range(n))
    assert list(order[order < n_first]) == list(range(n_first))  # each kind in its own order
    first_in_prefix = np.cumsum(order < n_first)
    share = np.arange(1, n + 1) * n_first / max(n, 1)
    assert np.all(np.abs(first_in_prefix - share) <= 1)


def test_ratio_factors_is_one_parallel_region():
    """The factor pass is one prange: at two threads every parallel region wakes the sleeping worker (tens of
    microseconds on a 0.1-0.5 ms pass), and np.zeros, a slice assignment or a .sum() outside a prange would each be
    a region of its own (the pass had four). A fresh compilation of the kernel (the cached one carries no
    diagnostics) has one top-level parfor."""
    import numba
    from numba.parfors.parfor import Parfor

    fresh = numba.njit(parallel=True)(conv_cpu._ratio_factors.py_func)
    a, x_out, d_out = _maps(CASES[4], np.float32)
    batch, c = a.shape[:2]
    w3 = np.ones((c, 2, 1), np.float32)
    limit, clip = (np.float32(v) for v in conv_cpu.ratio_limits(np.float32))
    fresh(*(t.reshape(batch, -1) for t in (a, x_out, d_out)), limit, 1, 1, 1, np.empty((batch, c + 1), np.float32),
          np.empty((batch, c + 1), np.float32), np.empty((batch, c), np.float32), w3, clip, True,
          np.empty((2, c + 1, 1, 2), np.float32), True, 2)
    (compiled,) = fresh.overloads.values()
    ir = compiled.metadata["parfor_diagnostics"].func_ir
    regions = [stmt for block in ir.blocks.values() for stmt in block.body if isinstance(stmt, Parfor)]
    assert len(regions) == 1, [r.loc.line for r in regions]


def test_flip_plan_is_computed_once_per_shape_and_checks_every_call():
    """The shape-derived part of a conv flip call (conv_cpu.flip_plan) is cached per shape; the shape checks run
    inside it, so a bad call raises every time (exceptions are not cached)."""
    args = ((4, 3, 5, 5), (4, 2, 3, 3), ((4, 2, 3, 3), (4, 2, 3, 3)), (2, 3, 3, 3), (1, 1), (0, 0),
            np.dtype(np.float32), "auto", 0, "auto")
    plan = conv_cpu.flip_plan(*args)
    assert conv_cpu.flip_plan(*args) is plan and plan.form == "ratio" and plan.ratio.c_pad == 2
    bad = args[:2] + (((4, 2, 3, 3), (4, 2, 3, 4)),) + args[3:]
    for _ in range(2):
        with pytest.raises(ValueError, match="d_out"):
            conv_cpu.flip_plan(*bad)
    x = np.ones((4, 3, 5, 5), np.float32)
    a = np.zeros((4, 2, 3, 3), np.float32)
    w = np.zeros((2, 3, 3, 3), np.float32)
    for kwargs, name in (({"form": ["ratio"]}, "form"), ({"layout": ["cells"]}, "layout")):  # unhashable: not cached
        with pytest.raises(ValueError, match=name):
            conv_cpu.flip_propagate_conv(x, a, a, w, a, (1, 1), (0, 0), 0, **kwargs)


@pytest.mark.parametrize("cfg", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_ones_term_equals_einsum_and_the_transposed_convolution_bitwise(cfg, dtype):
    a, x_out, d_out = _maps(cfg, dtype, seed=1)
    batch, c, ho, wo = a.shape
    _, tap_off, n_q, n_grid, wq, _ = conv_layout.phase_layout(*cfg[4:])
    n_blocks, bb = conv_layout.batch_blocks(batch, n_q)
    th = np.tanh(a * 0.5)
    t = np.einsum("bcyx,bcyx->byx", x_out * d_out, (th + 1) * 0.5)  # the former NumPy path
    t_grid = np.zeros((n_blocks * bb, ho, wq), dtype)
    t_grid[:batch, :, :wo] = t
    t_grid = t_grid.reshape(n_blocks, bb, ho * wq).transpose(0, 2, 1).reshape(n_blocks, -1)
    want = np.zeros((n_blocks, n_grid * bb), dtype)
    for off in tap_off * bb:  # taps ascending, each from 0: the order of the kernel's sums
        want[:, off:off + n_q * bb] += t_grid[:, :n_q * bb]
    got = np.full((n_blocks, n_grid * bb), np.nan, dtype)
    given = ho * wo == 1  # one output cell: einsum's own order, passed in
    conv_cpu._all_ones_term(x_out, d_out, th, t if given else np.empty((1, 1, 1), dtype), given, tap_off * bb,
                            n_q * bb, wq, bb, got)
    assert got.tobytes() == want.tobytes()


_CACHE_PROBE = """
import hashlib
import numpy as np
from sbnnumba.kernels import conv_cpu, cpu
rng = np.random.default_rng(3)
h = hashlib.sha256()
# 96 -> 96 channels, 3x3 on 9x9 maps, a third of the units saturated (|a| > A) and active (weights x20): the direct
# sum (_flip_conv_logistic_saturated) runs beside the ratio sums, in both layouts; then that kernel over every unit
x = np.where(rng.random((8, 96, 9, 9)) < 0.5, 1, -1).astype(np.float32)
w = (rng.normal(size=(96, 96, 3, 3)) / 30 * 20).astype(np.float32)
a = rng.normal(size=(8, 96, 7, 7)).astype(np.float32) * 3
a = np.where(rng.random(a.shape) < 0.3, np.sign(a) * (31 + 3 * rng.random(a.shape)), a).astype(np.float32)
x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(np.float32)
d_out = rng.normal(size=a.shape).astype(np.float32)
for layout in ("cells", "channels"):
    h.update(conv_cpu.flip_propagate_conv(x, a, x_out, w, d_out, (1, 1), (0, 0), 0, form="ratio", layout=layout)
             .tobytes())
row_start, units = cpu.saturated_rows(np.ones(a.shape, bool))
out = np.zeros(x.shape, np.float32)
conv_cpu._flip_conv_logistic_saturated(x, a, x_out * d_out, w, row_start, units, 1, 1, 0, 0, np.float32(80), out)
h.update(out.tobytes())
fns = [conv_cpu._flip_conv_logistic_saturated, conv_cpu._flip_conv_ratio, conv_cpu._ratio_factors,
       conv_cpu._all_ones_term]
print(h.hexdigest(), sum(f.stats.cache_hits.total() for f in fns), sum(f.stats.cache_misses.total() for f in fns))
"""


@pytest.mark.parametrize("target", sorted(vector_width_targets()))
def test_conv_ratio_form_same_bits_compiled_and_loaded_from_cache(tmp_path, target):
    """The first child compiles the conv ratio-form kernels (the direct sum over saturated units included) into an
    empty Numba cache, the second loads them: the same bits. Numba optimizes a prange body twice and caches the
    second result, so a kernel whose sums LLVM may reassociate can give other bits once loaded
    (sbnnumba/kernels/lanes.py); these kernels are compiled without "reassoc". At each vector width."""
    assert_same_output_compiled_and_cached(_CACHE_PROBE, tmp_path, env=vector_width_targets()[target])
