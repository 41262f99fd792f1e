"""The label check (xferlab.audit.labels): planted flips on a small embedding set are ranked first, hard but correct
images come after them, folds keep patients whole, the record names each image as the leakage list does, the verdict
has its own words and headline, and without cleanlab the check is skipped with the install line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import xferlab.audit.labels as labels
from xferlab import artifacts
from xferlab.audit import run_audit
from xferlab.audit.checks import CHECKS
from xferlab.audit.entry import AuditCheck, unavailable
from xferlab.audit.verdict import HEADLINE_PROBLEM, make_verdict
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.exclude import file_digest

# only the tests that run cleanlab need it: the verdict's words and the missing-package path do not
needs_cleanlab = pytest.mark.skipif(importlib.util.find_spec("cleanlab") is None,
                                    reason="the labels extra (cleanlab) is not installed")


def _blobs(n_per_class: int = 150, dims: int = 4, seed: int = 0, groups: bool = False):
    """Two well separated Gaussian classes (their means 6 apart along one axis), every 4th image test, the rest
    train/val; with `groups`, runs of 3 images are one patient."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    x = rng.normal(size=(len(y), dims)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 3.0, -3.0)
    splits = np.array(["train", "train", "val", "test"] * (len(y) // 4) + ["train"] * (len(y) % 4), dtype=object)
    patient = np.array([f"p{i // 3}" for i in range(len(y))]) if groups else None
    data = ImageDataset(images=np.zeros((len(y), 8, 8), dtype=np.uint8), labels=y, class_names=["normal", "pneumonia"],
                        splits=splits, groups=patient, meta={"ids": [f"img{i}.png" for i in range(len(y))]})
    return data, x


@needs_cleanlab
def test_planted_flips_come_first_and_hard_images_after(single_blas_thread):
    data, x = _blobs()
    test = np.flatnonzero(data.splits == "test")
    flips, hard = test[:6], test[10:16]
    x[hard, 0] = np.where(data.labels[hard] == 1, 0.3, -0.3)  # near the boundary, on their own label's side
    y = data.labels.copy()
    y[flips] = 1 - y[flips]
    data.labels = y
    record, arrays = labels.label_audit(data, x, None, folds=5, seed=0, alpha=0.05)

    ranked = test[np.argsort(arrays["label_quality"][test], kind="stable")]
    assert set(ranked[:len(flips)]) == set(flips)  # confident contradictions first
    assert min(np.flatnonzero(np.isin(ranked, hard))) >= len(flips)  # hard but correct ones after every flip
    assert set(flips) <= set(np.flatnonzero(arrays["label_issue"]))
    assert record["per_split"]["test"]["count"] == int(arrays["label_issue"][test].sum())
    listed = record["listed"]["test"]
    assert [e["index"] for e in listed[:len(flips)]] == ranked[:len(flips)].tolist()  # audit.json's order
    first = listed[0]
    i = first["index"]
    assert first["given"] == data.class_names[y[i]] and first["suggested"] == data.class_names[1 - y[i]]
    assert first["split"] == "test" and first["split_index"] == int(np.flatnonzero(test == i)[0])
    assert first["id"] == f"img{i}.png" and first["score"] < 0.5 < first["suggested_probability"]
    assert record["comparison"]["test_higher"]  # 6 flips in 75 test images, none in train+val
    assert labels.finding(record, {})[0] == "problem"


@needs_cleanlab
def test_clean_labels_are_not_a_problem(single_blas_thread):
    data, x = _blobs(seed=1)
    record, _ = labels.label_audit(data, x, None, folds=5, seed=0, alpha=0.05)
    level, text = labels.finding(record, {})
    assert level == "ok" and text.startswith("Labels: ")
    normal_test = int(np.count_nonzero((data.splits == "test") & (data.labels == 0)))
    assert record["per_split"]["test"]["per_class"]["normal"]["images"] == normal_test


@needs_cleanlab
def test_folds_keep_each_patient_whole(monkeypatch, single_blas_thread):
    seen = []
    real = labels.StratifiedGroupKFold

    class Recording(real):
        def split(self, X, y=None, groups=None):
            for train, held in super().split(X, y, groups):
                seen.append((set(groups[train]), set(groups[held])))
                yield train, held

    monkeypatch.setattr(labels, "StratifiedGroupKFold", Recording)
    data, x = _blobs(groups=True)
    record, _ = labels.label_audit(data, x, None, folds=5, seed=0, alpha=0.05)
    assert record["unit"] == "patient" and len(seen) == record["probe"]["folds"] == 5
    assert all(not (train & held) for train, held in seen)


def _record(test_count: int, test_higher: bool) -> dict:
    split = {"images": 400, "count": test_count, "share": test_count / 400, "per_class": {}}
    ref = {"images": 2000, "count": 40, "share": 0.02, "per_class": {}}
    return {"status": "ok", "unit": "image", "probe": {"accuracy": 0.9, "folds": 5, "model": "m", "features": "f"},
            "per_split": {"train": ref, "test": split}, "listed": {"test": []}, "file": artifacts.LABEL_ISSUES_CSV,
            "comparison": {"test": test_count, "train_val": 40, "p": 0.001 if test_higher else 0.4, "alpha": 0.05,
                           "test_higher": test_higher}}


def test_verdict_words_and_headline():
    level, text = labels.finding(_record(12, True), {})
    assert level == "problem"
    assert text.startswith("Labels: 12 test images (3.0 %) look mislabelled, more than elsewhere")
    assert "label_issues.csv" in text
    level, text = labels.finding(_record(12, False), {})  # 3.0 % against 2.0 %, not significantly: within chance
    assert level == "ok" and text.startswith("Labels: 12 test images (3.0 %) look mislabelled")
    assert "not significantly more than elsewhere" in text
    assert labels.finding(_record(0, False), {})[0] == "ok"
    verdict = make_verdict({"labels": _record(12, True)}, [CHECKS["labels"]])
    assert verdict["level"] == "problem" and verdict["headline"] == labels.HEADLINE != HEADLINE_PROBLEM


def test_the_label_headline_gives_way_to_any_other_problem():
    """Labels is a lesser concern than a test split that is not a random sample: its headline only when it is the
    only problem, whichever comes first in the registry."""
    other = AuditCheck("other", "Other", lambda inputs: None, finding=lambda record, audit: ("problem", "Other: x."))
    for order in ([other, CHECKS["labels"]], [CHECKS["labels"], other]):
        verdict = make_verdict({"labels": _record(12, True), "other": {}}, order)
        assert verdict["level"] == "problem" and verdict["headline"] == HEADLINE_PROBLEM


def test_a_probe_at_chance_is_inconclusive_not_a_list(single_blas_thread):
    """Features without class signal: no image is called mislabelled (before, half of the data was)."""
    data, _ = _blobs()
    noise = np.random.default_rng(3).normal(size=(len(data.labels), 4)).astype(np.float32)
    record, arrays = labels.label_audit(data, noise, None, folds=5, seed=0, alpha=0.05)
    assert record["status"] == "skipped" and record["reason"].startswith("inconclusive: the probe's out-of-fold")
    assert "do not separate class" in record["reason"]
    assert arrays == {}
    level, text = labels.finding(record, {})
    assert level == "caution" and "inconclusive" in text


@needs_cleanlab
def test_an_imbalanced_probe_that_ranks_well_is_not_called_chance(single_blas_thread):
    """10 % minority with real signal: the penalised probe rarely predicts it (accuracy near the majority share), but
    its probabilities rank it: the check runs."""
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], [540, 60])
    x = rng.normal(size=(len(y), 4)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 1.2, 0.0)
    splits = np.array(["train", "train", "val", "test"] * (len(y) // 4), dtype=object)
    data = ImageDataset(images=np.zeros((len(y), 8, 8), dtype=np.uint8), labels=y, class_names=["normal", "pneumonia"],
                        splits=splits)
    record, _ = labels.label_audit(data, x, None, folds=5, seed=0, alpha=0.05)
    assert record["status"] == "ok", record.get("reason")


def test_a_class_with_too_few_patients_is_not_checked(single_blas_thread):
    data, x = _blobs(groups=True)
    data.groups = np.where(data.labels == 1, np.where(np.arange(len(data.labels)) % 2 == 0, "a", "b"), data.groups)
    record, _ = labels.label_audit(data, x, None, folds=5, seed=0, alpha=0.05)
    assert record["status"] == "skipped" and f"fewer than {labels.MIN_PER_CLASS} patients" in record["reason"]


def test_the_probes_training_sample_keeps_a_rare_class(monkeypatch, single_blas_thread):
    """Above FIT_SAMPLE images each fold's probe trains on a sample stratified by class: a rare class is in it."""
    monkeypatch.setattr(labels, "FIT_SAMPLE", 30)
    trained_on = []
    real = labels.LogisticRegression

    class Recording(real):
        def fit(self, X, y):
            trained_on.append(np.bincount(y, minlength=2))
            return super().fit(X, y)

    monkeypatch.setattr(labels, "LogisticRegression", Recording)
    y = np.repeat([0, 1], [400, 10])
    x = np.random.default_rng(0).normal(size=(len(y), 4))
    labels.out_of_fold_probabilities(x, y, 2, 5, seed=0)
    assert len(trained_on) == 5 and all(29 <= counts.sum() <= 31 and counts[1] >= 1 for counts in trained_on)
    # just above the sample size (10,001-10,004 training images once, with 2 classes) it samples, never refuses
    rows = np.arange(10_003)
    picked = labels.stratified_sample(rows, np.r_[np.zeros(10_002, int), 1], 10_000, np.random.default_rng(0))
    assert 9_999 <= len(picked) <= 10_001 and rows[-1] in picked


def test_beside_an_image_shift_more_flags_in_test_are_a_caution(monkeypatch):
    """A probe fits shifted test images worse and flags more of them: that is not told apart from label errors."""
    monkeypatch.setattr(labels.verdict, "shift_finding", lambda shift: ("problem", "Image shift: ..."))
    level, text = labels.finding(_record(12, True), {"shift": {}})
    assert level == "caution" and "image shift" in text


def test_without_cleanlab_the_check_is_skipped_with_the_install_line(tiny_npy, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else real(name, *a))
    assert "pip install 'xferlab[labels]'" in unavailable(CHECKS["labels"])
    out = tmp_path / "audit"
    n = sum(len(np.load(f, mmap_mode="r")) for f in tiny_npy.glob("*.npy"))
    embeddings = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    run_audit(DataConfig(path=tiny_npy), AuditConfig(resplits=0, permutations=20, device="cpu", num_threads=1), out,
              progress=False, embeddings=embeddings)
    saved = json.loads((out / artifacts.AUDIT_JSON).read_text())
    assert saved["labels"]["status"] == "skipped" and saved["labels"]["missing"] == "cleanlab"
    finding = next(f for f in saved["verdict"]["findings"] if f["topic"] == "labels")
    assert finding["level"] == "ok" and finding["text"].startswith("Label errors: not checked (needs the optional")
    assert not (out / artifacts.LABEL_ISSUES_CSV).exists()


def _flipped_npy(root):
    """tiny_npy's layout with images of one class filed under the other: 2 in the train pool, 1 in test. The
    embeddings given to the audit carry each image's true class, so the probe contradicts those three labels."""
    from tinydata import write_tiny_npy

    write_tiny_npy(root, n=30, n_test=12)
    arrays = {f.name: np.load(f) for f in root.glob("*.npy")}
    for source, target, count in (("normal.npy", "pneumonia.npy", 2), ("test_normal.npy", "test_pneumonia.npy", 1)):
        arrays[target] = np.concatenate([arrays[target], arrays[source][:count]])
        arrays[source] = arrays[source][count:]
    for name, array in arrays.items():
        np.save(root / name, array)
    truth = np.concatenate([np.full(len(arrays[f]), 0 if "normal" in f else 1) for f in sorted(arrays)])
    truth[len(arrays["normal.npy"]) + 30:len(arrays["normal.npy"]) + 32] = 0  # pneumonia.npy's last 2 are normal
    n_test_normal = len(arrays["test_normal.npy"])
    truth[-1] = 0  # test_pneumonia.npy's last image is normal
    assert n_test_normal == 11
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(len(truth), 8)).astype(np.float32)
    embeddings[:, 0] += np.where(truth == 1, 4.0, -4.0)
    return root, embeddings


@needs_cleanlab
def test_exclude_round_trip(tmp_path, capsys):
    """The audit's label_issues.csv given to --exclude: train and study run without exactly those images, the run's
    config.yaml records the file, the study report names it; ids the data does not hold are exit status 2."""
    import yaml

    from xferlab.cli import main

    root, embeddings = _flipped_npy(tmp_path / "flipped")
    np.save(tmp_path / "embeddings.npy", embeddings)
    audit = tmp_path / "audit"
    assert main(["audit", "--data", str(root), "--out", str(audit), "--embeddings", str(tmp_path / "embeddings.npy"),
                 "--resplits", "0", "--permutations", "20", "--device", "cpu", "-q"]) == 0
    issues = audit / artifacts.LABEL_ISSUES_CSV
    lines = issues.read_text().splitlines()
    ids = [line.split(",")[0] for line in lines[1:]]
    assert "test_pneumonia.npy:12" in ids and set(ids) <= {"pneumonia.npy:30", "pneumonia.npy:31",
                                                           "test_pneumonia.npy:12"}  # the planted ones only

    train = ["--weights", "none", "--backbone", "resnet18", "--regime", "frozen", "--epochs", "1", "--batch-size", "16",
             "--device", "cpu", "--num-threads", "1"]
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--exclude", str(issues), "--out", str(run), *train]) == 0
    assert f"  {len(ids)} images excluded by {issues}" in capsys.readouterr().out
    assert yaml.safe_load((run / artifacts.CONFIG_YAML).read_text())["data"]["exclude"] == str(issues)
    metrics = json.loads((run / artifacts.METRICS_JSON).read_text())
    assert metrics["excluded"] == {"file": str(issues), "count": len(ids), "sha256": file_digest(issues)}
    assert sum(map(sum, metrics["counts"].values())) == len(embeddings) - len(ids)

    doc = {"name": "excluded", "data": {"path": str(root)}, "backbones": ["resnet18"], "regimes": ["frozen"],
           "bootstrap_resamples": 100, "train": {"weights": "none", "epochs": 1, "batch_size": 16, "device": "cpu",
                                                "num_threads": 1}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(doc))
    study = tmp_path / "study"
    assert main(["study", str(tmp_path / "study.yaml"), "--out", str(study), "--exclude", str(issues)]) == 0
    report = (study / artifacts.REPORT_HTML).read_text()
    assert f"{len(ids)} images excluded by {issues.resolve()}" in report

    # an audit of the data without them says so too (audit.json, the report's audit section)
    from xferlab.data.sources import load_dataset
    from xferlab.report.audit import render_audit_section

    kept = [i for i, name in enumerate(load_dataset(DataConfig(path=root)).meta["ids"]) if name not in set(ids)]
    np.save(tmp_path / "kept.npy", embeddings[kept])
    assert main(["audit", "--data", str(root), "--exclude", str(issues), "--out", str(tmp_path / "audit2"),
                 "--embeddings", str(tmp_path / "kept.npy"), "--resplits", "0", "--permutations", "20",
                 "--device", "cpu", "-q"]) == 0
    saved = json.loads((tmp_path / "audit2" / artifacts.AUDIT_JSON).read_text())
    assert saved["dataset"]["excluded"]["count"] == len(ids)
    assert f"({len(ids)} more excluded by " in render_audit_section(tmp_path / "audit2")

    bad = tmp_path / "bad.csv"
    bad.write_text("id\nnormal.npy:999\n")
    capsys.readouterr()
    assert main(["train", "--data", str(root), "--exclude", str(bad), "--out", str(tmp_path / "run2"), *train]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.csv" in err and "normal.npy:999" in err
    assert not (tmp_path / "run2").exists()

    # the same exclude file with other contents: the resumed study refuses its finished runs
    resolved = issues.resolve()
    resolved.write_text("\n".join(lines[:-1]) + "\n")
    assert main(["study", str(tmp_path / "study.yaml"), "--out", str(study), "--exclude", str(issues), "-q"]) == 2
    assert "the file has changed since (its sha256 differs); pass --force" in capsys.readouterr().err
