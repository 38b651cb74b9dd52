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
``"uniform"``         clip((a + 1) / 2, 0, 1)       htanh(a)                1[abs(a) <= 1]
``"triangular"``      (1+a)^2/2 ; 1-(1-a)^2/2       ApproxSign(a)           2 max(0, 1 - abs(a))
====================  ============================  ======================  ===================

The families differ in scale as well as shape: standard deviations ``std`` are logistic
``pi / sqrt 3 = 1.81``, normal 1, uniform ``1 / sqrt 3 = 0.577``, triangular ``1 / sqrt 6 = 0.408``.
Batch normalization with ``gamma`` starting at ``std`` (``bn_gamma="noise-std"`` of the
architectures) gives every family the same signal-to-noise ratio at initialization.

Sampling never forms ``Z``: with ``u ~ U(0, 1)``, ``x = +1 if u < F(a) else -1``; the
uniforms are drawn by the caller (kernels never draw random numbers), so every backend
gives the same samples from the same uniforms.

A family is everything the library needs to know about one noise law, in one class: the NumPy
functions (``cdf``, ``pdf``, ``log_cdf``, ``quantile``), the moments (``std``, ``variance``),
sampling from given uniforms, the score ratio of REINFORCE, ARM's ``psi`` (raising where ARM is
undefined), the entropy of a unit, the default clip of Bernoulli weights, and, through its kernel
code, its jitable twins and flip-kernel forms in :mod:`sbnnumba.kernels.scalar`. Estimators,
layers and kernels ask the family; nothing else tests a family's name. A new family is a subclass
of :class:`NoiseFamily` (passed as an instance, or registered by name with :func:`register_noise`);
without twins in :mod:`sbnnumba.kernels.scalar` it runs on the ``"reference"`` backend, and its
``code`` raises ``ValueError`` naming that backend.
"""
from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import special

from .kernels.density import logistic_density, normal_density
from .kernels.entropy import unit_entropy as unit_entropy_kernel
from .kernels.psa_factors import logistic_psa_grad
from .kernels.sampling import sample_units
from .kernels.scalar import FLIP_FORMS, NOISE_CODES

__all__ = ["NoiseFamily", "Logistic", "Normal", "Uniform", "Triangular", "NOISES", "get_noise", "register_noise"]

_LN2 = float(np.log(2.0))


def _like(out: npt.ArrayLike, a: npt.ArrayLike) -> np.ndarray:
    a = np.asarray(a)
    return np.asarray(out, dtype=a.dtype if a.dtype.kind == "f" else np.float64)


class NoiseFamily(abc.ABC):
    """A symmetric noise law ``Z`` (``F(-z) = 1 - F(z)``) of stochastic binary units ``x = sign(a - Z)``.

    Subclasses set :attr:`name` and :attr:`std` and implement :meth:`cdf`, :meth:`pdf`, :meth:`log_cdf`
    and :meth:`quantile` element-wise on arrays (results keep the dtype of a float input); every other
    method has a generic definition from those four, which a family overrides where it has a more
    accurate or faster form (or, for :meth:`arm_psi`, where ARM is defined at all).

    Attributes
    ----------
    name : str
        Registry name (:func:`get_noise`); also selects the kernel code (:attr:`code`).
    std : float
        Standard deviation of ``Z`` (closed form).
    weight_clip : float or None
        Default projection ``eta <- clip(eta, -c, c)`` of Bernoulli weights with this weight noise
        (:class:`~sbnnumba.weights.BernoulliWeights`): needed where mirror descent is a projected step.
    arm_refusal : str
        Why ARM is not available for this family (the message of :meth:`arm_psi`).
    density_passes : callable or None
        The family's Numba passes for its density, ``density_passes(a, scale, times=None)`` ->
        ``(scale * p(a)) * times`` bit for bit the NumPy formula of :meth:`pdf`, or None where they do not apply to
        the arrays (:mod:`sbnnumba.kernels.density`); :meth:`pdf`, :meth:`mean_grad` and :meth:`fused_st_grad` use
        them for float arrays. None (the default): the family has none.
    """

    name = "base"
    std: float = float("nan")
    weight_clip: float | None = None
    density_passes: Callable[..., np.ndarray | None] | None = None
    arm_refusal = "ARM needs psi(u) = -(log p)'(F^-1(u)) with finite variance, which this family does not provide"

    # ------------------------------------------------------------------ the four laws
    @abc.abstractmethod
    def cdf(self, a: npt.ArrayLike) -> np.ndarray:
        """``F(a) = P(Z < a)``, element-wise.

        Parameters
        ----------
        a : array_like, any shape
            Arguments (pre-activations).

        Returns
        -------
        ndarray, shape of ``a``
            Float dtype of ``a`` (float64 for other inputs).
        """

    @abc.abstractmethod
    def pdf(self, a: npt.ArrayLike) -> np.ndarray:
        """Density ``p(a) = F'(a)``, element-wise.

        Parameters
        ----------
        a : array_like, any shape
            Arguments (pre-activations).

        Returns
        -------
        ndarray, shape of ``a``
            Float dtype of ``a`` (float64 for other inputs).
        """

    @abc.abstractmethod
    def log_cdf(self, a: npt.ArrayLike) -> np.ndarray:
        """``log F(a)``, accurate in the lower tail (``-inf`` where ``F = 0``).

        Parameters
        ----------
        a : array_like, any shape
            Arguments (pre-activations).

        Returns
        -------
        ndarray, shape of ``a``
            Float dtype of ``a`` (float64 for other inputs).
        """

    @abc.abstractmethod
    def quantile(self, u: npt.ArrayLike) -> np.ndarray:
        """Inverse cdf ``F^{-1}(u)`` for ``u`` in (0, 1).

        Parameters
        ----------
        u : array_like, any shape
            Probabilities.

        Returns
        -------
        ndarray, shape of ``u``
        """

    # ------------------------------------------------------------------ derived quantities
    @property
    def variance(self) -> float:
        """``Var Z = std^2`` (the built-in families set the closed form as a class attribute)."""
        return self.std * self.std

    @property
    def code(self) -> int:
        """Integer code selecting this family inside the Numba/CUDA kernels
        (:data:`sbnnumba.kernels.scalar.KERNEL_FAMILIES`).

        Raises
        ------
        ValueError
            For a family without jitable twins in :mod:`sbnnumba.kernels.scalar`.
        """
        if self.name not in NOISE_CODES:
            raise ValueError(f"noise: expected a family with kernel twins in sbnnumba/kernels/scalar.py for this "
                             f"backend ({sorted(NOISE_CODES)}), got {self.name!r}; use backend='reference'")
        return NOISE_CODES[self.name]

    @property
    def has_kernels(self) -> bool:
        """Whether the Numba/CUDA kernels know this family (else only the ``"reference"`` backend runs it)."""
        return self.name in NOISE_CODES

    @property
    def flip_forms(self) -> tuple:
        """The PSA flip-kernel forms that hold for this family, the one ``form="auto"`` picks first
        (empty for a family without kernels)."""
        return FLIP_FORMS.get(self.name, ())

    def sample(self, a: npt.ArrayLike, u: npt.ArrayLike) -> np.ndarray:
        """Binary sample ``x = +1 if u < F(a) else -1`` (so ``sign(0) = +1`` never arises); through the family's
        Numba sampler where :data:`sbnnumba.kernels.sampling.SAMPLERS` has one under its :attr:`name` for ``a``'s
        dtype (as the flip kernels follow the name, :attr:`code`), bit for bit the NumPy formula.

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
        x = sample_units(self.name, a, u)
        if x is not None:
            return x
        one = (a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)).type(1)
        return np.where(u < self.cdf(a), one, -one)  # typed scalars: no int64 temporary and cast pass

    def mean(self, a: npt.ArrayLike) -> np.ndarray:
        """Mean response (proxy) ``E[x | a] = 2 F(a) - 1``.

        Parameters
        ----------
        a : array_like, any shape
            Arguments (pre-activations).

        Returns
        -------
        ndarray, shape of ``a``
            Float dtype of ``a`` (float64 for other inputs).
        """
        return 2 * self.cdf(a) - 1

    def mean_grad(self, a: npt.ArrayLike) -> np.ndarray:
        """Derivative of the proxy, ``2 p(a)``: the ST backward factor in +-1 coding.

        Parameters
        ----------
        a : array_like, any shape
            Arguments (pre-activations).

        Returns
        -------
        ndarray, shape of ``a``
            Float dtype of ``a`` (float64 for other inputs); bit for bit ``2 * pdf(a)`` (float arrays of a family
            with :attr:`density_passes` go through them).
        """
        out = self._density_from_passes(a, 2)
        return 2 * self.pdf(a) if out is None else out

    def _density_from_passes(self, a, scale, times=None):
        """``(scale * p(a)) * times`` by :attr:`density_passes`, or None where the family has none or they do not
        apply (non-array arguments, other dtypes or shapes)."""
        if self.density_passes is None or not isinstance(a, np.ndarray):
            return None
        if times is not None and not isinstance(times, np.ndarray):
            return None
        return self.density_passes(a, scale, times=times)

    def fused_st_grad(self, a: np.ndarray, g: np.ndarray) -> np.ndarray | None:
        """Deep ST's gradient with respect to the pre-activation, ``g_a = 2 p(a) g``, in one fused pass where
        the family has one (the ``cpu`` backend's :meth:`~sbnnumba.backends.step.StepOperations.st_preactivation_grad`),
        bit for bit ``mean_grad(a) * g``.

        Parameters
        ----------
        a : ndarray
            Pre-activations.
        g : ndarray, shape of ``a``
            Gradient with respect to the states.

        Returns
        -------
        ndarray or None
            ``2 p(a) g``, shape and dtype of ``a``, in the third of :attr:`density_passes` (bit for bit
            ``mean_grad(a) * g``); None where the family has no such passes or they do not apply to these arrays (the
            caller then multiplies :meth:`mean_grad` by ``g``).
        """
        return self._density_from_passes(a, 2, g)

    def psa_grad(self, x: np.ndarray, a: np.ndarray, d: np.ndarray) -> np.ndarray:
        """PSA's gradient with respect to the pre-activation, ``g_a = -x p(a) d`` (spec psa.md, section 2.4).

        Parameters
        ----------
        x : ndarray
            Sampled +-1 states.
        a : ndarray, shape of ``x``
            Pre-activations.
        d : ndarray, shape of ``x``
            Flip effects of the units.

        Returns
        -------
        ndarray, shape of ``x``
            ``-x * p(a) * d`` (NumPy's type promotion).
        """
        return -x * self.pdf(a) * d

    def score_ratio(self, z: npt.ArrayLike) -> np.ndarray:
        """``p(z) / F(z) = d log F(z) / dz`` element-wise (0 where ``F(z) = 0``): REINFORCE's score of a unit.

        Parameters
        ----------
        z : array_like, any shape
            Arguments.

        Returns
        -------
        ndarray, shape and dtype of ``z``
        """
        z = np.asarray(z)
        f, p = self.cdf(z), self.pdf(z)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(f > 0, p / np.where(f > 0, f, 1), 0.0)
        return np.asarray(out, dtype=z.dtype)

    def arm_psi(self, u: np.ndarray) -> np.ndarray:
        """ARM's ``psi(u) = -(log p)'(F^{-1}(u))`` (:mod:`sbnnumba.estimators.arm`).

        Parameters
        ----------
        u : ndarray
            Uniforms in (0, 1).

        Returns
        -------
        ndarray, shape of ``u``

        Raises
        ------
        ValueError
            For families where ARM is undefined or has infinite variance (the base class: all of them).
        """
        raise ValueError(f"noise: ARM is defined for 'logistic' noise (and generalized here to 'normal'); got "
                         f"{self.name!r}: {self.arm_refusal}")

    def entropy_bits(self, a: npt.ArrayLike) -> np.ndarray:
        """Entropy in bits of the unit ``sign(a - Z)``, ``H(F(a))``, element-wise, values in [0, 1].

        Families with kernels use one fused Numba pass over
        :func:`sbnnumba.kernels.scalar.entropy_bits` (the accurate lower tail ``q = F(-|a|)``), in float32 a
        vectorized float32 pass within a few rounding units (:func:`sbnnumba.kernels.entropy.entropy_f32`); others
        the NumPy form ``-(F log F + (1 - F) log(1 - F)) / ln 2`` through :meth:`log_cdf`.

        Parameters
        ----------
        a : array_like, any shape
            Arguments (pre-activations).

        Returns
        -------
        ndarray, shape of ``a``
            Bits, float dtype of ``a`` (float64 for other inputs).
        """
        a = np.asarray(a)
        if a.dtype.kind != "f":
            a = a.astype(np.float64)
        if self.has_kernels:
            work = np.float32 if a.dtype == np.float32 else np.float64  # the kernel's two signatures
            flat = np.ascontiguousarray(a, dtype=work).reshape(-1)
            out = np.empty_like(flat)
            unit_entropy_kernel(flat, self.code, out)
            return out.reshape(a.shape).astype(a.dtype, copy=False)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            lp, lq = self.log_cdf(a), self.log_cdf(-a)  # log p, log(1 - p) (symmetric noise)
            p, q = np.exp(lp), np.exp(lq)
            h = np.abs(np.where(p > 0, p * lp, 0) + np.where(q > 0, q * lq, 0))  # both terms <= 0; abs: no -0
        return np.minimum(h / a.dtype.type(_LN2), 1).astype(a.dtype, copy=False)

    def matched_scale(self, logistic_scale: float) -> float:
        """``F^{-1}(sigma(s))``: the latent-weight scale as confident under this family as ``s`` is under
        logistic noise (:func:`sbnnumba.weights.matched_scale`).

        Parameters
        ----------
        logistic_scale : float
            The scale ``s`` under logistic noise.

        Returns
        -------
        float
        """
        return float(self.quantile(np.float64(special.expit(logistic_scale))))

    def __repr__(self):
        return f"{type(self).__name__}()"


class Logistic(NoiseFamily):
    """Standard logistic noise: ``F = sigma``, ``p(a) = sigma(a) sigma(-a)``, proxy ``tanh(a/2)``,
    ``F^{-1} = logit``, ARM ``psi(u) = 2u - 1``."""

    name = "logistic"
    std = float(np.pi / np.sqrt(3))
    density_passes = staticmethod(logistic_density)
    variance = float(np.pi ** 2 / 3)

    def cdf(self, a: npt.ArrayLike) -> np.ndarray:
        return _like(special.expit(a), a)

    def pdf(self, a: npt.ArrayLike) -> np.ndarray:
        # exp(-|a|) / (1 + exp(-|a|))^2 never overflows. Float arrays: the same operations in three passes
        # instead of seven (sbnnumba.kernels.density, bit for bit this formula).
        out = self._density_from_passes(a, 1)
        if out is not None:
            return out
        e = np.exp(-np.abs(a))
        return _like(e / (1 + e) ** 2, a)

    def log_cdf(self, a: npt.ArrayLike) -> np.ndarray:
        return _like(special.log_expit(a), a)

    def quantile(self, u: npt.ArrayLike) -> np.ndarray:
        return _like(special.logit(u), u)

    def psa_grad(self, x: np.ndarray, a: np.ndarray, d: np.ndarray) -> np.ndarray:
        """As :meth:`NoiseFamily.psa_grad`; arrays of one float dtype and shape go through one fused Numba pass
        after NumPy's ``exp`` (:mod:`sbnnumba.kernels.psa_factors`, bit-identical to ``-x * pdf(a) * d``).

        Parameters
        ----------
        x, a, d : ndarray
            States, pre-activations, flip effects (one shape).

        Returns
        -------
        ndarray, shape of ``x``
        """
        g = logistic_psa_grad(x, a, d)
        return super().psa_grad(x, a, d) if g is None else g

    def score_ratio(self, z: npt.ArrayLike) -> np.ndarray:
        """``p / F = sigma(-z)`` (no division).

        Parameters
        ----------
        z : array_like, any shape
            Arguments.

        Returns
        -------
        ndarray, shape and dtype of ``z``
        """
        z = np.asarray(z)
        return np.asarray(special.expit(-z), dtype=z.dtype)

    def arm_psi(self, u: np.ndarray) -> np.ndarray:
        """``psi(u) = 2u - 1``: the ARM of Yin & Zhou.

        Parameters
        ----------
        u : ndarray
            Uniforms in (0, 1).

        Returns
        -------
        ndarray, shape of ``u``
        """
        return 2 * u - 1

    def matched_scale(self, logistic_scale: float) -> float:
        """``s`` itself, exactly (``logit(sigma(s))`` may differ from ``s`` in the last bit).

        Parameters
        ----------
        logistic_scale : float
            The scale ``s``.

        Returns
        -------
        float
        """
        return float(logistic_scale)


class Normal(NoiseFamily):
    """Standard normal noise: ``F = Phi``, ``p = phi``, proxy ``erf(a / sqrt 2)``, ``F^{-1} = Phi^{-1}``,
    ARM ``psi(u) = Phi^{-1}(u)``."""

    name = "normal"
    std = 1.0
    density_passes = staticmethod(normal_density)
    variance = 1.0

    def cdf(self, a: npt.ArrayLike) -> np.ndarray:
        return _like(special.ndtr(a), a)

    def pdf(self, a: npt.ArrayLike) -> np.ndarray:
        # Float arrays: the same operations in three passes instead of five (sbnnumba.kernels.density, bit for bit
        # this formula, whose division by the float64 sqrt(2 pi) runs in float64 and is cast back).
        out = self._density_from_passes(a, 1)
        if out is not None:
            return out
        a_ = np.asarray(a)
        return _like(np.exp(-0.5 * a_ * a_) / np.sqrt(2 * np.pi), a)

    def log_cdf(self, a: npt.ArrayLike) -> np.ndarray:
        return _like(special.log_ndtr(a), a)

    def quantile(self, u: npt.ArrayLike) -> np.ndarray:
        return _like(special.ndtri(u), u)

    def score_ratio(self, z: npt.ArrayLike) -> np.ndarray:
        """``p / F = exp(log phi(z) - log Phi(z))``, finite deep in the lower tail.

        Parameters
        ----------
        z : array_like, any shape
            Arguments.

        Returns
        -------
        ndarray, shape and dtype of ``z``
        """
        z = np.asarray(z)
        return np.asarray(np.exp(-0.5 * z * z - 0.5 * np.log(2 * np.pi) - special.log_ndtr(z)), dtype=z.dtype)

    def arm_psi(self, u: np.ndarray) -> np.ndarray:
        """``psi(u) = Phi^{-1}(u)`` (a derived generalization of ARM: unbiased, finite variance).

        Parameters
        ----------
        u : ndarray
            Uniforms in (0, 1).

        Returns
        -------
        ndarray, shape of ``u``
        """
        return special.ndtri(u)


class Uniform(NoiseFamily):
    """Uniform noise on [-1, 1]: ``F(a) = clip((a+1)/2, 0, 1)``, proxy ``htanh(a)``, ``F^{-1}(u) = 2u - 1``.

    Bernoulli weights with this noise are clipped to [-1, 1] by default (the mirror-descent projection).
    """

    name = "uniform"
    std = float(1 / np.sqrt(3))
    variance = 1.0 / 3
    weight_clip = 1.0
    arm_refusal = ("its density jumps at +-1, so the score identity misses the boundary terms and the "
                   "estimator would be biased")

    def cdf(self, a: npt.ArrayLike) -> np.ndarray:
        return _like(np.clip((np.asarray(a) + 1) * 0.5, 0, 1), a)

    def pdf(self, a: npt.ArrayLike) -> np.ndarray:
        return _like(np.where(np.abs(a) <= 1, 0.5, 0.0), a)

    def log_cdf(self, a: npt.ArrayLike) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return _like(np.log(self.cdf(a)), a)

    def quantile(self, u: npt.ArrayLike) -> np.ndarray:
        return _like(2 * np.asarray(u) - 1, u)


class Triangular(NoiseFamily):
    """Triangular noise on [-1, 1] (sum of two U[-1/2, 1/2]), proxy ApproxSign.

    ``F(a) = (1 + a)^2 / 2`` on [-1, 0) and ``1 - (1 - a)^2 / 2`` on [0, 1];
    ``p(a) = max(0, 1 - |a|)``; ``F^{-1}(u) = -1 + sqrt(2u)`` below 1/2, ``1 - sqrt(2(1 - u))`` above.
    """

    name = "triangular"
    std = float(1 / np.sqrt(6))
    variance = 1.0 / 6
    arm_refusal = "psi = sign(z) / (1 - |z|) has infinite variance (E[psi^2] = int dz / (1 - |z|) = inf)"

    def cdf(self, a: npt.ArrayLike) -> np.ndarray:
        t = np.clip(np.asarray(a), -1, 1)
        return _like(np.where(t < 0, 0.5 * (1 + t) ** 2, 1 - 0.5 * (1 - t) ** 2), a)

    def pdf(self, a: npt.ArrayLike) -> np.ndarray:
        return _like(np.maximum(0, 1 - np.abs(a)), a)

    def log_cdf(self, a: npt.ArrayLike) -> np.ndarray:
        t = np.clip(np.asarray(a), -1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lower = 2 * np.log1p(t) - np.log(2.0)
            upper = np.log1p(-0.5 * (1 - t) ** 2)
        return _like(np.where(t < 0, lower, upper), a)

    def quantile(self, u: npt.ArrayLike) -> np.ndarray:
        u_ = np.asarray(u)
        with np.errstate(invalid="ignore"):
            out = np.where(u_ < 0.5, -1 + np.sqrt(2 * u_), 1 - np.sqrt(2 * (1 - u_)))
        return _like(out, u)


#: name -> the registered family instance.
NOISES: dict[str, "NoiseFamily"] = {}


def register_noise(family: NoiseFamily) -> NoiseFamily:
    """Register ``family`` (a :class:`NoiseFamily` instance) under ``family.name``, so that
    ``get_noise(family.name)`` and every ``noise=`` argument accept the name.

    Parameters
    ----------
    family : NoiseFamily
        The instance to register.

    Returns
    -------
    NoiseFamily
        ``family`` (so a registration can be written as an expression).

    Raises
    ------
    TypeError
        If ``family`` is not a NoiseFamily instance.
    ValueError
        If its name is taken.
    """
    if not isinstance(family, NoiseFamily):
        raise TypeError(f"family: expected a NoiseFamily instance, got {type(family).__name__}")
    if not isinstance(family.name, str) or family.name in NOISES:
        raise ValueError(f"family: expected a new name, got {family.name!r} (registered: {sorted(NOISES)})")
    NOISES[family.name] = family
    return family


for _cls in (Logistic, Normal, Uniform, Triangular):
    register_noise(_cls())


def get_noise(noise: str | NoiseFamily) -> NoiseFamily:
    """Return the noise family registered under ``noise`` (or ``noise`` itself if it is one).

    Parameters
    ----------
    noise : str or NoiseFamily
        A registered name (``"logistic"``, ``"normal"``, ``"uniform"``, ``"triangular"`` or one added with
        :func:`register_noise`) or a family instance.

    Returns
    -------
    NoiseFamily

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known names.
    """
    if isinstance(noise, NoiseFamily):
        return noise
    if isinstance(noise, str) and noise in NOISES:
        return NOISES[noise]
    raise ValueError(f"noise: expected one of {sorted(NOISES)} or a NoiseFamily, got {noise!r}")
