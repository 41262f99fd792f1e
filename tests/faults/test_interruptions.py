"""A study killed with SIGKILL at any moment, or stopped with Ctrl-C, resumes to the same results."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tinydata import write_tiny_npy

# Timing columns differ between any two runs; everything else must be identical.
TIMING = ("seconds", "images_per_s", "throughput")


def _study(tmp_path: Path) -> Path:
    data = write_tiny_npy(tmp_path / "data", n=12, n_test=6, size=16)
    doc = {"name": "kill test", "data": {"path": str(data)}, "backbones": ["resnet18"],
           "regimes": ["frozen", "finetune"], "seeds": [0, 1], "bootstrap_resamples": 100,
           "train": {"weights": "none", "epochs": 2, "batch_size": 8, "device": "cpu", "num_threads": 1}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(study: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "XFERLAB_OFFLINE": "1"}
    # A shell without job control starts background jobs with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the study the default disposition, as a terminal would.
    return subprocess.Popen([sys.executable, "-m", "xferlab", "study", str(study), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"study ended before the kill point: {proc.stderr.read()}")
        if time.monotonic() > end:
            pytest.fail("kill point never reached")
        time.sleep(0.05)


def _results(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING) and "path" not in k} for r in rows]


def _runs(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*")) if (out / "runs").is_dir() else []


def test_a_study_killed_at_several_points_resumes_to_the_same_results(tmp_path):
    study = _study(tmp_path)
    clean = tmp_path / "clean"
    assert subprocess.run([sys.executable, "-m", "xferlab", "study", str(study), "--out", str(clean)],
                          capture_output=True, env={**os.environ, "XFERLAB_OFFLINE": "1"}).returncode == 0

    out = tmp_path / "killed"
    kill_points = [
        lambda: any(p.name.endswith(".partial") for p in _runs(out)),  # inside the first run
        lambda: len([p for p in _runs(out) if not p.name.startswith(".")]) >= 1,  # right after a run finished
        lambda: len([p for p in _runs(out) if not p.name.startswith(".")]) >= 3,  # later in the grid
    ]
    for point in kill_points:
        proc = _start(study, out)
        _wait_for(point, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = _start(study, out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert _results(out) == _results(clean)
    assert not [p for p in out.rglob("*") if p.name.endswith((".partial", ".tmp"))]


def test_ctrl_c_stops_cleanly_keeps_finished_runs_and_says_how_to_resume(tmp_path):
    study = _study(tmp_path)
    out = tmp_path / "study"
    proc = _start(study, out)
    _wait_for(lambda: len([p for p in _runs(out) if not p.name.startswith(".")]) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "resume with: xferlab study" in err and "Traceback" not in err
    kept = [p for p in _runs(out) if not p.name.startswith(".")]
    assert kept and all((p / "metrics.json").is_file() for p in kept)
    assert not [p for p in _runs(out) if p.name.endswith(".partial")]
