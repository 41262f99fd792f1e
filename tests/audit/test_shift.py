"""Shift tests (xferlab.audit.shift): agreement with scikit-learn and the textbook formulas, false-positive rate
without a shift, power on the phantoms' acquisition shift, class balance kept apart, small splits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_predict

from xferlab.audit import shift
from xferlab.audit.common import MIN_PER_SIDE, permutation_p
from xferlab.config import AuditConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.phantoms import DEFAULT_N_PER_CLASS, DEFAULT_N_TEST_PER_CLASS
from xferlab.data.splits import draw_splits
from xferlab.evaluation.metrics import mann_whitney_auc

ALPHA = 0.05


def _not_above_alpha(rejections: int, reps: int, alpha: float = ALPHA) -> bool:
    """The rejection count is consistent with a rate <= alpha (one-sided binomial test at 0.001, i.e. alpha plus
    Monte-Carlo error)."""
    return stats.binomtest(rejections, reps, alpha, alternative="greater").pvalue > 0.001


def _synthetic(rng, n_per_class=(60, 60), test_fraction=0.3, dim=40, class_gap=2.0):
    """Two classes of skewed (chi-square) embeddings, split at random: no shift between the splits."""
    labels = np.repeat([0, 1], n_per_class)
    emb = rng.chisquare(3, size=(len(labels), dim))
    emb[:, 0] += class_gap * labels
    splits = np.where(rng.random(len(labels)) < test_fraction, "test", "train")
    for c in (0, 1):
        splits[np.flatnonzero((splits == "train") & (labels == c))[:2]] = "val"
    return labels, emb, splits


def _dataset(labels, splits):
    return ImageDataset(images=np.zeros((len(labels), 4, 4), np.uint8), labels=labels,
                        class_names=["normal", "pneumonia"], splits=splits)


def test_classifier_scores_equal_scikit_learn_cross_val_predict():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(90, 7))
    labels = shift.label_matrix(rng.random(90) < 0.3, permutations=4, rng=rng)
    scores = shift.out_of_fold_scores(z, labels, folds=5, seed=11)
    aucs = mann_whitney_auc(scores, labels.astype(bool), axis=0)  # the audit's AUCs, one per label column
    for j in range(labels.shape[1]):
        reference = cross_val_predict(Ridge(alpha=shift.RIDGE_ALPHA), z, labels[:, j],
                                      cv=KFold(5, shuffle=True, random_state=11))
        np.testing.assert_allclose(scores[:, j], reference, atol=1e-10)
        assert aucs[j] == pytest.approx(roc_auc_score(labels[:, j], scores[:, j]))


def test_mmd_equals_the_unbiased_estimator_written_out():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 3))
    y = np.zeros(40, bool)
    y[:12] = True
    labels = shift.label_matrix(y, permutations=3, rng=rng)
    result = shift.mmd_test(z, labels)
    sq = ((z[:, None] - z[None]) ** 2).sum(-1)
    sigma = np.sqrt(np.median(sq[~np.eye(40, dtype=bool)]))
    k = np.exp(-sq / (2 * sigma**2))
    x, o = y, ~y
    m, n = x.sum(), o.sum()
    expected = ((k[np.ix_(x, x)].sum() - m) / (m * (m - 1)) + (k[np.ix_(o, o)].sum() - n) / (n * (n - 1))
                - 2 * k[np.ix_(x, o)].mean())
    assert result["mmd2"] == pytest.approx(expected)
    assert result["bandwidth"] == pytest.approx(sigma)


def test_permutation_p_is_never_zero_and_counts_ties():
    assert permutation_p(5.0, np.array([1.0, 2.0, 3.0])) == pytest.approx(1 / 4)
    assert permutation_p(2.0, np.array([1.0, 2.0, 3.0])) == pytest.approx(3 / 4)
    # an undefined permuted statistic is never evidence against the null
    assert permutation_p(5.0, np.array([1.0, np.nan, 3.0])) == pytest.approx(2 / 4)
    assert permutation_p(np.nan, np.array([1.0, 2.0])) == 1.0


def test_scopes_with_too_few_patients_on_a_side_get_no_p_value(single_blas_thread):
    """By patient, the unit is the patient: one test patient with 12 images is one unit, however many images (before,
    block permutations that left one image on the test side gave NaN statistics and a p-value far too small)."""
    rng = np.random.default_rng(5)
    splits = np.array(["train"] * 40 + ["test"] * 12, dtype=object)
    groups = np.array([f"p{i}" for i in range(40)] + ["p40"] * 12)
    z = rng.normal(size=(52, 16))
    result = shift.scope_tests(z, np.arange(52), splits == "test", AuditConfig(permutations=199), 0, "all classes",
                               groups)[0]
    assert result["status"] == "skipped" and "only 1 test patient;" in result["reason"]
    assert shift.scope_tests(z, np.arange(52), splits == "test", AuditConfig(permutations=199), 0, "all classes",
                             None)[0]["status"] == "ok"  # by image the same scope is tested


def test_without_shift_each_test_rejects_at_most_alpha_synthetic(single_blas_thread):
    """300 random splits of skewed synthetic embeddings: every test, and the combined decision, at most alpha."""
    rng = np.random.default_rng(123)
    cfg = AuditConfig(permutations=99, components=8, ks_components=4)
    reps = 300
    counts = {"classifier": 0, "mmd": 0, "ks": 0, "combined": 0}
    for rep in range(reps):
        labels, emb, splits = _synthetic(rng)
        result, _ = shift.shift_tests(_dataset(labels, splits), emb, cfg.model_copy(update={"seed": rep}))
        for method in shift.METHODS:
            counts[method] += result["pooled"][method]["p"] <= ALPHA
        counts["combined"] += result["within_class"]["reject"]
    assert all(_not_above_alpha(k, reps) for k in counts.values()), counts
    assert counts["combined"] <= counts["classifier"] + counts["mmd"] + counts["ks"]


def test_without_shift_phantom_splits_reject_at_most_alpha(phantom_embeddings, with_splits, single_blas_thread):
    """Seeded random stratified splits of the unshifted phantoms' embeddings (400-image subsets for speed)."""
    data, emb = phantom_embeddings["clean"]
    rng = np.random.default_rng(7)
    cfg = AuditConfig(permutations=99)
    reps = 60
    within = {m: 0 for m in shift.METHODS}
    pooled = {m: 0 for m in shift.METHODS}
    combined = 0
    for rep in range(reps):
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.labels == c), 200, replace=False)
                                       for c in (0, 1)]))
        splits = draw_splits(data.labels[keep], sizes={"val": 60, "test": 100}, seed=rep)
        result, _ = shift.shift_tests(with_splits(data, splits, keep), emb[keep],
                                      cfg.model_copy(update={"seed": rep}))
        decision = result["within_class"]
        combined += decision["reject"]
        for m in shift.METHODS:
            within[m] += decision["method_p"][m] <= ALPHA
            pooled[m] += result["pooled"][m]["p"] <= ALPHA
    assert _not_above_alpha(combined, reps), combined
    assert all(_not_above_alpha(k, reps) for k in list(within.values()) + list(pooled.values())), (within, pooled)


def test_acquisition_shift_is_detected_at_the_default_sizes(phantom_embeddings, single_blas_thread):
    data, emb = phantom_embeddings["shifted"]
    result, scores = shift.shift_tests(data, emb, AuditConfig())
    decision = result["within_class"]
    assert decision["reject"] and decision["p"] <= ALPHA
    for name in data.class_names:
        r = result["per_class"][name]
        assert r["n_test"] == DEFAULT_N_TEST_PER_CLASS and r["n_ref"] == DEFAULT_N_PER_CLASS
        assert all(r[m]["p"] <= ALPHA for m in shift.METHODS)
        assert r["classifier"]["auc"] > 0.9
    # the within-class domain scores rank test images above train+val images
    test = data.splits == "test"
    assert roc_auc_score(test, scores) > 0.9


def test_unshifted_phantoms_are_not_flagged(phantom_embeddings, single_blas_thread):
    data, emb = phantom_embeddings["clean"]
    result, _ = shift.shift_tests(data, emb, AuditConfig())
    assert result["within_class"]["reject"] is False  # a 5 % false alarm is possible; seed 0 is not one


def test_class_balance_alone_is_not_reported_as_an_image_shift(single_blas_thread):
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], [300, 300])
    emb = rng.normal(size=(600, 20))
    emb[:, 0] += 6.0 * labels  # classes far apart in embedding space
    splits = np.full(600, "train", dtype=object)
    splits[rng.choice(300, 20, replace=False)] = "val"
    splits[300 + rng.choice(300, 20, replace=False)] = "val"
    # test: 100 of class 0 but only 10 of class 1, drawn from the same distributions as train
    splits[rng.choice(np.flatnonzero((labels == 0) & (splits == "train")), 100, replace=False)] = "test"
    splits[rng.choice(np.flatnonzero((labels == 1) & (splits == "train")), 10, replace=False)] = "test"
    data = _dataset(labels, splits)
    cfg = AuditConfig(permutations=199)
    result, _ = shift.shift_tests(data, emb, cfg)
    assert result["pooled"]["classifier"]["p"] <= ALPHA  # the pooled test sees the balance difference
    assert result["within_class"]["reject"] is False  # the within-class tests do not call it an image shift
    balance = shift.class_balance(data, cfg)
    assert balance["reject"] and balance["p"] < 1e-6


def test_a_split_too_small_gets_a_message_not_a_p_value(single_blas_thread):
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], [100, 100])
    splits = np.full(200, "train", dtype=object)
    splits[[0, 1, 100, 101]] = "val"
    splits[2:2 + 30] = "test"  # 30 test images of class 0
    splits[102:102 + 4] = "test"  # only 4 of class 1
    data = _dataset(labels, splits)
    result, scores = shift.shift_tests(data, rng.normal(size=(200, 16)), AuditConfig(permutations=99))
    small = result["per_class"]["pneumonia"]
    assert small["status"] == "skipped" and "p" not in small
    assert "only 4 test images" in small["reason"] and f"at least {MIN_PER_SIDE}" in small["reason"]
    assert np.isnan(scores[labels == 1]).all()
    decision = result["within_class"]
    assert decision["tested_classes"] == ["normal"] and "pneumonia" in decision["untested_classes"]
    # with every class too small there is no decision, and no p-value
    splits[2 + MIN_PER_SIDE - 1:2 + 30] = "train"
    result, _ = shift.shift_tests(_dataset(labels, splits), rng.normal(size=(200, 16)), AuditConfig(permutations=99))
    assert result["within_class"]["status"] == "skipped" and result["within_class"]["reject"] is None
    assert "p" not in result["within_class"]


def test_the_note_says_when_permutations_cannot_reach_alpha(single_blas_thread):
    rng = np.random.default_rng(5)
    labels, emb, splits = _synthetic(rng)
    result, _ = shift.shift_tests(_dataset(labels, splits), emb, AuditConfig(permutations=50))
    assert "smallest adjusted permutation p-value" in result["within_class"]["note"]
    result, _ = shift.shift_tests(_dataset(labels, splits), emb, AuditConfig(permutations=199))
    assert result["within_class"]["note"] is None


def test_ks_by_permutation_has_scipys_statistic_and_moves_whole_patients():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(80, 3))
    groups = np.repeat(np.arange(20).astype(str), 4)
    is_target = np.repeat(rng.random(20) < 0.4, 4)
    blocks = shift.patient_blocks(groups, is_target)
    labels = shift.label_matrix(is_target, permutations=50, rng=rng, blocks=blocks)
    for column in labels.T:  # every permutation keeps each patient's images on one side
        assert all(len(set(column[blocks == b])) == 1 for b in np.unique(blocks))
        assert column.sum() == 4 * is_target[::4].sum()  # here all patients have 4 images
    result = shift.ks_permutation_test(z, labels, components=3)
    for j in range(3):
        assert result["d"][j] == pytest.approx(stats.ks_2samp(z[is_target, j], z[~is_target, j]).statistic)
    assert result["p"] == pytest.approx(min(1.0, 3 * min(result["p_per_component"])))
    assert result["permutations"] == 50


def _patient_effect(rng, patients=100, k=4, dim=30, patient_sd=3.0):
    """Embeddings dominated by the patient (k images each, a shared offset 3× the image noise), patients split at
    random between train+val and test: no shift, but images of one patient are far from independent."""
    labels = np.repeat(np.arange(patients) % 2, k)
    groups = np.repeat(np.arange(patients).astype(str), k)
    emb = np.repeat(rng.normal(0, patient_sd, (patients, dim)), k, axis=0) + rng.normal(size=(patients * k, dim))
    emb[:, 0] += 2.0 * labels
    side = np.repeat(np.where(rng.random(patients) < 0.35, "test", "train").astype(object), k)
    for c in (0, 1):  # one patient of each class in val
        side[groups == groups[np.flatnonzero((side == "train") & (labels == c))[0]]] = "val"
    return labels, groups, emb, side


def test_a_patient_effect_raises_false_alarms_by_image_and_not_by_patient(single_blas_thread):
    """No shift, strong patient effect: image-level folds and permutations reject far above alpha (the classifier
    recognises patients across folds; permuting images mixes patients); patient-level ones stay at alpha."""
    rng = np.random.default_rng(99)
    cfg = AuditConfig(permutations=99, components=8, ks_components=4)
    reps = 60
    rejections = {"image": 0, "patient": 0}
    for rep in range(reps):
        labels, groups, emb, splits = _patient_effect(rng)
        for unit, g in (("image", None), ("patient", groups)):
            data = ImageDataset(images=np.zeros((len(labels), 4, 4), np.uint8), labels=labels,
                                class_names=["normal", "pneumonia"], splits=splits, groups=g)
            result, _ = shift.shift_tests(data, emb, cfg.model_copy(update={"seed": rep}))
            rejections[unit] += result["within_class"]["reject"]
            assert result["within_class"]["unit"] == unit
    assert _not_above_alpha(rejections["patient"], reps), rejections
    assert rejections["image"] >= reps // 2, rejections
