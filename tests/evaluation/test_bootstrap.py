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


# ---- weights and the cluster bootstrap (patients, not images) -----------------------------------------------------


def _sklearn_metrics(y, probs, w):
    """Every metric scikit-learn computes with sample_weight (ECE has no scikit-learn version)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        brier_score_loss,
        f1_score,
        multilabel_confusion_matrix,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    k = probs.shape[1]
    pred = probs.argmax(1)
    avg = {"pos_label": 1} if k == 2 else {"average": "macro", "labels": np.arange(k)}
    mcm = multilabel_confusion_matrix(y, pred, labels=np.arange(k), sample_weight=w)
    spec = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    return {"accuracy": accuracy_score(y, pred, sample_weight=w),
            "balanced_accuracy": balanced_accuracy_score(y, pred, sample_weight=w),
            "auroc": roc_auc_score(y, probs[:, 1], sample_weight=w) if k == 2 else
            roc_auc_score(y, probs, multi_class="ovr", average="macro", sample_weight=w),
            "sensitivity": recall_score(y, pred, sample_weight=w, zero_division=0, **avg),
            "specificity": spec[1] if k == 2 else spec.mean(),
            "precision": precision_score(y, pred, sample_weight=w, zero_division=0, **avg),
            "f1": f1_score(y, pred, sample_weight=w, zero_division=0, **avg),
            "brier": brier_score_loss(y, probs, sample_weight=w, labels=np.arange(k))}


@pytest.mark.parametrize("k", [2, 4])
def test_weighted_batched_metrics_equal_scikit_learns_sample_weight(k):
    """Case weights (a cluster bootstrap's patient multiplicities, here also fractions) give scikit-learn's
    sample_weight numbers, ties included; integer weights give the metrics of the cases repeated, ECE included."""
    rng = np.random.default_rng(10 + k)
    y = rng.integers(0, k, 90)
    probs = _probs(rng, y, k, ties=True)
    weights = np.vstack([rng.integers(0, 4, (3, 90)), rng.uniform(0.1, 2.0, (2, 90))]).astype(float)
    weights[:, :k] += 1  # k distinct labels up front (rng) keep every class weighted; checked below
    assert all(len(np.unique(y[w > 0])) == k for w in weights)
    batched = batched_metrics(y, probs, weights)
    assert batched.shape == (len(METRICS), 5)
    for i, w in enumerate(weights):
        expected = _sklearn_metrics(y, probs, w)
        got = dict(zip(METRICS, batched[:, i]))
        assert {m: got[m] for m in expected} == pytest.approx(expected, rel=1e-12), i
        if i < 3:  # integers: the repeated cases
            repeated = np.repeat(np.arange(len(y)), w.astype(int))
            assert got["ece"] == pytest.approx(point_metrics(y[repeated], probs[repeated])["ece"], rel=1e-12)
    # weights of one give the unweighted numbers to the bit
    np.testing.assert_array_equal(batched_metrics(y, probs, np.ones(len(y))), batched_metrics(y, probs))


def test_a_cluster_bootstrap_of_one_image_per_patient_is_the_image_bootstrap():
    """Same seed, same draws: identical intervals (ECE and Brier to float rounding: their sums run in another
    order), and the same paired differences."""
    rng = np.random.default_rng(7)
    y, probs = _simulated_case(rng, 50, 0.6)
    singletons = np.array([f"p{i}" for i in rng.permutation(len(y))])
    image = metric_intervals(y, probs, resamples=500, seed=3)
    cluster = metric_intervals(y, probs, singletons, resamples=500, seed=3)
    for m in METRICS:
        assert cluster[m] == (image[m] if m not in ("ece", "brier") else pytest.approx(image[m], rel=1e-12)), m
    other = probs[rng.permutation(len(y))]
    a, b = paired_difference(y, probs, other, resamples=300, seed=5), \
        paired_difference(y, probs, other, singletons, resamples=300, seed=5)
    assert a["accuracy"] == b["accuracy"] and a["auroc"] == b["auroc"]


def test_the_cluster_bootstrap_resamples_whole_patients_within_their_class():
    """Each resample's weights are the patients' multiplicities: constant within a patient, whole numbers, and
    per class summing to that class's patient count (a patient's class: its majority label)."""
    from xferlab.data.groups import patients_of
    from xferlab.evaluation.bootstrap import stratified_bootstrap

    rng = np.random.default_rng(8)
    groups = np.repeat([f"p{i}" for i in range(30)], rng.integers(1, 5, 30))
    patients = patients_of(groups, np.zeros(len(groups), int))
    y = (patients.index % 3 == 0).astype(int)  # one class per patient: 10 of class 1, 20 of class 0
    y[0] = 1 - y[0]  # patient p0's first image has the other label: p0 stays in its majority class
    seen = []

    def record(labels, values, weights):
        seen.append(weights)
        return weights.sum(-1)

    stratified_bootstrap(y, np.zeros((len(y), 1)), record, groups=groups, resamples=50, seed=0)
    weights = np.concatenate(seen)
    per_patient = weights[:, np.unique(patients.index, return_index=True)[1]]  # the first image of each patient
    np.testing.assert_array_equal(weights, per_patient[:, patients.index])
    assert (weights == np.round(weights)).all()
    label = patients_of(groups, y).label
    for c, n in ((0, 20), (1, 10)):
        np.testing.assert_array_equal(per_patient[:, label == c].sum(1), n)


def _accuracy(labels, values, weights):
    """Accuracy from a 0/1 'correct' column: the mean over (resampled or weighted) cases."""
    correct = values[..., 0]
    return correct.mean(-1) if weights is None else (correct * weights).sum(-1) / weights.sum(-1)


def test_cluster_intervals_cover_where_image_intervals_under_cover():
    """Patients of 4 images share a strong effect on the score (intra-patient correlation 0.9): images are not
    independent, so resampling them gives intervals that are too narrow; resampling patients covers ~95 %. (The
    accuracy alone, through the bootstrap itself, keeps 400 bootstraps cheap; benchmarks/patients.py measures the
    metric table on phantoms.)"""
    from xferlab.evaluation.bootstrap import stratified_bootstrap

    separation, patient_sd, image_sd, patients, k, draws = 0.8, 1.5, 0.5, 40, 4, 200
    true = norm.cdf(separation / np.hypot(patient_sd, image_sd))  # P(correct) of one image, either class
    rng = np.random.default_rng(2024)
    groups = np.repeat(np.arange(2 * patients).astype(str), k)
    y = np.repeat(np.arange(2 * patients) % 2, k)
    hits = {"image": 0, "patient": 0}
    for draw in range(draws):
        effect = np.repeat(rng.normal(0, patient_sd, 2 * patients), k)
        score = np.where(y == 1, separation, -separation) + effect + rng.normal(0, image_sd, len(y))
        correct = ((score > 0) == (y == 1)).astype(float)[:, None]
        for unit, g in (("image", None), ("patient", groups)):
            low, high = stratified_bootstrap(y, correct, _accuracy, groups=g, resamples=400, seed=draw)
            hits[unit] += low <= true <= high
    coverage = {u: h / draws for u, h in hits.items()}
    assert 0.905 <= coverage["patient"] <= 0.99, coverage  # 3 Monte-Carlo sd of a 95 % rate over 200 draws
    assert coverage["image"] < 0.85, coverage


def test_no_interval_when_a_class_has_fewer_than_two_patients():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.tile([0.6, 0.4], (5, 1))
    assert metric_intervals(y, probs) is not None
    assert metric_intervals(y, probs, np.array(["a", "b", "c", "c", "c"])) is None
