"""bench/fashion_mnist.py --sharpen: the continuation starts from the finished run with its
pre-activations scaled, is reported and tested, resumes, and refuses changed settings."""
import json

import numpy as np
import pytest
from script_loader import load_script

from sbnnumba import training


def _bench():
    return load_script("bench/fashion_mnist.py", "fashion_mnist_bench")


def test_bench_sharpen_continuation(tmp_path, capsys):
    bench = _bench()
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    argv = ["--archs", "mlp", "--methods", "st", "--data", "embedded", "--hidden", "12,10", "--epochs", "1",
            "--train-subset", "400", "--test-subset", "100", "--test-samples", "2", "--eval-samples", "1",
            "--train-eval-size", "50", "--lr", "0.01", "--runs-dir", str(runs), "--docs", str(docs), "--no-progress",
            "--sharpen", "2", "--sharpen-epochs", "1", "--sharpen-lr", "1e-12"]
    assert bench.main(argv) == 0
    row = json.loads((runs / "results.json").read_text())["results"]["mlp-st"]
    sharp = row["sharpened"]
    assert sharp["status"] == "completed" and sharp["epochs"] == 1
    assert sharp["settings"] == {"factor": 2.0, "epochs": 1, "lr": 1e-12}
    assert set(sharp["test"]) >= {"acc1", "eacc", "det_acc", "loss"}
    # lr 1e-12: the continuation ends where it started, at the finished run with every stage's W, b doubled
    before = training.load_network(str(runs / "mlp-st" / training.CHECKPOINT_NAME)).params
    after = training.load_network(str(runs / "mlp-st-sharpen2" / training.CHECKPOINT_NAME)).params
    for k, v in before.items():
        np.testing.assert_allclose(after[k], 2 * v if k.startswith("stages.") else v, rtol=1e-5, atol=1e-8,
                                   err_msg=k)
    assert "then pre-activations x2 + 1 epochs" in next((docs / "experiments").glob("*-results.md")).read_text()
    capsys.readouterr()
    assert bench.main(argv + ["--resume"]) == 0  # reused, not retrained
    assert "reusing the sharpened continuation" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings"):
        bench.main([a if a != "1e-12" else "1e-3" for a in argv] + ["--resume"])
    with pytest.raises(SystemExit):
        bench.parse_args(argv[:-6] + ["--sharpen", "0"])
