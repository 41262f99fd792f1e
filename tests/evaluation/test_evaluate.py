import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from xferlab.evaluation.evaluate import BootstrapSettings, evaluate_split
from xferlab.evaluation.metrics import METRICS, point_metrics


def test_evaluate_split_reports_every_metric_with_its_interval_and_the_confusion_matrix():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    probs = rng.dirichlet([1, 1], 80)
    probs[np.arange(80), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    ev = evaluate_split(y, probs, BootstrapSettings(resamples=300, seed=5))
    assert ev["n"] == 80 and ev["class_counts"] == np.bincount(y).tolist()
    assert ev["confusion_matrix"] == confusion_matrix(y, probs.argmax(1)).tolist()
    point = point_metrics(y, probs)
    assert list(ev["metrics"]) == list(METRICS)
    for name, m in ev["metrics"].items():
        assert m["value"] == point[name] and m["low"] <= m["value"] <= m["high"]


@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn, on purpose here
def test_undefined_metrics_and_intervals_are_none():
    one_class = evaluate_split(np.zeros(5, int), np.tile([0.7, 0.3], (5, 1)), BootstrapSettings(resamples=100))
    assert one_class["metrics"]["auroc"] == {"value": None, "low": None, "high": None}
    assert one_class["metrics"]["accuracy"] == {"value": 1.0, "low": None, "high": None}
    assert one_class["confusion_matrix"] == [[5, 0], [0, 0]]
