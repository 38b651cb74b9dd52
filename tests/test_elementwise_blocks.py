"""The logistic element-wise passes on fixed blocks (#39): sampling (sbnnumba.kernels.sampling), the density and
deep ST's fused gradient (kernels.density) and PSA's gradient (kernels.psa_factors) run as ``nogil`` kernels over
the blocks of runtime.run_range_blocks that the threads take as they come free. Their bytes must be NumPy's
formula's at one and two threads, whatever the blocks: many blocks that do not divide the length, one block, and
the one-call ``alone`` form."""
import numpy as np
import pytest
from scipy import special

from sbnnumba import blockpool, runtime
from sbnnumba.backends import get_backend
from sbnnumba.kernels.density import logistic_density
from sbnnumba.kernels.psa_factors import logistic_psa_grad
from sbnnumba.kernels.sampling import sample_units

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
    return {"sample": sample_units("logistic", a, u), "pdf": logistic_density(a, 1), "st": logistic_density(a, 2),
            "st_times": logistic_density(a, 2, times=g), "psa": logistic_psa_grad(x, a, g)}


@pytest.fixture
def helpers_work(monkeypatch):
    """The pool's helpers take blocks whatever core they wake on, and no earlier call set it to run alone."""
    monkeypatch.setattr(blockpool, "current_cpu", lambda: -1)
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 0)


def _range_spy(out, run_range_blocks=runtime.run_range_blocks):
    """A run_range_blocks that appends ``(n_items, ranges)`` to ``out`` per call, ``ranges`` the (lo, hi) its
    function ran on, and runs the call as the real one does."""
    def spy(fn, n_items, work, kind="copy"):
        ranges = []
        out.append((n_items, ranges))
        run_range_blocks(lambda lo, hi: (ranges.append((lo, hi)), fn(lo, hi)), n_items, work, kind)
    return spy


@pytest.fixture
def calls(monkeypatch):
    """Per call of run_range_blocks by the passes, in order: its item count and the ranges its kernel ran on."""
    from sbnnumba.kernels import density, psa_factors, sampling

    out = []
    for module in (density, psa_factors, sampling):
        monkeypatch.setattr(module, "run_range_blocks", _range_spy(out))
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


# runtime.blockwise: NumPy's (and SciPy's) element-wise functions over fixed blocks of an array, the passes between
# the flip kernels (exp, tanh) and the Rao-Blackwell head's CDF. A block must give its entries the bytes of one call
# over the whole array, wherever the array is cut.

def _wide(dtype, n=N):
    rng = np.random.default_rng(5)
    v = (rng.normal(0, 1, n) * rng.choice([1e-3, 1.0, 10.0, 100.0], n)).astype(dtype)
    v[:9] = [0.0, -0.0, 1e-30, -1e4, 1e4, np.inf, -np.inf, np.nan, 1e-40]
    return v


_IN_PLACE = {"exp": np.exp, "tanh": np.tanh, "log": np.log}  # ufuncs written into their own argument
_COPIED = {"expit": special.expit, "ndtr": special.ndtr}  # functions returning a new array (the noises' CDFs)


@pytest.fixture
def blockwise_blocks(monkeypatch):
    """Per run_range_blocks call that runtime.blockwise makes: its item count and the ranges its function ran on."""
    out = []
    monkeypatch.setattr(runtime, "run_range_blocks", _range_spy(out))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(_IN_PLACE) + sorted(_COPIED))
@pytest.mark.parametrize("blocks", ["rule", "many"])
def test_blockwise_gives_one_calls_bytes_at_one_and_two_threads(dtype, name, blocks, helpers_work,
                                                                blockwise_blocks, monkeypatch):
    if blocks == "many":
        monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, "elementwise", 1 << 15)
        monkeypatch.setattr(runtime, "MAX_RANGE_BLOCKS", 13)
    v = _wide(dtype)
    if name == "log":
        v = np.abs(v)
    f = _IN_PLACE.get(name) or _COPIED[name]

    def quiet(*parts):  # overflow of exp, log of 0: NumPy's error state is per thread, the blocks run on several
        with np.errstate(all="ignore"):
            if name in _IN_PLACE:
                f(parts[0], out=parts[0])
            else:
                np.copyto(parts[1], f(parts[0]))

    with np.errstate(all="ignore"):
        want = f(v)
    for threads in (1, 2):
        blockwise_blocks.clear()
        got, out = v.copy(), np.empty_like(v)
        with runtime.limited_threads(threads):
            runtime.blockwise(quiet, got, out)
        got = got if name in _IN_PLACE else out
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), threads
        expected = 1 if threads == 1 else {"rule": 2, "many": 13}[blocks]
        assert [len(ranges) for _, ranges in blockwise_blocks] == [expected]


def test_blockwise_rejects_what_its_blocks_could_not_write():
    a = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match=r"arrays\[0\]: expected a C-contiguous ndarray"):
        runtime.blockwise(lambda part: None, a.T)
    with pytest.raises(ValueError, match=r"arrays\[1\]: expected a C-contiguous ndarray .*list"):
        runtime.blockwise(lambda p, q: None, a, [0.0] * 24)
    with pytest.raises(ValueError, match=r"arrays\[1\]: expected size 24"):
        runtime.blockwise(lambda p, q: None, a, np.zeros(23, np.float32))
    with pytest.raises(ValueError, match="at least one array"):
        runtime.blockwise(lambda: None)
    with pytest.raises(ValueError, match="^kind: expected one of"):
        runtime.blockwise(lambda part: None, a, kind="gemv")


def test_blockwise_below_two_threads_worth_is_one_call_without_the_pool(monkeypatch):
    """Under 2 w_min entries the rule gives one thread at any count: one call on the whole arrays, run_range_blocks
    not asked; at 2 w_min it is."""
    seen = []
    monkeypatch.setattr(runtime, "run_range_blocks", lambda *args: seen.append(args[1:]))
    w = runtime.MIN_WORK_PER_THREAD["elementwise"]
    for n, asked in ((2 * w - 1, False), (2 * w, True)):
        a, b = np.zeros((n,), np.float32), np.zeros((n,), np.float32)
        parts = []
        with runtime.limited_threads(2):
            runtime.blockwise(lambda p, q: parts.append((p.size, q.size)), a, b)
        assert (seen[-1:] == [(n, n, "elementwise")]) if asked else (parts == [(n, n)] and not seen)


def _pm1(rng, shape, dtype):
    return np.where(rng.random(shape) < 0.5, 1, -1).astype(dtype)


def _flip_calls(dtype):
    """The CPU backend's calls whose NumPy / SciPy passes run through blockwise, at sizes cut into blocks: in float64
    the dense flip's e^{2W^T} (1024 x 1024) and the conv flip's e^{+-2W} of a 192 x 192 x 3 x 3 stage onto a 1x1 map
    (8 examples; in float32 both take the library's exp_f32 in one element-wise Numba pass instead), the Rao-Blackwell
    weights of 128 x 1024 units (normal noise: logistic weights in float32 are one Numba pass too)."""
    from sbnnumba.noise import get_noise

    rng = np.random.default_rng(8)
    backend = get_backend("cpu")
    noise = get_noise("logistic")
    normal = get_noise("normal")
    x_in, x_out = _pm1(rng, (16, 1024), dtype), _pm1(rng, (16, 1024), dtype)
    weight = (rng.normal(size=(1024, 1024)) * 0.05).astype(dtype)
    a, d_out = (rng.normal(size=(16, 1024)) * 2).astype(dtype), rng.normal(size=(16, 1024)).astype(dtype)
    # 8 examples: 2.7 M connections, two threads for the conv flip call (and so for its passes)
    c_x, c_w = _pm1(rng, (8, 192, 3, 3), dtype), (rng.normal(size=(192, 192, 3, 3)) * 0.05).astype(dtype)
    c_a, c_x_out, c_d = (rng.normal(size=(8, 192, 1, 1)) * 2).astype(dtype), _pm1(rng, (8, 192, 1, 1), dtype), \
        rng.normal(size=(8, 192, 1, 1)).astype(dtype)
    rb_x, rb_a = _pm1(rng, (128, 1024), dtype), (rng.normal(size=(128, 1024)) * 3).astype(dtype)
    calls = {"rb weights": lambda: backend.rb_flip_weights(rb_x, rb_a, normal)}
    if dtype == np.float64:
        calls["dense flip"] = lambda: backend.flip_propagate_dense(x_in, a, x_out, weight, d_out, noise)
        calls["conv flip"] = lambda: backend.flip_propagate_conv(c_x, c_a, c_x_out, c_w, c_d, (1, 1), (0, 0), noise)
    return calls


def _bytes(result):
    return b"".join(np.ascontiguousarray(t).tobytes() for t in (result if isinstance(result, tuple) else (result,)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_backend_passes_in_blocks_have_one_calls_bytes(dtype, helpers_work, blockwise_blocks, monkeypatch):
    """Each call's blockwise passes cut into blocks at two threads (several blocks, more than one thread's worth of
    work) give the bytes of the same call with every pass one NumPy call (the rule's w_min raised past the sizes)."""
    calls = _flip_calls(dtype)
    got = {}
    with runtime.limited_threads(2):
        for name, call in calls.items():
            blockwise_blocks.clear()
            got[name] = _bytes(call())
            assert max(len(ranges) for _, ranges in blockwise_blocks) >= 2, name  # a pass of this call was cut
    for kind in ("elementwise", "cdf"):  # every pass one call
        monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, kind, 1 << 40)
    with runtime.limited_threads(1):
        for name, call in calls.items():
            assert _bytes(call()) == got[name], name


def test_rb_flip_weights_in_blocks_equal_the_reference(helpers_work):
    """The CPU backend's Rao-Blackwell weights ``F(-x a) / N`` with F in blocks equal the reference's one call,
    for a CDF from SciPy (logistic, normal) and one from NumPy expressions (triangular), float32 and float64 (not
    logistic float32: one vectorized Numba pass, ``tests/test_head_kernels.py``)."""
    from sbnnumba.noise import get_noise

    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        x_last, a_last = _pm1(rng, (128, 1024), dtype), (rng.normal(size=(128, 1024)) * 3).astype(dtype)
        for noise in ("logistic", "normal", "triangular") if dtype == np.float64 else ("normal", "triangular"):
            want = get_backend("reference").rb_flip_weights(x_last, a_last, get_noise(noise))
            with runtime.limited_threads(2):
                got = get_backend("cpu").rb_flip_weights(x_last, a_last, get_noise(noise))
            assert got.dtype == want.dtype == dtype and got.tobytes() == want.tobytes(), (noise, dtype)
