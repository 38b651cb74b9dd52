"""The logistic element-wise passes on fixed blocks (#39): sampling (sbnnumba.kernels.sampling), the density and
deep ST's fused gradient (kernels.density) and PSA's gradient (kernels.psa_factors) run as ``nogil`` kernels over
the blocks of runtime.run_range_blocks that the threads take as they come free. Their bytes must be NumPy's
formula's at one and two threads, whatever the blocks: many blocks that do not divide the length, one block, and
the one-call ``alone`` form."""
import numpy as np
import pytest
from scipy import special

from sbnnumba import blockpool, runtime
from sbnnumba.kernels.density import logistic_density
from sbnnumba.kernels.psa_factors import logistic_psa_grad
from sbnnumba.kernels.sampling import logistic_sample

N = (1 << 19) + 12_345  # 2 blocks by the rule at two threads, neither a multiple of the other's length


def _inputs(dtype, n=N):
    rng = np.random.default_rng(21)
    a = (rng.normal(0, 4, n) * rng.choice([0.01, 1.0, 30.0], n)).astype(dtype)
    a[:8] = [0.0, -0.0, 1e-30, -1e4, 1e4, np.inf, -np.inf, 1e-40]
    u = rng.random(n).astype(dtype)
    g = rng.normal(size=n).astype(dtype)
    x = np.where(rng.random(n) < 0.5, 1, -1).astype(dtype)
    return a, u, g, x


def _numpy(a, u, g, x):
    """The formulas the passes replace, in NumPy."""
    e = np.exp(-np.abs(a))
    p = e / (1 + e) ** 2
    return {"sample": np.where(u < special.expit(a), a.dtype.type(1), a.dtype.type(-1)), "pdf": p, "st": 2 * p,
            "st_times": (2 * p) * g, "psa": -x * p * g}


def _passes(a, u, g, x):
    return {"sample": logistic_sample(a, u), "pdf": logistic_density(a, 1), "st": logistic_density(a, 2),
            "st_times": logistic_density(a, 2, times=g), "psa": logistic_psa_grad(x, a, g)}


@pytest.fixture
def helpers_work(monkeypatch):
    """The pool's helpers take blocks whatever core they wake on, and no earlier call set it to run alone."""
    monkeypatch.setattr(blockpool, "current_cpu", lambda: -1)
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 0)


@pytest.fixture
def calls(monkeypatch):
    """Per call of run_range_blocks by the passes, in order: its item count and the ranges its kernel ran on."""
    from sbnnumba.kernels import density, psa_factors, sampling

    out = []

    def spy(fn, n_items, work, kind="copy"):
        ranges = []
        out.append((n_items, ranges))
        runtime.run_range_blocks(lambda lo, hi: (ranges.append((lo, hi)), fn(lo, hi)), n_items, work, kind)

    for module in (density, psa_factors, sampling):
        monkeypatch.setattr(module, "run_range_blocks", spy)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("blocks", ["rule", "many", "alone"])
def test_elementwise_passes_have_numpys_bytes_at_one_and_two_threads(dtype, blocks, helpers_work, calls,
                                                                    monkeypatch):
    if blocks == "many":  # 13 uneven blocks (at least 32 768 elements each; none divides N)
        monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, "elementwise", 1 << 15)
        monkeypatch.setattr(runtime, "MAX_RANGE_BLOCKS", 13)
    if blocks == "alone":  # the helper "woke on the caller's core": every call is one block on the caller
        monkeypatch.setattr(blockpool.POOL, "_alone_left", 10 ** 6)
    inputs = _inputs(dtype)
    want = _numpy(*inputs)
    for threads in (1, 2):
        calls.clear()
        alone_before = blockpool.POOL._alone_left
        with runtime.limited_threads(threads):
            got = _passes(*inputs)
        for name, ref in want.items():
            assert got[name].dtype == dtype and got[name].tobytes() == ref.tobytes(), (name, threads)
        assert len(calls) == len(want)
        for n_items, ranges in calls:  # the blocks tile the items, whoever ran them
            edges = sorted(ranges)
            assert edges[0][0] == 0 and edges[-1][1] == n_items and all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
        # one thread (a short call) or a turn alone: one call over the whole range; else the rule's blocks
        expected = 1 if blocks == "alone" or threads == 1 else {"rule": 2, "many": 13}[blocks]
        assert {len(ranges) for _, ranges in calls} == {expected}
        if blocks == "alone":  # every call at two threads took one of the pool's turns alone
            assert alone_before - blockpool.POOL._alone_left == (len(want) if threads == 2 else 0)


def test_a_small_layer_is_one_block_on_one_thread(calls, monkeypatch):
    """A 128 x 1024 layer (2^17 elements) is one block by the rule (2^18 elements a thread): one kernel call each,
    on the calling thread, without the pool."""
    monkeypatch.setattr(blockpool, "run_blocks", None)  # would raise if the pool were asked
    monkeypatch.setattr(runtime, "run_blocks", None)
    inputs = _inputs(np.float32, 128 * 1024)
    with runtime.limited_threads(2):
        got = _passes(*inputs)
    assert len(calls) == 5 and all(ranges == [(0, n_items)] for n_items, ranges in calls)
    for name, ref in _numpy(*inputs).items():
        assert got[name].tobytes() == ref.tobytes(), name
