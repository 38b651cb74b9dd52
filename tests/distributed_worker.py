"""Run by tests/test_distributed.py under ``mpiexec -n N`` (or alone with ``--local``): a few
data-parallel steps of a small network, rank 0 saving the final parameters to an ``.npz``.

    python tests/distributed_worker.py OUT.npz --arch dense|conv [--bn] [--bernoulli] [--estimator psa|st]
        [--steps 4] [--batch 12] [--local]
"""
import argparse
import os
import signal
import sys

import numpy as np

import sbnnumba as sb
from sbnnumba import distributed as dist
from sbnnumba.optim import SGD


def build(arch, bn, bernoulli, seed=0):
    rng = np.random.default_rng(seed)
    weight = "hidden" if bernoulli else "real"
    if arch == "dense":
        return sb.Network.dense([20, 16, 12], 3, rng=rng, weight=weight, normalize=bn), (20,)
    kinds = ["real", "bernoulli" if bernoulli else "real"]
    stage = (lambda layer: sb.Normalized(layer)) if bn else (lambda layer: layer)
    stages = [stage(sb.Conv2d(1, 4, 3, rng=rng, in_shape=(1, 8, 8), weight=kinds[0])),
              stage(sb.Conv2d(4, 5, 3, stride=2, rng=rng, in_shape=(4, 6, 6), weight=kinds[1]))]
    return sb.Network(stages, sb.Linear(5 * 2 * 2, 3, rng=rng)), (1, 8, 8)


def fail(spec, rank, step):
    """Simulated fault: raise an error, or kill this process with SIGKILL (no chance to report)."""
    if spec is None:
        return
    r, t, kind = spec.split(":")
    if int(r) == rank and int(t) == step:
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"simulated failure at step {step}")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--arch", choices=["dense", "conv"], default="dense")
    p.add_argument("--bn", action="store_true")
    p.add_argument("--bernoulli", action="store_true")
    p.add_argument("--estimator", default="psa")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--local", action="store_true", help="one process, LocalCommunicator (no MPI)")
    p.add_argument("--fail", default=None, help="RANK:STEP:raise|kill: that rank fails before that step")
    a = p.parse_args(argv)
    comm = dist.LocalCommunicator() if a.local else dist.world()
    net, shape = build(a.arch, a.bn, a.bernoulli, seed=comm.rank)  # ranks differ until the broadcast
    dist.broadcast_state(net, comm)
    data = np.random.default_rng(7)
    x = data.random((a.steps * a.batch,) + shape).astype(np.float32)
    y = data.integers(0, 3, a.steps * a.batch)
    step = dist.DataParallelStep(net, comm, a.estimator, seed=11)
    # SGD, not Adam: a bias in front of batch norm has gradient 0 up to rounding, which Adam would
    # scale up to full-size steps (harmless for the network, but not comparable across runs)
    opt = SGD(lr=0.2, momentum=0.9)
    losses = []
    dist.announce_ranks(comm)
    with dist.fail_fast(comm):
        net.train()
        for t in range(a.steps):
            fail(a.fail, comm.rank, t)
            sl = slice(t * a.batch, (t + 1) * a.batch)
            loss, grads = step(x[sl], y[sl], opt.step_count)
            opt.update(net.params, grads)
            net.apply_constraints()
            losses.append(loss)
        dist.check_replicas(net, comm, "after the steps")
    if comm.is_root:
        np.savez(a.out, losses=np.array(losses), **net.params, **{f"buf.{k}": v for k, v in net.buffers.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
