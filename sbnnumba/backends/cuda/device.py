r"""Device plumbing of the ``cuda`` backend: availability, host/device arrays, the weight cache.

* :func:`require_cuda` / :func:`is_available` / :func:`unavailable_reason`: whether the kernels can
  run here (a CUDA driver, a device, libNVVM and an importable ``numba.cuda``; or numba's CUDA
  simulator when ``NUMBA_ENABLE_CUDASIM=1``, slow but exact, used by the tests).
* :func:`to_device`, :func:`to_host`, :func:`is_device_array`: the array conventions of every
  wrapper in :mod:`sbnnumba.backends.cuda.ops`.

Arrays in and out
-----------------
Every wrapper accepts NumPy arrays or numba device arrays (``cuda.to_device(...)``; CuPy and other
``__cuda_array_interface__`` arrays are wrapped without a copy). Device arrays are used in place
(no copy; their dtype must already be the working dtype), host arrays are uploaded for the call.
The result is a device array if any array argument was one, else a NumPy array (copied back).
Device arrays must be C-contiguous and are checked for dtype and shape only.
So a caller that keeps its activations on the device pays no transfer; the layers pass NumPy
arrays, which costs one upload of the activations and one download of the result per call.

Weight cache
------------
Host weight arrays (``weight`` of the PSA wrappers, the packed weight words) go through
:data:`weight_cache`, a :class:`DeviceCache`: the first call uploads the array, later calls reuse
the device copy (and what was derived from it on the device, e.g. the exp-kernel ``exp(2 W^T)`` of
the ratio form) as long as the array is the same live object with unchanged contents. Changes are
detected exactly, by comparing the bytes with a host snapshot (a host memory read, no transfer), or,
when the caller passes ``weight_version=``, by that token alone. Optimizers update the weights in
place once per step, so each weight is uploaded once per step, not once per call.

Nothing here imports ``numba.cuda`` at import time.
"""
from __future__ import annotations

import collections
import numbers
import weakref

import numpy as np

INSTALL_HINT = ("install an NVIDIA driver and the CUDA target of numba (`pip install 'numba-cuda[cu12]'`, "
                "see docs/guide/gpu.md), use backend='cpu', or set NUMBA_ENABLE_CUDASIM=1 before Python starts "
                "to run the kernels in numba's (slow) CUDA simulator")

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_WORD_BITS = 64


# ---------------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------------

def _cuda():
    from numba import cuda
    return cuda


def in_simulator():
    """Whether numba runs CUDA kernels in its simulator.

    Returns
    -------
    bool
        True when ``NUMBA_ENABLE_CUDASIM=1`` was set when numba was imported.
    """
    import numba
    return bool(numba.config.ENABLE_CUDASIM)


def unavailable_reason():
    """Why the CUDA kernels cannot run here.

    Returns
    -------
    str or None
        The reason (numba.cuda not importable, CUDA disabled, no driver, no device, no libNVVM), or
        ``None`` when they can run (the simulator included).
    """
    try:
        import numba
        cuda = _cuda()
    except Exception as exc:  # ImportError, or numba-cuda failing to load
        return f"numba.cuda cannot be imported ({type(exc).__name__}: {exc})"
    if numba.config.ENABLE_CUDASIM:
        return None
    if getattr(numba.config, "DISABLE_CUDA", 0):
        return "CUDA support is disabled (NUMBA_DISABLE_CUDA=1)"
    try:
        available = cuda.is_available()
    except Exception as exc:
        return f"the CUDA driver could not be initialized ({type(exc).__name__}: {exc})"
    if available:
        return None
    error = None
    try:
        error = cuda.cuda_error()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error:
        return "the CUDA driver could not be initialized: " + " ".join(str(error).split())
    try:
        if len(cuda.gpus) == 0:
            return "no CUDA device was found"
    except Exception as exc:
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return "libNVVM (part of the CUDA toolkit, needed to compile the kernels) was not found"


def is_available():
    """Whether the CUDA kernels can run here.

    Returns
    -------
    bool
        True with a usable device, or in the simulator (:func:`unavailable_reason` is ``None``).
    """
    return unavailable_reason() is None


def require_cuda():
    """Raise ``RuntimeError`` naming the reason when ``backend="cuda"`` cannot run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"backend 'cuda' is not usable: {reason.rstrip('. ')}. To fix: {INSTALL_HINT}.")


# ---------------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------------

def is_device_array(x):
    """Whether ``x`` lives on the device.

    Parameters
    ----------
    x : object
        Any argument of a backend wrapper.

    Returns
    -------
    bool
        True for numba device arrays (and simulator arrays) and other ``__cuda_array_interface__``
        objects (e.g. CuPy arrays); False for NumPy arrays, numbers and ``None``.
    """
    if isinstance(x, np.ndarray) or x is None or isinstance(x, numbers.Number):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    if in_simulator():
        return isinstance(x, _cuda().devicearray.FakeCUDAArray)
    return False


def device_view(x):
    """A numba device array for a device array ``x``, without a copy.

    Parameters
    ----------
    x : device array
        A numba device array (returned as it is) or another ``__cuda_array_interface__`` object.

    Returns
    -------
    numba device array
        ``x`` itself or a zero-copy wrapper of it.
    """
    cuda = _cuda()
    if in_simulator() or isinstance(x, cuda.devicearray.DeviceNDArray):
        return x
    return cuda.as_cuda_array(x)


def to_device(x, dtype=None):
    """Upload a host array (device arrays are returned as they are).

    Parameters
    ----------
    x : array_like or device array
        Host data to upload, or a device array (returned as :func:`device_view` gives it).
    dtype : dtype, optional
        dtype of the upload (default: that of ``x``); device arrays are not converted.

    Returns
    -------
    numba device array
        C-contiguous copy of ``x`` on the device.
    """
    if is_device_array(x):
        return device_view(x)
    x = np.asarray(x)
    return _cuda().to_device(np.ascontiguousarray(x, dtype=dtype or x.dtype))


def to_host(x):
    """NumPy copy of a device array (host arrays are returned as they are).

    Parameters
    ----------
    x : device array or array_like

    Returns
    -------
    numpy.ndarray
        A host copy of a device array, else ``np.asarray(x)``.
    """
    return x.copy_to_host() if is_device_array(x) else np.asarray(x)


def any_device(*arrays):
    """Whether any argument is a device array (then a wrapper returns a device array).

    Parameters
    ----------
    *arrays : object
        Arguments of a wrapper.

    Returns
    -------
    bool
    """
    return any(is_device_array(x) for x in arrays)


def operand(x, dtype, name):
    """``x`` on the device in ``dtype``: device arrays as they are (dtype checked), host ones uploaded.

    Parameters
    ----------
    x : array_like or device array
    dtype : numpy.dtype
        The working dtype.
    name : str
        Argument name for the error messages.

    Returns
    -------
    numba device array

    Raises
    ------
    TypeError
        For a device array of another dtype (device arrays are not converted).
    ValueError
        For a device array that is not C-contiguous.
    """
    if is_device_array(x):
        x = device_view(x)
        if np.dtype(x.dtype) != dtype:
            raise TypeError(f"{name}: expected a device array of dtype {dtype}, got {np.dtype(x.dtype)} "
                            f"(device arrays are not converted)")
        if not x.is_c_contiguous():
            raise ValueError(f"{name}: expected a C-contiguous device array (device arrays are not copied)")
        return x
    return _cuda().to_device(np.ascontiguousarray(x, dtype=dtype))


def result(d, on_device):
    """A wrapper's result: the device array ``d`` itself if an input was on the device, else a host copy.

    Parameters
    ----------
    d : numba device array
    on_device : bool
        Whether any input was a device array (:func:`any_device`).

    Returns
    -------
    numba device array or numpy.ndarray
    """
    return d if on_device else d.copy_to_host()


def blocks(n, threads):
    """Blocks of ``threads`` that cover ``n`` items: ``max(1, ceil(n / threads))``.

    Parameters
    ----------
    n : int
        Items (threads, rows, columns, ...) to cover.
    threads : int
        Items per block.

    Returns
    -------
    int
    """
    return max(1, -(-int(n) // threads))


def launch_1d(kernel, n, *args):
    """Launch an element-wise kernel over ``n`` threads, blocks of :data:`.kernels.THREADS_1D` (none if ``n == 0``).

    Parameters
    ----------
    kernel : numba.cuda dispatcher
        A kernel that reads its index with ``cuda.grid(1)`` and ignores indices ``>= n``.
    n : int
        Number of threads needed.
    *args
        The kernel's arguments.
    """
    from . import kernels as k
    if n > 0:
        kernel[blocks(n, k.THREADS_1D), k.THREADS_1D](*args)


def flat(x):
    """1-d view of a C-contiguous (device) array.

    Parameters
    ----------
    x : device array or numpy.ndarray

    Returns
    -------
    view of ``x``
        Shape ``(x.size,)``, no copy.
    """
    return x.reshape(int(np.prod(x.shape)))


# ---------------------------------------------------------------------------------------------------
# Device cache for weights
# ---------------------------------------------------------------------------------------------------

class _Entry:
    __slots__ = ("ref", "shape", "dtype", "pointer", "snapshot", "device", "derived", "version", "nbytes",
                 "__weakref__")


class DeviceCache:
    """Device copies of host arrays (layer weights), uploaded once and reused while unchanged.

    An entry is keyed on the host array object (``id`` plus a weak reference, so the entry goes
    away with the array) and checked on every lookup: same object, shape, dtype and data pointer,
    and unchanged contents, by ``version`` if the caller gives one, else by a bytewise comparison
    with a host snapshot (exact; costs a host memory read, no transfer, no allocation). A changed
    array is copied into the existing device buffer; arrays derived from it on the device
    (``derived``) are dropped. Entries beyond ``max_bytes`` of device memory are evicted, least
    recently used first.

    Parameters
    ----------
    max_bytes : int
        Device bytes beyond which the least recently used entries are evicted (default 1 GiB).

    Attributes
    ----------
    uploads, hits : int
        Number of host-to-device copies made, and of lookups served without one.
    """

    def __init__(self, max_bytes=1 << 30):
        self.max_bytes = int(max_bytes)
        self._entries = collections.OrderedDict()
        self.uploads = 0
        self.hits = 0

    def __len__(self):
        return len(self._entries)

    @property
    def nbytes(self):
        """Device bytes held (the arrays and what was derived from them)."""
        return sum(e.nbytes for e in self._entries.values())

    def clear(self):
        self._entries.clear()

    def _drop(self, key, entry_ref):
        if key in self._entries and self._entries[key] is entry_ref():
            del self._entries[key]

    def lookup(self, host, dtype, version=None):
        """The entry holding ``host`` (converted to ``dtype``) on the device; uploads when needed."""
        host_c = np.ascontiguousarray(host, dtype=dtype)
        key = id(host)
        pointer = host.__array_interface__["data"][0]
        entry = self._entries.get(key)
        if entry is not None and entry.ref() is host and entry.shape == host.shape \
                and entry.dtype == host_c.dtype and entry.pointer == pointer:
            if version is not None and entry.version == version:
                unchanged = True
            elif version is not None:
                unchanged = False
            else:
                unchanged = np.array_equal(entry.snapshot.view(np.uint8), host_c.reshape(-1).view(np.uint8))
            self._entries.move_to_end(key)
            if unchanged:
                self.hits += 1
                return entry
            entry.device.copy_to_device(host_c)
            np.copyto(entry.snapshot, host_c.reshape(-1).view(np.uint8))
            entry.derived.clear()
            entry.version = version
            entry.nbytes = host_c.nbytes
            self.uploads += 1
            return entry
        entry = _Entry()
        entry.shape, entry.dtype, entry.pointer = host.shape, host_c.dtype, pointer
        entry.snapshot = host_c.reshape(-1).view(np.uint8).copy()
        entry.device = _cuda().to_device(host_c)
        entry.derived = {}
        entry.version = version
        entry.nbytes = host_c.nbytes
        entry_ref = weakref.ref(entry)
        entry.ref = weakref.ref(host, lambda _, key=key, entry_ref=entry_ref: self._drop(key, entry_ref))
        self._entries[key] = entry
        self.uploads += 1
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)
        return entry

    def derive(self, entry, tag, make):
        """Device array derived from ``entry`` (e.g. an exp-kernel), made by ``make()`` once per upload."""
        if tag not in entry.derived:
            entry.derived[tag] = make()
            entry.nbytes += int(np.prod(entry.derived[tag].shape)) * np.dtype(entry.derived[tag].dtype).itemsize
        return entry.derived[tag]


weight_cache = DeviceCache()


def cache_info():
    """Counters of :data:`weight_cache`.

    Returns
    -------
    dict
        ``{"entries", "bytes", "uploads", "hits"}``: cached arrays, device bytes held, host-to-device
        copies made, lookups served without one.
    """
    return {"entries": len(weight_cache), "bytes": weight_cache.nbytes, "uploads": weight_cache.uploads,
            "hits": weight_cache.hits}


def clear_cache():
    """Drop every cached device weight (the counters are kept)."""
    weight_cache.clear()


def weight_operand(weight, dtype, name, version):
    """A weight argument on the device: device arrays as they are, host arrays through :data:`weight_cache`.

    Parameters
    ----------
    weight : array_like or device array
    dtype : numpy.dtype
        The working dtype.
    name : str
        Argument name for the error messages.
    version : object or None
        Optional token that replaces the cache's content check.

    Returns
    -------
    (numba device array, cache entry or None)
        The entry (for :func:`derived`) is None for device arrays.

    Raises
    ------
    TypeError
        For a non-numeric host array or a device array of another dtype.
    """
    if is_device_array(weight):
        return operand(weight, dtype, name), None
    weight = np.asarray(weight)
    if not isinstance(weight, np.ndarray) or weight.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got {type(weight).__name__}")
    entry = weight_cache.lookup(weight, dtype, version)
    return entry.device, entry


def derived(entry, tag, make):
    """A device array derived from a weight (e.g. its exp-kernel), cached with it when it is cached.

    Parameters
    ----------
    entry : cache entry or None
        From :func:`weight_operand`; None (a device weight): nothing is cached.
    tag : hashable
        Names the derived array within the entry.
    make : callable
        ``make()`` computes it.

    Returns
    -------
    numba device array
    """
    return make() if entry is None else weight_cache.derive(entry, tag, make)
