"""Tests of the numba.cuda backend (sbnnumba.kernels.cuda, sbnnumba.kernels.cuda_backend).

numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is imported, so the CUDA simulator cannot be
switched on inside this test process without changing every other test. The checks therefore live
in ``tests/cuda_sim_checks.py`` and run in subprocesses:

* ``sim`` (default suite, no GPU needed): every kernel against its NumPy reference, the weight
  cache, and full PSA / ST steps on ``backend="cuda"`` against ``backend="cpu"``, in numba's CUDA
  simulator (one subprocess for the whole module, about 2 minutes on 2 cores);
* ``ptx`` (default suite, skipped without libNVVM): every kernel compiled for a real GPU, which
  checks the typing and code generation the simulator does not;
* ``device`` (``@pytest.mark.gpu``, excluded by default, skipped without a GPU): the same checks on
  a real device.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "cuda_sim_checks.py"
SKIPPED = 3

SIM_CHECKS = [
    "dense_flip", "dense_flip_default_tiles", "dense_flip_saturated", "dense_flip_device_arrays", "conv_flip",
    "conv_flip_extra", "xnor_gemm", "xnor_gemm_threshold", "binary_conv", "elementwise", "weight_cache",
    "training_step_dense", "training_step_conv", "device_step_gradients", "device_step_updates",
    "device_step_resident", "device_step_scope", "device_fit", "device_step_conv", "device_step_binary",
]


def _env(simulator):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _run(args, simulator, timeout):
    return subprocess.run([sys.executable] + args, env=_env(simulator), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _run_checks(mode, timeout=600):
    proc = _run([str(SCRIPT), "--mode", mode], simulator=(mode == "sim"), timeout=timeout)
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stdout.strip() or "checks skipped")
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("CHECK "):
            entry = json.loads(line[len("CHECK "):])
            results[entry["name"]] = entry
    return proc, results


def _assert_all_ok(proc, results):
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failed, "\n\n".join(f"{name}: {err}" for name, err in failed.items())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def sim_run():
    return _run_checks("sim")


@pytest.mark.parametrize("name", SIM_CHECKS)
def test_simulator_check(sim_run, name):
    proc, results = sim_run
    assert name in results, f"check {name!r} did not report; stderr:\n{proc.stderr[-3000:]}"
    assert results[name]["ok"], results[name]["error"]


def test_simulator_run_complete(sim_run):
    proc, results = sim_run
    assert sorted(results) == sorted(SIM_CHECKS)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_kernels_compile_for_a_real_gpu():
    """Every kernel compiles to PTX (sm_80) with the argument types the wrappers pass; needs libNVVM only."""
    proc, results = _run_checks("ptx", timeout=300)
    assert results, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_all_ok(proc, results)


_PROBE = """
import sys
import sbnnumba as sb
from sbnnumba.kernels import cuda_backend as cb
assert "numba.cuda" not in sys.modules, "importing sbnnumba must not import numba.cuda"
if cb.is_available():
    print("AVAILABLE")
    sys.exit(0)
try:
    cb.require_cuda()
except RuntimeError as exc:
    print("REQUIRE", exc)
try:
    sb.Network.dense([3, 2], 2, backend="cuda")
except RuntimeError as exc:
    print("NETWORK", exc)
import os
os.environ["SBNNUMBA_BACKEND"] = "cuda"
try:
    sb.Network.dense([3, 2], 2)
except RuntimeError as exc:
    print("ENV", exc)
"""


def test_require_cuda_names_the_reason_without_simulator():
    proc = _run(["-c", _PROBE], simulator=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "AVAILABLE" in proc.stdout:
        pytest.skip("a CUDA device is usable here: require_cuda() does not raise")
    lines = {line.split(" ", 1)[0]: line for line in proc.stdout.splitlines()}
    for key in ("REQUIRE", "NETWORK", "ENV"):
        assert key in lines, f"{key}: expected a RuntimeError; output:\n{proc.stdout}"
        message = lines[key]
        assert "backend 'cuda' is not usable" in message
        assert any(reason in message for reason in ("driver", "device", "numba.cuda", "libNVVM", "disabled"))
        assert "NUMBA_ENABLE_CUDASIM=1" in message and "numba-cuda" in message


def test_simulator_makes_cuda_usable():
    proc = _run(["-c", "from sbnnumba.kernels import cuda_backend as cb; cb.require_cuda(); "
                       "print(cb.is_available(), cb.in_simulator())"], simulator=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True"]


@pytest.mark.gpu
def test_device_checks():
    """The simulator checks on a real GPU (run with ``pytest -m gpu``)."""
    probe = _run(["-c", "from sbnnumba.kernels import cuda_backend as cb; print(cb.unavailable_reason())"],
                 simulator=False, timeout=120)
    if probe.returncode != 0 or probe.stdout.strip() != "None":
        pytest.skip(f"no usable CUDA device: {probe.stdout.strip() or probe.stderr.strip()[-300:]}")
    proc, results = _run_checks("device")
    assert sorted(results) == sorted(SIM_CHECKS)
    _assert_all_ok(proc, results)
