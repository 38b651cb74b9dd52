r"""PSA flip propagation through a conv layer, logistic ratio form, restructured for the GPU.

Spec psa.md, section 2.10; the CPU kernel is :func:`sbnnumba.kernels.conv_cpu.flip_propagate_conv`, the
NumPy reference :func:`sbnnumba.kernels.conv_reference.flip_propagate_conv`. For an input unit
``(b, r, y, x)`` with state ``s = x_in[b, r, y, x]``::

    d_in = A - sum_{c, taps} g[b, c, oy, ox] / (1 + e[b, c, oy, ox] K_s[c, r, dy, dx])

over the taps ``(dy, dx)`` whose output position ``((y + ph - dy) / sh, (x + pw - dx) / sw)`` is an
integer inside the output map (padding never flips), with ``g = x_out d_out``, ``e = exp(-a)``,
``A = sum_{taps} T[b, oy, ox]``, ``T = sum_c g sigma(a)``, and ``K_s = exp(2 s W)``: ``K = exp(2W)``
for ``s = +1`` and ``1 / K`` for ``s = -1`` (``sigma(a - 2 W s) = 1 / (1 + e^{-a} e^{2 W s})``).

Layout (:func:`flip_conv_ratio_kernel`): the input units are cut into tiles of ``tile_p``
consecutive positions ``(b, y, x)`` (the batch folded in, so that the small maps of deep stages
still fill a block) times ``tile_r`` input channels; a block of ``(tile_p, tile_r /
channels_per_thread)`` threads computes one tile, each thread ``channels_per_thread`` channels of
one position. The block walks the output channels in tiles of ``tile_c``, staging ``K`` and
``1 / K`` of ``(tile_c, tile_r, kh kw)`` in shared memory (the reciprocal once per staged weight,
not per connection); each thread then reads ``e`` and ``g`` of its output positions (coalesced
across the warp's positions, each value serving ``channels_per_thread`` connections) and the
weights of its channels from shared memory (the same address for a warp but for the sign:
broadcasts). Two output channels share one reciprocal, as in the dense kernel
(:func:`sbnnumba.backends.cuda.dense_flip.dense_flip_ratio_kernel`), with the same clamp
(:data:`sbnnumba.kernels.ratio_pair.RATIO_CLAMP`, as the CPU kernels) and the same accuracy bound:
``|d_in - exact| <= ~1e-6 sum |g|`` over the unit's connections in float32, plus the rounding of
the sum. Saturated units (``|a| > A``) must come with ``g = 0`` (their exact terms are added by
the generic kernel, as for dense layers).
"""
import functools

import numba
import numpy as np
from numba import cuda  # a module global: numba's CUDA simulator swaps it inside kernels

from ...kernels.ratio_pair import RATIO_CLAMP
from .device import blocks, in_simulator
from .kernels import _numba_dtype

#: Default tiles on a device: 32 positions x 32 input channels per block (32 x 4 threads, 8 channels
#: each), output channels staged 8 at a time (fewer when ``2 tile_c tile_r kh kw`` values would not fit
#: in :data:`SHARED_BYTES`).
CONV_TILES = dict(tile_p=32, tile_r=32, channels_per_thread=8, tile_c=8)
#: Tiles in numba's CUDA simulator (every thread is a Python thread): 8 x 2 threads.
SIMULATOR_TILES = dict(tile_p=8, tile_r=4, channels_per_thread=2, tile_c=2)
SHARED_BYTES = 40 * 1024  # of the 48 KiB of static shared memory a block may use


def conv_tiles(kh, kw, itemsize, tiles=None):
    """The tile configuration of :func:`flip_conv_ratio_kernel` for a ``kh x kw`` kernel.

    Parameters
    ----------
    kh, kw : int
        Kernel size.
    itemsize : int
        Bytes per value (4 for float32, 8 for float64).
    tiles : dict, optional
        Overrides of the defaults (:data:`CONV_TILES` on a device, :data:`SIMULATOR_TILES` in the
        simulator).

    Returns
    -------
    dict
        ``tile_p, tile_r, channels_per_thread, tile_c``, with ``tile_c`` (even, at least 2) and, if that
        is not enough, ``tile_r`` reduced until ``2 tile_c tile_r kh kw itemsize <= SHARED_BYTES``.

    Raises
    ------
    ValueError
        For unknown keys, or when even 2 output channels of one input channel do not fit.
    """
    cfg = dict(SIMULATOR_TILES if in_simulator() else CONV_TILES)
    if tiles:
        unknown = sorted(set(tiles) - set(cfg))
        if unknown:
            raise ValueError(f"tiles: unknown keys {unknown}; expected some of {sorted(cfg)}")
        cfg.update(tiles)
    per_channel = 2 * kh * kw * itemsize  # K and 1/K of one (output, input) channel pair
    while cfg["tile_r"] > cfg["channels_per_thread"] and 2 * cfg["tile_r"] * per_channel > SHARED_BYTES:
        cfg["tile_r"] //= 2
    fit = SHARED_BYTES // (cfg["tile_r"] * per_channel)
    if fit < 2:
        raise ValueError(f"kernel: a {kh}x{kw} kernel is too large for the shared-memory tiles of the conv flip "
                         f"kernel (tile_r={cfg['tile_r']})")
    cfg["tile_c"] = max(2, min(cfg["tile_c"], fit) // 2 * 2)
    return cfg


@functools.lru_cache(maxsize=None)
def flip_conv_ratio_kernel(dtype_name="float32", kh=3, kw=3, tile_p=32, tile_r=32, channels_per_thread=8, tile_c=8):
    r"""Kernel ``kernel(x_in, e, g, t_sum, k, sh, sw, ph, pw, d_in)`` of the conv ratio form (module docstring).

    ``x_in``, ``d_in`` (B, C_in, H, W); ``e = exp(-a)``, ``g = x_out d_out`` (B, C_out, H_out, W_out);
    ``t_sum = sum_c g sigma(a)`` (B, H_out, W_out); ``k = exp(2W)`` (C_out, C_in, kh, kw), ``2W`` clipped as
    on the CPU; stride and padding as integers. Launch with ``grid = (ceil(B H W / tile_p),
    ceil(C_in / tile_r))``, ``block = (tile_p, tile_r / channels_per_thread)``.

    Parameters
    ----------
    dtype_name : str
        "float32" or "float64".
    kh, kw : int
        Kernel size (compile-time: it shapes the shared-memory tile).
    tile_p, tile_r, channels_per_thread, tile_c : int
        Tiles (:func:`conv_tiles`); ``tile_r`` a multiple of ``channels_per_thread``, ``tile_c`` even.

    Returns
    -------
    numba.cuda dispatcher
        Compiled at the first launch, cached here per argument tuple.

    Raises
    ------
    ValueError
        For tiles that do not divide as required.
    """
    if tile_r % channels_per_thread or tile_c % 2 or min(tile_p, tile_r, channels_per_thread, tile_c) < 1:
        raise ValueError(f"tiles: expected tile_r a multiple of channels_per_thread and an even tile_c, got "
                         f"tile_r={tile_r}, channels_per_thread={channels_per_thread}, tile_c={tile_c}")
    nb = _numba_dtype(dtype_name)
    big = nb(RATIO_CLAMP[dtype_name])
    taps = kh * kw
    cpt, tp, tr, tc = channels_per_thread, tile_p, tile_r, tile_c
    ty_n = tile_r // channels_per_thread
    n_threads = tile_p * ty_n

    @cuda.jit(fastmath=True)
    def kernel(x_in, e, g, t_sum, k, sh, sw, ph, pw, d_in):
        sh_k = cuda.shared.array((2, tc, tr, taps), nb)  # [0]: K, [1]: 1 / K
        acc = cuda.local.array(cpt, nb)
        sel = cuda.local.array(cpt, numba.int32)
        tap_y = cuda.local.array(taps, numba.int32)
        tap_x = cuda.local.array(taps, numba.int32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tp + tx
        r0 = cuda.blockIdx.y * tr
        n_batch, c_in, height, width = x_in.shape
        c_out = k.shape[0]
        ho, wo = e.shape[2], e.shape[3]
        zero = nb(0)
        one = nb(1)
        p = cuda.blockIdx.x * tp + tx
        inside = p < n_batch * height * width
        b = p // (height * width)
        rest = p - b * (height * width)
        y = rest // width
        x = rest - y * width
        ones = zero  # A: the all-ones term
        for q in range(cpt):
            r = r0 + ty + ty_n * q
            acc[q] = zero
            sel[q] = 1 if (inside and r < c_in and x_in[b, r, y, x] < zero) else 0
        # The output position of each tap, or -1 where the tap misses the stride grid or the map: found once,
        # not per output-channel tile (the integer divisions cost more than a tile's multiply-adds).
        for dy in range(kh):
            t_y = y + ph - dy
            for dx in range(kw):
                t_x = x + pw - dx
                tap = dy * kw + dx
                tap_y[tap] = -1
                if inside and t_y >= 0 and t_y % sh == 0 and t_y // sh < ho and t_x >= 0 and t_x % sw == 0 \
                        and t_x // sw < wo:
                    tap_y[tap] = t_y // sh
                    tap_x[tap] = t_x // sw
                    ones += t_sum[b, tap_y[tap], tap_x[tap]]
        for c0 in range(0, c_out, tc):
            for t in range(tid, tc * tr * taps, n_threads):  # coalesced: k[c] is contiguous in (r, dy, dx)
                cc = t // (tr * taps)
                rest_t = t - cc * (tr * taps)
                rr = rest_t // taps
                tap = rest_t - rr * taps
                if c0 + cc < c_out and r0 + rr < c_in:
                    kv = k[c0 + cc, r0 + rr, tap // kw, tap - (tap // kw) * kw]
                    sh_k[0, cc, rr, tap] = kv
                    sh_k[1, cc, rr, tap] = one / kv
                else:  # paired with g = 0 below: no contribution
                    sh_k[0, cc, rr, tap] = one
                    sh_k[1, cc, rr, tap] = one
            cuda.syncthreads()
            for tap in range(taps):
                oy = tap_y[tap]
                if oy >= 0:
                    ox = tap_x[tap]
                    for cc in range(0, tc, 2):
                        c = c0 + cc
                        e0 = e[b, c, oy, ox] if c < c_out else one
                        g0 = g[b, c, oy, ox] if c < c_out else zero
                        e1 = e[b, c + 1, oy, ox] if c + 1 < c_out else one
                        g1 = g[b, c + 1, oy, ox] if c + 1 < c_out else zero
                        for q in range(cpt):
                            rr = ty + ty_n * q
                            den0 = e0 * sh_k[sel[q], cc, rr, tap] + one
                            den1 = e1 * sh_k[sel[q], cc + 1, rr, tap] + one
                            den0 = den0 if den0 < big else big
                            den1 = den1 if den1 < big else big
                            acc[q] += (g0 * den1 + g1 * den0) * (one / (den0 * den1))
            cuda.syncthreads()
        for q in range(cpt):
            r = r0 + ty + ty_n * q
            if inside and r < c_in:
                d_in[b, r, y, x] = ones - acc[q]

    return kernel


def launch_flip_conv_ratio(x_in, e, g, t_sum, k, stride, padding, d_in, tiles=None):
    """Launch :func:`flip_conv_ratio_kernel` over ``d_in`` (device arrays as described there).

    Parameters
    ----------
    x_in, e, g, t_sum, k, d_in : device arrays
        As for :func:`flip_conv_ratio_kernel`; ``d_in`` is written.
    stride, padding : (int, int)
        Of the conv layer.
    tiles : dict, optional
        Overrides of the tile configuration (:func:`conv_tiles`).

    Returns
    -------
    device array
        ``d_in``.
    """
    n_batch, c_in, height, width = x_in.shape
    _, _, kh, kw = k.shape
    cfg = conv_tiles(int(kh), int(kw), np.dtype(d_in.dtype).itemsize, tiles)
    kernel = flip_conv_ratio_kernel(np.dtype(d_in.dtype).name, int(kh), int(kw), **cfg)
    grid = (blocks(n_batch * height * width, cfg["tile_p"]), blocks(c_in, cfg["tile_r"]))
    block = (cfg["tile_p"], cfg["tile_r"] // cfg["channels_per_thread"])
    (sh, sw), (ph, pw) = stride, padding
    kernel[grid, block](x_in, e, g, t_sum, k, int(sh), int(sw), int(ph), int(pw), d_in)
    return d_in
