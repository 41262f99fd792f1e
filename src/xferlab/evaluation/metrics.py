"""Classification metrics: accuracy, balanced accuracy, AUROC, sensitivity, specificity, precision, F1, the Brier
score (scikit-learn), the expected calibration error (15 equal-width bins, Guo et al. 2017), the confusion matrix
and ROC curves.

Binary data treats class 1 as positive (with the npy layout's sorted names, 'pneumonia'); multi-class data gets
macro averages and a one-vs-rest AUROC. METRIC_TABLE defines each metric once (name, report label, point and
batched function, whether it needs probabilities, direction, format); `classification_metrics` (what a run's
metrics.json holds: the in_run entries), `point_metrics` and `batched_metrics` (bootstrap CIs), the results and
the report all iterate it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    auc,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


@dataclass(frozen=True)
class Metric:
    """One metric, defined once: every table, CI, summary and report column iterates METRIC_TABLE.

    `point(labels, probs)` is the value of one prediction set (scikit-learn where it has the metric; None where
    undefined); `batched(Batch)` the same for thousands of bootstrap resamples at once (one value per resample).
    `uses_probabilities`: False when only the argmax predictions matter. `in_run`: also in a run's metrics.json.
    """

    name: str
    label: str
    point: Callable[[np.ndarray, np.ndarray], float | None]
    batched: Callable[[Batch], np.ndarray]
    uses_probabilities: bool = False
    higher_is_better: bool = True
    digits: int = 3
    in_run: bool = False

    def format(self, value: float | None) -> str:
        return "n/a" if value is None else f"{value:.{self.digits}f}"


class Batch:
    """Labels (N,) and many prediction sets (..., N, K) on the same cases, with the counts the batched metrics
    share, each computed once on first use. Every class must be present in `labels`.

    `weights` (..., N), broadcast against the prediction sets, weighs each case (scikit-learn's sample_weight): a
    cluster bootstrap passes each resample's patient multiplicities here instead of copying cases, so one (N, K)
    prediction set serves every resample. Without weights every count is the plain count (bit for bit as before)."""

    def __init__(self, labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None):
        self.labels, self.probs = np.asarray(labels), probs
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.n_cases, self.k = probs.shape[-2:]
        self.classes = np.arange(self.k)
        self.shape = probs.shape[:-2] if weights is None else np.broadcast_shapes(probs.shape[:-2],
                                                                                  self.weights.shape[:-1])

    def total(self, per_case: np.ndarray) -> np.ndarray:
        """Sum over the cases axis of (..., N, K) values, each case weighted: (..., K)."""
        if self.weights is None:
            return per_case.sum(-2)
        return (per_case * self.weights[..., None]).sum(-2)

    def mean(self, per_case: np.ndarray) -> np.ndarray:
        """Weighted mean over the last axis of (..., N) values."""
        if self.weights is None:
            return per_case.mean(-1)
        return (per_case * self.weights).sum(-1) / self.weights.sum(-1)

    @cached_property
    def n(self) -> int | np.ndarray:
        """The number of cases, or their total weight (...,)."""
        return self.n_cases if self.weights is None else self.weights.sum(-1)

    @cached_property
    def n_k(self) -> int | np.ndarray:
        """n, broadcastable against per-class counts (..., K)."""
        return self.n if self.weights is None else self.n[..., None]

    @cached_property
    def is_true(self) -> np.ndarray:  # (N, K)
        return self.labels[:, None] == self.classes

    @cached_property
    def is_pred(self) -> np.ndarray:  # (..., N, K)
        return self.probs.argmax(-1)[..., None] == self.classes

    @cached_property
    def tp(self) -> np.ndarray:
        return self.total(self.is_pred & self.is_true)

    @cached_property
    def n_pred(self) -> np.ndarray:
        return self.total(self.is_pred)

    @cached_property
    def n_true(self) -> np.ndarray:
        return self.is_true.sum(0) if self.weights is None else self.total(self.is_true)

    @cached_property
    def recall(self) -> np.ndarray:
        return self.tp / self.n_true

    def per_class(self, values: np.ndarray) -> np.ndarray:
        """Class 1 for binary data, the macro average otherwise (as the point metrics)."""
        return values[..., 1] if self.k == 2 else values.mean(-1)


def _nan_to_none(value) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _positive_or_macro(score, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """A scikit-learn score of class 1 for binary data, macro-averaged over all K classes otherwise."""
    if k == 2:
        return score(y_true, y_pred, pos_label=1, zero_division=0)
    return score(y_true, y_pred, average="macro", labels=np.arange(k), zero_division=0)


def _auroc_point(y: np.ndarray, probs: np.ndarray) -> float | None:
    k = probs.shape[1]
    if len(np.unique(y)) < (2 if k == 2 else k):  # undefined with a class absent
        return None
    if k == 2:
        return roc_auc_score(y, probs[:, 1])
    return roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=np.arange(k))


def _specificity_point(y: np.ndarray, probs: np.ndarray) -> float:
    k = probs.shape[1]
    spec = specificity_scores(y, probs.argmax(1), k)
    return spec[1] if k == 2 else np.nanmean(spec)


def _auroc_batched(b: Batch) -> np.ndarray:
    auroc = _auroc if b.weights is None else lambda positive, scores: _weighted_auroc(positive, scores, b.weights)
    return np.stack([auroc(b.labels == c, b.probs[..., c]) for c in ([1] if b.k == 2 else b.classes)], -1).mean(-1)


def _auroc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return mann_whitney_auc(scores, positive)


def mann_whitney_auc(scores: np.ndarray, positive: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUROC along `axis` by the Mann-Whitney U statistic, U / (n_pos · n_neg), from mid-ranks (ties count one half,
    as roc_auc_score's trapezoids do). `positive`: a boolean mask broadcastable to `scores` (one for all rows, or one
    per row: the audit's permuted labels). scikit-learn scores one set at a time; this scores thousands at once
    (bootstrap resamples, permutations), and its sums of half-integer ranks are exact."""
    ranks = rankdata(scores, axis=axis)
    positive = np.broadcast_to(positive, ranks.shape)
    n_pos = positive.sum(axis=axis)
    n_neg = positive.shape[axis] - n_pos
    return (np.where(positive, ranks, 0.0).sum(axis=axis) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _weighted_auroc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC along the last axis: the weighted share of (positive, negative) pairs ranked in
    order, ties counting one half; equal to roc_auc_score(..., sample_weight=weights) (a trapezoid on the weighted
    ROC curve). With integer weights it is the AUROC of the cases repeated that many times, to the last bit.

    Through weighted mid-ranks R_i = (weight below s_i) + (weight tied with s_i) / 2: the sum over positives of w_i R_i
    counts every positive-negative pair once and every positive-positive pair (i, j) as w_i w_j / 2 in all, so
    U = sum_pos w_i R_i - W_pos^2 / 2. Scores are sorted once per prediction set, so a fixed (N,) set with many
    weight rows is sorted once."""
    order = np.argsort(scores, axis=-1, kind="stable")
    ranked = np.take_along_axis(scores, order, -1)
    shape = np.broadcast_shapes(scores.shape, weights.shape)
    w = np.take_along_axis(np.broadcast_to(weights, shape), np.broadcast_to(order, shape), -1)
    pos = np.broadcast_to(positive[order], shape)
    n = ranked.shape[-1]
    index = np.arange(n)
    starts = np.ones(ranked.shape, dtype=bool)
    starts[..., 1:] = ranked[..., 1:] != ranked[..., :-1]  # a new score value begins here
    ends = np.ones(ranked.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.broadcast_to(np.maximum.accumulate(np.where(starts, index, 0), axis=-1), shape)
    last = np.broadcast_to(np.flip(np.minimum.accumulate(np.flip(np.where(ends, index, n - 1), -1), axis=-1), -1),
                           shape)
    through = np.cumsum(w, -1)
    below = np.take_along_axis(through - w, first, -1)  # weight strictly below each case's score
    tied = np.take_along_axis(through, last, -1) - below
    w_pos = np.where(pos, w, 0.0)
    total_pos = w_pos.sum(-1)
    total_neg = w.sum(-1) - total_pos
    u = (w_pos * (below + 0.5 * tied)).sum(-1) - 0.5 * total_pos**2
    return u / (total_pos * total_neg)


def _specificity_batched(b: Batch) -> np.ndarray:
    return b.per_class((b.n_k - b.n_true - b.n_pred + b.tp) / (b.n_k - b.n_true))


def _precision_batched(b: Batch) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return b.per_class(np.where(b.n_pred > 0, b.tp / b.n_pred, 0.0))  # zero_division=0, as scikit-learn


def _f1_batched(b: Batch) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return b.per_class(np.where(b.n_pred + b.n_true > 0, 2 * b.tp / (b.n_pred + b.n_true), 0.0))


ECE_BINS = 15  # equal-width bins on top-label confidence, as Guo et al. 2017 (On Calibration of Modern Neural Networks)


def _ece(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Expected calibration error along the last two axes (..., N, K): the case-weighted mean over ECE_BINS bins
    ((m-1)/M, m/M] of |accuracy - mean confidence|, confidence being the top class's probability. `weights`
    (..., N) weigh the cases (Batch)."""
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    bins = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    if weights is None:
        gaps = sum(np.abs(np.where(bins == m, correct - confidence, 0.0).sum(-1)) for m in range(ECE_BINS))
        return gaps / probs.shape[-2]
    weighted = (correct - confidence) * weights
    gaps = sum(np.abs(np.where(bins == m, weighted, 0.0).sum(-1)) for m in range(ECE_BINS))
    return gaps / weights.sum(-1)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray) -> float:
    """ECE of one prediction set (N, K): Guo et al. 2017's, ECE_BINS equal-width bins of the top-label confidence.
    The one ECE of xferlab: the table's entry and xferlab.evaluation.calibration use it."""
    return float(_ece(np.asarray(labels), np.asarray(probs)))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Brier score of one prediction set (N, K), scikit-learn's brier_score_loss: binary data scores the positive
    class alone (0.25 for a constant 50/50 guess), K > 2 classes sum every class's squared error. The one Brier of
    xferlab: the table's entry and xferlab.evaluation.calibration use it."""
    probs = np.asarray(probs)
    return float(brier_score_loss(labels, probs, labels=np.arange(probs.shape[1])))


def _brier_batched(b: Batch) -> np.ndarray:
    """Mean squared distance of the probabilities to the one-hot label; halved for binary data, as scikit-learn's
    brier_score_loss (the positive class's squared error)."""
    squared = b.mean(((b.probs - b.is_true) ** 2).sum(-1))
    return squared / 2 if b.k == 2 else squared


def _argmax(fn: Callable[[np.ndarray, np.ndarray, int], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda y, probs: fn(np.asarray(y), probs.argmax(1), probs.shape[1])


# Every metric, in report order. Adding one is one entry here (plus its test); the first five are what a run's
# metrics.json holds (in_run).
METRIC_TABLE: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", _argmax(lambda y, p, k: accuracy_score(y, p)),
           lambda b: b.tp.sum(-1) / b.n, in_run=True),
    Metric("balanced_accuracy", "balanced acc.", _argmax(lambda y, p, k: balanced_accuracy_score(y, p)),
           lambda b: b.recall.mean(-1), in_run=True),
    Metric("auroc", "AUROC", _auroc_point, _auroc_batched, uses_probabilities=True, in_run=True),
    Metric("sensitivity", "sensitivity", _argmax(lambda y, p, k: _positive_or_macro(recall_score, y, p, k)),
           lambda b: b.per_class(b.recall), in_run=True),
    Metric("specificity", "specificity", _specificity_point, _specificity_batched, in_run=True),
    Metric("precision", "precision", _argmax(lambda y, p, k: _positive_or_macro(precision_score, y, p, k)),
           _precision_batched),
    Metric("f1", "F1", _argmax(lambda y, p, k: _positive_or_macro(f1_score, y, p, k)), _f1_batched),
    Metric("ece", "ECE", expected_calibration_error, lambda b: _ece(b.labels, b.probs, b.weights),
           uses_probabilities=True, higher_is_better=False),
    Metric("brier", "Brier", brier_score, _brier_batched, uses_probabilities=True, higher_is_better=False),
)
METRICS_BY_NAME = {m.name: m for m in METRIC_TABLE}
METRICS = tuple(m.name for m in METRIC_TABLE)  # names, in report order
RUN_METRICS = tuple(m.name for m in METRIC_TABLE if m.in_run)


def specificity_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class specificity TN / (TN + FP), one-vs-rest, from scikit-learn's per-class confusion matrices (NaN for a
    class with no negatives)."""
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return tn / (tn + fp)


def _values(names: tuple[str, ...], y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    y_true = np.asarray(y_true)
    return {name: _nan_to_none(METRICS_BY_NAME[name].point(y_true, probs)) for name in names}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """The in_run metrics of predicted class probabilities (N×K): what a run's metrics.json holds. AUROC is None when
    a class is absent."""
    return _values(RUN_METRICS, y_true, probs)


def point_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Every metric of METRIC_TABLE for one prediction set."""
    return _values(METRICS, y_true, probs)


def batched_metrics(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Every metric of many prediction sets on the same cases: labels (N,), probs (..., N, K), optional case
    weights (..., N) (Batch) -> array (len(METRICS), ...). Every class must be present in `labels` (with weight)."""
    batch = Batch(labels, probs, weights)
    return np.stack([np.broadcast_to(m.batched(batch), batch.shape) for m in METRIC_TABLE])


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
