import numpy as np
import pytest

from xferlab.study import collect_results
from xferlab.study.answers import answer_questions

LABELS = {"val": np.repeat([0, 1], 40), "test": np.repeat([0, 1], 60)}


@pytest.fixture
def make_study(tmp_path, run_folder, predictions):
    """make_study({(backbone, regime): (val acc, test acc, train seconds)}) -> StudyResults of written run folders."""

    def make(cells, params=None):
        params = params or {"resnet18": 1_000_000, "resnet34": 5_000_000}  # registered names: run folders are checked
        for i, ((backbone, regime), (val, test, seconds)) in enumerate(cells.items()):
            probs = {"val": predictions(LABELS["val"], val, seed=i), "test": predictions(LABELS["test"], test, seed=i)}
            run_folder(tmp_path / "out" / "runs" / f"{backbone}-{regime}-seed0", backbone, regime, 0, probs, LABELS,
                       params[backbone], seconds)
        return collect_results(tmp_path / "out")

    return make


def _answers(results):
    return {a.key: a for a in answer_questions(results)}


def test_a_clearly_better_bigger_backbone_is_called_better_beyond_the_intervals(make_study):
    results = make_study({("resnet18", "frozen"): (0.95, 0.60, 1.0), ("resnet34", "frozen"): (0.95, 0.95, 2.0)})
    answer = _answers(results)["backbone_size"]
    assert "resnet34 (5.0M parameters in total) vs resnet18 (1.0M)" in answer.headline
    assert "the bigger backbone is better beyond the CI when frozen" in answer.headline
    assert "resnet34 95.0% vs resnet18 60.0% test accuracy; difference +35.0 points" in answer.details[0]


def test_a_small_difference_is_not_called_beyond_the_intervals(make_study):
    results = make_study({("resnet18", "frozen"): (0.9, 0.80, 1.0), ("resnet34", "frozen"): (0.9, 0.8167, 2.0)})
    answer = _answers(results)["backbone_size"]
    assert "no difference beyond the confidence intervals" in answer.headline
    assert "difference +1.7 points" in answer.details[0] and "not beyond the uncertainty" in answer.details[0]


def test_finetuning_gain_and_time_cost_come_from_the_runs(make_study):
    results = make_study({("resnet18", "frozen"): (0.9, 0.70, 10.0), ("resnet18", "finetune"): (0.95, 0.90, 45.0)})
    answer = _answers(results)["finetune_gain"]
    assert answer.headline == ("resnet18: fine-tuning +20.0 points test accuracy (beyond the uncertainty) at 4.5× the "
                               "training time.")
    assert "training time 45.0 s vs 10.0 s (4.5×)" in answer.details[0]
    assert "backbone_size" not in _answers(results)  # one backbone: no size question


def test_a_val_test_gap_beyond_the_intervals_points_to_the_audit(make_study):
    shifted = make_study({("resnet18", "frozen"): (0.98, 0.70, 1.0), ("resnet34", "frozen"): (0.97, 0.72, 1.0)})
    answer = _answers(shifted)["val_test_gap"]
    assert answer.headline.startswith("Test accuracy is below val in 2 of 2 runs")
    assert "do not overlap in 2 of 2" in answer.headline and "split audit" in answer.details[0]


def test_agreeing_val_and_test_raise_no_alarm(make_study):
    results = make_study({("resnet18", "frozen"): (0.85, 0.85, 1.0)})
    answer = _answers(results)["val_test_gap"]
    assert "do not overlap in 0 of 1" in answer.headline and "nothing here suggests" in answer.details[0]


def test_regimes_are_named_in_english_and_adabn_is_not_called_fine_tuning(make_study):
    results = make_study({("resnet18", "frozen"): (0.95, 0.60, 1.0), ("resnet34", "frozen"): (0.95, 0.60, 2.0),
                          ("resnet18", "finetune"): (0.95, 0.60, 1.0), ("resnet34", "finetune"): (0.95, 0.95, 2.0),
                          ("resnet18", "adabn"): (0.95, 0.62, 1.0)})
    answers = _answers(results)
    assert "the bigger backbone is better beyond the CI when fine-tuned, not when frozen." in \
        answers["backbone_size"].headline
    gain = answers["finetune_gain"]
    assert "AdaBN (re-estimated BatchNorm statistics)" in gain.question
    assert "resnet18: AdaBN (BatchNorm statistics re-estimated on train, weights frozen) +1.7 points" in gain.headline
    assert "finetune" not in gain.headline
