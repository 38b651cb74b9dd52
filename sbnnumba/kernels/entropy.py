"""Numba CPU kernel for the entropy of stochastic binary units (:func:`sbnnumba.training.unit_entropy`).

Evaluation measures it for every sampled unit, i.e. over arrays as large as a conv network's
activations. In NumPy the per-family log-cdf and the temporaries around it made evaluation 3.5x
slower than without it (triangular noise, half-width conv network); one fused parallel pass over
:func:`sbnnumba.kernels.scalar.entropy_bits` is 2.6-7x faster than that formula and brings the
overhead to about 1.4x (``bench/unit_entropy.py``, 2 cores).
"""
import numba
import numpy as np
from numba import prange

from .scalar import entropy_bits


@numba.njit(parallel=True, error_model="numpy", cache=True)
def unit_entropy_flat(a, code, out):
    """``out[i] = H(F(a[i]))`` in bits for the noise family ``code``; ``a``, ``out`` 1-D, computed in
    float64 and stored in ``out``'s dtype."""
    for i in prange(a.shape[0]):
        out[i] = entropy_bits(code, np.float64(a[i]))
