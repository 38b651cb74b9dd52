"""``bench/gpu.py --smoke`` runs every section of the GPU benchmark (issue #40) on tiny shapes without crashing:
in numba's CUDA simulator without a GPU (tests/conftest.py sets ``NUMBA_ENABLE_CUDASIM`` before this
process starts the subprocess), on the device where one is present. Its figures are not checked (they
mean nothing on tiny shapes); that every section printed its lines, with finite numbers, is.
"""
import os
import re
import subprocess
import sys

from doc_snippets import ROOT

EXPECTED = (
    "GEMM c = op(a) op(b), float32",
    "smoke (5, 7, 9, ta=1, tb=0):",
    "XNOR-popcount GEMM (5, 7, 70):",
    "dense (B, N_in, N_out) = (3, 5, 7): ratio kernel",
    "conv (B, C_in, H, W, C_out, k) = (2, 3, 5, 4, 4, 3): ratio kernel",
    "dense batch 2: PSA",
    "conv batch 2: PSA",
    "Epoch of the smoke conv network with PSA, batch 2",
    "smoke: done",
)


def test_bench_gpu_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    missing = [line for line in EXPECTED if line not in proc.stdout]
    assert not missing, f"missing {missing} in:\n{proc.stdout}"
    assert not re.search(r"\bnan\b|\binf\b", proc.stdout, re.IGNORECASE), proc.stdout
