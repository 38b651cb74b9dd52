r"""Numba CPU kernels for PSA's head: the head differences (:meth:`sbnnumba.backends.cpu.CpuBackend.head_flips`), the
Rao-Blackwellized head's gradients from the same factors (:func:`rb_head_gradients`, the CPU backend's
``psa_rb_head``) and the logistic Rao-Blackwell weights in float32 (:func:`logistic_flip_weights`).

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
from numba.extending import register_jitable

from ..runtime import gemm, gemm_nt, kernel_threads
from .float32_exp import exp_f32_saturating

#: Largest ``max |2 V|`` of the factored form per dtype (see the module's range bound).
FACTORED_WEIGHT_LIMIT = {np.dtype(np.float32): 20.0, np.dtype(np.float64): 200.0}


@register_jitable
def _count_not_pm1(x):
    """The number of entries of ``x`` other than ``+-1``."""
    one = x.dtype.type(1)
    count = 0
    for i in range(x.shape[0]):
        count += (x[i] != one) & (x[i] != -one)
    return count


@register_jitable
def _flipped_sums(e, x, f_pos, f_neg, s):
    """``s_i = sum_k E_k F^{x_i}_{ki}`` of one example (``e``: (K,), ``x``, ``s``: (N,), ``f_pos``, ``f_neg``: (K, N)),
    summed over ``k = 0, 1, ...`` in order (the loops over the units are contiguous: vectorized)."""
    zero = x.dtype.type(0)
    for i in range(x.shape[0]):
        s[i] = zero
    for k in range(e.shape[0]):
        ek, fp, fn = e[k], f_pos[k], f_neg[k]
        for i in range(x.shape[0]):
            p, q = fp[i], fn[i]  # both loaded before the select: a conditional load does not vectorize (10x)
            s[i] += ek * (p if x[i] > zero else q)


@register_jitable
def _ratio_and_linear(x, v_y, s0, s, lin):
    """``s_i <- s_i / S_0`` and ``lin_i = 2 x_i V_{y i}`` of one example (``v_y``: the label's row of ``V``)."""
    two = x.dtype.type(2)
    for i in range(x.shape[0]):
        lin[i] = two * x[i] * v_y[i]
        s[i] /= s0


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
    for b in prange(n_batch):
        x, s, lin = x_last[b], ratio[b], linear[b]
        not_pm1[b] = _count_not_pm1(x)
        _flipped_sums(e[b], x, f_pos, f_neg, s)
        for k in range(n_classes):
            ek, fp, fn, gk = e[b, k], f_pos[k], f_neg[k], g[b, k]
            for i in range(n_units):
                p, q = fp[i], fn[i]
                gk[i] = ek * (p if x[i] > zero else q) / s[i]
        gy = g[b, y[b]]
        for i in range(n_units):
            gy[i] -= one
        _ratio_and_linear(x, v[y[b]], s0[b], s, lin)


@numba.njit(parallel=True, cache=True)
def factored_flip_mixture(e, s0, x_last, v, f_pos, f_neg, y, w, ratio, linear, u, not_pm1):
    """The factored head sums of one batch and the Rao-Blackwell weights over them (:func:`rb_head_gradients`).

    Parameters
    ----------
    e, s0, x_last, v, f_pos, f_neg, y, ratio, linear, not_pm1
        As in :func:`factored_flip_softmax`.
    w : ndarray (B, N)
        Rao-Blackwell weights.
    u : ndarray (B, 2 N)
        Out: ``w_i / S_i`` in ``u[:, i]`` where ``x_i = +1`` and in ``u[:, N + i]`` where ``x_i = -1``, 0 elsewhere.
    """
    n_batch, n_units = x_last.shape
    zero = x_last.dtype.type(0)
    for b in prange(n_batch):
        x, s, ub, wb = x_last[b], ratio[b], u[b], w[b]
        not_pm1[b] = _count_not_pm1(x)
        _flipped_sums(e[b], x, f_pos, f_neg, s)
        for i in range(n_units):
            q = wb[i] / s[i]
            positive = x[i] > zero
            ub[i] = q if positive else zero
            ub[n_units + i] = zero if positive else q
        _ratio_and_linear(x, v[y[b]], s0[b], s, linear[b])


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
    factors = _factors(logits, x_last, v)
    if factors is None:
        return None
    e, s0, f_pos, f_neg = factors
    n_batch, n_units = x_last.shape
    ratio = np.empty((n_batch, n_units), e.dtype)
    linear = np.empty((n_batch, n_units), e.dtype)
    g = np.empty((n_batch, e.shape[1], n_units), e.dtype)  # the NumPy formula's memory layout (einsum speed)
    not_pm1 = np.empty(n_batch, np.int64)
    with kernel_threads(g.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        factored_flip_softmax(e, s0, np.ascontiguousarray(x_last), np.ascontiguousarray(v), f_pos, f_neg,
                              np.ascontiguousarray(y, dtype=np.int64), ratio, linear, g, not_pm1)
    if not_pm1.any():
        return None
    return _differences(ratio, linear), g.transpose(0, 2, 1)


def rb_head_gradients(logits, y, x_last, v, g_eta, w, weights):
    r"""PSA's head differences and the Rao-Blackwellized head's gradient terms by the factored form, without the
    (B, N_L, K) flipped gradients, or None where the form does not apply (as :func:`flip_losses`).

    With ``U_bi = w_bi / S_bi`` split by the state, ``U^+ = U [x = +1]``, ``U^- = U [x = -1]``, the mixture of the
    flipped softmaxes and its transposed twin are products with the factors (``E`` (B, K), ``F^+-`` (K, N_L)):

    .. math::

        \sum_i w_{bi}\,\mathrm{softmax}(\eta^{(i)}_b)_k = E_{bk} igl(U^+ F^{+	op} + U^- F^{-	op}igr)_{bk},

        \sum_b s_{bi}\,\mathrm{softmax}(\eta^{(i)}_b)_k
        = F^+_{ki} igl((\omega E)^	op U^+igr)_{ki} - F^-_{ki} igl((\omega E)^	op U^-igr)_{ki},
        \qquad s_{bi} = \omega_b w_{bi} x_{bi},

    (``omega``: the examples' weights; ``s / S = omega U^+ - omega U^-``), two GEMMs of ``B x 2 N_L x K`` instead of
    two passes over ``B N_L K`` gradients. So

    .. math::

        g = \omega igl((1 - W) g_\eta + 	extstyle\sum_i w_i\,\mathrm{softmax}(\eta^{(i)}) - W\,\mathrm{onehot}(y)igr),
        \qquad W_b = 	extstyle\sum_i w_{bi},

        T_{ki} = 	extstyle\sum_b s_{bi}\,igl(\mathrm{softmax}(\eta^{(i)}_b)_k - [k = y_b]igr),

    and the head's gradients are ``dV = g^T x - 2 T``, ``dc = sum_b g`` (:meth:`~sbnnumba.backends.step.
    StepOperations.rb_head_grads`). Error: each term of the sums is a product of factors with the range bound of the
    module docstring; ``T`` subtracts the label's share after summing (its error is ``O(K u sum_b |s_bi|)``, as the
    per-term difference's), ``tests/test_head_kernels.py`` checks it against the formula in extended precision.

    Parameters
    ----------
    logits : ndarray (B, K)
    y : int ndarray (B,)
    x_last : ndarray (B, N_L)
    v : ndarray (K, N_L)
    g_eta : ndarray (B, K)
        ``softmax(eta) - onehot(y)``.
    w : ndarray (B, N_L)
        Rao-Blackwell weights (:meth:`~sbnnumba.backends.step.StepOperations.rb_flip_weights`).
    weights : ndarray (B,)
        The examples' weights ``omega``.

    Returns
    -------
    (d, g, t) : (ndarray (B, N_L), ndarray (B, K), ndarray (K, N_L)), or None
    """
    factors = _factors(logits, x_last, v) if w.dtype == g_eta.dtype == logits.dtype else None
    if factors is None:
        return None
    e, s0, f_pos, f_neg = factors
    n_batch, n_units = x_last.shape
    dtype = e.dtype
    ratio = np.empty((n_batch, n_units), dtype)
    linear = np.empty((n_batch, n_units), dtype)
    u = np.empty((n_batch, 2 * n_units), dtype)
    not_pm1 = np.empty(n_batch, np.int64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    with kernel_threads(n_batch * n_units * e.shape[1], "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        factored_flip_mixture(e, s0, np.ascontiguousarray(x_last), np.ascontiguousarray(v), f_pos, f_neg, y,
                              np.ascontiguousarray(w), ratio, linear, u, not_pm1)
    if not_pm1.any():
        return None
    weights = np.asarray(weights, dtype)
    w_sum = w.sum(axis=1)
    g = gemm_nt(u, np.concatenate([f_pos, f_neg], axis=1))  # sum_i U^+- F^+-
    g *= e
    g += g_eta * (1 - w_sum)[:, None]
    g[np.arange(n_batch), y] -= w_sum
    g *= weights[:, None]
    t2 = gemm(np.ascontiguousarray((e * weights[:, None]).T), u)  # (omega E)^T [U^+ U^-]  (K, 2 N_L)
    t = f_pos * t2[:, :n_units]
    t -= f_neg * t2[:, n_units:]
    labels = np.zeros((e.shape[1], n_batch), dtype)
    labels[y, np.arange(n_batch)] = weights
    t -= gemm(labels, w * x_last)  # the labels' share sum_b s_bi [k = y_b] (a product: np.subtract.at is 10x slower)
    return _differences(ratio, linear), g, t


def _factors(logits, x_last, v):
    """``(E, S_0, F^+, F^-)`` of the module docstring, or None outside the factored form's range."""
    dtype = logits.dtype
    if (dtype not in (np.float32, np.float64) or x_last.dtype != dtype or v.dtype != dtype or logits.shape[1] < 2
            or not (np.isfinite(logits).all() and np.isfinite(v).all())
            or 2 * float(np.abs(v).max(initial=0)) > FACTORED_WEIGHT_LIMIT[np.dtype(dtype)]):
        return None
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    f_pos = np.exp(-2 * v)  # the unit's state +1: the flip subtracts 2 V
    f_neg = np.exp(2 * v)
    return e, e.sum(axis=1), f_pos, f_neg


def _differences(ratio, linear):
    """``d = log(S_i / S_0) + 2 x_i V_yi`` (in place of ``ratio``)."""
    d = np.log(ratio, out=ratio)
    d += linear
    return d


@numba.njit(parallel=True, error_model="numpy", cache=True)
def _logistic_flip_weights_f32(x, a, out):
    n = x.shape[1]
    one, n_units = np.float32(1), np.float32(n)
    for b in prange(x.shape[0]):
        for i in range(n):
            # beyond exp_f32's range e^t is 0 or inf: the weight 1 / N or 0; NaN stays NaN
            out[b, i] = one / (one + exp_f32_saturating(x[b, i] * a[b, i])) / n_units


def logistic_flip_weights(x_last, a_last):
    r"""Rao-Blackwell weights of logistic noise in float32, ``w = sigma(-x a) / N = 1 / (1 + e^{x a}) / N``, in one
    parallel vectorized pass (:func:`~sbnnumba.kernels.float32_exp.exp_f32`; no ``fastmath``, so the same bits on
    every CPU and at any thread count), or None for other dtypes (the caller evaluates the family's CDF).

    Error: within ``7 u`` relative of the exact ``F(-x a) / N`` (``exp_f32``'s ``2e-7``, below ``3.4 u``, times
    ``e / (1 + e) < 1``, and three roundings), no cancellation for confident units (spec psa.md pitfall 5); ``x a >
    87`` gives 0 where the exact weight is below ``2^-126 / N``, ``x a < -87`` gives ``1 / N`` (the exact one rounds
    to it); NaN stays NaN.

    Parameters
    ----------
    x_last, a_last : ndarray (B, N)
        States and pre-activations of the last binary layer.

    Returns
    -------
    ndarray (B, N) float32, or None
    """
    if x_last.dtype != np.float32 or a_last.dtype != np.float32 or x_last.ndim != 2:
        return None
    out = np.empty(x_last.shape, np.float32)
    with kernel_threads(out.size, "elementwise"):  # the per-call thread rule of sbnnumba.runtime
        _logistic_flip_weights_f32(np.ascontiguousarray(x_last), np.ascontiguousarray(a_last), out)
    return out
