"""Data-parallel training (sbnnumba.distributed): N ranks under mpiexec train what one process trains.

The MPI tests launch ``mpiexec -n 2`` (one thread per rank) on tests/distributed_worker.py and compare
rank 0's parameters after several steps with a one-process run of the same global batches and the same
per-example noise (LocalCommunicator): equal to float32 rounding, since only the order of the sums differs.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba import distributed as dist
from sbnnumba.distributed.streams import KeyedNoise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mpi_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(ONE_THREAD, **(extra or {}))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def mpiexec():
    exe = shutil.which("mpiexec")
    if exe is None:  # the test extra installs mpich, which provides it: not finding it is a failure
        pytest.fail("mpiexec not found: pip install -e '.[test]' installs mpi4py and mpich")
    return exe


def run_worker(args, n=None, timeout=240, env=None):
    cmd = [sys.executable, WORKER] + args if n is None else [mpiexec(), "-n", str(n), sys.executable, WORKER] + args
    return subprocess.run(cmd, env=mpi_env(env), capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ pieces
def test_shard_bounds_partition():
    for n in range(0, 13):
        for size in range(1, 5):
            bounds = [dist.shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            lengths = [hi - lo for lo, hi in bounds]
            assert max(lengths) - min(lengths) <= 1
    with pytest.raises(ValueError, match="rank: expected"):
        dist.shard_bounds(4, 2, 2)


def test_keyed_noise_does_not_depend_on_the_split():
    noise, shapes = KeyedNoise(5), [(3,), (2, 4, 4)]
    whole = noise.activation_uniforms(shapes, 7, 0, 10, np.float32)
    parts = [noise.activation_uniforms(shapes, 7, lo, hi, np.float32) for lo, hi in ((0, 3), (3, 4), (4, 10))]
    for k in range(len(shapes)):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
        assert whole[k].dtype == np.float32 and whole[k].min() >= 0 and whole[k].max() < 1
    other_step = noise.activation_uniforms(shapes, 8, 0, 10, np.float32)
    assert not np.array_equal(other_step[0], whole[0])
    assert not np.array_equal(whole[0][0], whole[0][1])  # examples get different streams


def test_weight_uniforms_are_shared_and_change_per_step():
    net = sb.Network.dense([6, 5, 4], 3, rng=0, weight="bernoulli")
    a, b = KeyedNoise(1).weight_uniforms(net, 3), KeyedNoise(1).weight_uniforms(net, 3)
    assert set(a) == {"stages.0", "stages.1"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].shape == dict(net.latent_layers())[k].latent.eta.shape
    assert not np.array_equal(KeyedNoise(1).weight_uniforms(net, 4)["stages.0"], a["stages.0"])


def test_gradient_buffer_round_trip():
    net = sb.Network.dense([6, 5, 4], 3, rng=0, normalize=True)
    buf = dist.GradientBuffer(net)
    grads = {k: np.random.default_rng(0).normal(size=p.shape).astype(p.dtype) for k, p in net.params.items()}
    packed = buf.pack(2.5, grads)
    assert packed.flags.c_contiguous and packed.size == sum(p.size for p in net.params.values()) + 1
    loss, out = buf.unpack()
    assert loss == 2.5 and list(out) == list(net.params)
    for k in grads:
        np.testing.assert_array_equal(out[k], grads[k])


def test_local_step_is_the_estimator_with_keyed_noise():
    """One rank: the step is the registered estimator on the keyed uniforms with weights 1/B."""
    net = sb.Network.dense([6, 5, 4], 3, rng=0, weight="hidden")
    x = np.random.default_rng(1).random((9, 6)).astype(np.float32)
    y = np.arange(9) % 3
    loss, grads = dist.DataParallelStep(net, dist.LocalCommunicator(), "psa", seed=4)(x, y, 2)
    noise = KeyedNoise(4)
    path = net.sample(x, uniforms=noise.activation_uniforms(net.stage_shapes((6,)), 2, 0, 9, np.float32),
                      weight_uniforms=noise.weight_uniforms(net, 2))
    from sbnnumba.estimators.psa import psa_path_gradient
    ref_loss, ref = psa_path_gradient(net, path, y, np.full(9, 1 / 9, np.float32))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for k in ref:
        np.testing.assert_array_equal(grads[k], ref[k])


def test_direct_estimators_run_per_example_with_keyed_generators():
    """A direct estimator (several paths per example) under the step: the 1/B-weighted sum of its
    one-example calls, each with that example's keyed generator (so any split gives the same sum)."""
    from sbnnumba.estimators import registry

    net = sb.Network.dense([6, 5, 4], 3, rng=0, weight="hidden")
    x = np.random.default_rng(1).random((5, 6)).astype(np.float32)
    y = np.arange(5) % 3
    for method in ("arm", "reinforce-baseline"):
        loss, grads = dist.DataParallelStep(net, dist.LocalCommunicator(), method, seed=4)(x, y, 3)
        fn = registry.DIRECT_ESTIMATORS[method][0]
        parts = [fn(net, x[i:i + 1], y[i:i + 1], KeyedNoise(4).example_generator(3, i)) for i in range(5)]
        assert loss == pytest.approx(sum(p[0] for p in parts) / 5, rel=1e-6)
        for k in net.params:
            np.testing.assert_allclose(grads[k], sum(p[1][k] for p in parts) / 5, rtol=1e-5, atol=1e-7)
    a, b = KeyedNoise(4).example_generator(3, 1).random(3), KeyedNoise(4).example_generator(3, 2).random(3)
    assert not np.array_equal(a, b)
    # a deterministic direct estimator: the per-example sum is the batch's exact gradient
    net = sb.Network.dense([6, 5, 4], 3, rng=0)
    loss, grads = dist.DataParallelStep(net, dist.LocalCommunicator(), "exact", seed=4)(x, y, 0)
    ref_loss, ref = registry.DIRECT_ESTIMATORS["exact"][0](net, x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-4, atol=1e-7)
    for method in sorted(registry.DIRECT_ESTIMATORS):  # every one runs on one-example batches
        loss, grads = dist.DataParallelStep(net, dist.LocalCommunicator(), method, seed=4)(x, y, 1)
        assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values()), method


def test_direct_estimators_refuse_batch_statistics_and_bad_comm():
    net = sb.Network.dense([4, 3], 2, rng=0, normalize=True)
    x, y = np.random.default_rng(0).random((4, 4)).astype(np.float32), np.arange(4) % 2
    net.train()
    with pytest.raises(ValueError, match="'reinforce-baseline' runs once per example.*net.eval"):
        dist.DataParallelStep(net, dist.LocalCommunicator(), "reinforce-baseline")(x, y, 0)
    net.eval()
    loss, _ = dist.DataParallelStep(net, dist.LocalCommunicator(), "reinforce-baseline")(x, y, 0)
    assert np.isfinite(loss)
    with pytest.raises(TypeError, match="comm: expected"):
        dist.DataParallelStep(net, object(), "psa")


def test_evaluation_noise_does_not_depend_on_the_split():
    """Keyed evaluation uniforms: the rows of examples lo..hi-1 are those of the whole set; one weight
    sample per network sample s, shared by every example."""
    net = sb.Network.dense([6, 5, 4], 3, rng=0, weight="hidden")
    noise = KeyedNoise(9)
    whole, w = noise.evaluation_uniforms(net, (6,), 2, 0, 7)
    part, w_part = noise.evaluation_uniforms(net, (6,), 2, 3, 5)
    for k in range(2):
        np.testing.assert_array_equal(part[k], whole[k][3:5])
    for k in w:
        np.testing.assert_array_equal(w_part[k], w[k])
    other, w_other = noise.evaluation_uniforms(net, (6,), 1, 0, 7)
    assert list(w) == ["stages.1"] and not np.array_equal(w_other["stages.1"], w["stages.1"])
    assert not np.array_equal(other[0], whole[0])


class _Table(dist.LocalCommunicator):
    """A stand-in for N ranks' allgather: returns a fixed table (reduce_metrics' input)."""

    def __init__(self, table):
        self.table = table

    def allgather_object(self, obj):
        return self.table


def test_reduce_metrics_weights_by_example_count():
    a = {"loss": 1.0, "acc1": 0.5, "eacc": 1.0, "det_acc": None, "curve": [0.5, 1.0], "entropy": 0.2,
         "entropy_stages": [0.1, 0.3], "samples": 2, "n": 3}
    b = {"loss": 3.0, "acc1": 1.0, "eacc": 0.0, "det_acc": None, "curve": [1.0, 0.0], "entropy": 0.6,
         "entropy_stages": [0.5, 0.7], "samples": 2, "n": 1}
    out = dist.reduce_metrics(a, _Table([a, b]))
    assert out["n"] == 4 and out["det_acc"] is None
    assert out["loss"] == pytest.approx(1.5) and out["acc1"] == pytest.approx(0.625)
    assert out["curve"] == pytest.approx([0.625, 0.75]) and out["entropy_stages"] == pytest.approx([0.2, 0.4])


def test_gpu_for_rank_round_robin():
    assert [dist.gpu_for_rank(r, 4) for r in range(6)] == [0, 1, 2, 3, 0, 1]
    assert dist.gpu_for_rank(3, 1) == 0
    with pytest.raises(ValueError, match="n_gpus: expected an integer >= 1"):
        dist.gpu_for_rank(0, 0)
    with pytest.raises(ValueError, match="local_rank"):
        dist.gpu_for_rank(-1, 2)


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    with pytest.raises(dist.MPIUnavailable, match=r"pip install 'sbnnumba\[mpi\]'"):
        dist.world()


def test_check_replicas_names_the_differing_arrays():
    net = sb.Network.dense([4, 3], 2, rng=0)
    other = dist.digests(net)
    other["head.bias"] = b"different"
    with pytest.raises(dist.ReplicaMismatch, match="rank 1: head.bias"):
        dist.check_replicas(net, _Table([dist.digests(net), other]))
    dist.check_replicas(net, _Table([dist.digests(net)] * 2))


# ------------------------------------------------------------------------------------------ mpiexec
CASES = ["dense,psa,12,bn,bernoulli", "dense,st,13,bn,bernoulli", "conv,psa,12,bn,bernoulli", "conv,st,12",
         "dense,arm,9,bernoulli", "conv,reinforce-baseline,8"]


def case_args(cases):
    return [arg for case in cases for arg in ("--case", case)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Every case trained by one process (LocalCommunicator, CPU backend): the reference."""
    prefix = tmp_path_factory.mktemp("one") / "one"
    r = run_worker([str(prefix), "--local"] + case_args(CASES))
    assert r.returncode == 0, r.stderr
    return prefix


def compare(prefix_one, prefix_two, cases):
    for case in cases:
        i = CASES.index(case)
        a, b = np.load(f"{prefix_one}.{i}.npz"), np.load(f"{prefix_two}.{cases.index(case)}.npz")
        assert sorted(a.files) == sorted(b.files)
        assert np.all(np.isfinite(a["losses"])) and len(a["losses"]) == 4
        assert ("buf.stages.0.running.stochastic.mean" in a.files) == ("bn" in case)
        assert "val.loss" in a.files and np.isfinite(a["val.loss"])  # the keyed split validation (worker)
        for k in a.files:  # the same floats summed in another order: float32 rounding, growing over the steps
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=f"{case}: {k}")


def test_two_ranks_train_what_one_process_trains(tmp_path, one_process):
    """Dense and conv networks, batch norm, Bernoulli weights, PSA and ST, ARM and REINFORCE with a
    leave-one-out baseline (direct estimators, per-example generators); the validation metrics of the
    trained networks (split over the ranks with keyed noise) equal one process's (one launch for all cases)."""
    r = run_worker([str(tmp_path / "two")] + case_args(CASES), n=2)
    assert r.returncode == 0, r.stderr
    compare(one_process, tmp_path / "two", CASES)


def test_two_ranks_on_the_cuda_backend_in_the_simulator(tmp_path, one_process):
    """backend="cuda": each rank selects its GPU (local rank mod GPUs: the simulator has one) and its
    kernels run there; same result as one CPU process. (Not run on a real GPU.)"""
    cases = [CASES[0], CASES[3]]
    env = dict(NUMBA_ENABLE_CUDASIM="1")
    r = run_worker([str(tmp_path / "two"), "--backend", "cuda"] + case_args(cases), n=2, env=env)
    assert r.returncode == 0, r.stderr
    assert "rank 0 uses GPU 0" in r.stdout and "rank 1 uses GPU 0" in r.stdout
    compare(one_process, tmp_path / "two", cases)


def test_a_rank_that_raises_ends_the_job_naming_it(tmp_path):
    r = run_worker([str(tmp_path / "x"), "--case", "dense,psa,8", "--steps", "6", "--fail", "1:2:raise"], n=2,
                   timeout=120)
    assert r.returncode != 0
    assert "rank 1 of 2" in r.stderr and "RuntimeError: simulated failure at step 2" in r.stderr
    assert not (tmp_path / "x.0.npz").exists()


def test_a_killed_rank_ends_the_job(tmp_path):
    r = run_worker([str(tmp_path / "x"), "--case", "dense,psa,8", "--steps", "6", "--fail", "1:2:kill"], n=2,
                   timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out  # the launcher ends the others instead of leaving them in the Allreduce
    assert "signal 9" in out or "KILLED" in out.upper(), out
    # the launcher names the dead process id; the rank table printed at start says which rank it was
    pid = re.search(r"rank 1 pid (\d+)", out).group(1)
    assert re.search(rf"PID {pid}\b", out), out


def test_timing_communicator_clocks_gradient_and_statistics_reductions():
    comm = dist.TimingCommunicator(dist.LocalCommunicator())
    net = sb.Network.dense([6, 5, 4], 3, rng=0, normalize=True)
    x, y = np.random.default_rng(1).random((8, 6)).astype(np.float32), np.arange(8) % 3
    net.train()
    dist.DataParallelStep(net, comm, "st", seed=0)(x, y, 0)
    assert comm.gradient_calls == 1  # one Allreduce of the whole gradient per step
    # forward: one per normalized stage (2); backward: one per normalized stage (stage 1's parameter and
    # input gradients share one batch-norm backward, Normalized._backward_norm)
    assert comm.statistics_calls == 2 + 2
    assert comm.seconds >= 0 and comm.size == 1


# ------------------------------------------------------------------------------------------ fit / CLI
TRAIN = ["-m", "sbnnumba", "train", "--distributed", "--data", "embedded", "--train-subset", "1500", "--hidden",
         "48,48", "--batch-size", "50", "--eval-samples", "2", "--no-progress"]


def test_distributed_without_mpi4py_fails_at_once(monkeypatch, tmp_path, capsys):
    from sbnnumba import cli

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    assert cli.main(["train", "--distributed", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--distributed: distributed training needs mpi4py" in err and "pip install 'sbnnumba[mpi]'" in err
    assert not (tmp_path / "run").exists()  # nothing was done


def test_killed_rank_then_resume_on_another_n_matches_an_uninterrupted_run(tmp_path):
    """2 ranks; rank 1 is killed (SIGKILL) after the first checkpoint: the job ends with an error instead of
    hanging, the checkpoint is intact, and --resume on 1 rank finishes the run as an uninterrupted 2-rank run
    does (parameters, validation and test figures)."""
    from sbnnumba import training

    killed, ckpt = tmp_path / "killed", tmp_path / "killed" / "checkpoint.npz"
    cmd = [mpiexec(), "-n", "2", sys.executable] + TRAIN + ["--epochs", "4", "--out", str(killed)]
    with subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as job:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.exists() and job.poll() is None, "no checkpoint before the end of the job"
        table = None
        while table is None:  # rank 0 prints the rank table when the job starts
            line = job.stderr.readline()
            assert line, "the job printed no rank table"
            table = re.search(r"rank 1 pid (\d+)", line)
        pid = int(table.group(1))
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=120)  # ends: no rank left waiting in an Allreduce
    assert job.returncode != 0
    assert f"PID {pid}" in stdout + stderr and "signal 9" in stdout + stderr
    done = training.load_checkpoint(ckpt).epoch
    assert 1 <= done < 4

    # resumed with no setting but --epochs: rank 0 reads the others from the checkpoint and sends them to every rank
    resumed = subprocess.run([mpiexec(), "-n", "1", sys.executable, "-m", "sbnnumba", "train", "--distributed",
                              "--no-progress", "--epochs", "4", "--out", str(killed), "--resume"],
                             env=mpi_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([mpiexec(), "-n", "2", sys.executable] + TRAIN + ["--epochs", "4", "--out",
                                                                            str(tmp_path / "whole")],
                           env=mpi_env(), capture_output=True, text=True, timeout=240)
    assert whole.returncode == 0, whole.stderr
    a, b = training.load_checkpoint(ckpt), training.load_checkpoint(tmp_path / "whole" / "checkpoint.npz")
    assert a.epoch == b.epoch == 4
    np.testing.assert_allclose([r["train_loss"] for r in a.history], [r["train_loss"] for r in b.history], rtol=1e-5)
    # validation: `b` on 2 ranks, `a` on 2 then 1 (keyed noise: the same figures)
    for key in ("val_loss", "val_acc1", "val_eacc", "val_det_acc", "val_entropy", "train_eval_loss"):
        np.testing.assert_allclose([r[key] for r in a.history], [r[key] for r in b.history], rtol=1e-4, err_msg=key)
    # the test evaluation after training: split over 2 ranks in `b`, one rank in `a`
    test_a, test_b = (json.loads((d / "test_metrics.json").read_text()) for d in (killed, tmp_path / "whole"))
    for key in ("loss", "acc1", "eacc", "det_acc", "entropy"):
        assert test_a[key] == pytest.approx(test_b[key], rel=1e-4), key
    for k in b.params:  # epochs up to `done` ran on 2 ranks, the rest on 1: float32 rounding only
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_fit_with_a_local_communicator_marks_its_checkpoint(tmp_path):
    """fit(comm=) on one rank: the data-parallel trainer (keyed noise); its checkpoint records that, so
    resuming it without comm (another trajectory) is refused, and with comm it continues."""
    from sbnnumba import training

    rng = np.random.default_rng(0)
    x, y = rng.random((120, 6)).astype(np.float32), rng.integers(0, 3, 120)
    net = sb.Network.dense([6, 8, 8], 3, rng=0, normalize=True)
    opts = dict(epochs=1, batch_size=16, eval_samples=2, train_eval_size=20, progress=False, plots=False)
    res = training.fit(net, (x, y), out=tmp_path, comm=dist.LocalCommunicator(), **opts)
    assert res.config["sampling"] == "keyed-per-example" and "comm_time" in res.history[0]
    assert np.isfinite(res.history[0]["train_loss"]) and np.isfinite(res.history[0]["val_loss"])
    with pytest.raises(ValueError, match="sampling"):
        training.fit(sb.Network.dense([6, 8, 8], 3, rng=0, normalize=True), (x, y), out=tmp_path, resume=True,
                     **dict(opts, epochs=2))
    again = training.fit(sb.Network.dense([6, 8, 8], 3, rng=0, normalize=True), (x, y), out=tmp_path, resume=True,
                         comm=dist.LocalCommunicator(), **dict(opts, epochs=2))
    assert again.epochs_done == 2 and again.history[0] == res.history[0]
