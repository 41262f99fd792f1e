"""The artifacts module: run, study and audit folders written by the version before it (tests/golden/legacy) still
load; records round-trip; a folder from a newer schema is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xferlab import artifacts
from xferlab.errors import XferlabError

LEGACY = Path(__file__).parent / "golden" / "legacy"


def test_a_run_folder_written_before_the_artifacts_module_loads():
    run = artifacts.read_run(LEGACY / "run")
    assert run.schema_version == 1 and run.config["regime"] == "frozen"
    assert [row["epoch"] for row in run.history] == [1, 2] and tuple(run.history[0]) == artifacts.HISTORY_COLUMNS
    assert set(run.predictions) == {"val", "test"}
    labels, probs = run.predictions["test"]
    assert probs.shape == (len(labels), 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert run.metrics["best_epoch"] in (1, 2) and run.class_names == ["normal", "pneumonia"]


def test_a_study_folder_written_before_the_artifacts_module_loads_and_reports(legacy_report):
    study = artifacts.read_study(LEGACY / "study")
    assert study.study["name"] == "legacy study" and study.run_names == ["resnet18-frozen-seed0"]
    assert study.environment["python"] and artifacts.is_finished_audit(study.path / artifacts.AUDIT)
    assert artifacts.read_results(LEGACY / "study")["runs"][0]["run"] == "resnet18-frozen-seed0"
    copy, results, report = legacy_report  # results, curves and the report rebuilt from the old files alone
    assert [r.name for r in results.records] == ["resnet18-frozen-seed0"]
    assert (copy / "runs" / "resnet18-frozen-seed0" / artifacts.CURVES_PNG).is_file()
    assert 'id="audit"' in report.read_text()
    # no behaviour change: every metric and CI the old version wrote is recomputed to the same value
    old, new = artifacts.read_results(LEGACY / "study")["runs"][0], artifacts.read_results(copy)["runs"][0]
    for split in artifacts.EVAL_SPLITS:
        for name, values in old[split]["metrics"].items():
            assert new[split]["metrics"][name] == pytest.approx(values), (split, name)
        assert new[split]["confusion_matrix"] == old[split]["confusion_matrix"]


def test_an_audit_folder_written_before_the_artifacts_module_loads():
    audit = artifacts.read_audit(LEGACY / "study" / "audit")
    assert audit.schema_version == 1 and "verdict" in audit.result and "shift" in audit.result
    with np.load(audit.path / artifacts.AUDIT_ARRAYS_NPZ) as arrays:
        assert len(arrays["labels"]) == len(arrays["splits"]) == audit.result["dataset"]["images"]


def test_a_run_record_round_trips(tmp_path):
    history = [{c: (e if c == "epoch" else 0.5) for c in artifacts.HISTORY_COLUMNS} for e in (1, 2)]
    preds = {"val": (np.array([0, 1]), np.array([[0.8, 0.2], [0.3, 0.7]], np.float32))}
    metrics = {"backbone": "resnet18", "regime": "frozen", "best_epoch": 2, "class_names": ["a", "b"], "val": {}}
    artifacts.write_run(tmp_path, "backbone: resnet18\n", history, metrics, preds)
    run = artifacts.read_run(tmp_path)
    assert run.history == history and run.metrics == metrics and run.config == {"backbone": "resnet18"}
    assert json.loads((tmp_path / artifacts.METRICS_JSON).read_text())["schema_version"] == artifacts.SCHEMA_VERSION
    np.testing.assert_array_equal(run.predictions["val"][1], preds["val"][1])


def test_a_folder_from_a_newer_schema_is_refused(tmp_path):
    shutil.copytree(LEGACY / "run", tmp_path / "run")
    metrics = tmp_path / "run" / artifacts.METRICS_JSON
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "schema_version": artifacts.SCHEMA_VERSION + 1}))
    with pytest.raises(XferlabError, match="newer than this xferlab reads"):
        artifacts.read_run(tmp_path / "run")


def test_a_legacy_study_gains_the_honest_results_fields_when_rebuilt(legacy_report):
    """results.json of an old folder lacks flags, calibration and operating points; rebuilding adds them (same
    schema version: the fields are additive and every one is recomputed from predictions.npz)."""
    old = artifacts.read_results(LEGACY / "study")["runs"][0]
    assert "flags" not in old and "calibration" not in old
    new = artifacts.read_results(legacy_report[0])["runs"][0]
    assert set(new["flags"]) == set(artifacts.EVAL_SPLITS) and isinstance(new["degenerate"], bool)
    assert new["calibration"]["test"]["ece"] == pytest.approx(new["test"]["metrics"]["ece"]["value"])
    assert new["calibration"]["test"]["brier"] == pytest.approx(new["test"]["metrics"]["brier"]["value"])
