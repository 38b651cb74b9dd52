r"""Generate the language-neutral conformance vectors ``conformance/v1/*.json`` from the library.

Usage::

    python tools/make_conformance.py            # rewrite conformance/v1/
    python tools/make_conformance.py --check    # exit 1 if regeneration would change a file

Every input is drawn here from a seeded ``numpy.random.default_rng`` and stored in the files, so a
reader needs no NumPy random stream; the expected outputs come from the library's public entry
points (:func:`sbnnumba.estimate`, :class:`sbnnumba.Network`, the noise families, :mod:`sbnnumba.bitpack`,
:class:`sbnnumba.PackedNetwork`, :mod:`sbnnumba.optim`). Weights, biases and inputs are dyadic
rationals (multiples of 1/64), so every affine map of +-1 states is exact in float64 whatever the
summation order; the remaining float differences between machines come from ``exp``/``erfc``.
The file format is described in ``conformance/README.md``; the formulas in ``docs/spec.md``.

Given uniforms reach the estimators through :class:`ReplayGenerator`, a ``numpy.random.Generator``
whose ``random(shape, dtype)`` returns stored arrays in the documented draw order (docs/spec.md,
"Randomness"): the uniforms of each Bernoulli weight tensor in stage order, then one array per stage.

This module's size (over 600 lines) is one generator per topic next to the writer they share.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import sbnnumba as sb
from sbnnumba import bitpack
from sbnnumba.kernels import reference as kernel_reference

VERSION = 1
ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "conformance" / f"v{VERSION}"
NOISES = ("logistic", "normal", "uniform", "triangular")
DENOM = 64.0  # parameters and inputs are multiples of 1/64: affine maps of +-1 states are exact
MARGIN = 1e-6  # minimum |u - F(a)| and |a| where a sample or a sign decides an exact output
STRICT = True  # refuse inputs near a tie (off only to recompute outputs of a deliberately perturbed library)


class NearTie(RuntimeError):
    """An input that would make a vector hinge on rounding (a sample or sign at a tie, a zero variance)."""


def refuse(message):
    if STRICT:
        raise NearTie(f"{message}; change the seed")


# ------------------------------------------------------------------------------------------ encoding
def encode(x, dtype=None):
    """An array as ``{"dtype", "shape", "data"}`` with ``data`` flat in C order (see conformance/README.md)."""
    x = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    if x.dtype == np.uint64:
        raise TypeError("encode: uint64 is not stored (JSON numbers above 2^53 are not portable); use words32")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise ValueError("encode: expected finite values (JSON has no inf/NaN)")
        data = [float(v) for v in x.ravel()]
    elif x.dtype.kind == "b":
        data = [bool(v) for v in x.ravel()]
    else:
        data = [int(v) for v in x.ravel()]
    return {"dtype": str(x.dtype), "shape": [int(s) for s in x.shape], "data": data}


def words32(words64):
    """uint64 words -> uint32 words, low half first (the little-endian / Larq Compute Engine view)."""
    w = np.asarray(words64, dtype=np.uint64)
    low = (w & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = (w >> np.uint64(32)).astype(np.uint32)
    return np.stack([low, high], axis=-1).reshape(w.shape[:-1] + (2 * w.shape[-1],))


def _dump(value, indent):
    """JSON text with objects indented and lists of scalars on one line (diffable, compact)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f'{pad} {json.dumps(k)}: {_dump(v, indent + 1)}' for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad} {_dump(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def dumps(document):
    return _dump(document, 0) + "\n"


def case(case_id, operation, description, inputs, expected, atol=0.0, rtol=0.0, flags=()):
    """One case: integer/bool outputs compare exactly, float ones with |got - exp| <= atol + rtol |exp|."""
    return {"id": case_id, "operation": operation, "description": description, "flags": list(flags),
            "atol": atol, "rtol": rtol, "inputs": inputs, "expected": expected}


def document(topic, description, cases):
    return {"format": "sbnnumba-conformance", "version": VERSION, "topic": topic,
            "spec": f"docs/spec.md#{topic}", "description": description, "cases": cases}


def dyadic(rng, shape, scale=1.0):
    """Normal(0, scale) values rounded to multiples of 1/64 (exactly representable, exact sums)."""
    return np.round(rng.normal(0.0, scale, shape) * DENOM) / DENOM


def pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)


# ------------------------------------------------------------------------------- uniforms replayed
class ReplayGenerator(np.random.Generator):
    """A ``numpy.random.Generator`` whose ``random`` returns stored uniforms in order (docs/spec.md).

    The library draws every uniform it uses through ``rng.random(shape, dtype=...)``; this replays
    the arrays of a conformance case instead, and raises if the library asks for another shape, or
    for more or fewer arrays than stored (:meth:`finish`). No other method may be called.
    """

    def __init__(self, arrays):
        super().__init__(np.random.PCG64(0))
        self._arrays = [np.asarray(a) for a in arrays]
        self._next = 0

    def random(self, size=None, dtype=np.float64, out=None):
        if out is not None or self._next >= len(self._arrays):
            raise RuntimeError(f"ReplayGenerator: unexpected draw number {self._next} of shape {size}")
        arr = self._arrays[self._next]
        if tuple(np.atleast_1d(size)) != arr.shape:
            raise RuntimeError(f"ReplayGenerator: draw {self._next} has shape {size}, stored {arr.shape}")
        self._next += 1
        return arr.astype(dtype, copy=True)

    def __getattribute__(self, name):
        allowed = ("random", "finish", "_arrays", "_next", "__class__", "__dict__", "__init__")
        if name.startswith("__") or name in allowed:
            return super().__getattribute__(name)
        raise RuntimeError(f"ReplayGenerator: the library called rng.{name}, which cannot be replayed")

    def finish(self):
        if self._next != len(self._arrays):
            raise RuntimeError(f"ReplayGenerator: {len(self._arrays) - self._next} stored arrays were not used")


# ------------------------------------------------------------------------------------ networks
def stage_desc(kind, n_in, n_out, weight="real", batch_norm=False, kernel=(3, 3), stride=(1, 1), padding=(0, 0),
               weight_noise="logistic", weight_grad="md"):
    d = {"type": kind}
    if kind == "dense":
        d.update(n_in=n_in, n_out=n_out)
    else:
        d.update(c_in=n_in, c_out=n_out, kernel_size=list(kernel), stride=list(stride), padding=list(padding))
    d.update(weight=weight, weight_noise=weight_noise if weight == "bernoulli" else None,
             weight_grad=weight_grad if weight == "bernoulli" else None,
             batch_norm={"eps": 1e-5} if batch_norm else None)
    return d


def network_desc(noise, input_shape, stages, n_classes, dtype="float64"):
    shapes, shape = [], tuple(input_shape)
    for st in stages:
        if st["type"] == "dense":
            shape = (st["n_out"],)
        else:
            (kh, kw), (sh, sw), (ph, pw) = st["kernel_size"], st["stride"], st["padding"]
            shape = (st["c_out"], (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)
        shapes.append(shape)
    head = {"n_in": int(np.prod(shape)), "n_out": n_classes}
    return {"noise": noise, "dtype": dtype, "input_shape": list(input_shape), "stages": stages, "head": head,
            "stage_shapes": [list(s) for s in shapes]}


def random_params(rng, desc, in_shape):
    """Dyadic parameters keyed like ``Network.params``; latent eta within [-1, 1] for uniform weight noise."""
    params, shape = {}, tuple(in_shape)
    for k, st in enumerate(desc["stages"]):
        if st["type"] == "dense":
            wshape, fan_in = (st["n_out"], int(np.prod(shape))), int(np.prod(shape))
        else:
            wshape = (st["c_out"], st["c_in"]) + tuple(st["kernel_size"])
            fan_in = int(np.prod(wshape[1:]))
        if st["weight"] == "bernoulli":
            eta = dyadic(rng, wshape, 1.0)
            params[f"stages.{k}.eta"] = np.clip(eta, -1, 1) if st["weight_noise"] == "uniform" else eta
            w_scale = 1.0
        else:
            params[f"stages.{k}.weight"] = dyadic(rng, wshape, 1.5 / np.sqrt(fan_in))
            w_scale = 1.5 / np.sqrt(fan_in)
        params[f"stages.{k}.bias"] = dyadic(rng, (wshape[0],), 0.5 * w_scale)
        if st["batch_norm"]:
            params[f"stages.{k}.gamma"] = np.round((0.5 + rng.random(wshape[0])) * DENOM) / DENOM
            params[f"stages.{k}.beta"] = dyadic(rng, (wshape[0],), 0.25)
        shape = tuple(desc["stage_shapes"][k])
    params["head.weight"] = dyadic(rng, (desc["head"]["n_out"], desc["head"]["n_in"]), 1.0)
    params["head.bias"] = dyadic(rng, (desc["head"]["n_out"],), 0.5)
    return params


def build_network(desc, params):
    """The library network described by ``desc`` with ``params`` (batch norm in training mode)."""
    dtype = np.dtype(desc["dtype"])
    stages = []
    for st in desc["stages"]:
        options = dict(rng=0, dtype=dtype, weight=st["weight"])
        if st["weight"] == "bernoulli":
            options.update(weight_noise=st["weight_noise"], weight_grad=st["weight_grad"])
        if st["type"] == "dense":
            layer = sb.Linear(st["n_in"], st["n_out"], **options)
        else:
            layer = sb.Conv2d(st["c_in"], st["c_out"], tuple(st["kernel_size"]), stride=tuple(st["stride"]),
                              padding=tuple(st["padding"]), **options)
        stages.append(sb.Normalized(layer, eps=st["batch_norm"]["eps"]) if st["batch_norm"] else layer)
    head = sb.Linear(desc["head"]["n_in"], desc["head"]["n_out"], rng=0, dtype=dtype)
    net = sb.Network(stages, head, noise=desc["noise"], backend="cpu")
    current = net.params
    if set(current) != set(params):
        raise ValueError(f"params: expected keys {sorted(current)}, got {sorted(params)}")
    for key, value in params.items():
        current[key][...] = value
    net.apply_constraints()
    return net


def draw_uniforms(rng, net, desc, batch, dtype):
    """Named uniforms in the library's draw order: Bernoulli weight tensors, then one array per stage."""
    out = {}
    for k, st in enumerate(desc["stages"]):
        if st["weight"] == "bernoulli":
            out[f"weight.stages.{k}"] = rng.random(net.params[f"stages.{k}.eta"].shape).astype(dtype)
    for k, shape in enumerate(desc["stage_shapes"]):
        out[f"activation.stages.{k}"] = rng.random((batch,) + tuple(shape)).astype(dtype)
    return out


def sample_path(net, desc, x, uniforms):
    """Sample with the stored uniforms through ``Network.sample``; checks that no sample is a near tie."""
    weight_u = {f"stages.{k}": uniforms[f"weight.stages.{k}"] for k, st in enumerate(desc["stages"])
                if st["weight"] == "bernoulli"}
    act_u = [uniforms[f"activation.stages.{k}"] for k in range(len(desc["stages"]))]
    path = net.sample(x, uniforms=act_u, weight_uniforms=weight_u)
    for k, st in enumerate(path.stages):
        gap = np.abs(act_u[k] - net.noise.cdf(st.pre)).min()
        if gap < MARGIN:
            refuse(f"sample_path: stage {k} has a near tie u ~ F(a) ({gap:.2g})")
        if desc["stages"][k]["batch_norm"]:
            # var(a) = gamma^2 var(z) / (var(z) + eps): near 0 when a unit's batch variance is, and then
            # 1 / sqrt(var + eps) amplifies every rounding difference (an ill-conditioned vector)
            axes = (0,) + tuple(range(2, st.pre.ndim))
            ratio = st.pre.var(axis=axes) / net.params[f"stages.{k}.gamma"].astype(np.float64) ** 2
            if ratio.min() < 0.5:
                refuse(f"sample_path: stage {k} has a unit with batch variance ~ 0")
    return path


def network_inputs(desc, params, x, uniforms=None, y=None):
    inputs = {"network": desc, "params": {k: encode(v) for k, v in params.items()}, "x": encode(x)}
    if y is not None:
        inputs["y"] = encode(np.asarray(y, dtype=np.int64))
    if uniforms is not None:
        inputs["uniforms"] = {k: encode(v) for k, v in uniforms.items()}
    return inputs


# ------------------------------------------------------------------------------------ topics
A_GRID = [-40.0, -20.0, -8.0, -3.0, -1.5, -1.0, -0.75, -0.5, -0.25, -0.001, 0.0, 0.001, 0.25, 0.5, 0.75, 1.0,
          1.5, 3.0, 8.0, 20.0, 40.0]
# (u, v) pairs for F(u) - F(v). Tails (both arguments on one side, or at the ends of a bounded support):
# the stable form keeps full relative accuracy where F(u) - F(v) of two numbers near 1 would lose it.
# Middle: the difference of two values near 1/2 carries their absolute rounding (about 1e-16), in any form.
DIFF_TAILS = [(30.0, 29.0), (20.0, 19.5), (8.0, 7.5), (5.0, 4.0), (-8.0, -8.5), (-30.0, -31.0), (1.5, 0.999),
              (-0.999, -1.5)]
DIFF_ENDS = [(0.9999, 0.9998), (-0.9998, -0.9999)]  # the ends of [-1, 1]: tails of uniform and triangular only
DIFF_MIDDLE = [(2.0, 1.0), (0.5, 0.25), (0.25, -0.25), (5.0, -5.0), (-0.25, -0.5), (0.75, 0.7499), (0.001, -0.001)]
U_GRID = [1e-12, 1e-6, 0.01, 0.1, 0.25, 0.4999, 0.5, 0.5001, 0.75, 0.9, 0.99, 0.999999]


def sample_inputs(rng, family, n, dtype):
    """Pre-activations and uniforms with no near tie ``u ~ F(a)`` (an exact output must not hinge on one ulp)."""
    a = (rng.normal(0.0, 1.5, n)).astype(dtype)
    u = rng.random(n).astype(dtype)
    gap = np.abs(u.astype(np.float64) - family.cdf(a).astype(np.float64))
    u = np.where(gap < 1e-4, (u + dtype(0.5)) % dtype(1), u).astype(dtype)
    if np.abs(u.astype(np.float64) - family.cdf(a).astype(np.float64)).min() < 1e-4:
        refuse("sample_inputs: near tie left")
    return a, u


def topic_noise():
    cases = []
    for index, name in enumerate(NOISES):
        family = sb.get_noise(name)
        rng = np.random.default_rng(100 + index)
        a = np.concatenate([A_GRID, np.round(rng.normal(0, 2, 9), 6)])
        cases.append(case(f"noise/{name}/cdf-pdf", "noise.cdf_pdf",
                          f"F(a) and p(a) of {name} noise, tails included (F accurate in the lower tail)",
                          {"noise": name, "a": encode(a)}, {"cdf": encode(family.cdf(a)), "pdf": encode(family.pdf(a))},
                          atol=1e-300, rtol=1e-12, flags=["float64"]))
        u = np.concatenate([U_GRID, np.round(rng.random(6), 6)])
        cases.append(case(f"noise/{name}/quantile", "noise.quantile", f"F^-1(u) of {name} noise",
                          {"noise": name, "u": encode(u)}, {"z": encode(family.quantile(u))},
                          atol=1e-14, rtol=1e-10, flags=["float64"]))
        bounded = float(family.cdf(np.float64(1.0))) == 1.0  # support [-1, 1]
        tails, middle = (DIFF_TAILS + DIFF_ENDS, DIFF_MIDDLE) if bounded else (DIFF_TAILS, DIFF_MIDDLE + DIFF_ENDS)
        for part, pairs, atol in (("tails", tails, 1e-300), ("middle", middle, 1e-15)):
            u, v = np.array(pairs).T
            cases.append(case(f"noise/{name}/cdf-diff-{part}", "noise.cdf_diff",
                              f"F(u) - F(v) of {name} noise ({part}; stable form: F(-v) - F(-u) when u + v > 0)",
                              {"noise": name, "u": encode(u), "v": encode(v)},
                              {"diff": encode(kernel_reference.cdf_diff(family, u, v))},
                              atol=atol, rtol=1e-12, flags=["float64"]))
        for dtype, flag in ((np.float64, "float64"), (np.float32, "float32")):
            a, u = sample_inputs(rng, family, 24, dtype)
            x = family.sample(a, u)
            cases.append(case(f"noise/{name}/sample-{flag}", "noise.sample",
                              f"x = +1 if u < F(a) else -1 ({name}, {flag}; no u within 1e-4 of F(a))",
                              {"noise": name, "a": encode(a), "u": encode(u)}, {"x": encode(x.astype(np.int8))},
                              flags=["exact-integer", flag]))
    return document("noise", "The four noise families: F, p, the quantile, a binary sample from a given uniform.",
                    cases)


def forward_case(case_id, description, desc, seed, batch):
    rng = np.random.default_rng(seed)
    params = random_params(rng, desc, desc["input_shape"])
    x = dyadic(rng, (batch,) + tuple(desc["input_shape"]), 1.0)
    net = build_network(desc, params)
    uniforms = draw_uniforms(rng, net, desc, batch, np.dtype(desc["dtype"]))
    path = sample_path(net, desc, x, uniforms)
    expected = {}
    for k in range(len(desc["stages"])):
        if f"stages.{k}" in path.weights:
            expected[f"weight.stages.{k}"] = encode(path.weights[f"stages.{k}"].astype(np.int8))
    for k, st in enumerate(path.stages):
        expected[f"pre.stages.{k}"] = encode(st.pre)
        expected[f"state.stages.{k}"] = encode(st.state.astype(np.int8))
    expected["logits"] = encode(path.logits)
    return case(case_id, "network.sample", description, network_inputs(desc, params, x, uniforms), expected,
                atol=1e-12, rtol=1e-10, flags=["float64"])


def topic_forward():
    dense = network_desc("logistic", [4], [stage_desc("dense", 4, 5), stage_desc("dense", 5, 3)], 2)
    bern = network_desc("normal", [4], [stage_desc("dense", 4, 5, batch_norm=True),
                                        stage_desc("dense", 5, 4, weight="bernoulli", batch_norm=True)], 3)
    conv = network_desc("uniform", [2, 5, 5], [
        stage_desc("conv", 2, 3, kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
        stage_desc("conv", 3, 2, kernel=(2, 2), weight="bernoulli", weight_noise="uniform")], 3)
    convbn = network_desc("triangular", [1, 6, 5], [
        stage_desc("conv", 1, 2, kernel=(3, 2), stride=(2, 1), padding=(1, 0), batch_norm=True),
        stage_desc("dense", 24, 3)], 2)
    return document("forward", "Forward sampling of small dense and conv networks from given uniforms.", [
        forward_case("forward/dense-logistic", "4-5-3 dense SBN, logistic noise, 2-logit head", dense, 200, 3),
        forward_case("forward/dense-bn-bernoulli-normal",
                     "dense SBN with batch norm (batch statistics) and Bernoulli weights in stage 1, normal noise",
                     bern, 201, 4),
        forward_case("forward/conv-stride-pad-uniform",
                     "conv 3x3 stride 2 padding 1, then conv 2x2 with Bernoulli weights (uniform weight noise)",
                     conv, 202, 2),
        forward_case("forward/conv-bn-dense-triangular",
                     "conv 3x2 kernel, stride (2,1), padding (1,0), batch norm, then a dense stage; triangular noise",
                     convbn, 203, 3),
    ])


def topic_exact():
    specs = [
        ("exact/dense-logistic-3class", network_desc("logistic", [3], [stage_desc("dense", 3, 4),
                                                                       stage_desc("dense", 4, 3)], 3), 3, 300),
        ("exact/dense-normal-1logit", network_desc("normal", [2], [stage_desc("dense", 2, 3),
                                                                   stage_desc("dense", 3, 2)], 1), 2, 301),
        ("exact/conv-logistic", network_desc("logistic", [1, 3, 3], [stage_desc("conv", 1, 2, kernel=(2, 2)),
                                                                     stage_desc("dense", 8, 3)], 2), 2, 302),
    ]
    cases = []
    for case_id, desc, batch, seed in specs:
        rng = np.random.default_rng(seed)
        params = random_params(rng, desc, desc["input_shape"])
        x = dyadic(rng, (batch,) + tuple(desc["input_shape"]), 1.0)
        y = rng.integers(0, max(desc["head"]["n_out"], 2), batch)
        loss, grads = sb.estimate("exact", build_network(desc, params), x, y)
        expected = {"loss": encode(np.float64(loss))}
        expected.update({f"grad.{k}": encode(g) for k, g in grads.items()})
        cases.append(case(case_id, "exact.loss_grad", "batch-mean expected loss and its exact gradient by enumeration",
                          network_inputs(desc, params, x, y=y), expected, atol=1e-12, rtol=1e-9, flags=["float64"]))
    return document("exact", "Exact expected loss and gradient of tiny networks (enumeration of every state).",
                    cases)


def gradient_case(case_id, method, description, desc, seed, batch, options=None, tol=(1e-11, 1e-9)):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(desc["dtype"])
    params = {k: v.astype(dtype) for k, v in random_params(rng, desc, desc["input_shape"]).items()}
    x = dyadic(rng, (batch,) + tuple(desc["input_shape"]), 1.0).astype(dtype)
    y = rng.integers(0, max(desc["head"]["n_out"], 2), batch)
    net = build_network(desc, params)
    uniforms = draw_uniforms(rng, net, desc, batch, dtype)
    path = sample_path(net, desc, x, uniforms)  # the states the estimator sees, for readers and the tie check
    replay = ReplayGenerator(list(uniforms.values()))
    loss, grads = sb.estimate(method, build_network(desc, params), x, y, rng=replay, **(options or {}))
    replay.finish()
    expected = {f"state.stages.{k}": encode(st.state.astype(np.int8)) for k, st in enumerate(path.stages)}
    expected["loss"] = encode(np.asarray(loss, dtype=dtype))
    expected.update({f"grad.{k}": encode(g) for k, g in grads.items()})
    inputs = network_inputs(desc, params, x, uniforms, y)
    inputs.update(method=method, options=options or {})
    flags = [str(dtype)]
    return case(case_id, f"estimator.{method}", description, inputs, expected, atol=tol[0], rtol=tol[1], flags=flags)


def topic_gradients():
    dense = network_desc("logistic", [4], [stage_desc("dense", 4, 5), stage_desc("dense", 5, 4)], 3)
    dense_bn = network_desc("normal", [4], [
        stage_desc("dense", 4, 5, batch_norm=True),
        stage_desc("dense", 5, 4, weight="bernoulli", batch_norm=True)], 3)
    conv = network_desc("logistic", [2, 5, 5], [
        stage_desc("conv", 2, 3, kernel=(3, 3), stride=(2, 2), padding=(1, 1), batch_norm=True),
        stage_desc("conv", 3, 2, kernel=(2, 2), padding=(1, 1), weight="bernoulli", weight_grad="latent",
                   batch_norm=True)], 3)
    conv_tri = network_desc("triangular", [1, 5, 4], [
        stage_desc("conv", 1, 2, kernel=(2, 3), stride=(1, 2), padding=(0, 1)),
        stage_desc("dense", 16, 3, weight="bernoulli", weight_noise="uniform")], 2)
    dense32 = dict(dense, dtype="float32")
    cases = [
        gradient_case("psa/dense-logistic", "psa", "PSA, Rao-Blackwellized head (head='rb')", dense, 400, 3),
        gradient_case("psa/dense-logistic-sample-head", "psa", "PSA with the sampled head gradient (head='sample')",
                      dense, 400, 3, options={"head": "sample"}),
        gradient_case("psa/dense-bn-bernoulli-normal", "psa",
                      "PSA through batch norm (batch statistics, constant in the flips), Bernoulli weights (md rule)",
                      dense_bn, 401, 4),
        gradient_case("psa/conv-stride-pad-bn-bernoulli", "psa",
                      "PSA on conv stages: stride 2, padding 1, batch norm, Bernoulli weights with the latent rule",
                      conv, 402, 2),
        gradient_case("psa/conv-dense-triangular", "psa",
                      "PSA with triangular noise: rectangular kernel, stride (1,2), padding (0,1), then a dense "
                      "stage with Bernoulli weights (uniform weight noise)", conv_tri, 403, 3),
        gradient_case("psa/dense-logistic-float32", "psa", "PSA in float32 (looser tolerance)", dense32, 404, 3,
                      tol=(2e-5, 2e-4)),
        gradient_case("st/dense-logistic", "st", "deep ST: backward factor 2 p(a)", dense, 410, 3),
        gradient_case("st/dense-bn-bernoulli-normal", "st", "deep ST through batch norm with Bernoulli weights",
                      dense_bn, 417, 4),
        gradient_case("st/conv-stride-pad-bn-bernoulli", "st", "deep ST on conv stages (stride, padding, batch norm)",
                      conv, 412, 2),
        gradient_case("st/conv-dense-triangular", "st", "deep ST, triangular noise", conv_tri, 413, 3),
        gradient_case("st-identity/dense-logistic", "st-identity", "ST with backward factor 1", dense, 414, 3),
        gradient_case("st-hardtanh/dense-logistic", "st-hardtanh", "ST with backward factor 1[|a| <= 1]", dense,
                      415, 3),
        gradient_case("st-tanh/dense-logistic", "st-tanh", "ST with backward factor 1 - tanh(a)^2", dense, 416, 3),
    ]
    return document("gradients", "PSA and ST estimates of small dense and conv networks on given uniforms.", cases)


def optimizer_case(case_id, name, hyper, seed, steps=3):
    rng = np.random.default_rng(seed)
    params = {"w": dyadic(rng, (2, 3), 1.0), "b": dyadic(rng, (3,), 1.0)}
    grads = [{k: dyadic(rng, v.shape, 2.0) for k, v in params.items()} for _ in range(steps)]
    opt = sb.optim.get_optimizer(name, **hyper)
    current = {k: v.copy() for k, v in params.items()}
    expected = {}
    for t, g in enumerate(grads, start=1):
        opt.update(current, g)
        expected.update({f"step{t}.{k}": encode(v) for k, v in current.items()})
    inputs = {"optimizer": name, "hyperparameters": hyper, "params": {k: encode(v) for k, v in params.items()},
              "grads": [{k: encode(v) for k, v in g.items()} for g in grads]}
    return case(case_id, f"optim.{name}", f"{steps} steps of {name} with {hyper}", inputs, expected,
                atol=1e-14, rtol=1e-12, flags=["float64"])


def mirror_descent_case(case_id, noise, rule, lr, seed, steps=3):
    rng = np.random.default_rng(seed)
    weights = sb.BernoulliWeights(dyadic(rng, (3, 4), 0.75), noise, rule)  # projects its eta
    eta = weights.eta.copy()  # the projected start
    g_w = [dyadic(rng, eta.shape, 1.0) for _ in range(steps)]
    current, expected = weights.eta, {}
    opt = sb.optim.SGD(lr=lr)
    for t, g in enumerate(g_w, start=1):
        g_eta = weights.eta_grad(g)
        opt.update({"eta": current}, {"eta": g_eta})
        weights.project_()
        expected[f"step{t}.g_eta"] = encode(g_eta)
        expected[f"step{t}.eta"] = encode(current)
    inputs = {"weight_noise": noise, "weight_grad": rule, "clip": weights.clip, "lr": lr, "eta": encode(eta),
              "grad_w": [encode(g) for g in g_w]}
    return case(case_id, "optim.mirror_descent", f"{steps} latent-weight steps: rule {rule!r}, {noise} weight "
                f"noise, SGD lr {lr}, then the projection", inputs, expected, atol=1e-14, rtol=1e-12, flags=["float64"])


def topic_optim():
    return document("optim", "SGD (momentum, Nesterov), Adam/AdamW and the mirror-descent step on latent weights.", [
        optimizer_case("sgd/plain", "sgd", {"lr": 0.125}, 500),
        optimizer_case("sgd/momentum", "sgd", {"lr": 0.125, "momentum": 0.75}, 501),
        optimizer_case("sgd/nesterov-weight-decay", "sgd",
                       {"lr": 0.125, "momentum": 0.5, "nesterov": True, "weight_decay": 0.25}, 502),
        optimizer_case("sgd/clip-value-clip-norm", "sgd", {"lr": 0.125, "clip_value": 1.5, "clip_norm": 2.0}, 503),
        optimizer_case("adam/default", "adam", {"lr": 0.01}, 510),
        optimizer_case("adam/coupled-weight-decay", "adam",
                       {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1}, 511),
        optimizer_case("adam/adamw", "adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled": True}, 512),
        mirror_descent_case("md/logistic-md", "logistic", "md", 0.25, 520),
        mirror_descent_case("md/uniform-md-projected", "uniform", "md", 0.5, 521),
        mirror_descent_case("md/normal-latent", "normal", "latent", 0.5, 522),
    ])


def pack_case(case_id, x, channels=False):
    words = bitpack.pack_channels(x) if channels else bitpack.pack(x)
    back = bitpack.unpack_channels(words, x.shape[1], np.int8) if channels else bitpack.unpack(words, x.shape[-1],
                                                                                                 np.int8)
    operation = "bitpack.pack_channels" if channels else "bitpack.pack"
    what = "along channels (axis 1 moved last)" if channels else "along the last axis"
    return case(case_id, operation, f"pack {what}, K = {x.shape[1] if channels else x.shape[-1]}: bit i of the "
                "little-endian word stream is element i, set = negative; then unpack",
                {"x": encode(x)}, {"words32": encode(words32(words)), "unpacked": encode(back)},
                flags=["exact-integer"])


def topic_bitpack():
    rng = np.random.default_rng(600)
    cases = []
    for k in (1, 5, 31, 32, 33, 64, 65, 100, 130):
        x = pm1(rng, (3, k)).astype(np.float64)
        x[0, ::3] = 0.0  # sign(0) = +1: bit clear
        x[1, ::4] *= 0.5  # only the sign counts
        cases.append(pack_case(f"pack/k{k}", x))
    cases.append(pack_case("pack/channels-c70", pm1(rng, (2, 70, 2, 3)).astype(np.float64), channels=True))
    for k, bits in ((70, 8), (13, 3)):
        codes = rng.integers(0, 2 ** bits, (2, k))
        planes = bitpack.pack_planes(codes, bits)
        cases.append(case(f"pack-planes/k{k}-b{bits}", "bitpack.pack_planes",
                          f"bit-planes of {bits}-bit codes: planes[..., b, :] packs bit b of every code (set = 1)",
                          {"codes": encode(codes), "bits": bits}, {"planes_words32": encode(words32(planes))},
                          flags=["exact-integer"]))
    return document("bitpack", "Bit-packing layout: bit order, padding, the 32-bit word view.", cases)


def xnor_matmul_cases(rng, m, n, k):
    a, b = pm1(rng, (m, k)), pm1(rng, (n, k))
    aw, bw = bitpack.pack(a), bitpack.pack(b)
    dot = bitpack.matmul(aw, bw, k)
    inputs = {"a": encode(a), "b": encode(b), "a_words32": encode(words32(aw)), "b_words32": encode(words32(bw)),
              "k": k}
    plain = case(f"matmul/m{m}-n{n}-k{k}", "xnor.matmul", "dot = K - 2 popcount(a XOR b) = a @ b.T", inputs,
                 {"dot": encode(dot)}, flags=["exact-integer"])
    thresholds = np.round(rng.normal(0, np.sqrt(k), n) * 4) / 4  # non-integers act as their ceiling
    thresholds[0] = float(dot[0, 0])  # a tie: dot == t gives +1
    thresholds[-1] = k + 10.0  # never reached
    flip = rng.random(n) < 0.3
    out = bitpack.matmul_threshold(aw, bw, k, thresholds, flip)
    th_inputs = dict(inputs, thresholds=encode(thresholds), flip=encode(flip))
    fused = case(f"matmul-threshold/m{m}-n{n}-k{k}", "xnor.matmul_threshold",
                 "y = +1 iff dot >= t (flip: iff dot < t), packed", th_inputs,
                 {"y": encode(bitpack.unpack(out, n, np.int8)), "y_words32": encode(words32(out))},
                 flags=["exact-integer"])
    return [plain, fused]


def xnor_conv_cases(rng, shape, c_out, kernel, stride, padding):
    x, w = pm1(rng, shape), pm1(rng, (c_out, shape[1]) + kernel)
    xw, ww = bitpack.pack_channels(x), bitpack.pack_channels(w)
    y = bitpack.conv2d(xw, ww, shape[1], stride=stride, padding=padding)
    tag = f"c{shape[1]}-k{kernel[0]}x{kernel[1]}-s{stride[0]}x{stride[1]}-p{padding[0]}x{padding[1]}"
    inputs = {"x": encode(x), "w": encode(w), "x_words32": encode(words32(xw)), "w_words32": encode(words32(ww)),
              "stride": list(stride), "padding": list(padding)}
    plain = case(f"conv2d/{tag}", "xnor.conv2d", "binary cross-correlation, zero padding counted as 0", inputs,
                 {"y": encode(y)}, flags=["exact-integer"])
    thresholds = np.round(rng.normal(0, 2, c_out) * 2) / 2
    flip = np.arange(c_out) % 2 == 1
    out = bitpack.conv2d_threshold(xw, ww, shape[1], thresholds, flip, stride=stride, padding=padding)
    fused = case(f"conv2d-threshold/{tag}", "xnor.conv2d_threshold",
                 "y = +1 iff conv >= t (flip: iff conv < t), packed along channels",
                 dict(inputs, thresholds=encode(thresholds), flip=encode(flip)),
                 {"y": encode(bitpack.unpack_channels(out, c_out, np.int8)), "y_words32": encode(words32(out))},
                 flags=["exact-integer"])
    return [plain, fused]


def bitplane_cases(rng, m, n, k, bits):
    codes, w = rng.integers(0, 2 ** bits, (m, k)), pm1(rng, (n, k))
    planes, ww = bitpack.pack_planes(codes, bits), bitpack.pack(w)
    z = bitpack.bitplane_matmul(planes, ww, k)
    inputs = {"codes": encode(codes), "bits": bits, "w": encode(w), "planes_words32": encode(words32(planes)),
              "w_words32": encode(words32(ww)), "k": k}
    plain = case(f"bitplane-matmul/m{m}-n{n}-k{k}-b{bits}", "xnor.bitplane_matmul",
                 "z = q @ w.T = sum_b 2^b (popcount(q_b) - 2 popcount(q_b AND W)), exact", inputs,
                 {"z": encode(z)}, flags=["exact-integer"])
    thresholds = np.round(rng.normal(0, 2 ** bits * np.sqrt(k) / 4, n) * 2) / 2
    thresholds[0] = float(z[0, 0])  # a tie: z == t gives +1
    flip = rng.random(n) < 0.4
    out = bitpack.bitplane_matmul_threshold(planes, ww, k, thresholds, flip)
    fused = case(f"bitplane-matmul-threshold/m{m}-n{n}-k{k}-b{bits}", "xnor.bitplane_matmul_threshold",
                 "y = +1 iff z >= t (flip: iff z < t), packed", dict(inputs, thresholds=encode(thresholds),
                                                                     flip=encode(flip)),
                 {"y": encode(bitpack.unpack(out, n, np.int8)), "y_words32": encode(words32(out))},
                 flags=["exact-integer"])
    return [plain, fused]


def topic_xnor():
    rng = np.random.default_rng(700)
    cases = []
    for m, n, k in ((3, 5, 7), (2, 4, 64), (4, 3, 100)):
        cases += xnor_matmul_cases(rng, m, n, k)
    for shape, c_out, kernel, stride, padding in (((2, 3, 5, 5), 4, (3, 3), (1, 1), (0, 0)),
                                                   ((1, 3, 6, 5), 3, (3, 3), (2, 2), (1, 1)),
                                                   ((2, 70, 4, 3), 2, (2, 1), (2, 1), (1, 2))):
        cases += xnor_conv_cases(rng, shape, c_out, kernel, stride, padding)
    for m, n, k, bits in ((3, 5, 70, 8), (2, 3, 9, 2)):
        cases += bitplane_cases(np.random.default_rng(710 + k), m, n, k, bits)
    return document("xnor", "XNOR-popcount GEMM and binary convolution, with and without thresholds; "
                    "bit-plane products of integer codes.", cases)


def deterministic_stats(rng, desc, params):
    """Deterministic-mode batch-norm statistics (as recalibrated), and gamma of both signs."""
    buffers = {}
    for k, st in enumerate(desc["stages"]):
        if st["batch_norm"]:
            n = params[f"stages.{k}.gamma"].shape[0]
            params[f"stages.{k}.gamma"] *= np.where(rng.random(n) < 0.3, -1.0, 1.0)
            buffers[f"stages.{k}.running.deterministic.mean"] = dyadic(rng, (n,), 1.0)
            buffers[f"stages.{k}.running.deterministic.var"] = np.round((0.5 + 2 * rng.random(n)) * DENOM) / DENOM
    return buffers


def check_margins(net, x):
    """No deterministic pre-activation within MARGIN of 0: its sign must not depend on rounding."""
    with net.evaluating("deterministic"):  # Bernoulli stages compute with sign(eta)
        h = x
        for k, layer in enumerate(net.stages):
            a = layer.forward(h)
            if np.abs(a).min() < MARGIN:
                refuse(f"check_margins: stage {k} has |a| = {np.abs(a).min():.2g}")
            h = np.where(a >= 0, 1.0, -1.0)


def packed_case(case_id, description, desc, seed, batch, quantization=None):
    rng = np.random.default_rng(seed)
    params = random_params(rng, desc, desc["input_shape"])
    buffers = deterministic_stats(rng, desc, params)
    shape = (batch,) + tuple(desc["input_shape"])
    if quantization is None:
        x, codes = dyadic(rng, shape, 1.0), None
    else:  # x = scale * q with integer codes q in [0, 2^bits)
        codes = rng.integers(0, 2 ** quantization[1], shape)
        x = quantization[0] * codes.astype(np.float64)
    net = build_network(desc, params)
    net.load_buffers(buffers)
    check_margins(net, x)
    packed = sb.PackedNetwork.from_network(net, calibration_x=x, input_quantization=quantization)
    expected = {f"state.stages.{k}": encode(s.astype(np.int8)) for k, s in enumerate(packed.forward_states(x))}
    # each stage's packed output: (B, words) dense, (B, H, W, words) conv (channels last), as 32-bit words
    expected.update({f"words32.stages.{k}": encode(words32(w)) for k, w in enumerate(packed.forward_packed(x))})
    for k, stage in enumerate(packed.stages):
        if stage.kind in ("binary_dense", "binary_conv", "bitplane_dense"):
            expected[f"threshold.stages.{k}"] = encode(stage.arrays["threshold"].astype(np.int32))
            expected[f"flip.stages.{k}"] = encode(stage.arrays["flip"].astype(bool))
    expected["logits"] = encode(packed.predict_logits(x))
    expected["predictions"] = encode(packed.predict(x).astype(np.int64))
    inputs = network_inputs(desc, params, x)
    inputs["buffers"] = {k: encode(v) for k, v in buffers.items()}
    if quantization is not None:
        inputs["input_quantization"] = {"scale": quantization[0], "bits": quantization[1]}
        inputs["codes"] = encode(codes.astype(np.int64))
    return case(case_id, "packed.predict", description, inputs, expected, atol=1e-12, rtol=1e-12,
                flags=["float64"])


def topic_packed():
    dense = network_desc("logistic", [12], [
        stage_desc("dense", 12, 10, weight="bernoulli", batch_norm=True),
        stage_desc("dense", 10, 70, weight="bernoulli", batch_norm=True),
        stage_desc("dense", 70, 6, weight="bernoulli")], 4)
    conv = network_desc("logistic", [1, 6, 6], [
        stage_desc("conv", 1, 4, kernel=(3, 3), padding=(1, 1), weight="bernoulli", batch_norm=True),
        stage_desc("conv", 4, 5, kernel=(3, 3), stride=(2, 2), padding=(1, 1), weight="bernoulli", batch_norm=True)],
        3)
    return document("packed",
                    "Predictions of small deterministic bit-packed networks (weights sign(eta), x = sign(a)).",
                    [packed_case("packed/dense-bn", "binary MLP: float first stage, two binary stages (batch norm "
                                 "with gamma of both signs, bias only), real head", dense, 800, 6),
                     packed_case("packed/bitplane-dense-bn", "binary MLP whose first stage runs on the bit-planes "
                                 "of 8-bit input codes (x = q / 255): exact integer first product", dense, 802, 6,
                                 quantization=(1 / 255, 8)),
                     packed_case("packed/conv-bn", "binary conv net: float conv first stage (padding 1), binary conv "
                                 "stage (stride 2, padding 1), real head", conv, 801, 3)])


TOPICS = {"noise": topic_noise, "forward": topic_forward, "exact": topic_exact, "gradients": topic_gradients,
          "optim": topic_optim, "bitpack": topic_bitpack, "xnor": topic_xnor, "packed": topic_packed}


def generate(topics=None):
    """File name -> JSON text of every topic (or of ``topics``)."""
    return {f"{name}.json": dumps(TOPICS[name]()) for name in (topics or TOPICS)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored files, write nothing")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        changed = [n for n, text in files.items() if not (args.out / n).is_file()
                   or (args.out / n).read_text() != text]
        print("identical" if not changed else f"changed: {changed}")
        return 1 if changed else 0
    from sbnnumba.fileio import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(args.out / name, text)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
