"""A study goes on when a run diverges: the run is recorded as diverged (folder, results.csv, results.json, summary,
report), the rest of the grid runs, the study exits 2 after writing everything, and a resumed study keeps the
diverged run unless --retry-diverged. Also: a run's degenerate flags in metrics.json equal its row's in a study of
one run. In-process CLI on tiny data, frozen and adabn heads (cached features: seconds)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

from tinydata import write_tiny_npy
from xferlab import artifacts
from xferlab.cli import main
from xferlab.files import read_yaml

TRAIN = {"weights": "none", "epochs": 2, "batch_size": 8, "device": "cpu", "num_threads": 1}


def _write(path, data, adabn_lr):
    doc = {"name": "diverging study", "data": {"path": str(data)}, "backbones": ["resnet18"],
           "regimes": ["frozen", "adabn"], "seeds": [0], "train": TRAIN,
           "per_regime": {"adabn": {"lr": adabn_lr}}, "bootstrap_resamples": 200}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _study(argv, capsys):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err.splitlines()


@pytest.fixture(scope="module")
def diverged_study(tmp_path_factory):
    """The study trained once: frozen at the default rate, adabn at lr 1e6 (finite, far above chance)."""
    root = tmp_path_factory.mktemp("diverged_study")
    data = write_tiny_npy(root / "tiny", n=10, n_test=4)
    study = _write(root / "study.yaml", data, 1e6)
    status = main(["study", str(study), "--out", str(root / "out"), "-q"])
    return root, data, study, status


def test_a_diverged_run_is_recorded_and_the_grid_goes_on(diverged_study):
    root, _, _, status = diverged_study
    out = root / "out"
    assert status == 2
    frozen, adabn = out / "runs" / "resnet18-frozen-seed0", out / "runs" / "resnet18-adabn-seed0"
    assert artifacts.is_finished_run(frozen) and artifacts.is_diverged_run(adabn)
    assert sorted(p.name for p in adabn.iterdir()) == ["config.yaml", "diverged.json", "history.csv"]  # no results
    record = artifacts.read_diverged_run(adabn).divergence
    assert (record["epoch"], record["split"], record["rule"], record["lr"]) == (1, "train", "far above chance", 1e6)
    with open(out / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert rows["resnet18-frozen-seed0"]["status"] == "finished" and rows["resnet18-frozen-seed0"]["val_accuracy"]
    assert rows["resnet18-adabn-seed0"]["status"] == "diverged" and rows["resnet18-adabn-seed0"]["val_accuracy"] == ""
    assert rows["resnet18-adabn-seed0"]["diverged_reason"] == record["reason"]
    doc = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in doc["runs"]] == ["resnet18-frozen-seed0"] and doc["missing_runs"] == []
    assert [(r["run"], r["divergence"]["reason"]) for r in doc["diverged_runs"]] == [("resnet18-adabn-seed0",
                                                                                      record["reason"])]
    html = (out / "report.html").read_text()
    assert "Runs whose losses diverged" in html and "resnet18-adabn-seed0 diverged, epoch 1: train loss" in html


def test_the_terminal_says_which_run_diverged_why_and_how_to_retry(diverged_study, capsys):
    root, _, study, _ = diverged_study
    status, out, err = _study(["study", study, "--out", root / "out"], capsys)  # resumed: nothing to train
    assert status == 2 and "0 runs trained, 2 already finished, 1 diverged (no results)" in out
    assert "! resnet18-adabn-seed0 diverged, epoch 1: train loss" in out and "1 diverged" in out
    assert err[-1].startswith("error: 1 of 2 runs diverged, recorded as such in ")
    assert sum(line.startswith("error") for line in err) == 1  # the lines before it: the study's progress bar
    line = read_yaml(study).key_lines[("per_regime", "adabn", "lr")]
    assert f"lr = 1e+06 ({study} line {line}: per_regime.adabn.lr) is likely too high: the default is 0.001" in err[-1]
    assert err[-1].endswith("; lower per_regime.adabn.lr in the study YAML and resume with --retry-diverged (the "
                            "other runs are kept)")


def test_a_resumed_study_retries_a_diverged_run_only_when_asked(diverged_study, capsys, tmp_path):
    root, data, study, _ = diverged_study
    out = tmp_path / "out"  # a copy, so the other tests keep the diverged study
    shutil.copytree(root / "out", out)
    adabn = out / "runs" / "resnet18-adabn-seed0"
    _write(study.with_name("fixed.yaml"), data, 1e-3)
    status, _, err = _study(["study", study.with_name("fixed.yaml"), "--out", out], capsys)
    assert status == 2 and "pass --retry-diverged to train it again" in err[-1] and artifacts.is_diverged_run(adabn)
    status, printed, err = _study(["study", study.with_name("fixed.yaml"), "--out", out, "--retry-diverged", "-q"],
                                  capsys)
    assert status == 0, err
    assert "1 runs trained, 1 already finished" in printed and artifacts.is_finished_run(adabn)
    assert not (adabn / "diverged.json").exists()
    assert json.loads((out / "results.json").read_text())["diverged_runs"] == []


def test_a_runs_flags_equal_its_row_in_a_study_of_one_run(diverged_study):
    """The frozen run of the study (its only finished run): metrics.json's flags, computed when it was trained with
    the study's bootstrap settings, are its row's in results.json and results.csv."""
    root = diverged_study[0]
    run = root / "out" / "runs" / "resnet18-frozen-seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    row = json.loads((root / "out" / "results.json").read_text())["runs"][0]
    assert metrics["flags"] == row["flags"] and metrics["degenerate"] == row["degenerate"]
    assert metrics["flags_bootstrap"]["resamples"] == 200  # the study's, not the default 2000
    assert any(metrics["flags"].values())  # flagged (4 val images: the AUROC interval holds 0.5), so it is a test
    with open(root / "out" / "results.csv") as f:
        csv_row = next(r for r in csv.DictReader(f) if r["run"] == run.name)
    assert {s: csv_row[f"{s}_flags"].split() for s in metrics["flags"]} == metrics["flags"]
