r"""Numba CPU kernels for the PSA flip propagation through dense layers.

The PSA backward recurrence (spec psa.md, Eq. 3) through a dense layer is

.. math::

    d^{in}_{bi} = \sum_j \Delta_{bij}\, d^{out}_{bj}, \qquad
    \Delta_{bij} = F(-x_{bj}(a_{bj} - 2 W_{ji} x_{bi})) - F(-x_{bj} a_{bj}).

The (B, N_in, N_out) tensor Delta is never formed: each ``d_in[b, i]`` accumulates its sum
over ``j`` on the fly, in parallel over the (b, i) pairs.

Four forms:

* **generic** (every noise family): one stable difference of F per connection
  (:func:`sbnnumba.kernels.scalar.cdf_diff`); scalar code with branches and a library ``erfc``, used for normal
  noise in float64.
* **probit** (normal noise, float32): the same stable difference with ``Phi`` by the branch-free float32
  :func:`sbnnumba.kernels.probit.normal_cdf` and ``Phi(v)``, ``Phi(-v)`` per output unit, so the loop vectorizes
  (its CDFs a block of 64 at a time in passes, :func:`sbnnumba.kernels.probit.erfc_pos_passes`: the same bits);
  each difference within ``7 u`` of the exact one (``u = 2^-24``), the class of the float32 ratio form's bound. A
  call with a NaN or infinite pre-activation or weight runs the generic form (:func:`probit_or_generic`).
* **bounded** (uniform and triangular noise, whose F is piecewise polynomial on [-1, 1]): the same
  difference in a branch-free closed form (:func:`sbnnumba.kernels.scalar.bounded_cdf_diff`, clips
  and selects), so the loop vectorizes (measured against the other forms: ``docs/performance.md``).
* **logistic ratio form** (spec psa.md, sections 2.9-2.10):
  ``d_in[b,i] = A[b] - sum_j g[b,j] / (1 + e^{-a[b,j]} e^{2 W[j,i] x[b,i]})`` with
  ``g = x_out * d_out`` and ``A[b] = sum_j g[b,j] sigma(a[b,j])``; the exponentials are
  precomputed per unit and per weight, so that a term of an input at ``x = +1`` is ``h / (c + k)`` with
  ``c = e^{a}``, ``h = g e^{a}`` per unit and ``k = e^{2W}`` per weight. For ``x[b,i] = -1`` the identity
  ``1/(1 + e^{-a}/k) = 1 - 1/(1 + e^{+a} k)`` turns the sum into the same one with ``c = e^{-a}``, so only
  ``k = e^{2W}`` (transposed) is needed, and the kernel groups each example's input units by sign so that a block
  of 4 shares its loads.
  **Two output units per division**: the lanes add the terms of units ``j`` and ``j' = j + 16`` as one,
  ``h/D + h'/D' = fma(h, D', h' D) / (D D')`` (:func:`ratio_pair_value`; the rule of
  :mod:`sbnnumba.kernels.ratio_pair`, in this form's variables): per pair of connections two adds, three products or
  FMAs and one division (a reciprocal estimate and a Newton step, ``arcp``) instead of two (its measured gain: run
  log of 2026-12-07, session 29). ``D D'`` must stay in the float range: ``c`` lies in
  ``[e^{-A}, e^{A}]`` and ``k`` in ``[e^{-C}, e^{C}]`` (:func:`ratio_limits`), so ``D D'`` spans
  ``2^{-86.6} .. 2^{144.3}`` in float32; ``c``, ``k`` and ``h`` are multiplied by :data:`RATIO_SCALE` (``2^-14``,
  float64 ``2^-72``), which moves it to ``2^{-114.6} .. 2^{116.4}``, and each example's ``h`` by ``2^{-E_b}``
  with ``max_j |g[b,j]| < 2^{E_b}`` (the result by ``2^{E_b}``), which bounds the numerators alike. These are powers
  of two: every scaled factor is the unscaled one's bits times the scale, a lone term ``h/(c + k)`` keeps its bits
  (a layer of fewer than 32 outputs, whose terms all run one by one, gives the bits of the unpaired form), and a
  pair's value is within ``6u (|h/D| + |h'/D'|)`` of the exact sum of its two terms (``u = 2^-24``; one rounding
  each for ``D``, ``D'``, ``D D'``, the product ``h' D``, the FMA, and at most two for the division), against
  ``3u`` per term for two divisions, plus where a numerator or the pair falls below the normal range (tiny ``g``
  against large ``D``) twice the smallest subnormal over ``D D'`` and twice the smallest subnormal: at most
  ``2^-32 max_j |g[b,j]|`` once scaled back (float32; ``2^-62`` in float64). ``tests/test_kernels_dense.py`` checks
  the bound over the factors' whole range and the exactness of the scalings.
  The input units are cut into chunks whose rows of ``k`` fit in L2 (about 128 KiB, half of the 256 KiB L2 of older
  Intel client cores), and every example passes over one chunk before the next, instead of streaming all of ``k``
  from L3 per example.
  Each sum over ``j`` runs in explicit lanes added in a fixed order, then the last ``N_out mod 32`` terms in
  order (:func:`_flip_dense_ratio`, :mod:`sbnnumba.kernels.lanes`): with fastmath's ``reassoc`` the sums had other
  bits when the kernel was loaded from Numba's cache than when it was compiled.
  The per-unit factors come from one ``exp`` and one fused pass (:func:`_ratio_units`); the
  transpose of ``2W`` goes through 8x8 blocks transposed in vector registers
  (:func:`sbnnumba.kernels.transpose.clipped_double_transpose`); both exponentials by
  :func:`sbnnumba.kernels.float32_exp.exp_in_place` (float32: the library's ``exp_f32``, one vectorized pass).
  Overflow (spec pitfall 6: ``e^{-a} e^{2wx}`` beyond the float range, then ``inf * 0``) is
  prevented by two limits per dtype (:func:`ratio_limits`, ``A + C`` below ``log`` of the
  largest float): ``2 W x`` is clipped to ``[-C, C]``, which moves a term by less
  than ``e^{-(C-A)}`` (``e^-20`` in float32, ``e^-100`` in float64), and the pairs ``(b, j)`` with
  ``|a[b,j]| > A`` are removed from the ratio sum (``g[b,j] = 0``) and summed directly,
  ``g (sigma(a) - sigma(a - 2 W x))`` with one ``exp`` per connection of those pairs only
  (:func:`_flip_dense_logistic_saturated`), except the *inert* ones (:func:`active_saturated`), whose
  flips cannot move ``sigma`` by a rounding unit and are left out. Saturated units or large weights
  therefore never switch a whole layer to the generic form, whose stable F difference per
  connection costs a library ``exp`` or ``erfc`` and branches (about two orders of magnitude slower than
  the ratio form: ``bench/psa_dense.py``).

Kernels take preallocated outputs and never draw random numbers. (About 730 lines: the three forms share the
checks, the saturated-unit split and the host routing kept here; the lane helpers live in :mod:`.lanes`.)
"""
import math

import numba
import numpy as np
from numba import prange

from ..runtime import kernel_threads
from . import lanes, probit, workspace
from .float32_exp import exp_in_place
from .probit import normal_cdf, normal_cdf_array
from .ratio_pair import fma
from .scalar import (
    FLIP_FORMS,
    FORM_DTYPES,
    KERNEL_FAMILIES,
    TRIANGULAR,
    bounded_cdf_diff,
    cdf_diff,
    dtype_name,
    flip_forms,
)
from .transpose import blocked_transpose, clipped_double_transpose

# Ratio form (CPU and numba.cuda kernels): pre-activation limit A and weight-exponent clip C per dtype,
# A + C below log(max float) (88.72 / 709.78), so e^{-a} e^{2xw} never overflows. Clipping 2xw to [-C, C] changes a term
# 1/(1 + e^{-a + 2xw}) by less than e^{-(C - A)} (both values are then within e^{-(C-A)} of 0 or of 1):
# e^-20 = 2e-9 in float32 (0.035 of its unit roundoff 2^-24), e^-100 in float64. Units with |a| > A are summed
# directly (split_saturated, then the *_logistic_saturated kernels). The CPU dense kernel's pairs multiply two
# denominators c + k, each within (e^-A, e^C + e^A]: with C = 50 (float32) their product spans 2^-86.6 .. 2^144.3, which
# RATIO_SCALE moves inside the float range (module docstring).
RATIO_LIMITS = {np.dtype(np.float32): (30.0, 50.0), np.dtype(np.float64): (300.0, 400.0)}

# The dense ratio kernel's factors c = e^{+-a} and k = e^{2W} are multiplied by RATIO_SCALE (a power of two: exact),
# so that a pair's denominator (c + k)(c' + k') lies in 2^-114.6 .. 2^116.4 (float32) or 2^-1009.6 .. 2^1010.2
# (float64), some 11 bits inside the normal range at both ends. Each example's g is scaled by 2^{-E_b} < 1 / max|g|,
# E_b within +-RATIO_GRAD_EXPONENT (so that 2^{-E_b} is a normal float), which bounds the numerators the same way.
RATIO_SCALE = {np.dtype(np.float32): 2.0 ** -14, np.dtype(np.float64): 2.0 ** -72}
RATIO_GRAD_EXPONENT = {np.dtype(np.float32): 125, np.dtype(np.float64): 1021}
PAIR_LANES = lanes.LANES // 2  # the dense ratio kernel pairs output units j0 + l and j0 + l + PAIR_LANES


EXP_ARG_LIMIT = {np.dtype(np.float32): 80.0, np.dtype(np.float64): 700.0}  # exp(+-limit) is finite

# Flat tails of sigma: for |t| > T, sigma(t) is within e^{-T} of 0 or 1, below half a rounding unit
# (e^-17 = 4.1e-8 < 2^-24 = 6.0e-8 in float32; e^-37 = 8.5e-17 < 2^-53 = 1.1e-16 in float64).
SIGMA_FLAT = {np.dtype(np.float32): 17.0, np.dtype(np.float64): 37.0}


def ratio_limits(dtype):
    """Limits of the CPU ratio form.

    Parameters
    ----------
    dtype : numpy dtype
        float32 or float64.

    Returns
    -------
    (A, C) : (float, float)
        ``|a| <= A`` required of the units summed by the ratio form, ``2 W x`` clipped to ``[-C, C]``
        (:data:`RATIO_LIMITS`).
    """
    return RATIO_LIMITS[np.dtype(dtype)]


_ROWS = 4  # input units per task in the ratio kernel: the output-unit rows of e^{-+a} and g are loaded once for 4
# k rows of one chunk of input units: stays in L2 while every example passes over it. Half of a 256 KiB L2, so that
# the examples' rows of e^{+-a} and g and the outputs stay beside it: with 512 KiB (a Zen 3 core's whole L2) the
# 1024 x 1024 flip ran 1.02-1.15x slower there alone and 1.01-1.03x inside steps (run log of 2026-12-07, session 23).
# Smaller chunks send more units through the one-row loop of the last partial block (about 3 in 32 units at 32 per
# chunk); the bits do not depend on the chunk (every row sums in the same lanes and order).
_CHUNK_BYTES = 1 << 17


def _chunk_units(n_in, n_out, itemsize):
    """Input units per chunk of the ratio kernel: a multiple of 4 whose rows of ``k`` fill about ``_CHUNK_BYTES``."""
    rows = _CHUNK_BYTES // max(1, n_out * itemsize) // _ROWS * _ROWS
    return max(_ROWS, min(rows, -(-n_in // _ROWS) * _ROWS))


@numba.njit(parallel=True, cache=True)
def _sign_order(x_in, chunk, order, n_pos):
    # The input units are cut into chunks of `chunk` consecutive units. Within each chunk, order[b] lists the
    # units of example b with x = +1 first, then those with x = -1; n_pos[b, c] counts the first group of
    # chunk c. The ratio kernel then takes its 4-unit blocks within one group of one chunk.
    # Branch-free (random signs would mispredict half the time, 5x slower); unsigned indices, so that LLVM
    # neither handles negative indices nor turns the count into a gather (0.24 -> 0.13 ms at 128 x 1024).
    n_batch, n_in = x_in.shape
    n_chunks = n_pos.shape[1]
    zero = x_in.dtype.type(0)
    for b in prange(n_batch):
        x_row = x_in[b]
        o_row = order[b]
        for c in range(n_chunks):
            c0 = c * chunk
            c1 = min(c0 + chunk, n_in)
            count = 0
            for i in range(c0, c1):
                count += x_row[np.uint64(i)] > zero
            n_pos[b, c] = count
            p = c0
            q = c0 + count
            for i in range(c0, c1):
                positive = x_row[np.uint64(i)] > zero
                o_row[np.uint64(p if positive else q)] = i
                p += positive
                q += 1 - positive


@numba.njit(inline="always")
def _ratio_task(task, n_pos, chunk, per_b, n_in):
    # Task -> (example b, input units order[b, i0:i1], their sign): tasks run chunk by chunk, then example by
    # example; the first ceil(n_pos / 4) blocks of an example's chunk hold its x = +1 units, the rest its x = -1
    # units (empty tasks get i0 >= i1).
    n_batch = n_pos.shape[0]
    ch = task // (n_batch * per_b)
    rest = task - ch * (n_batch * per_b)
    b = rest // per_b
    blk = rest - b * per_b
    c0 = ch * chunk
    n_p = n_pos[b, ch]
    pos_blocks = (n_p + _ROWS - 1) // _ROWS
    if blk < pos_blocks:
        i0 = c0 + blk * _ROWS
        return b, i0, min(i0 + _ROWS, c0 + n_p), True
    i0 = c0 + n_p + (blk - pos_blocks) * _ROWS
    return b, i0, min(i0 + _ROWS, min(c0 + chunk, n_in)), False


@numba.njit(inline="always")
def _ratio_side(b, positive, c_pos, h_pos, c_neg, h_neg, base_pos, base_neg, one):
    # The per-unit rows, base and sign of example b's units with x = +1 (positive) or x = -1
    if positive:
        return c_pos[b], h_pos[b], base_pos[b], one
    return c_neg[b], h_neg[b], base_neg[b], -one


# The ratio kernel: fastmath without "reassoc" (sums in the order written, sbnnumba/kernels/lanes.py) and without
# "afn"; "arcp" with "nnan"/"ninf" (inputs finite by construction) lets the vectorized lanes divide by a reciprocal
# estimate and a Newton step. One kernel for every layer size: a layer of fewer than 32 outputs has no full lane block
# and sums its terms one by one in order. (An earlier kernel with fastmath=True served layers below 32 outputs; its
# vectorized main loop starts at 4 lanes x 4 sums of float64 where LLVM prefers 256-bit vectors (Intel's AVX-512
# server cores), and there it gave other bits once loaded from Numba's cache, 2026-12-05, tests/test_kernels_dense.py.)
_LANE_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract"}


@numba.njit(inline="always")
def ratio_pairs4(s0, s1, s2, s3, c_row, h_row, k0, k1, k2, k3, n_full):
    """The ratio kernel's inner loop: four rows of ``k`` against each load of the per-unit factors, two output units
    per division.

    Lane ``l < PAIR_LANES`` of ``s_r`` adds, for ``j = j0 + l`` and ``j' = j + PAIR_LANES`` over the lane blocks
    ``j0 = 0, LANES, ... < n_full`` in that order (:mod:`sbnnumba.kernels.lanes`), the pair
    ``h[j] / D + h[j'] / D' = fma(h[j], D', h[j'] D) / (D D')`` with ``D = c[j] + k_r[j]``, ``D' = c[j'] + k_r[j']``
    (:func:`ratio_pair_value`); lanes ``l >= PAIR_LANES`` stay 0. Compiled into its callers (``bench/psa_dense.py``
    times it alone).

    Parameters
    ----------
    s0, s1, s2, s3 : lane arrays (LANES,)
        Accumulators (:func:`sbnnumba.kernels.lanes.zeros`), updated.
    c_row, h_row : ndarray (N_out,)
        ``s e^{+-a}`` and ``s 2^{-E} g e^{+-a}`` of one example (:func:`_ratio_units`).
    k0, k1, k2, k3 : ndarray (N_out,)
        Rows of ``k = s e^{2 W^T}``.
    n_full : int
        ``N_out`` rounded down to whole lane blocks.
    """
    for j0 in range(0, n_full, lanes.LANES):
        for lane in range(PAIR_LANES):
            j = np.uint64(j0 + lane)  # unsigned: no negative-index test, so the lane loads stay contiguous
            jj = np.uint64(j0 + lane + PAIR_LANES)
            c_j, h_j, c_jj, h_jj = c_row[j], h_row[j], c_row[jj], h_row[jj]
            s0[lane] += ratio_pair_value(h_j, c_j + k0[j], h_jj, c_jj + k0[jj])
            s1[lane] += ratio_pair_value(h_j, c_j + k1[j], h_jj, c_jj + k1[jj])
            s2[lane] += ratio_pair_value(h_j, c_j + k2[j], h_jj, c_jj + k2[jj])
            s3[lane] += ratio_pair_value(h_j, c_j + k3[j], h_jj, c_jj + k3[jj])


@numba.njit(inline="always")
def ratio_pairs1(acc, c_row, h_row, k_row, n_full):
    # ratio_pairs4 for one row of k (the last, partial block of a group): the same pairs in the same lanes and order
    for j0 in range(0, n_full, lanes.LANES):
        for lane in range(PAIR_LANES):
            j = np.uint64(j0 + lane)
            jj = np.uint64(j0 + lane + PAIR_LANES)
            acc[lane] += ratio_pair_value(h_row[j], c_row[j] + k_row[j], h_row[jj], c_row[jj] + k_row[jj])


@numba.njit(inline="always")
def ratio_pair_value(h0, d0, h1, d1):
    """``h0 / d0 + h1 / d1`` as ``fma(h0, d1, h1 d0) / (d0 d1)``: one division for two terms (module docstring:
    the scaled factors keep ``d0 d1`` and the numerator in the float range)."""
    return fma(h0, d1, h1 * d0) / (d0 * d1)


@numba.njit(inline="always")
def _lane_row_sum(acc, c_row, h_row, k_row, n_full, n_out):
    # sum_j h / (c + k): the lanes (pairs over j < n_full) in their fixed tree order, then the remaining j in order
    s = lanes.total(acc)
    for j in range(n_full, n_out):
        s += h_row[j] / (c_row[j] + k_row[j])
    return s


@numba.njit(parallel=True, fastmath=_LANE_FASTMATH, cache=True)
def _flip_dense_ratio(order, n_pos, chunk, c_pos, h_pos, c_neg, h_neg, k, base_pos, base_neg, unscale, one, d_in):
    # order, n_pos: from _sign_order with the same chunk; k (N_in, N_out) = s e^{2 W^T}; per unit (B, N_out),
    # with g = x_out d_out and the scales s = RATIO_SCALE, 2^{-E_b} = 1 / unscale[b] (_ratio_units):
    # c_pos = s e^{+a}, h_pos = s 2^{-E_b} g e^{+a}, c_neg = s e^{-a}, h_neg = s 2^{-E_b} g e^{-a};
    # base_pos = sum_j g sigma(a), base_neg = -sum_j g sigma(-a) (B,);
    # one: scalar 1 of the working dtype (keeps float32 arithmetic in float32).
    #   x = +1:  d_in = base_pos - 2^{E_b} sum_j h_pos / (c_pos + k)
    #   x = -1:  d_in = base_neg + 2^{E_b} sum_j h_neg / (c_neg + k)
    # (as 1/(1 + e^{-a}/k) = 1 - 1/(1 + e^{+a} k); the scales cancel in each quotient), so only e^{2W} is needed (no
    # e^{-2W}, no divisions to form it).
    # A task handles up to 4 input units of one example, one chunk and one sign, so that every load of
    # c[b, j] and h[b, j] feeds 4 rows; the units of one sign in a chunk fill ceil(n / 4) blocks, hence at
    # most chunk / 4 + 2 tasks per example and chunk. Tasks run chunk by chunk (prange hands each thread a
    # contiguous range), so the k rows of a chunk are read from L2 by every example instead of streaming the whole
    # k from L3 once per example (10-15 % of the kernel's time at 1024x1024).
    # Every sum over j has a fixed order: lane l of a row adds the pairs (j0 + l, j0 + l + 16) of the lane blocks j0 =
    # 0, 32, 64, ... in turn, then the lanes are added in a fixed tree and the last n_out mod 32 terms one by one
    # (sbnnumba/kernels/lanes.py), so its float bits do not depend on whether the kernel was compiled in this process
    # or loaded from Numba's cache, nor on whether a row ran in a block of 4 or alone.
    n_batch, n_in = order.shape
    n_out = c_pos.shape[1]
    n_full = n_out // lanes.LANES * lanes.LANES
    per_b = chunk // _ROWS + 2
    for task in prange(n_pos.shape[1] * n_batch * per_b):
        b, i0, i1, positive = _ratio_task(task, n_pos, chunk, per_b, n_in)
        if i0 >= i1:
            continue
        c_row, h_row, base, sign = _ratio_side(b, positive, c_pos, h_pos, c_neg, h_neg, base_pos, base_neg, one)
        sign = sign * unscale[b]  # +-2^{E_b}: exact
        if i1 - i0 == _ROWS:  # 4 rows of k share each load of c and h
            u0, u1, u2, u3 = order[b, i0], order[b, i0 + 1], order[b, i0 + 2], order[b, i0 + 3]
            k0, k1, k2, k3 = k[u0], k[u1], k[u2], k[u3]
            s0, s1, s2, s3 = lanes.zeros(one), lanes.zeros(one), lanes.zeros(one), lanes.zeros(one)
            ratio_pairs4(s0, s1, s2, s3, c_row, h_row, k0, k1, k2, k3, n_full)
            d_in[b, u0] = base - sign * _lane_row_sum(s0, c_row, h_row, k0, n_full, n_out)
            d_in[b, u1] = base - sign * _lane_row_sum(s1, c_row, h_row, k1, n_full, n_out)
            d_in[b, u2] = base - sign * _lane_row_sum(s2, c_row, h_row, k2, n_full, n_out)
            d_in[b, u3] = base - sign * _lane_row_sum(s3, c_row, h_row, k3, n_full, n_out)
        else:  # the last, partial block of a group
            for t in range(i0, i1):
                u = order[b, t]
                k_row = k[u]
                acc = lanes.zeros(one)
                ratio_pairs1(acc, c_row, h_row, k_row, n_full)
                d_in[b, u] = base - sign * _lane_row_sum(acc, c_row, h_row, k_row, n_full, n_out)


@numba.njit(inline="always")
def probit_argument(v, s, x, w):
    # The probit term's normal CDF argument t and its side: Delta = Phi(u) - Phi(v), u = v + s x w, as scalar.cdf_diff
    # evaluates it: Phi(-v) - Phi(-u) when u + v > 0 (upper: both in the lower tails, no cancellation against 1)
    u = v + s * x * w
    upper = u + v > 0
    return (-u if upper else u), upper


@numba.njit(inline="always")
def probit_finish(f, upper, lo, hi):
    # Delta from f = Phi(t) (probit_argument); lo = Phi(v) and hi = Phi(-v) come per unit
    return hi - f if upper else f - lo


@numba.njit(inline="always")
def probit_term(v, s, x, w, lo, hi):
    """One connection's ``Delta = Phi(u) - Phi(v)``, ``u = v + s x w``, with one :func:`~.probit.normal_cdf`.

    The flip kernels evaluate the same terms a block at a time (:func:`probit_argument`, then
    :func:`sbnnumba.kernels.probit.erfc_pos_passes`, then :func:`probit_finish`): the same operations, so the same bits.
    """
    t, upper = probit_argument(v, s, x, w)
    return probit_finish(normal_cdf(t), upper, lo, hi)


_PROBIT_UNITS = 8  # input units per task of the dense probit kernel (its pass buffers allocated once per task)


# The probit kernel: as the bounded one (no "reassoc": lanes; no "arcp": exact division in lanes and remainder alike;
# "contract" fuses the same products in both, the compiled/cache-loaded test covers it).
@numba.njit(parallel=True, fastmath=probit.FASTMATH, error_model="numpy", cache=True)
def _flip_dense_probit(x_in, v, s, lo, hi, weight_t, d_out, d_in):
    # Normal noise, float32: Delta = Phi(u) - Phi(v) with v = -x_out a, s = 2 x_out, lo = Phi(v), hi = Phi(-v)
    # (B, N_out), each Phi by probit.normal_cdf (branch-free, so the lane loop vectorizes); the sum over j in lanes of
    # a fixed order (sbnnumba/kernels/lanes.py).
    # The lane blocks go a probit.PASS_BLOCK at a time through the CDF's passes (probit.erfc_pos_passes; the same
    # bits as probit_term, which sums the last n_out mod 32 terms); a task is one example and _PROBIT_UNITS input units,
    # so that its two pass buffers are allocated once for several units.
    n_batch, n_in = x_in.shape
    n_out = v.shape[1]
    n_full = n_out // lanes.LANES * lanes.LANES
    n_groups = (n_in + _PROBIT_UNITS - 1) // _PROBIT_UNITS
    for task in prange(n_batch * n_groups):
        b = task // n_groups
        i_start = (task - b * n_groups) * _PROBIT_UNITS
        v_row, s_row, lo_row, hi_row, d_row = v[b], s[b], lo[b], hi[b], d_out[b]
        a_buf = np.empty(probit.PASS_BLOCK, dtype=v.dtype)
        e_buf = np.empty(probit.PASS_BLOCK, dtype=v.dtype)
        for i in range(i_start, min(i_start + _PROBIT_UNITS, n_in)):
            x = x_in[b, i]
            w_row = weight_t[i]
            acc = lanes.zeros(x)
            for p0 in range(0, n_full, probit.PASS_BLOCK):
                m = min(probit.PASS_BLOCK, n_full - p0)  # a multiple of LANES
                for q in range(m):
                    j = np.uint64(p0 + q)
                    a_buf[q] = probit.cdf_argument(probit_argument(v_row[j], s_row[j], x, w_row[j])[0])[1]
                probit.erfc_pos_passes(a_buf, e_buf, m)
                for j0 in range(0, m, lanes.LANES):
                    for lane in range(lanes.LANES):
                        q = np.uint64(j0 + lane)
                        j = np.uint64(p0 + j0 + lane)
                        t, upper = probit_argument(v_row[j], s_row[j], x, w_row[j])
                        f = probit.cdf_from_erfc(probit.cdf_argument(t)[0], e_buf[q])
                        acc[lane] += probit_finish(f, upper, lo_row[j], hi_row[j]) * d_row[j]
            total = lanes.total(acc)
            for j in range(n_full, n_out):
                total += probit_term(v_row[j], s_row[j], x, w_row[j], lo_row[j], hi_row[j]) * d_row[j]
            d_in[b, i] = total


def probit_tails(v):
    """The per-unit terms of the probit form: ``Phi(v)`` and ``Phi(-v)`` by :func:`sbnnumba.kernels.probit.normal_cdf`
    (the same function and fastmath flags as its per-connection terms, so a connection that moves nothing adds
    exactly 0).

    Parameters
    ----------
    v : float32 ndarray, any shape
        ``-x_out a``.

    Returns
    -------
    (lo, hi) : two float32 ndarrays of ``v``'s shape
        ``Phi(v)`` and ``Phi(-v)``.
    """
    v = np.ascontiguousarray(v)
    lo, hi = np.empty(v.shape, v.dtype), np.empty(v.shape, v.dtype)  # C order: the flat views below write into them
    with kernel_threads(v.size, "elementwise"):
        normal_cdf_array(v.reshape(-1), lo.reshape(-1))
        normal_cdf_array(-v.reshape(-1), hi.reshape(-1))
    return lo, hi


_SAFE_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # fastmath without assuming finite inputs


@numba.njit(inline="always")
def _ratio_g(a, x_out, d_out, lim, zero):
    # A unit's g = x_out d_out in the ratio sums (0 where |a| > lim: summed directly instead), and whether it is
    # saturated
    return (zero, True) if abs(a) > lim else (x_out * d_out, False)


@numba.njit(parallel=True, fastmath=_SAFE_FASTMATH, cache=True)
def _ratio_units(a, x_out, d_out, lim, one, scale, max_exponent, c_pos, h_pos, c_neg, h_neg, base_pos, base_neg,
                 unscale):
    # Per-unit factors of the ratio kernel: per example a pass for max |g|, then one for the factors and sums. On
    # entry c_pos = e^{clip(a, -lim, lim)}; on exit,
    # with g = x_out d_out set to 0 where |a| > lim (those units are summed by the saturated kernel), s = scale and
    # E_b = the exponent of max_j |g[b, j]| (max|g| < 2^{E_b}), clipped to +-max_exponent:
    #   c_pos = s c, h_pos = 2^{-E_b} s (g c), c_neg = s (1 / c), h_neg = 2^{-E_b} s (g / c), unscale = 2^{E_b},
    #   base_pos = sum_j g sigma(a) = sum_j g c / (1 + c),  base_neg = -sum_j g sigma(-a) = -sum_j g / (1 + c)
    # (no cancellation in either; from the unscaled g and c). Scalings by powers of two are exact (while the products
    # stay normal), so each scaled factor is the unscaled one's bits times 2^{-E_b} s; the sums are those of the
    # unscaled form, bit for bit (checked against it at 3-1024 outputs on znver4). Returns the number of saturated
    # units.
    n_batch, n_out = a.shape
    zero = one - one
    n_sat = 0
    for b in prange(n_batch):
        g_max = zero
        for j in range(n_out):
            g_max = max(g_max, abs(_ratio_g(a[b, j], x_out[b, j], d_out[b, j], lim, zero)[0]))
        exponent = min(max(math.frexp(g_max)[1], -max_exponent), max_exponent)  # g_max < 2^exponent (0 for 0)
        unscale[b] = math.ldexp(one, exponent)
        down = math.ldexp(one, -exponent) * scale
        s_pos = zero
        s_neg = zero
        for j in range(n_out):
            g, saturated = _ratio_g(a[b, j], x_out[b, j], d_out[b, j], lim, zero)
            c = c_pos[b, j]
            sigma_neg = one / (one + c)
            inv_c = one / c
            h_pos[b, j] = (g * c) * down
            c_neg[b, j] = inv_c * scale
            h_neg[b, j] = (g * inv_c) * down
            c_pos[b, j] = c * scale
            s_pos += g * c * sigma_neg
            s_neg += g * sigma_neg
            n_sat += saturated
        base_pos[b] = s_pos
        base_neg[b] = -s_neg
    return n_sat


@numba.njit(parallel=True, fastmath=True, cache=True)
def _flip_dense_logistic_saturated(x_in, a, g, weight, row_start, cols, lim, d_in):
    # Adds, for the listed (b, j) pairs (cols[row_start[b]:row_start[b+1]], CSR layout), the logistic
    # terms g[b,j] (sigma(a[b,j]) - sigma(a[b,j] - 2 W[j,i] x[b,i])) with one exp per connection; the
    # argument is clipped to [-lim, lim] (a change below e^-lim) so exp never overflows under fastmath.
    # Parallel over examples; the inner loop runs over a contiguous weight row and d_in row.
    n_batch, n_in = x_in.shape
    for b in prange(n_batch):
        x_row = x_in[b]
        d_row = d_in[b]
        for t in range(row_start[b], row_start[b + 1]):
            j = cols[t]
            a_j = a[b, j]  # clipped only inside exp: the flipped argument needs the true value
            g_j = g[b, j]
            w_row = weight[j]
            s_a = 1 / (1 + np.exp(-min(max(a_j, -lim), lim)))
            for i in range(n_in):
                u = min(max(a_j - 2 * x_row[i] * w_row[i], -lim), lim)
                d_row[i] += g_j * (s_a - 1 / (1 + np.exp(-u)))


@numba.njit(parallel=True, cache=True)
def _flip_dense_generic(code, x_in, a, x_out, weight_t, d_out, d_in):
    n_batch, n_in = x_in.shape
    n_out = a.shape[1]
    for bi in prange(n_batch * n_in):
        b = bi // n_in
        i = bi - b * n_in
        two_x = 2.0 * x_in[b, i]
        acc = 0.0
        for j in range(n_out):
            s = x_out[b, j]
            v = -s * a[b, j]
            acc += cdf_diff(code, v + s * two_x * weight_t[i, j], v) * d_out[b, j]
        d_in[b, i] = acc


# The bounded kernel: no "reassoc" (lanes) and no "arcp" (no division); "contract" kept (without it the kernel is
# about 25 % slower): this one kernel fuses the same products in its vector lanes and its remainder, and the
# compiled/cache-loaded test (tests/test_kernels_dense.py) covers it.
@numba.njit(parallel=True, fastmath={"nnan", "ninf", "nsz", "contract"}, error_model="numpy", cache=True)
def _flip_dense_bounded(triangular, x_in, v, s, weight_t, d_out, d_in):
    # Uniform / triangular noise: Delta = F(u) - F(v) by the branch-free scalar.bounded_cdf_diff with
    # v = -x_out a and s = 2 x_out (B, N_out). The sum over j runs in lanes of a fixed order
    # (sbnnumba/kernels/lanes.py), so the bits do not depend on whether the kernel was compiled or cache-loaded;
    # the lane loop over contiguous j vectorizes.
    n_batch, n_in = x_in.shape
    n_out = v.shape[1]
    n_full = n_out // lanes.LANES * lanes.LANES
    one = v.dtype.type(1)
    for bi in prange(n_batch * n_in):
        b = bi // n_in
        i = bi - b * n_in
        x = x_in[b, i]
        v_row, s_row, d_row, w_row = v[b], s[b], d_out[b], weight_t[i]
        acc = lanes.zeros(one)
        for j0 in range(0, n_full, lanes.LANES):
            for lane in range(lanes.LANES):
                j = np.uint64(j0 + lane)
                acc[lane] += bounded_cdf_diff(triangular, v_row[j] + s_row[j] * x * w_row[j], v_row[j], one) * d_row[j]
        total = lanes.total(acc)
        for j in range(n_full, n_out):
            total += bounded_cdf_diff(triangular, v_row[j] + s_row[j] * x * w_row[j], v_row[j], one) * d_row[j]
        d_in[b, i] = total


FORMS = ("auto", "ratio", "bounded", "probit", "generic")


def choose_form(form, noise_code, dtype):
    """Validate ``form`` for the family ``noise_code`` and the dtype of the call, and resolve "auto".

    Parameters
    ----------
    form : {"auto", "ratio", "bounded", "probit", "generic"}
    noise_code : int
        :data:`sbnnumba.kernels.scalar.NOISE_CODES`.
    dtype : numpy dtype
        The working dtype of the call (float32 or float64).

    Returns
    -------
    str
        ``form``, or for "auto" the family's first form (:data:`sbnnumba.kernels.scalar.FLIP_FORMS`) that admits
        ``dtype`` (:data:`sbnnumba.kernels.scalar.FORM_DTYPES`): "ratio" for logistic noise, "bounded" for uniform
        and triangular noise, "probit" for normal noise in float32, "generic", one stable F difference per
        connection, for any other family and for normal noise in float64.
    """
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    forms = flip_forms(noise_code)
    name_of_dtype = dtype_name(dtype)
    if form == "auto":
        return next(name for name in forms if name_of_dtype in FORM_DTYPES.get(name, (name_of_dtype,)))
    if form not in forms:
        holds = [name for name, admitted in FLIP_FORMS.items() if form in admitted]
        raise ValueError(f"form: the {form} form does not hold for {KERNEL_FAMILIES[noise_code]} noise (it holds "
                         f"for {', '.join(holds)}); expected one of {forms}")
    if name_of_dtype not in FORM_DTYPES.get(form, (name_of_dtype,)):
        raise ValueError(f"form: the {form} form admits {', '.join(FORM_DTYPES[form])} only, got a {name_of_dtype} "
                         f"call (use form='generic' or 'auto')")
    return form


def ratio_unsafe_pairs(a):
    """The units outside the ratio form's range.

    Parameters
    ----------
    a : ndarray
        Pre-activations, float32 or float64.

    Returns
    -------
    bool ndarray of ``a``'s shape
        ``|a| > A`` (:func:`ratio_limits`).
    """
    return np.abs(a) > ratio_limits(a.dtype)[0]


def saturated_rows(unsafe):
    """The saturated units of a mask grouped by example in CSR form.

    Parameters
    ----------
    unsafe : bool ndarray (B, ...)

    Returns
    -------
    (row_start, index) : (int64 ndarray (B + 1,), int64 ndarray (n, unsafe.ndim - 1))
        ``index[row_start[b]:row_start[b + 1]]`` are the remaining coordinates (``np.nonzero``, one column per
        axis after the first) of the true entries of example ``b``.
    """
    coords = np.nonzero(unsafe)
    row_start = np.zeros(unsafe.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(coords[0], minlength=unsafe.shape[0]), out=row_start[1:])
    return row_start, np.stack(coords[1:], axis=1).astype(np.int64)


def flip_reach(weight):
    """The most a flip of one input can move each output unit's pre-activation.

    Parameters
    ----------
    weight : ndarray (N_out, N_in) or (C_out, C_in, kh, kw)

    Returns
    -------
    ndarray (N_out,)
        ``2 max |W|`` over each output unit's (dense) or output channel's (conv) connections.
    """
    weight = np.asarray(weight)
    return 2 * np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def active_saturated(a, weight):
    r"""The saturated units (``|a| > A``) whose flip terms can be told from 0 in ``a``'s dtype.

    A flip of input ``i`` moves unit ``j`` from ``a`` to ``u = a - 2 W[j,i] x[i]``, so
    ``|u| >= |a| - reach`` with ``reach[j] = 2 max_i |W[j,i]|`` (:func:`flip_reach`). When
    ``|a| - reach > T`` (``SIGMA_FLAT``: 17 in float32, 37 in float64) both ``a`` and every ``u``
    lie in the same flat tail of ``sigma``, and each term ``g (sigma(a) - sigma(u))`` has magnitude
    below ``|g| e^{-T}``, under half a rounding unit of ``|g|``: the direct sum would add rounding
    noise at most (in float32 it computes exact zeros). Such *inert* units are left out of the
    direct sum; units that saturate through growing pre-activations late in training are mostly
    inert, and summing them would cost one ``exp`` per connection.

    Parameters
    ----------
    a : ndarray (B, N_out) or (B, C_out, H_out, W_out)
        Pre-activations of a dense or conv layer.
    weight : ndarray (N_out, N_in) or (C_out, C_in, kh, kw)
        The layer's weight.

    Returns
    -------
    bool ndarray of ``a``'s shape.
    """
    reach = flip_reach(weight).astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 2))
    mag = np.abs(a)
    return (mag > ratio_limits(a.dtype)[0]) & (mag - reach <= SIGMA_FLAT[a.dtype])


def split_saturated(a, g, weight):
    """Split a logistic ratio-form call into its safe part and its saturated units (dense and conv alike).

    Parameters
    ----------
    a : ndarray (B, ...)
        Pre-activations.
    g : ndarray of ``a``'s shape
        ``x_out * d_out``.
    weight : ndarray
        The layer's weight (:func:`flip_reach`).

    Returns
    -------
    (g_safe, a_safe, saturated)
        ``g`` and ``a`` with the saturated units (``|a| > A``) set to 0, so they add no term to the ratio sums
        and ``e^{-a}`` stays finite, and ``saturated``, None when no saturated unit is active
        (:func:`active_saturated` with the layer's ``weight``), else :func:`saturated_rows` of the active ones.
    """
    unsafe = ratio_unsafe_pairs(a)
    if not unsafe.any():
        return g, a, None
    zero = a.dtype.type(0)
    active = active_saturated(a, weight)
    return (np.where(unsafe, zero, g), np.where(unsafe, zero, a),
            saturated_rows(active) if active.any() else None)


def _check_dense(x_in, a, x_out, weight, d_out):
    n_batch, n_in = x_in.shape
    if weight.shape[1] != n_in or a.shape != (n_batch, weight.shape[0]):
        raise ValueError(
            f"flip_propagate_dense: inconsistent shapes x_in {x_in.shape}, a {a.shape}, weight {weight.shape}"
        )
    if x_out.shape != a.shape or d_out.shape != a.shape:
        raise ValueError(f"flip_propagate_dense: x_out {x_out.shape} and d_out {d_out.shape} must match a {a.shape}")


def flip_propagate_dense(x_in, a, x_out, weight, d_out, noise_code, form="auto"):
    r"""PSA flip propagation ``d_in[b,i] = sum_j Delta[b,i,j] d_out[b,j]`` (Numba, parallel).

    Parameters
    ----------
    x_in : ndarray (B, N_in)
        Sampled +-1 input states of the layer.
    a : ndarray (B, N_out)
        Pre-activations ``x_in @ W.T + b``.
    x_out : ndarray (B, N_out)
        Sampled +-1 output states.
    weight : ndarray (N_out, N_in)
    d_out : ndarray (B, N_out)
        Flip effects of the output units on the expected loss.
    noise_code : int
        Noise family code (:data:`sbnnumba.kernels.scalar.NOISE_CODES`).
    form : {"auto", "ratio", "bounded", "probit", "generic"}
        "ratio" is the logistic-only fast form, "bounded" the uniform/triangular one
        (:func:`sbnnumba.kernels.scalar.bounded_cdf_diff`, vectorized), "probit" the normal one in float32
        (:mod:`sbnnumba.kernels.probit`, vectorized); "auto" picks them for those noises (:func:`choose_form`)
        and "generic" for the others. The ratio form sums the pairs ``(b, j)`` with
        ``|a| > A`` (:func:`ratio_limits`) directly (one ``exp`` per connection).

    Returns
    -------
    d_in : ndarray (B, N_in), dtype of ``a`` (float32 or float64).
    """
    _check_dense(x_in, a, x_out, weight, d_out)
    with kernel_threads(a.size * x_in.shape[1]):  # connections: the per-call thread rule of sbnnumba.runtime
        return _flip_propagate_dense(x_in, a, x_out, weight, d_out, noise_code,
                                     choose_form(form, noise_code, a.dtype))


def probit_or_generic(a, weight):
    """The form that runs a float32 normal-noise call resolved to "probit" (dense and conv alike).

    The probit kernels are compiled assuming finite values (:data:`sbnnumba.kernels.probit.FASTMATH`); the generic
    form carries NaN and infinities through exactly, so a call with any of them runs it.

    Parameters
    ----------
    a : ndarray
        Pre-activations of the call.
    weight : ndarray
        The layer's weight.

    Returns
    -------
    str
        "probit" when ``a`` and ``weight`` are finite, else "generic".
    """
    return "probit" if np.isfinite(a).all() and np.isfinite(weight).all() else "generic"


def _flip_propagate_dense(x_in, a, x_out, weight, d_out, noise_code, form):
    """:func:`flip_propagate_dense` after the checks, ``form`` resolved."""
    dtype = a.dtype
    if form == "probit":
        form = probit_or_generic(a, weight)
    x_in = np.ascontiguousarray(x_in, dtype=dtype)
    a = np.ascontiguousarray(a)
    x_out = np.ascontiguousarray(x_out, dtype=dtype)
    d_out = np.ascontiguousarray(d_out, dtype=dtype)
    d_in = np.empty(x_in.shape, dtype=dtype)
    if form == "ratio":
        weight = np.ascontiguousarray(weight, dtype=dtype)
        lim_a, clip = ratio_limits(dtype)
        c_pos = np.clip(a, -lim_a, lim_a)
        exp_in_place(c_pos)  # e^{+-a} of |a| <= A: g e^{+-a} and c + k stay normal
        h_pos, c_neg, h_neg = np.empty_like(a), np.empty_like(a), np.empty_like(a)
        base_pos, base_neg, unscale = (np.empty(a.shape[0], dtype) for _ in range(3))
        with kernel_threads(a.size, "elementwise"):
            n_saturated = _ratio_units(a, x_out, d_out, dtype.type(lim_a), dtype.type(1),
                                       dtype.type(RATIO_SCALE[dtype]), RATIO_GRAD_EXPONENT[dtype], c_pos, h_pos, c_neg,
                                       h_neg, base_pos, base_neg, unscale)
        if n_saturated < a.size:
            _ratio_sums(x_in, weight, clip, (c_pos, h_pos, c_neg, h_neg, base_pos, base_neg, unscale), d_in)
        else:  # every unit saturated: nothing for the ratio form
            d_in[...] = 0
        active = active_saturated(a, weight) if n_saturated else None
        if active is not None and active.any():
            row_start, index = saturated_rows(active)
            _flip_dense_logistic_saturated(x_in, a, x_out * d_out, weight, row_start, index[:, 0].copy(),
                                           dtype.type(EXP_ARG_LIMIT[dtype]), d_in)
        return d_in
    # the other forms read W by input unit: the blocked transpose (NumPy's copy of W.T slows down on power-of-two rows)
    weight_t = _transposed_scratch("weight_t", weight.shape, dtype)
    with kernel_threads(weight.size, "transpose"):
        blocked_transpose(np.ascontiguousarray(weight, dtype=dtype), weight_t)
    if form == "bounded":
        _flip_dense_bounded(noise_code == TRIANGULAR, x_in, -x_out * a, 2 * x_out, weight_t, d_out, d_in)
    elif form == "probit":
        v = -x_out * a
        _flip_dense_probit(x_in, v, 2 * x_out, *probit_tails(v), weight_t, d_out, d_in)
    else:
        _flip_dense_generic(noise_code, x_in, a, x_out, weight_t, d_out, d_in)
    return d_in


def _transposed_scratch(name, weight_shape, dtype):
    """The reused buffer (N_in, L) of a weight's transpose, ``L >= N_out`` (:func:`workspace.spread_row_length`): the
    transposes and the kernels that read it by rows of ``W^T`` use its first N_out columns. Unpadded rows 4 KiB apart
    (1024 float32) share cache sets and slow the transpose severalfold (docs/experiments/2026-12-07-session28-zen4.md).
    A fresh array each call would cost page faults (:mod:`workspace`)."""
    n_out, n_in = weight_shape
    return workspace.scratch(name, (n_in, workspace.spread_row_length(n_out, np.dtype(dtype).itemsize)), dtype)


def _ratio_sums(x_in, weight, clip, units, d_in):
    """The ratio form's sums into ``d_in``: ``k = e^{clip(2 W^T)}``, the sign order, then the kernel.

    ``units`` are :func:`_ratio_units`' ``(c_pos, h_pos, c_neg, h_neg, base_pos, base_neg, unscale)``. The preparation
    passes take threads by their own size (the rule of :mod:`sbnnumba.runtime`: a transpose of 2^20 entries and
    a sign order of 2^17 are single-threaded copies), the kernel by the connections (the caller's count).
    """
    dtype = d_in.dtype
    n_out, n_in = weight.shape
    k = _transposed_scratch("ratio_k", weight.shape, dtype)
    with kernel_threads(weight.size, "transpose"):
        clipped_double_transpose(weight, dtype.type(clip), k)  # 8x8 blocks transposed in vector registers
    k[:, n_out:] = 0  # the rows' padding: finite for the exp over the whole buffer, never read by the kernel
    exp_in_place(k, scale=RATIO_SCALE[dtype])  # s e^{2 W^T}
    chunk = _chunk_units(n_in, n_out, dtype.itemsize)
    order = np.empty(x_in.shape, dtype=np.int64)
    n_pos = np.empty((x_in.shape[0], -(-n_in // chunk)), dtype=np.int64)
    with kernel_threads(x_in.size, "copy"):
        _sign_order(x_in, chunk, order, n_pos)
    _flip_dense_ratio(order, n_pos, chunk, *units[:4], k, *units[4:], dtype.type(1), d_in)
