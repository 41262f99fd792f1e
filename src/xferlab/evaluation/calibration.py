"""Are the predicted probabilities calibrated? Expected calibration error, Brier score, reliability-diagram data and
temperature scaling fitted on val.

ECE and the Brier score are the metric table's (xferlab.evaluation.metrics, the one implementation of each): ECE as in
Guo et al. 2017 ("On Calibration of Modern Neural Networks", eq. 3), the top-label confidence (the largest class
probability) in 15 equal-width bins over [0, 1], ECE = sum over bins of (bin share) × |accuracy − mean confidence|;
Brier as scikit-learn's brier_score_loss (0 is perfect; on binary data the positive class's squared error, 0.25 for
a constant 50/50 guess). Temperature scaling (Guo et al. 2017, sec. 4.2) divides the logits by one scalar T fitted
on val by minimising the negative log-likelihood; it never changes the argmax, so accuracy is unchanged and only
calibration moves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from xferlab.evaluation.metrics import ECE_BINS, brier_score, expected_calibration_error

__all__ = ["ECE_BINS", "Calibration", "Reliability", "brier_score", "calibrate", "expected_calibration_error",
           "fit_temperature", "reliability", "scale"]

# Search range of log T: T from e^-5 to e^5 (0.007 to 148) spans every temperature met in practice; a bound keeps a
# perfectly separable val split (NLL falling forever as T -> 0) from running off to infinity.
LOG_T_BOUNDS = (-5.0, 5.0)
_EPS = 1e-12  # probabilities are clipped here before the log: a saved 0 would give log(0)


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data: per bin (equal width on [0, 1]) the number of cases, their mean top-label
    confidence and accuracy (None for an empty bin)."""

    edges: list[float]
    counts: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]


@dataclass(frozen=True)
class Calibration:
    """One split's calibration: ECE and Brier before and after temperature scaling (T fitted on val)."""

    ece: float
    brier: float
    temperature: float
    ece_scaled: float
    brier_scaled: float
    reliability: Reliability
    bins: int = ECE_BINS
    temperature_at_bound: bool = False  # the fit ran to LOG_T_BOUNDS: val too small or separable to fit T

    def as_dict(self) -> dict:
        return asdict(self)


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Top-label confidence and accuracy per equal-width bin (a confidence of exactly 1 falls in the last bin)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    mean = lambda s, c: float(s / c) if c else None  # noqa: E731
    return Reliability(edges.tolist(), counts.tolist(), [mean(s, c) for s, c in zip(conf_sum, counts, strict=True)],
                       [mean(s, c) for s, c in zip(acc_sum, counts, strict=True)])


def _log_probs(probs: np.ndarray) -> np.ndarray:
    """Saved softmax outputs back to logits up to a constant per case (all temperature scaling needs)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities with their logits divided by `temperature`."""
    return softmax(_log_probs(probs) / temperature, axis=1)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T) on these cases (val)."""
    logits, labels = _log_probs(probs), np.asarray(labels)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean())

    best = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded")
    return float(np.exp(best.x))


def calibrate(predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Calibration]:
    """Calibration of every split in `predictions` (split -> (labels, probs)), with the temperature fitted on val
    (T = 1, i.e. unscaled, when there is no val split). ECE uses ECE_BINS bins, as the reliability data."""
    t = fit_temperature(*predictions["val"]) if "val" in predictions else 1.0
    at_bound = bool(np.isclose(abs(np.log(t)), LOG_T_BOUNDS[1], atol=1e-3))
    out = {}
    for split, (labels, probs) in predictions.items():
        scaled = scale(probs, t)
        out[split] = Calibration(expected_calibration_error(labels, probs), brier_score(labels, probs), t,
                                 expected_calibration_error(labels, scaled), brier_score(labels, scaled),
                                 reliability(labels, probs), ECE_BINS, at_bound)
    return out
