"""The audit runner: the frozen re-splits train beside the statistics (a thread of their own) and give what they give
after them; a failure on either side reaches the caller, leaves no audit.json and no thread running. The checks are
the registry's entries (xferlab.audit.checks), so the tests patch what an entry calls."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

import xferlab.audit.checks as checks
from xferlab.audit import run_audit
from xferlab.audit.common import Stopped
from xferlab.audit.entry import AFTER, BESIDE
from xferlab.audit.resplit import resplit_experiment
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.sources import load_dataset


def _audit(path, out, **kw):
    n = sum(len(np.load(f, mmap_mode="r")) for f in path.glob("*.npy"))
    embeddings = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)  # no backbone pass
    cfg = AuditConfig(resplits=2, permutations=20, epochs=2, device="cpu", num_threads=1, **kw)
    return run_audit(DataConfig(path=path), cfg, out, progress=False, embeddings=embeddings)


def _resplits_on_threads(monkeypatch) -> list[str]:
    """The names of the threads resplit_experiment ran on, from here on."""
    names, real = [], checks.resplit_experiment

    def recorded(*args, **kw):
        names.append(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(checks, "resplit_experiment", recorded)
    return names


def test_re_splits_beside_the_statistics_equal_re_splits_after_them(tiny_npy, tmp_path, monkeypatch):
    threads = _resplits_on_threads(monkeypatch)
    beside = _audit(tiny_npy, tmp_path / "beside")
    monkeypatch.setitem(checks.CHECKS, "resplit", replace(checks.CHECKS["resplit"], stage=AFTER))
    after = _audit(tiny_npy, tmp_path / "after")
    assert threads[0].startswith("xferlab-audit") and threads[1] == threading.main_thread().name
    assert beside["resplit"]["status"] == "ok"
    assert beside["resplit"] == after["resplit"]
    assert beside["leakage"] == after["leakage"]
    assert set(beside["seconds"]) == set(after["seconds"]) >= {"leakage", "resplit", "total"}


def test_a_regime_that_trains_the_backbone_runs_after_the_statistics():
    assert checks.resplit_stage(AuditConfig(regime="finetune")) == AFTER
    assert checks.resplit_stage(AuditConfig(regime="frozen")) == BESIDE


def test_a_failure_in_the_background_re_splits_reaches_the_caller(tiny_npy, tmp_path, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("re-split broke")

    monkeypatch.setattr(checks, "resplit_experiment", broken)
    with pytest.raises(RuntimeError, match="re-split broke"):
        _audit(tiny_npy, tmp_path / "audit")
    assert not (tmp_path / "audit" / "audit.json").exists()


def test_a_failure_in_the_statistics_stops_the_re_splits_beside_them(tiny_npy, tmp_path, monkeypatch):
    stopped = threading.Event()

    def slow_resplits(data, embeddings, cfg, progress, stop):  # an experiment that only ends when stopped
        deadline = time.monotonic() + 60
        while not stop.wait(0.01):
            assert time.monotonic() < deadline, "the re-splits were never stopped"
        stopped.set()
        raise Stopped("stopped")

    def broken(*args, **kw):
        raise RuntimeError("leakage broke")

    monkeypatch.setattr(checks, "resplit_experiment", slow_resplits)
    monkeypatch.setattr(checks, "leakage_audit", broken)
    with pytest.raises(RuntimeError, match="leakage broke"):
        _audit(tiny_npy, tmp_path / "audit")
    assert stopped.is_set()
    assert not any(t.name.startswith("xferlab-audit") for t in threading.enumerate())
    assert not (tmp_path / "audit" / "audit.json").exists()


def test_stop_ends_the_stacked_re_splits_at_the_next_epoch(tiny_npy):
    data = load_dataset(DataConfig(path=tiny_npy))
    stop = threading.Event()
    stop.set()
    embeddings = np.zeros((len(data.labels), 4), dtype=np.float32)
    with pytest.raises(Stopped):
        resplit_experiment(data, embeddings, AuditConfig(resplits=2, epochs=2, device="cpu"), False, stop)
