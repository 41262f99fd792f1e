"""Second fault suite, training: a diverging loss, SIGTERM, two writers of one --out, an output folder made
read-only or removed mid-run (a full disk while writing the report: test_damaged_folders_and_report.py)."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from faultkit import TRAIN, tree

from tinydata import write_tiny_npy
from xferlab.cli import main

ENV = {**os.environ, "XFERLAB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def npy(tmp_path_factory) -> Path:
    return write_tiny_npy(tmp_path_factory.mktemp("train") / "data", n=10, n_test=4, size=16)


def _train(out: Path, npy: Path, *options) -> list:
    return ["train", "--data", npy, "--out", out, *TRAIN, *options]


def _each_epoch(monkeypatch, step) -> None:
    """Route every training epoch through `step(run_epoch) -> (loss, acc)`, whichever trainer runs it: the fit loop's
    train_one_epoch, or the head trainer that replaces it for cached features (engine.headfit)."""
    from xferlab.engine import fit
    from xferlab.engine.headfit import HeadTrainer

    loop, head = fit.train_one_epoch, HeadTrainer.train_epoch
    monkeypatch.setattr(fit, "train_one_epoch", lambda *a, **k: step(lambda: loop(*a, **k)))
    monkeypatch.setattr(HeadTrainer, "train_epoch", lambda self, batches: step(lambda: head(self, batches)))


def test_a_loss_that_becomes_nan_stops_the_run_naming_the_epoch_and_the_learning_rate(tmp_path, npy, fails):
    # Adam's first step moves every head weight by ~lr: at 1e38 the logits overflow and the loss is NaN
    fails(_train(tmp_path / "run", npy, "--lr", "1e38"), tmp_path, "epoch 1", "nan",
          "lr = 1e+38 (--lr) is likely too high: the default is 0.001", "nothing was saved")


def test_a_loss_that_becomes_infinite_later_stops_at_that_epoch(tmp_path, npy, fails, monkeypatch):
    calls = []

    def diverging(run_epoch):
        loss, acc = run_epoch()
        calls.append(1)
        return (float("inf") if len(calls) == 2 else loss), acc

    _each_epoch(monkeypatch, diverging)
    fails(_train(tmp_path / "run", npy, "--epochs", "3"), tmp_path, "epoch 2", "train loss inf")
    assert len(calls) == 2  # stopped at once, epoch 3 never ran


def test_sigterm_during_a_run_exits_143_and_leaves_nothing(tmp_path, npy, monkeypatch, capsys):
    def terminated(run_epoch):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's `scancel` / `kill` would, mid-epoch
        return run_epoch()

    _each_epoch(monkeypatch, terminated)
    before = tree(tmp_path)
    assert main([str(a) for a in _train(tmp_path / "run", npy)]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "terminated"
    assert tree(tmp_path) == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's only


def _runs(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else []


def test_sigterm_stops_a_study_like_ctrl_c_keeping_finished_runs(tmp_path, npy, monkeypatch, capsys):
    doc = {"name": "term", "data": {"path": str(npy)}, "backbones": ["resnet18"], "regimes": ["frozen"],
           "seeds": [0, 1, 2], "bootstrap_resamples": 100,
           "train": {"weights": "none", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    started = []

    def terminated_in_second_run(run_epoch):
        started.append(1)
        if len(started) == 2:  # the first run is finished and renamed into place; the second is mid-epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return run_epoch()

    _each_epoch(monkeypatch, terminated_in_second_run)
    code = main(["study", str(tmp_path / "study.yaml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 143, err
    assert "terminated: 1 finished run(s) kept" in err
    assert f"resume with: xferlab study {tmp_path / 'study.yaml'} --out {out}" in err
    assert [p.name for p in _runs(out)] == ["resnet18-frozen-seed0"]  # no staging folder of the second run
    assert (out / "runs" / "resnet18-frozen-seed0" / "metrics.json").is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".lock", ".tmp"))]


def test_two_processes_writing_one_out_one_wins_the_other_is_refused(tmp_path, npy, capsys):
    import xferlab.engine.run  # noqa: F401  (imported now, so this process reaches the folder within milliseconds)

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "xferlab", *map(str, _train(out, npy, "--epochs", "2"))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    end = time.monotonic() + 120
    while not (tmp_path / ".run.lock").exists():  # the first process is writing `out`
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < end, "the first process never started writing"
        time.sleep(0.02)
    second = main([str(a) for a in _train(out, npy, "--seed", "1")])
    err = capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert str(out) in err and "another xferlab process" in err
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 0  # the first's run, whole, never mixed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or lock file left


def test_a_stale_lock_left_by_a_killed_process_does_not_block(tmp_path, npy):
    (tmp_path / ".run.lock").write_text("")  # a process killed with SIGKILL leaves its lock file, not its lock
    assert main([str(a) for a in _train(tmp_path / "run", npy)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_lock_held_by_a_live_process_refuses_at_once(tmp_path, npy, fails):
    lock = tmp_path / ".run.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what another xferlab writing tmp_path/run holds
    try:
        fails(_train(tmp_path / "run", npy), tmp_path, "another xferlab process", ".run.lock")
    finally:
        os.close(fd)


def test_an_output_folder_made_read_only_mid_run_is_a_clear_error(tmp_path, npy, fails, monkeypatch):
    from xferlab import files

    real = files._create_temp

    def read_only(path):  # the folder became read-only (remounted, chmod by an admin) after training started
        if path.name == "metrics.json":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path)

    monkeypatch.setattr(files, "_create_temp", read_only)
    fails(_train(tmp_path / "run", npy), tmp_path, "metrics.json", "Read-only file system", "not writable")


def test_an_output_folder_removed_mid_run_is_a_clear_error(tmp_path, npy, fails, monkeypatch):
    from xferlab.engine import run

    real = run._write_run

    def removed_first(stage, *args, **kwargs):
        shutil.rmtree(stage)  # another user's cleanup script, or `rm -rf runs/` in another shell
        return real(stage, *args, **kwargs)

    monkeypatch.setattr(run, "_write_run", removed_first)
    fails(_train(tmp_path / "run", npy), tmp_path, ".run.partial", "removed while the command ran")


def test_the_finite_loss_check_as_a_per_epoch_hook():
    from types import SimpleNamespace

    from xferlab.engine.guards import FiniteLosses
    from xferlab.errors import XferlabError

    hook = FiniteLosses(lr=0.5)
    row = {"epoch": 4, "train_loss": 0.3, "val_loss": 0.4, "test_loss": None}
    hook.on_epoch_end(SimpleNamespace(row=lambda: row), state=None)  # finite (and a missing test split): nothing
    with pytest.raises(XferlabError, match=r"epoch 4: val loss nan: .*lr = 0\.5 is likely too high: the default is "
                                           r"0\.001"):
        hook.on_epoch_end(SimpleNamespace(row=lambda: {**row, "val_loss": float("nan")}), state=None)
