r"""The operations of the ``cuda`` backend: launch configurations around :mod:`.kernels`.

* PSA: :func:`flip_propagate_dense`, :func:`flip_propagate_conv` (the signatures of the CPU kernels,
  with the noise code; ``form`` "ratio" for logistic noise, "generic" for any family; the CPU's
  "bounded" form is a vectorization of the same exact sum and runs as "generic" here).
* Packed: :func:`xnor_matmul`, :func:`xnor_matmul_threshold`, :func:`binary_conv2d`,
  :func:`binary_conv2d_threshold`, on operands validated by :mod:`sbnnumba.bitpack` (packed words,
  int64 thresholds rounded up and clipped, bool flips).
* Element-wise: :func:`sample_states`, :func:`st_preactivation_grad`, :func:`psa_preactivation_grad`.

Arrays follow :mod:`sbnnumba.backends.cuda.device`: host or device arrays in, a device result if any input was on the
device, else a NumPy result; host weights go through the device weight cache.

The ratio form of the logistic PSA kernels uses the CPU's limits (:func:`sbnnumba.kernels.cpu.ratio_limits`):
``2W`` is clipped to ``[-C, C]`` and the saturated units (``|a| > A``) are summed exactly by the
generic kernel, restricted to them (a ``d_out`` that is zero elsewhere), and added; that second
pass is always launched but returns at once on the device unless some saturated unit is active (their
count stays on the device: no download, no host round trip). As on the CPU
(:func:`sbnnumba.kernels.cpu.active_saturated`), units whose flips keep them in sigma's flat tail
(``|a| - 2 max|W| > T``) are left out, so a trained network whose saturated units are all inert
skips the pass.
"""
from __future__ import annotations

import numpy as np

from ...kernels.cpu import SIGMA_FLAT, choose_form, ratio_limits
from ...kernels.scalar import LOGISTIC, check_code
from .device import (
    FLOAT_DTYPES,
    _cuda,
    any_device,
    blocks,
    derived,
    flat,
    launch_1d,
    operand,
    require_cuda,
    result,
    weight_operand,
)

_WORD_BITS = 64


def _working_dtype(a, name="a"):
    dtype = np.dtype(a.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype}")
    return dtype


def _check_form(form, noise_code, dtype):
    """The CPU's form names (:func:`sbnnumba.kernels.cpu.choose_form`); "bounded" and "probit" (vectorizations of the
    same exact sum for the CPU) run as "generic" (the device's ``erfc`` is a fast native function)."""
    form = choose_form(form, noise_code, dtype)
    return "generic" if form in ("bounded", "probit") else form


def _ratio_units(da, dxo, dd, dtype, dw, entry, inner):
    """Per-unit arrays of a ratio-form call: ``e, g, gs`` (:func:`sbnnumba.backends.cuda.kernels.ratio_units`) and
    ``d_sat``, the ``d_out`` of the active saturated units (zero elsewhere), and ``n_sat``, their count (a
    one-element int32 device array, not downloaded: the exact pass reads it on the device).
    ``dw`` is the weight (output units or channels first, cached ``reach`` per cache ``entry``);
    ``inner`` the number of consecutive units of ``a`` per row of ``dw`` (1 dense, ``H_out W_out`` conv)."""
    from . import kernels as k
    cuda = _cuda()
    rows = dw.reshape(dw.shape[0], int(np.prod(dw.shape[1:])))

    def make_reach():
        reach = cuda.device_array(rows.shape[0], dtype=dtype)
        launch_1d(k.reach_rows, rows.shape[0], rows, reach)
        return reach

    reach = derived(entry, ("reach_rows", dtype.name), make_reach)
    e, g, gs, d_sat = (cuda.device_array(da.shape, dtype=dtype) for _ in range(4))
    n_sat = cuda.device_array(1, dtype=np.int32)
    k.zero_counter[1, 1](n_sat)  # a kernel, not an upload: a device-resident step makes no host-to-device copy
    launch_1d(k.ratio_units, int(np.prod(da.shape)), flat(da), flat(dxo), flat(dd),
               dtype.type(ratio_limits(dtype)[0]), reach, inner, dtype.type(SIGMA_FLAT[dtype]), flat(e), flat(g),
               flat(gs), flat(d_sat), n_sat)
    return e, g, gs, d_sat, n_sat


def _tiles(defaults, tiles):
    out = dict(defaults)
    if tiles:
        unknown = sorted(set(tiles) - set(out))
        if unknown:
            raise ValueError(f"tiles: unknown keys {unknown}; expected some of {sorted(out)}")
        out.update(tiles)
    return out


# ---------------------------------------------------------------------------------------------------
# PSA flip propagation
# ---------------------------------------------------------------------------------------------------

def flip_propagate_dense(x_in, a, x_out, weight, d_out, noise_code, form="auto", *, weight_version=None,
                         tiles=None):
    r"""PSA flip propagation ``d_in[b,i] = sum_j Delta[b,i,j] d_out[b,j]`` on the GPU.

    Same arguments and result as :func:`sbnnumba.kernels.cpu.flip_propagate_dense`.

    Parameters
    ----------
    x_in : array (B, N_in)
        +-1 input states.
    a, x_out, d_out : arrays (B, N_out)
        Pre-activations, sampled output states, flip effects of the output units.
    weight : array (N_out, N_in)
    noise_code : int
        The noise family's kernel code.
    form : {"auto", "ratio", "generic"}
    weight_version : hashable, optional
        Token that replaces the content check of the weight cache.
    tiles : dict, optional
        Overrides of :data:`sbnnumba.backends.cuda.dense_flip.DENSE_TILE`.

    Returns
    -------
    array (B, N_in)
        In the dtype of ``a``; a device array if any argument was one.
    """
    from . import dense_flip as kd
    from . import kernels as k
    require_cuda()
    cuda = _cuda()
    dtype = _working_dtype(a)
    if len(x_in.shape) != 2 or len(a.shape) != 2 or len(weight.shape) != 2:
        raise ValueError(f"flip_propagate_dense: expected 2-d x_in, a, weight; got shapes {tuple(x_in.shape)}, "
                         f"{tuple(a.shape)}, {tuple(weight.shape)}")
    n_batch, n_in = x_in.shape
    n_out = weight.shape[0]
    if weight.shape[1] != n_in or tuple(a.shape) != (n_batch, n_out):
        raise ValueError(f"flip_propagate_dense: inconsistent shapes x_in {tuple(x_in.shape)}, a {tuple(a.shape)}, "
                         f"weight {tuple(weight.shape)}")
    if tuple(x_out.shape) != tuple(a.shape) or tuple(d_out.shape) != tuple(a.shape):
        raise ValueError(f"flip_propagate_dense: x_out {tuple(x_out.shape)} and d_out {tuple(d_out.shape)} "
                         f"must match a {tuple(a.shape)}")
    form = _check_form(form, noise_code, dtype)
    on_device = any_device(x_in, a, x_out, weight, d_out)
    d_in = cuda.device_array((n_batch, n_in), dtype=dtype)
    if n_batch == 0 or n_in == 0:
        return result(d_in, on_device)
    if n_out == 0:
        return result(cuda.to_device(np.zeros((n_batch, n_in), dtype)), on_device)
    dx, da, dxo, dd = (operand(t, dtype, name) for t, name in
                       ((x_in, "x_in"), (a, "a"), (x_out, "x_out"), (d_out, "d_out")))
    dw, entry = weight_operand(weight, dtype, "weight", weight_version)
    cfg = _tiles(kd.DENSE_TILE, tiles)
    grid = (blocks(n_in, cfg["tile_i"]), blocks(n_batch, cfg["tile_b"]))
    block = (cfg["tile_i"] // cfg["inputs_per_thread"], cfg["tile_b"] // cfg["rows_per_thread"])
    generic = kd.dense_flip_generic_kernel(dtype.name, **cfg)[grid, block]
    if form == "ratio":
        e, g, gs, d_sat, n_sat = _ratio_units(da, dxo, dd, dtype, dw, entry, 1)
        a_term = cuda.device_array((n_batch, 1), dtype=dtype)
        launch_1d(k.sum_axis1, n_batch, gs.reshape(n_batch, n_out, 1), a_term)
        clip = dtype.type(ratio_limits(dtype)[1])

        def make_k():
            kk = cuda.device_array((n_in, n_out), dtype=dtype)
            k.exp2_transpose[(blocks(n_out, 16), blocks(n_in, 16)), (16, 16)](dw, clip, kk)
            return kk

        kk = derived(entry, ("exp2_transpose", dtype.name), make_k)
        kd.dense_flip_ratio_kernel(dtype.name, **cfg)[grid, block](dx, e, g, kk, a_term.reshape(n_batch), d_in)
        # the saturated units, exactly, added to d_in; the kernel returns at once when n_sat[0] == 0
        kd.dense_flip_generic_kernel(dtype.name, gated=True, **cfg)[grid, block](LOGISTIC, dx, da, dxo, d_sat, dw,
                                                                                  n_sat, d_in)
    else:
        generic(int(noise_code), dx, da, dxo, dd, dw, d_in)
    return result(d_in, on_device)


def flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise_code, form="auto", *,
                        weight_version=None):
    r"""PSA flip propagation through a conv layer on the GPU (direct form).

    Same arguments and result as :func:`sbnnumba.kernels.conv_cpu.flip_propagate_conv`.

    Parameters
    ----------
    x_in : array (B, C_in, H, W)
    a, x_out, d_out : arrays (B, C_out, H_out, W_out)
    weight : array (C_out, C_in, kh, kw)
    stride, padding : (int, int)
    noise_code : int
    form : {"auto", "ratio", "generic"}
    weight_version : hashable, optional
        Token that replaces the content check of the weight cache.

    Returns
    -------
    array (B, C_in, H, W)
        In the dtype of ``a``; a device array if any argument was one.
    """
    from . import kernels as k
    from .conv_flip import launch_flip_conv_ratio
    require_cuda()
    cuda = _cuda()
    dtype = _working_dtype(a)
    (sh, sw), (ph, pw) = (int(v) for v in stride), (int(v) for v in padding)
    if len(x_in.shape) != 4 or len(a.shape) != 4 or len(weight.shape) != 4:
        raise ValueError(f"flip_propagate_conv: expected 4-d x_in, a, weight; got shapes {tuple(x_in.shape)}, "
                         f"{tuple(a.shape)}, {tuple(weight.shape)}")
    n_batch, c_in, h, w = x_in.shape
    c_out, c_in_w, kh, kw = weight.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if c_in_w != c_in or tuple(a.shape) != (n_batch, c_out, ho, wo):
        raise ValueError(f"flip_propagate_conv: inconsistent shapes x_in {tuple(x_in.shape)}, a {tuple(a.shape)}, "
                         f"weight {tuple(weight.shape)} (stride {(sh, sw)}, padding {(ph, pw)})")
    if tuple(x_out.shape) != tuple(a.shape) or tuple(d_out.shape) != tuple(a.shape):
        raise ValueError(f"flip_propagate_conv: x_out {tuple(x_out.shape)} and d_out {tuple(d_out.shape)} "
                         f"must match a {tuple(a.shape)}")
    form = _check_form(form, noise_code, dtype)
    on_device = any_device(x_in, a, x_out, weight, d_out)
    n_in_units = n_batch * c_in * h * w
    if n_in_units == 0 or c_out == 0 or ho <= 0 or wo <= 0:
        return result(cuda.to_device(np.zeros((n_batch, c_in, h, w), dtype)), on_device)
    dx, da, dxo, dd = (operand(t, dtype, name) for t, name in
                       ((x_in, "x_in"), (a, "a"), (x_out, "x_out"), (d_out, "d_out")))
    dw, entry = weight_operand(weight, dtype, "weight", weight_version)
    d_in = cuda.device_array((n_batch, c_in, h, w), dtype=dtype)
    n_units = n_batch * c_out * ho * wo

    def generic(code, d, out, gate=None):  # gate: the exact pass of a ratio call (adds to out if gate[0] > 0)
        v = cuda.device_array(a.shape, dtype=dtype)
        f_lo = cuda.device_array(a.shape, dtype=dtype)
        f_hi = cuda.device_array(a.shape, dtype=dtype)
        launch_1d(k.generic_units, n_units, int(code), flat(da), flat(dxo), flat(v), flat(f_lo), flat(f_hi))
        if gate is None:
            launch_1d(k.flip_conv_generic, n_in_units, int(code), dx, v, dxo, d, f_lo, f_hi, dw, sh, sw, ph, pw, out)
        else:
            launch_1d(k.flip_conv_generic_gated, n_in_units, int(code), dx, v, dxo, d, f_lo, f_hi, dw, sh, sw, ph,
                      pw, gate, out)

    if form == "ratio":
        e, g, gs, d_sat, n_sat = _ratio_units(da, dxo, dd, dtype, dw, entry, ho * wo)
        t_sum = cuda.device_array((n_batch, ho * wo), dtype=dtype)
        launch_1d(k.sum_axis1, n_batch * ho * wo, gs.reshape(n_batch, c_out, ho * wo), t_sum)

        clip = dtype.type(ratio_limits(dtype)[1])

        def make_k():
            kk = cuda.device_array(weight.shape, dtype=dtype)
            launch_1d(k.exp2, kk.size, flat(dw), clip, flat(kk))
            return kk

        kk = derived(entry, ("exp2", dtype.name), make_k)
        launch_flip_conv_ratio(dx, e, g, t_sum.reshape(n_batch, ho, wo), kk, (sh, sw), (ph, pw), d_in)
        generic(LOGISTIC, d_sat, d_in, gate=n_sat)  # the saturated units, exactly (nothing if n_sat[0] == 0)
    else:
        generic(noise_code, dd, d_in)
    return result(d_in, on_device)


# ---------------------------------------------------------------------------------------------------
# Bit-packed kernels
# ---------------------------------------------------------------------------------------------------

def _n_words(k):
    return -(-int(k) // _WORD_BITS)


def _words_operand(x, name):
    return operand(x, np.dtype(np.uint64), name)


def _weight_words(weights, name):
    """Device copy of packed weight words (host words through the weight cache)."""
    return weight_operand(weights.words, np.dtype(np.uint64), name, None)[0]


def xnor_matmul(a_words, weights, k, *, tiles=None):
    r"""XNOR-popcount product ``out[i, j] = k - 2 sum_w popc(a[i, w] ^ b[j, w])``.

    Operands are checked by :func:`sbnnumba.bitpack.matmul`.

    Parameters
    ----------
    a_words : array (M, ceil(k/64)) uint64
    weights : PreparedWeights
        ``weights.words`` (N, ceil(k/64)) uint64 (host words are cached on the device).
    k : int
        True reduction length.
    tiles : dict, optional
        Overrides of :data:`.kernels.GEMM_TILE`.

    Returns
    -------
    array (M, N) int32
    """
    from . import kernels as kern
    require_cuda()
    cuda = _cuda()
    on_device = any_device(a_words, weights.words)
    m, n = a_words.shape[0], weights.words.shape[0]
    out = cuda.device_array((m, n), dtype=np.int32)
    if m and n:
        cfg = _tiles(kern.GEMM_TILE, tiles)
        grid = (blocks(n, cfg["tile_n"]), blocks(m, cfg["tile_m"]))
        block = (cfg["tile_n"], cfg["tile_m"] // cfg["rows_per_thread"])
        kern.xnor_gemm_kernel(**cfg)[grid, block](_words_operand(a_words, "a_words"),
                                                  _weight_words(weights, "b_words"), int(k), out)
    return result(out, on_device)


def xnor_matmul_threshold(a_words, weights, k, thresholds, flip, *, tiles=None):
    r"""Fused packed ``(dot < t[j]) XOR flip[j]`` (bit set = -1).

    Parameters
    ----------
    a_words, weights, k
        As in :func:`xnor_matmul`.
    thresholds : array (N,) int64
        Rounded up and clipped by :func:`sbnnumba.bitpack.matmul_threshold`.
    flip : array (N,) bool
    tiles : dict, optional
        Overrides of :data:`.kernels.GEMM_THRESHOLD_TILE`.

    Returns
    -------
    array (M, ceil(N/64)) uint64
    """
    from . import kernels as kern
    require_cuda()
    cuda = _cuda()
    on_device = any_device(a_words, weights.words)
    m, n = a_words.shape[0], weights.words.shape[0]
    out = cuda.device_array((m, _n_words(n)), dtype=np.uint64)
    if m and n:
        cfg = _tiles(kern.GEMM_THRESHOLD_TILE, tiles)
        grid = (_n_words(n), blocks(m, cfg["tile_m"]))
        block = (64, cfg["tile_m"] // cfg["rows_per_thread"])
        kern.xnor_gemm_threshold_kernel(**cfg)[grid, block](
            _words_operand(a_words, "a_words"), _weight_words(weights, "b_words"), int(k),
            cuda.to_device(np.ascontiguousarray(thresholds, np.int64)), cuda.to_device(np.asarray(flip, np.uint8)),
            out)
    return result(out, on_device)


def _conv_dots(x_words, weights, c_in, stride, padding):
    from . import kernels as kern
    cuda = _cuda()
    (sh, sw), (ph, pw) = stride, padding
    _, height, width, _ = x_words.shape
    c_out, kh, kw, _ = weights.words.shape
    out_hw = ((height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1)
    out = cuda.device_array((x_words.shape[0], c_out) + out_hw, dtype=np.int32)
    launch_1d(kern.xnor_conv2d, out.size, _words_operand(x_words, "x_words"), _weight_words(weights, "w_words"),
              int(c_in), sh, sw, ph, pw, out)
    return out


def binary_conv2d(x_words, weights, c_in, stride, padding):
    r"""Binary convolution of packed maps with exact zero padding (operands checked by :func:`sbnnumba.bitpack.conv2d`).

    Parameters
    ----------
    x_words : array (B, H, W, ceil(c_in/64)) uint64
    weights : PreparedWeights
        ``weights.words`` (C_out, kh, kw, ceil(c_in/64)) uint64.
    c_in : int
    stride, padding : (int, int)

    Returns
    -------
    array (B, C_out, H_out, W_out) int32
    """
    require_cuda()
    return result(_conv_dots(x_words, weights, c_in, stride, padding), any_device(x_words, weights.words))


def binary_conv2d_threshold(x_words, weights, c_in, thresholds, flip, stride, padding):
    r"""Packed ``(conv < t[c]) XOR flip[c]`` in the input layout: the int32 convolution, then the packed sign.

    Parameters
    ----------
    x_words, weights, c_in, stride, padding
        As in :func:`binary_conv2d`.
    thresholds : array (C_out,) int64
    flip : array (C_out,) bool

    Returns
    -------
    array (B, H_out, W_out, ceil(C_out/64)) uint64
    """
    from . import kernels as kern
    require_cuda()
    cuda = _cuda()
    dots = _conv_dots(x_words, weights, c_in, stride, padding)
    b, c_out, ho, wo = dots.shape
    out = cuda.device_array((b, ho, wo, _n_words(c_out)), dtype=np.uint64)
    launch_1d(kern.sign_pack_channels, out.size, dots, cuda.to_device(np.ascontiguousarray(thresholds, np.int64)),
              cuda.to_device(np.asarray(flip, np.uint8)), out)
    return result(out, any_device(x_words, weights.words))


# ---------------------------------------------------------------------------------------------------
# Element-wise pieces of a training step
# ---------------------------------------------------------------------------------------------------

def _elementwise(kernel, noise_code, arrays, names, dtype):
    cuda = _cuda()
    shape = tuple(arrays[0].shape)
    for x, name in zip(arrays[1:], names[1:]):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} like {names[0]}, got {tuple(x.shape)}")
    on_device = any_device(*arrays)
    devs = [operand(x, dtype, name) for x, name in zip(arrays, names)]
    out = cuda.device_array(shape, dtype=dtype)
    n = int(np.prod(shape))
    launch_1d(kernel, n, check_code(int(noise_code)), *(flat(d) for d in devs), flat(out))  # no default family
    return result(out, on_device)


def sample_states(a, u, noise_code):
    """Binary states ``x = +1 if u < F(a) else -1`` from pre-drawn uniforms.

    Parameters
    ----------
    a, u : arrays of one shape
    noise_code : int

    Returns
    -------
    array, the shape and dtype of ``a``
    """
    from . import kernels as k
    require_cuda()
    return _elementwise(k.sample_states, noise_code, (a, u), ("a", "u"), _working_dtype(a))


def st_preactivation_grad(a, g, noise_code):
    """Deep-ST pre-activation gradient ``g_a = 2 p(a) g`` (``2 p(a)``: the derivative of the mean response
    ``2F(a) - 1``).

    Parameters
    ----------
    a, g : arrays of one shape
    noise_code : int

    Returns
    -------
    array, the shape and dtype of ``a``
    """
    from . import kernels as k
    require_cuda()
    return _elementwise(k.st_preactivation_grad, noise_code, (a, g), ("a", "g"), _working_dtype(a))


def psa_preactivation_grad(x, a, d, noise_code):
    """PSA pre-activation gradient ``g_a = -x p(a) d`` (spec psa.md, Eq. 2).

    Parameters
    ----------
    x, a, d : arrays of one shape
    noise_code : int

    Returns
    -------
    array, the shape and dtype of ``a``
    """
    from . import kernels as k
    require_cuda()
    return _elementwise(k.psa_preactivation_grad, noise_code, (x, a, d), ("x", "a", "d"), _working_dtype(a))
