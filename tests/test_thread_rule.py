"""The per-call thread rule of sbnnumba.runtime (issue #39): call_threads, kernel_threads, gemm."""
import threading

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import sbnnumba as sb
from sbnnumba import runtime
from sbnnumba.kernels import cpu


def _blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def _gemm_as_blocks(a, b):
    """``a @ b`` as runtime.gemm's definition: the blocks of gemm_blocks, each one single-threaded BLAS call."""
    axis, edges = runtime.gemm_blocks(a.shape[0], a.shape[1], b.shape[1])
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    with threadpool_limits(1, user_api="blas"):
        for lo, hi in zip(edges[:-1], edges[1:]):
            if axis == 0:
                out[lo:hi] = a[lo:hi] @ b
            else:
                out[:, lo:hi] = a @ b[:, lo:hi]
    return out


def test_call_threads_formula():
    w = runtime.MIN_WORK_PER_THREAD["numba"]
    assert runtime.call_threads(0, "numba", 4) == 1
    assert runtime.call_threads(w - 1, "numba", 4) == 1
    assert runtime.call_threads(3 * w, "numba", 4) == 3
    assert runtime.call_threads(100 * w, "numba", 4) == 4
    assert runtime.call_threads(100 * w, "numba", 1) == 1
    assert runtime.call_threads(2 * runtime.MIN_WORK_PER_THREAD["gemm"], "gemm", 8) == 2
    assert runtime.call_threads(2 * runtime.MIN_WORK_PER_THREAD["elementwise"], "elementwise", 4) == 2
    with pytest.raises(ValueError, match="^kind: expected"):
        runtime.call_threads(1, "mkl", 2)


def test_small_layers_elementwise_passes_and_flip_preparation_stay_on_one_thread():
    """The decisions the runtime docstring justifies with busy-core measurements: a 128 x 1024 layer's
    sampling / ST factor (2^17 elements) and the dense flip's sign order (2^17 entries, a copy) run on one thread at
    T = 2; the flip kernel itself (2^27 connections) on two; the 1024 x 1024 weight's transposing copy (2^20
    entries, 0.8 ms on one thread) on two, a 256 x 256 one (1.4x slower on two) on one; the noise CDF of a 128 x
    1024 head (2^17 entries, 1 ms of SciPy's expit) on two."""
    assert runtime.call_threads(128 * 1024, "elementwise", 2) == 1
    assert runtime.call_threads(64 * 96 * 24 * 24, "elementwise", 2) == 2  # a conv stage's maps
    assert runtime.call_threads(128 * 1024, "copy", 2) == 1
    assert runtime.call_threads(128 * 1024 * 1024, "numba", 2) == 2
    assert runtime.call_threads(1024 * 1024, "transpose", 2) == 2
    assert runtime.call_threads(256 * 256, "transpose", 2) == 1
    assert runtime.call_threads(128 * 1024, "cdf", 2) == 2  # the dense head's noise CDF (SciPy's expit: ~1 ms)


def test_kernel_threads_lowers_numba_threads_inside_and_restores(monkeypatch):
    from sbnnumba import blockpool

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba pool of 2 threads")
    # an earlier call may have found the block pool's helper on its core (the machine is shared): not running alone
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 0)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        with runtime.kernel_threads(10) as threads:  # "as": the count the block's kernels get
            assert numba.get_num_threads() == 1 == threads
        assert numba.get_num_threads() == 2
        with runtime.kernel_threads(10 * runtime.MIN_WORK_PER_THREAD["numba"]) as threads:
            assert numba.get_num_threads() == 2 == threads
    finally:
        numba.set_num_threads(before)


def test_kernel_threads_runs_short_static_splits_alone_while_the_pool_does(monkeypatch):
    """While the block pool runs its calls alone (a helper woke on the caller's core), a flip kernel ("numba") or a
    weight's transpose below PRANGE_ALONE_MAX_SHARES w_min gets one thread and takes a turn; a longer one, a kind
    without a bound and any call when the pool has no turn left keep the rule's threads."""
    from sbnnumba import blockpool

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba pool of 2 threads")
    w = runtime.MIN_WORK_PER_THREAD["numba"]
    bound = runtime.PRANGE_ALONE_MAX_SHARES["numba"] * w
    dense_flip = 128 * 1024 * 1024  # the dense network's hidden flip: measured slower at 2 threads, core busy
    assert dense_flip < bound and "elementwise" not in runtime.PRANGE_ALONE_MAX_SHARES
    monkeypatch.setattr(blockpool, "current_cpu", lambda: -1)  # a probe would find the helper elsewhere: no matter
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 10)
    before = numba.get_num_threads()
    numba.set_num_threads(2)

    def threads_in(work, kind="numba"):
        with runtime.kernel_threads(work, kind):
            return numba.get_num_threads()

    try:
        assert threads_in(dense_flip) == 1 and blockpool.POOL._alone_left == 9
        assert threads_in(bound) == 2 and blockpool.POOL._alone_left == 9
        assert threads_in(1 << 24, "elementwise") == 2 and blockpool.POOL._alone_left == 9
        assert threads_in(1024 * 1024, "transpose") == 1 and blockpool.POOL._alone_left == 8  # a 1024^2 transpose
        blockpool.POOL._alone_left = 0
        assert threads_in(dense_flip) == 2 and blockpool.POOL._alone_left == 0
        assert numba.get_num_threads() == 2
    finally:
        numba.set_num_threads(before)


def test_gemm_equals_matmul_and_restores_blas_threads():
    rng = np.random.default_rng(0)
    before = sb.get_num_threads()
    try:
        sb.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        threads = _blas_threads()
        for m, k, n in ((3, 4, 5), (64, 64, 64), (256, 512, 256)):
            a = rng.random((m, k), dtype=np.float32)
            b = rng.random((k, n), dtype=np.float32)
            out = np.empty((m, n), np.float32)
            assert runtime.gemm(a, b, out=out) is out
            np.testing.assert_allclose(out, a @ b, rtol=1e-5)
            assert _blas_threads() == threads
        with pytest.raises(ValueError, match="^gemm: expected"):
            runtime.gemm(np.ones((2, 3)), np.ones((2, 3)))
    finally:
        sb.set_num_threads(before)


def test_gemm_restores_blas_threads_and_releases_its_lock_when_the_product_raises():
    # the BLAS thread guard (runtime._OneBlasThread) around a product that fails inside it: np.matmul refuses an
    # `out` of the wrong shape after the guard lowered BLAS to one thread and took the lock
    before = sb.get_num_threads()
    try:
        sb.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        threads = _blas_threads()
        a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
        with pytest.raises(ValueError):
            runtime.gemm(a, b, out=np.empty((3, 6), np.float32))
        assert _blas_threads() == threads
        assert not runtime._GEMM_LOCK.locked()
        np.testing.assert_array_equal(runtime.gemm(a, b), a @ b)
    finally:
        sb.set_num_threads(before)


def test_small_flip_kernel_call_runs_and_restores_threads():
    """A flip propagation below the rule's work runs at one Numba thread, and the count is restored."""
    rng = np.random.default_rng(1)
    x = np.where(rng.random((4, 8)) < 0.5, 1.0, -1.0)
    w = rng.normal(size=(5, 8))
    a = x @ w.T
    before = numba.get_num_threads()
    d_in = cpu.flip_propagate_dense(x, a, np.sign(a), w, rng.normal(size=a.shape), 0)
    assert numba.get_num_threads() == before and d_in.shape == x.shape


def test_gemm_blocks_depend_on_the_shape_only():
    w = runtime.MIN_WORK_PER_THREAD["gemm"]
    assert runtime.gemm_blocks(64, 64, 64) == (0, [0, 64])            # below 2 w_min: one block
    for m, k, n in ((128, 784, 1024), (1024, 128, 784), (96, 43264, 864), (5, 10 ** 6, 40), (40, 3 * w, 33)):
        axis, edges = runtime.gemm_blocks(m, k, n)
        dim = (m, n)[axis]
        assert axis == (0 if m >= n else 1) and edges[0] == 0 and edges[-1] == dim
        sizes = np.diff(edges)
        assert 1 <= len(sizes) <= runtime.MAX_GEMM_BLOCKS and (sizes > 0).all()
        assert (sizes[:-1] % runtime.GEMM_BLOCK_ALIGN == 0).all() and (sizes[:-1] >= sizes[-1]).all()
        if len(sizes) > 1:
            assert m * k * n // len(sizes) >= w  # every block is worth a thread by the rule


@pytest.fixture
def helpers_beside(monkeypatch):
    """The block pool's helpers take blocks whatever core they wake on (no core is known), and no earlier call has
    set the pool to run alone: the blocks run on two threads."""
    from sbnnumba import blockpool

    monkeypatch.setattr(blockpool, "current_cpu", lambda: -1)
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 0)


def test_gemm_in_a_turn_alone_runs_its_blocks_in_sequence(monkeypatch):
    """A short product at two threads while the pool runs calls alone (a helper stayed out) computes its blocks one
    after the other on the calling thread and counts as one of the turns; a product of one block takes no turn; with
    no turn left the helpers take blocks. Every way gives the bits of the blocks, each one BLAS call (never the one
    call of the whole product: OpenBLAS's Haswell kernel rounds a call's last rows other than their neighbours)."""
    from sbnnumba import blockpool

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba pool of 2 threads")
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((128, 784)).astype(np.float32), rng.standard_normal((784, 1024)).astype(np.float32)
    small = rng.standard_normal((16, 16)).astype(np.float32)
    assert runtime.short_call(128 * 784 * 1024, "gemm") and len(runtime.gemm_blocks(128, 784, 1024)[1]) > 2
    threads_used = set()
    real_matmul = np.matmul

    def recording_matmul(*args, **kwargs):
        threads_used.add(threading.get_ident())
        return real_matmul(*args, **kwargs)

    monkeypatch.setattr(runtime.np, "matmul", recording_matmul)
    monkeypatch.setattr(blockpool, "current_cpu", lambda: -1)  # the helpers take blocks when asked
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 5)
    before = sb.get_num_threads()
    try:
        sb.set_num_threads(2)
        alone = runtime.gemm(a, b)
        assert blockpool.POOL._alone_left == 4 and threads_used == {threading.get_ident()}
        runtime.gemm(small, small)
        assert blockpool.POOL._alone_left == 4  # one block: not a turn
        blockpool.POOL._alone_left = 0
        shared = runtime.gemm(a, b)
        sb.set_num_threads(1)
        one_thread = runtime.gemm(a, b)
    finally:
        sb.set_num_threads(before)
    assert alone.tobytes() == shared.tobytes() == one_thread.tobytes() == _gemm_as_blocks(a, b).tobytes()


def test_blocked_gemm_is_bit_identical_at_one_and_two_threads(helpers_beside):
    """The layers' products through runtime.gemm: the fixed blocks of gemm_blocks, each one single-threaded BLAS
    call, computed in sequence at one thread and shared out at two, so results do not depend on the thread count
    (and are those of the blocks computed one by one with np.matmul). Plain ``a @ b`` does not have this property
    (OpenBLAS's threaded GEMM cuts k = 784 differently), nor does one call of the whole product at one thread
    (OpenBLAS's Haswell kernel rounds a call's last rows or columns by another path than their neighbours)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba pool of 2 threads")
    if any(i["internal_api"] != "openblas" for i in threadpool_info() if i["user_api"] == "blas"):
        pytest.skip("the bit-identity of blocks is a property of OpenBLAS's kernels, checked here for OpenBLAS")
    rng = np.random.default_rng(3)
    before = sb.get_num_threads()
    try:
        for m, k, n, transpose in ((128, 784, 1024, True), (1024, 128, 784, False), (96, 864, 7744, False),
                                   (192, 3136, 1728, False), (128, 1024, 784, False)):
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((n, k)).astype(np.float32).T if transpose else \
                rng.standard_normal((k, n)).astype(np.float32)
            assert len(runtime.gemm_blocks(m, k, n)[1]) > 2, "the case must be split"
            sb.set_num_threads(1)
            one = runtime.gemm(a, b)
            sb.set_num_threads(2)
            two = runtime.gemm(a, b)
            assert one.tobytes() == two.tobytes() == _gemm_as_blocks(a, b).tobytes(), (m, k, n)
            assert _blas_threads() == [2] * len(_blas_threads())
    finally:
        sb.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_nt_swaps_float32_long_products_by_shape_alone(threads, helpers_beside):
    """gemm_nt computes a b^T as (b a^T)^T for float32 when b has >= 4x the rows of a and k >= 512 (the conv weight
    gradient: faster in OpenBLAS), as one call where the product is one block and as at least 4 blocks of >= 2m rows
    otherwise; below the bounds, for float64 (whose OpenBLAS kernel sums in another order when the operands swap)
    and for a product gemm would cut into blocks that leaves fewer than 4 such blocks, it is gemm(a, b.T) itself.
    The form depends on the shapes and the dtype alone: the same bits at one and two threads (whether the swapped
    form has gemm(a, b.T)'s bits depends on the BLAS kernel: it is held to float32 rounding here)."""
    rng = np.random.default_rng(8)
    k_min, ratio = runtime.GEMM_NT_SWAP_MIN_INNER, runtime.GEMM_NT_SWAP_MIN_ROW_RATIO
    # (a's shape, b's shape, swapped): 864 // (2 x 96) = 4 blocks; 864 // 384 = 2 blocks, too few; the others one
    # block (m k n < 2 w_min) or outside the bounds
    cases = [((96, 7744), (864, 7744), True), ((3, 5408), (27, 5408), True), ((19, k_min), (ratio * 19, k_min), True),
             ((192, 5184), (864, 5184), False), ((192, 64), (1728, 64), False),
             ((192, 3136), (192 * ratio - 1, 3136), False), ((20, k_min - 1), (200, k_min - 1), False)]
    before = sb.get_num_threads()
    try:
        for (m, k), (n, _), swapped in cases:
            for dtype in (np.float32, np.float64):
                a = rng.standard_normal((m, k)).astype(dtype)
                b = np.sign(rng.standard_normal((n, k))).astype(dtype)  # the patch matrix's +-1 states
                sb.set_num_threads(1)
                reference = runtime.gemm_nt(a, b)
                sb.set_num_threads(threads)
                got = runtime.gemm_nt(a, b)
                assert got.shape == (m, n)
                swaps = swapped and dtype == np.float32
                assert got.flags.f_contiguous == swaps != got.flags.c_contiguous
                assert got.tobytes(order="A") == reference.tobytes(order="A"), (m, k, n, dtype)
                if not swaps:
                    assert got.tobytes() == runtime.gemm(a, b.T).tobytes(), (m, k, n, dtype)
                exact = a.astype(np.float64) @ b.T.astype(np.float64)
                bound = 2 * k * np.finfo(dtype).eps * np.abs(a).astype(np.float64) @ np.abs(b).T.astype(np.float64)
                assert np.all(np.abs(got - exact) <= bound), (m, k, n, dtype)
        with pytest.raises(ValueError, match="^gemm_nt: expected"):
            runtime.gemm_nt(np.ones((2, 3)), np.ones((3, 2)))
    finally:
        sb.set_num_threads(before)


def test_run_blocks_runs_every_block_once_and_raises_in_the_caller():
    from sbnnumba.blockpool import run_blocks

    for threads in (1, 2, 3):
        seen = np.zeros(37, np.int64)

        def block(i):
            seen[i] += 1
            np.dot(np.ones(2000), np.ones(2000))  # releases the GIL: the helpers get a turn

        run_blocks(block, 37, threads)
        assert (seen == 1).all()

    def failing(i):
        if i == 5:
            raise KeyError("block 5")

    with pytest.raises(KeyError, match="block 5"):
        run_blocks(failing, 9, 2)


def test_blocks_run_alone_after_a_helper_woke_on_the_callers_core(monkeypatch):
    """run_blocks with ``alone``: a helper that wakes on the calling thread's core takes no block (unless more tasks
    are runnable than cores plus one); the pool then runs the next ALONE_CALLS such calls as ``alone()`` on the
    calling thread, the last of them with a probe (a helper woken only to look at its core): co-located again, the
    calls stay alone for a window twice as long; woken on another core, the call after the probe tries the helpers
    again, and if they stay out again the next window is twice as long again (up to ALONE_CALLS_MAX); a call whose
    blocks a helper shared starts over at ALONE_CALLS. Without ``alone``, nothing changes."""
    from sbnnumba import blockpool

    caller = threading.get_ident()
    helper_woke = threading.Event()
    helper_core = 0

    def cpu():  # every thread "on core 0" (co-located) until the test moves the helper
        if threading.get_ident() != caller:
            helper_woke.set()
            return helper_core
        return 0

    monkeypatch.setattr(blockpool, "current_cpu", cpu)
    monkeypatch.setattr(blockpool, "cores_oversubscribed", lambda: False)  # and no other process wants the core
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 0)
    ways = []
    wait_for_helper = False

    def block(i):
        if threading.get_ident() == caller and not ways and wait_for_helper:
            helper_woke.wait(5.0)  # the caller's first block lasts until the helper has looked at its core
        np.dot(np.ones(200000), np.ones(200000))  # releases the GIL: the helper gets a turn
        ways.append("caller" if threading.get_ident() == caller else "helper")

    def run(alone=True):
        nonlocal wait_for_helper
        wait_for_helper = alone and blockpool.POOL._alone_left == 0  # a helper is woken and looks at its core
        helper_woke.clear()
        ways.clear()
        blockpool.run_blocks(block, 6, 2, alone=(lambda: ways.append("alone")) if alone else None)
        return list(ways)

    def run_until_probe(window):  # the window of calls alone; returns after the last one's probe has looked
        assert blockpool.POOL._alone_left == window
        for call in range(window):
            assert run(alone=False) != ["alone"]  # calls without ``alone`` are not counted
            helper_woke.clear()
            assert run() == ["alone"]
            if call < window - 1:
                assert not helper_woke.is_set()  # no helper woken before the last call alone
        assert blockpool.POOL._probe.done.wait(5.0)
        assert helper_woke.is_set()  # the probe's helper looked at its core

    first = blockpool.ALONE_CALLS
    monkeypatch.setattr(blockpool.POOL, "_alone_window", first)
    monkeypatch.setattr(blockpool, "ALONE_CALLS_MAX", 4 * first)
    assert run() == ["caller"] * 6  # the helper stayed out
    run_until_probe(first)  # co-located again: the calls stay alone, without trying the blocks, twice as long
    helper_core = 1  # now the helper wakes on another core
    run_until_probe(2 * first)
    assert blockpool.POOL._alone_left == 0
    helper_core = 0  # the call after the probe tries the helpers, co-located again: stays out, a longer window
    assert run() == ["caller"] * 6
    assert blockpool.POOL._alone_left == 4 * first
    blockpool.POOL._alone_left = 0
    assert run() == ["caller"] * 6
    assert blockpool.POOL._alone_left == 4 * first  # no longer than ALONE_CALLS_MAX
    monkeypatch.setattr(blockpool, "cores_oversubscribed", lambda: True)  # the core is shared with other processes
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 0)
    assert any(way == "helper" for _ in range(20) for way in run())  # the helper takes its share of it
    assert blockpool.POOL._alone_left == 0 and blockpool.POOL._alone_window == first  # and the windows start over


def test_blocks_with_alone_run_each_block_once_and_raise_in_the_caller(helpers_beside):
    from sbnnumba.blockpool import run_blocks

    for threads in (1, 2, 3):
        seen = np.zeros(37, np.int64)

        def block(i):
            seen[i] += 1
            np.dot(np.ones(2000), np.ones(2000))

        run_blocks(block, 37, threads, alone=lambda: seen.__iadd__(1))
        assert (seen == 1).all()

    def failing(i):
        if i == 5:
            raise KeyError("block 5")

    with pytest.raises(KeyError, match="block 5"):
        run_blocks(failing, 9, 2, alone=lambda: failing(5))


def test_short_calls_are_those_under_64_shares():
    """Products and passes of a few ms on one core take the pool's one-call form, longer ones keep the helpers
    (the scheduler moves a helper woken on the caller's core within a few ms): the dense ST step's products are
    short, the paper's conv net's stage-2 weight gradient is not."""
    gemm_share = runtime.MIN_WORK_PER_THREAD["gemm"]
    assert runtime.short_call(128 * 1024 * 1024, "gemm") and runtime.short_call(1024 * 128 * 784, "gemm")
    assert not runtime.short_call(96 * 43264 * 864, "gemm")
    assert runtime.short_call(64 * gemm_share - 1, "gemm") and not runtime.short_call(64 * gemm_share, "gemm")
    assert runtime.short_call(64 * 96 * 24 * 24, "elementwise")


def test_gemm_in_a_forked_child_after_the_parent_used_the_pool():
    """The parent's helper threads do not exist in a forked child: the pool starts empty there."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    a = np.random.default_rng(4).standard_normal((256, 512)).astype(np.float32)
    before = sb.get_num_threads()
    try:
        sb.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        expected = runtime.gemm(a, a.T)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply(runtime.gemm, (a, a.T))
    finally:
        sb.set_num_threads(before)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("n_items, work, want", [(864, 31_850_496, 16), (9, 389_376, 1), (1728, 3 << 20, 3),
                                                 (5, 100 << 20, 5), (0, 0, 1)])
def test_range_blocks_are_fixed_by_the_sizes(n_items, work, want, helpers_beside):
    """run_range_blocks cuts range(n_items) into min(n_items, 16, work // w_min) (at least one) near-equal
    blocks in order, each run once, the same at any thread count; a short call (runtime.short_call) run on the
    calling thread alone (one thread, or the helper woke on the caller's core) is one block over the whole range."""
    from sbnnumba import blockpool

    for threads, alone in ((2, False), (1, False), (2, True)):
        seen = []
        blockpool.POOL._alone_left = 10 ** 6 if alone else 0
        with runtime.limited_threads(threads):
            runtime.run_range_blocks(lambda lo, hi: seen.append((lo, hi)), n_items, work, "copy")
        blockpool.POOL._alone_left = 0
        seen.sort()
        if (threads == 1 or alone) and runtime.short_call(work, "copy"):
            assert seen == [(0, n_items)]
            continue
        assert len(seen) == want and seen[0][0] == 0 and seen[-1][1] == n_items
        assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
        assert max(hi - lo for lo, hi in seen) - min(hi - lo for lo, hi in seen) <= 1
    with pytest.raises(ValueError, match="kind"):
        runtime.run_range_blocks(lambda lo, hi: None, 4, 4, "no-such-kind")
