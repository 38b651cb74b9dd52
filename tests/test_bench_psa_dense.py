"""bench/psa_dense.py: the floor it prints under the dense flip target is the ratio kernel's own sum, and it runs the
connection count it is asked for."""
import numpy as np
import pytest
from script_loader import load_script

from sbnnumba.kernels import lanes


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/psa_dense.py", "psa_dense_bench")


def test_ratio_loop_floor_sums_the_ratio_terms_of_its_rows(bench):
    rng = np.random.default_rng(0)
    call, (c, h, k, out) = bench.ratio_loop_floor(rng, 2, 2 * 4 * 64 * 3, n_out=64)  # 3 passes per thread row
    out[...] = 0
    call()
    expected = 3 * (h[:, None, :].astype(np.float64) / (c[:, None, :] + k)).sum(axis=2)
    # float32 terms (reciprocal estimate and Newton step: a few units in the last place each) in 32 lanes
    scale = 3 * (np.abs(h)[:, None, :] / (c[:, None, :] + k)).sum(axis=2)
    np.testing.assert_array_less(np.abs(out - expected), 1e-5 * scale + 1e-30)


def test_ratio_loop_floor_runs_at_least_the_connections_asked_for(bench):
    rng = np.random.default_rng(1)
    runs = []  # connections of each call: repeats x k.size (threads x rows x n_out)
    original = bench._ratio_rows_l1
    bench._ratio_rows_l1 = lambda c, h, k, repeats, one, out: runs.append(repeats * k.size)
    try:
        call, _ = bench.ratio_loop_floor(rng, 2, 1000, n_out=lanes.LANES)
        call()
    finally:
        bench._ratio_rows_l1 = original
    assert runs[-1] >= 1000 > runs[-1] - 2 * 4 * lanes.LANES  # whole passes: less than one pass over


def test_ratio_loop_floor_refuses_rows_that_are_not_whole_lanes(bench):
    with pytest.raises(ValueError, match="n_out: expected a multiple of 32"):
        bench.ratio_loop_floor(np.random.default_rng(2), 1, 100, n_out=40)


def test_ratio_call_passes_time_every_pass_inside_the_call_and_restore_the_library(bench):
    from sbnnumba.kernels import cpu

    originals = {name: getattr(cpu, name) for name in bench.RATIO_PASSES}
    x_in, a, x_out, w, d_out = bench.layer_inputs(np.random.default_rng(2), 8, 40, 36)
    call = lambda: cpu.flip_propagate_dense(x_in, a, x_out, w, d_out, 0, form="ratio")  # noqa: E731
    passes = bench.ratio_call_passes(call, 1)  # one call: its medians are its own passes
    assert set(passes) == set(bench.RATIO_PASSES) | {"call"}
    assert all(passes[name] > 0 for name in bench.RATIO_PASSES)  # each pass ran inside the call
    assert sum(passes[name] for name in bench.RATIO_PASSES) <= passes["call"]
    assert {name: getattr(cpu, name) for name in bench.RATIO_PASSES} == originals
