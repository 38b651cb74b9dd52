"""sbnnumba.uniforms.random_uniforms: rng.random's values and final generator state, bit for bit, at any thread count
and block split (issue #39: the states' uniforms of a training step drawn on the threads)."""
import numpy as np
import pytest
from kernel_checks import run_without_jit

from sbnnumba import runtime
from sbnnumba.kernels import pcg64
from sbnnumba.uniforms import random_uniforms


def _same(a, b):
    # generator states: nested dicts of ints, strings and (MT19937) arrays
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def _pair(bit_generator, seed, buffered):
    # two generators in the same state; `buffered`: a float32 drawn first, so a half draw waits in the buffer
    gens = [np.random.Generator(bit_generator(seed)) for _ in range(2)]
    if buffered:
        for g in gens:
            g.random(1, dtype=np.float32)
    return gens


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (64, 17, 61), (2, 300001)])
@pytest.mark.parametrize("threads", [1, 2])
def test_same_values_and_state_as_one_sequential_draw(monkeypatch, bit_generator, dtype, buffered, shape, threads):
    monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, "elementwise", 1000)  # many uneven blocks on small arrays
    mine, ref = _pair(bit_generator, 7, buffered)
    with runtime.limited_threads(threads):
        got = random_uniforms(mine, shape, dtype)
    want = ref.random(shape, dtype=dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
    assert _same(mine.bit_generator.state, ref.bit_generator.state)
    # the next draws agree too, in either dtype (the buffered half included)
    assert mine.random(5, dtype=np.float32).tobytes() == ref.random(5, dtype=np.float32).tobytes()
    assert mine.random(3).tobytes() == ref.random(3).tobytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_really_split_the_stream(monkeypatch, threads):
    # with the rule's minimum at 1000 values, a 300001-value float32 draw (150001 64-bit draws) runs as several
    # blocks that tile the stream in order: the equality test above then checks the advance arithmetic, not one fill
    monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, "elementwise", 1000)
    ranges = []
    real = runtime.run_range_blocks

    def spy(fn, n_items, work, kind="copy"):
        def recording(lo, hi):
            ranges.append((lo, hi))
            fn(lo, hi)
        return real(recording, n_items, work, kind)

    monkeypatch.setattr("sbnnumba.uniforms.run_range_blocks", spy)
    with runtime.limited_threads(threads):
        random_uniforms(np.random.default_rng(1), (300001,), np.float32)
    ranges.sort()
    assert len(ranges) > 1
    assert ranges[0][0] == 0 and ranges[-1][1] == 150001
    assert all(hi == lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.PCG64DXSM])
@pytest.mark.parametrize("delta", [0, 1, 2, 3, 4, 1000, 150001, 123456789, 2 ** 40 + 5, 2 ** 62 + 17, 2 ** 63 - 1])
def test_advance_is_numpys_jump_ahead(bit_generator, delta):
    # the blocks' start: pcg64.advance against NumPy's advance, from several states (a wrong composition of the
    # squared steps, or the increment's factor (M + 1) left out, moves every delta >= 2; PCG64DXSM with PCG64's
    # multiplier moves every delta >= 1)
    for seed in range(4):
        bit_gen = bit_generator(seed)
        state = bit_gen.state["state"]
        got = pcg64.advance(*pcg64.split_128(state["state"]), *pcg64.split_128(state["inc"]), delta,
                            bit_generator is np.random.PCG64DXSM)
        bit_gen.advance(delta)
        assert pcg64.join_128(*got) == bit_gen.state["state"]["state"], seed


def test_a_generator_subclass_draws_with_its_own_random():
    class Counting(np.random.Generator):
        calls = 0

        def random(self, *args, **kwargs):
            Counting.calls += 1
            return super().random(*args, **kwargs)

    got = random_uniforms(Counting(np.random.PCG64(3)), (4, 5), np.float32)
    assert Counting.calls == 1
    assert got.tobytes() == np.random.default_rng(3).random((4, 5), dtype=np.float32).tobytes()


def test_pcg64_kernel_without_jit_gives_numpy_values_and_state():
    """Under NUMBA_DISABLE_JIT=1 the PCG64 and PCG64DXSM fills run as Python (the 128-bit step in Python integers, the
    DXSM output's 64-bit products wrapped by hand): the same values and final state as NumPy's draw, both dtypes, an
    odd float32 count and a buffered half at the start, and no warning (a NumPy uint64 product that wraps warns)."""
    run_without_jit("""
        import warnings
        warnings.simplefilter("error")
        import numpy as np
        from sbnnumba.uniforms import random_uniforms
        for bit_generator in (np.random.PCG64, np.random.PCG64DXSM):
            for dtype, shape, buffered in ((np.float32, (7, 5), False), (np.float32, (6,), True),
                                           (np.float64, (9,), True)):
                mine, ref = np.random.Generator(bit_generator(3)), np.random.Generator(bit_generator(3))
                if buffered:
                    mine.random(1, dtype=np.float32), ref.random(1, dtype=np.float32)
                got, want = random_uniforms(mine, shape, dtype), ref.random(shape, dtype=dtype)
                assert got.tobytes() == want.tobytes(), (bit_generator, dtype)
                assert mine.bit_generator.state == ref.bit_generator.state, (bit_generator, dtype)
        from sbnnumba.kernels import pcg64
        for bit_generator in (np.random.PCG64, np.random.PCG64DXSM):
            for delta in (0, 5, 150001):  # the blocks' jump-ahead in Python integers
                bit_gen = bit_generator(4)
                state = bit_gen.state["state"]
                got = pcg64.advance(*pcg64.split_128(state["state"]), *pcg64.split_128(state["inc"]), delta,
                                    bit_generator is np.random.PCG64DXSM)
                bit_gen.advance(delta)
                assert pcg64.join_128(*got) == bit_gen.state["state"]["state"], delta
        print("ok")
    """)
