"""Run by tests/test_distributed.py under ``mpiexec -n N`` (or alone with ``--local``): a few
data-parallel steps of small networks, rank 0 saving each one's final parameters to an ``.npz``.

    python tests/distributed_worker.py OUT --case conv,psa,12,bn,bernoulli [--case ...] [--steps 4] [--local]
        [--fail RANK:STEP:raise|kill] [--backend cuda [--resident]]

``--resident`` (with ``--backend cuda``): the device-resident step (CudaTrainer on each rank, one Allreduce of
the gradient on the host); with ``--local`` it is one CudaTrainer stepping on the whole global batch.
"""
import argparse
import os
import signal
import sys

import numpy as np

import sbnnumba as sb
from sbnnumba import distributed as dist
from sbnnumba.optim import SGD
from sbnnumba.training import evaluate


def build(arch, bn, bernoulli, seed=0, backend="cpu"):
    rng = np.random.default_rng(seed)
    weight = "hidden" if bernoulli else "real"
    if arch == "dense":
        return sb.Network.dense([20, 16, 12], 3, rng=rng, weight=weight, normalize=bn, backend=backend), (20,)
    kinds = ["real", "bernoulli" if bernoulli else "real"]
    stage = (lambda layer: sb.Normalized(layer)) if bn else (lambda layer: layer)
    stages = [stage(sb.Conv2d(1, 4, 3, rng=rng, in_shape=(1, 8, 8), weight=kinds[0])),
              stage(sb.Conv2d(4, 5, 3, stride=2, rng=rng, in_shape=(4, 6, 6), weight=kinds[1]))]
    return sb.Network(stages, sb.Linear(5 * 2 * 2, 3, rng=rng), backend=backend), (1, 8, 8)


def fail(spec, rank, step):
    """Simulated fault: raise an error, or kill this process with SIGKILL (no chance to report)."""
    if spec is None:
        return
    r, t, kind = spec.split(":")
    if int(r) == rank and int(t) == step:
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"simulated failure at step {step}")


def train(comm, arch, bn, bernoulli, estimator, steps, batch, fail_spec=None, backend="cpu"):
    """A few data-parallel steps from rank 0's initialization; returns (params and buffers, losses)."""
    net, shape = build(arch, bn, bernoulli, seed=comm.rank, backend=backend)  # ranks differ until the broadcast
    dist.broadcast_state(net, comm)
    data = np.random.default_rng(7)
    x = data.random((steps * batch,) + shape).astype(np.float32)
    y = data.integers(0, 3, steps * batch)
    step = dist.DataParallelStep(net, comm, estimator, seed=11)
    # SGD, not Adam: a bias in front of batch norm has gradient 0 up to rounding, which Adam would
    # scale up to full-size steps (harmless for the network, but not comparable across runs)
    opt = SGD(lr=0.2, momentum=0.9)
    losses = []
    net.train()
    for t in range(steps):
        fail(fail_spec, comm.rank, t)
        sl = slice(t * batch, (t + 1) * batch)
        loss, grads = step(x[sl], y[sl], opt.step_count)
        opt.update(net.params, grads)
        net.apply_constraints()
        losses.append(loss)
    dist.check_replicas(net, comm, "after the steps")
    return {**net.params, **{f"buf.{k}": v for k, v in net.buffers.items()}, "losses": np.array(losses),
            **validation(net, comm, data, shape)}


def train_resident(comm, arch, bn, bernoulli, estimator, steps, batch, local):
    """The device-resident step: N ranks (DeviceDataParallelStep), or with ``local`` one CudaTrainer on the
    whole global batch with the same keyed uniforms; returns (params, running statistics, losses) after ``sync``."""
    from sbnnumba.distributed.streams import KeyedNoise
    from sbnnumba.training.resident import CudaTrainer

    net, shape = build(arch, bn, bernoulli, seed=comm.rank, backend="cuda")
    dist.broadcast_state(net, comm)
    data = np.random.default_rng(7)
    x = data.random((steps * batch,) + shape).astype(np.float32)
    y = data.integers(0, 3, steps * batch)
    opt = SGD(lr=0.2, momentum=0.9)
    trainer = CudaTrainer(net, estimator, opt, max_batch=batch, input_shape=shape)
    step, noise, losses = dist.DeviceDataParallelStep(trainer, comm, seed=11), KeyedNoise(11), []
    for t in range(steps):
        xb, yb = x[t * batch:(t + 1) * batch], y[t * batch:(t + 1) * batch]
        if local:
            trainer.step(xb, yb, uniforms=noise.activation_uniforms(net.stage_shapes(shape), t, 0, batch, np.float32),
                         weight_uniforms=noise.weight_uniforms(net, t))
            losses.append(trainer.pop_loss() / batch)
        else:
            losses.append(step(xb, yb, t))
    trainer.sync()
    dist.check_replicas(net, comm, "after the steps")
    return {**net.params, **{f"buf.{k}": v for k, v in net.buffers.items()}, "losses": np.array(losses)}


def validation(net, comm, data, shape, n=23):
    """The trained network's evaluation metrics on ``n`` new examples (an odd split over the ranks), with
    the keyed evaluation noise: ``val.<metric>`` arrays."""
    x = data.random((n,) + shape).astype(np.float32)
    y = data.integers(0, 3, n)
    if net.normalizations():  # deterministic mode has its own statistics, estimated as the Trainer does
        net.recalibrate_normalization(x, mode="deterministic")

    def part(xs, ys, uniforms):
        return evaluate(net, xs, ys, 3, None, batch_size=5, uniforms=uniforms)

    metrics = dist.split_evaluation(part, net, x, y, 123, comm)
    assert metrics["n"] == n
    return {f"val.{k}": np.array(metrics[k], dtype=np.float64)
            for k in ("loss", "acc1", "eacc", "det_acc", "curve", "entropy", "entropy_stages")}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out", help="output prefix: OUT.<case index>.npz per case")
    p.add_argument("--case", action="append", required=True,
                   help="ARCH,ESTIMATOR,BATCH[,bn][,bernoulli] (repeatable), e.g. conv,psa,12,bn,bernoulli")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--local", action="store_true", help="one process, LocalCommunicator (no MPI)")
    p.add_argument("--fail", default=None, help="RANK:STEP:raise|kill: that rank fails before that step")
    p.add_argument("--backend", default="cpu", choices=["cpu", "cuda"], help="cuda: each rank selects its GPU")
    p.add_argument("--resident", action="store_true", help="with --backend cuda: the device-resident step")
    a = p.parse_args(argv)
    comm = dist.LocalCommunicator() if a.local else dist.world()
    dist.announce_ranks(comm)
    if a.backend == "cuda":
        print(f"rank {comm.rank} uses GPU {dist.select_gpu(comm)}", flush=True)
    with dist.fail_fast(comm):
        for i, case in enumerate(a.case):
            arch, estimator, batch, *flags = case.split(",")
            if a.resident:
                arrays = train_resident(comm, arch, "bn" in flags, "bernoulli" in flags, estimator, a.steps, int(batch),
                                        a.local)
            else:
                arrays = train(comm, arch, "bn" in flags, "bernoulli" in flags, estimator, a.steps, int(batch),
                               a.fail, a.backend)
            if comm.is_root:
                np.savez(f"{a.out}.{i}.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
