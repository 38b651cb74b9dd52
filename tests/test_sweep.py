"""Sweeps (sbnnumba.sweep): grid syntax, keys and seeds, the local pool against the serial path,
restarts (skip, resume, a killed worker), failures, the command line and a Dask LocalCluster.

Every sweep here trains tiny MLPs on 600 images of the embedded subset for 1-3 epochs, with one
thread per run so that parallel and serial runs do the same float operations."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sbnnumba import datasets, runtime, sweep, training
from sbnnumba.sweep import grid as sgrid
from sbnnumba.sweep.task import STATUS

BASE = {"hidden": [8], "batch_size": 50, "train_eval_size": 0, "eval_samples": 2, "epochs": 2}


@pytest.fixture(scope="module")
def tiny_data():
    ds = datasets.load_embedded()
    return datasets.Dataset(ds.x_train[:600], ds.y_train[:600], ds.x_test[:200], ds.y_test[:200], name="tiny",
                            source="embedded[:600]", classes=ds.classes)


def configs(text="estimator=psa,st seed=0,1", **base):
    return sweep.expand(sweep.parse_grid(text), {**BASE, **base})


def params(row):
    ck = training.load_checkpoint(os.path.join(row["run_dir"], training.CHECKPOINT_NAME))
    return ck.params


def same_numbers(rows_a, rows_b):
    """Identical keys, statuses, metrics, seeds and final parameters."""
    assert [r["key"] for r in rows_a] == [r["key"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert a["status"] == b["status"] == "finished", (a.get("error"), b.get("error"))
        for k in ("epochs_done", "train_loss", "val_loss", "val_eacc", "test_loss", "test_eacc", "init_seed",
                  "fit_seed"):
            assert a[k] == b[k], (a["key"], k, a[k], b[k])
        pa, pb = params(a), params(b)
        assert all(np.array_equal(pa[k], pb[k]) for k in pa)


# ----------------------------------------------------------------------------------- grid, keys, seeds
def test_parse_grid_values_and_expand_order():
    axes = sweep.parse_grid("estimator=psa,st lr=1e-3,3e-3 seed=0,1,2 hidden=32x16 flag=true,none")
    assert axes == {"estimator": ["psa", "st"], "lr": [0.001, 0.003], "seed": [0, 1, 2], "hidden": [[32, 16]],
                    "flag": [True, None]}
    cfgs = sweep.expand({"a": [1, 2], "b": ["x", "y", "z"]}, {"c": 0, "a": 9})
    assert len(cfgs) == 6 and cfgs[0] == {"c": 0, "a": 1, "b": "x"} and cfgs[-1] == {"c": 0, "a": 2, "b": "z"}
    for v in (0.001, 3, True, None, [256, 256], "psa"):
        assert sgrid.parse_value(sgrid.format_value(v)) == v


@pytest.mark.parametrize("text", ["lr", "lr=", "lr=1,,2", "1x=2", "lr=1 lr=2", ""])
def test_parse_grid_errors(text):
    with pytest.raises(ValueError, match="grid: expected"):
        sweep.parse_grid(text)


def test_keys_and_seeds_depend_only_on_the_configuration():
    a = {"lr": 0.001, "estimator": "psa", "seed": 0, "epochs": 3}
    b = {"estimator": "psa", "seed": 0, "lr": 0.001, "epochs": 7}  # other order, other epochs: same run
    assert sweep.config_key(a) == sweep.config_key(b) == "estimator=psa,lr=0.001,seed=0"
    assert sweep.derive_seeds(5, sweep.config_key(a)) == sweep.derive_seeds(5, sweep.config_key(b))
    seeds = {sweep.derive_seeds(5, sweep.config_key({**a, "seed": s})) for s in range(50)}
    assert len(seeds) == 50  # replicates get distinct seeds
    key = "estimator=psa,lr=0.001,seed=0"
    assert sweep.derive_seeds(6, key) != sweep.derive_seeds(5, key)
    assert sweep.run_dir_name("estimator=psa,lr=0.001") == "estimator-psa_lr-0.001"
    long = sweep.run_dir_name("x=" + "a" * 200)
    assert len(long) < 120 and long != sweep.run_dir_name("x=" + "a" * 201)
    with pytest.raises(ValueError, match="seed: expected"):
        sweep.derive_seeds(-1, "k")


def test_plan_workers_never_exceeds_the_cores():
    assert sweep.plan_workers(None, 10, cores=4) == (4, 1)
    assert sweep.plan_workers(2, 10, cores=4) == (2, 2)
    assert sweep.plan_workers(None, 1, cores=4) == (1, 4)
    assert sweep.plan_workers(3, None, cores=8) == (3, 2)
    for w in (None, 1, 2, 3, 4):
        workers, threads = sweep.plan_workers(w, 5, cores=4)
        assert workers * threads <= 4
    with pytest.raises(ValueError, match="workers: expected at most 4"):
        sweep.plan_workers(5, cores=4)
    with pytest.raises(ValueError, match="workers: expected an integer"):
        sweep.plan_workers(0, cores=4)


def test_unknown_option_fails_before_anything_runs(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="got 'hiden'"):
        sweep.run([{"hiden": [8]}], sweep.SerialExecutor(), tmp_path, data=tiny_data)
    with pytest.raises(ValueError, match="no-such-estimator"):  # values are checked up front too
        sweep.run([{"estimator": "no-such-estimator"}], sweep.SerialExecutor(), tmp_path, data=tiny_data)
    with pytest.raises(ValueError, match="distinct configurations"):
        sweep.run([{"lr": 0.1}, {"lr": 0.1}], sweep.SerialExecutor(), tmp_path, data=tiny_data)
    with pytest.raises(TypeError, match="executor: expected"):
        sweep.run([{"lr": 0.1}], "pool", tmp_path, data=tiny_data)
    assert not (tmp_path / "runs").exists()


def test_serial_executor_and_limited_threads():
    import numba

    ex = sweep.SerialExecutor()
    assert ex.submit(pow, 2, 5).result() == 32
    assert isinstance(ex.submit(int, "x").exception(), ValueError)
    before = numba.get_num_threads()
    with runtime.limited_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


def test_local_workers_start_with_the_library_imported():
    """Where the platform has a fork server, workers are forked from one that preloaded the modules a run
    needs, so their first task finds them imported (no per-worker interpreter start and imports)."""
    import multiprocessing

    from sbnnumba.sweep import executors

    context = executors.worker_context()
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert context.get_start_method() == "forkserver"
    with sweep.LocalPool(1) as pool:
        preloaded = pool.submit(executors._import_library).result()
    if context.get_start_method() == "forkserver":
        assert preloaded == list(executors.WORKER_MODULES)
        # worker_start among them: Numba's CPU target was initialized in the fork server (checked below)


def test_ctrl_c_interrupts_running_tasks_and_leaves_idle_workers_alive():
    """Ctrl-C reaches every process of the terminal's group: a running task gets KeyboardInterrupt (its future
    holds it), an idle worker ignores it instead of dying with a 'Process ForkServerProcess-N: Traceback'."""
    with sweep.LocalPool(1) as pool:
        pid = pool.submit(os.getpid).result(timeout=120)
        os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert pool.submit(os.getpid).result(timeout=60) == pid  # the same process, still serving
        running = pool.submit(time.sleep, 60)
        t0 = time.perf_counter()
        while not running.done() and time.perf_counter() - t0 < 30:  # until the task has started and got it
            time.sleep(0.2)
            os.kill(pid, signal.SIGINT)
        assert isinstance(running.exception(timeout=5), KeyboardInterrupt)
        assert pool.submit(os.getpid).result(timeout=60) == pid


def test_worker_start_initializes_numba_without_launching_threads():
    """The fork server may fork after importing ``worker_start`` only if that launched no thread pool
    (a child forked from a process whose OpenMP pool runs is killed by Numba): checked in a fresh
    interpreter, where nothing else has touched Numba."""
    code = ("import sys; from numba.np.ufunc import parallel; import sbnnumba.sweep.worker_start as w; "
            "assert 'numba.np.arraymath' in sys.modules and w.cpu_target_initialized(); "
            "assert not parallel._is_initialized, 'thread pool launched'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------- runs and restarts
def test_local_pool_gives_the_serial_numbers_and_rerun_skips(tmp_path, tiny_data):
    cfgs = configs()
    serial = sweep.run(cfgs, sweep.SerialExecutor(), tmp_path / "serial", threads=1, data=tiny_data, progress=False)
    with sweep.LocalPool(2) as pool:
        parallel = sweep.run(cfgs, pool, tmp_path / "pool", threads=1, data=tiny_data, progress=False)
    same_numbers(serial.rows, parallel.rows)
    assert {r["action"] for r in parallel.rows} == {"trained"}
    assert len({r["fit_seed"] for r in parallel.rows}) == 4
    for name in ("sweep.csv", "sweep.json", "final_accuracy.png", "learning_curves.png"):
        assert (tmp_path / "pool" / name).stat().st_size > 0
    with open(tmp_path / "pool" / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["finished"] * 4 and table[0]["opt.estimator"] == "psa"
    again = sweep.run(cfgs, sweep.SerialExecutor(), tmp_path / "serial", threads=1, data=tiny_data, progress=False)
    assert {r["action"] for r in again.rows} == {"skipped"}
    same_numbers(serial.rows, again.rows)


def test_more_epochs_resume_the_same_runs(tmp_path, tiny_data):
    cfgs = configs("estimator=st seed=0")
    ex = sweep.SerialExecutor()
    sweep.run(cfgs, ex, tmp_path / "a", threads=1, data=tiny_data, progress=False, plots=False)
    longer = [{**c, "epochs": 3} for c in cfgs]
    resumed = sweep.run(longer, ex, tmp_path / "a", threads=1, data=tiny_data, progress=False, plots=False)
    straight = sweep.run(longer, ex, tmp_path / "b", threads=1, data=tiny_data, progress=False, plots=False)
    assert resumed.rows[0]["action"] == "resumed" and resumed.rows[0]["epochs_done"] == 3
    same_numbers(resumed.rows, straight.rows)


def test_a_failing_configuration_does_not_stop_the_others(tmp_path):
    cfgs = configs("data=/no/such/directory,embedded", estimator="st", train_subset=300)
    res = sweep.run(cfgs, sweep.SerialExecutor(), tmp_path, threads=1, progress=False)
    bad, good = res.rows
    assert bad["status"] == "failed" and "/no/such/directory" in bad["error"] and good["status"] == "finished"
    assert res.keys("failed") == [bad["key"]]
    assert "Traceback" in open(os.path.join(bad["run_dir"], "error.txt")).read()
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["meta"]["failed"] == 1 and doc["runs"][0]["error"] == bad["error"]


def _wait_for_epoch(run_dir, timeout=120.0):
    """Epochs written to run_dir's history.json, polled until at least one."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        doc = sweep.task.read_json(os.path.join(run_dir, training.HISTORY_JSON))
        if doc and doc.get("history"):
            return len(doc["history"])
        time.sleep(0.01)
    raise AssertionError(f"no epoch finished in {run_dir} within {timeout} s")


def test_killed_worker_loses_only_its_unfinished_epoch(tmp_path, tiny_data):
    cfgs = configs("estimator=psa,st", epochs=20, hidden=[32], batch_size=20)
    out = tmp_path / "sweep"
    found = {}
    with sweep.LocalPool(2) as pool:
        thread = threading.Thread(target=lambda: found.update(
            res=sweep.run(cfgs, pool, out, threads=1, data=tiny_data, progress=False, plots=False)))
        thread.start()
        victim = os.path.join(out, "runs", sweep.run_dir_name(sweep.config_key(cfgs[0])))
        seen = _wait_for_epoch(victim)
        os.kill(sweep.task.read_json(os.path.join(victim, STATUS))["pid"], signal.SIGKILL)
        thread.join(timeout=300)
    killed, other = found["res"].rows
    assert killed["status"] == "incomplete" and killed["action"] == "lost", killed
    assert seen <= killed["epochs_done"] < 20  # every completed epoch survived, the running one is lost
    assert other["status"] == "finished" and other["epochs_done"] == 20  # the other worker went on
    assert found["res"].keys("incomplete") == [killed["key"]]
    with open(out / "sweep.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["incomplete", "finished"]
    rerun = sweep.run(cfgs, sweep.SerialExecutor(), out, threads=1, data=tiny_data, progress=False, plots=False)
    assert [r["action"] for r in rerun.rows] == ["resumed", "skipped"]
    straight = sweep.run(cfgs, sweep.SerialExecutor(), tmp_path / "straight", threads=1, data=tiny_data,
                         progress=False, plots=False)
    same_numbers(rerun.rows, straight.rows)


# ------------------------------------------------------------------------------------- command line
def test_cli_sweep(tmp_path, capsys):
    from sbnnumba.cli import main

    out = tmp_path / "cli"
    argv = ["sweep", "--grid", "estimator=st seed=0,1", "--set",
            "hidden=8 data=embedded train_subset=300 epochs=1 eval_samples=2 train_eval_size=0 batch_size=50",
            "--workers", "1", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "sweep: 2/2 finished, 0 running, 0 failed" in captured.err
    assert captured.out.count("finished") == 2 and (out / "final_accuracy.png").exists()
    assert main(argv) == 0 and "2 skipped" in capsys.readouterr().err
    assert main(["sweep", "--grid", "lr=1", "--out", str(out), "--set", "nope=1"]) == 2
    assert "got 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def dask_executor():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  death_timeout=60) as cluster, distributed.Client(cluster, timeout=60) as client:
        yield client.get_executor()


def test_dask_cluster_sweep_gives_the_serial_numbers(tmp_path, tiny_data, dask_executor):
    cfgs = configs("estimator=psa,st seed=0")
    serial = sweep.run(cfgs, sweep.SerialExecutor(), tmp_path / "serial", threads=1, data=tiny_data, progress=False,
                       plots=False)
    dask = sweep.run(cfgs, dask_executor, tmp_path / "dask", threads=1, data=tiny_data, progress=False, plots=False)
    same_numbers(serial.rows, dask.rows)
    assert len({r["pid"] for r in dask.rows}) >= 1 and all(r["pid"] != os.getpid() for r in dask.rows)


# ------------------------------------------------------------------------------ gradient study on executors
GRADSTUDY = dict(epochs=[0, 2], draws=60, chunk=20, n_points=20, methods=["psa", "arm"], progress=False, plots=False)


def _study_csv(out, **kw):
    from sbnnumba import gradstudy

    study = gradstudy.run_study(out, **GRADSTUDY, **kw)
    return (out / "gradient_accuracy.csv").read_text(), study


def test_gradient_study_draws_are_the_same_on_any_executor(tmp_path):
    from sbnnumba import gradstudy

    serial, study = _study_csv(tmp_path / "serial")
    with sweep.LocalPool(2) as pool:
        parallel, _ = _study_csv(tmp_path / "pool", executor=pool, threads=1)
    assert parallel == serial and serial.count("\n") > 10
    # block b of chunk draws has its own generator: a block computed alone is that slice of the draws
    x, y = gradstudy.toy2d(20)
    net = gradstudy.make_network(x, np.random.default_rng(3))
    all_draws = gradstudy.draw_gradients(net, x, y, "psa", {}, 50, [7, 1], chunk=20, progress=False)
    block1 = gradstudy.draw_block(net, x, y, "psa", {}, 20, np.random.default_rng([7, 1, 1]))
    assert all_draws.shape == (50, sum(p.size for p in net.params.values()))
    assert np.array_equal(all_draws[20:40], block1)
    with pytest.raises(ValueError, match="chunk: expected"):
        gradstudy.draw_gradients(net, x, y, "psa", {}, 5, 0, chunk=0)


def test_dask_cluster_gradient_study_gives_the_serial_output(tmp_path, dask_executor):
    serial, _ = _study_csv(tmp_path / "serial")
    dask, _ = _study_csv(tmp_path / "dask", executor=dask_executor, threads=1)
    assert dask == serial


def test_gradcheck_command_with_workers(tmp_path, capsys):
    from sbnnumba.cli import main

    common = ["--epochs", "0", "--draws", "40", "--chunk", "10", "--n-points", "20", "--methods", "psa", "--quiet",
              "--no-plots"]
    assert main(["gradcheck", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["gradcheck", "--out", str(tmp_path / "b"), "--workers", "1", *common]) == 0
    csv = "gradient_accuracy.csv"
    assert (tmp_path / "a" / csv).read_text() == (tmp_path / "b" / csv).read_text()
