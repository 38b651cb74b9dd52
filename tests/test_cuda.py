"""The ``cuda`` backend outside the simulator: the error where CUDA is unusable, and PTX compilation.

The kernels and the device-resident step are tested in-process by tests/test_cuda_kernels.py and
tests/test_cuda_training.py (in numba's simulator without a GPU). Two things need a process without
the simulator, started here with ``NUMBA_ENABLE_CUDASIM`` removed from its environment:

* without a usable GPU, ``get_backend("cuda")`` (and a network or the environment variable asking
  for it) raises a ``RuntimeError`` that names the reason and the fixes;
* every kernel compiles to PTX for a real GPU (``python -m sbnnumba.backends.cuda.ptx``, needs
  libNVVM only), which checks the typing and code generation that the simulator does not.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sbnnumba.backends.cuda.ptx import SKIPPED

ROOT = Path(__file__).resolve().parent.parent


def _run(args, timeout, **env):
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH")
                                                           else []))
    return subprocess.run([sys.executable] + args, env=environ, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _cuda_usable_without_simulator():
    proc = _run(["-c", "from sbnnumba.backends.cuda import CudaBackend; "
                       "import sys; sys.exit(CudaBackend.unavailable_reason() is not None)"], timeout=120)
    return proc.returncode == 0


@pytest.mark.parametrize("code", [
    "import sbnnumba.backends as b; b.get_backend('cuda')",
    "import sbnnumba as sb; sb.Network.dense([3, 2], 2, backend='cuda')",
    "import os; os.environ['SBNNUMBA_BACKEND'] = 'cuda'; import sbnnumba as sb; sb.Network.dense([3, 2], 2)",
    "import numpy as np, sbnnumba as sb; sb.bitpack.matmul(np.zeros((1, 1), np.uint64), "
    "np.zeros((1, 1), np.uint64), 3, backend='cuda')",
])
def test_cuda_unusable_names_the_reason(code):
    if _cuda_usable_without_simulator():
        pytest.skip("a CUDA device is usable here: nothing raises")
    proc = _run(["-c", code], timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: backend 'cuda' is not usable: ")
    assert any(reason in last for reason in ("driver", "device", "numba.cuda", "libNVVM", "disabled"))
    assert "NUMBA_ENABLE_CUDASIM=1" in last and "numba-cuda" in last


def test_importing_sbnnumba_does_not_import_numba_cuda():
    proc = _run(["-c", "import sys, sbnnumba, sbnnumba.backends; assert 'numba.cuda' not in sys.modules"],
                timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_unknown_backend_lists_the_known_ones():
    from sbnnumba.backends import backend_names, get_backend
    with pytest.raises(ValueError, match=r"backend: expected one of \('reference', 'cpu', 'cuda'\), got 'tpu'"):
        get_backend("tpu")
    with pytest.raises(TypeError, match="backend"):
        get_backend(3)
    assert backend_names()[:3] == ("reference", "cpu", "cuda")


def test_kernels_compile_for_a_real_gpu():
    """Every kernel compiles to PTX (sm_80) with the argument types the wrappers pass; needs libNVVM only.
    Where the CUDA toolkit's ptxas is installed, the GEMM and the PSA flip kernels assemble for sm_90
    without register spills."""
    proc = _run(["-m", "sbnnumba.backends.cuda.ptx", "--resources"], timeout=600)
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ok ") >= 10
    if "SKIP resources" not in proc.stdout:
        lines = [line for line in proc.stdout.splitlines() if line.startswith("res ")]
        assert len(lines) >= 10, proc.stdout[-3000:]
        spilling = [line for line in lines if "spill stores 0 loads 0 bytes" not in line]
        assert not spilling, "\n".join(spilling)
