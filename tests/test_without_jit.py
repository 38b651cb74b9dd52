"""The CPU flip kernels, whole PSA steps and the float32 unit entropy run as Python under ``NUMBA_DISABLE_JIT=1`` (the
intrinsics replaced by their twins: ``lanes.zeros``, ``ratio_pair.fma``, the transpose blocks, ``2^n``, the PCG64 step,
the float32 exponent and mantissa) and agree with the
compiled kernels: the conv ratio and bounded forms bit for bit (every operation written out, sums in a fixed
order), the rest within ``1e-5`` of each result's largest magnitude (compiled, the dense ratio form divides by a
reciprocal estimate and its Newton step, the bounded and probit forms may contract products into FMAs, the generic
form calls LLVM's ``exp`` / ``erfc``: a few float32 roundings per term). Every registered estimator runs there too."""
import numpy as np
import pytest
from kernel_checks import run_without_jit

# compute() returns {name: array}; run in this process (compiled) and in a child without the JIT
SCRIPT = '''
import numpy as np
import sbnnumba as sb
from sbnnumba import architectures
from sbnnumba.kernels import conv_cpu, conv_reference, cpu, scalar
from sbnnumba.noise import get_noise


def compute():
    rng = np.random.default_rng(0)

    def pm1(*shape):
        return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.float32)

    def states(noise, a):
        return noise.sample(a, rng.random(a.shape).astype(np.float32)), rng.standard_normal(a.shape).astype(np.float32)

    out = {}
    for name in ("logistic", "triangular", "normal", "uniform"):
        noise, code = get_noise(name), scalar.NOISE_CODES[name]
        x_in, w = pm1(5, 37), (0.3 * rng.standard_normal((35, 37))).astype(np.float32)
        a = (x_in @ w.T / 3 + rng.standard_normal(35)).astype(np.float32)
        x_out, d_out = states(noise, a)
        for form in ("auto", "generic"):
            out[f"dense flip {name} {form}"] = cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, code, form=form)
        x_in, w = pm1(3, 4, 7, 6), (0.3 * rng.standard_normal((5, 4, 3, 3))).astype(np.float32)
        a = (conv_reference.conv_forward(x_in, w, rng.standard_normal(5), (1, 1), (1, 1)) / 3).astype(np.float32)
        x_out, d_out = states(noise, a)
        for form in ("auto", "generic"):
            for layout in ("cells", "channels"):
                out[f"conv flip {name} {form} {layout}"] = conv_cpu.flip_propagate_conv(
                    x_in, a, x_out, w, d_out, (1, 1), (1, 1), code, form=form, layout=layout)
        units = np.concatenate([3 * rng.standard_normal(200), [0.0, 0.999, 1.5, 12.8, 90.0]]).astype(np.float32)
        out[f"entropy {name}"] = noise.entropy_bits(units)  # the float32 pass (log_f32's intrinsics)
    # a 1x1 kernel on a 1x1 map: the one-region kernel of conv_single_cell (odd C_out: its neutral channel)
    x_in, w = pm1(11, 9, 1, 1), (0.3 * rng.standard_normal((5, 9, 1, 1))).astype(np.float32)
    a = (conv_reference.conv_forward(x_in, w, rng.standard_normal(5), (1, 1), (0, 0)) / 3).astype(np.float32)
    x_out, d_out = states(get_noise("logistic"), a)
    out["conv flip logistic auto single-cell"] = conv_cpu.flip_propagate_conv(x_in, a, x_out, w, d_out, (1, 1),
                                                                             (0, 0), 0)
    net = sb.Network.dense([12, 40, 33, 3], n_classes=3, noise="logistic", rng=rng)
    x, y = rng.random((6, 12)).astype(np.float32), rng.integers(0, 3, 6)
    net.initialize_from_data(x)
    loss, grads = sb.estimate("psa", net, x, y, rng=np.random.default_rng(1))
    out.update({f"dense psa {k}": v for k, v in grads.items()}, **{"dense psa loss": np.asarray(loss)})
    net = architectures.conv((1, 28, 28), 3, channels=[4, 4, 4, 6, 6, 6, 6, 6], rng=rng)
    x, y = rng.random((2, 1, 28, 28)).astype(np.float32), rng.integers(0, 3, 2)
    net.initialize_from_data(x)
    loss, grads = sb.estimate("psa", net, x, y, rng=np.random.default_rng(2))
    out.update({f"conv psa {k}": v for k, v in grads.items()}, **{"conv psa loss": np.asarray(loss)})
    return out
'''


@pytest.fixture(scope="module")
def compiled_and_python(tmp_path_factory):
    path = tmp_path_factory.mktemp("nojit") / "python.npz"
    run_without_jit(SCRIPT + "\nimport sys\nnp.savez(sys.argv[1], **compute())\nprint('ok')\n", path, timeout=300)
    namespace = {}
    exec(SCRIPT, namespace)
    with np.load(path) as python:
        return namespace["compute"](), {k: python[k] for k in python.files}


def _exact(name):
    # the conv ratio (logistic) and bounded (uniform, triangular) forms, whose every operation is written out
    return name.startswith("conv flip") and name.split()[2] in ("logistic", "uniform", "triangular") \
        and name.split()[3] == "auto"


def test_every_flip_form_and_psa_step_runs_without_jit(compiled_and_python):
    compiled, python = compiled_and_python
    assert sorted(compiled) == sorted(python)
    # 4 noises x (2 dense + 4 conv flips + the unit entropy), the single-cell conv flip; weight and bias of the dense
    # net's 3 stages and head, of the conv net's 8 stages and head, and each loss
    assert len(compiled) == 4 * (2 + 4 + 1) + 1 + (2 * 4 + 1) + (2 * 9 + 1)
    exact = [k for k in compiled if _exact(k)]
    assert len(exact) == 7
    for name, want in compiled.items():
        got = python[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.all(np.isfinite(got)), name
        if name in exact:
            assert got.tobytes() == want.tobytes(), name
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.max(np.abs(want)), err_msg=name)


def test_every_estimator_runs_without_jit():
    """Every registered estimator gives finite gradients under NUMBA_DISABLE_JIT=1, with the keys and shapes of the
    network's parameters (exact enumeration on the dense network only: the conv one has too many units)."""
    child = '''
import numpy as np
import sbnnumba as sb
from sbnnumba import architectures

rng = np.random.default_rng(0)
dense = sb.Network.dense([6, 5, 5, 3], n_classes=3, noise="logistic", rng=rng)
conv = architectures.conv((1, 28, 28), 3, channels=[2, 2, 2, 3, 3, 3, 3, 3], rng=rng)
data = {"dense": (dense, rng.random((4, 6)).astype(np.float32), rng.integers(0, 3, 4)),
        "conv": (conv, rng.random((2, 1, 28, 28)).astype(np.float32), rng.integers(0, 3, 2))}
runs = 0
for method in sb.known_methods():
    for name, (net, x, y) in data.items():
        if method == "exact" and name == "conv":
            continue
        loss, grads = sb.estimate(method, net, x, y, rng=np.random.default_rng(1))
        assert np.isfinite(loss), (method, name)
        assert sorted(grads) == sorted(net.params), (method, name)
        for key, g in grads.items():
            assert g.shape == net.params[key].shape and np.all(np.isfinite(g)), (method, name, key)
        runs += 1
assert runs == 2 * len(sb.known_methods()) - 1 and len(sb.known_methods()) >= 15
print("ok")
'''
    run_without_jit(child, timeout=300)
