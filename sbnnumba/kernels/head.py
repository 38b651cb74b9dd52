r"""Numba CPU kernels for PSA's head differences (:meth:`sbnnumba.backends.cpu.CpuBackend.head_flips`).

For every last binary unit ``i`` the head logits with that unit flipped, ``eta^(i) = eta - 2 x_i V[:, i]``,
their softmax cross-entropy ``l^(i) = log sum_k e^{eta^(i)_k} - eta^(i)_y`` and its gradient
``softmax(eta^(i)) - onehot(y)``, all (B, N_L, K). The NumPy formulas (:func:`sbnnumba.losses.xent` on
:func:`sbnnumba.backends.reference.flip_logits`) walk these arrays about nine times (the flipped logits,
their maximum, the shift, ``exp``, the sums, the picked logits, the division, two fancy-indexed passes for
the label); here two fused passes do the arithmetic around NumPy's ``exp`` and ``log``, which stay NumPy's
own (vectorized) functions, so every value is bit for bit the NumPy one:

1. :func:`shifted_flip_logits`: ``t = eta^(i) - m^(i)`` with ``m^(i) = max_k eta^(i)_k``, and ``eta^(i)_y``;
2. NumPy ``exp(t)`` in place;
3. :func:`softmax_grad`: ``s^(i) = sum_k e_k``, then ``e / s`` and ``- 1`` at the label, in place;
4. NumPy ``log(s) + m - eta^(i)_y``.

NumPy lays the flipped logits out as (B, K, N_L) in memory (``V.T`` broadcast against ``x``: the units vary
fastest), so its sums over ``k`` run element-wise over the units, ``k = 0, 1, ...`` in turn (not the pairwise
sum of a contiguous axis). The kernels use the same layout (their loops over the units are contiguous and
vectorize), add in the same order, and return the gradient with the NumPy result's strides, so that the
``einsum`` of the head gradient also sums in the same order. The products ``2 x_i V[k, i]`` are exact
(``x = +-1``), and no ``fastmath``: each value is the same IEEE operation in the same order as the NumPy
formula (``tests/test_head_kernels.py`` checks the bits).
"""
import numba
import numpy as np
from numba import prange

from ..runtime import blockwise, kernel_threads


@numba.njit(parallel=True, cache=True)
def shifted_flip_logits(logits, x_last, v, y, t, m, picked):
    """``t[b,k,i] = z - m[b,i]`` with ``z = logits[b,k] - 2 x_last[b,i] v[k,i]``, ``m`` the maximum over ``k`` of
    ``z`` and ``picked[b,i] = z`` at ``k = y[b]`` (finite inputs). Shapes: logits (B, K), x_last (B, N), v (K, N),
    y (B,), t (B, K, N), m and picked (B, N); the loops over the units are contiguous (vectorized)."""
    n_batch, n_units = x_last.shape
    n_classes = logits.shape[1]
    two = logits.dtype.type(2)  # float32 stays float32: the products and differences of the NumPy formula
    for b in prange(n_batch):
        x, top, z_y = x_last[b], m[b], picked[b]
        for i in range(n_units):
            top[i] = logits[b, 0] - two * x[i] * v[0, i]
        for k in range(1, n_classes):
            for i in range(n_units):
                top[i] = max(top[i], logits[b, k] - two * x[i] * v[k, i])
        for k in range(n_classes):
            for i in range(n_units):
                t[b, k, i] = (logits[b, k] - two * x[i] * v[k, i]) - top[i]
        for i in range(n_units):
            z_y[i] = logits[b, y[b]] - two * x[i] * v[y[b], i]


@numba.njit(parallel=True, cache=True)
def softmax_grad(e, y, total):
    """In place ``e[b,:,i] <- e / s - onehot(y[b])`` with ``total[b,i] = s = sum_k e[b,k,i]`` added in the order
    k = 0, 1, ... (NumPy's). Shapes: e (B, K, N), y (B,), total (B, N)."""
    n_batch, n_classes, n_units = e.shape
    one = e.dtype.type(1)
    for b in prange(n_batch):
        s = total[b]
        for i in range(n_units):
            s[i] = e[b, 0, i]
        for k in range(1, n_classes):
            for i in range(n_units):
                s[i] += e[b, k, i]
        for k in range(n_classes):
            for i in range(n_units):
                e[b, k, i] /= s[i]
        for i in range(n_units):
            e[b, y[b], i] -= one


def flip_losses(logits, y, x_last, v, loss0):
    r"""PSA head differences ``d_i = l(eta^(i)) - l(eta)`` and the gradients ``softmax(eta^(i)) - onehot(y)``,
    bit for bit :meth:`sbnnumba.backends.reference.ReferenceBackend.head_flips`, or None where the kernels do
    not apply (the caller then uses the NumPy formula).

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
        ``l(eta)``.

    Returns
    -------
    (d, g) : (ndarray (B, N_L), ndarray (B, N_L, K)), or None
        None unless ``logits``, ``x_last``, ``v`` are float32 or float64 of one dtype, ``K >= 2`` and
        ``N_L >= 2`` (one unit gives NumPy another memory layout, hence another summation order), the logits
        and ``v`` are finite and every flipped logit vector has a finite maximum.
    """
    dtype = logits.dtype
    n_batch, n_units = x_last.shape
    n_classes = logits.shape[1]
    if (dtype not in (np.float32, np.float64) or x_last.dtype != dtype or v.dtype != dtype or n_classes < 2
            or n_units < 2 or not (np.isfinite(logits).all() and np.isfinite(v).all())):
        return None
    t = np.empty((n_batch, n_classes, n_units), dtype)  # NumPy's memory layout of the flipped logits
    m = np.empty((n_batch, n_units), dtype)
    picked = np.empty((n_batch, n_units), dtype)
    y = np.ascontiguousarray(y, dtype=np.int64)
    with kernel_threads(t.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        shifted_flip_logits(np.ascontiguousarray(logits), np.ascontiguousarray(x_last), np.ascontiguousarray(v),
                            y, t, m, picked)
        if not np.isfinite(m).all():
            return None
        blockwise(lambda part: np.exp(part, out=part), t)
        total = np.empty((n_batch, n_units), dtype)
        softmax_grad(t, y, total)
    d = np.log(total)
    d += m
    d -= picked
    d -= loss0[:, None]
    return d, t.transpose(0, 2, 1)  # (B, N_L, K) with the strides of the NumPy result (einsum sums in its order)
