"""Leakage (xferlab.audit.leakage): injected exact and near-duplicates and a patient-group leak are found; clean
phantoms give no finding; an uninformative measure says so instead of flagging look-alikes."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from xferlab.audit.embed import embed_dataset
from xferlab.audit.leakage import MAX_LISTED, group_overlap, leakage_audit
from xferlab.config import AuditConfig
from xferlab.data.dataset import SPLITS, ImageDataset
from xferlab.engine.accel import num_threads as torch_threads


@pytest.fixture(scope="module")
def small_subset(phantom_embeddings) -> tuple[ImageDataset, np.ndarray]:
    """120 train + 40 val + 60 test unshifted phantoms (32 px), a subset of the session's dataset, and their
    embeddings."""
    data, embeddings = phantom_embeddings["clean"]
    keep = np.concatenate([np.flatnonzero((data.splits == s) & (data.labels == c))[:n]
                           for s, n in (("train", 60), ("val", 20), ("test", 30)) for c in (0, 1)])
    subset = replace(data, images=data.images[keep].copy(), labels=data.labels[keep], splits=data.splits[keep])
    return subset, embeddings[keep]


@pytest.fixture(scope="module")
def small_phantoms(small_subset) -> ImageDataset:
    return small_subset[0]


def _embed(data: ImageDataset) -> np.ndarray:
    with torch_threads(1):
        return embed_dataset(data, AuditConfig(device="cpu"), progress=False)


def _indices(pairs) -> set[tuple[int, int]]:
    return {(p["query"]["index"], p["match"]["index"]) for p in pairs}


def test_clean_phantoms_have_no_leak(small_subset, single_blas_thread):
    result = leakage_audit(*small_subset, AuditConfig())
    assert result["leak"] is False
    assert result["exact"]["cross_split_groups"] == 0 and result["near_duplicate_images"] == 0
    for kind in ("phash", "embedding"):
        assert result[kind]["status"] == "ok" and result[kind]["count"] == 0
        assert result[kind]["threshold"] > 0
    assert result["groups"]["status"] == "skipped" and "no groups" in result["groups"]["reason"]


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def test_injected_exact_and_near_duplicates_are_found(small_phantoms, single_blas_thread):
    data = replace(small_phantoms, images=small_phantoms.images.copy())
    train = np.flatnonzero(data.splits == "train")
    test = np.flatnonzero(data.splits == "test")
    val = np.flatnonzero(data.splits == "val")
    exact_src, exact_dst = train[3], test[5]
    data.images[exact_dst] = data.images[exact_src]
    # a copy with contrast and brightness touched (the embedding and the hash see it) and a JPEG re-encoded copy
    # (at 32 px the 8×8 JPEG blocks move the embedding as far as a different patient; the hash still sees it)
    adjusted_src, adjusted_dst = train[10], test[7]
    jpeg_src, jpeg_dst = train[40], val[2]
    adjusted = (data.images[adjusted_src].astype(float) - 128) * 1.05 + 130
    data.images[adjusted_dst] = np.clip(adjusted, 0, 255).round().astype(np.uint8)
    data.images[jpeg_dst] = _jpeg(data.images[jpeg_src], quality=90)
    result = leakage_audit(data, _embed(data), AuditConfig())
    assert result["leak"] is True
    exact = result["exact"]
    assert exact["cross_split_groups"] == 1 and exact["label_conflicts"] == 0
    assert {i["index"] for i in exact["cross_split"][0]["images"]} == {exact_src, exact_dst}
    phash, embedding = _indices(result["phash"]["pairs"]), _indices(result["embedding"]["pairs"])
    assert phash | embedding == {(adjusted_dst, adjusted_src), (jpeg_dst, jpeg_src)}  # both found, nothing else
    assert (adjusted_dst, adjusted_src) in embedding and (jpeg_dst, jpeg_src) in phash
    assert result["near_duplicate_images"] == 2
    pair = next(p for p in result["embedding"]["pairs"] if p["query"]["index"] == adjusted_dst)
    assert pair["query"]["split"] == "test" and pair["match"]["split"] == "train"
    assert pair["distance"] <= result["embedding"]["threshold"]


def test_a_patient_group_leak_is_found(small_phantoms, single_blas_thread):
    groups = np.array([f"p{i}" for i in range(len(small_phantoms.labels))], dtype=object)
    train, test = np.flatnonzero(small_phantoms.splits == "train"), np.flatnonzero(small_phantoms.splits == "test")
    groups[test[0]] = groups[train[0]]  # patient p<train[0]> has an image in train and one in test
    groups[test[1]] = groups[train[1]] = groups[train[2]] = "shared"
    data = replace(small_phantoms, groups=groups)
    result = leakage_audit(data, np.random.default_rng(0).normal(size=(len(groups), 8)), AuditConfig())
    overlap = result["groups"]
    assert overlap["status"] == "ok" and overlap["count"] == 2 and overlap["images"] == 5
    assert {o["group"] for o in overlap["overlapping"]} == {groups[train[0]], "shared"}
    assert overlap["overlapping"][0]["counts"].keys() == {"train", "test"}
    assert overlap["shared_by_splits"] == {"train-val": 0, "train-test": 2, "val-test": 0}
    assert result["leak"] is True


def _group_overlap_by_brute_force(data: ImageDataset) -> dict:
    """group_overlap's answer the slow, obvious way: every group's images scanned, positions counted from the start."""
    def name(i):
        split = data.splits[i]
        return {"index": i, "split": split, "class": data.class_names[data.labels[i]],
                "split_index": sum(s == split for s in data.splits[:i]), "group": data.groups[i]}

    spanning, present = [], []
    for g in sorted(set(data.groups)):
        members = [i for i in range(len(data.groups)) if data.groups[i] == g]
        splits = [s for s in SPLITS if any(data.splits[i] == s for i in members)]
        present.append(set(splits))
        if len(splits) > 1:
            spanning.append({"group": g, "counts": {s: sum(data.splits[i] == s for i in members) for s in splits},
                             "examples": [name(next(i for i in members if data.splits[i] == s)) for s in splits],
                             "images": len(members)})
    shared = {f"{a}-{b}": sum(a in p and b in p for p in present)
              for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]}
    return {"status": "ok", "groups": len(set(data.groups)), "count": len(spanning),
            "images": sum(o["images"] for o in spanning), "shared_by_splits": shared,
            "overlapping": spanning[:MAX_LISTED]}


def test_group_overlap_matches_a_brute_force_count_on_many_groups():
    rng = np.random.default_rng(0)
    n = 3000
    groups = np.array([f"p{g:04d}" for g in rng.integers(0, 900, n)], dtype=object)  # most patients span splits
    groups[:300] = "p9999"  # one large patient in every split
    groups[300:304] = "p0003"
    splits = rng.choice(np.array(SPLITS, dtype=object), n, p=[0.6, 0.2, 0.2])
    splits[groups == "p0003"] = "val"  # a patient within one split
    data = ImageDataset(images=np.zeros((n, 2, 2), np.uint8), labels=rng.integers(0, 2, n), class_names=["a", "b"],
                        splits=splits, groups=groups)
    result = group_overlap(data)
    expected = _group_overlap_by_brute_force(data)
    assert expected["count"] > MAX_LISTED  # the listing is cut, the counts are not
    assert result == expected
    assert "p0003" not in {o["group"] for o in result["overlapping"]}


def test_a_measure_that_cannot_separate_copies_from_look_alikes_says_so(small_phantoms, single_blas_thread):
    """A train split where a third of the images have a brightened twin: the twins share a perceptual hash, so a
    hash distance of 0 is common within the split and cannot mark a cross-split copy."""
    train = np.flatnonzero(small_phantoms.splits == "train")[::3]
    twins = np.clip(small_phantoms.images[train].astype(int) + 1, 0, 255).astype(np.uint8)
    data = replace(small_phantoms, images=np.concatenate([small_phantoms.images, twins]),
                   labels=np.concatenate([small_phantoms.labels, small_phantoms.labels[train]]),
                   splits=np.concatenate([small_phantoms.splits, np.full(len(train), "train", dtype=object)]))
    result = leakage_audit(data, np.random.default_rng(0).normal(size=(len(data.labels), 8)), AuditConfig())
    assert result["phash"]["status"] == "skipped" and result["phash"]["count"] == 0
    assert "cannot separate copies from look-alikes" in result["phash"]["reason"]
    assert result["phash"]["calibration"]["within_split_rate"] > AuditConfig().near_duplicate_quantile


def test_closeness_by_embedding_alone_is_a_caution_not_a_leak():
    from xferlab.audit.verdict import leakage_finding

    ok = {"status": "ok", "threshold": 0.01, "unit": "u", "count": 0}
    leakage = {"exact": {"cross_split_groups": 0, "label_conflicts": 0, "within_split_groups": 0},
               "near_duplicate_images": 0, "embedding_only_images": 2, "groups": {"status": "skipped"},
               "phash": ok, "embedding": {**ok, "count": 2}, "aligned": ok}
    level, text = leakage_finding(leakage)
    assert level == "caution" and " 2 val/test image(s) lie as close" in text and "not counted as leaks" in text
    level, text = leakage_finding({**leakage, "near_duplicate_images": 1})
    assert level == "problem" and "1 val/test image(s) have a near-duplicate" in text
    assert "2 more val/test" in text
    assert leakage_finding({**leakage, "embedding_only_images": 0})[0] == "ok"
