"""Property-based tests over the public API (#41): random shapes, dtypes and values (NaN, inf, empty, huge)
give a result or a TypeError / ValueError whose message names the argument, never anything else.

Derandomized (the same inputs on every run); the number of inputs tried is printed at the end of the
module (``pytest -s``) and quoted in docs/robustness.md.
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sbnnumba as sb
from sbnnumba import inputs
from sbnnumba.packed import PackedNetwork

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_, np.complex64]
TRIED = {"inputs": 0}

_NET = sb.Network.dense([4, 3, 3], 3, rng=0)
_BERNOULLI = sb.Network.dense([4, 3], 3, rng=1, weight="bernoulli")
_PACKED = PackedNetwork.from_network(_BERNOULLI)


@st.composite
def arrays(draw, dims=(0, 3)):
    """Arrays of any listed dtype and shape, with NaN, inf, huge and tiny values where the dtype allows."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=dims[0], max_dims=dims[1], min_side=0, max_side=5))
    if draw(st.booleans()):  # often the expected feature count, so the checks get past the shape
        shape = shape[:1] + (4,) if len(shape) >= 1 else (2, 4)
    if dtype.kind == "f":
        elements = st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True)
    elif dtype.kind == "c":
        elements = st.complex_numbers(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _labels():
    return st.one_of(hnp.arrays(st.sampled_from([np.int64, np.int8, np.float64, np.uint8]),
                                hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5)),
                     st.lists(st.integers(-5, 5), max_size=5))


def _result_or_named_error(call, names):
    """Run ``call``; it returns, or raises TypeError / ValueError whose message names one of ``names``."""
    TRIED["inputs"] += 1
    try:
        with np.errstate(all="ignore"):
            return call()
    except (TypeError, ValueError) as exc:
        message = str(exc)
        assert re.search(r"\b(" + "|".join(map(re.escape, names)) + r")\b", message), \
            f"{type(exc).__name__} without the argument's name: {message}"
        return None


@SETTINGS
@given(x=arrays(), y=_labels(), method=st.sampled_from(["psa", "st", "exact", "arm", "reinforce", "concrete"]))
def test_estimate(x, y, method):
    result = _result_or_named_error(lambda: sb.estimate(method, _NET, x, y, rng=0), ["x", "y"])
    if result is not None:
        loss, grads = result
        assert np.isfinite(loss) and set(grads) == set(_NET.params)


@SETTINGS
@given(x=arrays(), samples=st.integers(-2, 3), mode=st.sampled_from(["stochastic", "deterministic", "other"]))
def test_predict(x, samples, mode):
    result = _result_or_named_error(lambda: _NET.predict(x, samples=samples, rng=0, mode=mode),
                                    ["x", "samples", "mode"])
    if result is not None:
        assert result.shape == (x.shape[0],) and np.all((0 <= result) & (result < 3))


@SETTINGS
@given(x=arrays())
def test_forward_deterministic_and_packed_predict(x):
    logits = _result_or_named_error(lambda: _BERNOULLI.forward_deterministic(x), ["x"])
    packed = _result_or_named_error(lambda: _PACKED.predict_logits(x), ["x"])
    assert (logits is None) == (packed is None)  # the float and packed forms accept the same inputs
    if logits is not None:
        assert np.array_equal(np.argmax(logits, 1), np.argmax(packed, 1))


@SETTINGS
@given(x=arrays(dims=(0, 4)), convention=st.sampled_from([None, inputs.PIXELS]))
def test_to_float(x, convention):
    out = _result_or_named_error(lambda: inputs.to_float(x, np.float32, convention), ["x"])
    if out is not None:
        assert out.dtype == np.float32 and out.shape == x.shape and np.all(np.isfinite(out))


def teardown_module(module):
    print(f"\ntest_fuzz: {TRIED['inputs']} inputs tried")


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(x=arrays(), y=_labels(), method=st.sampled_from(["psa", "st", "exact", "arm", "reinforce", "concrete"]))
def test_estimate_long(x, y, method):
    test_estimate.hypothesis.inner_test(x, y, method)
