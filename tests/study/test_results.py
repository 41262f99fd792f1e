import csv
import json
import statistics

import numpy as np
import pytest

from xferlab.errors import XferlabError
from xferlab.evaluation.metrics import METRICS
from xferlab.study import collect_results, write_results
from xferlab.study.results import SPLITS, TIMING_KEYS


@pytest.fixture
def trained(trained_study):
    return trained_study


def test_results_hold_one_row_per_run_recomputed_from_its_saved_predictions(trained):
    results = collect_results(trained)
    write_results(results)
    doc = json.loads((trained / "results.json").read_text())
    assert doc["schema_version"] == 2 and doc["primary_split"] == "test" and doc["missing_runs"] == []
    assert doc["bootstrap"] == {"method": "percentile bootstrap of images, stratified by class", "resamples": 200,
                                "confidence": 0.95, "seed": 0}
    rows = {row["run"]: row for row in doc["runs"]}
    assert sorted(rows) == sorted(f"resnet18-{r}-seed{s}" for r in ("frozen", "finetune") for s in (0, 1))
    for name, row in rows.items():
        run = trained / "runs" / name
        metrics = json.loads((run / "metrics.json").read_text())
        saved = np.load(run / "predictions.npz")
        assert (row["backbone"], row["regime"], row["seed"], row["epochs"]) == \
            (metrics["backbone"], metrics["regime"], int(name[-1]), 1)
        assert row["config"]["data"]["path"] == str(trained.parent / "phantoms")
        assert (row["params"], row["trainable_params"], row["best_epoch"]) == \
            (metrics["params"], metrics["trainable_params"], metrics["best_epoch"])
        for split in SPLITS:
            # metrics.json: the engine's record, computed from the predictions in memory when the run ended
            recorded = metrics[split]
            assert set(recorded) == {"accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity"}
            assert {m: row[split]["metrics"][m]["value"] for m in recorded} == pytest.approx(recorded)
            assert set(row[split]["metrics"]) == set(METRICS)
            assert row[split]["n"] == len(saved[f"{split}_labels"])
            assert np.sum(row[split]["confusion_matrix"]) == row[split]["n"]
        t = row["timing"]
        assert set(t) == set(TIMING_KEYS)
        assert t["train_seconds"] == pytest.approx(metrics["train_seconds"] + metrics["feature_seconds"])
        assert t["seconds_per_epoch"] == pytest.approx(metrics["train_seconds"])  # one epoch
        assert t["inference_images_per_s"] == metrics["inference_images_per_s"] > 0


def test_results_csv_is_the_flat_form_of_the_json_rows(trained):
    write_results(collect_results(trained))
    with open(trained / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    doc = json.loads((trained / "results.json").read_text())
    assert len(table) == len(doc["runs"]) == 4
    columns = set(table[0])
    expected = {f"{s}_{m}{suffix}" for s in SPLITS for m in METRICS for suffix in ("", "_low", "_high")}
    assert expected | set(TIMING_KEYS) | {"run", "backbone", "regime", "seed", "params", "trainable_params"} <= columns
    for line, row in zip(table, doc["runs"]):
        assert line["run"] == row["run"]
        assert float(line["test_auroc_low"]) == pytest.approx(row["test"]["metrics"]["auroc"]["low"])
        assert float(line["train_seconds"]) == pytest.approx(row["timing"]["train_seconds"])


def test_configurations_give_mean_and_sd_across_seeds(trained):
    write_results(collect_results(trained))
    doc = json.loads((trained / "results.json").read_text())
    by_run = {row["run"]: row for row in doc["runs"]}
    for config in doc["configurations"]:
        assert config["seeds"] == [0, 1]
        values = [by_run[name]["val"]["metrics"]["balanced_accuracy"]["value"] for name in config["runs"]]
        stats = config["val"]["balanced_accuracy"]
        assert stats["n"] == 2 and stats["mean"] == pytest.approx(statistics.fmean(values))
        assert stats["sd"] == pytest.approx(statistics.stdev(values))


def test_the_grid_says_which_runs_are_missing(study_yaml, run_folder, predictions, tmp_path):
    """Missing = grid cells without a finished run (metrics.json), in grid order; folders outside the grid and
    unfinished folders are not results."""
    out = tmp_path / "out"
    out.mkdir()
    study_yaml("out/study.yaml", regimes=["frozen", "finetune"], seeds=[0, 1])
    labels = {s: np.repeat([0, 1], 4) for s in SPLITS}
    probs = {s: predictions(y, 0.75) for s, y in labels.items()}
    for regime, seed in (("finetune", 1), ("frozen", 0), ("frozen", 7)):  # seed 7 is not in the grid
        run_folder(out / "runs" / f"resnet18-{regime}-seed{seed}", "resnet18", regime, seed, probs, labels, 100, 1.0)
    (out / "runs" / "resnet18-frozen-seed1").mkdir()  # started, never finished
    results = collect_results(out)
    assert [r.name for r in results.records] == ["resnet18-frozen-seed0", "resnet18-finetune-seed1"]
    assert results.missing == ["resnet18-frozen-seed1", "resnet18-finetune-seed0"]


def test_a_folder_without_runs_is_an_error(tmp_path):
    with pytest.raises(XferlabError, match="no such study folder"):
        collect_results(tmp_path / "nothing")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(XferlabError, match="no finished runs"):
        collect_results(tmp_path / "empty")


def test_an_unreadable_run_folder_names_itself(tmp_path, run_folder, predictions):
    labels = {s: np.repeat([0, 1], 4) for s in SPLITS}
    run = run_folder(tmp_path / "out" / "runs" / "r", "resnet18", "frozen", 0,
                     {s: predictions(y, 0.75) for s, y in labels.items()}, labels, 100, 1.0)
    (run / "predictions.npz").write_bytes(b"not a zip")
    with pytest.raises(XferlabError, match="runs/r/predictions.npz: unreadable"):
        collect_results(tmp_path / "out")
