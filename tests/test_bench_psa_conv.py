"""bench/psa_conv.py: parts 3 and 5 print every stage of the paper's network with the figures the run log quotes, and
the timer that part 5 puts around the conv flip propagation counts every call and is removed afterwards, also when a
step raises."""
import re

import numpy as np
import pytest
from script_loader import load_script

from sbnnumba.kernels import conv_cpu


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/psa_conv.py", "psa_conv_bench")


def test_stage_and_in_step_parts_print_every_stage(bench, capsys):
    rng = np.random.default_rng(0)
    bench.stage_section(rng, 1, 1, 0.25)
    bench.in_step_section(rng, 1, 1, 0.25)
    out = capsys.readouterr().out
    part3, part5 = out.split("\n5) ")
    for part in (part3, part5):
        assert [int(s) for s in re.findall(r"stage (\d):", part)] == [2, 3, 4, 5, 6, 7, 8]
        assert len(re.findall(r"\d+\.\d\d per core \(wall\)", part)) == 7
    assert len(re.findall(r"kernel alone +\d+\.\d\d ms", part3)) == 7
    assert len(re.findall(r"call again at once +\d+\.\d\d ms", part3)) == 7
    assert re.search(r"the flip propagations \d+ ms of a \d+ ms step", part5)


def test_flip_timer_counts_each_call_and_is_removed_after_an_error(bench):
    original = conv_cpu.flip_propagate_conv
    rng = np.random.default_rng(1)
    x_in = np.where(rng.random((2, 3, 5, 5)) < 0.5, 1, -1).astype(np.float32)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    a = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    x_out = np.where(a > 0, 1, -1).astype(np.float32)
    d_out = rng.normal(size=a.shape).astype(np.float32)
    calls = []

    def step():
        d_in = conv_cpu.flip_propagate_conv(x_in, a, x_out, weight, d_out, (1, 1), (0, 0), 0)
        calls.append(d_in)
        if len(calls) == 3:
            raise RuntimeError("a step that fails")

    times = bench.flip_calls_in_steps(step, 2)
    assert list(times) == [((2, 3, 5, 5), (2, 4, 3, 3))] and len(times[((2, 3, 5, 5), (2, 4, 3, 3))]) == 2
    assert all(wall > 0 and cpu >= 0 for wall, cpu in times[((2, 3, 5, 5), (2, 4, 3, 3))])
    assert conv_cpu.flip_propagate_conv is original
    np.testing.assert_array_equal(calls[0], original(x_in, a, x_out, weight, d_out, (1, 1), (0, 0), 0))
    with pytest.raises(RuntimeError, match="a step that fails"):
        bench.flip_calls_in_steps(step, 2)
    assert conv_cpu.flip_propagate_conv is original
