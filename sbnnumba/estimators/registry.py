"""The single estimator interface: ``estimate(method, net, x, y, rng=None, **options) -> (loss, grads)``.

Two kinds of estimators are registered:

* *path estimators* ``path_gradient(net, path, y, weights, **options) -> (loss, grads)``: a
  deterministic function of one sampled :class:`~sbnnumba.network.Path` per example, returning
  the ``weights``-weighted sum over the batch of per-example estimates. ``estimate`` samples a
  path and uses ``weights = 1/B``; the test oracle enumerates all paths and uses their
  probabilities as weights, which gives the exact expectation of the estimator.
* *direct estimators* ``fn(net, x, y, rng, **options) -> (loss, grads)`` that need more than one
  path (exact enumeration, ARM, ...).
"""
from __future__ import annotations

import functools
import inspect

import numpy as np

PATH_ESTIMATORS: dict[str, tuple] = {}
DIRECT_ESTIMATORS: dict[str, tuple] = {}
DEVICE_STEPS: set[str] = set()  # path estimators the device-resident training step implements (without options)


def register_path_estimator(name, fn, *, device_step=False, **defaults):
    """Register ``fn(net, path, y, weights, **options)`` under ``name`` with default options.

    Parameters
    ----------
    name : str
    fn : callable
        A path estimator, ``(net, path, y, weights, **options) -> (loss, grads)``.
    device_step : bool
        Declares that the device-resident training step (:class:`sbnnumba.training.resident.CudaTrainer`)
        runs this estimator with its default options (see :func:`has_device_step`): ``fn`` must be written
        in the layer interface and the backend's training-step operations (:mod:`sbnnumba.backends.step`),
        so that it runs on the device copy of the network.
    **defaults
        Default options.

    Returns
    -------
    None
    """
    PATH_ESTIMATORS[name] = (fn, defaults)
    if device_step:
        DEVICE_STEPS.add(name)
    else:
        DEVICE_STEPS.discard(name)


def has_device_step(method):
    """Whether the device-resident training step runs estimator ``method`` (with its default options).

    Parameters
    ----------
    method : str

    Returns
    -------
    bool
    """
    return method in DEVICE_STEPS


def register_estimator(name, fn, **defaults):
    """Register a direct estimator ``fn(net, x, y, rng, **options) -> (loss, grads)`` under ``name``.

    Parameters
    ----------
    name : str
    fn : callable
    **defaults
        Default options.

    Returns
    -------
    None
    """
    DIRECT_ESTIMATORS[name] = (fn, defaults)


def known_methods() -> list[str]:
    """The names of the registered estimators.

    Returns
    -------
    list of str
        Sorted.
    """
    return sorted(set(PATH_ESTIMATORS) | set(DIRECT_ESTIMATORS))


@functools.lru_cache(maxsize=None)
def _option_names(fn):
    """The options of a registered estimator: its parameters after the first four (found once per estimator:
    ``inspect.signature`` costs about 12 us, paid by every ``estimate`` call before)."""
    return tuple(inspect.signature(fn).parameters)[4:]  # a tuple: the cached value is shared by every call


def _options(name, fn, defaults, options):
    allowed = _option_names(fn)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"options: unknown option(s) {unknown} for method {name!r}; expected some of {list(allowed)}")
    return {**defaults, **options}


def lookup(method, options):
    """The registered estimator ``method`` with its options merged into the defaults.

    Parameters
    ----------
    method : str
    options : dict
        Options given by the caller (unknown names raise ValueError).

    Returns
    -------
    kind : {"path", "direct"}
    fn : callable
    options : dict

    Raises
    ------
    TypeError
        For a method that is not a name (str).
    ValueError
        For an unknown method (listing the known ones) or option.
    """
    if not isinstance(method, str):
        raise TypeError(f"method: expected an estimator name (str), got {type(method).__name__} {method!r}")
    if method in PATH_ESTIMATORS:
        fn, defaults = PATH_ESTIMATORS[method]
        return "path", fn, _options(method, fn, defaults, options)
    if method in DIRECT_ESTIMATORS:
        fn, defaults = DIRECT_ESTIMATORS[method]
        return "direct", fn, _options(method, fn, defaults, options)
    raise ValueError(f"method: unknown estimator {method!r}; expected one of {known_methods()}")


def estimate(method: str, net, x, y, rng=None, **options):
    r"""Estimate the batch-mean expected loss and its gradient.

    Parameters
    ----------
    method : str
        Estimator name, e.g. ``"psa"``, ``"st"``, ``"exact"`` (see :func:`known_methods`).
    net : Network
    x : ndarray (B, ...)
        Inputs.
    y : int ndarray (B,)
        Labels in [0, K) ({0, 1} for a 1-logit head).
    rng : None, int or numpy.random.Generator
        Randomness of the sampled path(s).
    **options
        Method-specific options (validated; unknown names raise ValueError).

    Returns
    -------
    loss : float
        Estimate of ``mean_b E_Z[l(y_b, eta_b)]``.
    grads : dict
        Same keys and shapes as ``net.params``: estimate of the gradient of that batch mean.

    Raises
    ------
    TypeError, ValueError
        An unknown method or option, ``net`` not a Network, parameters holding NaN or inf
        (:meth:`~sbnnumba.Network.check_params`), or a batch that does not fit the network.
    """
    from ..network import check_network

    kind, fn, opts = lookup(method, options)
    check_network(net).check_params()
    return _estimate(kind, fn, opts, net, x, y, rng)


def estimate_with_finite_params(method: str, net, x, y, rng=None, **options):
    r""":func:`estimate` for a caller that keeps ``net``'s parameters finite itself, without the pass over every
    parameter that :meth:`~sbnnumba.Network.check_params` makes (about a millisecond per 2 M parameters, a few
    percent of a training step): ``training.fit`` checks them before each epoch and after it, and its optimizer
    refuses non-finite gradients. The method, its options and the batch are checked as in :func:`estimate`.

    Parameters
    ----------
    method, net, x, y, rng, **options
        As in :func:`estimate`; ``net`` a Network whose parameters are finite.

    Returns
    -------
    loss : float
    grads : dict
        As in :func:`estimate`.
    """
    kind, fn, opts = lookup(method, options)
    return _estimate(kind, fn, opts, net, x, y, rng)


def _estimate(kind, fn, opts, net, x, y, rng):
    """The estimate of a looked-up method (:func:`lookup`) on a checked network: the batch checked, then the method
    run on it (a "direct" method on the batch, a "path" method on a sampled path)."""
    from ..validation import as_generator

    x, y = net.check_batch(x, y)
    rng = as_generator(rng)
    if kind == "direct":
        return fn(net, x, y, rng, **opts)
    path = net.sample(x, rng)
    weights = np.full(x.shape[0], 1.0 / x.shape[0], dtype=net.dtype)
    return fn(net, path, y, weights, **opts)
