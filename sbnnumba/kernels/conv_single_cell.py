r"""The logistic ratio form's flip propagation through a 1x1 convolution of a 1x1 map, in one parallel region.

A 1x1 kernel on a 1x1 map (the paper's last stage, 192x1x1 -> 192x1x1) is a dense layer on the channels: with
``x = x_in[:, :, 0, 0]`` (B, C_in), ``W = weight[:, :, 0, 0]`` (C_out, C_in) and the output units' maps
``a, x_out, d_out`` (B, C_out), spec psa.md section 2.10 reads

.. math::

    d^{in}[b, r] = A[b] - \sum_{c \text{ pairs}} \Big(\frac{g[b,c]}{D[b,c,r]} + \frac{g[b,c+1]}{D[b,c+1,r]}\Big),
    \qquad D[b,c,r] = \min(1 + e^{-a[b,c]} K[c,r], \mathrm{big}), \quad K[c,r] = e^{2 W[c,r] x[b,r]},

``g = x_out d_out`` and ``A[b] = sum_c g[b,c] sigma(a[b,c])`` (the ratio form of
:mod:`sbnnumba.kernels.conv_cpu`; each pair of terms by :func:`sbnnumba.kernels.ratio_pair.pair_term`).

The general path (:func:`sbnnumba.kernels.conv_cpu.flip_propagate_conv`) makes such a call in four parallel
regions (x_in's layout copy, the factors ``e^{-a}`` and ``e^{+-2W}``, the all-ones grid, the kernel) around NumPy's
``tanh`` and ``np.einsum``. On two threads with passive waiting every region wakes the sleeping worker (9-80 us on the
machines measured, against a kernel of 0.12-0.17 ms), and the factor pass ran on one thread (its work is below a
thread's minimum). Here the call is one region over ``T`` tasks (the call's threads), task ``t`` owning the input
channels ``r`` in ``[t C_in / T, (t + 1) C_in / T)``: it computes its own columns of ``e^{+-2W}``, its own int8 copy of
x, and ``e^{-a}`` of every output unit (the same values in every task: ``B C_out`` exponentials, a sixth of the
weights' ``2 C_out C_in`` at the paper's stage), then sums its columns. No task waits for another, so the region
needs no barrier. ``A`` comes from NumPy before the region (``tanh`` and ``np.einsum``, :func:`all_ones_one_cell`: the
general path's own calls).

**Same bits as the general path.** Every value is formed by the same expressions in the same dtype: the weight factors
by the general path's own rule (:func:`sbnnumba.kernels.ratio_pair.weight_factors`), ``e^{-a}`` by
:func:`sbnnumba.kernels.float32_exp.exp_f32_saturating` of the same arguments, each accumulator adds its pairs ``c =
0, 2, 4, ...`` from 0 with :func:`sbnnumba.kernels.conv_channels.channel_pair_terms` (the channel kernel's loop), and
``d_in = (0 + A) - acc`` as the general path's grid gives it. ``tests/test_conv_single_cell.py`` compares the bits
with both layouts of the general path for one to four tasks. float32 only (the float64 ratio form takes NumPy's
``exp``); calls with saturated units (``|a| > A``, :func:`sbnnumba.kernels.cpu.ratio_limits`) return None before
summing, and the general path sums them directly.
"""
import numba
import numpy as np
from numba import prange

from ..runtime import blockwise
from .conv_channels import MAX_BLOCK, channel_pair_terms
from .float32_exp import exp_f32_saturating
from .ratio_pair import PAIR_FASTMATH, weight_factors
from .workspace import scratch


def single_cell(x_shape, a_shape, w_shape, dtype):
    """Whether a ratio-form call runs here: a 1x1 kernel on a 1x1 input map giving a 1x1 output map (no padding), in
    float32.

    Parameters
    ----------
    x_shape : (B, C_in, H, W)
    a_shape : (B, C_out, H_out, W_out)
    w_shape : (C_out, C_in, kh, kw)
    dtype : numpy dtype
        The call's working dtype.

    Returns
    -------
    bool
    """
    return (tuple(x_shape[2:]) == tuple(a_shape[2:]) == tuple(w_shape[2:]) == (1, 1)
            and np.dtype(dtype) == np.float32)


def all_ones_one_cell(g_map, half):
    """The all-ones term of a one-cell output map: ``A[b] = sum_c g[b,c] sigma(a[b,c])``.

    Parameters
    ----------
    g_map : ndarray (B, C_out, 1, 1)
        ``x_out d_out``.
    half : ndarray (B, C_out, 1, 1)
        ``tanh(a / 2)``; overwritten with ``sigma(a) = (tanh(a / 2) + 1) 0.5``.

    Returns
    -------
    ndarray (B, 1, 1)
        ``A`` by ``np.einsum`` (its own summation order over ``c``: the ratio form's bits on one-cell maps).
    """
    np.add(half, 1, out=half)
    np.multiply(half, 0.5, out=half)
    return np.einsum("bcyx,bcyx->byx", g_map, half)


def flip_ratio_single_cell(x_in, a, x_out, d_out, weight, limit, clip, big, threads):
    """The ratio form on a 1x1 map with a 1x1 kernel (module docstring), float32.

    Parameters
    ----------
    x_in : ndarray (B, C_in, 1, 1)
        +-1 input states (any real or integer dtype; read as int8, as the general path's layout copy does).
    a, x_out, d_out : float32 ndarray (B, C_out, 1, 1)
        Pre-activations, output states and flip effects.
    weight : float32 ndarray (C_out, C_in, 1, 1)
    limit, clip, big : float32
        ``A`` and ``C`` of :func:`sbnnumba.kernels.cpu.ratio_limits`, the clamp of
        :func:`sbnnumba.kernels.ratio_pair.clamp`.
    threads : int
        The call's Numba threads (tasks of the region).

    Returns
    -------
    ndarray (B, C_in, 1, 1) or None
        ``d_in``; None when some output unit is saturated (``|a| > limit``): the caller takes the general path.
    """
    dtype = a.dtype
    x_out, d_out = (np.asarray(t, dtype=dtype) for t in (x_out, d_out))
    n_batch, c_out = a.shape[:2]
    c_in = weight.shape[1]
    c_pad = c_out + c_out % 2
    n_task = -(-c_in // threads)  # input channels per task, at most
    half = scratch("single_half", a.shape, dtype)
    np.multiply(a, dtype.type(0.5), out=half)  # a / 2 exactly, as the general path's factor pass writes it
    blockwise(lambda part: np.tanh(part, out=part), half)
    g_map = scratch("single_g", a.shape, dtype)
    np.multiply(x_out, d_out, out=g_map)
    t_map = all_ones_one_cell(g_map, half)
    d_in = np.empty(x_in.shape, dtype=dtype)
    w2 = np.ascontiguousarray(weight, dtype=dtype).reshape(c_out, c_in)
    buffers = (scratch("single_k", (threads, 2, c_pad, n_task), dtype),
               scratch("single_e", (threads, n_batch, c_pad), dtype),
               scratch("single_sel", (threads, n_batch, n_task), np.int8))
    saturated = _flip_ratio_single_cell(np.ascontiguousarray(x_in).reshape(n_batch, c_in),
                                        np.ascontiguousarray(a).reshape(n_batch, c_out), g_map.reshape(n_batch, c_out),
                                        t_map.reshape(n_batch), w2, limit, clip, big, *buffers,
                                        d_in.reshape(n_batch, c_in))
    return None if saturated else d_in


@numba.njit(error_model="numpy", cache=True)
def _unit_factor_row(a_row, limit, e_row):
    # e_row[c] = e^{-a[c]} (the neutral channel's e^{-inf} = 0 past C_out); returns the saturated units (|a| > limit)
    # of the row. Not inlined (as ratio_pair.weight_factors: the kernel's fastmath would drop exp_f32_saturating's
    # range tests).
    n = a_row.shape[0]
    count = 0
    for c in range(n):
        count += abs(a_row[c]) > limit
    for c in range(n):
        e_row[c] = exp_f32_saturating(-a_row[c])
    for c in range(n, e_row.shape[0]):
        e_row[c] = 0
    return count


@numba.njit(parallel=True, fastmath=PAIR_FASTMATH, error_model="numpy", cache=True)
def _flip_ratio_single_cell(x, a, g, t_map, w, limit, clip, big, k_buf, e_buf, sel_buf, d_in):
    # x (B, C_in), a and g = x_out d_out (B, C_out), t_map (B,) the all-ones term, w (C_out, C_in); per task t:
    # k_buf[t] (2, C_pad, n) its columns of e^{+-2W} (the neutral channel's row e^0), e_buf[t] (B, C_pad) e^{-a},
    # sel_buf[t] (B, n) its columns of x as int8; d_in (B, C_in) written. Returns the number of saturated units
    # (every task counts them all); with any, nothing is summed.
    n_batch, c_in = x.shape
    c_out = a.shape[1]
    n_tasks, _, c_pad, _ = k_buf.shape
    one = a.dtype.type(1)
    zero = a.dtype.type(0)
    saturated = np.empty(n_tasks, dtype=np.int64)  # per task (a reduction variable would add a second region)
    for t in prange(n_tasks):
        i0 = t * c_in // n_tasks
        i1 = (t + 1) * c_in // n_tasks
        n = i1 - i0
        k_pos, k_neg, e_t, sel = k_buf[t, 0], k_buf[t, 1], e_buf[t], sel_buf[t]
        for c in range(c_pad):
            if c < c_out:
                # through row views the copy vectorizes (with 2-d indexing the call took 1.14x as long)
                src, row = w[c, i0:i1], k_pos[c, :n]
                for i in range(n):
                    row[i] = src[i]
                weight_factors(row, k_neg[c, :n], clip, True)
            else:
                k_pos[c, :n] = 1  # e^0, the general path's neutral factor
                k_neg[c, :n] = 1
        count = 0
        for b in range(n_batch):
            count += _unit_factor_row(a[b], limit, e_t[b])
            for i in range(n):
                sel[b, i] = x[b, i0 + i]
        saturated[t] = count
        if count == 0:
            acc = np.empty((MAX_BLOCK, n), dtype=a.dtype)
            for b0 in range(0, n_batch, MAX_BLOCK):
                n_ex = min(MAX_BLOCK, n_batch - b0)
                acc[:] = 0
                for c in range(0, c_pad, 2):
                    for e in range(n_ex):
                        b = b0 + e
                        g1 = g[b, c + 1] if c + 1 < c_out else zero
                        channel_pair_terms(n, acc[e], sel[b, :n], k_pos[c, :n], k_neg[c, :n], k_pos[c + 1, :n],
                                           k_neg[c + 1, :n], g[b, c], e_t[b, c], g1, e_t[b, c + 1], one, big)
                for e in range(n_ex):
                    base = zero + t_map[b0 + e]  # the general path's all-ones grid: 0 plus the term
                    row = acc[e]
                    for i in range(n):
                        d_in[b0 + e, i0 + i] = base - row[i]
    total = 0
    for t in range(n_tasks):
        total += saturated[t]
    return total
