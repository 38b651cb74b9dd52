"""Benchmark: data-parallel training over MPI (sbnnumba.distributed) on this machine, and a model for N nodes.

Prints, measured in the same run (the machine may be shared: before every launch the bench samples how
many other tasks are runnable, ``procs_running`` of /proc/stat minus itself, and prints a verdict, IDLE or
LOADED, with the figures; timings on a loaded machine are upper bounds, not targets met):

1. Training steps per second of the paper's all-convolutional SBN (``architectures.conv``, 1x28x28,
   ``--width`` times the paper's channels, default 1.0), global batch ``--batch`` (64), PSA:
   * 1 rank  x 1 thread  (``mpiexec -n 1``, the distributed step),
   * 2 ranks x 1 thread  (``mpiexec -n 2``: each rank half of every batch, one Allreduce per step),
   * 1 process x 2 threads (no MPI: the ordinary ``sbnnumba.estimate`` step, Numba/BLAS threads 2),
   each launched ``--rounds`` times in turn (interleaved), medians; with the per-epoch time this gives
   for the 54000 training images of Fashion-MNIST (843.75 steps), and the communication share of a
   2-rank step (gradient Allreduce + batch-norm reductions, including waiting for the slower rank).
2. The time of one in-place ``Allreduce`` of a float32 buffer between 2 ranks against its size.
3. A model extrapolating the paper's conv network to N nodes at 10 and 100 Gb/s (assumptions printed
   with it): the N at which communication time per step exceeds computation time.

Usage: python bench/scaling.py [--width 1.0] [--batch 64] [--steps 4] [--rounds 2] [--estimator psa]
       python bench/scaling.py --smoke   (tiny network, one step: checks that the bench runs, measures nothing)
       (internally: --worker step|allreduce under mpiexec)
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info  # noqa: E402

STEPS_PER_EPOCH = 54000 / 64  # Fashion-MNIST training split (90 % of 60000) at batch 64
SIZES = (10 ** 3, 10 ** 4, 10 ** 5, 10 ** 6, 4 * 10 ** 6)
#: Mean number of other runnable tasks above which the machine counts as loaded (a benchmark's own ranks are
#: not running while it samples: the sampling happens between launches).
LOADED_TASKS = 0.2


def other_runnable(samples=20, interval=0.05):
    """Mean and max number of runnable tasks other than this process (``procs_running`` of /proc/stat - 1),
    sampled ``samples`` times; ``(nan, nan)`` where /proc/stat is not there."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/stat") as f:
                line = next(row for row in f if row.startswith("procs_running"))
        except (OSError, StopIteration):
            return float("nan"), float("nan")
        counts.append(max(0, int(line.split()[1]) - 1))
        time.sleep(interval)
    return float(np.mean(counts)), float(np.max(counts))


class LoadLog:
    """The other runnable tasks sampled before each launch, and the verdict on the whole run."""

    def __init__(self):
        self.means, self.maxima = [], []

    def sample(self):
        mean, peak = other_runnable()
        self.means.append(mean)
        self.maxima.append(peak)

    @property
    def loaded(self):
        return not self.means or not np.nanmax(self.means) <= LOADED_TASKS

    def verdict(self):
        if not self.means:
            return "LOADED? (no sample)"
        head = "LOADED: the figures are upper bounds, NOT a measurement of this machine idle" if self.loaded else \
            "IDLE"
        return (f"{head} (other runnable tasks before each launch: mean {np.nanmin(self.means):.2f}-"
                f"{np.nanmax(self.means):.2f}, peak {np.nanmax(self.maxima):.0f}; threshold {LOADED_TASKS})")


def threads_env(n):
    n = str(n)
    return dict(os.environ, NUMBA_NUM_THREADS=n, OMP_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MKL_NUM_THREADS=n)


def build_net(width, rank=0):
    from sbnnumba.architectures import build

    return build("conv", (1, 28, 28), 10, width=width, rng=np.random.default_rng(rank))


# ------------------------------------------------------------------------------------------ workers
def worker_step(a):
    """Time ``a.steps`` training steps (after one warm-up step); rank 0 prints one JSON line."""
    import sbnnumba as sb
    from sbnnumba import distributed as dist
    from sbnnumba.optim import Adam

    net = build_net(a.width)
    data = np.random.default_rng(0)
    x = data.random((a.batch, 1, 28, 28)).astype(np.float32)
    y = data.integers(0, 10, a.batch)
    opt = Adam(lr=1e-3)
    if a.local:  # the ordinary one-process step, threads as given by the environment
        rng = np.random.default_rng(1)
        step = lambda t: sb.estimate(a.estimator, net, x, y, rng)  # noqa: E731
        comm = None
    else:
        comm = dist.TimingCommunicator(dist.world())
        dist.broadcast_state(net, comm)
        dp = dist.DataParallelStep(net, comm, a.estimator, seed=1)
        step = lambda t: dp(x, y, t)  # noqa: E731
    net.train()
    for t in range(a.steps + 1):
        if t == 1:  # the first step compiles / warms caches
            if comm is not None:
                comm.barrier()
                comm.reset()
            t0 = time.perf_counter()
        loss, grads = step(t)
        opt.update(net.params, grads)
    elapsed = (time.perf_counter() - t0) / a.steps
    if comm is None or comm.is_root:
        out = {"step_s": elapsed, "params": int(sum(p.size for p in net.params.values()))}
        if comm is not None:
            out.update(grad_comm_s=comm.gradient_seconds / a.steps, bn_comm_s=comm.statistics_seconds / a.steps,
                       ranks=comm.size)
        print("RESULT " + json.dumps(out), flush=True)


def worker_allreduce(a):
    """Median time of one in-place float32 Allreduce per buffer size; rank 0 prints one JSON line."""
    from sbnnumba import distributed as dist

    comm = dist.world()
    out = {}
    for size in SIZES:
        buf = np.ones(size, dtype=np.float32)
        times = []
        for _ in range(max(5, min(50, 2 * 10 ** 7 // size))):
            comm.barrier()
            t = time.perf_counter()
            comm.allreduce_sum_(buf)
            times.append(time.perf_counter() - t)
        out[size] = float(np.median(times))
    if comm.is_root:
        print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------ driver
def launch(args, ranks=None, threads=1, load=None):
    if load is not None:
        load.sample()
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    if ranks is not None:
        cmd = ["mpiexec", "-n", str(ranks)] + cmd
    r = subprocess.run(cmd, env=threads_env(threads), capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def measure_steps(a, load):
    common = ["--worker", "step", "--width", str(a.width), "--batch", str(a.batch), "--steps", str(a.steps),
              "--estimator", a.estimator]
    contenders = {"1 rank x 1 thread": lambda: launch(common, ranks=1, load=load),
                  "2 ranks x 1 thread": lambda: launch(common, ranks=2, load=load),
                  "1 process x 2 threads": lambda: launch(common + ["--local"], threads=2, load=load)}
    runs = {name: [] for name in contenders}
    for _ in range(a.rounds):
        for name, fn in contenders.items():
            runs[name].append(fn())
    return {name: {key: float(np.median([r[key] for r in rs])) for key in rs[0]} for name, rs in runs.items()}


def ring_allreduce_seconds(nbytes, nodes, gbit_s, latency_s):
    """Ring Allreduce: ``2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency`` (bandwidth-optimal)."""
    if nodes == 1:
        return 0.0
    return 2 * (nodes - 1) / nodes * nbytes / (gbit_s * 1e9 / 8) + 2 * (nodes - 1) * latency_s


def model(params, step_s_one_core, batch, cores_per_node, n_bn, loaded, latency_s=20e-6):
    """Per-step compute and communication time on N nodes (strong and weak scaling); prints the tables.

    Returns ``{(scaling, gbit_s): first N where communication > compute, or None}``.
    """
    nbytes = 4 * (params + 1)
    per_example = step_s_one_core / batch  # one core, seconds per example of a step (forward + backward)
    print(f"\n3. Model: the paper's conv network (1x28x28, width as measured), {params / 1e6:.2f} M float32 "
          f"parameters, {nbytes / 1e6:.2f} MB of gradient per step.")
    print("Assumptions: compute per example and core is the 1-rank time measured above / batch "
          f"({1e3 * per_example:.1f} ms; this machine, {'loaded' if loaded else 'idle'}; a cluster core may be "
          "faster, which moves "
          f"the crossover to smaller N); a node runs {cores_per_node} ranks, one per core, with perfect "
          "scaling inside; a rank's compute is proportional to its examples, ceil(B / ranks); ranks on a "
          "node reduce through shared memory first, so one gradient per node crosses the network, by a ring "
          "Allreduce: 2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency (latency "
          f"{latency_s * 1e6:.0f} us per message, TCP-class); plus {n_bn} batch-norm reductions per step of a "
          "few KB each (latency only, twice: forward and backward); no overlap of communication and "
          "computation (the step is synchronous).")
    found = {}
    for scaling, node_batch in (("strong", None), ("weak", batch)):
        what = (f"strong scaling: global batch {batch} fixed" if node_batch is None else
                f"weak scaling: {node_batch} examples per node, global batch {node_batch} x N")
        print(f"  {what}")
        print(f"  {'nodes':>6} {'ex/rank':>8} {'compute ms':>11} "
              + " ".join(f"{f'comm {g} Gb/s ms':>17}" for g in (10, 100)))
        for nodes in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            global_batch = batch if node_batch is None else node_batch * nodes
            per_rank = -(-global_batch // (nodes * cores_per_node))
            compute = per_example * per_rank
            comms = [ring_allreduce_seconds(nbytes, nodes, g, latency_s) + 2 * n_bn * 2 * (nodes - 1) * latency_s
                     for g in (10, 100)]
            print(f"  {nodes:>6} {per_rank:>8} {1e3 * compute:>11.1f} " + " ".join(f"{1e3 * c:>17.1f}" for c in comms))
            for g, c in zip((10, 100), comms):
                if c > compute:
                    found.setdefault((scaling, g), nodes)
        for g in (10, 100):
            n = found.get((scaling, g))
            # break-even at 16 nodes: how much faster a core must be for communication to dominate there
            per_rank = -(-(batch if node_batch is None else node_batch * 16) // (16 * cores_per_node))
            comm16 = ring_allreduce_seconds(nbytes, 16, g, latency_s) + 2 * n_bn * 2 * 15 * latency_s
            print(f"  -> {scaling} scaling at {g} Gb/s: communication exceeds computation "
                  + (f"from N = {n} nodes on" if n else "within 256 nodes: never")
                  + f"; at 16 nodes it would with cores {per_example * per_rank / comm16:.0f}x faster than here")
        if node_batch is None:
            print(f"  (beyond {max(1, batch // cores_per_node)} node(s) some ranks have no example: the batch, "
                  "not the network, limits strong scaling)")
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--estimator", default="psa")
    p.add_argument("--cores-per-node", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="width 0.125, batch 8, 1 step, 1 round: runs, measures nothing")
    p.add_argument("--worker", choices=["step", "allreduce"], help=argparse.SUPPRESS)
    p.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        a.width, a.batch, a.steps, a.rounds = 0.125, 8, 1, 1
    if a.worker == "step":
        return worker_step(a)
    if a.worker == "allreduce":
        return worker_allreduce(a)
    machine_info()
    print(f"Load average before: {os.getloadavg()[0]:.2f}")
    load = LoadLog()
    steps = measure_steps(a, load)
    print(f"\nMachine during the step measurements: {load.verdict()}")
    print(f"\n1. Training step, paper conv SBN width {a.width}, 1x28x28, batch {a.batch}, {a.estimator} "
          f"(medians of {a.rounds} launches x {a.steps} steps):")
    for name, r in steps.items():
        line = (f"  {name:<22} {r['step_s']:.3f} s/step  {1 / r['step_s']:.2f} steps/s  "
                f"epoch (843.75 steps) {STEPS_PER_EPOCH * r['step_s'] / 60:.1f} min")
        if "grad_comm_s" in r and r.get("ranks", 1) > 1:
            share = (r["grad_comm_s"] + r["bn_comm_s"]) / r["step_s"]
            line += (f"  communication {100 * share:.1f} % of the step (gradient Allreduce "
                     f"{1e3 * r['grad_comm_s']:.1f} ms, batch-norm {1e3 * r['bn_comm_s']:.1f} ms, incl. waiting)")
        print(line)
    two, threads = steps["2 ranks x 1 thread"]["step_s"], steps["1 process x 2 threads"]["step_s"]
    print(f"  2 ranks vs 1 process with 2 threads: {threads / two:.2f}x the speed per epoch "
          f"({'not slower' if two <= threads else 'slower'} on this run"
          f"{', measured on a LOADED machine: not a claim' if load.loaded else ', idle machine'})")
    print("\n2. In-place float32 Allreduce, 2 ranks on this machine (shared memory), median:")
    ar = launch(["--worker", "allreduce"], ranks=2, load=load)
    for size, sec in ar.items():
        print(f"  {int(size):>9} floats ({4 * int(size) / 1e6:7.3f} MB): {1e6 * sec:9.1f} us "
              f"({4 * int(size) / sec / 1e9:.2f} GB/s)")
    net = build_net(a.width)
    model(steps["1 rank x 1 thread"]["params"], steps["1 rank x 1 thread"]["step_s"], a.batch, a.cores_per_node,
          len(net.normalizations()), load.loaded)
    print(f"\nMachine over the whole run (including the Allreduce launch): {load.verdict()}")
    print(f"Load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
