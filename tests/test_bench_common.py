"""bench/common.py: the interleaved timers call their contenders round-robin in a rotated order and leave each
contender's ``prepare`` call out of its time."""
import time

import pytest
from script_loader import load_script


@pytest.mark.parametrize("timer", ["interleaved_medians", "interleaved_wall_cpu_medians"])
def test_prepare_runs_right_before_its_contender_and_is_not_timed(timer):
    log = []
    contenders = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}

    def slow_prepare():
        log.append("prep")
        time.sleep(0.05)  # 50 ms untimed: a contender that only appends takes microseconds

    med = getattr(load_script("bench/common.py", "bench_common"), timer)(contenders, 3, prepare={"b": slow_prepare})
    # rounds rotated by one: a b c, b c a, c a b; "prep" right before every "b"
    assert log == ["a", "prep", "b", "c", "prep", "b", "c", "a", "c", "a", "prep", "b"]
    wall = {name: value[0] if isinstance(value, tuple) else value for name, value in med.items()}
    assert list(wall) == ["a", "b", "c"]
    assert wall["b"] < 0.01
