"""One conformance test for every layer and wrapper type (#33): the declared Layer interface
(sbnnumba.layers.Layer) checked against finite differences, the transposed map, brute-force flips and
the weight-parameterization contract, the same way for Linear, Conv2d, Normalized and Bernoulli weights."""
import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba.layers import AffineLayer, Layer
from sbnnumba.normalization import Normalized
from sbnnumba.weights import BernoulliWeights, RealWeights

NOISE = sb.get_noise("logistic")


def _make(kind, rng):
    """(layer, per-example input shape)."""
    weight = "bernoulli" if "bernoulli" in kind else "real"
    if kind.startswith("linear"):
        layer, shape = sb.Linear(5, 4, rng=rng, dtype=np.float64, weight=weight), (5,)
    else:
        layer, shape = sb.Conv2d(2, 3, 3, stride=2, padding=1, rng=rng, dtype=np.float64, weight=weight), (2, 5, 4)
    if "normalized" in kind:
        layer = Normalized(layer, gamma=1.3)
        layer.beta[:] = rng.normal(size=layer.beta.shape)
        n = layer.gamma.size
        layer.running["stochastic"] = (rng.normal(size=n), 0.5 + rng.random(n))
    return layer, shape


KINDS = ["linear", "conv", "linear-bernoulli", "conv-bernoulli", "linear-normalized", "conv-normalized",
         "linear-bernoulli-normalized", "conv-bernoulli-normalized"]


def _fd_check(fn, arr, analytic, h=1e-6, atol=1e-6):
    """Central differences of the scalar ``fn()`` w.r.t. every entry of ``arr`` (changed in place and restored)."""
    fd = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + h
        plus = fn()
        arr[idx] = old - h
        minus = fn()
        arr[idx] = old
        fd[idx] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(analytic, fd, atol=atol, rtol=1e-6)


def _case(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    layer, shape = _make(kind, rng)
    return kind, layer, shape, rng


@pytest.fixture(params=KINDS)
def case(request):
    return _case(request.param)


# Training mode for every kind; evaluation mode where it differs from it (only normalization has a mode).
MODES = [(kind, training) for kind in KINDS for training in (True, False) if training or "normalized" in kind]


def test_declared_interface_and_accessors(case):
    kind, layer, shape, _ = case
    assert isinstance(layer, Layer) and isinstance(layer.inner, AffineLayer) and layer.inner.inner is layer.inner
    assert (layer.normalization is layer) == ("normalized" in kind)
    assert layer.inner.normalization is None
    param = layer.inner.weight_param
    assert isinstance(param, BernoulliWeights if "bernoulli" in kind else RealWeights)
    assert (layer.latent is param) == ("bernoulli" in kind)
    names = ["eta" if "bernoulli" in kind else "weight", "bias"] + (["gamma", "beta"] if "normalized" in kind else [])
    assert list(layer.params()) == names and layer.param_names == tuple(names)
    assert layer.output_shape(shape) == layer.out_shape and layer.n_out == int(np.prod(layer.out_shape))
    with pytest.raises(ValueError, match="x:"):
        layer.output_shape((7,) + shape)


def test_params_are_the_arrays_in_use(case):
    """Changing a parameter array in place changes the forward pass (optimizers update them in place)."""
    kind, layer, shape, rng = case
    if "normalized" in kind:  # fixed statistics: with batch statistics the bias has no effect
        layer.training = False
    x = np.sign(rng.normal(size=(3,) + shape))
    before = layer.forward(x).copy()
    for name, p in layer.params().items():
        saved = p.copy()
        p += 0.25 if name != "eta" else -2 * np.sign(p) * (np.abs(p) + 0.1)  # eta: flip every sign(eta)
        assert not np.allclose(layer.forward(x), before), name
        p[...] = saved
    np.testing.assert_array_equal(layer.forward(x), before)


@pytest.mark.parametrize("kind, training", MODES)
def test_param_grads_and_backward_input_match_finite_differences(kind, training):
    """``param_grads`` and ``backward_input`` are the gradients of ``L = sum(g * forward(x))``: w.r.t. each
    parameter (the weight tensor in use for Bernoulli weights, through a with_weight view) and the input;
    normalization in training mode differentiates through the batch statistics."""
    kind, layer, shape, rng = _case(kind)
    if "normalized" in kind:
        layer.training = training
        layer.stats_mode = "stochastic"
        layer.momentum = 1e-300 if training else layer.momentum  # keep the running statistics still
    x = rng.normal(size=(4,) + shape)
    g = rng.normal(size=(4,) + layer.output_shape(shape))
    w = layer.inner.weight.copy()
    view = layer.with_weight(w)

    def loss():
        return float(np.sum(g * view.forward(x)))

    loss()
    grads = view.param_grads(x, g)
    g_x = view.backward_input(g, shape)
    for name, p in layer.params().items():
        if name != "eta":
            _fd_check(loss, w if name == "weight" else p, grads[name])
    if "bernoulli" in kind:
        _fd_check(loss, w, grads["weight"])  # dL/dw at the weights in use
    _fd_check(loss, x, g_x)


def test_forward_moments_are_exact_for_independent_inputs(case):
    """``mu_a = forward(mean)`` and ``v_a = sum_i J_ji^2 var_i`` with ``J`` the layer's Jacobian (fixed statistics)."""
    kind, layer, shape, rng = case
    if "normalized" in kind:
        layer.training, layer.stats_mode = False, "stochastic"
    mean, var = rng.normal(size=(2,) + shape), rng.random((2,) + shape)
    mu_a, v_a = layer.forward_moments(mean, var)
    np.testing.assert_allclose(mu_a, layer.forward(mean), atol=1e-12)
    out = layer.output_shape(shape)
    rows = []
    layer.forward(np.zeros((1,) + shape))  # a one-row forward pass for the one-row backward passes below
    for j in range(int(np.prod(out))):
        e = np.zeros((1,) + out)
        e.reshape(-1)[j] = 1
        rows.append(layer.backward_input(e, shape).reshape(-1))
    jac = np.array(rows)  # (n_out, n_in): the linear part of the map
    want = (jac ** 2 @ var.reshape(2, -1).T).T.reshape(v_a.shape)
    np.testing.assert_allclose(v_a, want, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_flip_propagate_equals_brute_force_flips(case, backend):
    """``d_in[b, i] = sum_j (F(-x_j (a_j - Delta_ij)) - F(-x_j a_j)) d_out[b, j]`` with ``Delta_ij`` the change
    of ``a_j`` when input ``i`` flips, computed by flipping and re-running the forward pass."""
    kind, layer, shape, rng = case
    if "normalized" in kind:
        layer.training, layer.stats_mode = False, "stochastic"
    x = np.sign(rng.normal(size=(3,) + shape))
    a = layer.forward(x)
    x_out = NOISE.sample(a, rng.random(a.shape))
    d_out = rng.normal(size=a.shape)
    got = layer.flip_propagate(x, a, x_out, d_out, NOISE, backend)
    want = np.zeros_like(x)
    for idx in np.ndindex(shape):
        flipped = x.copy()
        flipped[(slice(None),) + idx] *= -1
        delta = a - layer.forward(flipped)
        change = NOISE.cdf(-x_out * (a - delta)) - NOISE.cdf(-x_out * a)
        want[(slice(None),) + idx] = (change * d_out).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_with_weight_is_a_view_and_leaves_the_layer_unchanged(case):
    kind, layer, shape, rng = case
    x = rng.normal(size=(2,) + shape)
    before, weight_before = layer.forward(x), layer.inner.weight.copy()
    w = np.sign(rng.normal(size=weight_before.shape))
    view = layer.with_weight(w)
    assert view.inner.weight is w and view.params()["bias"] is layer.params()["bias"]
    assert isinstance(view, type(layer)) and (view.normalization is view) == ("normalized" in kind)
    if "normalized" not in kind:
        np.testing.assert_allclose(view.forward(x), layer.with_weight(w).forward(x))
    np.testing.assert_array_equal(layer.inner.weight, weight_before)
    np.testing.assert_array_equal(layer.forward(x), before)


def test_rescale_normalizes_the_preactivations(case):
    """``rescale_(m, s)`` returns a layer (itself, or a view where weights cannot be scaled) computing
    ``(a - m) / s`` for plain affine layers; a wrapper keeps its own map around the rescaled layer."""
    kind, layer, shape, rng = case
    x = rng.normal(size=(3,) + shape)
    inner_before = layer.inner.forward(x)
    n = layer.inner.bias.size
    m, s = rng.normal(size=n), 0.5 + rng.random(n)
    rescaled = layer.rescale_(m, s)
    assert isinstance(rescaled, type(layer))
    bshape = (1, -1) + (1,) * (inner_before.ndim - 2)
    np.testing.assert_allclose(rescaled.inner.forward(x), (inner_before - m.reshape(bshape)) / s.reshape(bshape),
                               atol=1e-12)
    assert (rescaled is layer) == ("bernoulli" not in kind)


def test_normalized_public_affine_map_equals_its_evaluation_forward():
    rng = np.random.default_rng(3)
    layer, shape = _make("conv-normalized", rng)
    layer.running["deterministic"] = (rng.normal(size=3), 0.2 + rng.random(3))
    x = rng.normal(size=(2,) + shape)
    for mode in ("stochastic", "deterministic"):
        layer.training, layer.stats_mode = False, mode
        np.testing.assert_array_equal(layer.affine(layer.inner.forward(x), mode), layer.forward(x))
