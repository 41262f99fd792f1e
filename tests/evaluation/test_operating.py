"""Operating points: thresholds chosen on val (checked against a brute-force search), applied unchanged to test,
with bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest

from xferlab.evaluation.operating import operating_points, sensitivity_threshold, youden_threshold


def _scores(rng, n, separation):
    labels = np.repeat([0, 1], n // 2)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (labels - 0.5))))
    return labels, scores


def _rates(labels, scores, t):
    called = scores >= t
    return called[labels == 1].mean(), (~called[labels == 0]).mean()


def test_youden_is_the_brute_force_maximum():
    labels, scores = _scores(np.random.default_rng(0), 200, 2.0)
    t = youden_threshold(labels, scores)
    best = max(sum(_rates(labels, scores, c)) - 1 for c in scores)
    assert sum(_rates(labels, scores, t)) - 1 == pytest.approx(best)


def test_sensitivity_threshold_is_the_highest_reaching_target():
    labels, scores = _scores(np.random.default_rng(1), 200, 2.0)
    t = sensitivity_threshold(labels, scores, 0.9)
    assert _rates(labels, scores, t)[0] >= 0.9
    higher = scores[scores > t].min()
    assert _rates(labels, scores, higher)[0] < 0.9


def test_thresholds_come_from_val_and_test_gets_cis():
    rng = np.random.default_rng(2)
    y_val, s_val = _scores(rng, 200, 2.5)
    y_test, s_test = _scores(rng, 200, 0.0)  # a test split where the model is at chance
    preds = {"val": (y_val, np.c_[1 - s_val, s_val]), "test": (y_test, np.c_[1 - s_test, s_test])}
    points = operating_points(preds, target_sensitivity=0.9, resamples=300)
    assert [p.rule for p in points] == ["youden", "sensitivity@0.9"]
    youden, target = points
    assert youden.threshold == pytest.approx(youden_threshold(y_val, s_val))
    assert target.val.sensitivity >= 0.9
    sens, spec = _rates(y_test, s_test, target.threshold)
    assert target.test.sensitivity == pytest.approx(sens) and target.test.specificity == pytest.approx(spec)
    assert target.test.sensitivity_low <= sens <= target.test.sensitivity_high
    # at chance on test, sensitivity + specificity stays near 1 whatever the val threshold
    assert abs(target.test.sensitivity + target.test.specificity - 1) < 0.2


def test_multiclass_has_no_operating_point():
    probs = np.full((6, 3), 1 / 3)
    assert operating_points({"val": (np.array([0, 1, 2, 0, 1, 2]), probs)}) is None
