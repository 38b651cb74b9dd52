"""Shared fixtures. Also decides, before numba is imported, where the CUDA tests run.

numba reads ``NUMBA_ENABLE_CUDASIM`` once, at import: so that the CUDA tests (tests/test_cuda_*.py)
are ordinary tests of this process, the simulator is switched on here unless the environment says
otherwise or this machine has an NVIDIA device (then they run on it). ``NUMBA_ENABLE_CUDASIM=0``
forces the device. The simulator only affects ``numba.cuda``; the CPU kernels are unchanged.
"""
import os
import sys


def _nvidia_device_present():
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _nvidia_device_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
# numba formats warnings through colorama, which re-wraps sys.stdout each time; the simulator's kernel
# threads race on that until a print raises RecursionError
os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")

import numpy as np  # noqa: E402 (after the simulator switch above)
import pytest  # noqa: E402

import sbnnumba as sb  # noqa: E402

NOISE_NAMES = ["logistic", "normal", "uniform", "triangular"]


def random_net(sizes, n_classes=3, noise="logistic", seed=0, scale=1.0, dtype=np.float64):
    """Dense float64 net with N(0, scale^2) weights and biases (the spec's test recipe)."""
    rng = np.random.default_rng(seed)
    net = sb.Network.dense(sizes, n_classes, noise=noise, rng=rng, dtype=dtype)
    for p in net.params.values():
        p[...] = scale * rng.normal(size=p.shape)
    return net


def group_rel_error(g_true, g_est, net):
    """Relative error ||g_est - g|| / ||g|| per parameter group (each stage's (W, b), and the head)."""
    out = {}
    for prefix, _ in net.layers():
        keys = [k for k in g_true if k.startswith(prefix + ".")]
        a = np.concatenate([g_true[k].ravel() for k in keys])
        b = np.concatenate([g_est[k].ravel() for k in keys])
        out[prefix] = np.linalg.norm(a - b) / np.linalg.norm(a)
    return out


@pytest.fixture(params=NOISE_NAMES)
def noise_name(request):
    return request.param


# ---------------------------------------------------------------------------------------------------
# CUDA (tests/test_cuda_*.py)
# ---------------------------------------------------------------------------------------------------

# The simulator's BlockManager busy-polls its threads while they run, holding the GIL for whole switch
# intervals (5 ms by default): most of a launch's time goes to that polling. A shorter interval makes
# the CUDA tests about 3x faster (measured on 2 cores: 323 s -> 118 s for the whole set).
SIMULATOR_SWITCH_INTERVAL = 5e-4


def make_simulator_shared_arrays_thread_safe():
    """Give numba's simulated ``cuda.shared.array`` a lock: the simulator looks up the block's array
    (keyed by the calling file and line) and creates it when missing without one, so two threads that
    switch between the lookup and the store get two different "shared" arrays and the kernel computes
    garbage. Rare at the default switch interval, frequent at :data:`SIMULATOR_SWITCH_INTERVAL` (seen
    as wrong words of xnor_gemm_threshold). Same key and semantics as the original; dynamic shared
    memory (``shape == 0``) is left to the original method. Returns False (and changes nothing) where
    the simulator's internals are not the ones patched here."""
    import threading

    try:
        from numba.core import types
        from numba.cuda.simulator import kernelapi
        from numba.np import numpy_support
        original = kernelapi.FakeCUDAShared.array
    except (ImportError, AttributeError):  # another numba layout: keep its simulator as it is
        return False
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:
            return original(self, shape, dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array
    return True


@pytest.fixture(scope="module")
def cuda_backend():
    """The ``cuda`` backend (skips the test where it is unusable); in the simulator, a short switch
    interval for the module's tests (restored afterwards)."""
    from sbnnumba.backends import get_backend
    from sbnnumba.backends.cuda import CudaBackend, device

    reason = CudaBackend.unavailable_reason()
    if reason is not None:
        pytest.skip(f"backend 'cuda' is not usable: {reason}")
    previous = sys.getswitchinterval()
    if device.in_simulator() and make_simulator_shared_arrays_thread_safe():  # short interval: lock needed
        sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL)
    yield get_backend("cuda")
    sys.setswitchinterval(previous)
