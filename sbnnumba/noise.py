"""Noise families of stochastic binary units, registered by name.

A stochastic binary unit with pre-activation ``a`` outputs ``x = sign(a - Z)`` with
i.i.d. symmetric noise ``Z`` (cdf ``F``, density ``p = F'``, ``F(-z) = 1 - F(z)``), so

    P(x = +1 | a) = F(a),      E[x | a] = 2 F(a) - 1   (the "proxy", mean response),
    d/da E[x | a] = 2 p(a)                             (the correct ST backward factor).

====================  ============================  ======================  ===================
name                  F(a)                          proxy 2F(a) - 1         2 p(a)
====================  ============================  ======================  ===================
``"logistic"``        sigma(a)                      tanh(a / 2)             2 sigma(a) sigma(-a)
``"normal"``          Phi(a)                        erf(a / sqrt 2)         2 phi(a)
``"uniform"``         clip((a + 1) / 2, 0, 1)       htanh(a)                1[|a| <= 1]
``"triangular"``      (1+a)^2/2 | 1-(1-a)^2/2       ApproxSign(a)           2 max(0, 1 - |a|)
====================  ============================  ======================  ===================

The families differ in scale as well as shape: standard deviations ``std`` are logistic
``pi / sqrt 3 = 1.81``, normal 1, uniform ``1 / sqrt 3 = 0.577``, triangular ``1 / sqrt 6 = 0.408``.
Batch normalization with ``gamma`` starting at ``std`` (``bn_gamma="noise-std"`` of the
architectures) gives every family the same signal-to-noise ratio at initialization.

Sampling never forms ``Z``: with ``u ~ U(0, 1)``, ``x = +1 if u < F(a) else -1``; the
uniforms are drawn by the caller (kernels never draw random numbers), so every backend
gives the same samples from the same uniforms.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from .kernels.sampling import logistic_sample
from .kernels.scalar import NOISE_CODES

__all__ = ["NoiseFamily", "Logistic", "Normal", "Uniform", "Triangular", "NOISES", "get_noise"]


class NoiseFamily:
    """Base class: a symmetric noise law with cdf, density, log-cdf, sampler and proxy.

    Subclasses implement :meth:`cdf`, :meth:`pdf` and :meth:`log_cdf` element-wise on
    arrays; results keep the dtype of the input (float32 or float64).
    """

    name = "base"
    std: float = float("nan")  # standard deviation of Z (closed form, set by each family)

    @property
    def code(self) -> int:
        """Integer code selecting this family inside the Numba/CUDA kernels."""
        return NOISE_CODES[self.name]

    def cdf(self, a):
        raise NotImplementedError

    def pdf(self, a):
        raise NotImplementedError

    def log_cdf(self, a):
        raise NotImplementedError

    def sample(self, a, u):
        """Binary sample ``x = +1 if u < F(a) else -1`` (so ``sign(0) = +1`` never arises).

        Parameters
        ----------
        a : ndarray, any shape
            Pre-activations.
        u : ndarray, same shape as ``a``
            Uniforms on [0, 1).

        Returns
        -------
        ndarray of the dtype of ``a`` with values in {-1, +1}.
        """
        a = np.asarray(a)
        one = (a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)).type(1)
        return np.where(u < self.cdf(a), one, -one)  # typed scalars: no int64 temporary and cast pass

    def mean(self, a):
        """Mean response (proxy) ``E[x | a] = 2 F(a) - 1``."""
        return 2 * self.cdf(a) - 1

    def mean_grad(self, a):
        """Derivative of the proxy, ``2 p(a)``: the ST backward factor in +-1 coding."""
        return 2 * self.pdf(a)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _like(out, a):
    a = np.asarray(a)
    return np.asarray(out, dtype=a.dtype if a.dtype.kind == "f" else np.float64)


class Logistic(NoiseFamily):
    """Standard logistic noise: ``F = sigma``, ``p(a) = sigma(a) sigma(-a)``, proxy ``tanh(a/2)``."""

    name = "logistic"
    std = float(np.pi / np.sqrt(3))

    def cdf(self, a):
        return _like(special.expit(a), a)

    def pdf(self, a):
        # exp(-|a|) / (1 + exp(-|a|))^2 never overflows.
        e = np.exp(-np.abs(a))
        return _like(e / (1 + e) ** 2, a)

    def log_cdf(self, a):
        return _like(special.log_expit(a), a)

    def sample(self, a, u):
        """As :meth:`NoiseFamily.sample`; float32/float64 inputs go through one fused Numba pass
        (:mod:`sbnnumba.kernels.sampling`, bit-identical to ``where(u < expit(a), 1, -1)``)."""
        a = np.asarray(a)
        x = logistic_sample(a, u)
        return super().sample(a, u) if x is None else x


class Normal(NoiseFamily):
    """Standard normal noise: ``F = Phi``, ``p = phi``, proxy ``erf(a / sqrt 2)``."""

    name = "normal"
    std = 1.0

    def cdf(self, a):
        return _like(special.ndtr(a), a)

    def pdf(self, a):
        a_ = np.asarray(a)
        return _like(np.exp(-0.5 * a_ * a_) / np.sqrt(2 * np.pi), a)

    def log_cdf(self, a):
        return _like(special.log_ndtr(a), a)


class Uniform(NoiseFamily):
    """Uniform noise on [-1, 1]: ``F(a) = clip((a+1)/2, 0, 1)``, proxy ``htanh(a)``."""

    name = "uniform"
    std = float(1 / np.sqrt(3))

    def cdf(self, a):
        return _like(np.clip((np.asarray(a) + 1) * 0.5, 0, 1), a)

    def pdf(self, a):
        return _like(np.where(np.abs(a) <= 1, 0.5, 0.0), a)

    def log_cdf(self, a):
        with np.errstate(divide="ignore"):
            return _like(np.log(self.cdf(a)), a)


class Triangular(NoiseFamily):
    """Triangular noise on [-1, 1] (sum of two U[-1/2, 1/2]), proxy ApproxSign.

    ``F(a) = (1 + a)^2 / 2`` on [-1, 0) and ``1 - (1 - a)^2 / 2`` on [0, 1];
    ``p(a) = max(0, 1 - |a|)``.
    """

    name = "triangular"
    std = float(1 / np.sqrt(6))

    def cdf(self, a):
        t = np.clip(np.asarray(a), -1, 1)
        return _like(np.where(t < 0, 0.5 * (1 + t) ** 2, 1 - 0.5 * (1 - t) ** 2), a)

    def pdf(self, a):
        return _like(np.maximum(0, 1 - np.abs(a)), a)

    def log_cdf(self, a):
        t = np.clip(np.asarray(a), -1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lower = 2 * np.log1p(t) - np.log(2.0)
            upper = np.log1p(-0.5 * (1 - t) ** 2)
        return _like(np.where(t < 0, lower, upper), a)


NOISES = {cls.name: cls() for cls in (Logistic, Normal, Uniform, Triangular)}


def get_noise(noise) -> NoiseFamily:
    """Return the noise family registered under ``noise`` (or ``noise`` itself if it is one).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known names.
    """
    if isinstance(noise, NoiseFamily):
        return noise
    if isinstance(noise, str) and noise in NOISES:
        return NOISES[noise]
    raise ValueError(f"noise: unknown noise family {noise!r}; expected one of {sorted(NOISES)}")
