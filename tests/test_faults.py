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
