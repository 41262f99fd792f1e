"""Leakage (xferlab.audit.leakage): injected exact and near-duplicates and a patient-group leak are found; clean
phantoms give no finding; an uninformative measure says so instead of flagging look-alikes."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from xferlab.audit.embed import embed_dataset
from xferlab.audit.leakage import leakage_audit
from xferlab.engine.accel import num_threads as torch_threads
from xferlab.config import AuditConfig
from xferlab.data.dataset import ImageDataset


@pytest.fixture(scope="module")
def small_phantoms(phantom_embeddings) -> ImageDataset:
    """120 train + 40 val + 60 test unshifted phantoms (32 px), a subset of the session's dataset."""
    data, _ = phantom_embeddings["clean"]
    keep = np.concatenate([np.flatnonzero((data.splits == s) & (data.labels == c))[:n]
                           for s, n in (("train", 60), ("val", 20), ("test", 30)) for c in (0, 1)])
    return replace(data, images=data.images[keep].copy(), labels=data.labels[keep], splits=data.splits[keep])


def _embed(data: ImageDataset) -> np.ndarray:
    with torch_threads(1):
        return embed_dataset(data, AuditConfig(device="cpu"), progress=False)


def _indices(pairs) -> set[tuple[int, int]]:
    return {(p["query"]["index"], p["match"]["index"]) for p in pairs}


def test_clean_phantoms_have_no_leak(small_phantoms, single_blas_thread):
    result = leakage_audit(small_phantoms, _embed(small_phantoms), AuditConfig())
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
    assert result["leak"] is True


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
