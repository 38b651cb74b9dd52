"""bench/scaling.py: the smoke run prints every figure the issue asks for (1 rank, 2 ranks, 1 process with
2 threads, the communication share, the 2-rank vs 2-thread ratio, the Allreduce sizes, the N-node model)
and labels the machine IDLE or LOADED; the model's crossover and the load verdict are checked directly."""
import subprocess
import sys

import pytest
from script_loader import ROOT, load_script
from test_distributed import mpi_env, mpiexec

BENCH = ROOT / "bench" / "scaling.py"


def _bench():
    return load_script("bench/scaling.py", "scaling_bench")


def test_smoke_run_prints_every_figure():
    mpiexec()  # fails clearly where the test extra's MPI is missing
    env = {k: v for k, v in mpi_env().items() if not k.endswith("_NUM_THREADS")}  # the bench sets threads itself
    r = subprocess.run([sys.executable, str(BENCH), "--smoke"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for name in ("1 rank x 1 thread", "2 ranks x 1 thread", "1 process x 2 threads"):
        assert f"  {name}" in out
    assert "communication" in out and "% of the step (gradient Allreduce" in out
    assert "2 ranks vs 1 process with 2 threads:" in out
    assert "4000000 floats" in out and "3. Model:" in out and "-> weak scaling at 100 Gb/s" in out
    assert "Machine during the step measurements: IDLE" in out or \
        "Machine during the step measurements: LOADED: the figures are upper bounds" in out


def test_model_crossover_and_load_verdict():
    bench = _bench()
    # 1 M parameters, 10 ms per example: communication dominates only at very large N at 100 Gb/s
    found = bench.model(10 ** 6, 0.64, 64, 32, 0, loaded=False)
    assert found.get(("strong", 10)) is not None and found.get(("strong", 100), 10 ** 9) >= found[("strong", 10)]
    assert bench.ring_allreduce_seconds(1e9, 2, 1.0, 0.0) == pytest.approx(8.0)  # 2 (N-1)/N x 1 GB at 1 Gb/s: 8 s
    log = bench.LoadLog()
    log.means, log.maxima = [0.0, 0.1], [1, 1]
    assert not log.loaded and log.verdict().startswith("IDLE")
    log.means.append(3.0)
    assert log.loaded and "NOT a measurement" in log.verdict()
