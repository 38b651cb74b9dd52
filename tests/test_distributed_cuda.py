"""Data-parallel training with the device-resident GPU step (sbnnumba.distributed.device_step): 2 ranks
under mpiexec against one CudaTrainer, the wiring of DistributedTrainer to DeviceDataParallelEpochs and
its fall-backs; batch normalization with statistics over the ranks on the device. In numba's CUDA
simulator without a GPU (tests/conftest.py; the mpiexec ranks always use the simulator). Not run on a GPU.
"""
import numpy as np
import pytest
from cuda_checks import close
from distributed_worker import train_resident
from test_distributed import run_worker

import sbnnumba as sb
from sbnnumba import distributed as dist
from sbnnumba.training import FitConfig

pytestmark = pytest.mark.usefixtures("cuda_backend")

OPTIONS = dict(estimator="psa", batch_size=8, optimizer="sgd", lr=0.1, seed=3, val_fraction=0.2, eval_samples=1,
               train_eval_size=0, epochs=1, progress=False, plots=False, data_init=False)


def _data():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _net(backend, **kw):
    return sb.architectures.build("mlp", (4,), 2, rng=1, backend=backend, hidden=(5,), **kw)


def test_two_ranks_device_resident_step_equals_one_cuda_trainer(tmp_path):
    """Each rank's CudaTrainer computes its shard, only the gradient crosses to the host for the Allreduce,
    and each device applies the update: the result equals one CudaTrainer stepping on the whole global
    batch with the same keyed uniforms (computed here, in this process)."""
    args = ["--backend", "cuda", "--resident", "--steps", "3", "--case", "dense,psa,6,bernoulli"]
    two = run_worker([str(tmp_path / "two")] + args, n=2, env=dict(NUMBA_ENABLE_CUDASIM="1"))
    assert two.returncode == 0, two.stderr
    a = train_resident(dist.LocalCommunicator(), "dense", False, True, "psa", 3, 6, local=True)
    b = np.load(tmp_path / "two.0.npz")
    assert sorted(a) == sorted(b.files) and "stages.1.eta" in a and len(a["losses"]) == 3
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_device_resident_data_parallel_fit_trains_what_the_host_step_trains():
    """fit(comm=) on backend 'cuda' runs DeviceDataParallelEpochs (the step on the device, the gradient
    through the communicator); with the same keyed noise it trains what the CPU data-parallel step trains."""
    data = _data()
    trainer = dist.DistributedTrainer(_net("cuda", weight="hidden"), data, FitConfig(**OPTIONS),
                                      comm=dist.LocalCommunicator())
    res = trainer.run()
    assert isinstance(trainer.device, dist.DeviceDataParallelEpochs)
    assert trainer.comm.gradient_calls == 2  # 16 training examples, batch 8: one Allreduce per step
    host = dist.DistributedTrainer(_net("cpu", weight="hidden"), data, FitConfig(**OPTIONS),
                                   comm=dist.LocalCommunicator())
    ref = host.run()
    assert host.device is None
    close(res.history[0]["train_loss"], ref.history[0]["train_loss"], "train_loss", rtol=1e-5, atol=1e-6)
    for key, p in host.net.params.items():
        close(trainer.net.params[key], p, f"device data-parallel {key}", rtol=1e-4, atol=1e-6)
    assert trainer.optimizer.step_count == host.optimizer.step_count == 2


def test_apply_gradients_is_the_optimizer_step():
    """CudaTrainer.apply_gradients(flat) = the host optimizer's update with those gradients."""
    from sbnnumba.training.resident import CudaTrainer

    net_dev, net_host = _net("cuda"), _net("cpu")
    opt_dev, opt_host = sb.optim.Adam(lr=0.05), sb.optim.Adam(lr=0.05)
    trainer = CudaTrainer(net_dev, "psa", opt_dev, max_batch=4)
    rng = np.random.default_rng(2)
    for _ in range(2):
        grads = {k: rng.normal(size=p.shape).astype(np.float32) for k, p in net_host.params.items()}
        trainer.apply_gradients(np.concatenate([g.ravel() for g in grads.values()]))
        opt_host.update(net_host.params, grads)
    trainer.sync()
    for key, p in net_host.params.items():
        close(net_dev.params[key], p, f"apply_gradients {key}", rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="flat: expected a 1-d array of"):
        trainer.apply_gradients(np.zeros(3, np.float32))


def test_two_ranks_device_resident_batch_norm_equals_one_cuda_trainer(tmp_path):
    """Batch norm under the device-resident step: each rank's device copy takes its statistics over the
    global batch (float64 channel sums downloaded, Allreduced, uploaded), so 2 ranks with unequal shards
    (7 examples: 4 + 3) train what one CudaTrainer trains on the whole batch, running statistics included."""
    args = ["--backend", "cuda", "--resident", "--steps", "2", "--case", "dense,psa,7,bn"]
    two = run_worker([str(tmp_path / "two")] + args, n=2, env=dict(NUMBA_ENABLE_CUDASIM="1"))
    assert two.returncode == 0, two.stderr
    a = train_resident(dist.LocalCommunicator(), "dense", True, False, "psa", 2, 7, local=True)
    b = np.load(tmp_path / "two.0.npz")
    assert sorted(a) == sorted(b.files) and "stages.0.gamma" in a and "buf.stages.0.running.stochastic.mean" in a
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert not np.allclose(a["buf.stages.0.running.stochastic.mean"], 0)  # the statistics did move


def test_batch_norm_runs_the_device_resident_step():
    config = FitConfig(**OPTIONS)
    x, y = _data()
    runner = dist.device_data_parallel(_net("cuda", normalize=True), config, sb.optim.SGD(lr=0.1), x, y,
                                       dist.LocalCommunicator())
    assert isinstance(runner, dist.DeviceDataParallelEpochs)
    assert dist.device_data_parallel(_net("cpu"), config, sb.optim.SGD(lr=0.1), x, y, dist.LocalCommunicator()) is None
