"""Tests for sbnnumba.optim: steps against hand-written reference loops, clipping, schedules, state."""

import json
import math

import numpy as np
import pytest

from sbnnumba import optim

# ------------------------------------------------------------------------------------------------
# naive references (scalar loops over elements, PyTorch formulas)
# ------------------------------------------------------------------------------------------------

def ref_sgd(p0, grads_seq, lr, momentum=0.0, nesterov=False, weight_decay=0.0, lr_fn=None):
    p = [float(v) for v in p0.ravel()]
    buf = [None] * len(p)
    for t, gs in enumerate(grads_seq):
        lr_t = lr if lr_fn is None else lr_fn(t)
        for i, g in enumerate(gs.ravel()):
            g = float(g) + weight_decay * p[i]
            if momentum:
                buf[i] = g if buf[i] is None else momentum * buf[i] + g
                g = g + momentum * buf[i] if nesterov else buf[i]
            p[i] -= lr_t * g
    return np.array(p).reshape(p0.shape)


def ref_adam(p0, grads_seq, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    p = [float(v) for v in p0.ravel()]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t0, gs in enumerate(grads_seq):
        t = t0 + 1
        for i, g in enumerate(gs.ravel()):
            g = float(g)
            if weight_decay:
                if decoupled:
                    p[i] *= 1 - lr * weight_decay
                else:
                    g += weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mh = m[i] / (1 - b1 ** t)
            vh = v[i] / (1 - b2 ** t)
            p[i] -= lr * mh / (math.sqrt(vh) + eps)
    return np.array(p).reshape(p0.shape)


def grad_sequence(n_steps, shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(n_steps)]


SHAPES = {"w": (2, 3), "b": (3,)}


def run(opt, params, seq):
    for g in seq:
        opt.update(params, g)
    return params


# ------------------------------------------------------------------------------------------------
# single steps by hand
# ------------------------------------------------------------------------------------------------

def test_sgd_single_step_by_hand():
    p = {"w": np.array([1.0, -2.0])}
    g = {"w": np.array([0.5, 0.25])}
    optim.SGD(lr=0.1).update(p, g)
    np.testing.assert_allclose(p["w"], [0.95, -2.025])
    # weight decay: g + wd * p
    p = {"w": np.array([1.0, -2.0])}
    optim.SGD(lr=0.1, weight_decay=0.5).update(p, g)
    np.testing.assert_allclose(p["w"], [1 - 0.1 * (0.5 + 0.5), -2 - 0.1 * (0.25 - 1.0)])


def test_momentum_two_steps_by_hand():
    p = {"w": np.array([1.0])}
    opt = optim.SGD(lr=0.1, momentum=0.9)
    opt.update(p, {"w": np.array([1.0])})  # b = 1, p = 0.9
    opt.update(p, {"w": np.array([2.0])})  # b = 0.9 + 2 = 2.9, p = 0.9 - 0.29
    np.testing.assert_allclose(p["w"], [0.61])
    p = {"w": np.array([1.0])}
    opt = optim.SGD(lr=0.1, momentum=0.9, nesterov=True)
    opt.update(p, {"w": np.array([1.0])})  # b = 1, step g + 0.9 b = 1.9 -> 0.81
    opt.update(p, {"w": np.array([2.0])})  # b = 2.9, step 2 + 2.61 = 4.61 -> 0.81 - 0.461
    np.testing.assert_allclose(p["w"], [0.349])


def test_adam_first_step_by_hand():
    # after bias correction the first step is lr * g / (|g| + eps) ~ lr * sign(g)
    p = {"w": np.array([1.0, 1.0, 1.0])}
    optim.Adam(lr=0.01).update(p, {"w": np.array([3.0, -0.5, 0.0])})
    np.testing.assert_allclose(p["w"], [0.99, 1.01, 1.0], atol=1e-9)


# ------------------------------------------------------------------------------------------------
# against the reference loops
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 0.0), (0.5, True, 0.01),
                                                  (0.0, False, 0.1)])
def test_sgd_matches_reference(momentum, nesterov, wd):
    rng = np.random.default_rng(1)
    p0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    seq = grad_sequence(7, SHAPES)
    params = {k: v.copy() for k, v in p0.items()}
    run(optim.SGD(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd), params, seq)
    for k in SHAPES:
        want = ref_sgd(p0[k], [g[k] for g in seq], 0.05, momentum, nesterov, wd)
        np.testing.assert_allclose(params[k], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_matches_reference(wd, decoupled):
    rng = np.random.default_rng(2)
    p0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    seq = grad_sequence(6, SHAPES, seed=3)
    params = {k: v.copy() for k, v in p0.items()}
    run(optim.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, decoupled=decoupled),
        params, seq)
    for k in SHAPES:
        want = ref_adam(p0[k], [g[k] for g in seq], 0.01, 0.8, 0.99, 1e-6, wd, decoupled)
        np.testing.assert_allclose(params[k], want, rtol=1e-12, atol=1e-12)


def test_float32_params_stay_float32_and_in_place():
    w = np.ones((2, 2), np.float32)
    params = {"w": w}
    for opt in (optim.SGD(lr=0.1, momentum=0.9), optim.Adam(lr=0.1)):
        opt.update(params, {"w": np.full((2, 2), 0.5, np.float64)})
        assert params["w"] is w and w.dtype == np.float32
    assert np.all(w < 1)


def test_grads_not_modified():
    g = {"w": np.array([5.0, -5.0])}
    opt = optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.1, clip_value=1.0, clip_norm=0.5)
    opt.update({"w": np.array([1.0, 1.0])}, g)
    opt.update({"w": np.array([1.0, 1.0])}, g)
    np.testing.assert_array_equal(g["w"], [5.0, -5.0])


# ------------------------------------------------------------------------------------------------
# clipping
# ------------------------------------------------------------------------------------------------

def test_clip_value():
    p = {"w": np.zeros(3)}
    optim.SGD(lr=1.0, clip_value=1e3).update(p, {"w": np.array([5e3, -2e3, 7.0])})
    np.testing.assert_allclose(p["w"], [-1e3, 1e3, -7.0])


def test_clip_norm_global():
    p = {"a": np.zeros(2), "b": np.zeros(1)}
    g = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}  # global norm 5
    optim.SGD(lr=1.0, clip_norm=1.0).update(p, g)
    np.testing.assert_allclose(p["a"], [-0.6, 0.0])
    np.testing.assert_allclose(p["b"], [-0.8])
    p = {"a": np.zeros(2), "b": np.zeros(1)}
    optim.SGD(lr=1.0, clip_norm=10.0).update(p, g)  # below the threshold: unchanged
    np.testing.assert_allclose(p["a"], [-3.0, 0.0])
    # value clipping happens before norm clipping
    p = {"a": np.zeros(2), "b": np.zeros(1)}
    optim.SGD(lr=1.0, clip_value=3.0, clip_norm=100.0).update(p, g)
    np.testing.assert_allclose(p["b"], [-3.0])


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------

def test_schedule_values():
    assert optim.ConstantLR()(123, 0.5) == 0.5
    s = optim.get_schedule("step", step_size=3, gamma=0.5)
    assert [s(t, 1.0) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    c = optim.get_schedule("cosine", total=4, min_lr=0.1)
    vals = [c(t, 1.1) for t in range(6)]
    np.testing.assert_allclose(vals, [1.1, 0.1 + 0.5 * (1 + math.cos(math.pi / 4)), 0.6,
                                      0.1 + 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.1, 0.1])
    assert isinstance(optim.get_schedule("Constant"), optim.ConstantLR)
    with pytest.raises(ValueError, match="constant, cosine, step"):
        optim.get_schedule("linear")
    with pytest.raises(ValueError, match="step_size"):
        optim.StepLR(0)
    with pytest.raises(ValueError, match="gamma"):
        optim.StepLR(2, gamma=0.0)
    with pytest.raises(ValueError, match="total"):
        optim.CosineLR(0)


def test_optimizer_uses_schedule_per_step():
    sched = optim.StepLR(step_size=2, gamma=0.1)
    opt = optim.SGD(lr=1.0, schedule=sched)
    p = {"w": np.zeros(1)}
    lrs = []
    for _ in range(5):
        lrs.append(opt.lr)
        opt.update(p, {"w": np.ones(1)})
    np.testing.assert_allclose(lrs, [1, 1, 0.1, 0.1, 0.01])
    np.testing.assert_allclose(p["w"], [-2.21])
    want = ref_sgd(np.zeros(1), [np.ones(1)] * 5, 1.0, lr_fn=lambda t: sched(t, 1.0))
    np.testing.assert_allclose(p["w"], want)
    # a plain callable and a name work too
    assert optim.SGD(lr=2.0, schedule=lambda t, lr: lr / (t + 1)).lr == 2.0
    assert optim.Adam(schedule="constant").lr == 1e-3
    opt.lr = 3.0  # sets the base lr; the schedule still applies
    assert opt.lr == pytest.approx(3.0 * 0.01)


# ------------------------------------------------------------------------------------------------
# state dict
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, schedule=optim.CosineLR(10)),
    lambda: optim.Adam(lr=0.01, weight_decay=0.01, decoupled=True),
    lambda: optim.SGD(lr=0.05),
])
@pytest.mark.parametrize("via_npz", [False, True])
def test_state_dict_round_trip_continues_identically(make, via_npz, tmp_path):
    rng = np.random.default_rng(4)
    p0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    seq = grad_sequence(8, SHAPES, seed=5)
    a = {k: v.copy() for k, v in p0.items()}
    run(make(), a, seq)  # uninterrupted

    b = {k: v.copy() for k, v in p0.items()}
    first = make()
    run(first, b, seq[:4])
    sd = first.state_dict()
    if via_npz:
        np.savez(tmp_path / "opt.npz", **sd)
        sd = np.load(tmp_path / "opt.npz")
    else:
        json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in sd.items()})
    run(first, {k: v.copy() for k, v in b.items()}, seq[4:5])  # the saved copy must not change
    second = make()
    second.load_state_dict(sd)
    assert second.step_count == 4
    run(second, b, seq[4:])
    for k in SHAPES:
        np.testing.assert_array_equal(a[k], b[k])


def test_state_dict_contents_and_errors():
    opt = optim.Adam()
    p = {"w": np.zeros(2)}
    opt.update(p, {"w": np.ones(2)})
    sd = opt.state_dict()
    assert sd["optimizer"] == "adam" and sd["step_count"] == 1 and sd["keys"] == ["w"]
    assert set(sd) == {"optimizer", "step_count", "keys", "exp_avg/w", "exp_avg_sq/w"}
    with pytest.raises(ValueError, match="optimizer 'sgd', got one of 'adam'"):
        optim.SGD().load_state_dict(sd)
    with pytest.raises(ValueError, match="a buffer of adam"):
        optim.Adam().load_state_dict({**sd, "velocity/w": np.zeros(2)})
    with pytest.raises(ValueError, match="step_count"):
        optim.Adam().load_state_dict({"optimizer": "adam", "keys": []})
    restored = optim.Adam()
    restored.load_state_dict(sd)
    with pytest.raises(ValueError, match="keys changed"):
        restored.update({"v": np.zeros(2)}, {"v": np.ones(2)})
    with pytest.raises(ValueError, match="optimizer state has"):
        restored.update({"w": np.zeros(3)}, {"w": np.ones(3)})


# ------------------------------------------------------------------------------------------------
# convergence
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opt", [optim.SGD(lr=0.1), optim.SGD(lr=0.05, momentum=0.9),
                                 optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                 optim.Adam(lr=0.05), optim.Adam(lr=0.05, schedule=optim.CosineLR(400))])
def test_converges_on_quadratic(opt):
    # f(w) = 0.5 (w - c)^T A (w - c), gradient A (w - c)
    A = np.diag([1.0, 3.0, 0.5])
    c = np.array([1.0, -2.0, 0.5])
    params = {"w": np.zeros(3)}
    for _ in range(400):
        opt.update(params, {"w": A @ (params["w"] - c)})
    np.testing.assert_allclose(params["w"], c, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# registry and validation
# ------------------------------------------------------------------------------------------------

def test_registry():
    assert optim.OPTIMIZERS == {"sgd": optim.SGD, "adam": optim.Adam}
    o = optim.get_optimizer("SGD", lr=0.3, momentum=0.9, nesterov=True)
    assert isinstance(o, optim.SGD) and o.lr == 0.3 and o.nesterov
    assert isinstance(optim.get_optimizer("adam"), optim.Adam)
    with pytest.raises(ValueError, match="known optimizers: adam, sgd"):
        optim.get_optimizer("rmsprop")
    hp = o.hyperparameters
    assert hp["optimizer"] == "sgd" and hp["momentum"] == 0.9
    json.dumps(hp)
    assert "SGD(" in repr(o)


def test_bad_keys_and_shapes():
    opt = optim.SGD(lr=0.1)
    p = {"w": np.zeros(2), "b": np.zeros(1)}
    with pytest.raises(ValueError, match=r"missing in grads: \['b'\]"):
        opt.update(p, {"w": np.zeros(2)})
    with pytest.raises(ValueError, match=r"unknown in grads: \['x'\]"):
        opt.update(p, {"w": np.zeros(2), "b": np.zeros(1), "x": np.zeros(1)})
    with pytest.raises(ValueError, match=r"grads\['w'\]: expected shape \(2,\)"):
        opt.update(p, {"w": np.zeros(3), "b": np.zeros(1)})
    with pytest.raises(TypeError, match=r"params\['w'\]: expected float32 or float64 parameters, got int64"):
        opt.update({"w": np.zeros(2, np.int64)}, {"w": np.zeros(2)})
    with pytest.raises(TypeError, match="ndarray"):
        opt.update({"w": [0.0, 0.0]}, {"w": np.zeros(2)})
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.update({"w": ro}, {"w": np.zeros(2)})
    with pytest.raises(TypeError, match="params: expected a dict"):
        opt.update([np.zeros(2)], {"w": np.zeros(2)})
    assert opt.step_count == 0  # failed updates do not count


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(momentum=1.0)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(nesterov=True)
    with pytest.raises(ValueError, match="clip_value"):
        optim.SGD(clip_value=0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        optim.Adam(clip_norm=-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam(betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="betas"):
        optim.Adam(betas=0.9)
    with pytest.raises(ValueError, match="eps"):
        optim.Adam(eps=0.0)
    with pytest.raises(TypeError, match="schedule"):
        optim.SGD(schedule=3)
    with pytest.raises(ValueError, match="known schedules"):
        optim.SGD(schedule="warmup")
    with pytest.raises(TypeError, match="lr"):
        optim.SGD(lr="0.1")


# ------------------------------------------------------------------------------------------------
# the fused pass over all parameters (issue #39)
# ------------------------------------------------------------------------------------------------

def _numpy_rule(opt, p, g, state, t, lr):
    """The float32/float64 NumPy expressions of one step (the rules of kernels/optim_rules.py, in order)."""
    dt = p.dtype.type
    if isinstance(opt, optim.Adam):
        b1, b2 = opt.betas
        m = state.setdefault("m", np.zeros_like(p))
        v = state.setdefault("v", np.zeros_like(p))
        m[...] = dt(b1) * m + dt(1 - b1) * g
        v[...] = dt(b2) * v + dt(1 - b2) * (g * g)
        p -= dt(lr / (1 - b1 ** t)) * m / (np.sqrt(v / dt(1 - b2 ** t)) + dt(opt.eps))
    else:
        buf = state["buf"] = g.copy() if "buf" not in state else dt(opt.momentum) * state["buf"] + g
        p -= dt(lr) * (g + dt(opt.momentum) * buf if opt.nesterov else buf)


@pytest.mark.parametrize("make", [lambda: optim.Adam(lr=0.01), lambda: optim.SGD(lr=0.05, momentum=0.9),
                                  lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_pass_equals_the_rule_per_parameter_bit_for_bit(make, threads, monkeypatch):
    """One pass over arrays of several sizes (one larger than a chunk, so it spans several) and two dtypes gives
    each entry the bits of the rule applied to that parameter alone, run as blocks of rows (on one thread, or shared
    by two); a parameter replaced by a new array between steps is updated (the kept tuples of flat views follow the
    arrays)."""
    import numba

    from sbnnumba import blockpool, runtime
    from sbnnumba.kernels.optim_rules import CHUNK

    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs a Numba pool of 2 threads")
    monkeypatch.setitem(runtime.MIN_WORK_PER_THREAD, "update", 1)  # the pass is cut into blocks
    monkeypatch.setattr(blockpool, "current_cpu", lambda: -1)  # the helper takes blocks wherever it wakes ...
    monkeypatch.setattr(blockpool.POOL, "_alone_left", 0)  # ... and no earlier call left the pool running alone
    calls = []
    for name in ("adam_rows", "sgd_rows"):
        kernel = getattr(optim, name)
        monkeypatch.setattr(optim, name,  # records (dtype, r0, r1) of each call
                            lambda *a, kernel=kernel: calls.append((a[0][0].dtype,) + a[5:7]) or kernel(*a))
    rng = np.random.default_rng(7)
    shapes = {"big": (3, CHUNK + 5), "bias": (4,), "one": (1,), "double": (5, 6)}
    params = {k: rng.normal(size=s).astype(np.float64 if k == "double" else np.float32) for k, s in shapes.items()}
    want = {k: v.copy() for k, v in params.items()}
    opt, states = make(), {k: {} for k in shapes}
    with runtime.limited_threads(threads):
        for t in range(1, 4):
            grads = {k: rng.normal(size=s).astype(params[k].dtype) for k, s in shapes.items()}
            if t == 3:
                params["bias"] = params["bias"].copy()  # a new array: its list item must be replaced
            calls.clear()
            opt.update(params, grads)
            for k in shapes:
                _numpy_rule(opt, want[k], grads[k], states[k], t, opt.base_lr)
                assert params[k].tobytes() == want[k].tobytes(), (k, t)
            float32_rows = len(opt._chunks_of([params[k] for k in ("big", "bias", "one")]))  # 4 + 1 + 1
            assert [c[1:] for c in calls if c[0] == np.float64] == [(0, 1)]  # one row, one call
            float32 = sorted(c[1:] for c in calls if c[0] == np.float32)
            assert len(float32) > 1 and float32[0][0] == 0 and float32[-1][1] == float32_rows  # blocks: every row
            assert all(a[1] == b[0] for a, b in zip(float32, float32[1:]))  # once


def test_chunk_table_covers_every_entry_once():
    from sbnnumba.kernels.optim_rules import CHUNK, chunk_table

    sizes = [2 * CHUNK + 3, 1, 0, CHUNK]
    table = chunk_table(sizes)
    assert table.dtype == np.int64 and table.shape[1] == 3
    assert ((table[:, 2] - table[:, 1]) <= CHUNK).all()
    for j, size in enumerate(sizes):
        rows = table[table[:, 0] == j]
        covered = np.concatenate([np.arange(lo, hi) for _, lo, hi in rows]) if len(rows) else np.array([], int)
        np.testing.assert_array_equal(covered, np.arange(size))
