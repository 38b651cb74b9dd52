"""Convolutional stages: Conv2d == dense layer on im2col patches, PSA conv kernels == NumPy reference ==
brute-force flips, exact enumeration on tiny conv nets (spec psa.md, sections 2.10 and 8)."""
import os

import numba
import numpy as np
import pytest
from conftest import NOISE_NAMES, group_rel_error
from kernel_checks import stdout_at_threads

import sbnnumba as sb
from sbnnumba import get_noise
from sbnnumba.architectures import build
from sbnnumba.conv import Conv2d
from sbnnumba.kernels import conv_cpu, conv_layout, conv_reference
from sbnnumba.testing import enumerate_paths, exact_expected_loss, expected_estimate

# (c_in, c_out, kernel, stride, padding, H, W): odd/even/rectangular kernels, strides 1-3, padding 0-2,
# non-square maps, several channels.
CONFIGS = [
    (2, 3, 3, 1, 0, 5, 7),
    (2, 3, 3, 2, 1, 6, 5),
    (3, 2, 3, 2, 0, 7, 8),
    (1, 2, 1, 1, 0, 3, 4),
    (2, 2, 2, 1, 1, 4, 5),
    (2, 3, 2, 2, 0, 5, 6),
    (1, 2, 5, 1, 2, 4, 6),
    (2, 2, 5, 2, 1, 7, 6),
    (3, 2, (2, 3), (2, 1), (1, 0), 7, 6),
    (2, 3, (3, 1), 1, (0, 1), 5, 3),
    (2, 2, 2, 3, 1, 8, 9),
]
IDS = [f"{c[0]}to{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-{c[5]}x{c[6]}" for c in CONFIGS]


def _layer_data(cfg, seed=0, dtype=np.float64, batch=3, scale=1.0):
    c_in, c_out, k, s, p, h, w = cfg
    rng = np.random.default_rng(seed)
    layer = Conv2d(c_in, c_out, k, stride=s, padding=p, rng=rng, dtype=dtype)
    layer.weight[...] = scale * rng.normal(size=layer.weight.shape)
    layer.bias[...] = rng.normal(size=layer.bias.shape)
    x = np.where(rng.random((batch, c_in, h, w)) < 0.5, 1, -1).astype(dtype)
    a = layer.forward(x)
    x_out = np.where(rng.random(a.shape) < 0.5, 1, -1).astype(dtype)
    d_out = rng.normal(size=a.shape).astype(dtype)
    return layer, x, a, x_out, d_out


def _naive_conv(x, weight, bias, stride, padding):
    """Direct loops over output positions (independent of im2col)."""
    (sh, sw), (ph, pw) = stride, padding
    c_out, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], c_out, ho, wo))
    for oy in range(ho):
        for ox in range(wo):
            patch = xp[:, :, sh * oy:sh * oy + kh, sw * ox:sw * ox + kw]
            out[:, :, oy, ox] = np.einsum("brij,crij->bc", patch, weight) + bias
    return out


def _brute_force_flips(layer, x, a, x_out, d_out, noise):
    """d_in[b,r,i] by flipping input (r, i), recomputing every pre-activation and F(-x_out a) (spec test 7)."""
    f = get_noise(noise)
    d_in = np.zeros_like(x)
    base = f.cdf(-x_out * a)
    for idx in np.ndindex(x.shape[1:]):
        xf = x.copy()
        xf[(slice(None),) + idx] *= -1
        delta = f.cdf(-x_out * layer.forward(xf)) - base
        d_in[(slice(None),) + idx] = np.einsum("bcyx,bcyx->b", delta, d_out)
    return d_in


# ---------------------------------------------------------------------------------------------- layer basics
def test_constructor_shapes_init_and_errors():
    layer = Conv2d(3, 8, 3, rng=0)
    assert layer.weight.shape == (8, 3, 3, 3) and layer.bias.shape == (8,)
    assert layer.weight.dtype == np.float32
    assert layer.kernel_size == (3, 3) and layer.stride == (1, 1) and layer.padding == (0, 0)
    bound = 1 / np.sqrt(27)
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.bias).max() <= bound
    rect = Conv2d(2, 4, (2, 5), stride=(2, 1), padding=(1, 0), dtype=np.float64, rng=0)
    assert rect.weight.shape == (4, 2, 2, 5) and rect.stride == (2, 1) and rect.padding == (1, 0)
    assert rect.output_shape((2, 6, 7)) == (4, 4, 3)
    assert rect.out_shape == (4, 4, 3) and rect.n_out == 48
    with pytest.raises(ValueError, match="output_shape"):
        _ = Conv2d(1, 1, 3).out_shape
    with pytest.raises(ValueError, match=r"x: .*\(3, H, W\)"):
        layer.output_shape((4, 8, 8))
    with pytest.raises(ValueError, match="H >= 3"):
        layer.forward(np.zeros((1, 3, 2, 8), np.float32))
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2d(1, 1, 0)
    with pytest.raises(ValueError, match="stride"):
        Conv2d(1, 1, 3, stride=(1, 2, 3))
    with pytest.raises(ValueError, match="padding"):
        Conv2d(1, 1, 3, padding=-1)
    with pytest.raises(ValueError, match="c_out"):
        Conv2d(1, 0, 3)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_forward_backward_param_grads_equal_dense_on_patches(cfg):
    layer, x, a, _, g = _layer_data(cfg, seed=1)
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    w2 = layer.weight.reshape(layer.weight.shape[0], -1)
    rows = conv_reference._rows
    patches = conv_reference.im2col(x, k, s, p)
    # forward: a dense layer on every patch, and direct loops
    dense = (patches @ w2.T + layer.bias).reshape(a.shape[0], a.shape[2], a.shape[3], -1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(a, dense, atol=1e-12)
    np.testing.assert_allclose(a, _naive_conv(x, layer.weight, layer.bias, s, p), atol=1e-12)
    # backward_input: the dense transposed map per patch, summed back (col2im)
    g_x = layer.backward_input(g, x.shape[1:])
    np.testing.assert_allclose(g_x, conv_reference.col2im(rows(g) @ w2, x.shape[1:], k, s, p), atol=1e-12)
    # adjoint identity <conv(x) - b, g> == <x, conv^T(g)>
    assert abs(np.sum((a - layer.bias[:, None, None]) * g) - np.sum(x * g_x)) < 1e-9
    # param grads: dense outer products summed over the patches (shared weights sum over positions)
    pg = layer.param_grads(x, g)
    np.testing.assert_allclose(pg["weight"], (rows(g).T @ patches).reshape(layer.weight.shape), atol=1e-12)
    np.testing.assert_allclose(pg["bias"], g.sum(axis=(0, 2, 3)), atol=1e-12)


def test_shared_weight_gradient_sums_over_positions():
    layer, x, a, _, g = _layer_data((2, 2, 2, 2, 1, 5, 4), seed=2)
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    expect = np.zeros_like(layer.weight)
    for oy in range(a.shape[2]):
        for ox in range(a.shape[3]):
            patch = xp[:, :, sh * oy:sh * oy + 2, sw * ox:sw * ox + 2]
            expect += np.einsum("bc,brij->crij", g[:, :, oy, ox], patch)
    np.testing.assert_allclose(layer.param_grads(x, g)["weight"], expect, atol=1e-12)


def test_forward_moments_squared_kernel():
    layer, x, *_ = _layer_data((2, 3, 3, 2, 1, 6, 5), seed=3)
    rng = np.random.default_rng(3)
    mean, var = rng.uniform(-1, 1, x.shape), rng.uniform(0, 1, x.shape)
    mu, v = layer.forward_moments(mean, var)
    np.testing.assert_allclose(mu, layer.forward(mean), atol=1e-12)
    zero = np.zeros_like(layer.bias)
    np.testing.assert_allclose(v, _naive_conv(var, layer.weight ** 2, zero, layer.stride, layer.padding), atol=1e-12)


def test_float32_forward_and_backward_keep_dtype():
    layer, x, a, _, g = _layer_data((3, 4, 3, 1, 1, 6, 6), seed=4, dtype=np.float32)
    assert a.dtype == np.float32 and a.flags.c_contiguous
    assert layer.backward_input(g, x.shape[1:]).dtype == np.float32
    assert all(v.dtype == np.float32 for v in layer.param_grads(x, g).values())
    ref = conv_reference.conv_forward(x.astype(np.float64), layer.weight.astype(np.float64),
                                      layer.bias.astype(np.float64), layer.stride, layer.padding)
    np.testing.assert_allclose(a, ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------- PSA flips
@pytest.mark.parametrize("cfg", CONFIGS[:6] + CONFIGS[8:9], ids=IDS[:6] + IDS[8:9])
def test_reference_flip_equals_brute_force(cfg, noise_name):
    layer, x, a, x_out, d_out = _layer_data(cfg, seed=5, batch=2, scale=0.7)
    ref = conv_reference.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding,
                                             noise_name)
    np.testing.assert_allclose(ref, _brute_force_flips(layer, x, a, x_out, d_out, noise_name), atol=1e-13)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
def test_numba_kernels_equal_reference(cfg, dtype, tol):
    layer, x, a, x_out, d_out = _layer_data(cfg, seed=6, scale=0.6)
    args = [t.astype(dtype) for t in (x, a, x_out, layer.weight, d_out)]
    for noise in NOISE_NAMES:
        ref = conv_reference.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding,
                                                 noise)
        forms = {"logistic": ["ratio", "generic"], "uniform": ["bounded", "generic"],
                 "triangular": ["bounded", "generic"],
                 "normal": ["probit", "generic"] if dtype == np.float32 else ["generic"]}[noise]
        for form in forms:
            got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, get_noise(noise).code, form=form)
            assert got.dtype == dtype and got.shape == x.shape
            np.testing.assert_allclose(got, ref, atol=tol * max(1, np.abs(ref).max()), err_msg=f"{noise} {form}")


# (c_in, c_out, kernel, stride, padding, H, W, batch): several batch blocks (one padded with inert examples) on
# small maps, and accumulator tiles on a large map (conv_layout.batch_blocks, conv_layout.tile_length).
BLOCKED = [(3, 2, 3, 2, 0, 5, 5, 67), (5, 3, 1, 1, 0, 1, 1, 130), (3, 2, 3, 1, 1, 90, 87, 5)]


@pytest.mark.parametrize("cfg", BLOCKED, ids=[f"{c[5]}x{c[6]}-B{c[7]}" for c in BLOCKED])
def test_numba_kernels_equal_reference_across_blocks_and_tiles(cfg):
    layer, x, a, x_out, d_out = _layer_data(cfg[:7], seed=11, scale=0.6, batch=cfg[7])
    in_index, tap_off, n_q, n_grid, _, _ = conv_layout.phase_layout(x.shape[2:], layer.kernel_size, layer.stride,
                                                                 layer.padding)
    n_blocks, bb = conv_layout.batch_blocks(x.shape[0], n_q)
    assert n_blocks > 1 and (cfg[5] < 40 or n_grid * bb > conv_layout.tile_length(bb, 10))  # blocks; tiles on 90x87
    args = [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]
    for noise, form in (("logistic", "ratio"), ("triangular", "bounded"), ("normal", "generic"), ("normal", "probit")):
        ref = conv_reference.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding,
                                                 noise)
        got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, get_noise(noise).code, form=form)
        np.testing.assert_allclose(got, ref, atol=3e-5 * max(1, np.abs(ref).max()), err_msg=f"{noise} {form}")


def test_probit_kernel_in_passes_gives_the_bits_of_one_loop(monkeypatch):
    """The conv probit kernel runs a tap's run of PASS_MIN or more entries through the CDF's passes
    (probit.erfc_pos_passes, a PASS_BLOCK at a time) and shorter runs in one loop of probit_term: the same bits. The
    kernel compiled again with PASS_MIN beyond every run (one loop everywhere) gives the cached kernel's bytes, on maps
    whose runs span several pass blocks and leave remainders."""
    layer, x, a, x_out, d_out = _layer_data((3, 4, 3, 1, 1, 13, 11), seed=23, scale=2.0, batch=6)
    _, _, n_q, _, _, _ = conv_layout.phase_layout(x.shape[2:], layer.kernel_size, layer.stride, layer.padding)
    _, bb = conv_layout.batch_blocks(x.shape[0], n_q)
    assert n_q * bb > 2 * conv_cpu.probit.PASS_BLOCK  # the taps' runs span several pass blocks (and the passes run)
    args = [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]
    code = get_noise("normal").code
    in_passes = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form="probit", layout="cells")
    monkeypatch.setattr(conv_cpu.probit, "PASS_MIN", 1 << 30)
    one_loop_kernel = numba.njit(fastmath=conv_cpu.probit.FASTMATH, error_model="numpy")(
        conv_cpu._flip_conv_probit.py_func)
    monkeypatch.setattr(conv_cpu, "_flip_conv_probit", one_loop_kernel)
    one_loop = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form="probit", layout="cells")
    assert in_passes.tobytes() == one_loop.tobytes()


@pytest.mark.parametrize("cfg", [(4, 5, 3, 1, 1, 9, 10), (3, 3, 3, 2, 0, 11, 9)], ids=["s1", "s2"])
def test_cell_major_bits_do_not_depend_on_the_batch_block(cfg, monkeypatch):
    """The examples per batch block of the cell-major kernels (conv_layout.batch_blocks) are a speed setting only:
    every entry adds its terms in the same (output channel, tap) order whatever the block, so blocks of 1, 2, 4 and 8
    examples (7 examples: padded last blocks) give the same bits, for every form (odd C_out: a neutral pair)."""
    layer, x, a, x_out, d_out = _layer_data(cfg, seed=21, scale=0.6, batch=7)
    args = [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]
    for noise, form in (("logistic", "ratio"), ("triangular", "bounded"), ("normal", "probit"), ("normal", "generic")):
        results = []
        for bb in (1, 2, 4, 8):
            monkeypatch.setattr(conv_cpu, "batch_blocks", lambda n_batch, n_q, bb=bb: (-(-n_batch // bb), bb))
            results.append(conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, get_noise(noise).code,
                                                        form=form, layout="cells").tobytes())
        assert len(set(results)) == 1, f"{noise} {form}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("scale", [0.05, 0.6, 2.0])
def test_probit_form_within_its_bound(cfg, scale):
    """Normal noise, float32: each term of the probit form within 8 u |d| of the exact one (the dense test's
    reckoning), float32 accumulation of n = C_out kh kw terms per input in order, so |d_in - exact| <= (8 + n) u
    sum |d_out| over the receptive field's outputs, bounded here by the sum over all outputs of the example."""
    layer, x, a, x_out, d_out = _layer_data(cfg, seed=16, scale=scale)
    ref = conv_reference.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding, "normal")
    args = [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]
    for form in ("probit", "auto"):
        got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, get_noise("normal").code, form=form)
        n_terms = layer.weight.shape[0] * layer.weight[0, 0].size
        bound = (8 + n_terms) * 2.0 ** -24 * np.abs(d_out).reshape(len(d_out), -1).sum(axis=1)
        assert (np.abs(got - ref) <= bound[:, None, None, None]).all(), form


def test_probit_form_passes_non_finite_calls_to_the_generic_form():
    layer, x, a, x_out, d_out = _layer_data((3, 4, 3, 1, 1, 6, 6), seed=17, scale=0.6)
    args = [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]
    args[1][0, 1, 2, 3] = np.nan
    code = get_noise("normal").code
    got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form="probit")
    want = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form="generic")
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got).any()


_THREADS_PROBE = """
import hashlib, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_conv import BLOCKED, _layer_data
from sbnnumba.kernels import conv_cpu
h = hashlib.sha256()
for cfg in BLOCKED:
    layer, x, a, x_out, d_out = _layer_data(cfg[:7], seed=12, scale=0.6, batch=cfg[7])
    for dtype in (np.float32, np.float64):
        args = [t.astype(dtype) for t in (x, a, x_out, layer.weight, d_out)]
        forms = ((0, "ratio"), (3, "bounded"), (1, "generic")) + (((1, "probit"),) if dtype == np.float32 else ())
        for code, form in forms:
            h.update(conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, code, form=form).tobytes())
print(h.hexdigest())
"""


def test_conv_flip_bit_identical_at_one_and_two_threads():
    """Fixed reduction order: every accumulator entry adds its terms in the same order whatever the thread
    count (issue #41), checked bit for bit in child processes with NUMBA_NUM_THREADS=1 and 2."""
    here = os.path.dirname(os.path.abspath(__file__))
    assert stdout_at_threads(_THREADS_PROBE, 1, here) == stdout_at_threads(_THREADS_PROBE, 2, here)


def test_layer_flip_propagate_backends_agree(noise_name):
    layer, x, a, x_out, d_out = _layer_data((3, 4, 3, 2, 1, 9, 7), seed=7, scale=0.5)
    cpu = layer.flip_propagate(x, a, x_out, d_out, noise_name, "cpu")
    ref = layer.flip_propagate(x, a, x_out, d_out, noise_name, "reference")
    np.testing.assert_allclose(cpu, ref, atol=1e-12 * max(1, np.abs(ref).max()))
    with pytest.raises(ValueError, match="backend"):
        layer.flip_propagate(x, a, x_out, d_out, noise_name, "tpu")


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (2, 2, 1), (3, 2, 2)])
def test_padded_positions_never_flip(k, s, p):
    """Padding p on x == no padding on x explicitly padded with constants 0: there Delta = 0, so the padded
    positions receive d = 0 and the interior is unchanged."""
    layer, x, a, x_out, d_out = _layer_data((2, 3, k, s, p, 5, 6), seed=8)
    plain = Conv2d(2, 3, k, stride=s, padding=0, dtype=np.float64, rng=0)
    plain.weight[...], plain.bias[...] = layer.weight, layer.bias
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    np.testing.assert_allclose(plain.forward(xp), a, atol=1e-12)
    for noise in ("logistic", "normal"):
        full = conv_reference.flip_propagate_conv(xp, a, x_out, layer.weight, d_out, (s, s), (0, 0), noise)
        border = full.copy()
        border[:, :, p:-p, p:-p] = 0
        assert np.all(border == 0)
        for backend in ("cpu", "reference"):
            got = layer.flip_propagate(x, a, x_out, d_out, noise, backend)
            np.testing.assert_allclose(got, full[:, :, p:-p, p:-p], atol=1e-12)


def test_ratio_form_float32_with_saturated_units_and_large_weights():
    layer, x, a, x_out, d_out = _layer_data((2, 2, 3, 1, 1, 4, 5), seed=9)
    a[0, 0, 0, :2] = [-200.0, 300.0]
    layer.weight[1, 0, 1, 1] = 60.0
    ref = conv_reference.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding,
                                             "logistic")
    args = [t.astype(np.float32) for t in (x, a, x_out, layer.weight, d_out)]
    got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 0, form="ratio")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="logistic"):
        conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 1, form="ratio")


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
def test_ratio_form_sums_saturated_units_directly(dtype, tol):
    """Saturated units (|a| > A) are summed directly, the rest by the ratio form with 2W clipped; the sum is
    the reference whatever the mix."""
    layer, x, a, x_out, d_out = _layer_data((3, 5, 3, 2, 1, 7, 6), seed=10, scale=0.6)
    lim = conv_cpu.ratio_limits(dtype)[0]
    a[1, 2, 0, 1] = lim + 5           # channel 2: one saturated unit
    a[0, 1] = -lim - 3                # a whole saturated map
    big = 1.5 * conv_cpu.EXP_ARG_LIMIT[np.dtype(dtype)]
    a[2, 0, 1, 1], layer.weight[0, 2, 1, 1], x[2, 2, 2, 2] = big, big / 2, 1.0  # flipping x[2,2,2,2] gives a = 0
    layer.weight[4, 1, 0, 2] = -250.0  # channel 4: 2W clipped to [-C, C] (flips saturate the unit either way)
    layer.weight[3, 0, 1, 1] = lim     # channel 3: a weight that moves units across the whole range
    ref = conv_reference.flip_propagate_conv(x, a, x_out, layer.weight, d_out, layer.stride, layer.padding,
                                             "logistic")
    args = [t.astype(dtype) for t in (x, a, x_out, layer.weight, d_out)]
    got = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 0, form="ratio")
    generic = conv_cpu.flip_propagate_conv(*args, layer.stride, layer.padding, 0, form="generic")
    assert got.dtype == dtype and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(got, generic, atol=tol * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------- tiny conv nets
def conv_net(kind, noise="logistic", seed=0, scale=1.0, n_classes=3, dtype=np.float64):
    """Tiny float64 conv nets with N(0, scale^2) parameters (few enough units for exact enumeration)."""
    rng = np.random.default_rng(seed)
    if kind == "one":           # 1x3x3 -> conv 2x2, 2 channels: 8 units
        stages, in_shape = [Conv2d(1, 2, 2, rng=rng, dtype=dtype)], (1, 3, 3)
        head = sb.Linear(8, n_classes, rng=rng, dtype=dtype)
    elif kind == "width1":      # 1x3x3 -> 2x2x2 (8 units) -> conv 2x2 to 1x1x1 (1 unit)
        stages, in_shape = [Conv2d(1, 2, 2, rng=rng, dtype=dtype), Conv2d(2, 1, 2, rng=rng, dtype=dtype)], (1, 3, 3)
        head = sb.Linear(1, n_classes, rng=rng, dtype=dtype)
    elif kind == "conv-conv":   # 1x4x4 -> conv 3x3 stride 2 pad 1: 1x2x2 (4) -> conv (1,2): 2x2x1 (4)
        stages = [Conv2d(1, 1, 3, stride=2, padding=1, rng=rng, dtype=dtype),
                  Conv2d(1, 2, (1, 2), rng=rng, dtype=dtype)]
        in_shape = (1, 4, 4)
        head = sb.Linear(4, n_classes, rng=rng, dtype=dtype)
    elif kind == "conv-linear":  # 1x3x3 -> conv 2x2: 1x2x2 (4) -> conv 2x2 pad 1, stride 2: 2x2x2 (8) -> Linear 3
        stages = [Conv2d(1, 1, 2, rng=rng, dtype=dtype), Conv2d(1, 2, 2, stride=2, padding=1, rng=rng, dtype=dtype),
                  sb.Linear(8, 3, rng=rng, dtype=dtype)]
        in_shape = (1, 3, 3)
        head = sb.Linear(3, n_classes, rng=rng, dtype=dtype)
    else:
        raise ValueError(kind)
    net = sb.Network(stages, head, noise=noise)
    for p in net.params.values():
        p[...] = scale * rng.normal(size=p.shape)
    return net, in_shape


def _batch(in_shape, seed, n=2, n_classes=3):
    rng = np.random.default_rng(200 + seed)
    return rng.normal(size=(n,) + in_shape), rng.integers(0, n_classes, size=n)


def test_exact_oracle_on_conv_net_matches_central_differences():
    net, in_shape = conv_net("conv-conv", seed=1, scale=0.7)
    x, y = _batch(in_shape, 1)
    _, g = sb.estimate("exact", net, x, y)
    h = 1e-5
    for key, p in net.params.items():
        fd = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            plus = exact_expected_loss(net, x, y).mean()
            p[idx] = old - h
            minus = exact_expected_loss(net, x, y).mean()
            p[idx] = old
            fd[idx] = (plus - minus) / (2 * h)
        np.testing.assert_allclose(g[key], fd, atol=1e-8, err_msg=key)


@pytest.mark.parametrize("kind", ["one", "width1"])
def test_psa_exact_on_conv_nets_where_theory_says(kind, noise_name):
    net, in_shape = conv_net(kind, noise=noise_name, seed=2, scale=0.8)
    x, y = _batch(in_shape, 2)
    _, g = sb.estimate("exact", net, x, y)
    _, g_psa = expected_estimate("psa", net, x, y)
    for key in g:
        np.testing.assert_allclose(g_psa[key], g[key], atol=1e-8 * max(1, np.abs(g[key]).max()), err_msg=key)


@pytest.mark.parametrize("kind", ["conv-conv", "conv-linear"])
def test_psa_exact_in_head_and_last_binary_layer_of_conv_nets(kind, noise_name):
    net, in_shape = conv_net(kind, noise=noise_name, seed=3)
    x, y = _batch(in_shape, 3)
    _, g = sb.estimate("exact", net, x, y)
    _, g_psa = expected_estimate("psa", net, x, y)
    last = len(net.stages) - 1
    for key in g:
        if key.startswith("head") or key.startswith(f"stages.{last}."):
            np.testing.assert_allclose(g_psa[key], g[key], atol=1e-8 * max(1, np.abs(g[key]).max()), err_msg=key)


@pytest.mark.parametrize("kind,n_seeds", [("conv-conv", 8), ("conv-linear", 4)])
def test_psa_bias_small_below_on_conv_nets(kind, n_seeds):
    """Observed (N(0,1) parameters, logistic, seeds 10..17, one input): relative bias of the expected PSA
    estimate in the binary stages below the last one:
      conv-conv   stage 0: median 0.028, max 0.092   (deep ST: median 0.22, max 0.34)
      conv-linear stage 0: median 0.044, max 0.20;  stage 1: median 0.037, max 0.13
                                                     (deep ST: medians 0.21 / 0.17 / 0.19, incl. the last)
    PSA is exact (~1e-15) in the last binary stage and the head. Asserted: PSA median < 0.15, every seed
    < 0.5, and PSA's median below deep ST's in every lower stage."""
    psa, st = [], []
    for seed in range(n_seeds):
        net, in_shape = conv_net(kind, seed=10 + seed)
        x, y = _batch(in_shape, seed, n=1)
        _, g = sb.estimate("exact", net, x, y)
        e_psa = group_rel_error(g, expected_estimate("psa", net, x, y)[1], net)
        e_st = group_rel_error(g, expected_estimate("st", net, x, y)[1], net)
        lower = [f"stages.{k}" for k in range(len(net.stages) - 1)]
        psa.append([e_psa[k] for k in lower])
        st.append([e_st[k] for k in lower])
    psa, st = np.array(psa), np.array(st)
    assert np.all(np.median(psa, axis=0) < 0.15) and psa.max() < 0.5, psa
    assert np.all(np.median(psa, axis=0) < np.median(st, axis=0)), (psa, st)


def test_psa_monte_carlo_converges_to_path_expectation_conv():
    net, in_shape = conv_net("conv-conv", seed=4)
    x, y = _batch(in_shape, 4, n=1)
    _, mean, (per_path, prob, _) = expected_estimate("psa", net, x, y, return_paths=True)
    n = 4000
    _, mc = sb.estimate("psa", net, np.repeat(x, n, 0), np.repeat(y, n), rng=np.random.default_rng(7))
    for key in mean:
        var = np.einsum("p,p...->...", prob, (per_path[key] - mean[key]) ** 2)
        z = (mc[key] - mean[key]) / np.sqrt(var / n + 1e-300)
        assert np.all(np.abs(z[var > 1e-20]) < 5), (key, z)


@pytest.mark.parametrize("kind", ["conv-conv", "conv-linear"])
def test_deep_st_equals_linearized_psa_path_by_path_conv(kind):
    net, in_shape = conv_net(kind, seed=5, scale=0.7)
    x, y = _batch(in_shape, 5)
    path, prob, ex = enumerate_paths(net, x)
    w = np.ones(len(prob))
    _, g_st = sb.estimators.PATH_ESTIMATORS["st"][0](net, path, y[ex], w)
    _, g_lin = sb.estimators.PATH_ESTIMATORS["psa"][0](net, path, y[ex], w, head="sample", linearize=True)
    for key in g_st:
        np.testing.assert_allclose(g_lin[key], g_st[key], atol=1e-12 * max(1, np.abs(g_st[key]).max()))


@pytest.mark.parametrize("method", ["psa", "st", "st-identity", "st-hardtanh", "exact"])
def test_estimate_on_conv_networks(method):
    """Conv stages, then a Linear stage (flattening in (C, H, W) order), then the head; float32."""
    if method == "exact":
        net, in_shape = conv_net("conv-linear", seed=6, scale=0.5, dtype=np.float32)
        x, y = _batch(in_shape, 6, n=4)
    else:
        rng = np.random.default_rng(6)
        stages = [Conv2d(1, 4, 3, rng=rng), Conv2d(4, 5, 3, stride=2, padding=1, rng=rng),
                  sb.Linear(5 * 4 * 3, 6, rng=rng)]
        net = sb.Network(stages, sb.Linear(6, 3, rng=rng))
        x, y = rng.random((5, 1, 9, 7)), rng.integers(0, 3, 5)
    loss, grads = sb.estimate(method, net, x.astype(np.float32), y, rng=1)
    assert np.isfinite(loss) and set(grads) == set(net.params)
    for k, p in net.params.items():
        assert grads[k].shape == p.shape and grads[k].dtype == p.dtype and np.all(np.isfinite(grads[k]))


def test_psa_backend_reference_equals_cpu_on_conv_net():
    net, in_shape = conv_net("conv-linear", seed=7)
    x, y = _batch(in_shape, 7, n=4)
    g_cpu = sb.estimate("psa", net, x, y, rng=2)[1]
    net.backend = "reference"
    g_np = sb.estimate("psa", net, x, y, rng=2)[1]
    for k in g_cpu:
        np.testing.assert_allclose(g_cpu[k], g_np[k], atol=1e-12)


# ---------------------------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("shape,sizes,n_head", [
    ((1, 28, 28), [26, 24, 11, 9, 7, 3, 1, 1], 192),
    ((3, 32, 32), [30, 28, 13, 11, 9, 4, 2, 2], 768),
])
def test_conv_factory_paper_layout(shape, sizes, n_head):
    net = build("conv", shape, 10, rng=1)
    shapes = net.stage_shapes(shape)
    assert [s[1] for s in shapes] == sizes and [s[2] for s in shapes] == sizes
    assert [s[0] for s in shapes] == [96, 96, 96, 192, 192, 192, 192, 192]
    assert [layer.kernel_size for layer in net.stages] == [(3, 3)] * 7 + [(1, 1)]
    assert [layer.stride[0] for layer in net.stages] == [1, 1, 2, 1, 1, 2, 1, 1]
    assert net.head.weight.shape == (10, n_head)
    if shape == (3, 32, 32):
        assert net.n_binary_units(shape) == 221280
    x = np.random.default_rng(0).random((2,) + shape, dtype=np.float32)
    path = net.sample(x, rng=0)
    assert path.logits.shape == (2, 10) and path.logits.dtype == np.float32


def test_conv_factory_reduced_width_trains_one_step():
    net = build("conv", (1, 28, 28), 10, width=0.125, rng=1)
    assert [layer.weight.shape[0] for layer in net.stages] == [12, 12, 12, 24, 24, 24, 24, 24]
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8)
    net.initialize_from_data(x)
    a = net.stages[0].forward(x)
    np.testing.assert_allclose(a.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(a.std(axis=(0, 2, 3)), 1, atol=1e-3)
    for method in ("psa", "st"):
        loss, grads = sb.estimate(method, net, x, y, rng=3)
        assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    with pytest.raises(ValueError, match="input_shape"):
        build("conv", (1, 20, 20), 10)
    with pytest.raises(ValueError, match="channels"):
        build("conv", (1, 28, 28), 10, channels=(4, 4))


def test_conv_factory_input_padding_equals_padded_images():
    """``input_padding=2`` on 28x28 is the paper's layout on 28x28 images zero-padded to 32x32: same map
    sizes, same weights, and the same samples and PSA gradients from the same seed."""
    padded = build("conv", (1, 28, 28), 10, width=0.125, input_padding=2, rng=1)
    plain = build("conv", (1, 32, 32), 10, width=0.125, rng=1)
    assert [s[1] for s in padded.stage_shapes((1, 28, 28))] == [30, 28, 13, 11, 9, 4, 2, 2]
    assert padded.stages[0].padding == (2, 2) and all(layer.padding == (0, 0) for layer in padded.stages[1:])
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 4)
    x32 = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.testing.assert_array_equal(padded.sample(x, rng=5).logits, plain.sample(x32, rng=5).logits)
    loss_p, g_p = sb.estimate("psa", padded, x, y, rng=3)
    loss_q, g_q = sb.estimate("psa", plain, x32, y, rng=3)
    assert loss_p == pytest.approx(loss_q, rel=1e-6)
    for k in g_q:
        np.testing.assert_allclose(g_p[k], g_q[k], rtol=1e-5, atol=1e-6)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="input_padding"):
            build("conv", (1, 28, 28), 10, input_padding=bad)
