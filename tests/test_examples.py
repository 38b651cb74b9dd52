"""Every script in examples/ runs on tiny settings (``--tiny``) as a user would run it: a subprocess in a
fresh working directory. The GPU example runs where conftest decided (numba's CUDA simulator without a GPU).
"""
import os
import subprocess
import sys

import pytest
from doc_snippets import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
EXPECTED = {  # a line each script must print: proof that it reached its end
    "train_mlp.py": "test accuracy: 1 sample",
    "conv_batchnorm.py": "test accuracy of the ensemble by number of samples",
    "binary_deploy.py": "agreement with the float sign network 1.0000",
    "gradient_accuracy.py": "psa: single-sample relative RMSE",
    "gpu.py": "trained 1 epoch(s) on cuda",
    "toy2d.py": "decision boundary saved to",
}


def test_every_example_is_checked():
    assert sorted(p.name for p in EXAMPLES) == sorted(EXPECTED)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script), "--tiny"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert EXPECTED[script.name] in proc.stdout, proc.stdout
