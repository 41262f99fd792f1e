import csv
import json

import numpy as np

from xferlab import artifacts
from xferlab.study import collect_results, write_results
from xferlab.study.summary import audit_sentence, rank_label, ranked, summary_table


def test_configurations_are_ranked_by_test_accuracy_and_tabulated(trained_study):
    results = collect_results(trained_study)
    configs = ranked(results)
    means = [c["test"]["accuracy"]["mean"] for c in configs]
    assert means == sorted(means, reverse=True) and configs[0]["rank"] == 1
    assert configs[1]["rank"] == (1 if configs[1]["tie"] else 2)
    lines = summary_table(results).splitlines()
    assert lines[0].split()[:5] == ["#", "backbone", "regime", "val", "acc"]
    assert lines[3].startswith("Ranked by mean test accuracy")
    for line, c in zip(lines[1:3], configs, strict=True):
        assert line.split()[:3] == [rank_label(c), "resnet18", c["regime"]]
        assert f"{c['test']['accuracy']['mean']:.3f} ± {c['test']['accuracy']['sd']:.3f} (n=2)" in line


def _study(tmp_path, run_folder, predictions, accuracies: dict[str, float], n: int = 100):
    """A study folder of hand-made runs (resnet18, one per regime) whose test predictions have the given accuracies;
    a run given accuracy None predicts pneumonia for every case."""
    labels = {s: np.repeat([0, 1], n // 2) for s in ("val", "test")}
    for i, (regime, acc) in enumerate(accuracies.items()):
        if acc is None:
            probs = {s: np.tile([0.2, 0.8], (n, 1)) for s in labels}
        else:
            probs = {s: predictions(labels[s], acc, seed=i) for s in labels}
        run_folder(tmp_path / "runs" / f"resnet18-{regime}-seed0", "resnet18", regime, 0, probs, labels,
                   11_000_000, 10.0)
    return tmp_path


def test_ties_share_a_rank_and_distinct_results_do_not(tmp_path, run_folder, predictions):
    out = _study(tmp_path, run_folder, predictions, {"finetune": 0.95, "partial:1": 0.94, "frozen": 0.60})
    configs = ranked(collect_results(out))
    assert [(c["regime"], c["rank"], c["tie"]) for c in configs] == \
        [("finetune", 1, True), ("partial:1", 1, True), ("frozen", 3, False)]
    assert [rank_label(c) for c in configs] == ["1=", "1=", "3"]


def test_degenerate_runs_are_flagged_in_terminal_and_results(tmp_path, run_folder, predictions):
    out = _study(tmp_path, run_folder, predictions, {"finetune": 0.9, "frozen": None})
    results = collect_results(out)
    text = summary_table(results)
    assert "! resnet18 frozen: val: predicts pneumonia for 100% of cases; specificity 0.000 < 0.05" in text
    assert "finetune" in text and text.count("! degenerate") == 1
    write_results(results)
    rows = {r["run"]: r for r in artifacts.read_results(out)["runs"]}
    frozen, finetune = rows["resnet18-frozen-seed0"], rows["resnet18-finetune-seed0"]
    assert frozen["degenerate"] and not finetune["degenerate"]
    assert set(frozen["flags"]["test"]) == {"one_class", "low_specificity", "auroc_ci_holds_0.5"}
    with open(out / artifacts.RESULTS_CSV, newline="") as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert table["resnet18-frozen-seed0"]["test_flags"].split() == frozen["flags"]["test"]
    assert table["resnet18-finetune-seed0"]["test_flags"] == ""
    assert table["resnet18-frozen-seed0"]["degenerate"] == "True"


def test_the_audit_verdict_stands_above_the_ranking(tmp_path, run_folder, predictions):
    out = _study(tmp_path, run_folder, predictions, {"finetune": 0.9, "frozen": 0.7})
    (out / "audit").mkdir()
    verdict = {"level": "problem", "headline": "Do not read the test accuracy as held-out performance.",
               "findings": [{"topic": "shift", "level": "problem", "text": "..."},
                            {"topic": "leakage", "level": "ok", "text": "..."}]}
    (out / "audit" / "audit.json").write_text(json.dumps({"verdict": verdict}))
    results = collect_results(out)
    first = summary_table(results).splitlines()[0]
    assert first == audit_sentence(results)
    assert first.startswith("Split audit verdict PROBLEM: Do not read the test accuracy as held-out performance")
    assert "(audit findings: shift)" in first and "leakage" not in first
    verdict["level"] = "ok"
    (out / "audit" / "audit.json").write_text(json.dumps({"verdict": verdict}))
    assert audit_sentence(collect_results(out)) is None
