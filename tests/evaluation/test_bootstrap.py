import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm

from xferlab.evaluation.bootstrap import batched_metrics, metric_intervals, paired_difference
from xferlab.evaluation.metrics import METRICS, point_metrics


def _probs(rng, y, k, ties=False):
    probs = rng.dirichlet(np.ones(k), len(y))
    probs[np.arange(len(y)), y] += 0.3
    if ties:
        probs = np.round(probs, 1) + 1e-3
    return probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("k", [2, 4])
def test_batched_metrics_equal_scikit_learn_for_every_prediction_set(k):
    """The vectorised transcription the bootstrap uses gives scikit-learn's numbers, ties and all."""
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 120)
    sets = np.stack([_probs(rng, y, k, ties=bool(i % 2)) for i in range(5)])  # (5, N, K)
    batched = batched_metrics(y, sets)
    assert batched.shape == (len(METRICS), 5)
    for i in range(5):
        expected = point_metrics(y, sets[i])
        assert batched[:, i] == pytest.approx([expected[m] for m in METRICS])


def _simulated_case(rng, n_per_class, separation):
    """Scores N(-s, 1) for class 0 and N(+s, 1) for class 1; P(class 1) = sigmoid(score): argmax threshold 0."""
    y = np.repeat([0, 1], n_per_class)
    score = rng.normal(np.where(y == 1, separation, -separation), 1.0)
    p1 = expit(score)
    return y, np.c_[1 - p1, p1]


def test_bootstrap_intervals_cover_the_true_value_about_95_percent_of_the_time():
    """Over many simulated test sets with known population accuracy and AUROC, the 95% CIs contain them ~95%."""
    separation, n_per_class, draws = 0.8, 40, 200
    true = {"accuracy": norm.cdf(separation), "sensitivity": norm.cdf(separation),
            "auroc": norm.cdf(2 * separation / np.sqrt(2))}
    rng = np.random.default_rng(12345)
    hits = {m: 0 for m in true}
    for draw in range(draws):
        y, probs = _simulated_case(rng, n_per_class, separation)
        ci = metric_intervals(y, probs, resamples=400, seed=draw)
        for m, value in true.items():
            hits[m] += ci[m][0] <= value <= ci[m][1]
    coverage = {m: h / draws for m, h in hits.items()}
    # Monte-Carlo sd of a 95% coverage estimate over 200 draws is 1.5 points; allow about 3 sd either side.
    for m, c in coverage.items():
        assert 0.905 <= c <= 0.99, (m, coverage)


def test_intervals_are_seeded_and_contain_the_estimate():
    rng = np.random.default_rng(0)
    y, probs = _simulated_case(rng, 40, 0.7)
    a = metric_intervals(y, probs, resamples=300, seed=1)
    assert a == metric_intervals(y, probs, resamples=300, seed=1)
    assert a != metric_intervals(y, probs, resamples=300, seed=2)
    point = point_metrics(y, probs)
    for m in METRICS:
        assert a[m][0] <= point[m] <= a[m][1]
    wide = metric_intervals(y, probs, resamples=300, seed=1, confidence=0.99)
    assert wide["accuracy"][0] <= a["accuracy"][0] and wide["accuracy"][1] >= a["accuracy"][1]


def test_no_interval_when_a_class_has_fewer_than_two_cases():
    y = np.array([0, 0, 0, 1])
    assert metric_intervals(y, np.tile([0.6, 0.4], (4, 1))) is None


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(3)
    y, probs = _simulated_case(rng, 30, 0.5)
    diff = paired_difference(y, probs, probs, resamples=200)
    assert all(d == {"value": 0.0, "low": 0.0, "high": 0.0} for d in diff.values())


def test_paired_difference_is_narrower_than_separate_intervals_for_correlated_models():
    """Two models that mostly agree: their paired difference is tighter than the single-model CIs suggest."""
    rng = np.random.default_rng(4)
    y, a = _simulated_case(rng, 80, 0.8)
    b = a.copy()
    flip = rng.choice(len(y), 8, replace=False)  # B differs from A on 8 cases only
    b[flip] = b[flip, ::-1]
    diff = paired_difference(y, a, b, resamples=500, seed=0)["accuracy"]
    assert diff["value"] == pytest.approx(point_metrics(y, a)["accuracy"] - point_metrics(y, b)["accuracy"])
    assert diff["low"] <= diff["value"] <= diff["high"]
    single = metric_intervals(y, a, resamples=500, seed=0)["accuracy"]
    assert diff["high"] - diff["low"] < single[1] - single[0]
