"""Seeded bootstrap confidence intervals for every metric, and for the difference between two models on the same cases.

The bootstrap is scipy.stats.bootstrap's percentile method, stratified by class: each class's cases are resampled
with replacement on their own, so every resample keeps the split's class counts. That is the design of a test set
drawn to fixed class sizes (the npy layout, the phantoms), and it keeps every metric defined in every resample
(sensitivity needs positives, AUROC needs both classes). The percentile method rather than BCa because BCa is
undefined (NaN with a warning) when a metric does not vary across resamples, as accuracy 1.0 on a small val split does.

Metrics are recomputed for thousands of resamples at once by xferlab.evaluation.metrics.batched_metrics (each
METRIC_TABLE entry's batched function, NumPy transcriptions of the point metrics): scikit-learn scores one sample
per call, which costs seconds per run at 2000 resamples × 9 metrics. tests/evaluation/test_bootstrap.py checks it
against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import bootstrap

from xferlab.evaluation.metrics import METRICS, batched_metrics  # noqa: F401  (batched_metrics re-exported)

DEFAULT_RESAMPLES = 2000  # Efron & Tibshirani (1993, ch. 19): ~1000+ resamples for percentile interval endpoints
MIN_CASES_PER_CLASS = 2  # a class with fewer cases has no resampling variability to speak of
_BATCH_ELEMENTS = 4_000_000  # resamples × cases × columns held in memory at once (~32 MB of float64)


def can_bootstrap(labels: np.ndarray, num_classes: int) -> bool:
    """Stratified resampling needs at least MIN_CASES_PER_CLASS cases of every class."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return bool(counts.min() >= MIN_CASES_PER_CLASS)


def stratified_bootstrap(labels: np.ndarray, values: np.ndarray,
                         statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                         resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI (low, high) of `statistic(labels, values)`, resampling cases within each class.

    `values` is N×C per-case data (class probabilities, or two models' side by side); `statistic` takes labels (N,)
    and values (..., N, C) and returns one or more statistics with the batch shape (..., ) last.
    """
    labels, values = np.asarray(labels), np.asarray(values, dtype=np.float64)
    classes = np.unique(labels)
    samples = tuple(values[labels == c] for c in classes)
    sorted_labels = np.repeat(classes, [len(s) for s in samples])

    def stat(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        # scipy hands each class's sample as (C, batch..., n_c): columns first, cases last
        stacked = np.concatenate([np.moveaxis(s, 0, -1) for s in resampled], axis=-2)
        return statistic(sorted_labels, stacked)

    batch = max(1, _BATCH_ELEMENTS // values.size)
    result = bootstrap(samples, stat, n_resamples=resamples, batch=batch, vectorized=True, axis=0,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def metric_intervals(labels: np.ndarray, probs: np.ndarray, **settings) -> dict[str, tuple[float, float]] | None:
    """{metric: (low, high)} for every one of METRICS; None when a class has too few cases to resample."""
    if not can_bootstrap(labels, probs.shape[1]):
        return None
    low, high = stratified_bootstrap(labels, probs, batched_metrics, **settings)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(METRICS, low, high)}


def paired_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                      **settings) -> dict[str, dict[str, float]] | None:
    """Model A minus model B on the same cases, for every metric: {metric: {value, low, high}}.

    Both models are scored on the same resampled cases, so the interval reflects the variation of their difference,
    which is narrower than what two overlapping single-model intervals suggest. None when a class is too small.
    """
    k = probs_a.shape[1]
    if probs_b.shape != probs_a.shape or not can_bootstrap(labels, k):
        return None

    def difference(y: np.ndarray, v: np.ndarray) -> np.ndarray:
        return batched_metrics(y, v[..., :k]) - batched_metrics(y, v[..., k:])

    both = np.concatenate([probs_a, probs_b], axis=1)
    value = difference(np.asarray(labels), both)
    low, high = stratified_bootstrap(labels, both, difference, **settings)
    return {name: {"value": float(v), "low": float(lo), "high": float(hi)}
            for name, v, lo, hi in zip(METRICS, value, low, high)}
