"""Plain NumPy reference implementations of the kernels: the truth every fast kernel is tested against.

They materialize intermediate tensors (e.g. the (B, N_in, N_out) flip-difference tensor Delta)
and are meant for small shapes and for reading, not for speed.
"""
import numpy as np

from ..noise import get_noise


def cdf_diff(noise, u, v):
    """Element-wise ``F(u) - F(v)``, using ``F(-v) - F(-u)`` where ``u + v > 0`` (no cancellation).

    Parameters
    ----------
    noise : str or NoiseFamily
        The noise family ``F``.
    u, v : ndarray
        Arguments, broadcast together.

    Returns
    -------
    ndarray
        Broadcast shape of ``u`` and ``v``.
    """
    noise = get_noise(noise)
    upper = (u + v) > 0
    return np.where(upper, noise.cdf(-v) - noise.cdf(-u), noise.cdf(u) - noise.cdf(v))


def flip_deltas_dense(x_in, a, x_out, weight, noise):
    r"""Flip differences of a dense layer, materialized.

    .. math:: \Delta_{bij} = F(-x_{bj}(a_{bj} - 2 W_{ji} x_{bi})) - F(-x_{bj} a_{bj})

    Parameters
    ----------
    x_in : (B, N_in) +-1 input states;  a : (B, N_out) pre-activations;
    x_out : (B, N_out) +-1 sampled output states;  weight : (N_out, N_in);  noise : name or family.

    Returns
    -------
    delta : (B, N_in, N_out)
    """
    shifted = a[:, None, :] - 2 * weight.T[None, :, :] * x_in[:, :, None]
    return cdf_diff(noise, -x_out[:, None, :] * shifted, (-x_out * a)[:, None, :])


def flip_propagate_dense(x_in, a, x_out, weight, d_out, noise):
    r"""PSA flip propagation through a dense layer: ``d_in[b,i] = sum_j Delta[b,i,j] d_out[b,j]``.

    With ``Delta`` of :func:`flip_deltas_dense`, materialized (B, N_in, N_out): the reference the kernels
    are tested against.

    Parameters
    ----------
    x_in : ndarray, shape (B, N_in)
        +-1 input states.
    a : ndarray, shape (B, N_out)
        Pre-activations.
    x_out : ndarray, shape (B, N_out)
        +-1 sampled output states.
    weight : ndarray, shape (N_out, N_in)
        Weights.
    d_out : ndarray, shape (B, N_out)
        Backward signal at the layer's output.
    noise : str or NoiseFamily
        Activation noise.

    Returns
    -------
    ndarray, shape (B, N_in), dtype of ``a``
    """
    delta = flip_deltas_dense(x_in, a, x_out, weight, noise)
    return np.einsum("bij,bj->bi", delta, d_out).astype(a.dtype, copy=False)


def flip_propagate_dense_linearized(x_in, a, x_out, weight, d_out, noise):
    r"""Flip propagation with the first-order Delta of deep ST (spec psa.md, section 3).

    .. math:: \Delta^{lin}_{bij} = 2 x_{bj} x_{bi} W_{ji} p(a_{bj})

    so ``d_in = 2 x_in * ((x_out * p(a) * d_out) @ W)``.

    Parameters
    ----------
    x_in, a, x_out, weight, d_out, noise
        As in :func:`flip_propagate_dense`.

    Returns
    -------
    ndarray, shape (B, N_in), dtype of ``a``
    """
    p = get_noise(noise).pdf(a)
    return (2 * x_in * ((x_out * p * d_out) @ weight)).astype(a.dtype, copy=False)
