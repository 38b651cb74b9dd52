"""Bit-packed XNOR-popcount kernels: exactness against float arithmetic, Numba vs NumPy reference,
property-based pack/unpack and dot-product checks, and input validation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_checks import has_avx512_vpopcntdq, run_without_jit

from sbnnumba import bitpack
from sbnnumba.kernels import bitpack as kernels

HYPOTHESIS = settings(max_examples=40, deadline=None)


def pm1(rng, *shape, dtype=np.float32):
    """Random {-1, +1} array."""
    return np.where(rng.random(shape) < 0.5, -1, 1).astype(dtype)


def conv_float(x, w, stride, padding):
    """Float64 cross-correlation with zero padding: the oracle for the packed convolutions."""
    (sh, sw), (ph, pw) = stride, padding
    batch, channels, height, width = x.shape
    c_out, _, kh, kw = w.shape
    padded = np.zeros((batch, channels, height + 2 * ph, width + 2 * pw))
    padded[:, :, ph:ph + height, pw:pw + width] = x
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    out = np.zeros((batch, c_out, out_h, out_w))
    for dy in range(kh):
        for dx in range(kw):
            taps = padded[:, :, dy:dy + sh * (out_h - 1) + 1:sh, dx:dx + sw * (out_w - 1) + 1:sw]
            out += np.einsum("bchw,oc->bohw", taps, w[:, :, dy, dx].astype(np.float64))
    return out


def signs(dots, thresholds, flip):
    """+1 where dot >= threshold (per last-axis column), negated where flip."""
    y = np.where(dots >= thresholds, 1.0, -1.0)
    return np.where(flip, -y, y)


def padding_is_zero(words, k):
    return k % 64 == 0 or not np.any(words[..., -1] >> np.uint64(k % 64))


# ------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------

def test_pack_layout_and_sign_convention():
    # element i -> bit i; set bit = negative; 0 and -0.0 are +1 (bit 0)
    x = np.array([-1.0, 1.0, 1.0, -1.0, 0.0, -0.0, -1e-30, 5.0])
    assert bitpack.pack(x).tolist() == [0b1001 | (1 << 6)]
    x = np.ones(65, np.float32)
    x[64] = -1
    x[0] = -1
    words = bitpack.pack(x)
    assert words.dtype == np.uint64 and words.shape == (2,)
    assert words.tolist() == [1, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int16, np.int64, np.uint8, np.float16])
def test_pack_dtypes_match_reference(dtype):
    rng = np.random.default_rng(1)
    x = (pm1(rng, 3, 2, 70) * rng.integers(1, 100, (3, 2, 70))).astype(dtype)
    words = bitpack.pack(x)
    assert words.shape == (3, 2, 2)
    np.testing.assert_array_equal(words, kernels.pack_reference(x))


def test_pack_non_contiguous_and_empty():
    rng = np.random.default_rng(2)
    x = pm1(rng, 70, 5)
    np.testing.assert_array_equal(bitpack.pack(x.T), kernels.pack_reference(np.ascontiguousarray(x.T)))
    assert bitpack.pack(np.zeros((3, 0))).shape == (3, 0)
    assert bitpack.pack(np.zeros((0, 100))).shape == (0, 2)


@HYPOTHESIS
@given(hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=150),
                  elements=st.sampled_from([-1, 1])))
def test_pack_unpack_round_trip(x):
    k = x.shape[-1]
    words = bitpack.pack(x)
    assert words.shape == x.shape[:-1] + (-(-k // 64),)
    assert padding_is_zero(words, k) if words.size else True
    np.testing.assert_array_equal(words, kernels.pack_reference(x))
    np.testing.assert_array_equal(bitpack.unpack(words, k, dtype=np.int8), x)
    np.testing.assert_array_equal(bitpack.unpack(words, k), x.astype(np.float32))


def test_pack_channels_round_trip():
    rng = np.random.default_rng(3)
    x = pm1(rng, 2, 70, 3, 5)
    words = bitpack.pack_channels(x)
    assert words.shape == (2, 3, 5, 2)
    np.testing.assert_array_equal(words, bitpack.pack(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(bitpack.unpack_channels(words, 70), x)


# ------------------------------------------------------------------------------------------------
# GEMM
# ------------------------------------------------------------------------------------------------

@HYPOTHESIS
@given(st.integers(1, 300).flatmap(lambda k: st.tuples(
    hnp.arrays(np.int8, k, elements=st.sampled_from([-1, 1])),
    hnp.arrays(np.int8, k, elements=st.sampled_from([-1, 1])))))
def test_dot_product_property(vectors):
    a, b = vectors
    k = a.shape[0]
    a_words, b_words = bitpack.pack(a[None]), bitpack.pack(b[None])
    expected = int(a.astype(np.int64) @ b)
    assert expected == k - 2 * int(kernels.popcount_reference(a_words ^ b_words).sum())
    assert bitpack.matmul(a_words, b_words, k)[0, 0] == expected


GEMM_SHAPES = [(1, 1, 1), (1, 5, 63), (3, 1, 64), (5, 7, 65), (2, 33, 130), (9, 70, 200), (33, 65, 1),
               (70, 300, 257), (4, 32, 64)]


@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_matmul_equals_float_matmul(m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b = pm1(rng, m, k), pm1(rng, n, k)
    a_words, b_words = bitpack.pack(a), bitpack.pack(b)
    expected = a.astype(np.float64) @ b.T
    out = bitpack.matmul(a_words, b_words, k)
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(bitpack.matmul(a_words, bitpack.prepare_weights(b_words), k), expected)
    np.testing.assert_array_equal(kernels.matmul_reference(a_words, b_words, k), expected)


def test_matmul_empty_dimensions():
    rng = np.random.default_rng(4)
    b_words = bitpack.pack(pm1(rng, 3, 10))
    assert bitpack.matmul(np.zeros((0, 1), np.uint64), b_words, 10).shape == (0, 3)
    assert bitpack.matmul(b_words, np.zeros((0, 1), np.uint64), 10).shape == (3, 0)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 70, 130), (4, 64, 64), (6, 129, 65), (33, 300, 63)])
def test_matmul_threshold_equals_packed_float_sign(m, n, k):
    rng = np.random.default_rng(m + n + k)
    a, b = pm1(rng, m, k), pm1(rng, n, k)
    dots = a.astype(np.float64) @ b.T
    # integer thresholds hit ties (dot == t -> +1); half-integers and +-inf too
    thresholds = rng.choice(dots.ravel(), n) + rng.choice([0.0, 0.5, -0.5, 1.0], n)
    thresholds[rng.random(n) < 0.1] = np.inf
    thresholds[rng.random(n) < 0.1] = -np.inf
    flip = rng.random(n) < 0.3
    a_words, b_words = bitpack.pack(a), bitpack.pack(b)
    out = bitpack.matmul_threshold(a_words, b_words, k, thresholds, flip)
    assert out.dtype == np.uint64 and out.shape == (m, -(-n // 64))
    assert padding_is_zero(out, n)
    np.testing.assert_array_equal(out, bitpack.pack(signs(dots, thresholds, flip)))
    np.testing.assert_array_equal(out, kernels.matmul_threshold_reference(a_words, b_words, k, thresholds, flip))
    # without flip, scalar threshold
    np.testing.assert_array_equal(bitpack.matmul_threshold(a_words, bitpack.prepare_weights(b_words), k, 0),
                                  bitpack.pack(signs(dots, 0, False)))


def test_dense_layers_chain_without_unpacking():
    rng = np.random.default_rng(5)
    x, w1, w2 = pm1(rng, 7, 100), pm1(rng, 70, 100), pm1(rng, 9, 70)
    t1 = rng.integers(-5, 6, 70)
    hidden = bitpack.matmul_threshold(bitpack.pack(x), bitpack.pack(w1), 100, t1)
    out = bitpack.matmul(hidden, bitpack.pack(w2), 70)
    expected = signs(x.astype(np.float64) @ w1.T, t1, False) @ w2.T
    np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------------------------
# Convolution
# ------------------------------------------------------------------------------------------------

# (B, C_in, H, W, C_out, kh, kw, stride, padding)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 5, 7, 5, 3, 3, 1, 1),
    (1, 65, 6, 4, 33, 2, 3, (2, 1), (2, 0)),
    (2, 130, 7, 7, 70, 3, 1, 2, (0, 2)),
    (1, 64, 9, 6, 32, 3, 3, 2, 2),
    (2, 63, 4, 9, 3, 1, 5, (1, 2), (1, 2)),
    (1, 5, 3, 3, 4, 5, 5, 1, 2),  # kernel larger than the image: every output touches the padding
]


def _normalize(value):
    return value if isinstance(value, tuple) else (value, value)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_equals_float_conv(case):
    batch, c_in, height, width, c_out, kh, kw, stride, padding = case
    rng = np.random.default_rng(sum(np.ravel(case[:7])))
    x, w = pm1(rng, batch, c_in, height, width), pm1(rng, c_out, c_in, kh, kw)
    x_words, w_words = bitpack.pack_channels(x), bitpack.pack_channels(w)
    expected = conv_float(x, w, _normalize(stride), _normalize(padding))
    out = bitpack.conv2d(x_words, w_words, c_in, stride, padding)
    assert out.dtype == np.int32 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(bitpack.conv2d(x_words, bitpack.prepare_weights(w_words), c_in, stride, padding),
                                  expected)
    np.testing.assert_array_equal(
        kernels.conv2d_reference(x_words, w_words, c_in, _normalize(stride), _normalize(padding)), expected)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_threshold_equals_packed_float_sign(case):
    batch, c_in, height, width, c_out, kh, kw, stride, padding = case
    rng = np.random.default_rng(sum(np.ravel(case[:7])) + 1)
    x, w = pm1(rng, batch, c_in, height, width), pm1(rng, c_out, c_in, kh, kw)
    x_words, w_words = bitpack.pack_channels(x), bitpack.pack_channels(w)
    dots = conv_float(x, w, _normalize(stride), _normalize(padding))  # (B, C_out, H_out, W_out)
    thresholds = rng.choice(dots.ravel(), c_out) + rng.choice([0.0, 0.5, -1.0], c_out)  # includes ties
    flip = rng.random(c_out) < 0.4
    out = bitpack.conv2d_threshold(x_words, w_words, c_in, thresholds, flip, stride, padding)
    assert out.dtype == np.uint64 and out.shape == (batch,) + dots.shape[2:] + (-(-c_out // 64),)
    expected = signs(dots.transpose(0, 2, 3, 1), thresholds, flip)
    np.testing.assert_array_equal(out, bitpack.pack(expected))
    np.testing.assert_array_equal(out, kernels.conv2d_threshold_reference(
        x_words, w_words, c_in, thresholds, flip, _normalize(stride), _normalize(padding)))


def test_conv_layers_chain_without_unpacking():
    rng = np.random.default_rng(6)
    x, w1, w2 = pm1(rng, 2, 3, 8, 6), pm1(rng, 70, 3, 3, 3), pm1(rng, 5, 70, 3, 2)
    t1 = rng.integers(-3, 4, 70)
    hidden = bitpack.conv2d_threshold(bitpack.pack_channels(x), bitpack.pack_channels(w1), 3, t1, stride=2, padding=1)
    out = bitpack.conv2d(hidden, bitpack.pack_channels(w2), 70, padding=(1, 0))
    hidden_float = signs(conv_float(x, w1, (2, 2), (1, 1)).transpose(0, 2, 3, 1), t1, False).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(out, conv_float(hidden_float, w2, (1, 1), (1, 0)))


def test_padding_corrections_match_direct_sum():
    rng = np.random.default_rng(7)
    tap_sums = rng.integers(-9, 10, (4, 3, 2))
    row_class, row_ranges = kernels.padding_classes(5, 3, 2, 2, 4)
    col_class, col_ranges = kernels.padding_classes(4, 2, 1, 1, 5)
    corrections = kernels.padding_corrections(tap_sums, row_ranges, col_ranges)
    for oy in range(4):
        for ox in range(5):
            padded = [(dy, dx) for dy in range(3) for dx in range(2)
                      if not (0 <= oy * 2 - 2 + dy < 5 and 0 <= ox - 1 + dx < 4)]
            expected = sum((tap_sums[:, dy, dx] for dy, dx in padded), np.zeros(4, np.int64))
            np.testing.assert_array_equal(corrections[row_class[oy], col_class[ox]], expected)


# ------------------------------------------------------------------------------------------------
# Numba kernels vs NumPy reference, and the pure-Python (NUMBA_DISABLE_JIT) path
# ------------------------------------------------------------------------------------------------

def test_numba_kernels_equal_reference_on_random_words():
    rng = np.random.default_rng(8)
    k = 200
    a_words = kernels.pack_reference(pm1(rng, 13, k))
    b_words = kernels.pack_reference(pm1(rng, 45, k))
    panels = np.empty((2, 32 * a_words.shape[1]), np.uint64)
    kernels.words_to_panels(b_words, panels)
    out = np.empty((13, 45), np.int32)
    kernels.xnor_gemm(a_words, panels, k, out)
    np.testing.assert_array_equal(out, kernels.matmul_reference(a_words, b_words, k))

    x = rng.normal(size=(6, 130))
    words = np.empty((6, 3), np.uint64)
    has_nan = np.empty(6, np.bool_)
    kernels.pack_rows(x, words, has_nan)
    np.testing.assert_array_equal(words, kernels.pack_reference(x))
    assert not has_nan.any()


def test_kernels_run_as_python_without_jit():
    """With NUMBA_DISABLE_JIT=1 the same kernels run as Python (intrinsics replaced by NumPy twins)."""
    script = """
        import numpy as np
        from sbnnumba import bitpack
        from sbnnumba.kernels import bitpack as kernels
        rng = np.random.default_rng(0)
        pm1 = lambda *s: np.where(rng.random(s) < 0.5, -1, 1).astype(np.float32)
        a, b = pm1(5, 70), pm1(33, 70)
        aw, bw = bitpack.pack(a), bitpack.pack(b)
        assert (bitpack.matmul(aw, bw, 70) == a @ b.T).all()
        t = rng.integers(-5, 6, 33)
        assert (bitpack.matmul_threshold(aw, bw, 70, t) == kernels.matmul_threshold_reference(aw, bw, 70, t)).all()
        xw, ww = bitpack.pack_channels(pm1(1, 3, 4, 5)), bitpack.pack_channels(pm1(4, 3, 3, 3))
        assert (bitpack.conv2d(xw, ww, 3, 2, 1) == kernels.conv2d_reference(xw, ww, 3, (2, 2), (1, 1))).all()
        assert (bitpack.conv2d_threshold(xw, ww, 3, 0, None, 1, 2)
                == kernels.conv2d_threshold_reference(xw, ww, 3, 0, None, (1, 1), (2, 2))).all()
        print("ok")
    """
    run_without_jit(script)



@pytest.mark.skipif(not has_avx512_vpopcntdq(), reason="needs a CPU with AVX-512 VPOPCNTDQ")
def test_gemm_kernel_uses_vector_popcount():
    import numba

    # an uncached twin: assembly is not kept for kernels loaded from the on-disk cache
    twin = numba.njit(parallel=True)(kernels.xnor_gemm.py_func)
    out = np.empty((4, 32), np.int32)
    twin(np.zeros((4, 1), np.uint64), np.zeros((1, 32), np.uint64), 64, out)
    assert "vpopcntq" in twin.inspect_asm(twin.signatures[0])


# ------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(9)
    a_words = bitpack.pack(pm1(rng, 3, 70))
    b_words = bitpack.pack(pm1(rng, 4, 70))
    with pytest.raises(TypeError, match="x: expected a real"):
        bitpack.pack(np.ones(3, complex))
    with pytest.raises(TypeError, match="x: expected a real"):
        bitpack.pack(np.ones(3, bool))
    with pytest.raises(ValueError, match="x: .*NaN"):
        bitpack.pack(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="x: expected at least 1 dimension"):
        bitpack.pack(1.0)
    with pytest.raises(ValueError, match="k: k=200 needs"):
        bitpack.unpack(a_words, 200)
    with pytest.raises(TypeError, match="a_words: expected a uint64"):
        bitpack.matmul(a_words.astype(np.int64), b_words, 70)
    with pytest.raises(ValueError, match="a_words: expected a 2-d"):
        bitpack.matmul(a_words[0], b_words, 70)
    with pytest.raises(ValueError, match="k: k=64 needs"):
        bitpack.matmul(a_words, b_words, 64)
    with pytest.raises(TypeError, match="k: expected an integer"):
        bitpack.matmul(a_words, b_words, 70.0)
    with pytest.raises(ValueError, match="b_words: expected 2 words per row"):
        bitpack.matmul(a_words, b_words[:, :1], 70)
    with pytest.raises(ValueError, match="a_words: padding bits"):
        bitpack.matmul(a_words | np.uint64(1 << 63), b_words, 70)
    with pytest.raises(ValueError, match="thresholds: expected a scalar or shape"):
        bitpack.matmul_threshold(a_words, b_words, 70, np.zeros(3))
    with pytest.raises(ValueError, match="thresholds: .*NaN"):
        bitpack.matmul_threshold(a_words, b_words, 70, np.full(4, np.nan))
    with pytest.raises(TypeError, match="thresholds: expected real"):
        bitpack.matmul_threshold(a_words, b_words, 70, "0")
    with pytest.raises(TypeError, match="flip: expected a boolean"):
        bitpack.matmul_threshold(a_words, b_words, 70, 0, flip=np.zeros(4))
    with pytest.raises(ValueError, match="flip: expected shape"):
        bitpack.matmul_threshold(a_words, b_words, 70, 0, flip=np.zeros(3, bool))

    x_words = bitpack.pack_channels(pm1(rng, 1, 3, 4, 4))
    w_words = bitpack.pack_channels(pm1(rng, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="x_words: expected a 4-d"):
        bitpack.conv2d(x_words[0], w_words, 3)
    with pytest.raises(ValueError, match="c_in: c_in=65 needs"):
        bitpack.conv2d(x_words, w_words, 65)
    with pytest.raises(ValueError, match="stride: expected an integer >= 1"):
        bitpack.conv2d(x_words, w_words, 3, stride=0)
    with pytest.raises(ValueError, match="padding: expected an integer >= 0"):
        bitpack.conv2d(x_words, w_words, 3, padding=(1, -1))
    with pytest.raises(ValueError, match="w_words: kernel 3x3 does not fit"):
        bitpack.conv2d(x_words[:, :2], w_words, 3)
    with pytest.raises(ValueError, match="w_words: expected prepared weights of a 4-d"):
        bitpack.conv2d(x_words, bitpack.prepare_weights(b_words), 3)
    with pytest.raises(ValueError, match="x: expected a 4-d"):
        bitpack.pack_channels(np.ones((2, 3)))
