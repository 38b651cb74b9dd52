"""Run directories (#41): the lock, stale temporary files, operating-system errors as one line, results that
``evaluate`` never overwrites, and the messages of resumed and interrupted runs. Tiny sizes (< 30 s)."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from sbnnumba import architectures, cli, datasets, fileio, training

BASE = ["train", "--data", "embedded", "--train-subset", "200", "--hidden", "8", "--eval-samples", "2",
        "--batch-size", "50"]


@pytest.fixture(scope="module")
def tiny():
    ds = datasets.load_embedded()
    return ds.x_train[:100], ds.y_train[:100]


@pytest.fixture
def live_pid():
    """A process that stays alive during the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(directory, pid, host=None):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, fileio.LOCK_NAME), "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "since": "earlier"}, f)


def _fit(tiny, out, **options):
    net = architectures.build("mlp", (1, 28, 28), 10, rng=1, hidden=[8])
    return training.fit(net, tiny, out=out, **{**dict(epochs=1, batch_size=50, eval_samples=2, train_eval_size=0,
                                                      progress=False, plots=False), **options})


# ------------------------------------------------------------------------------------------ the lock
def test_second_run_on_a_locked_directory_fails_at_once_naming_the_holder(tiny, tmp_path, live_pid, capsys):
    out = tmp_path / "run"
    _write_lock(out, live_pid)
    with pytest.raises(fileio.DirectoryBusy, match=f"process {live_pid} on {socket.gethostname()}"):
        _fit(tiny, out)
    assert not (out / "checkpoint.npz").exists()
    assert cli.main(BASE + ["--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"process {live_pid}" in err and "--out" in err
    _write_lock(out, 12345, host="another-host")  # another host's lock cannot be checked: it holds
    with pytest.raises(fileio.DirectoryBusy, match="another-host"):
        _fit(tiny, out)


def test_stale_lock_and_temporary_files_of_dead_processes_are_removed(tiny, tmp_path, dead_pid, live_pid):
    out = tmp_path / "run"
    _write_lock(out, dead_pid)
    stale = out / f".tmp-{dead_pid}-abc.npz"
    kept = out / f".tmp-{live_pid}-abc.npz"  # a live writer's file is left alone
    stale.write_bytes(b"half a checkpoint")
    kept.write_bytes(b"being written")
    result = _fit(tiny, out)
    assert result.epochs_done == 1 and not stale.exists() and kept.exists()
    assert not (out / fileio.LOCK_NAME).exists()  # released after the run


def test_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    with fileio.RunLock(tmp_path / "d"):
        with fileio.RunLock(tmp_path / "d"):
            pass
        assert (tmp_path / "d" / fileio.LOCK_NAME).exists()
        code = ("import sys; from sbnnumba import fileio\n"
                "try:\n    fileio.RunLock(sys.argv[1]).__enter__()\nexcept fileio.DirectoryBusy as e:\n"
                "    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True)
        assert proc.returncode == 3 and f"process {os.getpid()}" in proc.stdout
    assert not (tmp_path / "d" / fileio.LOCK_NAME).exists()


# --------------------------------------------------------------------------- operating-system errors
def test_invalid_out_fails_before_training_with_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main(BASE + ["--epochs", "1", "--out", str(blocker / "run")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and str(blocker) in err and "Not a directory" in err
    assert "training" not in captured.out  # checked before any work


def test_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert cli.main(BASE + ["--epochs", "1", "--out", str(out), "--quiet"]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    capsys.readouterr()
    assert cli.main(BASE + ["--epochs", "2", "--out", str(out), "--resume", "--quiet"]) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left on device" in err and str(out) in err
    assert (out / "checkpoint.npz").read_bytes() == before
    assert not list(out.glob(".tmp-*")) and not (out / fileio.LOCK_NAME).exists()


# ------------------------------------------------------------------------------- evaluate and messages
def test_evaluate_never_overwrites_training_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(BASE + ["--epochs", "1", "--out", str(out), "--quiet"]) == 0
    kept = {name: (out / name).read_bytes() for name in cli.TRAIN_RESULTS}
    assert cli.main(["evaluate", str(out / "checkpoint.npz"), "--samples", "2", "--seed", "7"]) == 0
    assert {name: (out / name).read_bytes() for name in cli.TRAIN_RESULTS} == kept
    assert all((out / name).is_file() for name in cli.EVALUATE_RESULTS)
    assert not set(cli.TRAIN_RESULTS) & set(cli.EVALUATE_RESULTS)


def test_resume_messages_count_epochs_of_this_run_and_in_total(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(BASE + ["--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "epoch 1/1" in first  # --no-progress hides the bars only
    assert cli.main(BASE + ["--epochs", "3", "--out", str(out), "--resume", "--quiet"]) == 0
    second = capsys.readouterr().out
    assert "resuming" not in second and "epoch 2/3" not in second  # --quiet: no epoch lines
    assert "trained 2 epochs in this run" in second and "3 of 3 in total" in second
    assert cli.main(BASE + ["--epochs", "4", "--out", str(out), "--resume", "--no-progress"]) == 0
    third = capsys.readouterr().out
    assert "from epoch 3: 1 of 4 epochs left" in third and "trained 1 epochs in this run" in third


@pytest.mark.parametrize("at_epoch, expected", [(1, "no checkpoint was written"), (2, "keeps epoch 1")])
def test_ctrl_c_says_whether_a_checkpoint_is_kept(tmp_path, capsys, monkeypatch, at_epoch, expected):
    real = training.Trainer.run_epoch

    def run_epoch(self, epoch):
        if epoch == at_epoch:
            raise KeyboardInterrupt
        return real(self, epoch)
    monkeypatch.setattr(training.Trainer, "run_epoch", run_epoch)
    out = tmp_path / "run"
    assert cli.main(BASE + ["--epochs", "2", "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert expected in err and not (out / fileio.LOCK_NAME).exists()


def test_gradcheck_errors_name_gradcheck(capsys):
    assert cli.main(["gradcheck", "--draws", "0"]) == 2
    err = capsys.readouterr().err
    assert "python -m sbnnumba gradcheck: error: --draws" in err and "gradstudy" not in err
