"""Train/val/test assignment with scikit-learn splitters: stratified by class and, when patient groups are known,
group-aware (a group never lands in two splits).

How close the sizes get:
- without groups, sizes are exact (train_test_split with integer sizes; per-class counts are proportional);
- with groups, whole groups move together, so a part is a union of StratifiedGroupKFold folds (k = min(20,
  #groups of the rarest class), each ≈ n/k images) and lands within about half a fold of the request: ±2.5 % of n
  at best (≥ 20 groups per class; measured within 1.5 % for 60-3000 patients of 1-5 images, fractions 0.1-0.45),
  ±10 % with 5 groups in the rarest class, coarser with very unequal groups (a group is never cut). Train absorbs
  the difference. Stratification is StratifiedGroupKFold's best effort: a class with very few groups can miss a
  split, which ImageDataset.validate reports. Cost grows with #groups × k (about 3 s per part for 3000 groups).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from xferlab.data.dataset import SPLITS
from xferlab.data.groups import patients_of
from xferlab.errors import XferlabError, did_you_mean

VAL_MODES = ("ordered", "random")

# Folds a group-aware part is assembled from: 20 folds of 5 % each give ±2.5 % resolution while each fold still
# holds several groups per class for typical patient-level datasets (hundreds of patients).
_MAX_GROUP_FOLDS = 20


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    return f"'{class_names[label]}'" if class_names is not None else f"label {label}"


def _check_fraction(fraction: float, name: str) -> None:
    if not 0.0 < float(fraction) < 1.0:
        raise XferlabError(f"{name} must lie strictly between 0 and 1, got {fraction}")


def _ordered_tail(
    labels: np.ndarray, fraction: float, class_names: Sequence[str] | None
) -> np.ndarray:
    """The last `fraction` of each class in file order (at least one image, never the whole class)."""
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 2:
            raise XferlabError(
                f"class {_class_name(label, class_names)} has {len(idx)} image in the train pool; carving a "
                "validation split needs at least 2 per class; add images or provide a val split"
            )
        k = min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        mask[idx[len(idx) - k:]] = True
    return mask


def _ordered_tail_by_patient(
    labels: np.ndarray, groups: np.ndarray, fraction: float, class_names: Sequence[str] | None
) -> np.ndarray:
    """All images of the last `fraction` of each class's patients, in order of first appearance (at least one
    patient, never all); a patient's class is its majority label (data.groups.patients_of)."""
    patients = patients_of(groups, labels)
    chosen = np.zeros(len(patients), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(patients.label == label)  # in order of first appearance
        if len(members) < 2:
            raise XferlabError(
                f"class {_class_name(label, class_names)} is the majority label of {len(members)} patient(s) in the "
                "train pool; carving a validation split by patient needs at least 2 per class; add patients, "
                "provide a val split, or set data.groups: none to carve by image"
            )
        k = min(max(round(fraction * len(members)), 1), len(members) - 1)
        chosen[members[len(members) - k:]] = True
    return chosen[patients.index]


def _check_stratifiable(labels: np.ndarray, count: int, class_names: Sequence[str] | None) -> None:
    classes, per_class = np.unique(labels, return_counts=True)
    if (per_class < 2).any():
        label = classes[np.argmin(per_class)]
        raise XferlabError(
            f"class {_class_name(label, class_names)} has only 1 image to split; stratified splitting needs at least "
            "2 per class; add images or drop the class"
        )
    if count < len(classes) or len(labels) - count < len(classes):
        raise XferlabError(
            f"cannot split {count} of {len(labels)} images with every one of {len(classes)} classes on both sides; "
            "use a larger fraction or more images"
        )


def _pick_stratified(
    labels: np.ndarray, count: int, seed: int, class_names: Sequence[str] | None
) -> np.ndarray:
    _check_stratifiable(labels, count, class_names)
    _, picked = train_test_split(np.arange(len(labels)), test_size=count, stratify=labels, random_state=seed)
    mask = np.zeros(len(labels), dtype=bool)
    mask[picked] = True
    return mask


def _fold_count(labels: np.ndarray, groups: np.ndarray) -> int:
    """Folds to assemble a part from: fine (up to _MAX_GROUP_FOLDS) but no more than the groups of the rarest class,
    so every fold can still hold each class (with few groups, stratification matters more than exact sizes)."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise XferlabError(
            f"group-aware splitting needs at least 2 distinct groups, got {n_groups}; check the group column"
        )
    rarest = min(len(np.unique(groups[labels == label])) for label in np.unique(labels))
    return int(min(_MAX_GROUP_FOLDS, n_groups, max(2, rarest)))


def _group_folds(labels: np.ndarray, groups: np.ndarray, seed: int) -> list[np.ndarray]:
    splitter = StratifiedGroupKFold(n_splits=_fold_count(labels, groups), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": expected with many folds; folds are combined.
        warnings.simplefilter("ignore", UserWarning)
        return [fold for _, fold in splitter.split(np.zeros(len(labels)), labels, groups)]


def _pick_groups(labels: np.ndarray, groups: np.ndarray, count: int, seed: int) -> np.ndarray:
    """About `count` images made of whole groups: a greedy union of stratified group folds."""
    folds = _group_folds(labels, groups, seed)
    chosen: list[np.ndarray] = []
    total = 0
    for fold in folds:
        if abs(total + len(fold) - count) < abs(total - count):
            chosen.append(fold)
            total += len(fold)
    if not chosen:
        chosen = [min(folds, key=lambda f: abs(len(f) - count))]
    if sum(len(f) for f in chosen) == len(labels):
        chosen.pop()  # the rest must keep at least one fold
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.concatenate(chosen)] = True
    return mask


def _pick(
    labels: np.ndarray,
    groups: np.ndarray | None,
    count: int,
    seed: int,
    class_names: Sequence[str] | None,
) -> np.ndarray:
    """Boolean mask of about `count` images, stratified, whole groups when `groups` is given."""
    if count == 0:
        return np.zeros(len(labels), dtype=bool)
    if groups is None:
        return _pick_stratified(labels, count, seed, class_names)
    return _pick_groups(labels, groups, count, seed)


def carve_val(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    fraction: float = 0.2,
    mode: str = "ordered",
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Boolean mask over the train pool: True for images that become validation.

    'ordered' takes the last `fraction` of each class in file order (1000 images -> first 800 train, last 200 val),
    rounding per class, at least 1 and never all; with `groups`, the last `fraction` of each class's patients in
    order of first appearance (a patient's class is its majority label), so no patient is on both sides.
    'random' is a seeded stratified draw of round(fraction · n) images (at least 1), group-aware when `groups` is
    given (sizes as described in the module docstring).
    """
    _check_fraction(fraction, "val_fraction")
    labels = np.asarray(labels)
    groups = None if groups is None else np.asarray(groups).astype(str)
    if mode == "ordered":
        if groups is not None:
            return _ordered_tail_by_patient(labels, groups, fraction, class_names)
        return _ordered_tail(labels, fraction, class_names)
    if mode == "random":
        return _pick(labels, groups, max(1, round(fraction * len(labels))), seed, class_names)
    raise XferlabError(f"val_split must be one of {list(VAL_MODES)}, got '{mode}'{did_you_mean(mode, VAL_MODES)}")


def _as_count(name: str, value: int | float, n: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise XferlabError(f"size of '{name}' must be a count or a fraction, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if not 0 <= value <= n:
            raise XferlabError(f"size of '{name}' must be a count in 0..{n}, got {value}")
        return int(value)
    if isinstance(value, (float, np.floating)) and 0.0 <= value < 1.0:
        return round(float(value) * n)
    raise XferlabError(
        f"size of '{name}' must be an int count or a float fraction in [0, 1), got {value!r}"
    )


def resolve_counts(sizes: Mapping[str, int | float], n: int) -> dict[str, int]:
    """Turn {'val': 0.2, 'test': 100}-style sizes into exact counts; train gets the remainder when not given."""
    for name in sizes:
        if name not in SPLITS:
            raise XferlabError(
                f"unknown split '{name}' in sizes; use {list(SPLITS)}{did_you_mean(name, SPLITS)}"
            )
    counts = {name: _as_count(name, sizes.get(name, 0), n) for name in ("val", "test")}
    held_out = counts["val"] + counts["test"]
    counts["train"] = _as_count("train", sizes["train"], n) if "train" in sizes else n - held_out
    if counts["train"] + held_out != n:
        raise XferlabError(
            f"split sizes {counts} add up to {counts['train'] + held_out}, not to the {n} images; "
            "leave 'train' out to give it the remainder"
        )
    if counts["train"] < 1:
        raise XferlabError(f"split sizes {counts} leave no images for train; use smaller val/test sizes")
    return counts


def draw_splits(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    sizes: Mapping[str, int | float] | None = None,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Assign 'train' / 'val' / 'test' to every image, stratified and group-aware, seeded.

    `sizes` maps split names to int counts or float fractions, e.g. {'val': 0.2, 'test': 0.2} (the default) or the
    exact counts of an existing dataset ({'train': 800, 'val': 200, 'test': 624}, see split_counts); train gets the
    remainder when left out. Test is drawn first from all images, then val from the rest. Exact without groups;
    with groups see the module docstring for how close the sizes get.
    """
    labels = np.asarray(labels)
    groups = None if groups is None else np.asarray(groups).astype(str)
    counts = resolve_counts({"val": 0.2, "test": 0.2} if sizes is None else sizes, len(labels))
    splits = np.full(len(labels), "train", dtype=object)
    test = _pick(labels, groups, counts["test"], seed, class_names)
    splits[test] = "test"
    rest = np.flatnonzero(~test)
    rest_groups = None if groups is None else groups[rest]
    val = _pick(labels[rest], rest_groups, counts["val"], seed, class_names)
    splits[rest[val]] = "val"
    return splits


def split_counts(splits: np.ndarray) -> dict[str, int]:
    """Images per split, in the form draw_splits accepts as `sizes` (re-splitting with the original sizes)."""
    splits = np.asarray(splits)
    return {name: int((splits == name).sum()) for name in SPLITS}
