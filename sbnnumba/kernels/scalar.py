"""Scalar noise functions usable inside Numba CPU kernels and numba.cuda kernels: the jitable
twins of the :class:`sbnnumba.noise.NoiseFamily` methods.

Every function here is decorated with :func:`numba.extending.register_jitable`, so it is
plain Python when called from Python (and under ``NUMBA_DISABLE_JIT=1``), and is inlined
when called from an ``@njit`` or ``@cuda.jit`` kernel. Noise families are selected by an
integer code so that one kernel serves every family; the codes are the positions in
:data:`KERNEL_FAMILIES`, the one table of the families that have twins here:

=====  ============  ===========================================  ======================
code   family        cdf F(a)                                     flip-kernel forms
=====  ============  ===========================================  ======================
0      logistic      sigma(a) = 1 / (1 + exp(-a))                 ratio, generic
1      normal        Phi(a) = erfc(-a / sqrt 2) / 2               generic
2      uniform       clip((a + 1) / 2, 0, 1)        (Z ~ U[-1, 1])  bounded, generic
3      triangular    (1 + a)^2 / 2 on [-1, 0), 1 - (1 - a)^2 / 2    bounded, generic
=====  ============  ===========================================  ======================

A code outside the table raises ``ValueError`` (in Python, in Numba CPU kernels, and at the host
boundary of the CUDA kernels through :func:`check_code`) instead of falling into a default family.
Adding a family with kernels: one ``_<family>_cdf_lower`` / ``_<family>_pdf`` pair below, one
entry in :data:`KERNEL_FAMILIES` and :data:`FLIP_FORMS`, one branch in :func:`cdf_lower` and
:func:`pdf`; its :class:`~sbnnumba.noise.NoiseFamily` class then gets its ``code`` from here
(``tests/test_noise.py`` checks every registered family's twins against its NumPy methods).
"""
import functools
import math

import numpy as np
from numba.extending import register_jitable

#: The noise families with jitable twins, in kernel-code order: a family's code is its index.
KERNEL_FAMILIES = ("logistic", "normal", "uniform", "triangular")
#: name -> kernel code.
NOISE_CODES = {name: code for code, name in enumerate(KERNEL_FAMILIES)}
LOGISTIC, NORMAL, UNIFORM, TRIANGULAR = (NOISE_CODES[name] for name in KERNEL_FAMILIES)
#: name -> the PSA flip-kernel forms that hold for the family, the one "auto" picks first among those that
#: admit the call's dtype (:data:`FORM_DTYPES`) ("ratio": logistic only; "bounded": noise on [-1, 1] with the
#: closed-form F difference of :func:`bounded_cdf_diff`; "probit": normal noise, the branch-free float32 CDF of
#: :mod:`sbnnumba.kernels.probit`; "generic": any family, through :func:`cdf_diff`).
FLIP_FORMS = {"logistic": ("ratio", "generic"), "normal": ("probit", "generic"), "uniform": ("bounded", "generic"),
              "triangular": ("bounded", "generic")}
#: form -> the dtypes it admits (a form not listed admits float32 and float64): the probit form's CDF is accurate to
#: float32 only, so float64 calls take the generic form.
FORM_DTYPES = {"probit": ("float32",)}


@functools.lru_cache(maxsize=None)
def dtype_name(dtype):
    """``np.dtype(dtype).name``, remembered per argument.

    NumPy builds a dtype's name in Python on every access (about 3 us, and tens of microseconds when the interpreter's
    code has left the caches, as after a large kernel); each flip propagation looks it up for its form and its clamp.

    Parameters
    ----------
    dtype : numpy dtype, type or str
        Anything :class:`numpy.dtype` accepts (hashable).

    Returns
    -------
    str
        E.g. "float32".
    """
    return np.dtype(dtype).name


def check_code(code):
    """``code`` as an int if it is a kernel noise code, else ValueError naming the known codes (host side:
    CUDA kernels cannot report the in-kernel error, so their launchers call this first).

    Parameters
    ----------
    code : object
        The value to check.

    Returns
    -------
    int
        ``code``, in ``[0, len(KERNEL_FAMILIES))``.
    """
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < len(KERNEL_FAMILIES):
        known = ", ".join(f"{c} ({n})" for c, n in enumerate(KERNEL_FAMILIES))
        raise ValueError(f"noise_code: expected one of {known}, got {code!r}")
    return code


def flip_forms(code):
    """The flip-kernel forms of the family with kernel ``code`` ("auto"'s choice first).

    Parameters
    ----------
    code : int
        Kernel noise code (:data:`NOISE_CODES`: 0 logistic, 1 normal, 2 uniform, 3 triangular).

    Returns
    -------
    tuple of str
        Among ``"ratio"``, ``"bounded"``, ``"probit"``, ``"generic"`` (:data:`FLIP_FORMS`).
    """
    return FLIP_FORMS[KERNEL_FAMILIES[check_code(code)]]


# ------------------------------------------------------------------ per-family twins
@register_jitable
def _logistic_cdf_lower(a):
    if a >= 0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


@register_jitable
def _normal_cdf_lower(a):
    return 0.5 * math.erfc(-a * 0.7071067811865476)


@register_jitable
def _uniform_cdf_lower(a):
    if a <= -1.0:
        return 0.0
    if a >= 1.0:
        return 1.0
    return 0.5 * (a + 1.0)


@register_jitable
def _triangular_cdf_lower(a):
    if a <= -1.0:
        return 0.0
    if a >= 1.0:
        return 1.0
    if a < 0.0:
        return 0.5 * (1.0 + a) * (1.0 + a)
    return 1.0 - 0.5 * (1.0 - a) * (1.0 - a)


@register_jitable
def _logistic_pdf(a):
    e = math.exp(-abs(a))
    return e / ((1.0 + e) * (1.0 + e))


@register_jitable
def _normal_pdf(a):
    return 0.3989422804014327 * math.exp(-0.5 * a * a)


@register_jitable
def _uniform_pdf(a):
    return 0.5 if abs(a) <= 1.0 else 0.0


@register_jitable
def _triangular_pdf(a):
    t = 1.0 - abs(a)
    return t if t > 0.0 else 0.0


# ------------------------------------------------------------------ dispatch on the code
@register_jitable
def cdf_lower(code, a):
    """F(a), accurate for a <= 0 (the lower tail is computed without cancellation).

    Parameters
    ----------
    code : int
        Kernel noise code (:data:`NOISE_CODES`: 0 logistic, 1 normal, 2 uniform, 3 triangular).
    a : float
        Argument, usually <= 0.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For an unknown code.
    """
    if code == LOGISTIC:
        return _logistic_cdf_lower(a)
    if code == NORMAL:
        return _normal_cdf_lower(a)
    if code == UNIFORM:
        return _uniform_cdf_lower(a)
    if code == TRIANGULAR:
        return _triangular_cdf_lower(a)
    raise ValueError("noise_code: unknown noise family code (see sbnnumba.kernels.scalar.KERNEL_FAMILIES)")


@register_jitable
def cdf(code, a):
    """F(a) for the noise family ``code``; the upper tail uses F(a) = 1 - F(-a).

    Parameters
    ----------
    code : int
        Kernel noise code (:data:`NOISE_CODES`: 0 logistic, 1 normal, 2 uniform, 3 triangular).
    a : float
        Argument.

    Returns
    -------
    float
    """
    if a > 0:
        return 1.0 - cdf_lower(code, -a)
    return cdf_lower(code, a)


@register_jitable
def pdf(code, a):
    """Density p(a) = F'(a).

    Parameters
    ----------
    code : int
        Kernel noise code (:data:`NOISE_CODES`: 0 logistic, 1 normal, 2 uniform, 3 triangular).
    a : float
        Argument.

    Returns
    -------
    float
    """
    if code == LOGISTIC:
        return _logistic_pdf(a)
    if code == NORMAL:
        return _normal_pdf(a)
    if code == UNIFORM:
        return _uniform_pdf(a)
    if code == TRIANGULAR:
        return _triangular_pdf(a)
    raise ValueError("noise_code: unknown noise family code (see sbnnumba.kernels.scalar.KERNEL_FAMILIES)")


@register_jitable
def cdf_diff(code, u, v):
    """F(u) - F(v) without cancellation in the upper tail.

    When u + v > 0 both arguments are (mostly) in the upper half, where F is close to 1;
    there the symmetric form F(-v) - F(-u) subtracts two small, accurately computed tail
    values instead of two numbers close to 1 (spec psa.md, pitfall 5).

    Parameters
    ----------
    code : int
        Kernel noise code (:data:`NOISE_CODES`: 0 logistic, 1 normal, 2 uniform, 3 triangular).
    u, v : float
        Arguments.

    Returns
    -------
    float
    """
    if u + v > 0:
        return cdf_lower(code, -v) - cdf_lower(code, -u)
    return cdf_lower(code, u) - cdf_lower(code, v)


@register_jitable
def bounded_cdf_diff(triangular, u, v, one):
    """F(u) - F(v) for uniform (``triangular`` False) or triangular noise on [-1, 1], branch-free.

    With ``uc, vc`` the arguments clipped to [-1, 1] and ``d = uc - vc``: uniform ``d / 2``;
    triangular ``F = 1/2 + G`` with the odd ``G(t) = t (1 - |t|/2)``, so ``F(u) - F(v) = G(uc) - G(vc)``:

    * arguments of opposite signs: ``G(uc) - G(vc)`` adds two terms of the same sign;
    * the same sign: ``d ((1 - |uc|) + (1 - |vc|)) / 2`` (from ``u^2 - v^2 = d (u + v)``), which
      keeps the digits of close arguments and, through the exact ``1 - |t|``, near the support's ends.

    Within a few ulp of the exact difference everywhere (tests/test_noise.py). Only selects, no
    branches, so loops over it vectorize (the bounded form of the CPU kernels).

    Parameters
    ----------
    triangular : bool
        Triangular (else uniform) noise.
    u, v : float
        Arguments.
    one : float
        1 in the working dtype (float32 kernels stay in float32).

    Returns
    -------
    float
        ``F(u) - F(v)`` in the dtype of ``one``.
    """
    half = one / (one + one)
    uc = min(max(u, -one), one)
    vc = min(max(v, -one), one)
    d = uc - vc
    if not triangular:
        return half * d
    au, av = abs(uc), abs(vc)
    same = half * d * ((one - au) + (one - av))
    mixed = uc * (one - half * au) - vc * (one - half * av)
    return same if uc * vc >= 0 else mixed


_INV_LN2 = 1.4426950408889634


@register_jitable
def entropy_bits(code, a):
    """Entropy in bits of the unit ``sign(a - Z)``: ``H(q) = -(q ln q + (1 - q) ln(1 - q)) / ln 2`` with
    the smaller of its two probabilities ``q = F(-|a|)`` (lower tail, no cancellation; ``1 - q`` enters
    through ``log1p``). Exactly 0 once ``q`` underflows (saturated units, ``|a| = inf``); NaN stays NaN.

    Logistic noise has a closed form with two transcendental calls instead of three: with
    ``e = exp(-|a|)``, ``q = e / (1 + e)``, ``ln q = -|a| - ln(1 + e)`` and ``ln(1 - q) = -ln(1 + e)``,
    so ``H = q |a| + log1p(e)`` nats (evaluation computes it for every sampled unit).

    Parameters
    ----------
    code : int
        Kernel noise code (:data:`NOISE_CODES`: 0 logistic, 1 normal, 2 uniform, 3 triangular).
    a : float
        Pre-activation.

    Returns
    -------
    float
        In ``[0, 1]`` bits.
    """
    if code == LOGISTIC:
        t = abs(a)
        e = math.exp(-t)
        if e == 0.0:
            return 0.0
        h = (e / (1.0 + e) * t + math.log1p(e)) * _INV_LN2
        return 1.0 if h > 1.0 else h
    q = cdf_lower(code, -abs(a))
    if q == 0.0:
        return 0.0
    h = -(q * math.log(q) + (1.0 - q) * math.log1p(-q)) * _INV_LN2
    return 1.0 if h > 1.0 else h
