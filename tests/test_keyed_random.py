"""Counter-based keyed uniforms on the device (sbnnumba.backends.cuda.keyed_random, #37): the host NumPy
function equals NumPy's Philox streams that KeyedNoise draws from, the device kernel equals the host
function bit for bit (numba's CUDA simulator without a GPU, tests/conftest.py), the kernel compiles to PTX,
and the device data-parallel step draws exactly the keyed noise of a one-process run.
"""
import numpy as np
import pytest
from test_cuda import _run

import sbnnumba as sb
from sbnnumba import distributed as dist
from sbnnumba.distributed.streams import ACTIVATION_SALT, EVALUATION_SALT, WEIGHT_SALT, KeyedNoise

pytestmark = pytest.mark.usefixtures("cuda_backend")

DTYPES = (np.float32, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_function_is_numpys_philox_stream(dtype):
    """keyed_uniforms_host(key, lo, offset, ...) = the rows of KeyedNoise's per-example Philox streams, with
    stages of odd sizes (float32 reads 32-bit halves across stage boundaries), the weight stream and the
    evaluation counter word."""
    from sbnnumba.backends.cuda.keyed_random import keyed_uniforms_host
    noise, shapes = KeyedNoise(5), [(3, 5), (7,), (2, 1, 3)]
    ref = noise.activation_uniforms(shapes, 4, 2, 6, dtype)
    offset = 0
    for shape, r in zip(shapes, ref):
        got = keyed_uniforms_host(noise.stream_key(ACTIVATION_SALT, 4), 2, offset, (4,) + shape, dtype)
        assert got.dtype == dtype and np.array_equal(got, r)
        offset += int(np.prod(shape))
    net = sb.Network.dense([4, 3, 5], 2, rng=0, weight="hidden", dtype=dtype)
    w = noise.weight_uniforms(net, 9)
    offset = 0
    for prefix, layer in net.latent_layers():
        shape = layer.latent.eta.shape
        expected = keyed_uniforms_host(noise.stream_key(WEIGHT_SALT, 9), 0, offset, (1,) + shape, dtype)[0]
        assert np.array_equal(expected, w[prefix])
        offset += layer.latent.eta.size
    evaluation, _ = noise.evaluation_uniforms(net, (4,), 3, 1, 3)
    got = keyed_uniforms_host(noise.stream_key(EVALUATION_SALT, 0), 1, 0, (2, 3), dtype, word2=3)
    assert np.array_equal(got, evaluation[0].astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_equals_host_bit_for_bit(dtype):
    """The device kernel (one thread per uniform, stateless) = the host function, at a large example index
    and key (every counter and key word used) and an odd unit offset; values in [0, 1)."""
    from sbnnumba.backends.cuda.keyed_random import keyed_uniforms, keyed_uniforms_host
    key, lo = (0xFEDCBA9876543210 << 64) | 0x0123456789ABCDEF, 2 ** 40 + 3
    for offset, word2, shape in ((0, 0, (2, 9)), (13, 7, (3, 2, 3))):
        dev = keyed_uniforms(key, lo, offset, shape, dtype, word2=word2)
        host = keyed_uniforms_host(key, lo, offset, shape, dtype, word2=word2)
        got = dev.copy_to_host()
        assert got.shape == shape and got.dtype == dtype
        assert np.array_equal(got, host)
        assert 0 <= got.min() and got.max() < 1 and len(np.unique(got)) == got.size


def test_bad_arguments_name_the_argument():
    from sbnnumba.backends.cuda.keyed_random import keyed_uniforms_host
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int32"):
        keyed_uniforms_host(1, 0, 0, (1, 2), np.int32)
    with pytest.raises(ValueError, match="lo: expected a non-negative integer, got -1"):
        keyed_uniforms_host(1, -1, 0, (1, 2), np.float32)
    with pytest.raises(ValueError, match=r"key: expected an integer in \[0, 2\^128\)"):
        keyed_uniforms_host(2 ** 128, 0, 0, (1, 2), np.float32)


def test_kernel_compiles_for_a_real_gpu():
    """The kernel and its device functions compile to PTX (sm_80) for both dtypes: the uint64 arithmetic
    types as on the simulator (needs libNVVM only; the process runs without the simulator)."""
    code = """
import sys, numpy as np, numba
from numba import cuda
from sbnnumba.backends.cuda.ptx import SKIPPED, ptx_toolchain_missing
reason = ptx_toolchain_missing()
if reason:
    print(reason); sys.exit(SKIPPED)
from sbnnumba.backends.cuda import keyed_random as kr
for dt in (np.float32, np.float64):
    sig = (numba.uint64,) * 5 + (numba.boolean, numba.typeof(np.empty((1, 1), dt)))
    ptx, _ = cuda.compile_ptx(kr.keyed_uniforms_kernel.py_func, sig, cc=(8, 0))
    assert ".entry" in ptx, ptx[:2000]
    print("ok", np.dtype(dt).name)
"""
    from sbnnumba.backends.cuda.ptx import SKIPPED
    proc = _run(["-c", code], timeout=300)
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok ") == 2


def test_device_step_draws_the_keyed_noise_of_one_process():
    """DeviceKeyedNoise's drawers give KeyedNoise's host uniforms for a shard of a conv net with Bernoulli
    weights; a one-rank DeviceDataParallelStep (uniforms drawn on the device) computes exactly what
    CudaTrainer.gradients computes from the host's keyed uniforms."""
    from sbnnumba.training.resident import CudaTrainer
    rng = np.random.default_rng(1)
    net = sb.Network([sb.Conv2d(1, 2, 3, rng=rng, in_shape=(1, 5, 5), weight="bernoulli")],
                     sb.Linear(2 * 3 * 3, 3, rng=rng), backend="cuda")
    shape, noise = (1, 5, 5), KeyedNoise(11)
    drawn = dist.DeviceKeyedNoise(noise, net, shape)
    host = noise.activation_uniforms(net.stage_shapes(shape), 2, 1, 3, np.float32)
    states = drawn.states(2, 1)
    for k, h in enumerate(host):
        assert np.array_equal(states(k, h.shape).copy_to_host(), h)
    weights, host_w = drawn.weights(2), noise.weight_uniforms(net, 2)
    assert host_w and all(np.array_equal(weights(p, u.shape).copy_to_host(), u) for p, u in host_w.items())

    x, y = rng.random((3,) + shape).astype(np.float32), np.array([0, 2, 1])
    trainer = CudaTrainer(net, "psa", sb.optim.SGD(lr=0.1), max_batch=3, input_shape=shape)
    ref_loss, ref = trainer.gradients(x, y, uniforms=noise.activation_uniforms(net.stage_shapes(shape), 0, 0, 3,
                                                                                np.float32),
                                      weight_uniforms=noise.weight_uniforms(net, 0))
    step = dist.DeviceDataParallelStep(trainer, dist.LocalCommunicator(), seed=11)
    loss, got = trainer.gradients_drawn(x, y, step.noise.states(0, 0), step.noise.weights(0))
    assert loss == ref_loss and all(np.array_equal(got[k], ref[k]) for k in ref)
