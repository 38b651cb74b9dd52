"""Numba CPU kernel for the entropy of stochastic binary units (:func:`sbnnumba.training.unit_entropy`).

Evaluation measures it for every sampled unit, i.e. over arrays as large as a conv network's
activations, where NumPy's per-family log-cdf and the temporaries around it cost more than the evaluation
itself; one fused parallel pass over :func:`sbnnumba.kernels.scalar.entropy_bits` makes no temporaries
(``bench/unit_entropy.py`` measures both; figures: ``docs/experiments/2026-12-06-kernel-figures.md``).
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
