r"""Deployment of a trained SBN as a deterministic bit-packed network (XNOR-popcount inference).

:meth:`PackedNetwork.from_network` converts the *deterministic* version of a network (spec st.md
section 6: weights ``sign(eta)`` for Bernoulli layers, activations ``x = sign(a)`` with
``sign(0) = +1``, normalization with the statistics of the ``"deterministic"`` test mode, as
:meth:`sbnnumba.Network.forward_deterministic`) into a network that runs packed end to end:

* **binary stages** (binary input, i.e. every stage after the first, and Bernoulli weights) run
  :func:`sbnnumba.bitpack.matmul_threshold` / :func:`~sbnnumba.bitpack.conv2d_threshold` on packed
  words; their output is packed again and chains directly into the next stage;
* **float stages**: the first stage (real input) and any real-weight hidden stage compute the
  raw product ``y = x W^T`` (or the convolution) in float exactly as the float network does (same
  BLAS call on the same operands, weights ``sign(eta)`` kept as bits on disk), then threshold and
  pack ``y``;
* the **head** (real weights on +-1 inputs) unpacks its input to +-1 floats and computes
  ``h V^T + c`` as the float network does, so the logits are bitwise equal;
* optionally (``input_quantization=(scale, bits)``, see below) a **bit-plane first stage**: binary
  weights on quantized real inputs, computed exactly with XNOR-popcount kernels instead of the
  float GEMM.

Folding bias and normalization into thresholds (exact, ties included)
---------------------------------------------------------------------
For one output unit ``j`` the float network computes, from the raw product ``y``,

.. math:: a_j(y) = \gamma_j \frac{(y + b_j) - \mu_j}{\sqrt{\sigma_j^2 + \epsilon}} + \beta_j
          \quad(\text{or } a_j(y) = y + b_j \text{ without normalization}),
          \qquad x_j = +1 \iff a_j(y) \ge 0,

evaluated in floating point. Every operation (adding a constant, multiplying by a constant of fixed
sign) is a monotone function of its rounded argument, so ``a_j`` is non-decreasing in ``y`` for
``gamma_j > 0``, non-increasing for ``gamma_j < 0`` and constant for ``gamma_j = 0``. Hence
``x_j = +1`` iff ``y >= T_j`` (increasing), iff ``y <= T_j`` (decreasing, ``flip_j``), or always /
never. The thresholds are not derived from the real-number formula ``mu - beta sigma / gamma - b``
(whose rounding could misplace ties) but from the float network's own arithmetic:

* a binary stage's ``y = dot`` is an integer in ``[-K, K]``. :func:`_integer_thresholds` evaluates
  ``a_j(d)`` with the network's own operations (the layer's bias add and the
  :class:`~sbnnumba.Normalized` forward pass) for **every** integer ``d`` in ``[-K, K]`` and every
  unit, checks that the sign pattern is monotone, and reads off the integer threshold: ``+1`` iff
  ``dot >= t_j`` (``t_j`` = the first ``d`` with ``a_j(d) >= 0``; ``dot == t_j`` is the tie
  ``a_j = 0``, if it occurs, and gives ``+1``), or, for a negative scale, ``+1`` iff ``dot <= u_j``,
  i.e. ``flip_j`` with ``t_j = u_j + 1`` (the kernels' flipped output is ``+1`` iff ``dot < t_j``);
* a float stage's ``y`` is any float: :func:`_float_thresholds` finds ``T_j`` by bisection over the
  ordered floating-point values (32 steps for float32) with the same operations, so
  ``sign(a_j(y))`` is reproduced for every float ``y`` with ``|y| <= 2^64`` (float32; ``2^512`` for
  float64): the threshold is the smallest float with ``a_j >= 0``, not an approximation of it.

The packed network therefore gives exactly the float deterministic network's states, hence its
logits (bitwise) and predictions, on every input. This holds for the default conversion
(``input_quantization=None``), whatever the input.

Bit-plane first stage (``input_quantization``): exact arithmetic, not the float32 GEMM
-------------------------------------------------------------------------------------------
The float first stage is a float32 GEMM of the full size, which bounds the speed-up of the whole
network. When the first stage has binary weights ``w = sign(eta)`` and the inputs are declared
quantized, ``x_i = fl(s q_i)`` with integer codes ``q_i`` in ``[0, 2^bits)`` (``fl``: the float64
product rounded once to the network dtype; Fashion-MNIST pixels ``q/255`` from
:func:`sbnnumba.datasets.normalize` are ``(s, bits) = (1/255, 8)``), the stage computes the **exact**
integer

.. math:: z_j = \sum_i q_i w_{ji} = \sum_b 2^b \big(\mathrm{popcount}(q_b) - 2\,\mathrm{popcount}(q_b \wedge W_j)\big)

by bit-planes (:func:`sbnnumba.bitpack.bitplane_matmul_threshold`), and

.. math:: x_j = +1 \iff a_j(y(z_j)) \ge 0, \qquad y(z) = \mathrm{fl}(s\, z)

with ``a_j`` the float network's own bias/normalization arithmetic. ``y(z)`` is non-decreasing in
``z`` and ``a_j`` monotone in ``y``, so this is ``z >= t_j`` (or ``z < t_j``, flipped) for an
integer threshold; ``z`` ranges over ``[-(2^bits - 1) K, (2^bits - 1) K]``, too many values to
enumerate per unit, so :func:`_integer_thresholds` finds ``t_j`` by bisection on ``z`` (exact, by
the monotonicity). The packed stage therefore equals, bit for bit, the float network whose first raw
product is evaluated in exact arithmetic on the exact inputs ``s q`` and rounded once
(:func:`quantized_reference_logits`); every later stage and the head are unchanged and bit-exact.

It is **not** bit-exact with :meth:`Network.forward_deterministic`, which feeds ``x_i = fl(s q_i)``
to a float32 GEMM: its ``y_blas = fl32(sum_i x_i w_ji)`` differs from ``fl(s z_j)`` by the rounding of
the inputs (``<= u sum_i |x_i|``, ``u = 2^-24`` for float32) and of the summation (worst case
``gamma_{K-1} sum_i |x_i|``, ``gamma_n = n u / (1 - n u)``; in practice a random walk of size about
``u sqrt(K)`` times the partial sums). A first-stage state differs exactly when unit ``j``'s
threshold ``T_j`` (in ``y``) lies between ``y_blas`` and ``fl(s z_j)``: rare, as it needs a
pre-activation within ~1e-5 of its threshold (``tests/test_packed.py`` asserts >= 99.99% of the
states and >= 99.9% of the predictions, with the derivation; ``bench/packed_inference.py`` counts
them on the Fashion-MNIST test images and exits with status 1 below 99.9% agreement). A prediction can
only change through such a state. Inputs not on the grid raise ``ValueError`` (``x``), they are never
silently rounded; ``codes=True`` passes the integer codes (e.g. uint8 pixels) directly.

Speed: ``bench/packed_inference.py`` measures the packed network against ``forward_deterministic``
(figures in ``docs/performance.md``). On few cores the Numba kernels need the cores to themselves:
OpenBLAS's workers spin ~0.1 s after every call (``OPENBLAS_THREAD_TIMEOUT=28``, its default) and
slow the next batch's first stage; ``OPENBLAS_THREAD_TIMEOUT=4``, set before NumPy is imported,
avoids it.

Layouts
-------
Dense activations are packed ``(B, ceil(N/64))`` (:func:`sbnnumba.bitpack.pack`), conv maps
``(B, H, W, ceil(C/64))`` (channels last, :func:`sbnnumba.bitpack.pack_channels`). A dense stage
after a conv stage sees the float network's input flattened in (C, H, W) order; the packed map is
flattened as it lies, ``(B, H * W * ceil(C/64))`` words, i.e. (H, W, C_padded) order, and the
dense weights' columns are permuted to that order once at conversion (no unpacking). When ``C``
is not a multiple of 64 the ``P = H W (64 ceil(C/64) - C)`` padding bits are 0 (+1) in both the
input and the permuted weights, so the popcount dot product is ``true dot + P`` over
``k = H W 64 ceil(C/64)`` bits and the thresholds are shifted by ``P``.

Real-weight hidden stages are supported (computed in float on the unpacked +-1 input); stages
other than :class:`~sbnnumba.Linear`, :class:`~sbnnumba.Conv2d` and
:class:`~sbnnumba.Normalized` of those raise ``NotImplementedError``.

File format (``save`` / ``load``, versions 1 and 2)
---------------------------------------------------
One ``.npz`` (no pickles), written atomically (temp file + ``os.replace``): ``meta/format`` =
``"sbnnumba-packed"``, ``meta/version``, ``meta/spec`` (JSON: per stage its kind and geometry, the
head, input shape, dtype), and the arrays ``stages/<i>/<name>`` and ``head/<name>``. Version 2 adds
the stage kind ``"bitplane_dense"`` (meta ``k``, ``bits``, ``scale``; arrays ``weight_bits``,
``threshold`` int32, ``flip``); a network without one is still written as version 1, and both
versions are read. A missing, truncated or corrupt file, another format or version, a stage kind
its version does not know, or arrays inconsistent with the spec raise :class:`PackedFormatError`
(a ``ValueError``) naming the file.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import numpy.typing as npt

from . import bitpack
from .backends import BackendAttribute
from .conv import Conv2d
from .fileio import atomic_write, read_versioned_npz
from .inputs import check_convention, to_float
from .kernels import bitplane as _kp
from .kernels.conv_reference import output_size, windows
from .layers import Layer, Linear
from .normalization import Normalized
from .runtime import gemm
from .validation import all_finite, check_bool, check_int, check_positive_int, check_positive_number

if TYPE_CHECKING:
    from .export import CExport
    from .network import Network

__all__ = ["PackedNetwork", "PackedFormatError", "FORMAT", "FORMAT_VERSION", "quantized_reference_logits"]

FORMAT = "sbnnumba-packed"
FORMAT_VERSION = 2  # version 2 adds the "bitplane_dense" stage; version-1 files are still read

_WORD = 64
_GRID_ELEMENTS = 1 << 22  # elements per chunk of the exhaustive threshold evaluation
_FLOAT_RANGE = {np.dtype(np.float32): 2.0 ** 64, np.dtype(np.float64): 2.0 ** 512}


class PackedFormatError(ValueError):
    """A packed-network file that cannot be read: corrupt, truncated, another format or version."""


# ---------------------------------------------------------------------------------------------------
# Small Numba kernels: fused threshold + pack of a float product, and unpack to +-1 floats.
# Serial on purpose: they are memory-bound passes of ~0.1-0.5 ns per element, and a parallel
# region between two BLAS calls would make the thread pools (OpenBLAS, Numba's) contend.
# ---------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _threshold_pack_rows(y, lo, hi, out):
    """``out[r]`` = packed signs of row ``r`` of ``y`` (R, N): bit ``j`` set (-1) iff
    ``y[r, j] < lo[j]`` or ``y[r, j] > hi[j]``; ``out`` (R, ceil(N/64)) uint64 is overwritten."""
    n_rows, n = y.shape
    for r in range(n_rows):
        for w in range(out.shape[1]):
            base = w * 64
            word = np.uint64(0)
            for c in range(min(64, n - base)):
                v = y[r, base + c]
                minus = (v < lo[base + c]) | (v > hi[base + c])
                word |= np.uint64(minus) << np.uint64(c)
            out[r, w] = word


@numba.njit(cache=True)
def _unpack_rows(words, out):
    """``out[r, i] = 1 - 2 bit_i(words[r])`` for ``i < out.shape[1]`` (+-1 floats).

    Word by word with a fixed 64-bit inner loop, which LLVM vectorizes (variable shifts).
    """
    n_rows, k = out.shape
    full = k >> 6
    for r in range(n_rows):
        row = words[r]
        dst = out[r]
        for w in range(full):
            word = row[w]
            base = w * 64
            for c in range(64):
                dst[base + c] = 1 - 2 * np.int32((word >> np.uint64(c)) & np.uint64(1))
        for i in range(full * 64, k):
            dst[i] = 1 - 2 * np.int32((row[i >> 6] >> np.uint64(i & 63)) & np.uint64(1))


def _pack_threshold(y, lo, hi):
    """Packed signs (bit set = -1 iff ``y < lo`` or ``y > hi``, per last-axis column) of ``y`` (..., N)."""
    rows = y.reshape(-1, y.shape[-1])
    out = np.empty((rows.shape[0], bitpack.n_words(y.shape[-1])), np.uint64)
    _threshold_pack_rows(rows, lo, hi, out)
    return out.reshape(y.shape[:-1] + (out.shape[1],))


def _unpack(words, k, dtype):
    """+-1 ``dtype`` array (..., k) from packed words (..., ceil(k/64))."""
    rows = np.ascontiguousarray(words).reshape(-1, words.shape[-1])
    out = np.empty((rows.shape[0], k), dtype)
    _unpack_rows(rows, out)
    return out.reshape(words.shape[:-1] + (k,))


def _unpack_map(words, shape, dtype):
    """Packed map (B, H, W, words) -> +-1 (B, C, H, W) C-contiguous, the float network's layout."""
    c, h, w = shape
    return np.ascontiguousarray(_unpack(words, c, dtype).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------------
# Thresholds from the float network's own arithmetic
# ---------------------------------------------------------------------------------------------------

def _split(stage):
    """(inner Linear/Conv2d, Normalized or None) of a stage; NotImplementedError for other layers."""
    inner, norm = (stage.inner, stage.normalization) if isinstance(stage, Layer) else (None, None)
    if not isinstance(inner, (Linear, Conv2d)) or not (norm is None or isinstance(norm, Normalized)):
        raise NotImplementedError(f"PackedNetwork: stage {stage!r} is not supported (only Linear, Conv2d and "
                                  "Normalized(Linear | Conv2d) stages can be packed)")
    return inner, norm


def _preactivation_fn(stage):
    """``a = f(y)`` for a grid ``y`` (G, N) of raw products: the float network's bias add and
    normalization (deterministic test mode) for every unit / channel, with its own operations."""
    inner, norm = _split(stage)
    bias = inner.bias

    def evaluate(y):
        z = y + bias  # Linear: x @ W.T + bias; Conv2d: np.add(prod, bias[:, None, None])
        return z if norm is None else norm.affine(z, "deterministic")

    return evaluate


def _float_key(values, dtype):
    """Order-preserving integer keys (int64) of floats: ``key(-0) = key(+0) = 0``."""
    uint = np.uint32 if dtype == np.float32 else np.uint64
    bits = np.ascontiguousarray(values, dtype).view(uint)
    sign = bits >> uint(8 * dtype.itemsize - 1)
    magnitude = (bits & ~(uint(1) << uint(8 * dtype.itemsize - 1))).astype(np.int64)
    return np.where(sign != 0, -magnitude, magnitude)


def _float_value(keys, dtype):
    """Inverse of :func:`_float_key`."""
    uint = np.uint32 if dtype == np.float32 else np.uint64
    magnitude = np.abs(keys).astype(uint)
    bits = np.where(keys < 0, magnitude | (uint(1) << uint(8 * dtype.itemsize - 1)), magnitude).astype(uint)
    return bits.view(dtype)


def _bisect(plus_at, key_low, key_high):
    """Per-unit bisection over integer keys of a sign that is monotone in the key.

    ``plus_at(keys)`` ((n,) int64 -> (n,) bool) is ``a_j >= 0`` at the point of key ``keys[j]`` for
    every unit ``j``. Returns ``(k_high, increasing, decreasing, plus_high)``: units with
    ``plus_at(key_low) != plus_at(key_high)`` are ``increasing`` (False -> True) or ``decreasing``;
    for them ``k_high`` is the first key where the sign differs from its value at ``key_low``, i.e.
    the smallest key with ``a >= 0`` (increasing) or with ``a < 0`` (decreasing).
    """
    p_low, p_high = plus_at(key_low), plus_at(key_high)
    increasing, decreasing = ~p_low & p_high, p_low & ~p_high
    k_low, k_high = key_low.copy(), key_high.copy()
    while True:
        active = (k_high > k_low + 1) & (increasing | decreasing)
        if not active.any():
            break
        mid = (k_low >> 1) + (k_high >> 1) + (k_low & k_high & 1)  # floor of the mean, without overflow
        q = plus_at(mid) ^ decreasing  # increasing in the key for both kinds of unit
        k_high = np.where(active & q, mid, k_high)
        k_low = np.where(active & ~q, mid, k_low)
    return k_high, increasing, decreasing, p_high


def _float_thresholds(evaluate, n, dtype):
    """Per-unit ``(threshold, flip)`` in the float domain of the raw product ``y``.

    ``x_j = +1`` iff ``y >= threshold_j`` (``flip_j`` False) or ``y <= threshold_j`` (True), for
    every float ``y`` with ``|y| <= R`` (R = 2^64 for float32, 2^512 for float64); constant units
    get ``-inf`` (always +1) or ``+inf`` (always -1), not flipped. Bisection over the ordered floats.
    """
    dtype = np.dtype(dtype)
    limit = _FLOAT_RANGE[dtype]

    def plus_at(keys):
        return evaluate(_float_value(keys, dtype).reshape(1, n))[0] >= 0

    key_low, key_high = _float_key(np.array([-limit, limit]), dtype)
    k_high, increasing, decreasing, p_high = _bisect(plus_at, np.full(n, key_low), np.full(n, key_high))
    # increasing: smallest y with a >= 0; decreasing: largest y with a >= 0 (k_high = first with a < 0)
    threshold = np.where(increasing, _float_value(k_high, dtype),
                         np.where(decreasing, _float_value(k_high - 1, dtype),
                                  np.where(p_high, -np.inf, np.inf))).astype(dtype)
    return threshold, decreasing.copy()


def _integer_thresholds(evaluate, n, k, dtype, where, scale=None):
    """Per-unit integer ``(t, flip)`` for a stage whose raw product is ``y(d)`` of an integer ``d`` in [-k, k].

    ``x = +1`` iff ``d >= t`` (flip False) or ``d < t`` (flip True); constant units get
    ``t = -(k + 1)`` (always +1) or ``t = k + 1`` (always -1), not flipped.

    * ``scale=None`` (binary stages): ``y = d``, exact in ``dtype``. The float network's
      pre-activation is evaluated at **every** ``d`` (exhaustively) and the sign is checked to be
      monotone in ``d``.
    * ``scale > 0`` (bit-plane stages): ``y(d) = dtype(scale * d)``, the float64 product rounded once
      to ``dtype``. ``d`` ranges over ``(2^bits - 1) K`` values per side, too many to enumerate
      for every unit, so ``t`` is found by bisection over ``d`` (:func:`_bisect`, ~log2(2k) steps):
      ``d -> y(d)`` is non-decreasing (rounding is monotone) and ``a_j`` monotone in ``y`` (module
      docstring), so the sign is monotone in ``d`` and the bisection exact.
    """
    dtype = np.dtype(dtype)
    if scale is not None:
        if k + 1 >= 2 ** 31:
            raise NotImplementedError(f"{where}: product range {k} too large for int32 thresholds")

        def plus_at(d):
            return evaluate((scale * d.astype(np.float64)).astype(dtype).reshape(1, n))[0] >= 0

        k_high, increasing, decreasing, p_high = _bisect(plus_at, np.full(n, -k, np.int64), np.full(n, k, np.int64))
        # increasing: t = first d with a >= 0; decreasing: +1 iff d <= u = k_high - 1, i.e. d < t = k_high
        t = np.where(increasing | decreasing, k_high, np.where(p_high, -(k + 1), k + 1))
        return t.astype(np.int32), decreasing.copy()
    if k >= 2 ** (np.finfo(dtype).nmant + 1):
        raise NotImplementedError(f"{where}: reduction length {k} too long for exact {dtype} dot products")
    count = np.zeros(n, np.int64)
    first = np.full(n, k + 1, np.int64)
    last = np.full(n, -k - 1, np.int64)
    rows = max(1, _GRID_ELEMENTS // n)
    for start in range(-k, k + 1, rows):
        d = np.arange(start, min(start + rows, k + 1), dtype=np.int64)
        grid = np.broadcast_to(d.astype(dtype)[:, None], (len(d), n))
        plus = evaluate(grid) >= 0
        any_plus = plus.any(axis=0)
        count += plus.sum(axis=0)
        first = np.where(any_plus & (first > k), d[np.argmax(plus, axis=0)], first)
        last = np.where(any_plus, d[len(d) - 1 - np.argmax(plus[::-1], axis=0)], last)
    total = 2 * k + 1
    increasing = (count > 0) & (last == k) & (count == k - first + 1)
    decreasing = (count > 0) & (first == -k) & (count == last + k + 1) & ~increasing
    constant = (count == 0) | (count == total)
    bad = ~(increasing | decreasing | constant)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise RuntimeError(f"{where}: the sign of unit {j}'s pre-activation is not monotone in its integer dot "
                           "product; cannot fold it into a threshold")
    t = np.where(count == total, -(k + 1), np.where(count == 0, k + 1, np.where(increasing, first, last + 1)))
    flip = decreasing & ~constant
    return t.astype(np.int32), flip


# ---------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------
# An activation between stages is described by ("dense", (N,)) or ("conv", (C, H, W)); the real
# input by ("real", input_shape). Each stage stores its geometry in ``meta`` (JSON-able) and its
# arrays in ``arrays`` (what is saved); runtime-only derived arrays live in ``_runtime``.

def _rows(a):
    """``a`` (B, ...) as a 2-d (B, features) array (also for B = 0)."""
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:])))


def float_stage_input(kind, shape, act, dtype):
    """Float input of a float stage / the head in the float network's layout (B, ...)."""
    if kind == "real":
        return act
    if kind == "dense":
        return _unpack(act, shape[0], dtype)
    return _unpack_map(act, shape, dtype)


class _Stage:
    kinds = ("float_dense", "float_conv", "binary_dense", "binary_conv", "bitplane_dense")
    kinds_by_version = {1: kinds[:4], 2: kinds}

    def __init__(self, kind, meta, arrays):
        self.kind, self.meta, self.arrays = kind, meta, arrays
        self._runtime = None

    # ------------------------------------------------------------------ descriptors
    @property
    def in_kind(self):
        return self.meta["in_kind"]

    @property
    def in_shape(self):
        return tuple(self.meta["in_shape"])

    @property
    def out_desc(self):
        if self.kind.endswith("dense"):
            return "dense", (int(self.meta["n_out"]),)
        return "conv", tuple(self.meta["out_shape"])

    # ------------------------------------------------------------------ runtime preparation
    def prepare(self, dtype):
        a, m = self.arrays, self.meta
        if self.kind.startswith("float"):
            shape = tuple(m["weight_shape"])
            if m["binary_weights"]:
                weight = _unpack(a["weight_bits"], int(np.prod(shape[1:])), dtype).reshape(shape)
            else:
                weight = a["weight"]
            weight = np.ascontiguousarray(weight)
            if self.kind == "float_conv":
                weight = weight.reshape(shape[0], -1)
            thr, flip = a["threshold"], a["flip"]
            lo = np.where(flip, -np.inf, thr).astype(dtype)
            hi = np.where(flip, thr, np.inf).astype(dtype)
            self._runtime = dict(weight=weight, lo=lo, hi=hi)
        elif self.kind == "bitplane_dense":
            bits, scale = check_int(m["bits"], "bits", 1, _kp.MAX_BITS), check_positive_number(m["scale"], "scale")
            weights = bitpack.prepare_weights(a["weight_bits"])
            offsets = ((1 << bits) - 1) * bitpack._k.popcount_reference(weights.words).sum(axis=-1)
            limits, invert = bitpack._bitplane_limits(offsets, int(m["k"]), bits, a["threshold"], a["flip"],
                                                      weights.panels.shape[0])
            self._runtime = dict(weights=weights, limits=limits, invert=invert, bits=bits, scale=scale)
        else:
            self._runtime = dict(weights=bitpack.prepare_weights(a["weight_bits"]))
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, act, dtype, backend):
        """Packed output of this stage for the input ``act`` (real array or packed words); the binary
        stages run on ``backend`` (a :class:`~sbnnumba.backends.Backend`), the others on the host."""
        m, rt = self.meta, self._runtime
        a = self.arrays
        if self.kind == "float_dense":
            h = float_stage_input(self.in_kind, self.in_shape, act, dtype)
            h = _rows(h)
            y = gemm(h, rt["weight"].T)  # the float network's product (runtime.gemm's blocks): the same bits
            return _pack_threshold(y, rt["lo"], rt["hi"])
        if self.kind == "float_conv":
            h = float_stage_input(self.in_kind, self.in_shape, act, dtype)
            kernel, stride, padding = (tuple(m[key]) for key in ("kernel_size", "stride", "padding"))
            win = windows(h, kernel, stride, padding)
            b, c, ho, wo, kh, kw = win.shape
            cols = win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, b * ho * wo)
            y = gemm(rt["weight"], cols)  # (C_out, B * H_out * W_out), Conv2d.forward's product, the same bits
            words = _pack_threshold(y.T, rt["lo"], rt["hi"])  # positions (b, oy, ox) x channels
            return words.reshape(b, ho, wo, words.shape[-1])
        if self.kind == "bitplane_dense":
            # real x on the grid (float) or its integer codes: planes, then the fused bit-plane kernel
            rows = _rows(act)
            try:
                planes = bitpack.pack_planes(rows, rt["bits"], None if act.dtype.kind in "iu" else rt["scale"])
            except ValueError as exc:  # say what to pass
                raise ValueError(f"{exc}; pass the integer codes q (codes=True; uint8 pixels for the grid (1/255, 8) "
                                 f"need no flag) or the floats dtype(scale * q)") from None
            out = np.zeros((rows.shape[0], bitpack.n_words(int(m["n_out"]))), np.uint64)
            _kp.bitplane_gemm_threshold(planes, rt["weights"].panels, rt["limits"], rt["invert"], out)
            return out
        if self.kind == "binary_dense":
            words = _rows(act)
            return bitpack.matmul_threshold(words, rt["weights"], int(m["k"]), a["threshold"], a["flip"],
                                            backend=backend)
        return bitpack.conv2d_threshold(act, rt["weights"], int(m["in_shape"][0]), a["threshold"], a["flip"],
                                        stride=tuple(m["stride"]), padding=tuple(m["padding"]), backend=backend)

    # ------------------------------------------------------------------ checks for loading
    def expected_arrays(self, dtype):
        """name -> (shape, dtype) of the stored arrays implied by ``meta``."""
        m = self.meta
        n_out = int(m["n_out"]) if "n_out" in m else int(m["out_shape"][0])
        if self.kind.startswith("float"):
            shape = tuple(m["weight_shape"])
            out = {"threshold": ((n_out,), dtype), "flip": ((n_out,), np.dtype(bool))}
            if m["binary_weights"]:
                out["weight_bits"] = ((shape[0], bitpack.n_words(int(np.prod(shape[1:])))), np.dtype(np.uint64))
            else:
                out["weight"] = (shape, dtype)
            return out
        if self.kind in ("binary_dense", "bitplane_dense"):
            wshape = (n_out, bitpack.n_words(int(m["k"])))
        else:
            kh, kw = m["kernel_size"]
            wshape = (n_out, kh, kw, bitpack.n_words(int(m["in_shape"][0])))
        return {"weight_bits": (wshape, np.dtype(np.uint64)), "threshold": ((n_out,), np.dtype(np.int32)),
                "flip": ((n_out,), np.dtype(bool))}


def _mode_weight(layer):
    """Deterministic-mode weights: ``sign(eta)`` (sign(0) = +1) for Bernoulli layers, else the weights."""
    return layer.inner.weight_param.mode()


def _pack_float_weights(weight, binary):
    if binary:
        return {"weight_bits": bitpack.pack(weight.reshape(weight.shape[0], -1))}
    return {"weight": np.ascontiguousarray(weight)}


def _convert_stage(index, stage, in_kind, in_shape, dtype, quantization=None):
    """Build the packed stage ``index`` from a network stage reading ``(in_kind, in_shape)``;
    ``quantization = (scale, bits)`` makes a (real-input, binary-weight, dense) stage a bit-plane stage."""
    where = f"stages.{index} ({stage!r})"
    inner, _ = _split(stage)
    evaluate = _preactivation_fn(stage)
    binary_weights = inner.latent is not None
    if quantization is not None:
        if not binary_weights:
            raise ValueError(f"input_quantization: the first stage {stage!r} has real weights; the bit-plane first "
                             "stage needs binary (Bernoulli) weights (e.g. Network.dense(..., weight='bernoulli'))")
        if isinstance(inner, Conv2d):
            raise NotImplementedError(f"input_quantization: the first stage {stage!r} is a convolution; bit-plane "
                                      "first stages are implemented for dense (Linear) stages only")
    weight = _mode_weight(inner).astype(dtype, copy=False)
    n_out = weight.shape[0]
    meta = {"in_kind": in_kind, "in_shape": [int(s) for s in in_shape], "binary_weights": bool(binary_weights),
            "normalized": stage.normalization is not None, "layer": repr(stage)}
    if isinstance(inner, Conv2d):
        if in_kind == "dense":
            raise NotImplementedError(f"{where}: a Conv2d stage after a dense stage is not supported")
        c, h, w = in_shape
        if c != inner.c_in:
            raise ValueError(f"{where}: expects {inner.c_in} input channels, the previous stage gives {c}")
        ho, wo = output_size((h, w), inner.kernel_size, inner.stride, inner.padding)
        if ho < 1 or wo < 1:
            raise ValueError(f"{where}: kernel {inner.kernel_size} does not fit the input map {in_shape}")
        meta.update(kernel_size=list(inner.kernel_size), stride=list(inner.stride), padding=list(inner.padding),
                    out_shape=[n_out, int(ho), int(wo)], weight_shape=list(weight.shape))
        if in_kind == "conv" and binary_weights:
            t, flip = _integer_thresholds(evaluate, n_out, int(np.prod(weight.shape[1:])), dtype, where)
            arrays = {"weight_bits": bitpack.pack_channels(weight), "threshold": t, "flip": flip}
            return _Stage("binary_conv", meta, arrays)
        thr, flip = _float_thresholds(evaluate, n_out, dtype)
        return _Stage("float_conv", meta, {**_pack_float_weights(weight, binary_weights), "threshold": thr,
                                           "flip": flip})
    n_in = int(np.prod(in_shape))
    if n_in != inner.n_in:
        raise ValueError(f"{where}: expects {inner.n_in} input features, the previous stage gives {n_in} "
                         f"(shape {tuple(in_shape)})")
    meta.update(n_in=n_in, n_out=int(n_out), weight_shape=list(weight.shape))
    if quantization is not None:
        scale, bits = quantization
        t, flip = _integer_thresholds(evaluate, n_out, ((1 << bits) - 1) * n_in, dtype, where, scale=scale)
        meta.update(k=n_in, bits=int(bits), scale=float(scale))
        return _Stage("bitplane_dense", meta, {"weight_bits": bitpack.pack(weight), "threshold": t, "flip": flip})
    if in_kind in ("dense", "conv") and binary_weights:
        k = n_in
        t, flip = _integer_thresholds(evaluate, n_out, k, dtype, where)
        if in_kind == "conv":
            # columns (C, H, W) -> the packed map's (H, W, C padded to 64 ceil(C/64)) order
            c, h, w = in_shape
            c_pad = _WORD * bitpack.n_words(c)
            permuted = np.ones((n_out, h, w, c_pad), np.int8)
            permuted[..., :c] = weight.reshape(n_out, c, h, w).transpose(0, 2, 3, 1)
            bits = bitpack.pack(permuted).reshape(n_out, -1)
            shift = h * w * (c_pad - c)  # padding positions: +1 * +1 each
            k = h * w * c_pad
            t = (t.astype(np.int64) + shift).astype(np.int32)
        else:
            bits = bitpack.pack(weight)
        meta["k"] = int(k)
        return _Stage("binary_dense", meta, {"weight_bits": bits, "threshold": t, "flip": flip})
    thr, flip = _float_thresholds(evaluate, n_out, dtype)
    return _Stage("float_dense", meta, {**_pack_float_weights(weight, binary_weights), "threshold": thr,
                                        "flip": flip})


def _check_quantization(value):
    """``(scale, bits)`` from ``input_quantization`` (TypeError / ValueError naming the argument)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"input_quantization: expected a pair (scale, bits), e.g. (1/255, 8), got {value!r}")
    return (check_positive_number(value[0], "input_quantization"),
            check_int(value[1], "input_quantization", 1, _kp.MAX_BITS))


def quantized_reference_logits(net: Network, x: np.ndarray, input_quantization: tuple[float, int]) -> np.ndarray:
    r"""Logits of ``net``'s deterministic network with the first raw product computed exactly.

    For inputs on the grid ``x = dtype(scale * q)`` (integer ``q`` in ``[0, 2^bits)``): the codes
    ``q = rint(x / scale)``, the exact integer product ``z = q @ sign(eta_1).T`` (float64, exact since
    ``|z| <= (2^bits - 1) K < 2^53``), ``y = dtype(scale * z)`` (float64 product rounded once), the
    first stage's bias and normalization applied to ``y`` with the float network's own operations,
    ``sign``; every later stage and the head exactly as :meth:`Network.forward_deterministic`. This is
    what a :class:`PackedNetwork` converted with ``input_quantization`` computes (bitwise equal
    logits); it differs from ``forward_deterministic`` only where the float32 rounding of ``x @ w.T``
    puts a first-stage pre-activation on the other side of its threshold.

    Parameters
    ----------
    net : sbnnumba.Network
        Dense first stage with Bernoulli weights; its parameters are not modified.
    x : ndarray (B, ...)
        Inputs on the grid (``ValueError`` naming ``x`` otherwise).
    input_quantization : (float, int)
        ``(scale, bits)``.

    Returns
    -------
    ndarray (B, n_classes)
    """
    scale, bits = _check_quantization(input_quantization)
    dtype = np.dtype(net.dtype)
    x = net.check_input(x)
    rows = x.reshape(len(x), -1)
    bitpack.pack_planes(rows, bits, scale)  # the grid check (ValueError naming x)
    stage = net.stages[0]
    inner, _ = _split(stage)
    if inner.latent is None or not isinstance(inner, Linear):
        raise ValueError(f"net: the first stage {stage!r} must be dense with binary (Bernoulli) weights")
    q = np.rint(rows.astype(np.float64) / scale)
    z = q @ _mode_weight(inner).astype(np.float64).T
    a = _preactivation_fn(stage)((scale * z).astype(dtype))
    h = np.where(a >= 0, 1, -1).astype(dtype)
    with net.evaluating("deterministic"):
        for layer in net.stages[1:]:  # Bernoulli stages compute with sign(eta)
            a = layer.forward(h)
            h = np.where(a >= 0, 1, -1).astype(a.dtype)
        return net.head.forward(h)


# ---------------------------------------------------------------------------------------------------
# The packed network
# ---------------------------------------------------------------------------------------------------

class PackedNetwork:
    """A deterministic binary network running on bit-packed words (see the module docstring).

    Build it with :meth:`from_network` or :meth:`load`; run it with :meth:`predict_logits` /
    :meth:`predict`.

    Attributes
    ----------
    stages : list
        Packed stages, each with ``kind`` (``"float_dense"``, ``"float_conv"``, ``"binary_dense"``,
        ``"binary_conv"``), ``meta`` (geometry) and ``arrays`` (stored arrays).
    head_weight, head_bias : ndarray
        The real linear head ``(n_classes, n_in)`` and ``(n_classes,)``.
    input_shape : tuple of int
        Per-example input shape.
    dtype : numpy dtype
        Float dtype of the float stages, the head and the logits (the network's dtype).
    backend : Backend
        Where the binary stages' XNOR-popcount products run (:func:`sbnnumba.backends.get_backend`;
        assign a name to change it, e.g. ``packed.backend = "cuda"``). :meth:`from_network` takes the
        network's backend, :meth:`load` the default (``$SBNNUMBA_BACKEND`` or ``"cpu"``). Float and
        bit-plane stages and the head run on the host (NumPy / the Numba bit-plane kernel).

    Parameters
    ----------
    stages : sequence of packed stages
        As built by :meth:`from_network` or read by :meth:`load` (users call those, not the constructor);
        each is prepared for ``dtype`` here.
    head_weight : ndarray, shape (n_classes, n_in)
        Weights of the real linear head (deterministic values for Bernoulli weights).
    head_bias : ndarray, shape (n_classes,)
        Its bias.
    input_shape : tuple of int
        Per-example input shape.
    dtype : numpy dtype
        float32 or float64.
    head_in : (str, tuple of int)
        The head's input descriptor ``(kind, shape)``: ``kind`` is ``"real"``, ``"dense"`` (packed vector)
        or ``"conv"`` (packed map), ``shape`` the per-example shape, as the last stage's ``out_desc``; the logits are
        ``h @ head_weight.T + head_bias`` with ``h`` that input unpacked to ``(B, n_in)``.
    float_sizes : list of int, optional
        Bytes of each stage and of the head as float32 (for :meth:`size_report`).
    """

    backend = BackendAttribute()

    def __init__(self, stages: list, head_weight: np.ndarray, head_bias: np.ndarray, input_shape: tuple[int, ...],
                 dtype: npt.DTypeLike, head_in: tuple, float_sizes: list | None = None) -> None:
        self.stages = list(stages)
        self.head_weight = np.ascontiguousarray(head_weight)
        self.head_bias = np.asarray(head_bias)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dtype = np.dtype(dtype)
        self.head_in = (head_in[0], tuple(int(s) for s in head_in[1]))
        self.float_sizes = float_sizes
        self.backend = None
        self.input_convention: str | None = None  # sbnnumba.inputs: the float network's, recorded in the file
        for stage in self.stages:
            stage.prepare(self.dtype)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_network(cls, net: Network, calibration_x: np.ndarray | None = None,
                     input_shape: tuple[int, ...] | None = None,
                     input_quantization: tuple[float, int] | None = None) -> PackedNetwork:
        """Convert the deterministic version of ``net`` (see :meth:`Network.forward_deterministic`).

        Parameters
        ----------
        net : sbnnumba.Network
            A (trained) network; its parameters and statistics are not modified, and must be finite
            (ValueError naming a parameter holding NaN or inf). Normalization layers
            must hold the statistics of the deterministic mode (:meth:`Network.recalibrate_normalization` with
            ``mode="deterministic"``), as ``forward_deterministic`` uses them (otherwise both use the
            stochastic running statistics, with a warning).
        calibration_x : ndarray (B, ...), optional
            Inputs on which the conversion is checked: the packed network's logits must equal
            ``net.forward_deterministic(calibration_x)`` (``RuntimeError`` otherwise; with
            ``input_quantization``: the logits of the exact-first-product reference, see the module
            docstring). Also gives the input shape. The statistics are *not* re-estimated here.
        input_shape : tuple of int, optional
            Per-example input shape; needed for conv networks unless ``calibration_x`` is given, the
            first Conv2d knows its ``in_shape`` (a network loaded from a checkpoint does).
        input_quantization : (float, int), optional
            ``(scale, bits)``: declares the inputs quantized, ``x = dtype(scale * q)`` with integer
            ``q`` in ``[0, 2^bits)``, ``1 <= bits <= 8`` (Fashion-MNIST pixels from
            :func:`sbnnumba.datasets.normalize`: ``(1/255, 8)``). The first stage, which must then be
            dense with binary (Bernoulli) weights, becomes a **bit-plane stage** computing the exact
            integer ``z = sum_i q_i w_i`` with XNOR-popcount kernels instead of a float GEMM
            (:func:`sbnnumba.bitpack.bitplane_matmul_threshold`). Its states are those of the float
            network with the first raw product computed exactly, ``y = dtype(scale * z)``; they can
            differ from ``forward_deterministic``'s only where float32 rounding of ``x @ w.T`` crosses
            a threshold (module docstring). Inputs off the grid raise ``ValueError`` at prediction.
            Default ``None``: every path stays bit-exact.

        Returns
        -------
        PackedNetwork
        """
        from .network import check_network

        check_network(net)
        dtype = np.dtype(net.dtype)
        if dtype not in _FLOAT_RANGE:
            raise TypeError(f"net: expected a float32 or float64 network, got dtype {dtype}")
        quantization = None if input_quantization is None else _check_quantization(input_quantization)
        if calibration_x is not None:
            calibration_x = net.check_input(calibration_x)
        shape = cls._input_shape(net, calibration_x, input_shape)
        net.check_params()  # ValueError naming a parameter holding NaN or inf
        missing = [p for p, l in net.layers() if l.normalization is not None
                   and l.normalization.running.get("deterministic") is None]
        if missing:
            warnings.warn(f"PackedNetwork.from_network: {missing} hold no deterministic-mode normalization "
                          "statistics; the deterministic network (float and packed) uses the stochastic running "
                          "statistics. Call net.recalibrate_normalization(x_train, mode='deterministic') first.",
                          RuntimeWarning, stacklevel=2)
        stages, act = [], ("real", shape)
        float_sizes = []
        for index, stage in enumerate(net.stages):
            packed = _convert_stage(index, stage, act[0], act[1], dtype, quantization if index == 0 else None)
            stages.append(packed)
            act = packed.out_desc
            inner, norm = _split(stage)
            float_sizes.append(4 * (inner.weight.size + inner.bias.size + (4 * inner.bias.size if norm else 0)))
        head = net.head
        if head.n_in != int(np.prod(act[1])):
            raise ValueError(f"head: expects {head.n_in} inputs, the last stage gives {int(np.prod(act[1]))}")
        head_weight = _mode_weight(head).astype(dtype, copy=True)
        float_sizes.append(4 * (head.weight.size + head.bias.size))
        packed = cls(stages, head_weight, head.bias.astype(dtype, copy=True), shape, dtype, act, float_sizes)
        packed.backend = net.backend
        packed.input_convention = net.input_convention
        if calibration_x is not None:
            if quantization is None:
                expected = net.forward_deterministic(calibration_x)
                reference = "net.forward_deterministic"
            else:
                try:
                    expected = quantized_reference_logits(net, calibration_x, quantization)
                except ValueError as exc:
                    raise ValueError(f"calibration_x: {str(exc).removeprefix('x: ')}") from None
                reference = "the exact-first-product reference (quantized_reference_logits)"
            got = packed.predict_logits(calibration_x)
            if not (np.array_equal(np.argmax(got, 1), np.argmax(expected, 1))
                    and np.allclose(got, expected, rtol=1e-5, atol=1e-5)):
                raise RuntimeError(f"PackedNetwork.from_network: the packed network does not reproduce {reference} "
                                   f"on calibration_x (max |logit difference| {np.max(np.abs(got - expected)):.3g})")
        return packed

    @staticmethod
    def _input_shape(net, calibration_x, input_shape):
        first = _split(net.stages[0])[0]
        candidates = []
        if input_shape is not None:
            candidates.append(tuple(int(s) for s in np.atleast_1d(input_shape)))
        elif calibration_x is not None:
            candidates.append(tuple(calibration_x.shape[1:]))
        elif isinstance(first, Conv2d) and first.in_shape is not None:
            candidates.append(tuple(first.in_shape))
        elif isinstance(first, Linear):
            candidates.append((first.n_in,))
        if not candidates:
            raise ValueError("input_shape: the network starts with a Conv2d of unknown input size; pass "
                             "input_shape=(C, H, W) or calibration_x")
        shape = candidates[0]
        try:
            net.stage_shapes(shape)  # ValueError naming x if it does not fit
        except ValueError as exc:
            if input_shape is None:
                raise
            raise ValueError(f"input_shape: {str(exc).removeprefix('x: ')}") from None
        return shape

    # ------------------------------------------------------------------ inference
    def _check_x(self, x, codes=False):
        codes = check_bool(codes, "codes")
        x = np.asarray(x)
        first = self.stages[0]
        if codes:
            if first.kind != "bitplane_dense":
                raise ValueError("codes: integer input codes need a bit-plane first stage (PackedNetwork.from_network "
                                 "with input_quantization)")
            if x.dtype.kind not in "iu":
                raise TypeError(f"x: expected integer codes q (codes=True), got dtype {x.dtype}")
        elif not (x.dtype == np.uint8 and self._pixels_are_codes()):
            # the float network's input rule (uint8 images scaled by 1/255, the recorded range checked)
            x = to_float(x, self.dtype, self.input_convention)
        if x.ndim < 2:
            raise ValueError(f"x: expected a batch (B, ...) of inputs of shape {self.input_shape}, got {x.shape}")
        if first.kind == "float_conv" and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x: expected inputs of shape (B, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        if first.kind in ("float_dense", "bitplane_dense") and int(np.prod(x.shape[1:])) != int(first.meta["n_in"]):
            raise ValueError(f"x: expected {first.meta['n_in']} input features per example "
                             f"(shape {self.input_shape}), got shape {x.shape}")
        # a bit-plane first stage checks its input itself (on the grid, hence finite) while packing it
        if first.kind != "bitplane_dense" and not all_finite(x):
            raise ValueError("x: expected finite values, found NaN or inf")
        return x

    def _pixels_are_codes(self):
        """uint8 images are their own codes for a bit-plane first stage on the pixel grid (1/255, 8 bits):
        passing them as codes is exact and gives what their floats ``x / 255`` give."""
        quantization = self.input_quantization
        return quantization is not None and quantization[1] >= 8 and \
            float(quantization[0]) == float(np.float64(1) / 255)

    @property
    def input_quantization(self):
        """``(scale, bits)`` of a bit-plane first stage, else ``None``."""
        first = self.stages[0]
        return (first.meta["scale"], first.meta["bits"]) if first.kind == "bitplane_dense" else None

    def forward_packed(self, x: npt.ArrayLike, codes: bool = False) -> list[np.ndarray]:
        """Packed output words of every stage for inputs ``x`` (B, ...): a list, one per stage.

        Parameters
        ----------
        x : array_like, shape (B, ...)
            Inputs, per-example shape :attr:`input_shape`.
        codes : bool
            (bit-plane first stage only) ``x`` holds the integer codes ``q`` of the inputs ``scale * q``
            (e.g. the uint8 pixels), which skips the rounding and grid check.

        Returns
        -------
        list of ndarray of uint64
            Per stage: ``(B, ceil(N/64))`` for a dense stage, ``(B, H, W, ceil(C/64))`` for a conv stage
            (bit set = -1).
        """
        act, out = self._check_x(x, codes), []
        for stage in self.stages:
            act = stage.forward(act, self.dtype, self.backend)
            out.append(act)
        return out

    def forward_states(self, x: npt.ArrayLike, codes: bool = False) -> list[np.ndarray]:
        """+-1 states of every stage in the float network's layout ((B, N) or (B, C, H, W)).

        Parameters
        ----------
        x, codes
            As in :meth:`forward_packed`.

        Returns
        -------
        list of ndarray
            Per stage, +-1 values of :attr:`dtype`: ``(B, N)`` or ``(B, C, H, W)``.
        """
        states = []
        for stage, words in zip(self.stages, self.forward_packed(x, codes)):
            kind, shape = stage.out_desc
            states.append(_unpack(words, shape[0], self.dtype) if kind == "dense"
                          else _unpack_map(words, shape, self.dtype))
        return states

    def _logits(self, x, codes=False):
        act = self._check_x(x, codes)
        for stage in self.stages:
            act = stage.forward(act, self.dtype, self.backend)
        h = float_stage_input(self.head_in[0], self.head_in[1], act, self.dtype)
        return gemm(_rows(h), self.head_weight.T) + self.head_bias  # the float head's product

    def predict_logits(self, x: npt.ArrayLike, batch_size: int | None = None, codes: bool = False) -> np.ndarray:
        """Logits (B, n_classes) of inputs ``x`` (B, ...), equal to the float deterministic network's
        (with a bit-plane first stage: to the exact-first-product reference's, see the module docstring).

        Parameters
        ----------
        x : array_like, shape (B, ...)
            Inputs.
        batch_size : int, optional
            Splits the work into chunks (default: one pass over the whole batch).
        codes : bool
            (bit-plane first stage only) ``x`` holds the integer codes ``q`` of the inputs ``scale * q``
            (e.g. uint8 pixels), packed without the rounding and grid check of float inputs.

        Returns
        -------
        ndarray, shape (B, n_classes), of :attr:`dtype`
            ``h @ head_weight.T + head_bias`` with ``h`` the last stage's states.
        """
        if batch_size is None:
            return self._logits(x, codes)
        batch_size = check_positive_int(batch_size, "batch_size")
        x = np.asarray(x)
        return np.concatenate([self._logits(x[s:s + batch_size], codes)
                               for s in range(0, max(len(x), 1), batch_size)])

    def predict(self, x: npt.ArrayLike, batch_size: int | None = None, codes: bool = False) -> np.ndarray:
        """Predicted classes (B,): argmax of :meth:`predict_logits`.

        Parameters
        ----------
        x, batch_size, codes
            As in :meth:`predict_logits`.

        Returns
        -------
        ndarray of int64, shape (B,)
        """
        return np.argmax(self.predict_logits(x, batch_size, codes), axis=-1)

    @property
    def n_classes(self):
        return self.head_weight.shape[0]

    # ------------------------------------------------------------------ size
    def size_report(self, print_fn: Callable[[str], object] | None = None) -> list[dict[str, Any]]:
        """Bytes of the packed model vs the float32 model of the same network, per layer and total.

        The float32 figure counts what the float deterministic network needs: weights and biases,
        plus ``gamma, beta`` and the two running statistics per unit of normalized stages, 4 bytes
        each. The packed figure is the bytes of the arrays the packed model stores (and saves):
        weights as 1-bit words (uint64, padded to 64 bits per row / pixel) or float, thresholds
        (int32 for binary stages, float for float stages) and flip flags (1 byte per unit).

        Parameters
        ----------
        print_fn : callable, optional
            Called once with the table as text (e.g. ``print``); None prints nothing.

        Returns
        -------
        list of dict
            Per layer ``name``, ``kind``, ``packed_bytes``, ``float32_bytes``, ``ratio``
            (float32 / packed); the last row is the ``"total"``.
        """
        rows = []
        float_sizes = self.float_sizes or [None] * (len(self.stages) + 1)
        for i, (stage, f32) in enumerate(zip(self.stages, float_sizes)):
            packed = int(sum(a.nbytes for a in stage.arrays.values()))
            kind = stage.kind + (" (1-bit weights)" if stage.meta.get("binary_weights") and
                                 stage.kind.startswith("float") else "")
            if stage.kind == "bitplane_dense":
                kind += f" ({stage.meta['bits']}-bit input)"
            rows.append(dict(name=f"stages.{i}", kind=kind, packed_bytes=packed,
                             float32_bytes=None if f32 is None else int(f32)))
        rows.append(dict(name="head", kind="float_dense (head)",
                         packed_bytes=int(self.head_weight.nbytes + self.head_bias.nbytes),
                         float32_bytes=None if float_sizes[-1] is None else int(float_sizes[-1])))
        total_f32 = None if any(r["float32_bytes"] is None for r in rows) else sum(r["float32_bytes"] for r in rows)
        rows.append(dict(name="total", kind="", packed_bytes=sum(r["packed_bytes"] for r in rows),
                         float32_bytes=total_f32))
        for r in rows:
            r["ratio"] = None if r["float32_bytes"] is None else r["float32_bytes"] / r["packed_bytes"]
        if print_fn is not None:
            lines = [f"{'layer':10s} {'kind':32s} {'packed':>12s} {'float32':>12s} {'ratio':>8s}"]
            for r in rows:
                f32 = "?" if r["float32_bytes"] is None else f"{r['float32_bytes']:,d}"
                ratio = "?" if r["ratio"] is None else f"{r['ratio']:.1f}x"
                lines.append(f"{r['name']:10s} {r['kind']:32s} {r['packed_bytes']:>12,d} {f32:>12s} {ratio:>8s}")
            print_fn("\n".join(lines))
        return rows

    # ------------------------------------------------------------------ export
    def export_c(self, directory: str | os.PathLike[str], name: str = "model") -> CExport:
        """Write this network as dependency-free C99 (header, source, example ``main.c``, Makefile,
        README) into ``directory``; see :func:`sbnnumba.export.export_c`, which this calls.

        Parameters
        ----------
        directory : str or os.PathLike
            Created if missing.
        name : str
            C prefix of the files, functions, types and macros.

        Returns
        -------
        sbnnumba.export.CExport
            The files written, the trace layout and the data size per layer against float32.
        """
        from .export import export_c

        return export_c(self, directory, name=name)

    # ------------------------------------------------------------------ files
    def _spec(self):
        spec = {"input_shape": list(self.input_shape), "dtype": self.dtype.name,
                "head_in": [self.head_in[0], list(self.head_in[1])],
                "float_sizes": None if self.float_sizes is None else [int(s) for s in self.float_sizes],
                "stages": [{"kind": s.kind, "meta": s.meta} for s in self.stages]}
        if self.input_convention is not None:  # absent from files written before it was recorded (#41)
            spec["input"] = self.input_convention
        return spec

    def _format_version(self):
        """The oldest format version that holds this network (1 unless it has a bit-plane stage)."""
        return min(v for v, kinds in _Stage.kinds_by_version.items() if all(s.kind in kinds for s in self.stages))

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the packed network to one ``.npz`` atomically (temp file + ``os.replace``).

        The file has format version 1 (readable by older sbnnumba) unless the network has a bit-plane
        stage (version 2).

        Parameters
        ----------
        path : str or os.PathLike
            The file.

        Returns
        -------
        str
            ``path`` as a string.
        """
        arrays = {"meta/format": np.array(FORMAT), "meta/version": np.array(self._format_version()),
                  "meta/spec": np.array(json.dumps(self._spec(), sort_keys=True)),
                  "head/weight": self.head_weight, "head/bias": self.head_bias}
        for i, stage in enumerate(self.stages):
            for name, arr in stage.arrays.items():
                arrays[f"stages/{i}/{name}"] = arr
        return atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # stub: allow_pickle

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PackedNetwork:
        """Read a file written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The file.

        Returns
        -------
        PackedNetwork
            Runs on the default backend (``$SBNNUMBA_BACKEND`` or ``"cpu"``).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        PackedFormatError
            Not a packed-network file, another format version, or a corrupt, truncated or
            inconsistent file; the message names the file.
        """
        path = os.fspath(path)
        version, arrays = read_versioned_npz(path, FORMAT, _Stage.kinds_by_version, PackedFormatError,
                                             "packed sbnnumba network")
        if "meta/spec" not in arrays:
            raise PackedFormatError(f"{path}: lacks the entry 'meta/spec'")
        try:
            spec = json.loads(str(arrays["meta/spec"]))
        except ValueError as exc:
            raise PackedFormatError(f"{path}: corrupt packed-network spec ({exc})") from None
        data = {k: v for k, v in arrays.items() if k.startswith(("stages/", "head/"))}
        try:
            return cls._from_spec(spec, data, path, version)
        except PackedFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PackedFormatError(f"{path}: inconsistent packed-network file ({type(exc).__name__}: {exc})") \
                from None

    @classmethod
    def _from_spec(cls, spec, data, path, version=FORMAT_VERSION):
        dtype = np.dtype(spec["dtype"])
        if dtype not in _FLOAT_RANGE:
            raise PackedFormatError(f"{path}: unsupported dtype {dtype}")
        stages, used = [], {"head/weight", "head/bias"}
        for i, entry in enumerate(spec["stages"]):
            kind, meta = entry["kind"], entry["meta"]
            if kind not in _Stage.kinds_by_version[version]:
                raise PackedFormatError(f"{path}: stage {i} has the unknown kind {kind!r} (format version {version})")
            if kind == "bitplane_dense" and meta.get("in_kind") != "real":
                raise PackedFormatError(f"{path}: stage {i}: a bit-plane stage must read the real input")
            stage = _Stage(kind, meta, {})
            for name, (shape, dt) in stage.expected_arrays(dtype).items():
                key = f"stages/{i}/{name}"
                if key not in data:
                    raise PackedFormatError(f"{path}: lacks the array {key!r}")
                arr = data[key]
                if arr.shape != tuple(shape) or arr.dtype != dt:
                    raise PackedFormatError(f"{path}: array {key!r} is {arr.dtype} {arr.shape}, expected "
                                            f"{np.dtype(dt)} {tuple(shape)}")
                stage.arrays[name] = arr
                used.add(key)
            stages.append(stage)
        if not stages or stages[0].in_kind != "real":
            raise PackedFormatError(f"{path}: the first stage must read the real input")
        for i in range(1, len(stages)):
            if stages[i].in_kind != stages[i - 1].out_desc[0] or \
                    tuple(stages[i].in_shape) != tuple(stages[i - 1].out_desc[1]):
                raise PackedFormatError(f"{path}: stage {i} does not read the output of stage {i - 1}")
        head_in = (spec["head_in"][0], tuple(spec["head_in"][1]))
        weight, bias = data.get("head/weight"), data.get("head/bias")
        n_in = int(np.prod(head_in[1]))
        if weight is None or bias is None or weight.dtype != dtype or bias.dtype != dtype or weight.ndim != 2 \
                or weight.shape[1] != n_in or bias.shape != (weight.shape[0],):
            raise PackedFormatError(f"{path}: missing or malformed head arrays (expected {dtype} weight (K, {n_in}) "
                                    "and bias (K,))")
        if stages[-1].out_desc != (head_in[0], head_in[1]):
            raise PackedFormatError(f"{path}: the head does not read the output of the last stage")
        unexpected = sorted(set(data) - used)
        if unexpected:
            raise PackedFormatError(f"{path}: unexpected arrays {unexpected}")
        packed = cls(stages, weight, bias, spec["input_shape"], dtype, head_in, spec.get("float_sizes"))
        packed.input_convention = check_convention(spec.get("input"), "spec: input")
        return packed

    def __repr__(self):
        body = ", ".join(s.kind for s in self.stages)
        return f"PackedNetwork([{body}], head={tuple(self.head_weight.shape)}, input_shape={self.input_shape})"
