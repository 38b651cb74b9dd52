"""What the sweep's fork server does once for every worker it forks: initialize Numba's CPU target.

A process's first call of a Numba kernel, compiled or loaded from the on-disk cache, first initializes
Numba's CPU target: it imports Numba's typing and lowering registries (``numba.np.arraymath`` and some
250 other modules) and installs them, about 0.2 s of CPU, the largest part of a worker's first run
after the imports. The fork server of :mod:`sbnnumba.sweep.executors` imports this module (it is in
:data:`~sbnnumba.sweep.executors.WORKER_MODULES`), so every worker starts with the target initialized.

Forking after this is safe: initializing the target launches no thread pool (``tests/test_sweep.py``
checks it). Loading a ``parallel=True`` kernel would launch the OpenMP pool, after which a forked child
may hang, so the server loads no kernel: the workers load the cached kernels themselves (a few
milliseconds each).
"""
from __future__ import annotations

from numba.core.registry import cpu_target

__all__ = ["initialize_cpu_target", "cpu_target_initialized"]


def initialize_cpu_target() -> None:
    """Import and install Numba's CPU typing and lowering registries in this process (idempotent)."""
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()


def cpu_target_initialized() -> bool:
    """Whether this process's Numba CPU target has its registries installed.

    Returns
    -------
    bool
        True after :func:`initialize_cpu_target` or a first kernel call.
    """
    return bool(cpu_target.target_context._registries)


initialize_cpu_target()  # the purpose of importing this module (the fork server's preload)
