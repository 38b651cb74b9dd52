"""Errors of the command line (user audit): every command that writes checks --out before any work, a failed
``train`` leaves no directory it created, ``export`` and ``gradcheck`` refuse a foreign non-empty --out, SIGTERM
ends ``train`` as Ctrl-C does, a busy directory is named as such, ``--resume`` lists the differing settings as
flags, and messages name the flag only. Tiny sizes: a few seconds in all."""
import os
import signal
import socket
import sys
import time
import types

import numpy as np
import pytest

from sbnnumba import architectures, cli, fileio, training

BASE = ["train", "--data", "embedded", "--train-subset", "200", "--hidden", "8", "--eval-samples", "2",
        "--batch-size", "50", "--quiet"]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "Traceback" not in err, err
    return err


@pytest.fixture
def blocked(tmp_path):
    """An --out that cannot be created: a path under a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return str(blocker / "out")


@pytest.fixture
def calls(monkeypatch):
    """The gradient study and the sweep replaced by stand-ins that record their arguments (and do nothing)."""
    import sbnnumba.sweep.cli as sweep_cli

    seen = []
    fake = types.ModuleType("sbnnumba.gradstudy")
    fake.main = lambda argv, prog: seen.append(("gradcheck", argv)) or 0
    monkeypatch.setitem(sys.modules, "sbnnumba.gradstudy", fake)
    monkeypatch.setattr(sweep_cli, "main", lambda argv: seen.append(("sweep", argv)) or 0)
    return seen


def fake_study(monkeypatch, write, fail=False):
    """``sbnnumba.gradstudy.main`` writing the files ``write`` (atomically, as the study does) into its --out, then
    raising ValueError if ``fail``."""
    def main(argv, prog):
        out = argv[argv.index("--out") + 1]
        os.makedirs(out, exist_ok=True)
        for name in write:
            fileio.atomic_write_text(os.path.join(out, name), "new")
        if fail:
            raise ValueError("draws: the study failed")
        return 0
    fake = types.ModuleType("sbnnumba.gradstudy")
    fake.main = main
    monkeypatch.setitem(sys.modules, "sbnnumba.gradstudy", fake)


# ------------------------------------------------------------------------- 1: --out checked before any work
@pytest.mark.parametrize("argv", [
    ["evaluate", "CKPT", "--out", "OUT"],
    ["export", "CKPT", "--format", "c", "--out", "OUT"],
    ["gradcheck", "--out", "OUT", "--epochs", "0"],
    ["sweep", "--grid", "epochs=1", "--out", "OUT"],
    ["train", "--data", "embedded", "--out", "OUT"],
])
def test_every_command_checks_its_out_before_any_work(argv, tmp_path, blocked, calls, capsys):
    argv = [str(tmp_path / "missing.npz") if a == "CKPT" else blocked if a == "OUT" else a for a in argv]
    assert cli.main(argv) == 2
    err = one_line_error(capsys)
    # named as --out, before the (missing) checkpoint is read or the study/sweep starts
    assert f"--out: cannot create or write {blocked}: Not a directory" in err and calls == []


def test_out_check_leaves_nothing_behind(tmp_path, calls, capsys):
    out = tmp_path / "new" / "sweep"
    assert cli.main(["sweep", "--grid", "epochs=1", "--out", str(out)]) == 0
    assert calls == [("sweep", ["--grid", "epochs=1", "--out", str(out)])] and not (tmp_path / "new").exists()


# --------------------------------------------------------------- 2: a failed train removes what it created
@pytest.mark.parametrize("case", ["missing data", "data without IDX files", "unusable backend"])
def test_failed_train_removes_the_directories_it_created(case, tmp_path, capsys, monkeypatch):
    data = {"missing data": str(tmp_path / "missing"), "data without IDX files": str(tmp_path)}.get(case, "embedded")
    if case == "unusable backend":
        def build(*args, **kwargs):
            raise RuntimeError("backend 'cuda' is not usable: no GPU")
        monkeypatch.setattr(architectures, "build", build)
    out = tmp_path / "new" / "run"
    assert cli.main(["train", "--data", data, "--out", str(out), "--train-subset", "200"]) == 2
    assert "--data:" in one_line_error(capsys) or case == "unusable backend"
    assert not (tmp_path / "new").exists()


def test_failed_train_keeps_a_directory_it_did_not_create(tmp_path, capsys):
    empty, used = tmp_path / "empty", tmp_path / "used"
    empty.mkdir()
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    for out in (empty, used):
        assert cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
        one_line_error(capsys)
    assert empty.is_dir() and (used / "notes.txt").read_text() == "mine"


# ---------------------------------------------------- 3: export and gradcheck refuse a foreign non-empty --out
def test_export_refuses_a_foreign_or_other_export_directory(tmp_path, capsys):
    garbage = tmp_path / "garbage.npz"  # an .npz that is no checkpoint: refused only after the --out check
    np.savez(garbage, a=np.zeros(3))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "main.c").write_text("int main(void) { return 0; }\n")
    assert cli.main(["export", str(garbage), "--format", "c", "--out", str(foreign)]) == 2
    assert f"--out: {foreign} is not empty and holds no C export" in one_line_error(capsys)
    assert (foreign / "main.c").read_text() == "int main(void) { return 0; }\n"

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "README.md").write_text("# net: a binary network exported by sbnnumba\n")
    assert cli.main(["export", str(garbage), "--format", "c", "--out", str(earlier)]) == 2
    assert "--out:" in (err := one_line_error(capsys)) and "--name net" in err
    # the same --name: accepted (it is replaced), so the error is the checkpoint's
    assert cli.main(["export", str(garbage), "--format", "c", "--out", str(earlier), "--name", "net"]) == 2
    err = one_line_error(capsys)
    assert "--out" not in err and "garbage.npz: not an sbnnumba checkpoint" in err


def test_gradcheck_refuses_a_foreign_directory(tmp_path, calls, capsys):
    out = tmp_path / "g"
    out.mkdir()
    (out / "data.csv").write_text("x")
    assert cli.main(["gradcheck", "--out", str(out)]) == 2
    assert f"--out: {out} is not empty and holds no gradient study" in one_line_error(capsys) and calls == []


def test_gradcheck_replaces_an_earlier_study(tmp_path, monkeypatch, capsys):
    out = tmp_path / "g"
    out.mkdir()
    for name in ("gradient_accuracy.csv", "checkpoint_epoch0.npz", "checkpoint_epoch100.npz",
                 "gradient_accuracy_epoch100.png", "notes.txt"):
        (out / name).write_text("old")
    fake_study(monkeypatch, ["gradient_accuracy.csv", "gradient_accuracy.md", "checkpoint_epoch0.npz"])
    assert cli.main(["gradcheck", "--out", str(out), "--epochs", "0", "--no-plots"]) == 0
    assert "removed the earlier study's checkpoint_epoch100.npz, gradient_accuracy_epoch100.png" in \
        capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["checkpoint_epoch0.npz", "gradient_accuracy.csv", "gradient_accuracy.md",
                                       "notes.txt"]
    assert (out / "checkpoint_epoch0.npz").read_text() == "new" and (out / "notes.txt").read_text() == "old"


def test_failed_gradcheck_leaves_no_partial_study(tmp_path, monkeypatch, capsys):
    out = tmp_path / "new" / "g"
    fake_study(monkeypatch, ["checkpoint_epoch0.npz"], fail=True)
    assert cli.main(["gradcheck", "--out", str(out)]) == 2
    assert "the study failed" in one_line_error(capsys)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------- 4: SIGTERM as Ctrl-C
def test_sigterm_ends_train_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    real = training.Trainer.run_epoch
    out = tmp_path / "run"

    def run_epoch(self, epoch):
        if epoch == 2:  # SIGTERM arrives during an atomic write (a plot being saved)
            def write(f):
                f.write(b"half a plot")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            fileio.atomic_write(out / "plot.png", write)
        return real(self, epoch)
    monkeypatch.setattr(training.Trainer, "run_epoch", run_epoch)
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.perf_counter()
    assert cli.main(BASE + ["--epochs", "3", "--out", str(out)]) == 143
    assert time.perf_counter() - t0 < 25
    err = capsys.readouterr().err
    assert "interrupted;" in err and "keeps epoch 1" in err and "--resume" in err
    assert not (out / fileio.LOCK_NAME).exists() and not list(out.glob(".tmp-*")) and not (out / "plot.png").exists()
    assert training.load_checkpoint(out / "checkpoint.npz").epoch == 1
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command


# --------------------------------------------------------------------- 6: a busy directory, named as such
def test_a_run_in_progress_is_named_before_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"being written by the other run")
    holder = os.getppid()  # a live process other than this one
    (out / fileio.LOCK_NAME).write_text(f'{{"pid": {holder}, "host": "{socket.gethostname()}", "since": "now"}}')
    for extra in ([], ["--resume"]):
        assert cli.main(BASE + ["--out", str(out), *extra]) == 2
        err = one_line_error(capsys)
        assert f"--out: {out} is in use by process {holder}" in err and "already holds" not in err


# --------------------------------------------------------------- 7: --resume lists differences as flags
def test_resume_with_other_flags_lists_them_as_flags(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(BASE + ["--epochs", "1", "--out", str(out)]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    argv = [a if a != "8" else "16" for a in BASE] + ["--estimator", "st", "--epochs", "2", "--lr", "0.01",
                                                     "--out", str(out), "--resume"]
    assert cli.main(argv) == 2
    err = one_line_error(capsys)
    for part in ("--resume: the run in", "--hidden: checkpoint 8, now 16", "--estimator: checkpoint psa, now st",
                 "--lr: checkpoint 0.001, now 0.01", "leave those flags out (--resume takes them from the checkpoint)"):
        assert part in err, err
    assert "network." not in err and "crc32" not in err and len(err) < 400
    assert (out / "checkpoint.npz").read_bytes() == before and not (out / fileio.LOCK_NAME).exists()


# ------------------------------------------------------------------------------------ 8: the wording
@pytest.mark.parametrize("argv, expected, unwanted", [
    (["train", "--estimator", "foo"], "error: --estimator: expected one of adf, ", ["argument", "method:"]),
    (["train", "--max-time", "-1"], "error: --max-time: expected a positive number", ["None"]),
    (["train", "--optimizer", "foo"], "error: --optimizer: expected one of adam, sgd; got 'foo'", ["Optimizer"]),
    (["train", "--schedule", "x"], "--schedule: expected one of constant, step, cosine", ["callable", "None"]),
    (["train", "--data", "EMPTY", "--out", "OUT"], "error: --data: directory ", ["data_dir"]),
    (["train", "--momentum", "0.5", "--out", "OUT"], "error: --momentum: ", ["optimizer='sgd'"]),
    (["evaluate", "CSV"], "history.csv: not a checkpoint (not an .npz archive)", ["pickled", "allow_pickle"]),
])
def test_messages_name_the_flag_only(argv, expected, unwanted, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "history.csv").write_text("epoch,loss\n1,0.5\n")
    subs = {"EMPTY": str(tmp_path / "empty"), "OUT": str(tmp_path / "out"), "CSV": str(tmp_path / "history.csv")}
    assert cli.main([subs.get(a, a) for a in argv]) == 2
    err = one_line_error(capsys)
    assert expected in err and not any(u in err for u in unwanted), err


def test_help_texts(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--optimizer {adam,sgd} optimizer: adam or sgd (Nesterov momentum) (default: adam)" in text
    assert "Optimizer instance" not in text
    assert cli.main(["evaluate", "--help"]) == 0
    assert "--seed SEED seed of the sampled noise of the evaluation (default: 0)" in " ".join(
        capsys.readouterr().out.split())
    assert cli.main(["export", "--help"]) == 0
    assert "holding an earlier export of the same --name" in " ".join(capsys.readouterr().out.split())
