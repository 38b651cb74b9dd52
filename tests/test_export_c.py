"""C export (sbnnumba.export.c): the generated program must compute what PackedNetwork computes.

For several small networks (dense and conv; stride, padding, channels not a multiple of 64; batch
norm with negative and zero gammas, i.e. flipped and constant units; a bit-plane first stage and a
float one; real-weight stages; float32 and float64; a head reading a dense vector or a conv map) the
exported C is compiled with ``cc -std=c99 -pedantic -Wall -Wextra -Werror``, with clang and for 32-bit
x86 (:func:`_clang`, :func:`_compiler_32`), run on 1,200 inputs, and compared with the packed network:
predictions, logits and every stage's pre-threshold values (integers of the binary / bit-plane stages,
reals of the float stages) must be equal bit for bit.

Real values (float stages, the head) are sums that BLAS and the C code may order differently; the
networks here put inputs and real weights on a dyadic grid (inputs q/16, weights and biases multiples
of 1/32, at most ~100 terms of magnitude <= 1), so every partial sum is exact in float32 and both
orders give the exact value: the comparison is then bitwise everywhere. The bit-plane networks use the
8-bit grid q/255 of Fashion-MNIST pixels (their first stage is integer arithmetic).

Without a C compiler the tests skip with a message; ``.ci/run`` sets ``SBNNUMBA_REQUIRE_CC=1`` so that
in CI a missing compiler (cc, clang, a 32-bit build) fails instead. The test extra installs ``ziglang``, whose
``zig cc`` is clang with its own C libraries: it serves as clang where none is installed, and builds static
32-bit programs (i386, musl) where ``cc -m32`` cannot (no gcc-multilib).
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from kernel_checks import randomize_normalization

import sbnnumba as sb
from sbnnumba.export import export_c, preactivations
from sbnnumba.packed import PackedNetwork

N_INPUTS = 1200
STRICT = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2"]


def _required(what):
    """Skip for lack of ``what`` (a sentence naming it), or fail in CI (``SBNNUMBA_REQUIRE_CC``)."""
    if os.environ.get("SBNNUMBA_REQUIRE_CC"):
        pytest.fail(f"{what}, and SBNNUMBA_REQUIRE_CC is set (.ci/run)")
    pytest.skip(what)


def _zig_cc():
    """``zig cc`` of the ziglang package (clang with its own C libraries) as a command, or None."""
    if importlib.util.find_spec("ziglang") is None:
        return None
    return [sys.executable, "-m", "ziglang", "cc"]


def _clang():
    """clang as a command: ``clang`` on PATH, else ``zig cc`` (:func:`_zig_cc`), else None."""
    path = shutil.which("clang")
    return [path] if path is not None else _zig_cc()


def _runs_32_bit(command, tmp):
    """Whether ``command`` builds a program that runs here with 4-byte pointers (32-bit x86)."""
    src = tmp / "probe.c"
    src.write_text("#include <stdio.h>\nint main(void) { return sizeof(void *) == 4 ? 0 : 1; }\n")
    exe = tmp / "probe32"
    built = subprocess.run([*command, "-o", str(exe), str(src)], capture_output=True).returncode == 0
    return built and subprocess.run([str(exe)]).returncode == 0


def _compiler_32(cc, tmp):
    """A command building 32-bit x86 programs that run here: ``cc -m32`` (gcc-multilib), else ``zig cc`` for
    i386 Linux with musl, linked statically; None when neither can."""
    zig = _zig_cc()
    for command in ([cc, "-m32"], None if zig is None else [*zig, "-target", "x86-linux-musl"]):
        if command is not None and _runs_32_bit(command, tmp):
            return command
    return None


# ------------------------------------------------------------------------------------------- networks
def _dyadic(net):
    """Real weights and biases (stages and head) rounded to multiples of 1/32: exact float sums."""
    for _, layer in net.layers():
        inner = layer.layer if isinstance(layer, sb.Normalized) else layer
        if inner.latent is None:
            inner.weight[...] = np.round(inner.weight * 32) / 32
        inner.bias[...] = np.round(inner.bias * 32) / 32
    return net


def _inputs(shape, levels, dtype, seed):
    q = np.random.default_rng(seed).integers(0, levels, size=(N_INPUTS,) + shape)
    return (q / (255 if levels == 256 else 16)).astype(dtype), q.astype(np.uint8)


def _dense_bitplane():
    r = np.random.default_rng(1)
    net = sb.Network.dense([100, 70, 130], 10, weight="bernoulli", normalize=True, rng=r)
    return net, (1, 10, 10), 256, (1 / 255, 8)


def _dense_binary():
    """The fully binary MLP without input quantization: a float first stage with +-1 weights."""
    r = np.random.default_rng(6)
    net = sb.Network.dense([100, 70, 130], 10, weight="bernoulli", normalize=True, rng=r)
    return net, (100,), 16, None


def _dense_real(dtype):
    def build():
        r = np.random.default_rng(2)
        stages = [sb.Linear(100, 70, rng=r, dtype=dtype), sb.Normalized(sb.Linear(70, 65, rng=r, dtype=dtype)),
                  sb.Normalized(sb.Linear(65, 30, rng=r, dtype=dtype, weight="bernoulli"))]
        return sb.Network(stages, sb.Linear(30, 10, rng=r, dtype=dtype)), (100,), 16, None
    return build


def _conv_binary():
    """Binary conv stages with stride, padding, 70 and 66 channels, a non-square kernel and stride,
    a stage without normalization, then a binary dense stage reading the conv map."""
    r = np.random.default_rng(3)
    stages = [sb.Normalized(sb.Conv2d(1, 8, 3, padding=1, rng=r, weight="bernoulli")),
              sb.Normalized(sb.Conv2d(8, 70, 3, stride=2, padding=1, rng=r, weight="bernoulli")),
              sb.Conv2d(70, 20, 3, stride=2, rng=r, weight="bernoulli"),
              sb.Normalized(sb.Conv2d(20, 66, (3, 2), stride=(1, 2), padding=(1, 0), rng=r, weight="bernoulli")),
              sb.Normalized(sb.Linear(66 * 2 * 1, 40, rng=r, weight="bernoulli"))]
    return sb.Network(stages, sb.Linear(40, 10, rng=r)), (1, 12, 12), 16, None


def _conv_real():
    """Real-weight conv stages (on the real input, on a packed map), a binary conv, the head on the map."""
    r = np.random.default_rng(4)
    stages = [sb.Conv2d(2, 6, 3, stride=2, rng=r), sb.Normalized(sb.Conv2d(6, 10, 3, padding=1, rng=r)),
              sb.Normalized(sb.Conv2d(10, 12, 2, padding=(0, 1), rng=r, weight="bernoulli"))]
    return sb.Network(stages, sb.Linear(12 * 3 * 5, 7, rng=r)), (2, 9, 9), 16, None


def _conv_to_dense64():
    """float64: a binary-weight conv on the real input, then a real-weight dense stage on the map."""
    r = np.random.default_rng(5)
    d = np.float64
    stages = [sb.Normalized(sb.Conv2d(2, 5, 3, padding=2, rng=r, dtype=d, weight="bernoulli")),
              sb.Linear(5 * 9 * 9, 16, rng=r, dtype=d), sb.Normalized(sb.Linear(16, 12, rng=r, dtype=d,
                                                                                 weight="bernoulli"))]
    return sb.Network(stages, sb.Linear(12, 4, rng=r, dtype=d)), (2, 7, 7), 16, None


CASES = {"dense_bitplane": _dense_bitplane, "dense_binary": _dense_binary, "dense_real32": _dense_real(np.float32),
         "dense_real64": _dense_real(np.float64), "conv_binary": _conv_binary, "conv_real": _conv_real,
         "conv_to_dense64": _conv_to_dense64}


class Case:
    """A packed network, its inputs, its export, and the packed network's answers."""

    def __init__(self, name, directory):
        net, shape, levels, quantization = CASES[name]()
        dtype = np.dtype(net.dtype)
        self.x, self.codes = _inputs(shape, levels, dtype, seed=len(name))
        if net.normalizations():
            net.recalibrate_normalization(self.x[:200], mode="deterministic")
            randomize_normalization(net, np.random.default_rng(7))
        if quantization is None:
            _dyadic(net)
        self.packed = PackedNetwork.from_network(net, calibration_x=self.x[:64], input_quantization=quantization)
        self.export = self.packed.export_c(directory, name="net_" + name)
        self.logits = self.packed.predict_logits(self.x)
        self.labels = np.argmax(self.logits, axis=1)
        self.values = preactivations(self.packed, self.x)

    def record_dtype(self):
        real = np.dtype(self.export.real_type == "float" and np.float32 or np.float64)
        return np.dtype([("label", "=i4"), ("logits", real, (self.export.n_classes,)),
                         ("integer", "=i4", (self.export.trace_integers,)),
                         ("real", real, (self.export.trace_reals,))])


@pytest.fixture(scope="module")
def cc():
    path = shutil.which("cc")
    if path is None:
        _required("no C compiler 'cc' on PATH: the C export tests need one (apt-get install gcc)")
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory, cc):
    root = tmp_path_factory.mktemp("export_c")
    return {name: Case(name, root / name) for name in CASES}


def build(case, compiler, extra=(), tag="gcc"):
    """Compile the case's export with the strict flags (warnings are errors) by ``compiler`` (a path or a command
    list); returns the program."""
    d = case.export.directory
    exe = os.path.join(d, f"main_{tag}")
    cmd = [*([compiler] if isinstance(compiler, str) else compiler), *STRICT, *extra, "-o", exe,
           os.path.join(d, "main.c"), os.path.join(d, case.export.name + ".c")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    assert done.stderr == "", done.stderr
    return exe


def run(case, exe, codes=False):
    d = case.export.directory
    inp, out = os.path.join(d, "inputs.bin"), os.path.join(d, "results.bin")
    (case.codes if codes else case.x).tofile(inp)
    done = subprocess.run([exe, inp, "--out", out] + (["--codes"] if codes else []), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return np.fromfile(out, dtype=case.record_dtype())


def assert_same(case, records):
    """Predictions, logits and every stage's pre-threshold values equal the packed network's bit for bit."""
    assert len(records) == N_INPUTS
    np.testing.assert_array_equal(records["label"], case.labels)
    np.testing.assert_array_equal(records["logits"].view(np.uint8), case.logits.view(np.uint8))  # bitwise
    for slot, want in zip(case.export.trace, case.values):
        got = records[slot.kind][:, slot.offset:slot.offset + int(np.prod(slot.shape))].reshape(want.shape)
        assert got.dtype == want.dtype or slot.kind == "integer", (slot, got.dtype, want.dtype)
        mismatch = np.flatnonzero(got.astype(want.dtype).ravel() != want.ravel())
        assert mismatch.size == 0, f"stage {slot.stage} ({slot.kind}): {mismatch.size} values differ"


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(CASES))
def test_c_equals_packed_network(cases, cc, name):
    case = cases[name]
    records = run(case, build(case, cc))
    assert_same(case, records)
    # the reference itself: thresholding its values gives the packed network's states
    for stage, values, words in zip(case.packed.stages, case.values, case.packed.forward_packed(case.x)):
        t, flip = stage.arrays["threshold"], stage.arrays["flip"]
        t = t.reshape((-1,) + (1,) * (values.ndim - 2))
        flip = flip.reshape(t.shape)
        integer = values.dtype.kind == "i"
        plus = np.where(flip, values < t if integer else values <= t, values >= t)
        kind, shape = stage.out_desc
        unpacked = (sb.bitpack.unpack(words, shape[0]) if kind == "dense"
                    else sb.bitpack.unpack_channels(words, shape[0]))
        np.testing.assert_array_equal(np.where(plus, 1, -1), unpacked)


def test_bitplane_codes_and_grid_check(cases, cc):
    case = cases["dense_bitplane"]
    exe = build(case, cc)
    assert_same(case, run(case, exe, codes=True))
    off = case.x[:3].copy()
    off[2, 0, 0, 5] += np.float32(1e-3)  # off the q/255 grid: rejected, as PackedNetwork.predict does
    with pytest.raises(ValueError, match="grid"):
        case.packed.predict(off)
    path = os.path.join(case.export.directory, "off.bin")
    off.tofile(path)
    done = subprocess.run([exe, path], capture_output=True, text=True)
    assert done.returncode == 1 and "example 2 rejected" in done.stderr
    assert done.stdout.split() == [str(v) for v in case.labels[:2]]


def test_non_finite_input_rejected(cases, cc):
    case = cases["conv_real"]
    exe = build(case, cc)
    bad = case.x[:2].copy()
    bad[1, 0, 3, 3] = np.nan
    path = os.path.join(case.export.directory, "nan.bin")
    bad.tofile(path)
    done = subprocess.run([exe, path], capture_output=True, text=True)
    assert done.returncode == 1 and "example 1 rejected" in done.stderr


def test_portable_popcount(cases, cc):
    case = cases["conv_binary"]
    assert_same(case, run(case, build(case, cc, ["-DSBN_PORTABLE_POPCOUNT"], tag="portable")))


@pytest.mark.parametrize("name", sorted(CASES))
def test_clang(cases, name):
    clang = _clang()
    if clang is None:
        _required("neither clang nor the ziglang package is installed (pip install ziglang)")
    case = cases[name]
    assert_same(case, run(case, build(case, clang, tag="clang")))


def test_m32(cases, cc, tmp_path):
    """The export built for 32-bit x86 (4-byte pointers and ``long``) computes the same bits."""
    compiler = _compiler_32(cc, tmp_path)
    if compiler is None:
        _required(f"neither '{cc} -m32' (gcc-multilib) nor zig cc (pip install ziglang) builds 32-bit programs "
                  "that run here")
    for name in ("dense_bitplane", "conv_binary", "dense_real64"):
        case = cases[name]
        assert_same(case, run(case, build(case, compiler, tag="m32")))


def test_example_makefile_builds(cases, cc):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    case = cases["conv_to_dense64"]
    done = subprocess.run([make, "-s", "-C", case.export.directory, f"CC={cc}", "CFLAGS=" + " ".join(STRICT)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same(case, run(case, os.path.join(case.export.directory, f"{case.export.name}_main")))


# --------------------------------------------------------------------------- sizes, errors, CLI
def test_sizes_reported(cases):
    case = cases["dense_bitplane"]
    rows = case.export.layers
    stage0 = case.packed.stages[0].arrays
    assert rows[0]["c_bytes"] == stage0["weight_bits"].nbytes + stage0["threshold"].nbytes + stage0["flip"].size
    assert rows[-1]["c_bytes"] == sum(r["c_bytes"] for r in rows[:-1]) == case.export.data_bytes
    assert case.export.float32_bytes == sum(r["float32_bytes"] for r in case.packed.size_report()[:-1])
    header = open(case.export.files["header"]).read()
    assert f"#define NET_DENSE_BITPLANE_DATA_BYTES {case.export.data_bytes}" in header
    assert f"{case.export.data_bytes:,d}" in header and f"{case.export.float32_bytes:,d}" in header


def test_errors_name_the_problem(cases, tmp_path):
    packed = cases["conv_binary"].packed
    with pytest.raises(TypeError, match="packed: expected a sbnnumba.PackedNetwork"):
        export_c(object(), tmp_path)
    for bad in ("1net", "int", "sbn_x", "a-b", ""):
        with pytest.raises(ValueError, match="name: expected a C identifier"):
            packed.export_c(tmp_path, name=bad)
    stage = packed.stages[2]
    kind = stage.kind
    try:
        stage.kind = "ternary_conv"
        with pytest.raises(NotImplementedError, match="stage 2 has the kind 'ternary_conv'"):
            packed.export_c(tmp_path / "x")
    finally:
        stage.kind = kind


def test_cli_export(cases, tmp_path, capsys):
    from sbnnumba.cli import main

    case = cases["dense_bitplane"]
    path = case.packed.save(tmp_path / "packed.npz")
    out = tmp_path / "c"
    assert main(["export", str(path), "--format", "c", "--out", str(out), "--name", "fmnist"]) == 0
    printed = capsys.readouterr().out
    assert "fmnist.h" in printed and f"float32 network: {case.export.float32_bytes:,d} bytes" in printed
    assert sorted(os.listdir(out)) == ["Makefile", "README.md", "fmnist.c", "fmnist.h", "main.c"]
    assert (out / "fmnist.c").read_text() == open(case.export.files["source"]).read().replace(
        "net_dense_bitplane", "fmnist").replace("NET_DENSE_BITPLANE", "FMNIST")
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 2
    assert "--format" in capsys.readouterr().err
    assert main(["export", str(path), "--format", "c", "--out", str(out), "--input-quantization", "1/255,8"]) == 2
    assert "--input-quantization: the packed network file is already converted" in capsys.readouterr().err


def test_cli_export_training_checkpoint(tmp_path, capsys):
    """A training checkpoint is converted as PackedNetwork.from_network does, with the bit-plane first stage."""
    from sbnnumba import training
    from sbnnumba.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "embedded", "--train-subset", "200", "--hidden", "40", "--weights", "bernoulli",
                 "--normalize", "--epochs", "1", "--eval-samples", "1", "--no-progress", "--out", str(run)]) == 0
    out = tmp_path / "c"
    assert main(["export", str(run / "checkpoint.npz"), "--format", "c", "--out", str(out),
                 "--input-quantization", "1/255,8"]) == 0
    capsys.readouterr()
    net = training.load_network(str(run / "checkpoint.npz"))
    packed = PackedNetwork.from_network(net, input_quantization=(1 / 255, 8))
    assert packed.stages[0].kind == "bitplane_dense"
    export = packed.export_c(tmp_path / "python")
    assert (out / "model.c").read_text() == open(export.files["source"]).read()
