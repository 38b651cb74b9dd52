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


def _pair_terms(g0, e0, k0, g1, e1, k1):
    """``g0 / (1 + e0 k0) + g1 / (1 + e1 k1)`` in float64 (the ratio form's pair of terms, unclamped)."""
    return g0 / (1 + e0 * k0.astype(np.float64)) + g1 / (1 + e1 * k1.astype(np.float64))


def test_loop_floors_sum_the_ratio_terms_of_their_rows(bench):
    floors = bench.loop_floors(2, connections=1, c_in=64, tile=32)  # one pass per thread row
    assert {name: n for name, (_, n) in floors.items()} == {"channel-innermost": 2 * 2 * 64, "cell-major": 2 * 4 * 32}
    rng = np.random.default_rng(3)
    sel = np.where(rng.random((2, 64)) < 0.5, 1, -1).astype(np.int8)
    k_pos, k_neg = (1 + rng.random((2, 2, 64))).astype(np.float32), (1 + rng.random((2, 2, 64))).astype(np.float32)
    g, e = (1e-3 * rng.random((2, 4))).astype(np.float32), (1 + rng.random((2, 4))).astype(np.float32)
    acc = np.zeros((2, 64), np.float32)
    big = np.float32(2.0 ** 40)
    bench._channel_loop_l1(sel, acc, k_pos, k_neg, g, e, 2, big)
    expected = np.zeros((2, 64))
    for i in range(2):
        k0 = np.where(sel < 0, k_neg[:, 0], k_pos[:, 0])
        k1 = np.where(sel < 0, k_neg[:, 1], k_pos[:, 1])
        j = (i + 1) % 4
        expected += _pair_terms(g[:, i, None], e[:, i, None], k0, g[:, j, None], e[:, j, None], k1)
    np.testing.assert_allclose(acc, expected, rtol=1e-6)

    sel = np.where(rng.random((2, 2, 32)) < 0.5, 1, -1).astype(np.int8)
    g, e = (1e-3 * rng.random((2, 2, 32))).astype(np.float32), (1 + rng.random((2, 2, 32))).astype(np.float32)
    w = (1 + rng.random((2, 11))).astype(np.float32)
    acc = np.zeros((2, 2, 32), np.float32)
    bench._cell_loop_l1(sel, acc, g, e, w, 1, big)  # repeat 0: pos00 = w[0]
    factors = [(w[:, 0], w[:, 4], w[:, 5], w[:, 6]), (w[:, 7], w[:, 8], w[:, 9], w[:, 10])]  # (pos0, neg0, pos1, neg1)
    for r, (pos0, neg0, pos1, neg1) in enumerate(factors):
        k0 = np.where(sel[:, r] < 0, neg0[:, None], pos0[:, None])
        k1 = np.where(sel[:, r] < 0, neg1[:, None], pos1[:, None])
        np.testing.assert_allclose(acc[:, r], _pair_terms(g[:, 0], e[:, 0], k0, g[:, 1], e[:, 1], k1), rtol=1e-6)
