"""The registry of backends: name -> :class:`~sbnnumba.backends.base.Backend` subclass, and :func:`get_backend`."""
from __future__ import annotations

import os

from .base import Backend

DEFAULT_BACKEND_ENV = "SBNNUMBA_BACKEND"
DEFAULT_BACKEND = "cpu"
HOST_BACKEND = "cpu"  # the backend of host (NumPy) arrays: layers and estimators on host arrays use it

_CLASSES: dict[str, type] = {}
_INSTANCES: dict[str, object] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a :class:`Backend` subclass under ``cls.name`` (a new name, or a replacement of the
    class of that name); usable as a class decorator.

    Parameters
    ----------
    cls : type
        A subclass of :class:`~sbnnumba.backends.base.Backend` implementing every abstract method, with a
        class attribute ``name`` (str).

    Returns
    -------
    type
        ``cls`` itself.

    Raises
    ------
    TypeError
        If ``cls`` is not a Backend subclass, or leaves methods of the interface abstract.
    ValueError
        If ``cls.name`` is not a non-empty string.
    """
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"cls: expected a subclass of sbnnumba.backends.Backend, got {cls!r}")
    if cls.__abstractmethods__:
        raise TypeError(f"cls: {cls.__name__} does not implement {sorted(cls.__abstractmethods__)}")
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"cls.name: expected a non-empty string, got {cls.name!r}")
    _CLASSES[cls.name] = cls
    _INSTANCES.pop(cls.name, None)
    return cls


def backend_names() -> tuple[str, ...]:
    """Names of the registered backends.

    Returns
    -------
    tuple of str
        In registration order (``"reference"``, ``"cpu"``, ``"cuda"``, then any added).
    """
    return tuple(_CLASSES)


def default_backend_name() -> str:
    """The backend used when none is named.

    Returns
    -------
    str
        The value of ``$SBNNUMBA_BACKEND``, else ``"cpu"``.
    """
    return os.environ.get(DEFAULT_BACKEND_ENV, DEFAULT_BACKEND)


def get_backend(backend=None):
    """The backend object for a name (or the object itself).

    Parameters
    ----------
    backend : str, Backend or None
        A registered name (:func:`backend_names`: ``"reference"``, ``"cpu"``, ``"cuda"``), a
        :class:`Backend` instance (returned as it is), or None for :func:`default_backend_name`.

    Returns
    -------
    Backend
        One shared instance per name (the CUDA backend's weight cache lives in the process).

    Raises
    ------
    TypeError
        For anything but a string, a Backend or None.
    ValueError
        For an unknown name (the message lists the known ones).
    RuntimeError
        When the named backend cannot run in this process (the message says why, e.g. for ``cuda``:
        no driver, no device, no libNVVM, and how to fix it).
    """
    if isinstance(backend, Backend):
        return backend
    if backend is None:
        backend = default_backend_name()
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a backend name or a Backend, got {type(backend).__name__}")
    if backend not in _CLASSES:
        raise ValueError(f"backend: expected one of {backend_names()}, got {backend!r}")
    if backend not in _INSTANCES:
        cls = _CLASSES[backend]
        reason = cls.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} is not usable: {reason}")
        _INSTANCES[backend] = cls()
    return _INSTANCES[backend]


def host_backend():
    """The backend that holds host (NumPy) arrays and runs their training-step operations.

    Layers keep their arrays on it unless a copy was made for another backend
    (:meth:`sbnnumba.layers.Layer.on_backend`); a device backend hands the step operations of host
    arrays to it. It does not depend on ``$SBNNUMBA_BACKEND``.

    Returns
    -------
    Backend
        The ``cpu`` backend (whose step operations are the ``reference`` NumPy expressions).
    """
    return _INSTANCES.get(HOST_BACKEND) or get_backend(HOST_BACKEND)


class BackendAttribute:
    """Descriptor for an object's backend: reads give a :class:`Backend`, assignments accept anything
    :func:`get_backend` does (a name, a Backend, or None for the default) and store its result.

    ``class Network: backend = BackendAttribute()`` then ``net.backend = "reference"``.
    """

    def __set_name__(self, owner, name):
        self._slot = "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj, self._slot)

    def __set__(self, obj, value):
        setattr(obj, self._slot, get_backend(value))
