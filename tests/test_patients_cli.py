"""Patients, not images, end to end through the CLI (in-process): on folder data with patient ids in the file names,
`xferlab train --groups kermany` carves val with no patient in two splits and saves the groups with the run,
`xferlab audit` lists exactly the patients planted across train and test, and without --groups xferlab names the
option. Then the same on the real pediatric radiographs of ../shared/data/kermany-sample (skipped when absent)."""

from __future__ import annotations

import json
import logging
from html import unescape
from pathlib import Path

import numpy as np
import pytest

from tinydata import write_patient_folder
from xferlab import artifacts
from xferlab.cli import main
from xferlab.config import DataConfig
from xferlab.data.sources import load_dataset
from xferlab.report.audit import render_audit_section

KERMANY_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kermany-sample"
TINY_TRAIN = ["--backbone", "efficientnet_lite0", "--epochs", "2", "--batch-size", "16", "--num-threads", "1",
              "--device", "cpu"]


@pytest.fixture(scope="module")
def patient_folder(tmp_path_factory) -> tuple[Path, list[str]]:
    """24 patients of 3 images per class, 8 of them in test/, and 2 per class planted in both train and test."""
    return write_patient_folder(tmp_path_factory.mktemp("patients") / "folder", planted=2)


@pytest.fixture(scope="module")
def grouped_run(patient_folder, tmp_path_factory) -> tuple[Path, str]:
    """`xferlab train --groups kermany` on the patient folder (val drawn at random, by patient): the run folder and
    what the run logged."""
    root, _ = patient_folder
    out = tmp_path_factory.mktemp("grouped") / "runs" / "lite0-frozen"
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    try:
        assert main(["train", "--data", str(root), "--format", "folder", "--groups", "kermany", "--val-split",
                     "random", "--out", str(out), *TINY_TRAIN]) == 0
    finally:
        logging.getLogger().removeHandler(handler)
    return out, "\n".join(handler.messages)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_train_with_groups_carves_val_by_patient_and_saves_the_groups(patient_folder, grouped_run):
    root, planted = patient_folder
    out, logged = grouped_run
    assert "4 patient(s) have images in more than one split" in logged  # the planted ones, said at once
    run = artifacts.read_run(out)
    assert run.config["data"]["groups"] == "kermany" and run.schema_version == artifacts.SCHEMA_VERSION
    data = load_dataset(DataConfig(path=root, format="folder", groups="kermany", val_split="random"))
    train = set(data.groups[data.splits == "train"])
    assert set(run.groups["val"]).isdisjoint(train) and len(run.groups["val"]) == len(run.predictions["val"][0])
    assert set(run.groups["test"]) & train == set(planted) - set(run.groups["val"])
    assert run.metrics["patients"]["val"]["share_multi"] == 1.0 and run.metrics["groups_from"] == "kermany"


def test_the_report_of_a_run_with_patients_resamples_patients(grouped_run):
    """The study results and report of a run that saved patient ids: cluster-bootstrap CIs, said so."""
    from xferlab.report import build_outputs

    out, _ = grouped_run
    results, report = build_outputs(out.parent.parent)  # a bare study folder: runs/<name>
    record = results.records[0]
    assert record.evaluation["test"]["bootstrap"].startswith("percentile cluster bootstrap of patients")
    assert record.evaluation["test"]["patients"] == len(np.unique(record.groups["test"]))
    doc = artifacts.read_results(out.parent.parent)
    assert "cluster bootstrap of patients" in doc["bootstrap"]["method"]
    html = unescape(report.read_text())
    assert "cluster bootstrap of patients, stratified by each patient's majority class" in html
    assert f"Patients resampled: val {record.evaluation['val']['patients']}" in html
    train = record.metrics["patients"]["train"]  # images per patient per split, as the audit shows them
    assert f"Images per patient: train {train['patients']} patients, {train['images']} images, median " \
           f"{train['median']:g}, max {train['max']}, {100 * train['share_multi']:.0f} % with more than one" in html


def test_without_groups_xferlab_names_the_option(patient_folder, tmp_path, caplog):
    root, _ = patient_folder
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--data", str(root), "--format", "folder", "--out", str(tmp_path / "run"),
                     *TINY_TRAIN]) == 0
    assert "pass --groups kermany" in caplog.text
    assert artifacts.read_run(tmp_path / "run").groups == {}  # every image its own patient: no groups saved


def test_the_audit_lists_exactly_the_planted_patients(patient_folder, tmp_path, capsys):
    root, planted = patient_folder
    config = tmp_path / "audit.yaml"
    config.write_text("audit:\n  epochs: 5\n  permutations: 99\n")
    out = tmp_path / "audit"
    assert main(["audit", "-c", str(config), "--data", str(root), "--format", "folder", "--groups", "kermany",
                 "--resplits", "4", "--device", "cpu", "--num-threads", "1", "--runtime", "torch",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / artifacts.AUDIT_JSON).read_text())
    overlap = result["leakage"]["groups"]
    assert sorted(g["group"] for g in overlap["overlapping"]) == planted and overlap["count"] == len(planted)
    assert all(g["counts"]["test"] == 1 for g in overlap["overlapping"])
    assert printed.startswith("PROBLEM: ") and "4 of 48 groups (patients) span more than one split" in printed
    assert result["dataset"]["patients"]["test"]["max"] == 3 and result["dataset"]["groups_from"] == "kermany"
    assert result["shift"]["within_class"]["unit"] == "patient" and result["class_balance"]["unit"] == "patient"
    assert result["resplit"]["unit"] == "patient" and len(result["resplit"]["by_image"]["runs"]) == 4
    html = render_audit_section(out)
    assert all(f"patient {p} in more than one split" in html for p in planted)
    assert "<h3>Patients (patient ids from kermany)</h3>" in html and "by image: test accuracy" in html


def _kermany_by_patient(root: Path, per_class: int = 12, test_per_class: int = 4) -> Path:
    """A small folder-layout copy of the sample (symlinks) with a test split of its own, drawn by patient: the
    first per_class patients of each class by name, the last test_per_class of them in test/."""
    from xferlab.data.groups import PRESETS, _match

    pattern = __import__("re").compile(PRESETS["kermany"])
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((KERMANY_SAMPLE / "train" / cls).glob("*.jpeg"))
        patients = sorted({_match(pattern, f.name) for f in files})[:per_class]
        for f in files:
            patient = _match(pattern, f.name)
            if patient in patients:
                split = "test" if patients.index(patient) >= per_class - test_per_class else "train"
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                (root / split / cls / f.name).symlink_to(f)
    return root


@pytest.mark.skipif(not KERMANY_SAMPLE.is_dir(), reason="../shared/data/kermany-sample is not here (a lone clone)")
def test_real_radiographs_train_by_patient(tmp_path):
    """Real JPEGs of 399-2572 px with patient ids in their names: val and test hold none of train's patients, and
    the run saves every val and test image's patient."""
    root = _kermany_by_patient(tmp_path / "kermany")
    assert main(["train", "--data", str(root), "--format", "folder", "--groups", "kermany", "--allow-external-links",
                 "--image-size", "64", "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 0
    run = artifacts.read_run(tmp_path / "run")
    data = load_dataset(DataConfig(path=root, format="folder", groups="kermany", allow_external_links=True,
                                   memory_budget_mb=0, image_size=64))  # headers only: the same splits
    train = set(data.groups[data.splits == "train"])
    assert train.isdisjoint(run.groups["val"]) and train.isdisjoint(run.groups["test"])
    np.testing.assert_array_equal(run.groups["val"], data.groups[data.splits == "val"])
    assert len(run.groups["test"]) == len(list((root / "test").rglob("*.jpeg")))
    assert run.metrics["patients"]["train"]["patients"] == 2 * 6  # 8 per class in the pool, 2 carved to val
