"""Benchmark: sbnnumba's training step against PyTorch's on the same network, weights and data.

Prints, per workload, the median time per step of forward + backward (interleaved repeats, float32,
logistic noise) of sbnnumba and of PyTorch's CPU build, and their ratio (sbnnumba / PyTorch; below
1 means sbnnumba is faster), at one and at two threads (Numba + BLAS through
``sbnnumba.set_num_threads``, ``torch.set_num_threads``; the two counts interleaved round-robin
with the contenders, each contender's count set untimed before its turn):

* dense 784-1024-1024-10, batch 128: deep ST (``phi(a) = 2 p(a)``) in both; sbnnumba's PSA against
  PyTorch's ST;
* the PSA paper's conv network at width 1.0 on 1x28x28 images, batch 64: ST in both, sbnnumba's PSA
  against PyTorch's ST;
* one Adam update of the dense network's parameters.

The PyTorch model is the same SBN: ``x = sign(a - z)`` with logistic ``z = log(u / (1 - u))``, a custom
autograd function whose backward is the deep ST factor ``2 p(a) = 2 sigma(a) sigma(-a)``, a linear head
and the mean cross-entropy. Only the timing is compared (the two draw different noise).

``--busy-core`` starts a process that keeps one core busy for the whole run (stopped at the end), to
check that two-thread steps are not slower than one-thread steps when the machine is shared (the
per-call thread rule of ``sbnnumba.runtime`` decides how many threads each kernel call gets). The table's
one-step medians swing by several per cent with where the scheduler's slices fall, so the verdict comes
from a paired measurement that follows it (``common.paired_ratio``, ``--pairs`` pairs): per sbnnumba
contender, samples of steps in a row lasting about 0.2 s at one and at two threads, alternating, the median
of the pairs' 2-thread / 1-thread ratios and its bootstrap 95 % interval, and the same measurement of the
dense ST step at one thread against itself (an A/A control: the interval a ratio of 1 gives in this run).
A step is SLOWER at two threads when its whole interval lies above 1. The load average is printed with
every table: on a machine shared with other jobs no ratio is a verdict. A two-thread ratio whose PyTorch step took
longer than at one thread is flagged "not counted": its baseline slowed down (another process, a stalled BLAS
call), which flatters the ratio.

Like the command line's training job, the run keeps freed temporaries' pages in the process
(``sbnnumba.runtime.retain_freed_memory``; process-wide, so PyTorch's allocations too); ``--default-malloc``
leaves glibc's allocator as it is.

Runs only where PyTorch is installed (``pip install torch``); the package itself never imports it.

Usage: python bench/vs_torch.py [--repeats 7] [--busy-core [--pairs 30]] [--only dense|conv|adam] [--default-malloc]
"""
import argparse
import functools
import os
import subprocess
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # before NumPy loads OpenBLAS: see sbnnumba/__init__.py

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved_medians, machine_info, paired_ratio  # noqa: E402

import sbnnumba as sb  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("bench/vs_torch.py needs PyTorch: pip install torch")


class _SignST(torch.autograd.Function):
    """Forward ``sign(a - z)`` (sign(0) = +1); backward the deep ST factor ``2 sigma(a) sigma(-a)``."""

    @staticmethod
    def forward(ctx, a, z):
        ctx.save_for_backward(a)
        return torch.where(a - z >= 0, 1.0, -1.0).to(a.dtype)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        s = torch.sigmoid(a)
        return g * 2 * s * (1 - s), None


def _logistic(shape, gen):
    u = torch.rand(shape, generator=gen).clamp_(1e-7, 1 - 1e-7)
    return torch.log(u) - torch.log1p(-u)


class TorchSBN(torch.nn.Module):
    """The sbnnumba network's stages as PyTorch modules, weights copied from ``net.params``."""

    def __init__(self, net):
        super().__init__()
        self.stages = torch.nn.ModuleList()
        for stage in net.stages:
            w = net.params[f"stages.{len(self.stages)}.weight"]
            b = net.params[f"stages.{len(self.stages)}.bias"]
            if w.ndim == 4:
                m = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=stage.stride,
                                    padding=stage.padding)
            else:
                m = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(b))
            self.stages.append(m)
        self.head = torch.nn.Linear(*net.params["head.weight"].shape[::-1])
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(net.params["head.weight"]))
            self.head.bias.copy_(torch.from_numpy(net.params["head.bias"]))
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x):
        for m in self.stages:
            a = m(x)
            x = _SignST.apply(a, _logistic(a.shape, self.gen))
        return self.head(x.flatten(1))


def _torch_step(model, x, y):
    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return step


def _sb_step(net, method, x, y, rng):
    return lambda: sb.estimate(method, net, x, y, rng=rng)


def _workloads(which):
    rng = np.random.default_rng(0)
    out = {}
    if which in (None, "dense", "adam"):
        net = sb.Network.dense([784, 1024, 1024], 10, noise="logistic", rng=rng)
        x = rng.random((128, 784), dtype=np.float32)
        y = rng.integers(0, 10, 128)
        out["dense"] = (net, x, y)
    if which in (None, "conv"):
        net = sb.architectures.build("conv", (1, 28, 28), 10, rng=np.random.default_rng(1), width=1.0)
        x = rng.random((64, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, 64)
        out["conv"] = (net, x, y)
    return out


def _contenders(name, net, x, y):
    model = TorchSBN(net)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(2)
    return {f"{name} ST sbnnumba": _sb_step(net, "st", x, y, rng),
            f"{name} PSA sbnnumba": _sb_step(net, "psa", x, y, rng),
            f"{name} ST torch": _torch_step(model, tx, ty)}


def _adam_contenders(net):
    params = {k: v.copy() for k, v in net.params.items()}
    grads = {k: (0.01 * np.random.default_rng(3).standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}
    opt = sb.optim.Adam(lr=1e-3)
    tparams = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in params.values()]
    for p, g in zip(tparams, grads.values()):
        p.grad = torch.from_numpy(g)
    topt = torch.optim.Adam(tparams, lr=1e-3)
    return {"Adam update sbnnumba": lambda: opt.update(params, grads), "Adam update torch": topt.step}


def _set_threads(threads):
    sb.set_num_threads(threads)
    torch.set_num_threads(threads)


def _run(workloads, repeats):
    """``{threads: {label: median seconds}}`` at 1 and 2 threads, the two counts interleaved round-robin
    with the contenders (a change of the machine's load hits both counts alike)."""
    contenders, prepare = {}, {}
    for threads in (1, 2):
        _set_threads(threads)
        mine = {}
        for name, (net, x, y) in workloads.items():
            mine.update(_contenders(name, net, x, y))
        if "dense" in workloads:
            mine.update(_adam_contenders(workloads["dense"][0]))
        for label, fn in mine.items():
            fn()  # compile and warm up
            contenders[(label, threads)] = fn
            prepare[(label, threads)] = functools.partial(_set_threads, threads)
    med = interleaved_medians(contenders, repeats, settle=0.05, prepare=prepare)
    return {t: {label: s for (label, threads), s in med.items() if threads == t} for t in (1, 2)}


def _report(threads, med, load, one_thread):
    """The table of one thread count; ``one_thread`` the medians at one thread: a torch baseline slower at
    ``threads`` than at one thread slowed down (another process, a stalled BLAS call), and its ratios are flagged as
    not to be counted."""
    print(f"\n== {threads} thread(s) (interleaved with the other count), load average (1 min) at the end of the run: "
          f"{load:.2f} ==")
    for label, ms in med.items():
        print(f"  {label:<28} {1e3 * ms:9.2f} ms")

    def slowed(label):
        if threads == 1 or med[label] <= one_thread[label]:
            return ""
        return (f"  [not counted: {label} took {1e3 * med[label]:.2f} ms here against {1e3 * one_thread[label]:.2f} "
                f"at one thread, a baseline that slowed down]")

    for name in ("dense", "conv"):
        if f"{name} ST torch" in med:
            t = med[f"{name} ST torch"]
            st, psa = med[f"{name} ST sbnnumba"], med[f"{name} PSA sbnnumba"]
            print(f"  {name}: ST / torch ST = {st / t:.2f}x, PSA / ST = {psa / st:.2f}x, "
                  f"PSA / torch ST = {psa / t:.2f}x" + slowed(f"{name} ST torch"))
    if "Adam update torch" in med:
        print(f"  Adam / torch Adam = {med['Adam update sbnnumba'] / med['Adam update torch']:.2f}x"
              + slowed("Adam update torch"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--busy-core", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--pairs", type=int, default=30, help="pairs of the --busy-core paired check")
    parser.add_argument("--only", choices=("dense", "conv", "adam"), default=None)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (by default the run reuses freed pages, as the CLI does)")
    args = parser.parse_args(argv)
    machine_info()
    # Like `python -m sbnnumba train` (and the other training benchmarks): freed temporaries keep their pages, so a
    # step does not pay page faults on the conv stages' large arrays. Process-wide: torch's allocations alike.
    malloc = "glibc default" if args.default_malloc else f"retain_freed_memory: {sb.runtime.retain_freed_memory()}"
    print(f"malloc: {malloc} (both contenders, one process)")
    print(f"torch {torch.__version__}; " + torch.__config__.parallel_info().splitlines()[0])
    busy = None
    if args.busy_core:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        print(f"busy-core: process {busy.pid} keeps one core busy")
    try:
        workloads = _workloads(args.only)
        results = _run(workloads, args.repeats)
        load = os.getloadavg()[0]
        for t, med in results.items():
            _report(t, med, load, results[1])
        _thread_check(results, busy is not None)
        if busy is not None:
            _paired_thread_check(workloads, results[1], args.pairs)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def _thread_check(results, busy):
    """2-thread / 1-thread ratio of the table's one-step medians, per contender."""
    print(f"\n2 threads / 1 thread, one-step medians{' (one core kept busy by another process)' if busy else ''}:")
    for label in results[1]:
        print(f"  {label:<28} {results[2][label] / results[1][label]:.2f}x")


def _paired_thread_check(workloads, one_thread, pairs):
    """The verdict: paired 2-thread / 1-thread ratios of sbnnumba's steps (``common.paired_ratio``), with an A/A
    control, while the busy process runs."""
    rng = np.random.default_rng(2)
    steps = {}
    for name, (net, x, y) in workloads.items():
        for method in ("st", "psa"):
            steps[f"{name} {method.upper()} sbnnumba"] = _sb_step(net, method, x, y, rng)
    if "dense" in workloads:
        steps["Adam update sbnnumba"] = _adam_contenders(workloads["dense"][0])["Adam update sbnnumba"]
    one, two = functools.partial(_set_threads, 1), functools.partial(_set_threads, 2)
    print(f"\n2 threads / 1 thread, paired ({pairs} pairs of samples of about 0.2 s; median [95 % interval]), "
          f"one core kept busy by another process:")
    verdicts = {}
    for label, step in steps.items():
        calls = max(1, round(0.2 / one_thread[label]))
        if label == "dense ST sbnnumba":  # the A/A control first: what a ratio of 1 looks like in this run
            median, low, high = paired_ratio(step, one, one, pairs, calls)
            control = f"A/A: {label} 1t / 1t"
            print(f"  {control:<36} {median:.4f} [{low:.4f}, {high:.4f}]  ({calls} steps a sample)")
        median, low, high = paired_ratio(step, one, two, pairs, calls)
        verdicts[label] = "SLOWER" if low > 1 else "faster" if high < 1 else "no slower (1 within the interval)"
        print(f"  {label:<36} {median:.4f} [{low:.4f}, {high:.4f}]  {verdicts[label]}  ({calls} steps a sample)")
    slower = [label for label, verdict in verdicts.items() if verdict == "SLOWER"]
    print(f"  => sbnnumba steps slower at 2 threads than at 1: {', '.join(slower) if slower else 'none'}")


if __name__ == "__main__":
    main()
