"""Classification metrics from scikit-learn: accuracy, balanced accuracy, AUROC, sensitivity, specificity.

Binary data treats class 1 as positive (with the npy layout's sorted names, 'pneumonia'); multi-class data gets
macro averages and a one-vs-rest AUROC.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, recall_score, roc_auc_score


def specificity_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class specificity TN / (TN + FP); scikit-learn has no direct function for it."""
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    fp = cm.sum(0) - np.diag(cm)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
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
