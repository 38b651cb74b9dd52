r"""Independent checker of the conformance vectors: plain NumPy, written from docs/spec.md alone.

Usage::

    python conformance/check_numpy.py [conformance/v1] [-v]

It does **not** import ``sbnnumba``: every operation of the vectors is re-implemented here in the
plainest form (Python loops where they are clearer than array tricks, the scalar ``math`` module for
the noise functions), following the numbered sections of ``docs/spec.md``. It is the first thing a
porter reads, and the proof that the vectors describe the specification rather than one code path.
Exit status 0 when every case passes.

Comparison rule (conformance/README.md): outputs with an integer or boolean dtype must be equal;
float outputs must satisfy ``|got - expected| <= atol + rtol * |expected|`` element-wise, with the
case's ``atol`` and ``rtol``.

This file is longer than the project's 600-line guide because it is one self-contained reference
for every topic (a porter should be able to read one file top to bottom).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# ==================================================================================== file format
def decode(obj):
    """``{"dtype", "shape", "data"}`` -> ndarray; anything else is returned unchanged."""
    if isinstance(obj, dict) and set(obj) == {"dtype", "shape", "data"}:
        return np.array(obj["data"], dtype=obj["dtype"]).reshape(obj["shape"])
    return obj


def decode_tree(obj):
    if isinstance(obj, dict) and set(obj) == {"dtype", "shape", "data"}:
        return decode(obj)
    if isinstance(obj, dict):
        return {k: decode_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_tree(v) for v in obj]
    return obj


def compare_outputs(case, got):
    """Messages for every expected output that ``got`` (name -> array) fails; empty when the case passes."""
    problems = []
    for name, encoded in case["expected"].items():
        want = decode(encoded)
        if name not in got:
            problems.append(f"{name}: not computed")
            continue
        have = np.asarray(got[name])
        if have.shape != want.shape:
            problems.append(f"{name}: shape {have.shape}, expected {want.shape}")
        elif want.dtype.kind in "iub":
            bad = np.flatnonzero(have.astype(np.int64).ravel() != want.astype(np.int64).ravel())
            if bad.size:
                problems.append(f"{name}: {bad.size} of {want.size} integers differ (first at flat index {bad[0]})")
        else:
            err = np.abs(have.astype(np.float64) - want)
            allowed = case["atol"] + case["rtol"] * np.abs(want)
            if not np.all(err <= allowed):
                worst = int(np.argmax(err - allowed))
                problems.append(f"{name}: max |error| {err.max():.3g}; at flat index {worst} got "
                                f"{have.ravel()[worst]!r}, expected {want.ravel()[worst]!r}")
    return problems


# ============================================================================ spec 2: noise families
def cdf(noise, a):
    """F(a), with the lower tail computed without cancellation (spec 2.1)."""
    a = float(a)
    if noise == "logistic":
        return 1.0 / (1.0 + math.exp(-a)) if a >= 0 else math.exp(a) / (1.0 + math.exp(a))
    if noise == "normal":
        return 0.5 * math.erfc(-a / math.sqrt(2.0))
    if noise == "uniform":
        return min(max((a + 1.0) / 2.0, 0.0), 1.0)
    if noise == "triangular":
        t = min(max(a, -1.0), 1.0)
        return 0.5 * (1 + t) ** 2 if t < 0 else 1.0 - 0.5 * (1 - t) ** 2
    raise ValueError(f"noise: unknown family {noise!r}")


def pdf(noise, a):
    a = float(a)
    if noise == "logistic":
        e = math.exp(-abs(a))
        return e / (1.0 + e) ** 2
    if noise == "normal":
        return math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    if noise == "uniform":
        return 0.5 if abs(a) <= 1 else 0.0
    if noise == "triangular":
        return max(0.0, 1.0 - abs(a))
    raise ValueError(f"noise: unknown family {noise!r}")


def quantile(noise, u):
    u = float(u)
    if noise == "logistic":
        return math.log(u) - math.log1p(-u)
    if noise == "normal":
        return statistics.NormalDist().inv_cdf(u)
    if noise == "uniform":
        return 2.0 * u - 1.0
    if noise == "triangular":
        return -1.0 + math.sqrt(2.0 * u) if u < 0.5 else 1.0 - math.sqrt(2.0 * (1.0 - u))
    raise ValueError(f"noise: unknown family {noise!r}")


def cdf_diff(noise, u, v):
    """F(u) - F(v), as F(-v) - F(-u) when u + v > 0 (both in the upper half: no cancellation)."""
    if u + v > 0:
        return cdf(noise, -v) - cdf(noise, -u)
    return cdf(noise, u) - cdf(noise, v)


def sample(noise, a, u):
    """Binary sample from a given uniform: +1 if u < F(a) else -1 (spec 2.2)."""
    return np.array([1 if uu < cdf(noise, aa) else -1 for aa, uu in zip(a.ravel(), u.ravel())],
                    dtype=np.int8).reshape(a.shape)


def op_noise_cdf_pdf(inp):
    return {"cdf": [cdf(inp["noise"], a) for a in inp["a"]], "pdf": [pdf(inp["noise"], a) for a in inp["a"]]}


def op_noise_quantile(inp):
    return {"z": [quantile(inp["noise"], u) for u in inp["u"]]}


def op_noise_cdf_diff(inp):
    return {"diff": [cdf_diff(inp["noise"], u, v) for u, v in zip(inp["u"], inp["v"])]}


def op_noise_sample(inp):
    return {"x": sample(inp["noise"], inp["a"], inp["u"])}


# ====================================================================== spec 3: layers of a network
def conv_out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def dense_forward(w, b, h):
    """a[n, j] = sum_i W[j, i] h[n, i] + b[j]; h is flattened in (C, H, W) order."""
    h = h.reshape(h.shape[0], -1)
    a = np.zeros((h.shape[0], w.shape[0]))
    for n in range(h.shape[0]):
        for j in range(w.shape[0]):
            a[n, j] = np.dot(w[j], h[n]) + b[j]
    return a


def conv_taps(st, in_shape):
    """Every (iy, ix, oy, ox, dy, dx): input position (iy, ix) = (sh oy + dy - ph, sw ox + dx - pw) read by
    tap (dy, dx) of output position (oy, ox), inside the map (taps on the zero padding are left out);
    and the output size (H_out, W_out) (spec 3.1)."""
    (kh, kw), (sh, sw), (ph, pw) = st["kernel_size"], st["stride"], st["padding"]
    _, height, width = in_shape
    out_h, out_w = conv_out_size(height, kh, sh, ph), conv_out_size(width, kw, sw, pw)
    taps = []
    for oy, ox, dy, dx in itertools.product(range(out_h), range(out_w), range(kh), range(kw)):
        iy, ix = sh * oy + dy - ph, sw * ox + dx - pw
        if 0 <= iy < height and 0 <= ix < width:  # padded positions are constant zeros
            taps.append((iy, ix, oy, ox, dy, dx))
    return taps, (out_h, out_w)


def conv_forward(st, w, b, h):
    """a[n, c, oy, ox] = sum_{r, dy, dx} W[c, r, dy, dx] x_pad[n, r, sh oy + dy, sw ox + dx] + b[c]."""
    taps, (out_h, out_w) = conv_taps(st, h.shape[1:])
    a = np.zeros((h.shape[0], w.shape[0], out_h, out_w))
    a += b[None, :, None, None]
    for iy, ix, oy, ox, dy, dx in taps:
        for n in range(h.shape[0]):
            for c in range(w.shape[0]):
                a[n, c, oy, ox] += np.dot(w[c, :, dy, dx], h[n, :, iy, ix])
    return a


def conv_backward(st, w, g_a, in_shape):
    """Transposed map: g_h[n, r, iy, ix] = sum over the taps reading (iy, ix) of W[c, r, dy, dx] g_a[n, c, oy, ox]."""
    taps, _ = conv_taps(st, in_shape)
    g_h = np.zeros((g_a.shape[0],) + tuple(in_shape))
    for iy, ix, oy, ox, dy, dx in taps:
        for n in range(g_a.shape[0]):
            g_h[n, :, iy, ix] += w[:, :, dy, dx].T @ g_a[n, :, oy, ox]
    return g_h


def conv_weight_grad(st, h, g_a, w_shape):
    """Shared weights: g_W[c, r, dy, dx] = sum over examples and positions of g_a[n, c, oy, ox] h[n, r, iy, ix]."""
    taps, _ = conv_taps(st, h.shape[1:])
    g_w = np.zeros(w_shape)
    for iy, ix, oy, ox, dy, dx in taps:
        for n in range(h.shape[0]):
            g_w[:, :, dy, dx] += np.outer(g_a[n, :, oy, ox], h[n, :, iy, ix])
    return g_w


class Stage:
    """One stage of a network: affine layer (weights given or sampled), optional batch norm."""

    def __init__(self, desc, params, k, weight):
        self.desc, self.k, self.w = desc, k, weight
        self.b = params[f"stages.{k}.bias"]
        self.bn = desc["batch_norm"]
        if self.bn:
            self.gamma, self.beta = params[f"stages.{k}.gamma"], params[f"stages.{k}.beta"]

    def affine(self, h):
        if self.desc["type"] == "dense":
            return dense_forward(self.w, self.b, h)
        return conv_forward(self.desc, self.w, self.b, h)

    def channel_axes(self, z):
        return (0,) + tuple(range(2, z.ndim))

    def bcast(self, v, z):
        return v.reshape((1, -1) + (1,) * (z.ndim - 2))

    def forward(self, h, stats=None):
        """Pre-activation a; batch norm with the batch's statistics (biased variance) or with ``stats``."""
        self.h = h
        return self.normalize(self.affine(h), stats)

    def normalize(self, z, stats=None):
        """Batch norm of the affine output z (identity without batch norm)."""
        if not self.bn:
            return z
        axes = self.channel_axes(z)
        mean, var = (z.mean(axis=axes), z.var(axis=axes)) if stats is None else stats
        self.inv_std = 1.0 / np.sqrt(var + self.bn["eps"])
        self.z_hat = (z - self.bcast(mean, z)) * self.bcast(self.inv_std, z)
        return self.bcast(self.gamma, z) * self.z_hat + self.bcast(self.beta, z)

    def norm_backward(self, g_a):
        """dL/dz from dL/da through batch norm (statistics of the batch are differentiated)."""
        if not self.bn:
            return g_a
        axes, m = self.channel_axes(g_a), g_a.size // g_a.shape[1]
        scale = self.bcast(self.gamma * self.inv_std, g_a)
        s1 = self.bcast(g_a.sum(axis=axes), g_a) / m
        s2 = self.bcast((g_a * self.z_hat).sum(axis=axes), g_a) / m
        return scale * (g_a - s1 - self.z_hat * s2)

    def param_grads(self, g_a):
        """dL/dW (at the weights used), dL/db, and dL/dgamma, dL/dbeta with batch norm."""
        g_z = self.norm_backward(g_a)
        if self.desc["type"] == "dense":
            g_w = g_z.T @ self.h.reshape(self.h.shape[0], -1)
            g_b = g_z.sum(axis=0)
        else:
            g_w = conv_weight_grad(self.desc, self.h, g_z, self.w.shape)
            g_b = g_z.sum(axis=(0, 2, 3))
        out = {"weight": g_w, "bias": g_b}
        if self.bn:
            out["gamma"] = (g_a * self.z_hat).sum(axis=self.channel_axes(g_a))
            out["beta"] = g_a.sum(axis=self.channel_axes(g_a))
        return out

    def backward_input(self, g_a):
        g_z = self.norm_backward(g_a)
        if self.desc["type"] == "dense":
            return (g_z @ self.w).reshape(self.h.shape)
        return conv_backward(self.desc, self.w, g_z, self.h.shape[1:])

    def flip_propagate(self, noise, a, x_out, d_out):
        """PSA (spec 6.3): d_in[i] = sum_j Delta_ij d_out[j], Delta_ij = F(-x_j (a_j - 2 W'_ji x_i)) - F(-x_j a_j),
        W' = W * gamma_j / sqrt(var_j + eps) with batch norm (its statistics held constant)."""
        scale = self.gamma * self.inv_std if self.bn else np.ones(self.w.shape[0])
        h = self.h
        d_in = np.zeros(h.shape)
        for n in range(h.shape[0]):
            if self.desc["type"] == "dense":
                hn = h[n].reshape(-1)
                flat = np.zeros(hn.shape)
                for i, j in itertools.product(range(hn.size), range(self.w.shape[0])):
                    shift = 2 * self.w[j, i] * scale[j] * hn[i]
                    flat[i] += cdf_diff(noise, -x_out[n, j] * (a[n, j] - shift), -x_out[n, j] * a[n, j]) * d_out[n, j]
                d_in[n] = flat.reshape(h.shape[1:])
                continue
            taps, _ = conv_taps(self.desc, h.shape[1:])
            for iy, ix, oy, ox, dy, dx in taps:
                for r, c in itertools.product(range(h.shape[1]), range(self.w.shape[0])):
                    aj, xj = a[n, c, oy, ox], x_out[n, c, oy, ox]
                    shift = 2 * self.w[c, r, dy, dx] * scale[c] * h[n, r, iy, ix]
                    d_in[n, r, iy, ix] += cdf_diff(noise, -xj * (aj - shift), -xj * aj) * d_out[n, c, oy, ox]
        return d_in


# ============================================================================ spec 4: losses, head
def loss_and_grad(logits, y):
    """Softmax cross-entropy (K > 1) or the logistic loss of s = 2y - 1 (K = 1), and dl/dlogits."""
    if logits.shape[0] == 1:
        s = 2.0 * y - 1.0
        z = -s * logits[0]
        loss = max(z, 0.0) + math.log1p(math.exp(-abs(z)))
        return loss, np.array([-s * cdf("logistic", z)])
    m = logits.max()
    e = np.exp(logits - m)
    loss = math.log(e.sum()) + m - logits[y]
    g = e / e.sum()
    g[y] -= 1.0
    return loss, g


# ====================================================== spec 2.2, 3.3, 7.1: sampling a network path
def sign_pm1(v):
    return np.where(v >= 0, 1.0, -1.0)


class Network:
    """A network of the vectors: ``inputs["network"]`` + ``inputs["params"]`` (spec 3)."""

    def __init__(self, inp):
        self.desc, self.params = inp["network"], inp["params"]
        self.noise = self.desc["noise"]
        self.V, self.c = self.params["head.weight"], self.params["head.bias"]

    def weights(self, uniforms):
        """Per stage: real weights, or Bernoulli weights w = +1 if u < F_w(eta) else -1 (one sample per batch)."""
        out = []
        for k, st in enumerate(self.desc["stages"]):
            if st["weight"] == "bernoulli":
                eta = self.params[f"stages.{k}.eta"]
                if uniforms is None:  # deterministic mode: sign(eta), sign(0) = +1
                    out.append(sign_pm1(eta))
                else:
                    out.append(sample(st["weight_noise"], eta, uniforms[f"weight.stages.{k}"]).astype(np.float64))
            else:
                out.append(self.params[f"stages.{k}.weight"])
        return out

    def sample(self, x, uniforms):
        """Stages, their pre-activations and states x^k = +1 if u < F(a^k) else -1, and the logits."""
        self.stages = [Stage(st, self.params, k, w) for k, (st, w) in
                       enumerate(zip(self.desc["stages"], self.weights(uniforms)))]
        h, pres, states = x.astype(np.float64), [], []
        for k, stage in enumerate(self.stages):
            a = stage.forward(h)
            h = sample(self.noise, a, uniforms[f"activation.stages.{k}"]).astype(np.float64)
            pres.append(a), states.append(h)
        flat = h.reshape(h.shape[0], -1)
        logits = flat @ self.V.T + self.c
        return pres, states, logits


def op_network_sample(inp):
    net = Network(inp)
    pres, states, logits = net.sample(inp["x"], inp["uniforms"])
    out = {"logits": logits}
    for k, stage in enumerate(net.stages):
        if net.desc["stages"][k]["weight"] == "bernoulli":
            out[f"weight.stages.{k}"] = stage.w
        out[f"pre.stages.{k}"], out[f"state.stages.{k}"] = pres[k], states[k]
    return out


def weight_grad_to_eta(st, eta, g_w):
    """Gradient of a Bernoulli weight tensor's latent eta from dL/dw (spec 7.1): 2 g_w ('md') or 2 p(eta) g_w."""
    if st["weight_grad"] == "md":
        return 2.0 * g_w
    return 2.0 * np.vectorize(lambda e: pdf(st["weight_noise"], e))(eta) * g_w


def collect(net, grads, k, stage_grads):
    st = net.desc["stages"][k]
    for name, g in stage_grads.items():
        if name == "weight" and st["weight"] == "bernoulli":
            grads[f"stages.{k}.eta"] = weight_grad_to_eta(st, net.params[f"stages.{k}.eta"], g)
        else:
            grads[f"stages.{k}.{name}"] = g


# =========================================================================== spec 6: PSA estimator
def op_psa(inp):
    x, y, head = inp["x"], inp["y"], inp["options"].get("head", "rb")
    net = Network(inp)
    pres, states, logits = net.sample(x, inp["uniforms"])
    batch, noise = x.shape[0], net.noise
    x_last = states[-1].reshape(batch, -1)
    n_last = x_last.shape[1]
    grads = {"head.weight": np.zeros(net.V.shape), "head.bias": np.zeros(net.c.shape)}
    d = np.zeros((batch, n_last))
    total = 0.0
    for n in range(batch):
        loss0, g0 = loss_and_grad(logits[n], y[n])
        a_last = pres[-1][n].reshape(-1)
        w_rb = np.array([(1.0 - cdf(noise, x_last[n, i] * a_last[i])) / n_last for i in range(n_last)])
        g_mix_v = (1.0 - w_rb.sum()) * np.outer(g0, x_last[n])
        g_mix_c = (1.0 - w_rb.sum()) * g0
        for i in range(n_last):  # head difference of flipping unit i (spec 6.1)
            flipped = x_last[n].copy()
            flipped[i] = -flipped[i]
            loss_i, g_i = loss_and_grad(net.V @ flipped + net.c, y[n])
            d[n, i] = loss_i - loss0
            g_mix_v += w_rb[i] * np.outer(g_i, flipped)
            g_mix_c += w_rb[i] * g_i
        total += loss0 + np.dot(w_rb, d[n])
        if head == "rb":  # Rao-Blackwellized head gradient (spec 6.2)
            grads["head.weight"] += g_mix_v / batch
            grads["head.bias"] += g_mix_c / batch
        else:
            grads["head.weight"] += np.outer(g0, x_last[n]) / batch
            grads["head.bias"] += g0 / batch
    for k in range(len(net.stages) - 1, -1, -1):  # per-stage recurrence (spec 6.3)
        a, xs = pres[k], states[k]
        d = d.reshape(a.shape)
        p = np.vectorize(lambda v: pdf(noise, v))(a)
        g_a = -xs * p * d
        collect(net, grads, k, net.stages[k].param_grads(g_a / batch))
        if k > 0:
            d = net.stages[k].flip_propagate(noise, a, xs, d)
    return outputs(total / batch, states, grads)


def outputs(loss, states, grads):
    out = {"loss": np.float64(loss)}
    out.update({f"state.stages.{k}": s for k, s in enumerate(states)})
    out.update({f"grad.{k}": g for k, g in grads.items()})
    return out


# ============================================================================ spec 7: ST estimators
def st_factor(method, noise, a):
    """The backward factor replacing dx/da (spec 7): 2 p(a) of the network's noise for deep ST."""
    if method == "st":
        return 2.0 * pdf(noise, a)
    if method == "st-identity":
        return 1.0
    if method == "st-hardtanh":
        return 2.0 * pdf("uniform", a)
    if method == "st-tanh":
        return 1.0 - math.tanh(a) ** 2
    raise ValueError(f"method: unknown ST variant {method!r}")


def op_st(inp):
    x, y, method = inp["x"], inp["y"], inp["method"]
    net = Network(inp)
    pres, states, logits = net.sample(x, inp["uniforms"])
    batch = x.shape[0]
    x_last = states[-1].reshape(batch, -1)
    g_eta, total = np.zeros(logits.shape), 0.0
    for n in range(batch):
        loss, g = loss_and_grad(logits[n], y[n])
        total += loss
        g_eta[n] = g / batch
    grads = {"head.weight": g_eta.T @ x_last, "head.bias": g_eta.sum(axis=0)}
    delta = (g_eta @ net.V).reshape(states[-1].shape)
    for k in range(len(net.stages) - 1, -1, -1):
        g_a = np.vectorize(lambda v: st_factor(method, net.noise, v))(pres[k]) * delta
        collect(net, grads, k, net.stages[k].param_grads(g_a))
        if k > 0:
            delta = net.stages[k].backward_input(g_a)
    return outputs(total / batch, states, grads)


# ============================================================== spec 5: exact expected loss, gradient
def op_exact(inp):
    """Enumerate every joint state of every stage: E = sum_paths P(path) l, and its exact gradient
    dE = sum_paths P (l dlogP + dl) with dlogP/da_j = x_j p(a_j) / F(x_j a_j) (score of each unit)."""
    net = Network(inp)
    x, y = inp["x"], inp["y"]
    desc, noise, batch = net.desc, net.noise, x.shape[0]
    net.stages = [Stage(st, net.params, k, w) for k, (st, w) in enumerate(zip(desc["stages"], net.weights(None)))]
    shapes = [tuple(s) for s in desc["stage_shapes"]]
    grads = {k: np.zeros(v.shape) for k, v in net.params.items()}
    total = 0.0
    for n in range(batch):
        for path in itertools.product(*[itertools.product((1.0, -1.0), repeat=int(np.prod(s))) for s in shapes]):
            states = [np.array(p).reshape((1,) + s) for p, s in zip(path, shapes)]
            h, prob, scores = x[n:n + 1].astype(np.float64), 1.0, []
            for stage, state in zip(net.stages, states):
                a = stage.forward(h)
                f = np.vectorize(lambda v: cdf(noise, v))(state * a)
                prob *= f.prod()
                with np.errstate(divide="ignore", invalid="ignore"):
                    scores.append(np.where(f > 0, state * np.vectorize(lambda v: pdf(noise, v))(a) / f, 0.0))
                h = state
            if prob == 0.0:
                continue
            x_last = states[-1].reshape(-1)
            loss, g = loss_and_grad(net.V @ x_last + net.c, y[n])
            total += prob * loss / batch
            grads["head.weight"] += prob * np.outer(g, x_last) / batch
            grads["head.bias"] += prob * g / batch
            h = x[n:n + 1].astype(np.float64)
            for k, (stage, state) in enumerate(zip(net.stages, states)):
                stage.forward(h)  # the stage's input for its parameter gradient
                for name, gk in stage.param_grads(prob * loss * scores[k] / batch).items():
                    grads[f"stages.{k}.{name}"] += gk
                h = state
    out = {"loss": np.float64(total)}
    out.update({f"grad.{k}": g for k, g in grads.items()})
    return out


# ================================================================= spec 8: optimizers, mirror descent
def clip_gradients(hp, params, grads):
    """Element-wise clipping to [-clip_value, clip_value], then global-norm clipping over all parameters."""
    out = {k: np.array(grads[k], dtype=np.float64) for k in params}
    if hp.get("clip_value") is not None:
        out = {k: np.clip(g, -hp["clip_value"], hp["clip_value"]) for k, g in out.items()}
    if hp.get("clip_norm") is not None:
        norm = math.sqrt(sum(float((g * g).sum()) for g in out.values()))
        if norm > hp["clip_norm"]:
            out = {k: g * (hp["clip_norm"] / norm) for k, g in out.items()}
    return out


def op_sgd(inp):
    hp = inp["hyperparameters"]
    lr, mom, wd = hp["lr"], hp.get("momentum", 0.0), hp.get("weight_decay", 0.0)
    params = {k: v.copy() for k, v in inp["params"].items()}
    buffers, out = {}, {}
    for t, grads in enumerate(inp["grads"], start=1):
        grads = clip_gradients(hp, params, grads)
        for k, p in params.items():
            g = grads[k] + wd * p
            if mom:
                buffers[k] = g.copy() if t == 1 else mom * buffers[k] + g
                g = g + mom * buffers[k] if hp.get("nesterov", False) else buffers[k]
            p -= lr * g
            out[f"step{t}.{k}"] = p.copy()
    return out


def op_adam(inp):
    hp = inp["hyperparameters"]
    lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
    b1, b2 = hp.get("betas", (0.9, 0.999))
    eps = hp.get("eps", 1e-8)
    params = {k: v.copy() for k, v in inp["params"].items()}
    m = {k: np.zeros(v.shape) for k, v in params.items()}
    v = {k: np.zeros(p.shape) for k, p in params.items()}
    out = {}
    for t, grads in enumerate(inp["grads"], start=1):
        grads = clip_gradients(hp, params, grads)
        for k, p in params.items():
            g = grads[k]
            if wd and hp.get("decoupled", False):
                p *= 1.0 - lr * wd
            elif wd:
                g = g + wd * p
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)
            out[f"step{t}.{k}"] = p.copy()
    return out


def op_mirror_descent(inp):
    st = {"weight_grad": inp["weight_grad"], "weight_noise": inp["weight_noise"]}
    eta, out = inp["eta"].copy(), {}
    for t, g_w in enumerate(inp["grad_w"], start=1):
        g_eta = weight_grad_to_eta(st, eta, g_w)
        eta = eta - inp["lr"] * g_eta
        if inp["clip"] is not None:
            eta = np.clip(eta, -inp["clip"], inp["clip"])
        out[f"step{t}.g_eta"], out[f"step{t}.eta"] = g_eta, eta
    return out


# ======================================================================= spec 9: bit packing, XNOR
def pack_rows(x):
    """(..., K) -> (..., 2 ceil(K/64)) uint32 words: bit i % 32 of word i // 32 is 1 iff x[..., i] < 0."""
    k = x.shape[-1]
    rows = x.reshape(-1, k)
    words = np.zeros((rows.shape[0], 2 * ((k + 63) // 64)), dtype=np.uint64)
    for r in range(rows.shape[0]):
        for i in range(k):
            if rows[r, i] < 0:
                words[r, i // 32] |= 1 << (i % 32)
    return words.astype(np.uint32).reshape(x.shape[:-1] + (words.shape[1],))


def unpack_rows(words, k):
    out = np.zeros(words.shape[:-1] + (k,), dtype=np.int8)
    flat_w, flat_o = words.reshape(-1, words.shape[-1]), out.reshape(-1, k)
    for r in range(flat_w.shape[0]):
        for i in range(k):
            flat_o[r, i] = -1 if (int(flat_w[r, i // 32]) >> (i % 32)) & 1 else 1
    return out


def op_pack(inp):
    words = pack_rows(inp["x"])
    return {"words32": words, "unpacked": unpack_rows(words, inp["x"].shape[-1])}


def op_pack_channels(inp):
    x = np.moveaxis(inp["x"], 1, -1)
    words = pack_rows(x)
    return {"words32": words, "unpacked": np.moveaxis(unpack_rows(words, x.shape[-1]), -1, 1)}


def popcount_dot(a_words, b_words, k):
    """a . b = K - 2 popcount(a XOR b) over the packed words (padding bits are 0 in both)."""
    return k - 2 * sum(bin(int(p) ^ int(q)).count("1") for p, q in zip(a_words, b_words))


def threshold(dot, t, flip):
    """+1 iff dot >= t; a flipped unit gives +1 iff dot < t."""
    plus = dot >= t
    return 1 if plus != bool(flip) else -1


def op_matmul(inp):
    aw, bw, k = inp["a_words32"], inp["b_words32"], inp["k"]
    dot = np.array([[popcount_dot(aw[i], bw[j], k) for j in range(bw.shape[0])] for i in range(aw.shape[0])])
    if not np.array_equal(dot, inp["a"].astype(np.int64) @ inp["b"].astype(np.int64).T):
        raise AssertionError("matmul: the popcount dot products differ from a @ b.T")
    return {"dot": dot}


def op_matmul_threshold(inp):
    dot = op_matmul(inp)["dot"]
    y = np.array([[threshold(dot[i, j], inp["thresholds"][j], inp["flip"][j]) for j in range(dot.shape[1])]
                  for i in range(dot.shape[0])], dtype=np.int8)
    return {"y": y, "y_words32": pack_rows(y)}


def op_conv2d(inp):
    st = {"kernel_size": inp["w"].shape[2:], "stride": inp["stride"], "padding": inp["padding"]}
    y = conv_forward(st, inp["w"].astype(np.float64), np.zeros(inp["w"].shape[0]), inp["x"].astype(np.float64))
    return {"y": y.astype(np.int64)}


def op_conv2d_threshold(inp):
    conv = op_conv2d(inp)["y"]
    y = np.zeros(conv.shape, dtype=np.int8)
    for n, c, oy, ox in itertools.product(*map(range, conv.shape)):
        y[n, c, oy, ox] = threshold(conv[n, c, oy, ox], inp["thresholds"][c], inp["flip"][c])
    return {"y": y, "y_words32": pack_rows(np.moveaxis(y, 1, -1))}


def op_pack_planes(inp):
    """planes[..., b, :] = the codes' bit b packed like signs (bit set where bit b of q is 1)."""
    codes = inp["codes"]
    planes = [pack_rows(np.where((codes >> b) & 1, -1, 1)) for b in range(inp["bits"])]
    return {"planes_words32": np.stack(planes, axis=-2)}


def op_bitplane_matmul(inp):
    """z = sum_b 2^b (popcount(q_b) - 2 popcount(q_b AND W_j)) over the packed words (spec 10.3)."""
    planes, ww, bits = inp["planes_words32"], inp["w_words32"], inp["bits"]
    z = np.zeros((planes.shape[0], ww.shape[0]), dtype=np.int64)
    for i, j in itertools.product(range(planes.shape[0]), range(ww.shape[0])):
        for b in range(bits):
            ones = sum(bin(int(q)).count("1") for q in planes[i, b])
            both = sum(bin(int(q) & int(w)).count("1") for q, w in zip(planes[i, b], ww[j]))
            z[i, j] += 2 ** b * (ones - 2 * both)
    if not np.array_equal(z, inp["codes"].astype(np.int64) @ inp["w"].astype(np.int64).T):
        raise AssertionError("bitplane_matmul: the bit-plane sums differ from q @ w.T")
    return {"z": z}


def op_bitplane_matmul_threshold(inp):
    z = op_bitplane_matmul(inp)["z"]
    y = np.array([[threshold(z[i, j], inp["thresholds"][j], inp["flip"][j]) for j in range(z.shape[1])]
                  for i in range(z.shape[0])], dtype=np.int8)
    return {"y": y, "y_words32": pack_rows(y)}


# ============================================================ spec 10: deterministic packed network
def folded_threshold(stage, stats, j, k, scale=1.0):
    """Integer threshold (t, flip) of unit j of a stage whose raw product is y = scale * d for an integer
    d in [-K, K] (spec 10.2, 10.3): a_j(y) >= 0  <=>  d >= T (gamma > 0) or d <= T (gamma < 0) with
    T = crossing / scale; units whose sign is the same on all of [-K, K] get t = -(K + 1) (always +1)
    or K + 1 (always -1), unflipped."""
    b = stage.b[j]
    if stage.bn:
        mean, var = stats
        s = math.sqrt(var[j] + stage.bn["eps"])
        crossing, increasing = mean[j] - b - stage.beta[j] * s / stage.gamma[j], stage.gamma[j] > 0
    else:
        crossing, increasing = -b, True
    crossing /= scale
    if increasing:
        t = math.ceil(crossing)
        return (-(k + 1), False) if t <= -k else ((k + 1, False) if t > k else (t, False))
    last = math.floor(crossing)  # +1 iff d <= last, i.e. d < last + 1 with the output flipped
    return (-(k + 1), False) if last >= k else ((k + 1, False) if last < -k else (last + 1, True))


def bitplane_preactivation(stage, stats, codes, quantization):
    """First stage on quantized inputs x = scale * q (spec 10.3): the exact integer z = sum_i q_i w_ji,
    y = scale * z rounded once, then the stage's bias and batch norm."""
    z = codes.reshape(codes.shape[0], -1).astype(np.int64) @ stage.w.astype(np.int64).T
    stage.h = codes
    return stage.normalize(quantization["scale"] * z.astype(np.float64) + stage.b, stats)


def op_packed_predict(inp):
    net = Network(inp)
    desc, buffers = net.desc, inp["buffers"]
    quantization = inp.get("input_quantization")
    h, out = inp["x"].astype(np.float64), {}
    for k, (st, w) in enumerate(zip(desc["stages"], net.weights(None))):
        stage = Stage(st, net.params, k, w)
        stats = None
        if st["batch_norm"]:
            stats = (buffers[f"stages.{k}.running.deterministic.mean"],
                     buffers[f"stages.{k}.running.deterministic.var"])
        fan_in = int(np.prod(w.shape[1:]))
        if k == 0 and quantization is not None:
            a = bitplane_preactivation(stage, stats, inp["codes"], quantization)
            z_max = (2 ** quantization["bits"] - 1) * fan_in
            folded = [folded_threshold(stage, stats, j, z_max, quantization["scale"]) for j in range(w.shape[0])]
        else:
            a = stage.forward(h, stats=stats)
            # binary input: the packed stage compares the integer dot with a folded threshold
            folded = [folded_threshold(stage, stats, j, fan_in) for j in range(w.shape[0])] if k > 0 else None
        if folded is not None:
            out[f"threshold.stages.{k}"] = np.array([t for t, _ in folded])
            out[f"flip.stages.{k}"] = np.array([f for _, f in folded])
        h = sign_pm1(a)
        out[f"state.stages.{k}"] = h
        out[f"words32.stages.{k}"] = pack_rows(h if h.ndim == 2 else np.moveaxis(h, 1, -1))  # conv: channels last
    out["logits"] = h.reshape(h.shape[0], -1) @ net.V.T + net.c
    out["predictions"] = np.argmax(out["logits"], axis=1)
    return out


# ============================================================================================ main
OPERATIONS = {
    "noise.cdf_pdf": op_noise_cdf_pdf, "noise.quantile": op_noise_quantile, "noise.cdf_diff": op_noise_cdf_diff,
    "noise.sample": op_noise_sample,
    "network.sample": op_network_sample, "exact.loss_grad": op_exact,
    "estimator.psa": op_psa, "estimator.st": op_st, "estimator.st-identity": op_st,
    "estimator.st-hardtanh": op_st, "estimator.st-tanh": op_st,
    "optim.sgd": op_sgd, "optim.adam": op_adam, "optim.mirror_descent": op_mirror_descent,
    "bitpack.pack": op_pack, "bitpack.pack_channels": op_pack_channels, "bitpack.pack_planes": op_pack_planes,
    "xnor.bitplane_matmul": op_bitplane_matmul, "xnor.bitplane_matmul_threshold": op_bitplane_matmul_threshold,
    "xnor.matmul": op_matmul, "xnor.matmul_threshold": op_matmul_threshold,
    "xnor.conv2d": op_conv2d, "xnor.conv2d_threshold": op_conv2d_threshold,
    "packed.predict": op_packed_predict,
}


def run_case(case):
    """Outputs of one case computed here (name -> array)."""
    return OPERATIONS[case["operation"]](decode_tree(case["inputs"]))


def load_cases(folder):
    """(file name, case) for every case of every topic file in ``folder``."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("format") != "sbnnumba-conformance":
            raise ValueError(f"{path}: expected format 'sbnnumba-conformance', got {doc.get('format')!r}")
        out += [(path.name, c) for c in doc["cases"]]
    return out


def check(folder, verbose=False):
    """Run every case; returns the list of (case id, problems) that failed."""
    failures = []
    for name, case in load_cases(folder):
        problems = compare_outputs(case, run_case(case))
        if problems:
            failures.append((case["id"], problems))
        if verbose or problems:
            print(f"{'FAIL' if problems else 'ok  '} {name}:{case['id']}" + "".join(f"\n     {p}" for p in problems))
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check the conformance vectors with an independent NumPy model.")
    parser.add_argument("folder", nargs="?", default=HERE / "v1")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    failures = check(args.folder, args.verbose)
    total = len(load_cases(args.folder))
    print(f"{total - len(failures)} of {total} cases pass")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
