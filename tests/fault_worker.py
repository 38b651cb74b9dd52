"""Fault injection for tests/test_faults.py (#41): kill training with SIGKILL at random moments, resume, repeat.

Run as ``python tests/fault_worker.py KILLS SEED WORKDIR``. The worker imports sbnnumba once, trains a reference
run without interruption, then runs *campaigns*: a fresh output directory, and until the run completes, a
forked child resumes it (or starts it) and is killed with SIGKILL after a random delay (uniform over the
length of half a run, growing while kills see no new epoch, so kills land in steps, validation, checkpoint and
history writes, the lock and the start-up alike). After every kill it checks that nothing written before is lost: the
checkpoint still loads, its epoch never goes back, the history rows of earlier epochs are unchanged, and
``history.json`` parses. Every campaign's final parameters must be bit-identical to the reference run's, its
history equal but for the timings, and no lock or temporary file may remain. Campaigns continue until
``KILLS`` kills have landed. Prints one JSON line: kills, campaigns, resumes, the epochs at which kills
landed and the seconds taken.

Forking needs a process without threads: GNU OpenMP refuses to run in the forked child of a process that
used it, and a child forked while Numba's workqueue threads exist can deadlock. The worker therefore runs
with ``NUMBA_DISABLE_JIT=1`` (the kernels as plain Python, fast enough for this tiny network) and one BLAS
thread, so every forked child starts training at once. The kernels' own determinism is tested elsewhere
(tests/test_threads.py, golden digests); this test is about what interrupted runs leave on disk.
"""
import json
import os
import signal
import sys
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["NUMBA_DISABLE_JIT"] = "1"  # no threads to lose in a forked child (see the module docstring)

import numpy as np  # noqa: E402

from sbnnumba import architectures, datasets, fileio, training  # noqa: E402

EPOCHS = 4


def _net():
    return architectures.build("mlp", (1, 28, 28), 10, rng=2, hidden=[8, 8], backend="reference")


def _fit(data, out, resume):
    return training.fit(_net(), data, out=out, resume=resume, epochs=EPOCHS, batch_size=32, seed=7,
                        progress=False, verbose=False, plots=False, eval_samples=2, train_eval_size=16,
                        val_fraction=0.25)


def _rows(history):
    return [{k: v for k, v in row.items() if k not in training.TIMING_KEYS} for row in history]


def _state(out):
    """(epoch, history rows) of the checkpoint in ``out``, or (0, []) if there is none yet."""
    path = os.path.join(out, training.CHECKPOINT_NAME)
    if not os.path.exists(path):
        return 0, []
    ck = training.load_checkpoint(path)  # raises if a kill corrupted it
    history_json = os.path.join(out, training.HISTORY_JSON)
    if os.path.exists(history_json):
        with open(history_json) as f:
            json.load(f)
    return ck.epoch, _rows(ck.history)


def _child(data, out):
    """Forked: start or resume the run, then exit without running the parent's cleanup."""
    code = 0
    try:
        _fit(data, out, resume=os.path.exists(os.path.join(out, training.CHECKPOINT_NAME)))
    except BaseException as exc:  # noqa: BLE001 - reported through the exit status
        print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    os._exit(code)


def campaign(data, out, rng, run_seconds, reference, figures):
    """Kill and resume one run until it completes; returns the number of kills that landed."""
    seen_epoch, seen_rows, kills, stuck = 0, [], 0, 0
    while True:
        pid = os.fork()
        if pid == 0:
            _child(data, out)
        # up to half a run (which includes a start-up), longer after each kill that saw no new epoch
        time.sleep(rng.uniform(0, run_seconds * (1 + stuck) / 2))
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            kills += 1
            figures["kill_epochs"].append(seen_epoch)
        elif os.waitstatus_to_exitcode(status) != 0:
            raise AssertionError(f"a resumed run failed (exit status {os.waitstatus_to_exitcode(status)}, "
                                 f"after {kills} kills, at epoch {seen_epoch})")
        epoch, rows = _state(out)
        stuck = stuck + 1 if epoch == seen_epoch else 0
        if epoch < seen_epoch or rows[:len(seen_rows)] != seen_rows:
            raise AssertionError(f"a kill lost work: checkpoint epoch {epoch} after {seen_epoch}")
        seen_epoch, seen_rows = epoch, rows
        figures["resumes"] += 1
        if done != 0:
            break
    net = training.load_network(os.path.join(out, training.CHECKPOINT_NAME), backend="reference")
    for key, value in reference["params"].items():
        if not np.array_equal(net.params[key], value):
            raise AssertionError(f"{key}: the killed and resumed run differs from the uninterrupted one")
    if seen_rows != reference["rows"]:
        raise AssertionError("history differs from the uninterrupted run's")
    leftovers = [n for n in os.listdir(out) if n.startswith(fileio.TMP_PREFIX) or n == fileio.LOCK_NAME]
    if leftovers:  # the last, completed session removed the killed ones' leftovers when it took the lock
        raise AssertionError(f"left behind: {leftovers}")
    return kills


def main(kills_wanted, seed, workdir):
    ds = datasets.load_embedded()
    data = (ds.x_train[:96], ds.y_train[:96])
    t0 = time.perf_counter()
    ref_out = os.path.join(workdir, "reference")
    _fit(data, ref_out, resume=False)
    run_seconds = time.perf_counter() - t0
    ck = training.load_checkpoint(os.path.join(ref_out, training.CHECKPOINT_NAME))
    reference = {"params": training.load_network(ck, backend="reference").params, "rows": _rows(ck.history)}
    rng = np.random.default_rng(seed)
    figures = {"kills": 0, "campaigns": 0, "resumes": 0, "kill_epochs": []}
    while figures["kills"] < kills_wanted:
        out = os.path.join(workdir, f"run{figures['campaigns']}")
        figures["kills"] += campaign(data, out, rng, run_seconds, reference, figures)
        figures["campaigns"] += 1
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    figures["reference_run_seconds"] = round(run_seconds, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
