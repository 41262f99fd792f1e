import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from xferlab.evaluation.metrics import classification_metrics


def test_binary_metrics_match_hand_counts():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p1 = np.array([.1, .2, .6, .3, .9, .8, .4, .7, .65, .55])
    m = classification_metrics(y, np.c_[1 - p1, p1])
    # predictions: 0 0 1 0 | 1 1 0 1 1 1  -> TN=3 FP=1 FN=1 TP=5
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))


def test_multiclass_metrics_are_macro_averages():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    probs[np.arange(200), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs)
    cm = confusion_matrix(y, probs.argmax(1))
    spec = [(cm.sum() - cm[:, k].sum() - cm[k].sum() + cm[k, k]) / (cm.sum() - cm[k].sum()) for k in range(3)]
    assert m["specificity"] == pytest.approx(np.mean(spec))
    assert m["sensitivity"] == pytest.approx(m["balanced_accuracy"])
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))


def test_auroc_is_none_when_only_one_class_is_present():
    m = classification_metrics(np.zeros(4, int), np.tile([0.7, 0.3], (4, 1)))
    assert m["auroc"] is None and m["accuracy"] == 1.0
