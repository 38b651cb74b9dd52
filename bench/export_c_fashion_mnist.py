"""Exactness of the exported C program on the 10,000 Fashion-MNIST test images.

For a training checkpoint (``python -m sbnnumba train ... --weights bernoulli``):

1. ``python -m sbnnumba export CHECKPOINT --format c --out OUT [--input-quantization 1/255,8]`` (the
   user's path) and ``cc -std=c99 -pedantic -Wall -Wextra -Werror -O2`` on the result;
2. the same conversion in Python (``PackedNetwork.from_network``, the checkpoint's deterministic-mode
   statistics) and ``export_c`` into a second directory: the sources must be identical;
3. the C program on all test images (float32 pixels ``q/255``; with a bit-plane first stage also the
   uint8 codes, ``--codes``) against ``PackedNetwork.predict``: classes, logits, and every stage's
   pre-threshold values (:func:`sbnnumba.export.preactivations`) and states.

Prints the figures and exits with status 1 if any class differs.

Usage::

    python bench/export_c_fashion_mnist.py CHECKPOINT [--input-quantization 1/255,8] [--out DIR] [--cc cc]
"""
from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import sbnnumba  # noqa: F401
except ImportError:  # run from a source checkout without installation
    sys.path.insert(0, os.path.dirname(HERE))

from sbnnumba import datasets, training  # noqa: E402
from sbnnumba.export import export_c, preactivations  # noqa: E402
from sbnnumba.packed import PackedNetwork  # noqa: E402


def _quantization(text):
    if text is None:
        return None
    scale, bits = text.split(",")
    num, _, den = scale.partition("/")
    return float(num) / (float(den) if den else 1.0), int(bits)


def run_program(exe, export, data, directory, codes=False):
    """Run the compiled program with ``--out`` on ``data``; returns its records."""
    inputs, results = os.path.join(directory, "inputs.bin"), os.path.join(directory, "results.bin")
    data.tofile(inputs)
    subprocess.run([exe, inputs, "--out", results] + (["--codes"] if codes else []), check=True)
    real = np.float32 if export.real_type == "float" else np.float64
    record = np.dtype([("label", "=i4"), ("logits", real, (export.n_classes,)),
                       ("integer", "=i4", (export.trace_integers,)), ("real", real, (export.trace_reals,))])
    return np.fromfile(results, dtype=record)


def compare(tag, records, packed, export, x, values, codes=False):
    """Print the agreement of the C records with the packed network; returns the number of class differences."""
    want_logits = packed.predict_logits(x, codes=codes)
    want = np.argmax(want_logits, axis=1)
    diff_classes = int(np.sum(records["label"] != want))
    bitwise = int(np.sum(np.all(records["logits"] == want_logits, axis=1)))
    print(f"{tag}: classes differ on {diff_classes} of {len(x)} images; logits bitwise equal on {bitwise}, "
          f"max |difference| {np.max(np.abs(records['logits'] - want_logits)):.3g}")
    for slot, ref, stage in zip(export.trace, values, packed.stages):
        got = records[slot.kind][:, slot.offset:slot.offset + int(np.prod(slot.shape))].reshape(ref.shape)
        t = stage.arrays["threshold"].reshape((-1,) + (1,) * (ref.ndim - 2))
        flip = stage.arrays["flip"].reshape(t.shape)

        def plus(v):
            return np.where(flip, v < t if slot.kind == "integer" else v <= t, v >= t)

        n_values = int(np.sum(got != ref))
        n_states = int(np.sum(plus(got) != plus(ref)))
        print(f"  stage {slot.stage} ({stage.kind}, {slot.kind}): {n_values} of {ref.size:,d} pre-threshold values "
              f"differ (max |difference| {np.max(np.abs(got.astype(np.float64) - ref)):.3g}), {n_states} states")
    return diff_classes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--input-quantization", default=None, help="SCALE,BITS, e.g. 1/255,8")
    p.add_argument("--out", default=None, help="where the CLI writes the C files (default: a temporary directory)")
    p.add_argument("--cc", default="cc")
    args = p.parse_args(argv)
    quantization = _quantization(args.input_quantization)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, "cli")
        cmd = [sys.executable, "-m", "sbnnumba", "export", args.checkpoint, "--format", "c", "--out", out]
        cmd += ["--input-quantization", args.input_quantization] if args.input_quantization else []
        print("$ python " + " ".join(cmd[1:]))
        subprocess.run(cmd, check=True)
        exe = os.path.join(out, "model_main")
        build = [args.cc, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2", "-o", exe,
                 os.path.join(out, "main.c"), os.path.join(out, "model.c")]
        print("$ " + " ".join(build))
        subprocess.run(build, check=True)

        packed = PackedNetwork.from_network(training.load_network(args.checkpoint), input_quantization=quantization)
        export = export_c(packed, os.path.join(tmp, "python"))
        same = all(filecmp.cmp(os.path.join(out, f), os.path.join(tmp, "python", f), shallow=False)
                   for f in ("model.h", "model.c"))
        print(f"CLI export identical to PackedNetwork.export_c of the Python conversion: {same}")
        print(f"constant data {export.data_bytes:,d} bytes, float32 parameters {export.float32_bytes:,d} bytes "
              f"({export.float32_bytes / export.data_bytes:.1f}x)")

        ds = datasets.load_fashion_mnist(None, embedded="auto", verbose=False)
        x = datasets.normalize(ds.x_test)
        print(f"data: {ds.name}, {len(x)} test images; packed accuracy "
              f"{np.mean(packed.predict(x) == ds.y_test):.2%}")
        n_bad = compare("C, float pixels", run_program(exe, export, x, tmp), packed, export, x,
                        preactivations(packed, x))
        if quantization is not None:
            n_bad += compare("C, uint8 codes (--codes)", run_program(exe, export, ds.x_test, tmp, codes=True),
                             packed, export, ds.x_test, preactivations(packed, ds.x_test, codes=True), codes=True)
    return 0 if n_bad == 0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
