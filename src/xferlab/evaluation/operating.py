"""Operating points of a binary classifier: thresholds on the positive-class probability chosen on val (Youden's J,
and the highest threshold reaching a target sensitivity), then applied unchanged to test, where sensitivity and
specificity get stratified bootstrap CIs. Test never chooses the threshold.

Multi-class data has no single threshold: `operating_points` returns None for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_curve

from xferlab.evaluation.bootstrap import can_bootstrap, stratified_bootstrap

DEFAULT_TARGET_SENSITIVITY = 0.95  # the screening question clinical readers ask: specificity at 95 % sensitivity


@dataclass(frozen=True)
class SplitRates:
    """Sensitivity and specificity of one split at a fixed threshold, with CIs (None when a class is too small)."""

    sensitivity: float
    sensitivity_low: float | None
    sensitivity_high: float | None
    specificity: float
    specificity_low: float | None
    specificity_high: float | None


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen on val by `rule` ('youden' or 'sensitivity@0.95'), and the rates it gives per split."""

    rule: str
    threshold: float
    val: SplitRates
    test: SplitRates | None

    def as_dict(self) -> dict:
        return asdict(self)


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity − 1 on these cases (ties: the higher one)."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    j = tpr - fpr
    return float(min(thresholds[np.flatnonzero(j == j.max())[0]], 1.0))  # roc_curve's first threshold is +inf


def sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on these cases reaches `target` (so the best specificity that does)."""
    _, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    return float(min(thresholds[np.flatnonzero(tpr >= target)[0]], 1.0))


def _rates(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Batched (sensitivity, specificity) of 0/1 calls (..., N, 1) against labels (N,); `weights` (..., N) weigh
    the cases (a cluster bootstrap's patient multiplicities)."""
    called = scores[..., 0] > 0.5
    pos = labels == 1
    if weights is None:
        return np.stack([called[..., pos].mean(-1), (~called[..., ~pos]).mean(-1)])
    w_pos, w_neg = weights[..., pos], weights[..., ~pos]
    return np.stack([(called[..., pos] * w_pos).sum(-1) / w_pos.sum(-1),
                     (~called[..., ~pos] * w_neg).sum(-1) / w_neg.sum(-1)])


def split_rates(labels: np.ndarray, scores: np.ndarray, threshold: float, resamples: int, confidence: float,
                seed: int, groups: np.ndarray | None = None) -> SplitRates:
    """Sensitivity and specificity at `threshold`, each with a stratified percentile bootstrap CI (of patients, with
    `groups`)."""
    labels = np.asarray(labels)
    called = (np.asarray(scores) >= threshold).astype(np.float64)[:, None]
    sens, spec = _rates(labels, called)
    low = high = (None, None)
    if can_bootstrap(labels, 2, groups):
        lo, hi = stratified_bootstrap(labels, called, _rates, groups=groups, resamples=resamples,
                                      confidence=confidence, seed=seed)
        low, high = tuple(map(float, lo)), tuple(map(float, hi))
    return SplitRates(float(sens), low[0], high[0], float(spec), low[1], high[1])


def operating_points(predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                     target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY, resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0,
                     groups: dict[str, np.ndarray] | None = None) -> list[OperatingPoint] | None:
    """Youden and target-sensitivity thresholds chosen on val, with val and test rates; None for multi-class data,
    without a val split, or when val lacks a class (no ROC curve to choose on). `groups`: patient ids per split,
    for CIs that resample patients."""
    if "val" not in predictions or predictions["val"][1].shape[1] != 2:
        return None
    y_val, p_val = predictions["val"]
    if len(np.unique(y_val)) < 2:
        return None
    scores_val = p_val[:, 1]
    rules = {"youden": youden_threshold(y_val, scores_val),
             f"sensitivity@{target_sensitivity:g}": sensitivity_threshold(y_val, scores_val, target_sensitivity)}
    settings = {"resamples": resamples, "confidence": confidence, "seed": seed}
    groups = groups or {}
    points = []
    for rule, t in rules.items():
        val = split_rates(y_val, scores_val, t, groups=groups.get("val"), **settings)
        test = None
        if "test" in predictions and len(np.unique(predictions["test"][0])) == 2:
            y_test, p_test = predictions["test"]
            test = split_rates(y_test, p_test[:, 1], t, groups=groups.get("test"), **settings)
        points.append(OperatingPoint(rule, t, val, test))
    return points
