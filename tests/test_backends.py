"""Every registered backend implements the whole :class:`sbnnumba.backends.Backend` interface and agrees
with ``reference`` (plain NumPy) on small random inputs, the training-step operations of
:mod:`sbnnumba.backends.step` included (on device arrays for a backend whose arrays live on a device);
the registry's errors.

``cuda`` runs in numba's CUDA simulator without a GPU (tests/conftest.py). Float results agree to
float32 rounding; sampling, packed products and binary convolutions exactly.
"""
import numpy as np
import pytest

from sbnnumba import bitpack, losses
from sbnnumba.backends import Backend, abstract_methods, backend_names, get_backend, host_backend, register_backend
from sbnnumba.backends.base import Backend as BaseBackend
from sbnnumba.backends.step import step_operations
from sbnnumba.kernels import conv_reference
from sbnnumba.kernels.bitpack import PreparedWeights
from sbnnumba.noise import get_noise

NOISES = ("logistic", "normal", "uniform", "triangular")
F32 = dict(rtol=1e-4, atol=2e-5)


def _backend(name, request):
    if name == "cuda":
        return request.getfixturevalue("cuda_backend")
    return get_backend(name)


@pytest.fixture(params=[n for n in backend_names() if n != "reference"])
def backend(request):
    return _backend(request.param, request)


def _pm1(rng, shape, dtype=np.float32):
    return np.where(rng.random(shape) < 0.5, 1, -1).astype(dtype)


def test_interface_is_complete():
    """Every registered backend class implements every operation of the interface."""
    methods = abstract_methods()
    assert {"flip_propagate_dense", "flip_propagate_conv", "sample_states", "st_preactivation_grad",
            "psa_preactivation_grad", "xnor_matmul", "xnor_matmul_threshold", "binary_conv2d",
            "binary_conv2d_threshold"} <= set(methods)
    assert set(step_operations()) <= set(methods) and "dense_forward" in step_operations()
    from sbnnumba.backends.registry import _CLASSES
    for name, cls in _CLASSES.items():
        assert cls.name == name
        assert not cls.__abstractmethods__, f"{name}: missing {sorted(cls.__abstractmethods__)}"
        for method in methods:
            assert getattr(cls, method) is not getattr(BaseBackend, method), f"{name}.{method} not implemented"


@pytest.mark.parametrize("noise_name", NOISES)
def test_flip_propagate_dense_agrees(backend, noise_name):
    rng = np.random.default_rng(1)
    noise = get_noise(noise_name)
    x_in = _pm1(rng, (3, 6))
    w = rng.normal(size=(5, 6)).astype(np.float32)
    a = (x_in @ w.T + rng.normal(size=5)).astype(np.float32)
    x_out = noise.sample(a, rng.random(a.shape).astype(np.float32))
    d_out = rng.normal(size=a.shape).astype(np.float32)
    want = get_backend("reference").flip_propagate_dense(x_in, a, x_out, w, d_out, noise)
    got = backend.flip_propagate_dense(x_in, a, x_out, w, d_out, noise)
    assert got.dtype == np.float32 and got.shape == x_in.shape
    np.testing.assert_allclose(got, want, **F32)


@pytest.mark.parametrize("noise_name", ("logistic", "triangular"))
def test_flip_propagate_conv_agrees(backend, noise_name):
    rng = np.random.default_rng(2)
    noise = get_noise(noise_name)
    stride, padding = (2, 1), (1, 1)
    x_in = _pm1(rng, (2, 3, 5, 4))
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    a = conv_reference.conv_forward(x_in, w, rng.normal(size=4), stride, padding).astype(np.float32)
    x_out = noise.sample(a, rng.random(a.shape).astype(np.float32))
    d_out = rng.normal(size=a.shape).astype(np.float32)
    args = (x_in, a, np.ascontiguousarray(x_out), w, d_out, stride, padding, noise)
    want = get_backend("reference").flip_propagate_conv(*args)
    got = backend.flip_propagate_conv(*args)
    assert got.dtype == np.float32 and got.shape == x_in.shape
    np.testing.assert_allclose(got, want, **F32)


@pytest.mark.parametrize("noise_name", NOISES)
def test_elementwise_agree(backend, noise_name):
    rng = np.random.default_rng(3)
    noise = get_noise(noise_name)
    ref = get_backend("reference")
    a = (2 * rng.normal(size=(4, 7))).astype(np.float32)
    u = rng.random(a.shape).astype(np.float32)
    x = backend.sample_states(a, u, noise)
    np.testing.assert_array_equal(x, ref.sample_states(a, u, noise))
    assert x.dtype == np.float32
    d = rng.normal(size=a.shape).astype(np.float32)
    np.testing.assert_allclose(backend.st_preactivation_grad(a, d, noise), ref.st_preactivation_grad(a, d, noise),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ref.st_preactivation_grad(a, d, noise), noise.mean_grad(a) * d)  # bit for bit
    np.testing.assert_allclose(backend.psa_preactivation_grad(x, a, d, noise),
                               ref.psa_preactivation_grad(x, a, d, noise), rtol=1e-5, atol=1e-6)


class Patches(tuple):
    """An argument that is the patch matrix of ``(x, kernel_size, stride, padding)`` on the backend under test
    (:meth:`~sbnnumba.backends.step.StepOperations.conv_patches`: each backend has its own layout)."""


def _resolve(backend, value):
    return backend.conv_patches(*value) if isinstance(value, Patches) else value


def _step_arguments():
    """Small random arguments of every training-step operation (float32; labels int32)."""
    rng = np.random.default_rng(11)

    def f(*shape):
        return rng.normal(size=shape).astype(np.float32)

    noise = get_noise("normal")
    y = np.array([0, 2, 1], np.int32)
    x, w, g, x_last = _pm1(rng, (3, 6)), f(5, 6), f(3, 5), _pm1(rng, (3, 4))
    conv = (_pm1(rng, (2, 3, 5, 4)), f(4, 3, 3, 2), (2, 1), (1, 1))  # output (2, 4, 3, 5)
    z, zd = f(4, 3, 2, 2), f(4, 5)
    logits, v, loss0 = f(3, 3), f(3, 4), np.abs(f(3))
    w_rb, d, g_flip = np.abs(f(3, 4)) / 4, f(3, 4), f(3, 4, 3)
    weights = np.abs(f(3)) / 3
    return {
        "dense_forward": (x, w, f(5)), "dense_backward_input": (g, w), "dense_param_grads": (x, g),
        "conv_patches": (conv[0], (3, 2)) + conv[2:],
        "conv_forward": (Patches((conv[0], (3, 2)) + conv[2:]), conv[1], f(4), (2, 4, 3, 5)),
        "conv_backward_input": (f(2, 4, 3, 5), conv[1], (3, 5, 4)) + conv[2:],
        "conv_param_grads": (Patches((conv[0], (3, 2)) + conv[2:]), f(2, 4, 3, 5), (4, 3, 3, 2)),
        "channel_moments": (z,), "running_average": (f(3), f(3), 0.1),
        "normalize": (z, f(3), np.abs(f(3)), f(3), f(3), 1e-5), "channel_sums": (zd, f(4, 5)),
        "channel_sums64": (z, f(4, 3, 2, 2)), "to_host": (f(2, 3),), "to_device_of": (f(3), f(2)),
        "normalize_backward": (z, f(4, 3, 2, 2), f(3), (f(3), f(3)), 16),
        "latent_grad": (f(5, 6), f(5, 6), noise, "latent"), "clip_": (f(5, 6), 0.5),
        "softmax_xent": (logits, y), "head_flips": (logits, y, x_last, v, losses.xent(logits, y)[0]),  # l(eta)
        "rb_flip_weights": (x_last, f(3, 4), noise), "rb_mix": (w_rb, logits, g_flip), "rb_value": (loss0, w_rb, d),
        "rb_head_grads": (logits, g_flip, w_rb, x_last, weights), "multiply": (f(3, 4), f(3, 4)),
        "psa_rb_head": (logits, y, x_last, v) + losses.xent(logits, y) + (w_rb, weights),
        "scale_rows": (f(3, 2, 2), f(3)), "weighted_sum": (weights, loss0), "asarray": (f(2, 3), np.float32),
        "loss_scalar": (np.float32(1.25),),
    }


def _on_backend(backend, value, to_device):
    """Arrays of an argument on ``backend`` (uploaded where its arrays live on a device)."""
    if isinstance(value, np.ndarray) and backend.device_resident:
        return to_device(value)
    if isinstance(value, Patches):
        return Patches(_on_backend(backend, t, to_device) for t in value)
    if isinstance(value, tuple) and value and isinstance(value[0], np.ndarray):
        return tuple(_on_backend(backend, t, to_device) for t in value)
    return value


def _to_host(value):
    if isinstance(value, tuple):
        return tuple(_to_host(t) for t in value)
    return value.copy_to_host() if hasattr(value, "copy_to_host") else value


@pytest.mark.parametrize("name", [name for name in step_operations() if name != "conv_patches"] + ["psa_rb_head"])
def test_step_operations_agree(backend, name):
    """Every training-step operation of every backend equals the reference's NumPy expression (float32
    rounding; device backends on device arrays: the kernels of the device-resident step), and so does the composed
    operation psa_rb_head (the cpu backend's own form). Not conv_patches itself: the patch matrix has each backend's
    own layout (test_conv_patches_layouts checks it); the operations that take it are compared here."""
    args = _step_arguments()[name]
    to_device = None
    if backend.device_resident:
        from numba import cuda
        to_device = cuda.to_device
    ref_args = tuple(_resolve(get_backend("reference"), t.copy() if isinstance(t, np.ndarray) else t) for t in args)
    dev_args = tuple(_resolve(backend, _on_backend(backend, t, to_device)) for t in args)
    want = getattr(get_backend("reference"), name)(*ref_args)
    got = _to_host(getattr(backend, name)(*dev_args))
    if want is None:  # in place: compare the first argument
        want, got = ref_args[0], _to_host(dev_args[0])
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a, np.float64).reshape(np.shape(b)), b, rtol=1e-4, atol=2e-5,
                                   err_msg=name)


@pytest.mark.parametrize("name", ["reference", "cpu", "cuda"])
def test_rb_flip_weights_keep_relative_accuracy(name, request):
    """The Rao-Blackwell weights F(-x a) / N of confident units (|a| up to 15) are within a few float32 rounding units
    of the exact flip probability, relative (1 - F(x a) lost up to 2 % there), for every family."""
    from scipy import special

    backend = get_backend("reference") if name == "reference" else _backend(name, request)
    rng = np.random.default_rng(12)
    x = _pm1(rng, (8, 64))
    a = (x * rng.uniform(0, 15, size=x.shape)).astype(np.float32)  # x a > 0: a flip is unlikely
    exact = {"logistic": special.expit(-np.float64(x) * a), "normal": special.ndtr(-np.float64(x) * a)}
    args = (x, a)
    if backend.device_resident:
        from numba import cuda
        args = tuple(cuda.to_device(t) for t in args)
    for noise, want in exact.items():
        got = _to_host(backend.rb_flip_weights(*args, get_noise(noise))) * x.shape[1]
        keep = want > 1e-30  # float32's range
        # cuda, normal: 3e-5 (the CUDA simulator rounds erfc's argument -a / sqrt(2) to float32, NumPy's NEP 50, and
        # Phi's tail moves by |a| times that relative change: 15 x 15 x 6e-8)
        bound = 3e-5 if (name == "cuda" and noise == "normal") else 8 * 2.0**-24
        assert np.max(np.abs(got[keep] / want[keep] - 1)) < bound, noise


def test_channel_sums64_are_float64(backend):
    """channel_sums64 sums in float64 on every backend (the entries converted before the product), equal to
    the float64 NumPy sums within float64 rounding; the reference's are the expressions data-parallel batch
    norm always used (bit for bit); host arrays pass to_host / to_device_of unchanged."""
    rng = np.random.default_rng(4)
    t, u = (rng.normal(size=(5, 3, 4, 2)).astype(np.float32) + 1e4 for _ in range(2))  # float32 sums would lose digits
    want = (t.astype(np.float64).sum(axis=(0, 2, 3)), (t.astype(np.float64) * u).sum(axis=(0, 2, 3)))
    ref = get_backend("reference").channel_sums64(t, t)
    np.testing.assert_array_equal(ref[0], t.sum(axis=(0, 2, 3), dtype=np.float64))
    np.testing.assert_array_equal(ref[1], np.square(t, dtype=np.float64).sum(axis=(0, 2, 3)))
    args = (t, u)
    if backend.device_resident:
        from numba import cuda
        args = tuple(cuda.to_device(a) for a in args)
    got = tuple(backend.to_host(s) for s in backend.channel_sums64(*args))
    for a, b in zip(got, want):
        assert a.dtype == np.float64 and a.shape == (3,)
        np.testing.assert_allclose(a, b, rtol=1e-13)
    assert backend.to_host(t) is t and backend.to_device_of(t, u) is t


def test_device_backend_runs_host_step_operations_on_the_host(cuda_backend):
    """A host network on the cuda backend keeps its layers on the host: the step operations of host arrays
    return the host backend's results, bit for bit."""
    host = host_backend()
    for name, args in _step_arguments().items():
        if name == "clip_":
            continue
        want = getattr(host, name)(*(_resolve(host, t) for t in args))
        got = getattr(cuda_backend, name)(*(_resolve(cuda_backend, t) for t in args))
        for a, b in zip(*((got, want) if isinstance(want, tuple) else ((got,), (want,)))):
            assert isinstance(a, (np.ndarray, float, np.floating)), name
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_packed_products_agree(backend):
    rng = np.random.default_rng(4)
    ref = get_backend("reference")
    for k, m, n in ((70, 5, 7), (130, 3, 66)):
        a = bitpack.pack(_pm1(rng, (m, k)))
        b = PreparedWeights(bitpack.pack(_pm1(rng, (n, k))))
        np.testing.assert_array_equal(backend.xnor_matmul(a, b, k), ref.xnor_matmul(a, b, k))
        t = rng.integers(-k, k, size=n).astype(np.int64)
        flip = rng.random(n) < 0.4
        np.testing.assert_array_equal(backend.xnor_matmul_threshold(a, b, k, t, flip),
                                      ref.xnor_matmul_threshold(a, b, k, t, flip))


def test_binary_convolutions_agree(backend):
    rng = np.random.default_rng(5)
    ref = get_backend("reference")
    for c_in, stride, padding in ((3, (1, 1), (1, 1)), (70, (2, 1), (0, 1))):
        x = bitpack.pack(_pm1(rng, (2, 5, 4, c_in)))
        w = PreparedWeights(bitpack.pack(_pm1(rng, (4, 3, 2, c_in))))
        np.testing.assert_array_equal(backend.binary_conv2d(x, w, c_in, stride, padding),
                                      ref.binary_conv2d(x, w, c_in, stride, padding))
        t = rng.integers(-6, 6, size=4).astype(np.int64)
        flip = np.array([True, False, False, True])
        np.testing.assert_array_equal(backend.binary_conv2d_threshold(x, w, c_in, t, flip, stride, padding),
                                      ref.binary_conv2d_threshold(x, w, c_in, t, flip, stride, padding))


def test_packed_network_runs_on_every_backend(request):
    """PackedNetwork gives the same logits on every backend (the binary stages run there)."""
    import sbnnumba as sb
    from sbnnumba.packed import PackedNetwork
    rng = np.random.default_rng(6)
    net = sb.Network.dense([6, 70, 9], 3, rng=1, weight="hidden")
    x = rng.normal(size=(5, 6)).astype(np.float32)
    packed = PackedNetwork.from_network(net, calibration_x=x)
    want = packed.predict_logits(x)
    for name in backend_names():
        packed.backend = _backend(name, request)
        np.testing.assert_array_equal(packed.predict_logits(x), want, err_msg=name)


def test_registry_errors_and_a_new_backend():
    with pytest.raises(ValueError, match="backend: expected one of"):
        get_backend("tpu")
    with pytest.raises(TypeError, match="backend"):
        get_backend(1.5)

    class Incomplete(Backend):
        name = "incomplete"

    with pytest.raises(TypeError, match="does not implement"):
        register_backend(Incomplete)
    with pytest.raises(TypeError, match="subclass"):
        register_backend(object)

    from sbnnumba.backends.cpu import CpuBackend
    from sbnnumba.backends.registry import _CLASSES, _INSTANCES

    class Unusable(CpuBackend):
        name = "test-unusable"

        @classmethod
        def unavailable_reason(cls):
            return "no such device"

    register_backend(Unusable)
    try:
        assert "test-unusable" in backend_names()
        with pytest.raises(RuntimeError, match="backend 'test-unusable' is not usable: no such device"):
            get_backend("test-unusable")
    finally:
        _CLASSES.pop("test-unusable")
        _INSTANCES.pop("test-unusable", None)
    assert get_backend("cpu") is get_backend(get_backend("cpu"))


@pytest.mark.parametrize("geometry", [((3, 3), (1, 1), (0, 0)), ((3, 2), (2, 1), (1, 1)), ((1, 1), (1, 1), (0, 0)),
                                      ((2, 3), (1, 3), (2, 0))])
def test_conv_patches_layouts(backend, geometry):
    """The patch matrix of every backend holds ``x_pad[b, r, s o + off]`` at ((r, dy, dx), (b, oy, ox)):
    the host backends store it channel-major (C kh kw, B H_out W_out), bit for bit NumPy's copy of the
    strided windows; ``cuda`` the transpose (B H_out W_out, C kh kw)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 2, 7, 6)).astype(np.float32)
    win = conv_reference.windows(x, *geometry)  # (B, C, Ho, Wo, kh, kw)
    want = win.transpose(1, 4, 5, 0, 2, 3).reshape(-1, win.shape[0] * win.shape[2] * win.shape[3])
    ref = get_backend("reference").conv_patches(x, *geometry)
    np.testing.assert_array_equal(ref, want)
    if backend.device_resident:
        from numba import cuda
        got = backend.to_host(backend.conv_patches(cuda.to_device(x), *geometry))
        np.testing.assert_array_equal(got, want.T)
    else:
        got = backend.conv_patches(x, *geometry)
        assert got.flags.c_contiguous and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
