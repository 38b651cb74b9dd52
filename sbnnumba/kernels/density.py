r"""Numba CPU passes for the logistic and normal densities and deep ST's backward factor
(:meth:`sbnnumba.noise.Logistic.pdf`, :meth:`~sbnnumba.noise.Logistic.mean_grad`, :meth:`sbnnumba.noise.Normal.pdf`,
:meth:`~sbnnumba.noise.Normal.mean_grad`; :func:`normal_density` makes the normal one's three passes the same way,
bit for bit NumPy's ``exp(-0.5 * a * a) / np.sqrt(2 * np.pi)``).

NumPy evaluates ``c e / (1 + e)^2`` with ``e = exp(-|a|)`` (``c = 1``: the density ``p(a)``; ``c = 2``:
the ST factor ``2 p(a)``) in seven passes over the array, each allocating a temporary: ``abs``,
``negative``, ``exp``, ``1 + e``, the square, the division and the product by ``c``. Here it takes
three passes and one array: ``-|a|`` (Numba), NumPy's ``exp`` in place, and ``c (e / ((1 + e)(1 + e)))``
in place (Numba). The exponential stays NumPy's: its float32 SIMD ``exp`` differs from the C library's
``expf`` (which a Numba ``math.exp`` calls) in about 6 % of the non-positive float32 inputs, so only
NumPy's own gives the same bits. The other operations are single IEEE operations in the dtype of ``a``
in the same order as NumPy's (no ``fastmath``; ``x ** 2`` is ``x * x`` in NumPy), so the result is the
NumPy formula's bit for bit (``tests/test_noise.py``), and every seeded run is unchanged.

Deep ST's pre-activation gradient ``2 p(a) g`` takes the product in the third pass (``times=g``): the same
two roundings as the factor stored and multiplied afterwards. The three passes run block by block (each block's
three while it is in cache) in the fixed blocks of :func:`sbnnumba.runtime.run_range_blocks`, which the threads
take as they come free (NumPy releases the GIL in its loops, the Numba passes are ``nogil``): with a core kept
busy a static ``prange`` split waits for the thread there. NumPy's SIMD ``exp`` computes each entry alone, so a
block's entries get the bits of one call over the whole array (checked in ``tests/test_noise.py``), and the
result is the same bits at any thread count.
"""
import numba
import numpy as np

from ..runtime import run_range_blocks


# One block each, on the calling thread without the GIL (the threads run them in the fixed blocks of
# sbnnumba.runtime.run_range_blocks); loops over whole slices from 0 with NumPy's error model, so that they vectorize.
@numba.njit(nogil=True, error_model="numpy", cache=True)
def negative_abs(a, out):
    """``out[i] = -|a[i]|`` (1-D arrays)."""
    for i in range(a.shape[0]):
        out[i] = -abs(a[i])


@numba.njit(nogil=True, error_model="numpy", cache=True)
def _scaled_density_from_exp(e, scale):
    """In place ``e[i] <- scale * (e[i] / ((1 + e[i]) * (1 + e[i])))`` (1-D array; ``scale`` and 1 typed scalars of
    its dtype, so that float32 stays float32)."""
    one = e.dtype.type(1)
    for i in range(e.shape[0]):
        t = one + e[i]
        e[i] = scale * (e[i] / (t * t))


@numba.njit(nogil=True, error_model="numpy", cache=True)
def _scaled_density_from_exp_times(e, scale, g):
    """In place ``e[i] <- (scale * (e[i] / ((1 + e[i]) * (1 + e[i])))) * g[i]`` (1-D arrays)."""
    one = e.dtype.type(1)
    for i in range(e.shape[0]):
        t = one + e[i]
        e[i] = (scale * (e[i] / (t * t))) * g[i]


def logistic_density(a, scale=1, times=None):
    r"""``scale * p(a)``, ``p(a) = e / (1 + e)^2`` with ``e = exp(-|a|)`` (the logistic density), bit for bit
    NumPy's ``scale * (e / (1 + e) ** 2)``, or None where the kernels do not apply.

    Parameters
    ----------
    a : ndarray, float32 or float64, any shape
        Arguments.
    scale : int
        1 (the density) or 2 (deep ST's factor ``2 p(a)``): a small integer, exact in the dtype of ``a``.
    times : ndarray or None
        Shape and dtype of ``a``: the result is ``(scale * p(a)) * times``, bit for bit NumPy's product of
        the two arrays (deep ST's pre-activation gradient).

    Returns
    -------
    ndarray or None
        Same shape and dtype as ``a`` (a new array); None for other dtypes, or a ``times`` of another shape
        or dtype (the caller then uses the NumPy formula).
    """
    return _density_passes(a, scale, times, negative_abs, _scaled_density_from_exp, _scaled_density_from_exp_times)


@numba.njit(nogil=True, error_model="numpy", cache=True)
def negative_half_square(a, out):
    """``out[i] = (-0.5 a[i]) a[i]`` (1-D arrays, ``-0.5`` in their dtype): NumPy's ``-0.5 * a * a``, two roundings
    in that order."""
    minus_half = a.dtype.type(-0.5)
    for i in range(a.shape[0]):
        out[i] = (minus_half * a[i]) * a[i]


_ROOT_TWO_PI = np.sqrt(2 * np.pi)  # np.float64, as in sbnnumba.noise.Normal.pdf (a constant of the kernels below)


@numba.njit(nogil=True, error_model="numpy", cache=True)
def _normal_from_exp(e, scale):
    """In place ``e[i] <- scale * dtype(float64(e[i]) / sqrt(2 pi))`` (1-D array): NumPy divides a float32 array by the
    float64 scalar ``np.sqrt(2 * np.pi)`` in float64, then the density is cast back to the array's dtype."""
    for i in range(e.shape[0]):
        e[i] = scale * e.dtype.type(np.float64(e[i]) / _ROOT_TWO_PI)


@numba.njit(nogil=True, error_model="numpy", cache=True)
def _normal_from_exp_times(e, scale, g):
    """In place ``e[i] <- (scale * dtype(float64(e[i]) / sqrt(2 pi))) * g[i]`` (1-D arrays)."""
    for i in range(e.shape[0]):
        e[i] = (scale * e.dtype.type(np.float64(e[i]) / _ROOT_TWO_PI)) * g[i]


def normal_density(a, scale=1, times=None):
    r"""``scale * phi(a)``, ``phi(a) = exp(-a^2 / 2) / sqrt(2 pi)`` (the standard normal density), bit for bit
    NumPy's ``scale * (exp(-0.5 * a * a) / np.sqrt(2 * np.pi))`` cast to the dtype of ``a``, or None where the kernels
    do not apply.

    The same three passes as :func:`logistic_density`: ``(-0.5 a) a`` (Numba), NumPy's ``exp`` in place, the division
    by ``sqrt(2 pi)`` in float64 (as NumPy divides by that float64 scalar), rounded to the dtype of ``a``, times
    ``scale`` and ``times`` (Numba). NumPy's formula makes five passes, two of them over a float64 temporary.

    Parameters
    ----------
    a : ndarray, float32 or float64, any shape
        Arguments.
    scale : int
        1 (the density) or 2 (deep ST's factor ``2 phi(a)``).
    times : ndarray or None
        Shape and dtype of ``a``: the result is ``(scale * phi(a)) * times``.

    Returns
    -------
    ndarray or None
        Same shape and dtype as ``a`` (a new array); None for other dtypes, or a ``times`` of another shape or dtype.
    """
    return _density_passes(a, scale, times, negative_half_square, _normal_from_exp, _normal_from_exp_times)


def _density_passes(a, scale, times, exponent, finish, finish_times):
    """The three passes of a density, block by block: ``exponent(a_i, e_i)`` (Numba), NumPy's ``exp`` in place, then
    ``finish(e_i, scale)`` or, with ``times``, ``finish_times(e_i, scale, g_i)`` (Numba); None where they do not apply
    (module docstring)."""
    if a.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        return None
    if times is not None and (times.shape != a.shape or times.dtype != a.dtype):
        return None
    flat = np.ascontiguousarray(a).reshape(-1)
    e = np.empty_like(flat)
    c = a.dtype.type(scale)
    g = None if times is None else np.ascontiguousarray(times).reshape(-1)

    def block(lo, hi):  # the three passes over one block while it is in cache
        e_i = e[lo:hi]
        exponent(flat[lo:hi], e_i)
        np.exp(e_i, out=e_i)
        if g is None:
            finish(e_i, c)
        else:
            finish_times(e_i, c, g[lo:hi])

    run_range_blocks(block, flat.size, flat.size, "elementwise")  # the per-call thread rule of sbnnumba.runtime
    return e.reshape(a.shape)
