"""Val carving and train/val/test drawing (xferlab.data.splits)."""

from __future__ import annotations

import numpy as np
import pytest

from xferlab.data.splits import carve_val, draw_splits, resolve_counts, split_counts
from xferlab.errors import XferlabError


def _groups_in(splits: np.ndarray, groups: np.ndarray, name: str) -> set[str]:
    return set(groups[splits == name])


def test_ordered_val_is_last_20_percent_of_each_class():
    labels = np.repeat([0, 1], [1000, 500])
    mask = carve_val(labels, fraction=0.2, mode="ordered")
    assert mask[:800].sum() == 0 and mask[800:1000].all()
    assert mask[1000:1400].sum() == 0 and mask[1400:].all()


def test_ordered_val_follows_file_order_when_classes_interleave():
    labels = np.array([0, 1] * 10)
    mask = carve_val(labels, fraction=0.2, mode="ordered")
    assert np.flatnonzero(mask).tolist() == [16, 17, 18, 19]


def test_ordered_val_with_groups_is_the_last_fifth_of_each_class_patients_in_order_of_first_appearance():
    # class 0: patients a..e (a has images at both ends of the file); class 1: f..o; p is mostly class 1
    groups = np.array(list("abcde") + ["a"] + list("fghijklmno") + ["p", "p", "p"])
    labels = np.array([0] * 6 + [1] * 10 + [1, 1, 0])
    mask = carve_val(labels, groups, 0.2, "ordered")
    # class 0: round(0.2 * 5) = 1 patient (e, the last to appear; a's late image stays with a in train);
    # class 1 (majority): f..o and p = 11 patients, round(2.2) = 2: o and p, p's class-0 image with it
    assert sorted(set(groups[mask])) == ["e", "o", "p"]
    assert not set(groups[mask]) & set(groups[~mask])
    assert mask[-3:].all() and not mask[5]


def test_ordered_val_by_patient_needs_two_patients_per_class():
    with pytest.raises(XferlabError, match="majority label of 1 patient.*data.groups: none"):
        carve_val(np.array([0, 0, 1, 1]), np.array(["a", "a", "b", "c"]), 0.2, "ordered")


def test_random_val_is_seeded_and_stratified():
    labels = np.repeat([0, 1], [80, 20])
    a = carve_val(labels, fraction=0.25, mode="random", seed=3)
    b = carve_val(labels, fraction=0.25, mode="random", seed=3)
    c = carve_val(labels, fraction=0.25, mode="random", seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [20, 5]


def test_random_val_with_groups_keeps_groups_whole():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(40)], 3)
    labels = np.repeat(rng.integers(0, 2, 40), 3)
    mask = carve_val(labels, groups, 0.2, "random", seed=1)
    assert not set(groups[mask]) & set(groups[~mask])
    assert abs(mask.sum() - 24) <= 6


def test_unknown_val_mode_suggests_closest():
    with pytest.raises(XferlabError, match="did you mean 'random'"):
        carve_val(np.array([0, 0, 1, 1]), fraction=0.5, mode="randm")


def test_single_image_class_cannot_be_carved():
    with pytest.raises(XferlabError, match="label 1 has 1 image"):
        carve_val(np.array([0, 0, 1]), fraction=0.5, mode="ordered")


def test_draw_splits_exact_sizes_and_stratified_without_groups():
    labels = np.repeat([0, 1], [60, 40])
    splits = draw_splits(labels, sizes={"val": 0.2, "test": 0.1}, seed=0)
    assert split_counts(splits) == {"train": 70, "val": 20, "test": 10}
    assert np.bincount(labels[splits == "val"]).tolist() == [12, 8]


def test_draw_splits_accepts_exact_counts_and_reproduces_original_sizes():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    original = {"train": 63, "val": 17, "test": 20}
    splits = draw_splits(labels, sizes=original, seed=5)
    assert split_counts(splits) == original
    np.testing.assert_array_equal(splits, draw_splits(labels, sizes=original, seed=5))


def test_draw_splits_group_aware_never_shares_a_group():
    rng = np.random.default_rng(0)
    n_patients = 60
    per_patient = rng.integers(1, 5, n_patients)
    groups = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    labels = np.repeat(rng.integers(0, 2, n_patients), per_patient)
    for seed in range(3):
        splits = draw_splits(labels, groups, {"val": 0.2, "test": 0.2}, seed=seed)
        parts = [_groups_in(splits, groups, s) for s in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        counts = split_counts(splits)
        assert abs(counts["test"] - 0.2 * len(labels)) <= 0.1 * len(labels)
        assert all(len(set(labels[splits == s])) == 2 for s in ("train", "val", "test"))


def test_resolve_counts_rejects_sizes_that_do_not_add_up():
    with pytest.raises(XferlabError, match="add up to 90, not to the 100 images"):
        resolve_counts({"train": 70, "val": 10, "test": 10}, 100)


def test_resolve_counts_unknown_split_suggests_closest():
    with pytest.raises(XferlabError, match="did you mean 'test'"):
        resolve_counts({"tset": 0.2}, 100)
