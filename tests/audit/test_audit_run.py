"""The audit runner: the frozen re-splits train beside the statistics (a background thread) and give what they give
after them; a failure there reaches the caller and leaves no audit.json."""

from __future__ import annotations

import numpy as np
import pytest

import xferlab.audit.run as audit_run
from xferlab.audit import run_audit
from xferlab.config import AuditConfig, DataConfig


def _audit(path, out, **kw):
    n = sum(len(np.load(f, mmap_mode="r")) for f in path.glob("*.npy"))
    embeddings = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)  # no backbone pass
    cfg = AuditConfig(resplits=2, permutations=20, epochs=2, device="cpu", num_threads=1, **kw)
    return run_audit(DataConfig(path=path), cfg, out, progress=False, embeddings=embeddings)


def test_re_splits_beside_the_statistics_equal_re_splits_after_them(tiny_npy, tmp_path, monkeypatch):
    beside = _audit(tiny_npy, tmp_path / "beside")
    assert audit_run._overlaps(AuditConfig())
    monkeypatch.setattr(audit_run, "_overlaps", lambda cfg: False)
    after = _audit(tiny_npy, tmp_path / "after")
    assert beside["resplit"]["status"] == "ok"
    assert beside["resplit"] == after["resplit"]
    assert beside["leakage"] == after["leakage"]
    assert set(beside["seconds"]) == set(after["seconds"]) >= {"leakage", "resplit", "total"}


def test_a_regime_that_trains_the_backbone_runs_after_the_statistics():
    assert not audit_run._overlaps(AuditConfig(regime="finetune"))


def test_a_failure_in_the_background_re_splits_reaches_the_caller(tiny_npy, tmp_path, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("re-split broke")

    monkeypatch.setattr(audit_run, "resplit_experiment", broken)
    with pytest.raises(RuntimeError, match="re-split broke"):
        _audit(tiny_npy, tmp_path / "audit")
    assert not (tmp_path / "audit" / "audit.json").exists()
