r"""Register- and shared-memory-tiled GEMM ``C = alpha op(A) op(B) + beta C`` for the device-resident step.

The device-resident step (:mod:`sbnnumba.training.resident`) runs three GEMM patterns per layer:
the forward product ``a = x W^T`` (``trans_b``), the weight gradient ``dW = g_a^T x`` (``trans_a``)
and the ST backward ``delta = g_a W`` (neither). :func:`gemm` runs all of them, in float32 or
float64, through one kernel per (dtype, transposition, tile configuration), built by
:func:`gemm_kernel`.

Tiling (defaults :data:`GEMM_TILES`): a block of ``(tile_n / thread_n, tile_m / thread_m)`` threads
computes a ``tile_m x tile_n`` tile of ``C``, each thread ``thread_m x thread_n`` outputs held in
registers (rows ``ty + T_y r``, columns ``tx + T_x s``: strided, so that the shared-memory reads of a
warp are broadcasts or hit distinct banks and the final stores are coalesced). The K dimension is
walked in tiles of ``tile_k``: the ``tile_m x tile_k`` slice of ``op(A)`` and the ``tile_k x tile_n``
slice of ``op(B)`` are stored in shared memory (``op(A)`` transposed, padded by one column against
bank conflicts on the transposing store), and while the block computes on one K tile each thread
already holds its share of the next one in registers (software pipelining: the global loads of
tile ``t + 1`` are in flight during the ``tile_k thread_m thread_n`` multiply-adds of tile ``t``).
Global loads are coalesced for every transposition: each operand is read along its contiguous
dimension. Per K step a thread does ``thread_m + thread_n`` shared loads for ``thread_m thread_n``
multiply-adds (8 for 16 with the default 4 x 4).

Edges: slices past the matrix are filled with zeros (they add nothing) and outputs past it are not
stored, so any ``M, N, K`` works. ``beta == 0`` does not read ``C`` (as BLAS: NaN in ``C`` is ignored).

Why numba.cuda and not a library: see docs/guide/gpu.md (nvmath-python's device GEMM needs numba-cuda,
libmathdx and the CUDA toolkit wheels, cannot run in numba's simulator, and no GPU was available to
compare it). The tile configuration is a parameter (``tiles=``) so that ``bench/gpu.py`` can try
others on a device.
"""
import functools

import numpy as np
from numba import cuda  # a module global: numba's CUDA simulator swaps it inside kernels

from .device import blocks, in_simulator, is_device_array
from .kernels import _numba_dtype  # (importing .kernels also restores np.row_stack before any compilation)

#: Default tiles: 64 x 64 outputs per block, 16 x 16 threads with 4 x 4 outputs each, K tiles of 16
#: (8 KiB + 8 KiB of shared memory in float32 ... float64).
GEMM_TILES = dict(tile_m=64, tile_n=64, tile_k=16, thread_m=4, thread_n=4)
#: Tiles used in numba's CUDA simulator, which runs every thread as a Python thread: 16 threads per block.
SIMULATOR_TILES = dict(tile_m=8, tile_n=8, tile_k=4, thread_m=2, thread_n=2)


def _check_tiles(tile_m, tile_n, tile_k, thread_m, thread_n):
    for name, value in (("tile_m", tile_m), ("tile_n", tile_n), ("tile_k", tile_k), ("thread_m", thread_m),
                        ("thread_n", thread_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if tile_m % thread_m or tile_n % thread_n:
        raise ValueError(f"tiles: expected tile_m a multiple of thread_m and tile_n of thread_n, got "
                         f"tile_m={tile_m}, thread_m={thread_m}, tile_n={tile_n}, thread_n={thread_n}")
    n_threads = (tile_m // thread_m) * (tile_n // thread_n)
    if (tile_m * tile_k) % n_threads or (tile_k * tile_n) % n_threads:
        raise ValueError(f"tiles: expected tile_m tile_k and tile_k tile_n to be multiples of the {n_threads} "
                         f"threads of a block, got tile_m={tile_m}, tile_n={tile_n}, tile_k={tile_k}")
    return n_threads


@functools.lru_cache(maxsize=None)
def gemm_kernel(dtype_name="float32", trans_a=False, trans_b=False, tile_m=64, tile_n=64, tile_k=16, thread_m=4,
                thread_n=4):
    r"""The tiled GEMM kernel ``kernel(a, b, alpha, beta, c)`` for one dtype, transposition and tile shape.

    Computes ``c = alpha op(a) op(b) + beta c`` with ``op(a)`` (M, K), ``op(b)`` (K, N), ``c`` (M, N);
    ``op(a) = a.T`` if ``trans_a`` (``a`` stored (K, M)), likewise ``b`` ((N, K) if ``trans_b``).
    Launch with ``grid = (ceil(N / tile_n), ceil(M / tile_m))`` and ``block = (tile_n / thread_n,
    tile_m / thread_m)``; ``alpha``, ``beta`` in the working dtype.

    Parameters
    ----------
    dtype_name : str
        "float32" or "float64".
    trans_a, trans_b : bool
        Whether ``a`` resp. ``b`` is stored transposed.
    tile_m, tile_n, tile_k : int
        Block tile of ``C`` and the K tile staged in shared memory.
    thread_m, thread_n : int
        Outputs per thread (register tile); ``tile_m / thread_m * tile_n / thread_n`` threads per block
        must divide ``tile_m tile_k`` and ``tile_k tile_n``.

    Returns
    -------
    numba.cuda dispatcher
        Compiled lazily at the first launch (cached here per argument tuple).

    Raises
    ------
    ValueError
        For tile shapes that do not divide as required.
    """
    n_threads = _check_tiles(tile_m, tile_n, tile_k, thread_m, thread_n)
    nb = _numba_dtype(dtype_name)
    tx_n, ty_n = tile_n // thread_n, tile_m // thread_m
    tm, tn, tk, rm, rn = tile_m, tile_n, tile_k, thread_m, thread_n
    loads_a, loads_b = tm * tk // n_threads, tk * tn // n_threads
    tm_pad, tn_pad = tm + 1, tn  # shared-memory shapes must be compile-time constants

    # Which element of op(a)'s (tile_m x tile_k) slice resp. op(b)'s (tile_k x tile_n) slice the flat index t
    # of a thread's load denotes, ordered so that consecutive t read consecutive addresses in global memory.
    @cuda.jit(device=True, inline=True)
    def a_element(t):
        if trans_a:  # a stored (K, M): consecutive t walk along M
            kk = t // tm
            return t - kk * tm, kk
        mm = t // tk  # a stored (M, K): consecutive t walk along K
        return mm, t - mm * tk

    @cuda.jit(device=True, inline=True)
    def b_element(t):
        if trans_b:  # b stored (N, K): consecutive t walk along K
            nn = t // tk
            return t - nn * tk, nn
        kk = t // tn  # b stored (K, N): consecutive t walk along N
        return kk, t - kk * tn

    @cuda.jit(device=True, inline=True)
    def fetch(a, b, m0, n0, k0, m, n, kdim, tid, ra, rb):
        """This thread's share of the K tile at ``k0`` into registers (zero past the edges)."""
        for q in range(loads_a):
            mm, kk = a_element(tid + q * n_threads)
            inside = m0 + mm < m and k0 + kk < kdim
            if trans_a:
                ra[q] = a[k0 + kk, m0 + mm] if inside else nb(0)
            else:
                ra[q] = a[m0 + mm, k0 + kk] if inside else nb(0)
        for q in range(loads_b):
            kk, nn = b_element(tid + q * n_threads)
            inside = k0 + kk < kdim and n0 + nn < n
            if trans_b:
                rb[q] = b[n0 + nn, k0 + kk] if inside else nb(0)
            else:
                rb[q] = b[k0 + kk, n0 + nn] if inside else nb(0)

    @cuda.jit(fastmath=True)
    def kernel(a, b, alpha, beta, c):
        sa = cuda.shared.array((tk, tm_pad), nb)  # sa[k, m] = op(a)[m0 + m, k0 + k]
        sb = cuda.shared.array((tk, tn_pad), nb)  # sb[k, n] = op(b)[k0 + k, n0 + n]
        ra = cuda.local.array(loads_a, nb)  # the next K tile, in registers
        rb = cuda.local.array(loads_b, nb)
        acc = cuda.local.array((rm, rn), nb)
        fa = cuda.local.array(rm, nb)
        fb = cuda.local.array(rn, nb)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tx_n + tx
        m0 = cuda.blockIdx.y * tm
        n0 = cuda.blockIdx.x * tn
        m = c.shape[0]
        n = c.shape[1]
        kdim = a.shape[0] if trans_a else a.shape[1]
        for r in range(rm):
            for s in range(rn):
                acc[r, s] = nb(0)
        fetch(a, b, m0, n0, 0, m, n, kdim, tid, ra, rb)
        for k0 in range(0, kdim, tk):
            for q in range(loads_a):
                mm, kk = a_element(tid + q * n_threads)
                sa[kk, mm] = ra[q]
            for q in range(loads_b):
                kk, nn = b_element(tid + q * n_threads)
                sb[kk, nn] = rb[q]
            cuda.syncthreads()
            if k0 + tk < kdim:  # the next tile's global loads overlap the multiply-adds below
                fetch(a, b, m0, n0, k0 + tk, m, n, kdim, tid, ra, rb)
            for kk in range(tk):
                for r in range(rm):
                    fa[r] = sa[kk, ty + ty_n * r]
                for s in range(rn):
                    fb[s] = sb[kk, tx + tx_n * s]
                for r in range(rm):
                    for s in range(rn):
                        acc[r, s] += fa[r] * fb[s]
            cuda.syncthreads()
        for r in range(rm):
            row = m0 + ty + ty_n * r
            for s in range(rn):
                col = n0 + tx + tx_n * s
                if row < m and col < n:
                    if beta == 0:
                        c[row, col] = alpha * acc[r, s]
                    else:
                        c[row, col] = alpha * acc[r, s] + beta * c[row, col]

    return kernel


def default_tiles():
    """The tile configuration :func:`gemm` uses unless told otherwise.

    Returns
    -------
    dict
        :data:`GEMM_TILES` on a device, :data:`SIMULATOR_TILES` in numba's CUDA simulator (16 threads
        per block instead of 256: the simulator runs each thread as a Python thread).
    """
    return dict(SIMULATOR_TILES if in_simulator() else GEMM_TILES)


def gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, tiles=None):
    r"""``c = alpha op(a) op(b) + beta c`` on device arrays (in place), with the tiled kernel.

    Parameters
    ----------
    a : device array
        (M, K), or (K, M) if ``trans_a``.
    b : device array
        (K, N), or (N, K) if ``trans_b``.
    c : device array
        (M, N), overwritten; read only when ``beta != 0``. All three of one dtype, float32 or float64,
        C-contiguous (numba device arrays or simulator arrays).
    trans_a, trans_b : bool
        Whether ``op`` transposes ``a`` resp. ``b``.
    alpha, beta : float
        Scalars, converted to the working dtype.
    tiles : dict, optional
        Overrides of :func:`default_tiles` (keys of :data:`GEMM_TILES`).

    Returns
    -------
    device array
        ``c``.

    Raises
    ------
    TypeError
        When an operand is not a device array, or the dtypes differ or are not float32/float64.
    ValueError
        When the shapes do not chain, or for invalid ``tiles``.
    """
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not is_device_array(t):
            raise TypeError(f"{name}: expected a device array, got {type(t).__name__}")
        if len(t.shape) != 2:
            raise ValueError(f"{name}: expected a 2-d array, got shape {tuple(t.shape)}")
    dtype = np.dtype(c.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)) or np.dtype(a.dtype) != dtype or \
            np.dtype(b.dtype) != dtype:
        raise TypeError(f"a, b, c: expected one dtype, float32 or float64, got {np.dtype(a.dtype)}, "
                        f"{np.dtype(b.dtype)}, {dtype}")
    m, kdim = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    kb, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if kb != kdim or tuple(c.shape) != (m, n):
        raise ValueError(f"gemm: expected op(a) (M, K), op(b) (K, N), c (M, N); got op(a) {(m, kdim)}, "
                         f"op(b) {(kb, n)}, c {tuple(c.shape)}")
    cfg = default_tiles()
    if tiles:
        unknown = sorted(set(tiles) - set(cfg))
        if unknown:
            raise ValueError(f"tiles: unknown keys {unknown}; expected some of {sorted(cfg)}")
        cfg.update(tiles)
    if m == 0 or n == 0:
        return c
    kernel = gemm_kernel(dtype.name, bool(trans_a), bool(trans_b), **cfg)
    grid = (blocks(n, cfg["tile_n"]), blocks(m, cfg["tile_m"]))
    block = (cfg["tile_n"] // cfg["thread_n"], cfg["tile_m"] // cfg["thread_m"])
    kernel[grid, block](a, b, dtype.type(alpha), dtype.type(beta), c)
    return c
