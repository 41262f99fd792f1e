"""Evaluate one split's saved predictions: every metric with its bootstrap confidence interval, and the confusion
matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xferlab.data.groups import patients_of
from xferlab.evaluation.bootstrap import DEFAULT_RESAMPLES, describe, metric_intervals
from xferlab.evaluation.metrics import METRICS, confusion, point_metrics


@dataclass(frozen=True)
class BootstrapSettings:
    """How every confidence interval of a study is drawn (StudyConfig's bootstrap_* and confidence)."""

    resamples: int = DEFAULT_RESAMPLES
    confidence: float = 0.95
    seed: int = 0

    @classmethod
    def of_study(cls, study) -> BootstrapSettings:
        """A study's settings: its bootstrap_resamples, confidence and bootstrap_seed (a StudyConfig)."""
        return cls(study.bootstrap_resamples, study.confidence, study.bootstrap_seed)

    def as_kwargs(self) -> dict:
        return {"resamples": self.resamples, "confidence": self.confidence, "seed": self.seed}


def evaluate_split(labels: np.ndarray, probs: np.ndarray, settings: BootstrapSettings = BootstrapSettings(),
                   groups: np.ndarray | None = None) -> dict:
    """{n, class_counts, patients, bootstrap, metrics: {name: {value, low, high}}, confusion_matrix} of one split's
    predictions. With `groups` (patient ids) the intervals resample patients (a cluster bootstrap), and `patients`
    counts them (None without groups); `bootstrap` says which bootstrap gave the intervals.

    low/high are None where the metric or its interval is undefined (AUROC with one class present; CIs when a class
    has fewer than two cases, or patients).
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    values = point_metrics(labels, probs)
    intervals = metric_intervals(labels, probs, groups, **settings.as_kwargs()) or {}
    metrics = {}
    for name in METRICS:
        low, high = intervals.get(name, (None, None)) if values[name] is not None else (None, None)
        metrics[name] = {"value": values[name], "low": low, "high": high}
    return {
        "n": int(len(labels)),
        "class_counts": np.bincount(labels, minlength=probs.shape[1]).tolist(),
        "patients": None if groups is None else len(patients_of(groups, labels)),
        "bootstrap": describe(groups),
        "metrics": metrics,
        "confusion_matrix": confusion(labels, probs),
    }
