r"""Host-side routing for the numba.cuda kernels of :mod:`sbnnumba.kernels.cuda` (``backend="cuda"``).

* :func:`require_cuda` / :func:`is_available` / :func:`unavailable_reason`: whether the kernels can
  run here (a CUDA driver, a device, libNVVM and an importable ``numba.cuda``; or numba's CUDA
  simulator when ``NUMBA_ENABLE_CUDASIM=1``, slow but exact, used by the tests).
* Wrappers with the signatures of the CPU kernels: :func:`flip_propagate_dense`,
  :func:`flip_propagate_conv` (PSA), :func:`xnor_matmul`, :func:`xnor_matmul_threshold`,
  :func:`binary_conv2d`, :func:`binary_conv2d_threshold` (bit-packed, the semantics of
  :mod:`sbnnumba.bitpack`), and the element-wise :func:`sample_states`, :func:`st_factor`,
  :func:`psa_preactivation_grad`.

Arrays in and out
-----------------
Every wrapper accepts NumPy arrays or numba device arrays (``cuda.to_device(...)``; CuPy and other
``__cuda_array_interface__`` arrays are wrapped without a copy). Device arrays are used in place
(no copy; their dtype must already be the working dtype), host arrays are uploaded for the call.
The result is a device array if any array argument was one, else a NumPy array (copied back).
Device arrays must be C-contiguous and are checked for dtype and shape only (e.g. the padding bits
of packed device words are not inspected, as that would need a transfer).
So a caller that keeps its activations on the device pays no transfer; the current layers pass
NumPy arrays, which costs one upload of the activations and one download of the result per call.

Weight cache
------------
Host weight arrays (``weight`` of the PSA wrappers, ``b_words`` / ``w_words`` of the packed ones)
go through :data:`weight_cache`, a :class:`DeviceCache`: the first call uploads the array, later
calls reuse the device copy (and what was derived from it on the device, e.g. the exp-kernel
``exp(2 W^T)`` of the ratio form) as long as the array is the same live object with unchanged
contents. Changes are detected exactly, by comparing the bytes with a host snapshot (a host
memory read, no transfer), or, when the caller passes ``weight_version=``, by that token alone.
Optimizers update the weights in place once per step, so each weight is uploaded once per step,
not once per call.

The ratio form of the logistic PSA kernels uses the CPU's limits (:func:`sbnnumba.kernels.cpu.ratio_limits`):
``2W`` is clipped to ``[-C, C]`` and the saturated units (``|a| > A``) are summed exactly by the
generic kernel, restricted to them (a ``d_out`` that is zero elsewhere), and added; that second
pass (and a one-integer download to learn whether it is needed) only costs when some saturated unit
is active: as on the CPU (:func:`sbnnumba.kernels.cpu.active_saturated`), units whose flips keep
them in sigma's flat tail (``|a| - 2 max|W| > T``) are left out, so a trained network whose
saturated units are all inert skips the pass.
Nothing here imports ``numba.cuda`` at import time.
"""
from __future__ import annotations

import collections
import numbers
import weakref

import numpy as np

from .cpu import SIGMA_FLAT, ratio_limits
from .scalar import LOGISTIC

INSTALL_HINT = ("install an NVIDIA driver and the CUDA target of numba (`pip install 'numba-cuda[cu12]'`, "
                "see docs/gpu.md), use backend='cpu', or set NUMBA_ENABLE_CUDASIM=1 before Python starts "
                "to run the kernels in numba's (slow) CUDA simulator")

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_WORD_BITS = 64


# ---------------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------------

def _cuda():
    from numba import cuda
    return cuda


def in_simulator():
    """True when numba runs CUDA kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1`` at import)."""
    import numba
    return bool(numba.config.ENABLE_CUDASIM)


def unavailable_reason():
    """Why the CUDA kernels cannot run here, or ``None`` when they can (simulator included)."""
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
    """True when the CUDA kernels can run here (a usable device, or the simulator)."""
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
    """True for numba device arrays (and simulator arrays) and other CUDA-array-interface objects."""
    if isinstance(x, np.ndarray) or x is None or isinstance(x, numbers.Number):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    if in_simulator():
        return isinstance(x, _cuda().devicearray.FakeCUDAArray)
    return False


def _device_view(x):
    """A numba device array for ``x`` (a numba device array itself, or a zero-copy wrapper)."""
    cuda = _cuda()
    if in_simulator() or isinstance(x, cuda.devicearray.DeviceNDArray):
        return x
    return cuda.as_cuda_array(x)


def to_device(x, dtype=None):
    """Upload a host array (device arrays are returned as they are)."""
    if is_device_array(x):
        return _device_view(x)
    x = np.asarray(x)
    return _cuda().to_device(np.ascontiguousarray(x, dtype=dtype or x.dtype))


def to_host(x):
    """NumPy copy of a device array (host arrays are returned as they are)."""
    return x.copy_to_host() if is_device_array(x) else np.asarray(x)


def _any_device(*arrays):
    return any(is_device_array(x) for x in arrays)


def _operand(x, dtype, name):
    """``x`` on the device in ``dtype``: device arrays as they are (dtype checked), host ones uploaded."""
    if is_device_array(x):
        x = _device_view(x)
        if np.dtype(x.dtype) != dtype:
            raise TypeError(f"{name}: expected a device array of dtype {dtype}, got {np.dtype(x.dtype)} "
                            f"(device arrays are not converted)")
        if not x.is_c_contiguous():
            raise ValueError(f"{name}: expected a C-contiguous device array (device arrays are not copied)")
        return x
    return _cuda().to_device(np.ascontiguousarray(x, dtype=dtype))


def _result(d, on_device):
    return d if on_device else d.copy_to_host()


def _blocks(n, threads):
    return max(1, -(-int(n) // threads))


def _launch_1d(kernel, n, *args):
    from . import cuda as k
    if n > 0:
        kernel[_blocks(n, k.THREADS_1D), k.THREADS_1D](*args)


def _flat(x):
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


def to_device_cached(host, dtype=None, version=None):
    """Device copy of a host array through :data:`weight_cache` (device arrays pass through)."""
    if is_device_array(host):
        return _device_view(host)
    host = np.asarray(host)
    return weight_cache.lookup(host, np.dtype(dtype or host.dtype), version).device


def cache_info():
    """``{"entries", "bytes", "uploads", "hits"}`` of :data:`weight_cache`."""
    return {"entries": len(weight_cache), "bytes": weight_cache.nbytes, "uploads": weight_cache.uploads,
            "hits": weight_cache.hits}


def clear_cache():
    """Drop every cached device weight (the counters are kept)."""
    weight_cache.clear()


def _weight(weight, dtype, name, version):
    """(device array, cache entry or None) for a weight argument."""
    if is_device_array(weight):
        return _operand(weight, dtype, name), None
    weight = np.asarray(weight)
    if not isinstance(weight, np.ndarray) or weight.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got {type(weight).__name__}")
    entry = weight_cache.lookup(weight, dtype, version)
    return entry.device, entry


def _derived(entry, tag, make):
    return make() if entry is None else weight_cache.derive(entry, tag, make)


def _working_dtype(a, name="a"):
    dtype = np.dtype(a.dtype)
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype}")
    return dtype


def _check_form(form, noise_code):
    if form not in ("auto", "ratio", "generic"):
        raise ValueError(f"form: expected 'auto', 'ratio' or 'generic', got {form!r}")
    if form == "ratio" and noise_code != LOGISTIC:
        raise ValueError("form: the ratio form holds for logistic noise only; use 'generic'")
    return "ratio" if form == "auto" and noise_code == LOGISTIC else ("generic" if form == "auto" else form)


def _ratio_units(da, dxo, dd, dtype, dw, entry, inner):
    """Per-unit arrays of a ratio-form call: ``e, g, gs`` (:func:`sbnnumba.kernels.cuda.ratio_units`) and
    ``d_sat``, the ``d_out`` of the active saturated units (zero elsewhere), or None when there are none.
    ``dw`` is the weight (output units or channels first, cached ``reach`` per cache ``entry``);
    ``inner`` the number of consecutive units of ``a`` per row of ``dw`` (1 dense, ``H_out W_out`` conv)."""
    from . import cuda as k
    cuda = _cuda()
    rows = dw.reshape(dw.shape[0], int(np.prod(dw.shape[1:])))

    def make_reach():
        reach = cuda.device_array(rows.shape[0], dtype=dtype)
        _launch_1d(k.reach_rows, rows.shape[0], rows, reach)
        return reach

    reach = _derived(entry, ("reach_rows", dtype.name), make_reach)
    e, g, gs, d_sat = (cuda.device_array(da.shape, dtype=dtype) for _ in range(4))
    n_sat = cuda.device_array(1, dtype=np.int32)
    k.zero_counter[1, 1](n_sat)  # a kernel, not an upload: a device-resident step makes no host-to-device copy
    _launch_1d(k.ratio_units, int(np.prod(da.shape)), _flat(da), _flat(dxo), _flat(dd),
               dtype.type(ratio_limits(dtype)[0]), reach, inner, dtype.type(SIGMA_FLAT[dtype]), _flat(e), _flat(g),
               _flat(gs), _flat(d_sat), n_sat)
    return e, g, gs, (d_sat if n_sat.copy_to_host()[0] else None)


def _tiles(defaults, tiles):
    out = dict(defaults)
    if tiles:
        unknown = sorted(set(tiles) - set(out))
        if unknown:
            raise ValueError(f"tiles: unknown keys {unknown}; expected some of {sorted(out)}")
        out.update(tiles)
    return out


# ---------------------------------------------------------------------------------------------------
# PSA flip propagation
# ---------------------------------------------------------------------------------------------------

def flip_propagate_dense(x_in, a, x_out, weight, d_out, noise_code, form="auto", *, weight_version=None,
                         tiles=None):
    r"""PSA flip propagation ``d_in[b,i] = sum_j Delta[b,i,j] d_out[b,j]`` on the GPU.

    Same arguments and result as :func:`sbnnumba.kernels.cpu.flip_propagate_dense`:
    ``x_in`` (B, N_in), ``a``, ``x_out``, ``d_out`` (B, N_out), ``weight`` (N_out, N_in), the noise
    code, ``form`` in {"auto", "ratio", "generic"}; returns ``d_in`` (B, N_in) in the dtype of ``a``
    (a device array if any argument was one). ``weight_version``: optional token that replaces the
    content check of the weight cache; ``tiles``: overrides of :data:`sbnnumba.kernels.cuda.DENSE_TILE`.
    """
    from . import cuda as k
    require_cuda()
    cuda = _cuda()
    dtype = _working_dtype(a)
    if len(x_in.shape) != 2 or len(a.shape) != 2 or len(weight.shape) != 2:
        raise ValueError(f"flip_propagate_dense: expected 2-d x_in, a, weight; got shapes {tuple(x_in.shape)}, "
                         f"{tuple(a.shape)}, {tuple(weight.shape)}")
    n_batch, n_in = x_in.shape
    n_out = weight.shape[0]
    if weight.shape[1] != n_in or tuple(a.shape) != (n_batch, n_out):
        raise ValueError(f"flip_propagate_dense: inconsistent shapes x_in {tuple(x_in.shape)}, a {tuple(a.shape)}, "
                         f"weight {tuple(weight.shape)}")
    if tuple(x_out.shape) != tuple(a.shape) or tuple(d_out.shape) != tuple(a.shape):
        raise ValueError(f"flip_propagate_dense: x_out {tuple(x_out.shape)} and d_out {tuple(d_out.shape)} "
                         f"must match a {tuple(a.shape)}")
    form = _check_form(form, noise_code)
    on_device = _any_device(x_in, a, x_out, weight, d_out)
    d_in = cuda.device_array((n_batch, n_in), dtype=dtype)
    if n_batch == 0 or n_in == 0:
        return _result(d_in, on_device)
    if n_out == 0:
        return _result(cuda.to_device(np.zeros((n_batch, n_in), dtype)), on_device)
    dx, da, dxo, dd = (_operand(t, dtype, name) for t, name in
                       ((x_in, "x_in"), (a, "a"), (x_out, "x_out"), (d_out, "d_out")))
    dw, entry = _weight(weight, dtype, "weight", weight_version)
    cfg = _tiles(k.DENSE_TILE, tiles)
    grid = (_blocks(n_in, cfg["tile_i"]), _blocks(n_batch, cfg["tile_b"]))
    block = (cfg["tile_i"], cfg["tile_b"] // cfg["rows_per_thread"])
    generic = k.dense_flip_generic_kernel(dtype.name, **cfg)[grid, block]
    if form == "ratio":
        e, g, gs, d_sat = _ratio_units(da, dxo, dd, dtype, dw, entry, 1)
        a_term = cuda.device_array((n_batch, 1), dtype=dtype)
        _launch_1d(k.sum_axis1, n_batch, gs.reshape(n_batch, n_out, 1), a_term)
        clip = dtype.type(ratio_limits(dtype)[1])

        def make_k():
            kk = cuda.device_array((n_in, n_out), dtype=dtype)
            k.exp2_transpose[(_blocks(n_out, 16), _blocks(n_in, 16)), (16, 16)](dw, clip, kk)
            return kk

        kk = _derived(entry, ("exp2_transpose", dtype.name), make_k)
        k.dense_flip_ratio_kernel(dtype.name, **cfg)[grid, block](dx, e, g, kk, a_term.reshape(n_batch), d_in)
        if d_sat is not None:  # the saturated units, exactly
            d_extra = cuda.device_array((n_batch, n_in), dtype=dtype)
            generic(LOGISTIC, dx, da, dxo, d_sat, dw, d_extra)
            _launch_1d(k.add_into, n_batch * n_in, _flat(d_extra), _flat(d_in))
    else:
        generic(int(noise_code), dx, da, dxo, dd, dw, d_in)
    return _result(d_in, on_device)


def _pair(value, name, minimum):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum for v in value)):
        raise ValueError(f"{name}: expected an int >= {minimum} or a pair of them, got {value!r}")
    return int(value[0]), int(value[1])


def flip_propagate_conv(x_in, a, x_out, weight, d_out, stride, padding, noise_code, form="auto", *,
                        weight_version=None):
    r"""PSA flip propagation through a conv layer on the GPU (direct form).

    Same arguments and result as :func:`sbnnumba.kernels.conv_cpu.flip_propagate_conv`: ``x_in``
    (B, C_in, H, W); ``a``, ``x_out``, ``d_out`` (B, C_out, H_out, W_out); ``weight`` (C_out, C_in, kh, kw);
    ``stride``, ``padding`` (int or pair); returns ``d_in`` (B, C_in, H, W) in the dtype of ``a``.
    """
    from . import cuda as k
    require_cuda()
    cuda = _cuda()
    dtype = _working_dtype(a)
    (sh, sw), (ph, pw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    if len(x_in.shape) != 4 or len(a.shape) != 4 or len(weight.shape) != 4:
        raise ValueError(f"flip_propagate_conv: expected 4-d x_in, a, weight; got shapes {tuple(x_in.shape)}, "
                         f"{tuple(a.shape)}, {tuple(weight.shape)}")
    n_batch, c_in, h, w = x_in.shape
    c_out, c_in_w, kh, kw = weight.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if c_in_w != c_in or tuple(a.shape) != (n_batch, c_out, ho, wo):
        raise ValueError(f"flip_propagate_conv: inconsistent shapes x_in {tuple(x_in.shape)}, a {tuple(a.shape)}, "
                         f"weight {tuple(weight.shape)} (stride {(sh, sw)}, padding {(ph, pw)})")
    if tuple(x_out.shape) != tuple(a.shape) or tuple(d_out.shape) != tuple(a.shape):
        raise ValueError(f"flip_propagate_conv: x_out {tuple(x_out.shape)} and d_out {tuple(d_out.shape)} "
                         f"must match a {tuple(a.shape)}")
    form = _check_form(form, noise_code)
    on_device = _any_device(x_in, a, x_out, weight, d_out)
    n_in_units = n_batch * c_in * h * w
    if n_in_units == 0 or c_out == 0 or ho <= 0 or wo <= 0:
        return _result(cuda.to_device(np.zeros((n_batch, c_in, h, w), dtype)), on_device)
    dx, da, dxo, dd = (_operand(t, dtype, name) for t, name in
                       ((x_in, "x_in"), (a, "a"), (x_out, "x_out"), (d_out, "d_out")))
    dw, entry = _weight(weight, dtype, "weight", weight_version)
    d_in = cuda.device_array((n_batch, c_in, h, w), dtype=dtype)
    n_units = n_batch * c_out * ho * wo

    def generic(code, d, out):
        v = cuda.device_array(a.shape, dtype=dtype)
        f_lo = cuda.device_array(a.shape, dtype=dtype)
        f_hi = cuda.device_array(a.shape, dtype=dtype)
        _launch_1d(k.generic_units, n_units, int(code), _flat(da), _flat(dxo), _flat(v), _flat(f_lo), _flat(f_hi))
        _launch_1d(k.flip_conv_generic, n_in_units, int(code), dx, v, dxo, d, f_lo, f_hi, dw, sh, sw, ph, pw, out)

    if form == "ratio":
        e, g, gs, d_sat = _ratio_units(da, dxo, dd, dtype, dw, entry, ho * wo)
        t_sum = cuda.device_array((n_batch, ho * wo), dtype=dtype)
        _launch_1d(k.sum_axis1, n_batch * ho * wo, gs.reshape(n_batch, c_out, ho * wo), t_sum)

        clip = dtype.type(ratio_limits(dtype)[1])

        def make_k():
            kk = cuda.device_array(weight.shape, dtype=dtype)
            _launch_1d(k.exp2, kk.size, _flat(dw), clip, _flat(kk))
            return kk

        kk = _derived(entry, ("exp2", dtype.name), make_k)
        _launch_1d(k.flip_conv_ratio, n_in_units, dx, e, g, t_sum.reshape(n_batch, ho, wo), kk, sh, sw, ph, pw,
                   dtype.type(1), d_in)
        if d_sat is not None:  # the saturated units, exactly
            d_extra = cuda.device_array((n_batch, c_in, h, w), dtype=dtype)
            generic(LOGISTIC, d_sat, d_extra)
            _launch_1d(k.add_into, n_in_units, _flat(d_extra), _flat(d_in))
    else:
        generic(noise_code, dd, d_in)
    return _result(d_in, on_device)


# ---------------------------------------------------------------------------------------------------
# Bit-packed kernels
# ---------------------------------------------------------------------------------------------------

def _n_words(k):
    return -(-int(k) // _WORD_BITS)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _words(x, name, ndim):
    """Packed words: uint64 with ``ndim`` dimensions; PreparedWeights give their ``words``."""
    if hasattr(x, "words") and hasattr(x, "panels"):  # sbnnumba.bitpack.PreparedWeights
        x = x.words
    if not is_device_array(x) and not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a uint64 array of packed words (see sbnnumba.bitpack.pack), "
                        f"got {type(x).__name__}")
    if np.dtype(x.dtype) != np.uint64:
        raise TypeError(f"{name}: expected a uint64 array of packed words (see sbnnumba.bitpack.pack), "
                        f"got {np.dtype(x.dtype)}")
    if len(x.shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array of packed words, got shape {tuple(x.shape)}")
    return x


def _check_padding_bits(x, k, name):
    used = k % _WORD_BITS
    if used and not is_device_array(x) and x.size and np.any(x[..., -1] >> np.uint64(used)):
        raise ValueError(f"{name}: padding bits beyond k={k} must be 0 (pack with sbnnumba.bitpack.pack)")


def _thresholds(thresholds, n_columns, k):
    """As sbnnumba.bitpack: real scalar or (n_columns,), NaN rejected -> ceil(clip(t, +-(k+2))) int64."""
    t = np.asarray(thresholds)
    if t.dtype.kind not in "fiu":
        raise TypeError(f"thresholds: expected real numbers, got dtype {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n_columns):
        raise ValueError(f"thresholds: expected a scalar or shape ({n_columns},), got shape {t.shape}")
    if np.any(np.isnan(t)):
        raise ValueError("thresholds: expected real values, found NaN")
    t = np.ceil(np.clip(t.astype(np.float64), -(k + 2), k + 2)).astype(np.int64)
    return np.ascontiguousarray(np.broadcast_to(t, (n_columns,)))


def _flip(flip, n_columns):
    if flip is None:
        return np.zeros(n_columns, np.uint8)
    f = np.asarray(flip)
    if f.dtype != np.bool_:
        raise TypeError(f"flip: expected a boolean array or None, got dtype {f.dtype}")
    if f.shape != (n_columns,):
        raise ValueError(f"flip: expected shape ({n_columns},), got {f.shape}")
    return f.astype(np.uint8)


def _gemm_operands(a_words, b_words, k):
    a = _words(a_words, "a_words", 2)
    b = _words(b_words, "b_words", 2)
    k = _check_int(k, "k", 0)
    if _n_words(k) != a.shape[1]:
        raise ValueError(f"k: k={k} needs ceil({k}/64)={_n_words(k)} words per row, but a_words has "
                         f"{a.shape[1]} (shape {tuple(a.shape)})")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b_words: expected {a.shape[1]} words per row like a_words, got shape {tuple(b.shape)}")
    _check_padding_bits(a, k, "a_words")
    _check_padding_bits(b, k, "b_words")
    return a, b, k


def xnor_matmul(a_words, b_words, k, *, tiles=None):
    r"""XNOR-popcount product ``out[i, j] = k - 2 sum_w popc(a[i, w] ^ b[j, w])`` (int32, (M, N)).

    As :func:`sbnnumba.bitpack.matmul`: ``a_words`` (M, ceil(k/64)), ``b_words`` (N, ceil(k/64)) uint64
    (or ``PreparedWeights``; host ``b_words`` are cached on the device); ``tiles``: overrides of
    :data:`sbnnumba.kernels.cuda.GEMM_TILE`.
    """
    from . import cuda as kern
    require_cuda()
    cuda = _cuda()
    a, b, k = _gemm_operands(a_words, b_words, k)
    on_device = _any_device(a, b)
    m, n = a.shape[0], b.shape[0]
    out = cuda.device_array((m, n), dtype=np.int32)
    if m and n:
        cfg = _tiles(kern.GEMM_TILE, tiles)
        da = _operand(a, np.dtype(np.uint64), "a_words")
        db, _ = _weight(b, np.dtype(np.uint64), "b_words", None)
        grid = (_blocks(n, cfg["tile_n"]), _blocks(m, cfg["tile_m"]))
        block = (cfg["tile_n"], cfg["tile_m"] // cfg["rows_per_thread"])
        kern.xnor_gemm_kernel(**cfg)[grid, block](da, db, k, out)
    return _result(out, on_device)


def xnor_matmul_threshold(a_words, b_words, k, thresholds, flip=None, *, tiles=None):
    r"""Fused packed ``sign(a @ b.T - thresholds)`` (negated where ``flip``): uint64 (M, ceil(N/64)).

    Semantics of :func:`sbnnumba.bitpack.matmul_threshold`: ``y = +1`` iff ``dot >= t`` (non-integer
    thresholds act as their ceiling, +-inf allowed), bit set = -1, padding bits 0.
    ``tiles``: overrides of :data:`sbnnumba.kernels.cuda.GEMM_THRESHOLD_TILE`.
    """
    from . import cuda as kern
    require_cuda()
    cuda = _cuda()
    a, b, k = _gemm_operands(a_words, b_words, k)
    on_device = _any_device(a, b)
    m, n = a.shape[0], b.shape[0]
    t = _thresholds(thresholds, n, k)
    f = _flip(flip, n)
    out = cuda.device_array((m, _n_words(n)), dtype=np.uint64)
    if m and n:
        cfg = _tiles(kern.GEMM_THRESHOLD_TILE, tiles)
        da = _operand(a, np.dtype(np.uint64), "a_words")
        db, _ = _weight(b, np.dtype(np.uint64), "b_words", None)
        grid = (_n_words(n), _blocks(m, cfg["tile_m"]))
        block = (64, cfg["tile_m"] // cfg["rows_per_thread"])
        kern.xnor_gemm_threshold_kernel(**cfg)[grid, block](da, db, k, cuda.to_device(t), cuda.to_device(f), out)
    return _result(out, on_device)


def _conv_operands(x_words, w_words, c_in, stride, padding):
    x = _words(x_words, "x_words", 4)
    w = _words(w_words, "w_words", 4)
    c_in = _check_int(c_in, "c_in", 1)
    if _n_words(c_in) != x.shape[3]:
        raise ValueError(f"c_in: c_in={c_in} needs ceil({c_in}/64)={_n_words(c_in)} words per pixel, but x_words "
                         f"has {x.shape[3]} (shape {tuple(x.shape)})")
    if w.shape[3] != x.shape[3]:
        raise ValueError(f"w_words: expected {x.shape[3]} channel words like x_words, got shape {tuple(w.shape)}")
    _check_padding_bits(x, c_in, "x_words")
    _check_padding_bits(w, c_in, "w_words")
    (sh, sw), (ph, pw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    _, height, width, _ = x.shape
    _, kh, kw, _ = w.shape
    ho, wo = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"w_words: kernel {kh}x{kw} does not fit the padded input {height + 2 * ph}x{width + 2 * pw}")
    return x, w, c_in, (sh, sw, ph, pw), (ho, wo)


def _conv_dots(x, w, c_in, geometry, out_hw):
    from . import cuda as kern
    cuda = _cuda()
    out = cuda.device_array((x.shape[0], w.shape[0]) + out_hw, dtype=np.int32)
    dx = _operand(x, np.dtype(np.uint64), "x_words")
    dw, _ = _weight(w, np.dtype(np.uint64), "w_words", None)
    _launch_1d(kern.xnor_conv2d, out.size, dx, dw, c_in, *geometry, out)
    return out


def binary_conv2d(x_words, w_words, c_in, stride=1, padding=0):
    r"""Binary convolution of packed maps with exact zero padding: int32 (B, C_out, H_out, W_out).

    As :func:`sbnnumba.bitpack.conv2d`: ``x_words`` (B, H, W, ceil(c_in/64)), ``w_words``
    (C_out, kh, kw, ceil(c_in/64)) uint64 (or ``PreparedWeights``), ``c_in`` the true channel count.
    """
    require_cuda()
    x, w, c_in, geometry, out_hw = _conv_operands(x_words, w_words, c_in, stride, padding)
    return _result(_conv_dots(x, w, c_in, geometry, out_hw), _any_device(x, w))


def binary_conv2d_threshold(x_words, w_words, c_in, thresholds, flip=None, stride=1, padding=0):
    r"""Packed ``sign(conv2d(x, w) - thresholds)`` in the input layout: uint64 (B, H_out, W_out, ceil(C_out/64)).

    Semantics of :func:`sbnnumba.bitpack.conv2d_threshold` (two kernels: the int32 convolution, then
    the packed sign).
    """
    from . import cuda as kern
    require_cuda()
    cuda = _cuda()
    x, w, c_in, geometry, (ho, wo) = _conv_operands(x_words, w_words, c_in, stride, padding)
    c_out = w.shape[0]
    k = c_in * w.shape[1] * w.shape[2]
    t = _thresholds(thresholds, c_out, k)
    f = _flip(flip, c_out)
    dots = _conv_dots(x, w, c_in, geometry, (ho, wo))
    out = cuda.device_array((x.shape[0], ho, wo, _n_words(c_out)), dtype=np.uint64)
    _launch_1d(kern.sign_pack_channels, out.size, dots, cuda.to_device(t), cuda.to_device(f), out)
    return _result(out, _any_device(x, w))


# ---------------------------------------------------------------------------------------------------
# Element-wise pieces of a training step
# ---------------------------------------------------------------------------------------------------

def _elementwise(kernel, noise_code, arrays, names, dtype):
    cuda = _cuda()
    shape = tuple(arrays[0].shape)
    for x, name in zip(arrays[1:], names[1:]):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} like {names[0]}, got {tuple(x.shape)}")
    on_device = _any_device(*arrays)
    devs = [_operand(x, dtype, name) for x, name in zip(arrays, names)]
    out = cuda.device_array(shape, dtype=dtype)
    n = int(np.prod(shape))
    _launch_1d(kernel, n, int(noise_code), *(_flat(d) for d in devs), _flat(out))
    return _result(out, on_device)


def sample_states(a, u, noise_code):
    """Binary states ``x = +1 if u < F(a) else -1`` from pre-drawn uniforms ``u`` (shape of ``a``)."""
    from . import cuda as k
    require_cuda()
    return _elementwise(k.sample_states, noise_code, (a, u), ("a", "u"), _working_dtype(a))


def st_factor(a, noise_code):
    """Deep-ST backward factor ``2 p(a)`` (the derivative of the mean response ``2F(a) - 1``)."""
    from . import cuda as k
    require_cuda()
    return _elementwise(k.st_factor, noise_code, (a,), ("a",), _working_dtype(a))


def psa_preactivation_grad(x, a, d, noise_code):
    """PSA pre-activation gradient ``g_a = -x p(a) d`` (spec psa.md, Eq. 2)."""
    from . import cuda as k
    require_cuda()
    return _elementwise(k.psa_preactivation_grad, noise_code, (x, a, d), ("x", "a", "d"), _working_dtype(a))
