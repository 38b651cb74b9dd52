"""Benchmark: ``sbnnumba.runtime.retain_freed_memory`` (freed large arrays stay in the heap) vs glibc's default.

The contenders differ in process-wide malloc settings, so each is timed in its own worker process;
the workers alternate (default, retain, default, ...) and each reports the median of its own repeats.
Workload: the paper's all-conv SBN at half width with its first stage padded by 2 (the network of the
results in docs/experiments/2026-12-04-results.md), on real Fashion-MNIST images when found (else the embedded subset):

1. evaluation (``training.evaluate``, chunks of 500 images, 2 samples, unit entropy on) of 1,000 test
   images: milliseconds per image and sample;
2. one PSA training step (``sbnnumba.estimate``), batch 64: seconds.

Prints the medians over the workers and the ratio default / retain (> 1: retaining is faster).

Usage: python bench/runtime_memory.py [--rounds 3] [--steps 6]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HALF_WIDTH = [48, 48, 48, 96, 96, 96, 96, 96]


def worker(mode, steps):
    """Time the workload in this process with malloc ``mode`` ("default" or "retain"); print JSON."""
    import numpy as np

    import sbnnumba as sb
    from sbnnumba import runtime, training
    from sbnnumba.architectures import build
    from sbnnumba.datasets import load_fashion_mnist

    state = runtime.retain_freed_memory() if mode == "retain" else "default"
    ds = load_fashion_mnist(verbose=False)
    net = build("conv", (1, 28, 28), 10, channels=HALF_WIDTH, input_padding=2, rng=1)
    x_eval, y_eval = ds.x_test[:1000], ds.y_test[:1000]
    x = (ds.x_train[:64] / np.float32(255)).astype(np.float32)
    y = ds.y_train[:64]
    rng = np.random.default_rng(0)
    sb.estimate("psa", net, x, y, rng=rng)  # compile / warm up
    training.evaluate(net, x_eval[:500], y_eval[:500], samples=1, rng=0)
    step_times, eval_times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        sb.estimate("psa", net, x, y, rng=rng)
        step_times.append(time.perf_counter() - start)
    for _ in range(max(1, steps // 3)):
        start = time.perf_counter()
        training.evaluate(net, x_eval, y_eval, samples=2, rng=0, batch_size=500)
        eval_times.append((time.perf_counter() - start) / (2 * len(y_eval)))
    print(json.dumps({"mode": mode, "state": state, "step_s": statistics.median(step_times),
                      "eval_ms": 1e3 * statistics.median(eval_times)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per contender (alternating)")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per worker")
    parser.add_argument("--worker", choices=("default", "retain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    from common import machine_info
    machine_info()
    from sbnnumba.runtime import MALLOC_ENV_SETTINGS
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV_SETTINGS}
    results = {"default": [], "retain": []}
    for round_index in range(args.rounds):
        order = ("default", "retain") if round_index % 2 == 0 else ("retain", "default")
        for mode in order:
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(args.steps)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            results[mode].append(row)
            print(f"round {round_index + 1} {mode:7s} ({row['state']}): PSA step {row['step_s']:.3f} s, "
                  f"evaluation {row['eval_ms']:.2f} ms per image and sample", flush=True)
    med = {mode: {key: statistics.median(r[key] for r in rows) for key in ("step_s", "eval_ms")}
           for mode, rows in results.items()}
    print(f"median over {args.rounds} workers each:")
    d, r = med["default"], med["retain"]
    print(f"  PSA training step, batch 64: default {d['step_s']:.3f} s, retain {r['step_s']:.3f} s, "
          f"ratio default/retain {d['step_s'] / r['step_s']:.2f}")
    print(f"  evaluation, ms per image and sample: default {d['eval_ms']:.2f}, retain {r['eval_ms']:.2f}, "
          f"ratio default/retain {d['eval_ms'] / r['eval_ms']:.2f}")


if __name__ == "__main__":
    main()
