"""The fan-out: a failing tracker warns once, is switched off, and neither stops the run nor changes its results;
calls are queued, not waited for."""

from __future__ import annotations

import csv
import json
import logging
import threading

import pytest

from tinydata import write_tiny_npy
from xferlab.cli import main
from xferlab.config import DataConfig, TrainConfig
from xferlab.engine.run import train
from xferlab.tracking.base import FanOut, Handle, Tracker, _Worker, epoch_hooks

UNTIMED = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


class Broken(Tracker):
    """A tracker whose store is full: every metric call fails."""

    def __init__(self):
        self.calls = 0

    def log_metrics(self, metrics, step=None):
        self.calls += 1
        raise OSError(28, "No space left on device")


class Recorder(Tracker):
    def __init__(self, gate: threading.Event | None = None):
        self.rows, self.gate = [], gate

    def log_metrics(self, metrics, step=None):
        if self.gate is not None:
            self.gate.wait(10)
        self.rows.append((step, dict(metrics)))


def _fan(*adapters: Tracker) -> FanOut:
    return FanOut([Handle.start(_Worker(f"t{i}"), lambda a=a: a) for i, a in enumerate(adapters)], owns_workers=True)


def _untimed(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: row[k] for k in UNTIMED} for row in csv.DictReader(f)]


def _results(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    return m["best_epoch"], m["val"], m["test"]


@pytest.fixture(scope="module")
def untracked(tmp_path_factory):
    """A run without tracking, the reference the tracked runs must match."""
    root = tmp_path_factory.mktemp("untracked")
    data = write_tiny_npy(root / "tiny")
    cfg = TrainConfig(data=DataConfig(path=data), weights="none", regime="finetune", epochs=2, batch_size=8,
                      device="cpu", num_threads=1)
    train(cfg, root / "run", progress=False)
    return cfg, root / "run"


def test_a_failing_tracker_warns_once_and_changes_nothing(untracked, tmp_path, caplog):
    cfg, reference = untracked
    broken, recorder = Broken(), Recorder()
    fan = _fan(broken, recorder)
    with caplog.at_level(logging.WARNING, logger="xferlab.tracking"):
        train(cfg, tmp_path / "run", progress=False, hooks=epoch_hooks(fan))
        fan.finish()
        fan.close()
    warnings = [r.getMessage() for r in caplog.records if "tracking failed" in r.getMessage()]
    assert len(warnings) == 1 and "t0 tracking failed" in warnings[0] and "No space left" in warnings[0]
    assert broken.calls == 1  # switched off after its first failure
    assert [step for step, _ in recorder.rows] == [1, 2]  # the other tracker kept going
    assert _untimed(tmp_path / "run") == _untimed(reference)
    assert _results(tmp_path / "run") == _results(reference)


def test_a_tensorboard_that_cannot_write_warns_and_the_command_succeeds(untracked, tmp_path, caplog, capsys):
    cfg, reference = untracked
    (tmp_path / "tb").write_text("a file where the log folder should go")
    argv = ["train", "--data", str(cfg.data.path), "--weights", "none", "--regime", "finetune", "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "--num-threads", "1", "--out", str(tmp_path / "run"),
            "--track", "tensorboard"]
    with caplog.at_level(logging.WARNING, logger="xferlab.tracking"):
        assert main(argv) == 0
    assert sum("tensorboard tracking failed" in r.getMessage() for r in caplog.records) == 1
    assert _untimed(tmp_path / "run") == _untimed(reference) and _results(tmp_path / "run") == _results(reference)


def test_calls_are_queued_not_waited_for():
    """A tracker stuck on a slow server does not hold up the caller; its calls run in order once it answers."""
    gate = threading.Event()
    recorder = Recorder(gate)
    fan = _fan(recorder)
    for epoch in (1, 2, 3):
        fan.log_metrics({"val_acc": epoch / 10, "note": "text", "missing": None}, step=epoch)
    assert recorder.rows == []  # all three returned while the tracker was blocked
    gate.set()
    fan.close()
    assert recorder.rows == [(1, {"val_acc": 0.1}), (2, {"val_acc": 0.2}), (3, {"val_acc": 0.3})]
