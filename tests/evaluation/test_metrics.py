import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from xferlab.evaluation.metrics import classification_metrics, mann_whitney_auc


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


def test_mann_whitney_auc_equals_scikit_learn_row_by_row_and_column_by_column():
    """The one AUROC of many score sets (the bootstrap's rows; the audit's permuted label columns), ties included."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((5, 60)), 1)  # many ties
    one_mask = rng.random(60) < 0.4
    per_row = rng.random((5, 60)) < 0.5
    for positive in (one_mask, per_row):
        aucs = mann_whitney_auc(scores, positive)
        rows = np.broadcast_to(positive, scores.shape)
        assert aucs == pytest.approx([roc_auc_score(rows[i], scores[i]) for i in range(5)], abs=1e-12)
    np.testing.assert_array_equal(mann_whitney_auc(scores.T, per_row.T, axis=0), mann_whitney_auc(scores, per_row))


@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn, on purpose here
def test_auroc_is_none_when_only_one_class_is_present():
    m = classification_metrics(np.zeros(4, int), np.tile([0.7, 0.3], (4, 1)))
    assert m["auroc"] is None and m["accuracy"] == 1.0


def _probs(rng, y, k, ties=False):
    probs = rng.dirichlet(np.ones(k), len(y))
    probs[np.arange(len(y)), y] += 0.4
    if ties:  # coarse scores: many tied values, which AUROC must count as one half
        probs = np.round(probs, 1) + 1e-3
    return probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3])
def test_point_metrics_match_scikit_learn(k):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, recall_score

    from xferlab.evaluation.metrics import METRICS, point_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, k, 150)
    probs = _probs(rng, y, k, ties=True)
    pred = probs.argmax(1)
    m = point_metrics(y, probs)
    assert tuple(m) == METRICS
    avg = {"average": "binary", "pos_label": 1} if k == 2 else {"average": "macro"}
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred, **avg))
    assert m["f1"] == pytest.approx(f1_score(y, pred, **avg))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, **avg))
    auroc = roc_auc_score(y, probs[:, 1]) if k == 2 else roc_auc_score(y, probs, multi_class="ovr")
    assert m["auroc"] == pytest.approx(auroc)
    # the run folder's metrics stay exactly the five keys they always had
    assert classification_metrics(y, probs) == {key: m[key] for key in METRICS[:5]}


def test_precision_and_f1_are_zero_when_nothing_is_predicted_positive():
    from xferlab.evaluation.metrics import point_metrics

    y = np.array([0, 0, 1, 1])
    m = point_metrics(y, np.tile([0.9, 0.1], (4, 1)))
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["sensitivity"] == 0.0 and m["specificity"] == 1.0


def test_confusion_and_roc_curves_match_scikit_learn():
    from sklearn.metrics import roc_curve

    from xferlab.evaluation.metrics import confusion, roc_curves

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    probs = _probs(rng, y, 3)
    assert confusion(y, probs) == confusion_matrix(y, probs.argmax(1)).tolist()
    curves = roc_curves(y, probs)
    assert sorted(curves) == [0, 1, 2]
    fpr, tpr, _ = roc_curve(y == 2, probs[:, 2])
    np.testing.assert_allclose(curves[2][0], fpr)
    np.testing.assert_allclose(curves[2][1], tpr)
    assert curves[2][2] == pytest.approx(roc_auc_score(y == 2, probs[:, 2]))
    binary = roc_curves(np.array([0, 1, 1, 0]), np.array([[.8, .2], [.3, .7], [.4, .6], [.6, .4]]))
    assert list(binary) == [1] and binary[1][2] == 1.0
    assert roc_curves(np.zeros(3, int), np.tile([.5, .5], (3, 1))) == {}  # one class: no curve


def test_expected_calibration_error_matches_the_definition_by_hand():
    """Guo et al. 2017: bins ((m-1)/15, m/15] of top-label confidence, sum of |B|/n * |acc(B) - conf(B)|."""
    from xferlab.evaluation.metrics import METRICS_BY_NAME

    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.9, 0.95, 0.6, 0.55, 0.2])  # confidences .9 .95 .6 .55 .8; right: no yes yes no no
    probs = np.c_[1 - p1, p1]
    # bins: .9 -> 14th (13/15, 14/15]; .95 -> 15th; .6 -> 9th; .55 -> 9th; .8 -> 12th
    by_hand = (abs(0 - 0.9) + abs(1 - 0.95) + abs((1 + 0) - (0.6 + 0.55)) + abs(0 - 0.8)) / 5
    ece = METRICS_BY_NAME["ece"]
    assert ece.point(y, probs) == pytest.approx(by_hand)
    assert not ece.higher_is_better and ece.uses_probabilities
    perfect = np.eye(2)[y]
    assert ece.point(y, perfect) == 0.0


def test_brier_score_is_scikit_learns_and_the_bootstrap_agrees_with_the_point_values():
    from sklearn.metrics import brier_score_loss

    from xferlab.evaluation.metrics import METRICS, batched_metrics, point_metrics

    rng = np.random.default_rng(1)
    for k in (2, 3):
        y = rng.integers(0, k, 60)
        probs = rng.dirichlet(np.ones(k), 60)
        m = point_metrics(y, probs)
        expected = (np.mean((probs[:, 1] - y) ** 2) if k == 2 else
                    np.mean(((probs - np.eye(k)[y]) ** 2).sum(1)))  # binary: the positive class's squared error
        assert m["brier"] == pytest.approx(expected) == pytest.approx(brier_score_loss(y, probs, labels=range(k)))
        batched = batched_metrics(y, probs[None])[:, 0]
        for name, value in zip(METRICS, batched):
            assert value == pytest.approx(m[name]), (k, name)

