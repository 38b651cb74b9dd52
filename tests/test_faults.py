"""Fault test (#41): training killed with SIGKILL at random moments resumes bit-identically and loses nothing
written before the kill (tests/fault_worker.py does the killing; it reports its figures as JSON)."""
import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "fault_worker.py")


def _campaigns(kills, seed, tmp_path):
    result = subprocess.run([sys.executable, WORKER, str(kills), str(seed), str(tmp_path)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(figures)  # kills, campaigns, resumes, where the kills landed: docs/robustness.md quotes a run
    return figures


def test_twenty_random_kills_each_resume_bit_identical(tmp_path):
    figures = _campaigns(20, 1, tmp_path)
    assert figures["kills"] >= 20 and figures["campaigns"] >= 1
    assert len(set(figures["kill_epochs"])) >= 3  # the kills landed at different stages of the run


@pytest.mark.slow
def test_two_hundred_random_kills(tmp_path):
    figures = _campaigns(200, 2, tmp_path)
    assert figures["kills"] >= 200


def test_hidden_progress_takes_no_cross_process_lock():
    """A run without progress bars must not take tqdm's multiprocessing lock: a run killed while holding it
    leaves it held, and every process forked after it from the same parent hangs at its next bar (seen:
    forked fault-test runs blocked in ``tqdm.__new__``). Checked in a fresh interpreter."""
    code = ("import numpy as np, tqdm.std as t; from sbnnumba import architectures, training; "
            "net = architectures.build('mlp', (4,), 2, rng=0, hidden=[3]); "
            "x = np.random.default_rng(0).uniform(size=(32, 4)).astype(np.float32); "
            "y = np.arange(32) % 2; "
            "training.fit(net, (x, y, x[:8], y[:8]), epochs=1, batch_size=8, progress=False, verbose=False, "
            "plots=False, eval_samples=1, train_eval_size=0); "
            "assert getattr(t.TqdmDefaultWriteLock, 'mp_lock', None) is None, 'tqdm multiprocessing lock created'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
