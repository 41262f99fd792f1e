"""Seeded bootstrap confidence intervals for every metric, and for the difference between two models on the same cases.

The bootstrap is scipy.stats.bootstrap's percentile method, stratified by class: each class's cases are resampled
with replacement on their own, so every resample keeps the split's class counts. That is the design of a test set
drawn to fixed class sizes (the npy layout, the phantoms), and it keeps every metric defined in every resample
(sensitivity needs positives, AUROC needs both classes). The percentile method rather than BCa because BCa is
undefined (NaN with a warning) when a metric does not vary across resamples, as accuracy 1.0 on a small val split does.

With patient groups the unit is the patient, not the image (a cluster bootstrap): patients are resampled with
replacement, each class's patients on their own (a patient's class is its majority label), so every resample keeps
each class's patient count, and a patient drawn twice counts all its images twice. Images of one patient are not
independent, and resampling them as if they were gives intervals that are too narrow (docs/patients.md measures
how much). It is the same scipy bootstrap over patient indices; each resample becomes per-image weights (the
patient's multiplicity) pushed through the weighted batched metrics, so no case is copied. When every patient has
one image, it draws the same indices as the image bootstrap with the same seed and gives the same intervals.

Metrics are recomputed for thousands of resamples at once by xferlab.evaluation.metrics.batched_metrics (each
METRIC_TABLE entry's batched function, NumPy transcriptions of the point metrics): scikit-learn scores one sample
per call, which costs seconds per run at 2000 resamples × 9 metrics. tests/evaluation/test_bootstrap.py checks it
against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import bootstrap

from xferlab.data.groups import patients_of
from xferlab.evaluation.metrics import METRICS, batched_metrics  # noqa: F401  (batched_metrics re-exported)

DEFAULT_RESAMPLES = 2000  # Efron & Tibshirani (1993, ch. 19): ~1000+ resamples for percentile interval endpoints
MIN_CASES_PER_CLASS = 2  # a class with fewer cases (patients, with groups) has no resampling variability to speak of
_BATCH_ELEMENTS = 4_000_000  # resamples × cases × columns held in memory at once (~32 MB of float64)

# statistic(labels (N,), values (..., N, C), weights (..., N) or None) -> statistics (S, ...) or (...,)
Statistic = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


def describe(groups: np.ndarray | None) -> str:
    """The bootstrap the intervals of these cases use, in words (what the report and results.json state)."""
    if groups is None:
        return "percentile bootstrap of images, stratified by class"
    return "percentile cluster bootstrap of patients, stratified by each patient's majority class"


def can_bootstrap(labels: np.ndarray, num_classes: int, groups: np.ndarray | None = None) -> bool:
    """Stratified resampling needs at least MIN_CASES_PER_CLASS cases of every class (patients, with groups)."""
    labels = np.asarray(labels)
    if groups is not None and len(labels):
        labels = patients_of(groups, labels).label
    counts = np.bincount(labels, minlength=num_classes)
    return bool(counts.min() >= MIN_CASES_PER_CLASS)


def stratified_bootstrap(labels: np.ndarray, values: np.ndarray, statistic: Statistic, *,
                         groups: np.ndarray | None = None, resamples: int = DEFAULT_RESAMPLES,
                         confidence: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI (low, high) of `statistic(labels, values, weights)`, resampling cases within each class, or,
    with `groups`, patients within each patient's majority class.

    `values` is N×C per-case data (class probabilities, or two models' side by side); `statistic` takes labels (N,),
    values (..., N, C) and case weights (..., N) (None for the image bootstrap, where resampled cases are copied) and
    returns one or more statistics with the batch shape (...,) last.
    """
    labels, values = np.asarray(labels), np.asarray(values, dtype=np.float64)
    classes = np.unique(labels)
    settings = {"n_resamples": resamples, "vectorized": True, "axis": 0, "confidence_level": confidence,
                "method": "percentile", "rng": np.random.default_rng(seed),
                # the same batches in both designs: the random draws then match case for case (module docstring)
                "batch": max(1, _BATCH_ELEMENTS // values.size)}
    if groups is None:
        samples = tuple(values[labels == c] for c in classes)
        sorted_labels = np.repeat(classes, [len(s) for s in samples])

        def stat(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
            # scipy hands each class's sample as (C, batch..., n_c): columns first, cases last
            stacked = np.concatenate([np.moveaxis(s, 0, -1) for s in resampled], axis=-2)
            return statistic(sorted_labels, stacked, None)
    else:
        patients = patients_of(groups, labels)
        samples = tuple(np.flatnonzero(patients.label == c) for c in classes)  # patient numbers per class
        count = len(patients)

        def stat(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
            drawn = np.concatenate(resampled, axis=-1)  # (batch, patients): the patient numbers drawn
            rows = np.arange(len(drawn))[:, None] * count
            multiplicity = np.bincount((rows + drawn).ravel(), minlength=len(drawn) * count).reshape(-1, count)
            return statistic(labels, values, multiplicity[:, patients.index].astype(np.float64))

    result = bootstrap(samples, stat, **settings)
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def metric_intervals(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None = None,
                     **settings) -> dict[str, tuple[float, float]] | None:
    """{metric: (low, high)} for every one of METRICS; None when a class has too few cases (patients) to resample."""
    if not can_bootstrap(labels, probs.shape[1], groups):
        return None
    low, high = stratified_bootstrap(labels, probs, batched_metrics, groups=groups, **settings)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(METRICS, low, high)}


def paired_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, groups: np.ndarray | None = None,
                      **settings) -> dict[str, dict[str, float]] | None:
    """Model A minus model B on the same cases, for every metric: {metric: {value, low, high}}.

    Both models are scored on the same resampled cases (the same resampled patients, with `groups`), so the interval
    reflects the variation of their difference, which is narrower than what two overlapping single-model intervals
    suggest. None when a class is too small.
    """
    k = probs_a.shape[1]
    if probs_b.shape != probs_a.shape or not can_bootstrap(labels, k, groups):
        return None

    def difference(y: np.ndarray, v: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        return batched_metrics(y, v[..., :k], w) - batched_metrics(y, v[..., k:], w)

    both = np.concatenate([probs_a, probs_b], axis=1)
    value = difference(np.asarray(labels), both, None)
    low, high = stratified_bootstrap(labels, both, difference, groups=groups, **settings)
    return {name: {"value": float(v), "low": float(lo), "high": float(hi)}
            for name, v, lo, hi in zip(METRICS, value, low, high)}
