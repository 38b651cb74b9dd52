r"""Export a :class:`~sbnnumba.packed.PackedNetwork` as dependency-free C99.

:func:`export_c` writes ``<name>.h``, ``<name>.c`` (the network: its data as ``static const``
arrays, the kernels of ``templates/runtime.c``, one call per stage), an example ``main.c``, a
``Makefile`` and a ``README.md``. The C code computes what :meth:`PackedNetwork.predict` computes,
from the packed network's public state (``stages[i].kind``, ``.meta``, ``.arrays``, ``head_weight``,
``head_bias``), in the library's bit layout (:mod:`sbnnumba.bitpack`: bit ``i % 64`` of word
``i // 64`` is element ``i``, set = -1; maps channels last):

============== ================================================================== =============
stage kind     C computation (per example)                                        pre-threshold
============== ================================================================== =============
binary_dense   ``dot_j = k - 2 sum_w popcount(x_w XOR W_jw)``                     int32 ``dot``
binary_conv    per output position, over the taps inside the input:               int32
               ``taps * C_in - 2 popcount``, i.e. zero padding as the float net
bitplane_dense ``z_j = sum_b 2^b (popcount(q_b) - 2 popcount(q_b AND W_j))``      int32 ``z``
float_dense    ``y_j = sum_i x_i w_ji`` (``i`` ascending) in the network dtype     real ``y``
float_conv     the same over ``(c_in, dy, dx)``                                   real ``y``
head           ``logits = h V^T + c`` on the unpacked +-1 ``h`` ((C, H, W) order) logits
============== ================================================================== =============

and the state ``+1`` iff ``value >= t_j`` (flipped units: ``value < t_j`` for integers, ``value
<= t_j`` for reals), thresholds and flips as stored in the packed network.

Exactness
---------
The integer values (binary and bit-plane stages) are exact, hence equal to the packed network's
bit for bit, and so are the states they give. The real values of float stages and the head are
sums of ``K`` rounded terms: the packed network leaves their order to BLAS (blocked, vectorized,
FMA), the C code sums in the float network's reduction order with one rounding per product and
per addition (``-std=c99`` keeps gcc from contracting them into FMAs; clang contracts only within
an expression, and each product is its own statement). Both equal the exact sum whenever every
partial sum is representable (e.g. inputs and weights on a dyadic grid: the tests use such
networks, and then logits agree bitwise too); otherwise they can differ by the rounding of the
sum, and a state or a prediction differs only when a value lies within that rounding of its
threshold or of a tie between two logits. ``input_quantization`` (the bit-plane first stage)
removes the real first stage: the docs' experiment (``docs/experiments/2026-12-05-export-c.md``)
measures the agreement on Fashion-MNIST.

No allocation: every buffer is a member of ``<name>_workspace`` (and ``<name>_trace``) whose
sizes are compile-time constants printed in the header. Popcount is ``__builtin_popcountll``
under gcc/clang, a portable SWAR fallback otherwise (or with ``-DSBN_PORTABLE_POPCOUNT``).
"""
from __future__ import annotations

import keyword
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import atomic_write_text
from .clit import define_array, real_literal

if TYPE_CHECKING:
    from ..packed import PackedNetwork

__all__ = ["CExport", "TraceSlot", "export_c"]

_TEMPLATES = Path(__file__).with_name("templates")
_C_KEYWORDS = frozenset("auto break case char const continue default do double else enum extern float for goto "
                        "if inline int long register restrict return short signed sizeof static struct switch "
                        "typedef union unsigned void volatile while".split())
_NEEDS = ("POPCOUNT", "INT_THRESHOLD", "REAL_THRESHOLD", "CONV", "BINARY_DENSE", "BINARY_CONV", "BITPLANE",
          "FINITE", "UNPACK_DENSE", "UNPACK_MAP", "REAL_DENSE", "BITS_DENSE", "REAL_CONV")


@dataclass(frozen=True)
class TraceSlot:
    """Where stage ``stage``'s pre-threshold values lie in ``<name>_trace``.

    The values ``trace.<kind>[offset : offset + prod(shape)]`` are in the float network's layout
    ``shape``.

    Attributes
    ----------
    stage : int
        Index of the stage.
    kind : str
        ``"integer"`` (``trace.integer``, int32) or ``"real"`` (``trace.real``).
    offset : int
        First index of the stage's values in that array.
    shape : tuple of int
        ``(N,)`` or ``(C, H, W)``.
    """
    stage: int
    kind: str
    offset: int
    shape: tuple


@dataclass
class CExport:
    """What :func:`export_c` wrote.

    Attributes
    ----------
    directory, name : str
    files : dict
        Role (``"header"``, ``"source"``, ``"main"``, ``"makefile"``, ``"readme"``) -> path.
    real_type : str
        ``"float"`` or ``"double"`` (the network dtype).
    input_size : int
        Reals (or codes) per example.
    input_bits : int
        Bits of the input codes of a bit-plane first stage, 0 without one.
    n_classes : int
    trace : list of TraceSlot
        One per stage.
    trace_integers, trace_reals : int
        Sizes of the trace's two arrays.
    layers : list of dict
        Per layer and ``"total"``: ``name``, ``kind``, ``c_bytes`` (its constant data in the C
        program), ``float32_bytes`` (the float32 network's, None if unknown).
    """
    directory: str
    name: str
    files: dict
    real_type: str
    input_size: int
    input_bits: int
    n_classes: int
    trace: list = field(default_factory=list)
    trace_integers: int = 0
    trace_reals: int = 0
    layers: list = field(default_factory=list)

    @property
    def data_bytes(self):
        """Bytes of constant data (weights, thresholds, flips, head) in the C program."""
        return self.layers[-1]["c_bytes"]

    @property
    def float32_bytes(self):
        """Bytes of the float32 network's parameters (None if unknown)."""
        return self.layers[-1]["float32_bytes"]


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str (a C identifier), got {type(name).__name__}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,30}", name) or name in _C_KEYWORDS or keyword.iskeyword(name) \
            or name.lower().startswith("sbn"):
        raise ValueError(f"name: expected a C identifier of at most 31 letters, digits or '_' starting with a "
                         f"letter, not a C keyword and not starting with 'sbn' (the runtime's prefix), got {name!r}")
    return name


class _Builder:
    """Accumulates the generated source: arrays, stage code, buffer sizes, trace slots, needs."""

    def __init__(self, packed, name):
        self.packed, self.name = packed, name
        self.dtype = np.dtype(packed.dtype)
        self.real = "float" if self.dtype == np.float32 else "double"
        self.arrays, self.code, self.needs, self.slots = [], [], set(), []
        self.bytes_per_layer = []
        self.act_words = self.unpacked = self.values = self.plane_words = 0
        self.trace_integers = self.trace_reals = 0

    # -- helpers used by the stage emitters
    def array(self, name, values, comment):
        text, nbytes = define_array(name, values, comment)
        self.arrays.append(text)
        self.bytes_per_layer[-1] += nbytes
        return f"{name}[0]" if np.ndim(values) == 2 else name

    def trace(self, stage, kind, shape):
        size = int(np.prod(shape))
        if kind == "integer":
            self.slots.append(TraceSlot(stage, kind, self.trace_integers, tuple(shape)))
            self.trace_integers += size
            return f"trace ? trace->integer + {self.slots[-1].offset} : NULL"
        self.slots.append(TraceSlot(stage, kind, self.trace_reals, tuple(shape)))
        self.trace_reals += size
        self.values = max(self.values, size)
        return f"trace ? trace->real + {self.slots[-1].offset} : ws->values"

    def real_input(self, kind, shape, src):
        """C expression of a float stage's / the head's real input, unpacking packed words first."""
        if kind == "real":
            return "x"
        n = int(np.prod(shape))
        self.unpacked = max(self.unpacked, n)
        if kind == "dense":
            self.needs.add("UNPACK_DENSE")
            self.code.append(f"    sbn_unpack_dense({src}, {n}, ws->unpacked);")
        else:
            self.needs.add("UNPACK_MAP")
            self.code.append(f"    sbn_unpack_map({src}, {shape[0]}, {shape[1]}, {shape[2]}, ws->unpacked);")
        return "ws->unpacked"

    def geometry(self, index, meta):
        self.needs.add("CONV")
        (c, h, w), (co, ho, wo) = meta["in_shape"], meta["out_shape"]
        (kh, kw), (sh, sw), (ph, pw) = meta["kernel_size"], meta["stride"], meta["padding"]
        self.arrays.append(f"static const sbn_conv stage{index}_geometry = {{\n"
                           f"    {c}, {h}, {w}, /* input (C, H, W) */\n    {co}, {ho}, {wo}, /* output (C, H, W) */\n"
                           f"    {kh}, {kw}, {sh}, {sw}, {ph}, {pw} "
                           "/* kernel, stride, padding (vertical, horizontal) */\n};\n")
        return f"&stage{index}_geometry"


def _describe(kind, shape):
    return {"real": "real", "dense": "packed", "conv": "packed map"}[kind] + " " + "x".join(map(str, shape))


def _out_words(stage):
    kind, shape = stage.out_desc
    return -(-shape[0] // 64) * (1 if kind == "dense" else shape[1] * shape[2])


def _emit_binary_dense(b, i, stage, src, dst):
    m, a = stage.meta, stage.arrays
    b.needs |= {"POPCOUNT", "INT_THRESHOLD", "BINARY_DENSE"}
    n_out, n_words = a["weight_bits"].shape
    order = "" if stage.in_kind == "dense" else " (columns in the packed map's (H, W, C padded to 64) order)"
    w = b.array(f"stage{i}_weight_bits", a["weight_bits"], f"stage {i}: +-1 weights ({n_out}, {n_words} words){order}")
    t = b.array(f"stage{i}_threshold", a["threshold"], f"stage {i}: -1 iff dot < threshold (flip: dot >= threshold)")
    f = b.array(f"stage{i}_flip", a["flip"].astype(np.uint8),
                f"stage {i}: flipped units (negative normalization scale)")
    pre = b.trace(i, "integer", (n_out,))
    b.code.append(f"    sbn_binary_dense({src}, {n_words}, {m['k']}, {w}, {n_out}, {t}, {f}, {dst}, {pre});")


def _emit_binary_conv(b, i, stage, src, dst):
    m, a = stage.meta, stage.arrays
    b.needs |= {"POPCOUNT", "INT_THRESHOLD", "BINARY_CONV"}
    words = a["weight_bits"]
    g = b.geometry(i, m)
    w = b.array(f"stage{i}_weight_bits", words.reshape(words.shape[0], -1),
                f"stage {i}: +-1 weights (C_out, kh, kw, ceil(C_in/64) words) = {words.shape}")
    t = b.array(f"stage{i}_threshold", a["threshold"], f"stage {i}: -1 iff value < threshold (flip: >=)")
    f = b.array(f"stage{i}_flip", a["flip"].astype(np.uint8), f"stage {i}: flipped channels")
    pre = b.trace(i, "integer", tuple(m["out_shape"]))
    b.code.append(f"    sbn_binary_conv({src}, {g}, {w}, {t}, {f}, {dst}, {pre});")


def _emit_bitplane_dense(b, i, stage, src, dst):
    m, a = stage.meta, stage.arrays
    b.needs |= {"POPCOUNT", "INT_THRESHOLD", "BITPLANE"}
    n_out, n_words = a["weight_bits"].shape
    k, bits = int(m["k"]), int(m["bits"])
    b.plane_words = 8 * n_words  # the kernels keep 8 planes per word (runtime.c)
    w = b.array(f"stage{i}_weight_bits", a["weight_bits"], f"stage {i}: +-1 weights ({n_out}, {n_words} words)")
    t = b.array(f"stage{i}_threshold", a["threshold"], f"stage {i}: -1 iff z < threshold (flip: z >= threshold)")
    f = b.array(f"stage{i}_flip", a["flip"].astype(np.uint8), f"stage {i}: flipped units")
    pre = b.trace(i, "integer", (n_out,))
    scale = float(m["scale"])
    inv = real_literal(b.dtype.type(1.0 / scale), b.dtype)
    b.code += [f"    if (codes != NULL ? sbn_planes_from_codes(codes, {k}, {bits}, ws->planes)",
               f"                      : sbn_planes_from_reals(x, {k}, {bits}, {scale!r}, {inv}, ws->planes))",
               "        return -1;",
               f"    sbn_bitplane_dense(ws->planes, {k}, {w}, {n_out}, {t}, {f}, {dst}, {pre});"]


def _emit_float(b, i, stage, src, dst):
    m, a = stage.meta, stage.arrays
    b.needs |= {"REAL_THRESHOLD"}
    conv = stage.kind == "float_conv"
    n_out = int(m["weight_shape"][0])
    if m["binary_weights"]:
        b.needs.add("BITS_DENSE" if not conv else "REAL_CONV")
        w = b.array(f"stage{i}_weight_bits", a["weight_bits"],
                    f"stage {i}: +-1 weights ({n_out}, {a['weight_bits'].shape[1]} words) of the float layer "
                    f"{tuple(m['weight_shape'])}")
    else:
        b.needs.add("REAL_DENSE" if not conv else "REAL_CONV")
        w = b.array(f"stage{i}_weight", a["weight"].reshape(n_out, -1),
                    f"stage {i}: real weights {tuple(m['weight_shape'])}")
    t = b.array(f"stage{i}_threshold", a["threshold"], f"stage {i}: -1 iff y < threshold (flip: y > threshold)")
    f = b.array(f"stage{i}_flip", a["flip"].astype(np.uint8), f"stage {i}: flipped units")
    x = b.real_input(stage.in_kind, stage.in_shape, src)
    out_shape = tuple(m["out_shape"]) if conv else (n_out,)
    pre = b.trace(i, "real", out_shape)
    b.code.append(f"    y = {pre};")
    if conv:
        g = b.geometry(i, m)
        wr, wb = (w, "NULL") if not m["binary_weights"] else ("NULL", w)
        b.code.append(f"    sbn_real_conv({x}, {g}, {wr}, {wb}, y);")
    else:
        fn = "sbn_bits_dense" if m["binary_weights"] else "sbn_real_dense"
        b.code.append(f"    {fn}({x}, {m['n_in']}, {w}, {n_out}, y);")
    positions = out_shape[1] * out_shape[2] if conv else 1
    b.code.append(f"    sbn_real_threshold(y, {n_out}, {positions}, {t}, {f}, {dst});")


# Stage kind -> emitter(builder, index, stage, source words expression, destination words expression)
EMITTERS = {"binary_dense": _emit_binary_dense, "binary_conv": _emit_binary_conv,
            "bitplane_dense": _emit_bitplane_dense, "float_dense": _emit_float, "float_conv": _emit_float}


def _emit_head(b, src):
    p = b.packed
    kind, shape = p.head_in
    n_classes, n_in = p.head_weight.shape
    b.bytes_per_layer.append(0)
    b.needs.add("REAL_DENSE")
    b.code.append(f"    /* head: {_describe(kind, shape)} -> {n_classes} logits (real weights ({n_classes}, {n_in}), "
                  "inputs in the float network's (C, H, W) order) */")
    x = b.real_input(kind, shape, src)
    w = b.array("head_weight", p.head_weight, f"head: real weights ({n_classes}, {n_in})")
    c = b.array("head_bias", p.head_bias, f"head: bias ({n_classes})")
    b.code += [f"    sbn_real_dense({x}, {n_in}, {w}, {n_classes}, logits);",
               f"    for (j = 0; j < {n_classes}; j++)", f"        logits[j] += {c}[j];",
               f"    return sbn_argmax(logits, {n_classes});"]


def _build(packed, name):
    b = _Builder(packed, name)
    src = None
    for i, stage in enumerate(packed.stages):
        if stage.kind not in EMITTERS:
            raise NotImplementedError(f"export_c: stage {i} has the kind {stage.kind!r}, which the C exporter does "
                                      f"not implement (it implements {sorted(EMITTERS)})")
        b.bytes_per_layer.append(0)
        dst = f"ws->act[{i % 2}]"
        kind, shape = stage.out_desc
        layer = str(stage.meta.get("layer", "")).replace("*/", "* /")
        b.code.append(f"    /* stage {i}: {stage.kind}, {_describe(stage.in_kind, stage.in_shape)} -> "
                      f"{_describe(kind, shape)}; {layer} */")
        EMITTERS[stage.kind](b, i, stage, src, dst)
        b.act_words = max(b.act_words, _out_words(stage))
        src = dst
    if packed.stages[0].kind != "bitplane_dense":
        b.needs.add("FINITE")
        n_in = int(np.prod(packed.input_shape))
        b.code.insert(0, f"    if (x == NULL || !sbn_all_finite(x, {n_in}))\n        return -1;")
    _emit_head(b, src)
    return b


# ------------------------------------------------------------------------------------------- rendering
def _layer_rows(packed, b):
    report = packed.size_report()
    rows = []
    for r, nbytes in zip(report[:-1], b.bytes_per_layer):
        rows.append(dict(name=r["name"], kind=r["kind"], c_bytes=nbytes, float32_bytes=r["float32_bytes"]))
    known = all(r["float32_bytes"] is not None for r in rows)
    rows.append(dict(name="total", kind="", c_bytes=sum(r["c_bytes"] for r in rows),
                     float32_bytes=sum(r["float32_bytes"] for r in rows) if known else None))
    return rows


def _size_table(rows):
    lines = [f"{'layer':10s} {'kind':34s} {'C data bytes':>13s} {'float32 bytes':>14s} {'ratio':>7s}"]
    for r in rows:
        f32 = "?" if r["float32_bytes"] is None else f"{r['float32_bytes']:,d}"
        ratio = "?" if r["float32_bytes"] is None else f"{r['float32_bytes'] / r['c_bytes']:.1f}x"
        lines.append(f"{r['name']:10s} {r['kind']:34s} {r['c_bytes']:>13,d} {f32:>14s} {ratio:>7s}")
    return lines


def _template(filename):
    return string.Template((_TEMPLATES / filename).read_text())


def _fields(packed, b, rows):
    """Substitutions shared by the templates."""
    name, upper = b.name, b.name.upper()
    first = packed.stages[0]
    bits = int(first.meta["bits"]) if first.kind == "bitplane_dense" else 0
    real_size = np.dtype(packed.dtype).itemsize
    workspace = (2 * b.act_words + b.plane_words) * 8 + (b.unpacked + b.values + packed.n_classes) * real_size
    members = [f"    uint64_t act[2][{upper}_ACT_WORDS];   /* packed activations, ping-pong between stages */"]
    if b.plane_words:
        members.append(f"    uint64_t planes[{upper}_PLANE_WORDS];  /* bit-planes of the input codes */")
    if b.unpacked:
        members.append(f"    {name}_real unpacked[{upper}_UNPACKED_REALS]; /* +-1 input of a float stage / the head */")
    if b.values:
        members.append(f"    {name}_real values[{upper}_VALUE_REALS];    /* a float stage's products */")
    members.append(f"    {name}_real logits[{upper}_N_CLASSES];      /* logits when the caller passes none */")
    trace = []
    if b.trace_integers:
        trace.append(f"    int32_t integer[{upper}_TRACE_INTEGERS]; /* pre-threshold integers of the binary stages */")
    if b.trace_reals:
        trace.append(f"    {name}_real real[{upper}_TRACE_REALS];   /* pre-threshold products of the float stages */")
    slots = [f"   stage {s.stage}: trace.{s.kind}[{s.offset} .. {s.offset + int(np.prod(s.shape))}), "
             f"shape {'x'.join(map(str, s.shape))}" for s in b.slots]
    stages = [f"   stage {i}: {s.kind:15s} {_describe(s.in_kind, s.in_shape)} -> {_describe(*s.out_desc)}"
              for i, s in enumerate(packed.stages)]
    stages.append(f"   head:    float_dense     {_describe(*packed.head_in)} -> {packed.n_classes} logits")
    scale = repr(float(first.meta["scale"])) if bits else "0.0"
    return dict(name=name, NAME=upper, real=b.real, numpy_real=b.dtype.name,
                input_size=int(np.prod(packed.input_shape)),
                input_shape="x".join(map(str, packed.input_shape)), n_classes=packed.n_classes, bits=bits,
                scale=scale, act_words=b.act_words, plane_words=b.plane_words, unpacked=b.unpacked,
                values=b.values, trace_integers=b.trace_integers, trace_reals=b.trace_reals,
                workspace_bytes=workspace, data_bytes=rows[-1]["c_bytes"],
                float32_bytes="?" if rows[-1]["float32_bytes"] is None else rows[-1]["float32_bytes"],
                workspace_members="\n".join(members), trace_members="\n".join(trace) or "    int32_t unused;",
                trace_slots="\n".join(" *" + line for line in slots), stages="\n".join(" *" + line for line in stages),
                size_table="\n".join(" *   " + line for line in _size_table(rows)),
                size_table_md="\n".join("    " + line for line in _size_table(rows)),
                codes_decl="" if not bits else (
                    f"/* The same for the integer codes q (uint8) of the inputs x = {scale} * q, without the grid\n"
                    f" * check (returns -1 if a code is >= 2^{bits}). */\n"
                    f"int {name}_predict_codes({name}_workspace *ws, const uint8_t q[{upper}_INPUT_SIZE],\n"
                    f"    {name}_real logits[{upper}_N_CLASSES], {name}_trace *trace);\n"))


def _render_source(packed, b, fields):
    name = b.name
    needs = "\n".join(f"#define SBN_NEED_{n} {int(n in b.needs)}" for n in _NEEDS)
    codes = fields["bits"] > 0
    params = f"{name}_workspace *ws, const sbn_real *x, " + ("const uint8_t *codes, " if codes else "") + \
        f"sbn_real *logits, {name}_trace *trace"
    local = ["    int j;"] + (["    sbn_real *y;"] if b.trace_reals else [])
    run = [f"static int {name}_run({params})", "{"] + local + b.code + ["}"]
    public = [f"int {name}_predict({name}_workspace *ws, const {name}_real x[{fields['NAME']}_INPUT_SIZE],",
              f"    {name}_real logits[{fields['NAME']}_N_CLASSES], {name}_trace *trace)", "{",
              "    if (x == NULL)", "        return -1;",
              f"    return {name}_run(ws, x, {'NULL, ' if codes else ''}logits ? logits : ws->logits, trace);", "}"]
    if codes:
        public += ["", f"int {name}_predict_codes({name}_workspace *ws, const uint8_t q[{fields['NAME']}_INPUT_SIZE],",
                   f"    {name}_real logits[{fields['NAME']}_N_CLASSES], {name}_trace *trace)", "{",
                   "    if (q == NULL)", "        return -1;",
                   f"    return {name}_run(ws, NULL, q, logits ? logits : ws->logits, trace);", "}"]
    return _template("model.c.in").substitute(
        fields, needs=needs, runtime=(_TEMPLATES / "runtime.c").read_text(), arrays="\n".join(b.arrays),
        run="\n".join(run), public="\n".join(public))


def export_c(packed: PackedNetwork, directory: str | os.PathLike[str], name: str = "model") -> CExport:
    """Write ``packed`` as a dependency-free C99 program into ``directory``.

    Files: ``<name>.h`` (API, compile-time buffer sizes, per-layer data size vs float32),
    ``<name>.c`` (data and kernels), ``main.c`` (example: classify inputs read from a file),
    ``Makefile`` and ``README.md`` (compile command). See the module docstring for what the C code
    computes and when it equals :meth:`PackedNetwork.predict` bit for bit.

    Parameters
    ----------
    packed : sbnnumba.PackedNetwork
        The network to export.
    directory : path-like
        Created if missing; existing files of the same names are replaced (atomically).
    name : str, default "model"
        C prefix of the files, functions (``<name>_predict``), types and macros (upper case).

    Returns
    -------
    CExport
        Paths, trace layout, buffer sizes and the data size per layer.

    Raises
    ------
    TypeError
        ``packed`` is not a PackedNetwork, or ``name`` not a str.
    ValueError
        ``name`` is not a usable C identifier.
    NotImplementedError
        A stage kind the exporter does not implement (the message names the stage and its kind).
    """
    from ..packed import PackedNetwork

    if not isinstance(packed, PackedNetwork):
        raise TypeError(f"packed: expected a sbnnumba.PackedNetwork, got {type(packed).__name__}")
    name = _check_name(name)
    b = _build(packed, name)
    rows = _layer_rows(packed, b)
    fields = _fields(packed, b, rows)
    directory = os.fspath(directory)
    files = {"header": f"{name}.h", "source": f"{name}.c", "main": "main.c", "makefile": "Makefile",
             "readme": "README.md"}
    texts = {"header": _template("model.h.in").substitute(fields), "source": _render_source(packed, b, fields),
             "main": _template("main.c.in").substitute(fields), "makefile": _template("Makefile.in").substitute(fields),
             "readme": _template("README.md.in").substitute(fields)}
    paths = {role: atomic_write_text(os.path.join(directory, filename), texts[role])
             for role, filename in files.items()}
    return CExport(directory=directory, name=name, files=paths, real_type=b.real, input_size=fields["input_size"],
                   input_bits=fields["bits"], n_classes=packed.n_classes, trace=list(b.slots),
                   trace_integers=b.trace_integers, trace_reals=b.trace_reals, layers=rows)
