"""Classification metrics from scikit-learn: accuracy, balanced accuracy, AUROC, sensitivity, specificity, precision,
F1, the confusion matrix and ROC curves.

Binary data treats class 1 as positive (with the npy layout's sorted names, 'pneumonia'); multi-class data gets
macro averages and a one-vs-rest AUROC. `classification_metrics` is what a run's metrics.json holds;
`point_metrics` adds precision and F1 for studies (xferlab.evaluation.evaluate).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    auc,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

# Every metric a study reports, in report order; the first five are classification_metrics' keys.
METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "precision", "f1")


def specificity_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class specificity TN / (TN + FP), one-vs-rest, from scikit-learn's per-class confusion matrices (NaN for a
    class with no negatives)."""
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return tn / (tn + fp)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Metrics of predicted class probabilities (N×K). AUROC is None when only one class is present."""
    y_true = np.asarray(y_true)
    k = probs.shape[1]
    y_pred = probs.argmax(1)
    present = np.unique(y_true)
    if k == 2:
        auroc = roc_auc_score(y_true, probs[:, 1]) if len(present) == 2 else None
        sens = recall_score(y_true, y_pred, pos_label=1, zero_division=0)
        spec = specificity_scores(y_true, y_pred, 2)[1]
    else:
        auroc = (roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=np.arange(k))
                 if len(present) == k else None)
        sens = recall_score(y_true, y_pred, average="macro", labels=np.arange(k), zero_division=0)
        spec = np.nanmean(specificity_scores(y_true, y_pred, k))
    out = {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "auroc": auroc,
        "sensitivity": sens,
        "specificity": spec,
    }
    return {name: (None if v is None or math.isnan(v) else float(v)) for name, v in out.items()}


def point_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """All of METRICS: classification_metrics plus precision and F1 (class 1 for binary data, macro otherwise)."""
    y_true = np.asarray(y_true)
    k = probs.shape[1]
    y_pred = probs.argmax(1)
    if k == 2:
        extra = {"precision": precision_score(y_true, y_pred, pos_label=1, zero_division=0),
                 "f1": f1_score(y_true, y_pred, pos_label=1, zero_division=0)}
    else:
        labels = np.arange(k)
        extra = {"precision": precision_score(y_true, y_pred, average="macro", labels=labels, zero_division=0),
                 "f1": f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)}
    out = {**classification_metrics(y_true, probs), **{name: float(v) for name, v in extra.items()}}
    return {name: out[name] for name in METRICS}


def confusion(y_true: np.ndarray, probs: np.ndarray) -> list[list[int]]:
    """Confusion matrix (rows: true class, columns: predicted class) over all K classes."""
    k = probs.shape[1]
    return confusion_matrix(y_true, probs.argmax(1), labels=np.arange(k)).tolist()


def roc_curves(y_true: np.ndarray, probs: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """ROC curves as {class: (fpr, tpr, auc)}: class 1 alone for binary data, every class one-vs-rest otherwise.

    A class that is absent (or the only one present) has no curve.
    """
    y_true = np.asarray(y_true)
    k = probs.shape[1]
    curves = {}
    for c in ([1] if k == 2 else range(k)):
        positive = y_true == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        curves[c] = (fpr, tpr, float(auc(fpr, tpr)))  # the area of the curve just computed: no second ranking
    return curves
