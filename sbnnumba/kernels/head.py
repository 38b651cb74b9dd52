r"""Numba CPU kernel for PSA's head differences (:meth:`sbnnumba.backends.cpu.CpuBackend.head_flips`).

For every last binary unit ``i`` the head logits with that unit flipped, ``eta^(i) = eta - 2 x_i V[:, i]``,
their softmax cross-entropy ``l^(i) = log sum_k e^{eta^(i)_k} - eta^(i)_y``, the differences ``d_i = l^(i) - l(eta)``
(B, N_L) and the gradients ``softmax(eta^(i)) - onehot(y)`` (B, N_L, K).

**Factored form.** The states are ``x_i = +-1``, so each flipped exponential factors into a per-example and a
per-weight part:

.. math::

    e^{\eta^{(i)}_k - M} = E_k\, F^{x_i}_{ki}, \qquad E_k = e^{\eta_k - M},\quad
    F^{\pm}_{ki} = e^{\mp 2 V_{ki}}, \qquad M = \max_k \eta_k,

and with ``S_i = sum_k E_k F^{x_i}_{ki}``, ``S_0 = sum_k E_k``:

.. math::

    d_i = \log(S_i / S_0) + 2 x_i V_{y i}, \qquad \mathrm{softmax}(\eta^{(i)})_k = E_k F^{x_i}_{ki} / S_i .

That is ``B K + 2 K N_L`` exponentials instead of the ``B K N_L`` of the formula (spec psa.md, pitfall 7), and one
pass (:func:`factored_flip_softmax`) for the sums and the gradients. ``d`` is the log of a ratio near 1 plus an
exact product, not the difference of two losses, so its error does not grow with the loss or the logits' scale.

Range: with ``max |2V| <= L`` (:data:`FACTORED_WEIGHT_LIMIT`: 20 in float32, 200 in float64) every ``E`` is in
``(0, 1]`` (one of them 1) and every ``F`` in ``[e^{-L}, e^{L}]``, so ``e^{-L} <= S_i <= K e^{L}``: nothing
overflows, and a term whose ``E`` is subnormal is off by less than ``2^-126 e^{L}`` (float32), below ``2^-24 S_i``
for fewer than ``2^40`` classes. The sums add ``k = 0, 1, ...`` in order (no ``fastmath``), so the bits do not
depend on the thread count. Error (``u = 2^-24`` or ``2^-53``; exact values from the same inputs):
``|d - d_exact| <= (2 K + 16) u (1 + |d|)`` and ``|g - g_exact| <= (K + 16) u`` (``tests/test_head_kernels.py``).

Outside that range (``max |2V| > L``), for states other than ``+-1``, non-finite logits or weights, one logit
(the binary head) or other dtypes, :func:`flip_losses` returns None and the caller runs the NumPy formula of the
reference backend (a stable log-softmax per flipped logit vector).
"""
import numba
import numpy as np
from numba import prange

from ..runtime import kernel_threads

#: Largest ``max |2 V|`` of the factored form per dtype (see the module's range bound).
FACTORED_WEIGHT_LIMIT = {np.dtype(np.float32): 20.0, np.dtype(np.float64): 200.0}


@numba.njit(parallel=True, cache=True)
def factored_flip_softmax(e, s0, x_last, v, f_pos, f_neg, y, ratio, linear, g, not_pm1):
    """The factored head sums of one batch (module docstring).

    Parameters
    ----------
    e : ndarray (B, K)
        ``E = e^{eta - M}``.
    s0 : ndarray (B,)
        ``S_0 = sum_k E_k``.
    x_last : ndarray (B, N)
        States (``+-1``; any other value is counted in ``not_pm1`` and its outputs are meaningless).
    v : ndarray (K, N)
        Head weight.
    f_pos, f_neg : ndarray (K, N)
        ``e^{-2V}`` and ``e^{+2V}``.
    y : int64 ndarray (B,)
        Labels.
    ratio : ndarray (B, N)
        Out: ``S_i / S_0``.
    linear : ndarray (B, N)
        Out: ``2 x_i V[y, i]`` (exact).
    g : ndarray (B, K, N)
        Out: ``softmax(eta^(i))_k - [k = y]``; the loops over the units are contiguous (vectorized).
    not_pm1 : int64 ndarray (B,)
        Out: the number of states other than ``+-1`` per example.
    """
    n_batch, n_units = x_last.shape
    n_classes = e.shape[1]
    zero = x_last.dtype.type(0)
    one = x_last.dtype.type(1)
    two = x_last.dtype.type(2)
    for b in prange(n_batch):
        x, s, lin = x_last[b], ratio[b], linear[b]
        count = 0
        for i in range(n_units):
            s[i] = zero
            count += (x[i] != one) & (x[i] != -one)
        not_pm1[b] = count
        for k in range(n_classes):
            ek, fp, fn = e[b, k], f_pos[k], f_neg[k]
            for i in range(n_units):
                p, q = fp[i], fn[i]  # both loaded before the select: a conditional load does not vectorize (10x)
                s[i] += ek * (p if x[i] > zero else q)
        for k in range(n_classes):
            ek, fp, fn, gk = e[b, k], f_pos[k], f_neg[k], g[b, k]
            for i in range(n_units):
                p, q = fp[i], fn[i]
                gk[i] = ek * (p if x[i] > zero else q) / s[i]
        yb = y[b]
        gy, vy = g[b, yb], v[yb]
        for i in range(n_units):
            gy[i] -= one
            lin[i] = two * x[i] * vy[i]
            s[i] /= s0[b]


def flip_losses(logits, y, x_last, v, loss0):
    r"""PSA head differences ``d_i = l(eta^(i)) - l(eta)`` and the gradients ``softmax(eta^(i)) - onehot(y)`` by
    the factored form (module docstring), or None where it does not apply (the caller then uses the NumPy formula).

    Parameters
    ----------
    logits : ndarray (B, K)
        Head logits ``eta = V x + c``.
    y : int ndarray (B,)
        Labels.
    x_last : ndarray (B, N_L)
        +-1 states of the last binary layer.
    v : ndarray (K, N_L)
        Head weight.
    loss0 : ndarray (B,)
        ``l(eta)`` (the interface's; the factored ``d`` does not subtract it).

    Returns
    -------
    (d, g) : (ndarray (B, N_L), ndarray (B, N_L, K)), or None
        ``g`` is a transposed view of a (B, K, N_L) array (the memory layout of the NumPy formula's result). None
        unless ``logits``, ``x_last``, ``v`` are float32 or float64 of one dtype, ``K >= 2``, the logits and ``v``
        are finite, ``max |2 v| <= FACTORED_WEIGHT_LIMIT[dtype]`` and every state is ``+-1``.
    """
    dtype = logits.dtype
    n_batch, n_units = x_last.shape
    n_classes = logits.shape[1]
    if (dtype not in (np.float32, np.float64) or x_last.dtype != dtype or v.dtype != dtype or n_classes < 2
            or not (np.isfinite(logits).all() and np.isfinite(v).all())
            or 2 * float(np.abs(v).max(initial=0)) > FACTORED_WEIGHT_LIMIT[np.dtype(dtype)]):
        return None
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    s0 = e.sum(axis=1)
    f_pos = np.exp(-2 * v)  # the unit's state +1: the flip subtracts 2 V
    f_neg = np.exp(2 * v)
    ratio = np.empty((n_batch, n_units), dtype)
    linear = np.empty((n_batch, n_units), dtype)
    g = np.empty((n_batch, n_classes, n_units), dtype)  # the NumPy formula's memory layout (einsum speed)
    not_pm1 = np.empty(n_batch, np.int64)
    with kernel_threads(g.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        factored_flip_softmax(e, s0, np.ascontiguousarray(x_last), np.ascontiguousarray(v), f_pos, f_neg,
                              np.ascontiguousarray(y, dtype=np.int64), ratio, linear, g, not_pm1)
    if not_pm1.any():
        return None
    d = np.log(ratio, out=ratio)
    d += linear
    return d, g.transpose(0, 2, 1)
