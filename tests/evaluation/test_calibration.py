"""Calibration: ECE against a hand computation, Brier against scikit-learn, temperature scaling recovering a known
temperature, and the reliability bins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import brier_score_loss

from xferlab.evaluation.calibration import (
    brier_score,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability,
    scale,
)
from xferlab.evaluation.metrics import point_metrics


def test_ece_by_hand():
    # confidences 0.9 (bin 14), 0.9, 0.6 (bin 9), 0.6; first two: one right; last two: both right
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    labels = np.array([1, 1, 1, 0])
    # bin of 0.9: accuracy 0.5, confidence 0.9 -> 0.4 × 2/4; bin of 0.6: accuracy 1.0 vs 0.6 -> 0.4 × 2/4
    assert expected_calibration_error(labels, probs) == pytest.approx(0.4)
    r = reliability(labels, probs)
    assert sum(r.counts) == 4 and r.counts[13] == 2 and r.counts[8] == 2
    assert r.accuracy[13] == pytest.approx(0.5) and r.confidence[8] == pytest.approx(0.6)
    assert r.confidence[0] is None  # empty bins say so


def test_brier_matches_sklearn_binary():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(size=200)
    labels = (rng.uniform(size=200) < p1).astype(int)
    probs = np.c_[1 - p1, p1]
    # one Brier in xferlab: the metric table's, scikit-learn's (binary: the positive class's squared error)
    assert brier_score(labels, probs) == pytest.approx(brier_score_loss(labels, p1))
    assert calibrate({"val": (labels, probs)})["val"].brier == pytest.approx(point_metrics(labels, probs)["brier"])


def test_calibration_uses_the_metric_tables_ece_and_brier():
    from xferlab.evaluation import calibration, metrics

    assert calibration.expected_calibration_error is metrics.expected_calibration_error
    assert calibration.brier_score is metrics.brier_score


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=1.5, size=(4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits, 1)])  # calibrated at T = 1 by construction
    overconfident = softmax(3.0 * logits, 1)
    t = fit_temperature(labels, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(labels, overconfident)
    after = expected_calibration_error(labels, scale(overconfident, t))
    assert after < before / 3
    assert (scale(overconfident, t).argmax(1) == overconfident.argmax(1)).all()  # accuracy unchanged


def test_calibrate_fits_on_val_and_applies_to_test():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=2, size=(600, 2))
    labels = np.array([rng.choice(2, p=p) for p in softmax(logits, 1)])
    probs = softmax(2.5 * logits, 1)
    out = calibrate({"val": (labels[:300], probs[:300]), "test": (labels[300:], probs[300:])})
    assert out["val"].temperature == out["test"].temperature > 1.5
    assert out["test"].ece_scaled < out["test"].ece and out["test"].bins == 15
    assert out["test"].as_dict()["reliability"]["counts"] == out["test"].reliability.counts
