r"""Backends: where the device-dependent operations of a network run.

:class:`Backend` (:mod:`.base`) declares the operations (PSA flip propagation, sampling, the
element-wise PSA / ST factors, the packed XNOR products and binary convolutions);
:func:`get_backend` returns the registered implementation for a name:

* ``"reference"`` (:mod:`.reference`): plain NumPy, the definition the others are tested against;
* ``"cpu"`` (:mod:`.cpu`): Numba kernels (the default; ``$SBNNUMBA_BACKEND`` overrides it);
* ``"cuda"`` (:mod:`.cuda`): numba.cuda kernels, on a GPU or in numba's simulator.

This package is the only place that knows which backend runs an operation: the layers, estimators,
:mod:`sbnnumba.bitpack` and :class:`~sbnnumba.packed.PackedNetwork` call methods of the backend
object they hold. A new backend is one module with a :class:`Backend` subclass and a
:func:`register_backend` call (see ``docs/architecture.md``).
"""
from . import cpu, cuda, reference  # noqa: E402,F401  (each registers its backend)
from .base import Backend, abstract_methods
from .registry import (
                       DEFAULT_BACKEND_ENV,
                       BackendAttribute,
                       backend_names,
                       default_backend_name,
                       get_backend,
                       host_backend,
                       register_backend,
)
from .step import StepOperations, step_operations

__all__ = ["Backend", "BackendAttribute", "DEFAULT_BACKEND_ENV", "abstract_methods", "backend_names",
           "default_backend_name", "get_backend", "host_backend", "register_backend", "StepOperations",
           "step_operations"]
