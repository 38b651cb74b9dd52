"""Benchmark: the exported C program (``PackedNetwork.export_c``) against PackedNetwork and the float network.

For the two fully binary networks of ``docs/experiments/2026-12-02-results-binary-mlp.md`` and
``docs/experiments/2026-12-05-results-binary-conv.md`` (Bernoulli weights in every stage, batch normalization,
real head):

* ``mlp``: 784-512-512-10, exported with the bit-plane first stage (``input_quantization=(1/255, 8)``);
* ``conv``: the PSA paper's all-conv network at half width (channels 48, 48, 48, 96 x 5), input
  padding 2; its first stage is a float conv with +-1 weights on the real pixels;

both built untrained (speed does not depend on the trained values; ``docs/experiments/
2026-12-05-export-c.md`` checks exactness on trained ones) with deterministic-mode statistics from
training images, this script measures, on the same Fashion-MNIST test images, single-threaded:

1. ``C``: the exported program compiled with ``cc -std=c99 -O3 -march=native``, one image per
   ``<name>_predict`` call, timed inside a small driver (processor time, ``clock()``; median of ``--passes``
   passes over the images per run; the driver is bench-only code and may allocate);
2. ``packed``: ``PackedNetwork.predict`` on the whole batch (Numba kernels, ``NUMBA_NUM_THREADS`` 1);
   ``packed 1``: the same one image per call (``--single`` images), the latency a caller of one image sees;
3. ``float``: ``Network.forward_deterministic`` on the whole batch (OpenBLAS, 1 thread);

interleaved round-robin over ``--rounds`` rounds (medians), and checks that the C classes equal
``PackedNetwork.predict``'s. It also reports the C object's code (``.text``) and constant data
(``.rodata``) bytes from ``size -A``, the generated data size and the float32 parameter size.

Usage::

    python bench/export_c.py [--images 1000] [--conv-images 200] [--rounds 7] [--passes 3] [--single 100]
        [--only mlp,conv] [--cc cc]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # see bench/packed_inference.py
os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # single thread, as the C program

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import sbnnumba  # noqa: F401
except ImportError:  # run from a source checkout without installation
    sys.path.insert(0, os.path.dirname(HERE))

from common import machine_info  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from sbnnumba import architectures, datasets  # noqa: E402
from sbnnumba.packed import PackedNetwork  # noqa: E402

DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "@NAME@.h"

static @NAME@_workspace ws;

static double now(void) /* processor time of this process: robust to other jobs' preemption */
{
    return (double)clock() / CLOCKS_PER_SEC;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* bench INPUT N PASSES: median seconds of one pass over the N inputs, then the N classes */
int main(int argc, char **argv)
{
    long n = atol(argv[2]), i;
    int passes = atoi(argv[3]), p;
    @NAME@_real *x = malloc(sizeof *x * @UPPER@_INPUT_SIZE * n);
    int *labels = malloc(sizeof *labels * n);
    double *times = malloc(sizeof *times * passes);
    FILE *f = fopen(argv[1], "rb");
    if (!x || !labels || !times || !f || fread(x, sizeof *x * @UPPER@_INPUT_SIZE, n, f) != (size_t)n)
        return 2;
    for (p = -1; p < passes; p++) { /* pass -1: warm-up */
        double t0 = now();
        for (i = 0; i < n; i++)
            labels[i] = @NAME@_predict(&ws, x + i * @UPPER@_INPUT_SIZE, NULL, NULL);
        if (p >= 0)
            times[p] = now() - t0;
    }
    qsort(times, passes, sizeof *times, cmp);
    printf("%.9f\n", times[passes / 2]);
    for (i = 0; i < n; i++)
        printf("%d\n", labels[i]);
    return 0;
}
"""


def networks(only, x_calibration):
    """name -> (float network, packed network) of the benchmark's sizes (untrained, seeded)."""
    rng = np.random.default_rng(0)
    out = {}
    if "mlp" in only:
        net = architectures.build("mlp", (1, 28, 28), 10, hidden=(512, 512), weight="bernoulli", normalize=True,
                                  rng=rng)
        net.recalibrate_normalization(x_calibration, mode="deterministic")
        out["mlp"] = (net, PackedNetwork.from_network(net, input_quantization=(1 / 255, 8)))
    if "conv" in only:
        net = architectures.build("conv", (1, 28, 28), 10, width=0.5, weight="bernoulli", normalize=True,
                                  input_padding=2, rng=rng)
        net.recalibrate_normalization(x_calibration[:500], mode="deterministic")
        out["conv"] = (net, PackedNetwork.from_network(net, input_shape=(1, 28, 28)))
    return out


def compile_c(packed, directory, cc):
    """Export, compile driver + model with -O3 -march=native; returns (program, export, section sizes)."""
    export = packed.export_c(directory, name="bench")
    driver = os.path.join(directory, "driver.c")
    with open(driver, "w") as f:
        f.write(DRIVER.replace("@NAME@", "bench").replace("@UPPER@", "BENCH"))
    flags = ["-std=c99", "-O3", "-march=native"]
    exe = os.path.join(directory, "bench_c")
    subprocess.run([cc, *flags, "-o", exe, driver, export.files["source"]], check=True)
    obj = os.path.join(directory, "bench.o")
    subprocess.run([cc, *flags, "-c", "-o", obj, export.files["source"]], check=True)
    sizes = {}
    for line in subprocess.run(["size", "-A", obj], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith((".text", ".rodata")) and parts[1].isdigit():
            key = ".text" if parts[0].startswith(".text") else ".rodata"
            sizes[key] = sizes.get(key, 0) + int(parts[1])
    return exe, export, sizes


def run_c(exe, inputs, n, passes):
    done = subprocess.run([exe, inputs, str(n), str(passes)], capture_output=True, text=True, check=True)
    lines = done.stdout.split()
    return float(lines[0]), np.array([int(v) for v in lines[1:]])


def bench_one(name, net, packed, x, args, directory):
    exe, export, sizes = compile_c(packed, directory, args.cc)
    inputs = os.path.join(directory, "inputs.bin")
    x.tofile(inputs)
    n = len(x)
    _, labels = run_c(exe, inputs, n, 1)
    want = packed.predict(x)
    agree = int(np.sum(labels == want))
    packed.predict(x[:8])
    net.forward_deterministic(x[:8])
    single = x[:args.single]
    contenders = {"C": lambda: run_c(exe, inputs, n, args.passes)[0],
                  "packed": lambda: _timed(packed.predict, x),
                  "packed 1": lambda: _timed(lambda s: [packed.predict(s[i:i + 1]) for i in range(len(s))], single)
                  * n / len(single),
                  "float": lambda: _timed(net.forward_deterministic, x)}
    times = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            times[k].append(contenders[k]())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name}: {packed!r}")
    print(f"  C classes equal PackedNetwork.predict on {agree} of {n} test images")
    for k in names:
        print(f"  {k:9s} {n / med[k]:12,.0f} images/s  ({1e6 * med[k] / n:8.1f} us/image; "
              f"C: {med[k] / med['C']:.2f}x these images/s)" if k != "C" else
              f"  {k:9s} {n / med[k]:12,.0f} images/s  ({1e6 * med[k] / n:8.1f} us/image)")
    print(f"  C object (-O3 -march=native): code .text {sizes.get('.text', 0):,d} bytes, constant data .rodata "
          f"{sizes.get('.rodata', 0):,d} bytes; generated data {export.data_bytes:,d} bytes; float32 parameters "
          f"{export.float32_bytes:,d} bytes ({export.float32_bytes / export.data_bytes:.1f}x)")
    return dict(name=name, agree=agree, n=n, images_per_s={k: n / v for k, v in med.items()}, sizes=sizes,
                data_bytes=export.data_bytes, float32_bytes=export.float32_bytes)


def _timed(fn, x):
    """Processor time of ``fn(x)`` (single-threaded here), as the C driver measures."""
    t0 = time.process_time()
    fn(x)
    return time.process_time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000, help="test images (MLP)")
    p.add_argument("--conv-images", type=int, default=200, help="test images (conv network)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--passes", type=int, default=3, help="passes per C run (median)")
    p.add_argument("--single", type=int, default=100, help="images of the one-image-per-call PackedNetwork timing")
    p.add_argument("--only", default="mlp,conv")
    p.add_argument("--cc", default="cc")
    args = p.parse_args(argv)
    machine_info()
    print("single thread everywhere (NUMBA_NUM_THREADS=1, BLAS limited to 1 thread); the machine may be "
          "shared with other jobs: compare the contenders of one run (interleaved, medians), not absolute figures")
    ds = datasets.load_fashion_mnist(None, embedded="auto", verbose=False)
    x = datasets.normalize(ds.x_test[:max(args.images, args.conv_images)])
    calibration = datasets.normalize(ds.x_train[:2000])
    print(f"data: {ds.name}, test images: {args.images} (MLP), {args.conv_images} (conv)")
    results = []
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        for name, (net, packed) in networks(args.only.split(","), calibration).items():
            images = x if name == "mlp" else x[:args.conv_images]
            results.append(bench_one(name, net, packed, images, args, os.path.join(tmp, name)))
    return 0 if all(r["agree"] == r["n"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
