"""Leakage between splits: exact duplicates (content hash), near-duplicates (perceptual hash and embedding nearest
neighbours) and patient groups that appear in more than one split.

Chest X-rays all look alike, so "near" cannot be a fixed distance: each near-duplicate threshold is calibrated on the
data, as a fraction of a low quantile of the distances between every image and its nearest *other* image in the
same split (exact copies removed). A cross-split pair closer than that is far closer than distinct images normally
get. The within-split rate below the same threshold is reported beside each finding so natural look-alikes show.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import imagehash
import numpy as np
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from xferlab.config import AuditConfig
from xferlab.data.dataset import SPLITS, ImageDataset

# Findings listed in audit.json per kind; the counts always cover all of them.
MAX_LISTED = 200
# 16×16 DCT coefficients (256 bits), not imagehash's default 8×8: measured on the 64 px phantoms, 8×8 hashes give
# distinct images a median nearest-neighbour distance of 4 bits and 7 % of them a twin at 0 bits, while 16×16 hashes
# put distinct images at >= 20 bits and noisy, brightened copies at 4-12.
PHASH_SIZE = 16
PHASH_BITS = PHASH_SIZE**2
# The pairs compared across splits: test against everything a model learns or is chosen on, val against train.
CROSS = (("test", ("train", "val")), ("val", ("train",)))


def describe(data: ImageDataset, i: int) -> dict:
    """How a finding names an image: dataset index, split, class, position within its split and file if known."""
    split = str(data.splits[i])
    entry = {"index": int(i), "split": split, "class": data.class_names[data.labels[i]],
             "split_index": int(np.count_nonzero(data.splits[:i] == split))}
    files = data.meta.get("files")
    if files is not None and len(files) == len(data.labels):
        entry["file"] = str(files[i])
    if data.groups is not None:
        entry["group"] = str(data.groups[i])
    return entry


def content_hashes(images: np.ndarray) -> np.ndarray:
    """BLAKE2b of each image's bytes: equal hashes mean pixel-identical images (after any resize on loading)."""
    return np.array([hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).hexdigest() for im in images])


def exact_duplicates(data: ImageDataset, hashes: np.ndarray) -> dict:
    """Groups of pixel-identical images, split into those spanning splits (leakage) and those within one split."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    cross, within = [], []
    for members in (m for m in by_hash.values() if len(m) > 1):
        entry = {"images": [describe(data, i) for i in members],
                 "label_conflict": len(set(data.labels[members].tolist())) > 1}
        (cross if len(set(data.splits[members].tolist())) > 1 else within).append(entry)
    return {"cross_split_groups": len(cross), "within_split_groups": len(within),
            "cross_split": cross[:MAX_LISTED], "within_split": within[:MAX_LISTED],
            "label_conflicts": sum(e["label_conflict"] for e in cross + within)}


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """N × PHASH_BITS boolean DCT perceptual hashes (imagehash.phash) of the gray images."""
    gray = images.mean(axis=1).round().astype(np.uint8) if images.ndim == 4 else images
    return np.stack([imagehash.phash(Image.fromarray(im), hash_size=PHASH_SIZE).hash.ravel() for im in gray])


def _nearest(features: np.ndarray, metric: str, query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of the nearest fitted point for each query (without a query: each point's nearest
    other point)."""
    nn = NearestNeighbors(n_neighbors=1, metric=metric, algorithm="brute").fit(features)
    dist, idx = nn.kneighbors(query, n_neighbors=1)
    return dist[:, 0], idx[:, 0]


def _within_split_distances(data: ImageDataset, features: np.ndarray, metric: str, unique: np.ndarray) -> np.ndarray:
    """Every (unique) image's distance to its nearest other image of the same split: the calibration sample."""
    out = []
    for s in SPLITS:
        idx = np.flatnonzero((data.splits == s) & unique)
        if len(idx) >= 2:
            out.append(_nearest(features[idx], metric)[0])
    return np.concatenate(out) if out else np.empty(0)


def near_duplicates(data: ImageDataset, features: np.ndarray, metric: str, scale: float, hashes: np.ndarray,
                    cfg: AuditConfig) -> dict:
    """Cross-split pairs closer than the calibrated threshold (exact copies are reported separately, not here).

    `scale` converts sklearn's distance into the reported unit (PHASH_BITS for Hamming: bits).
    """
    unique = np.zeros(len(hashes), dtype=bool)
    unique[np.unique(hashes, return_index=True)[1]] = True
    within = _within_split_distances(data, features, metric, unique) * scale
    if len(within) < 2:
        return {"status": "skipped", "reason": "too few images per split to calibrate a threshold"}
    reference = float(np.quantile(within, cfg.near_duplicate_quantile))
    threshold = cfg.near_duplicate_factor * reference
    within_rate = float(np.mean(within <= threshold))
    calibration = {"quantile": cfg.near_duplicate_quantile, "factor": cfg.near_duplicate_factor,
                   "within_split_quantile": reference, "within_split_median": float(np.median(within)),
                   "within_split_images": len(within), "within_split_rate": within_rate}
    if within_rate > cfg.near_duplicate_quantile:
        # distinct images of one split are this close just as often: the measure cannot tell copies from look-alikes
        return {"status": "skipped", "threshold": threshold, "calibration": calibration, "count": 0,
                "reason": f"{100 * within_rate:.1f} % of distinct images within a split are already within the "
                          f"threshold ({threshold:.3g}) of another; this measure cannot separate copies from "
                          "look-alikes here"}
    pairs, queries = [], 0
    for query_split, ref_splits in CROSS:
        q = np.flatnonzero(data.splits == query_split)
        r = np.flatnonzero(np.isin(data.splits, ref_splits))
        if not len(q) or not len(r):
            continue
        queries += len(q)
        dist, nearest = _nearest(features[r], metric, features[q])
        for i, j, d in zip(q, r[nearest], dist * scale):
            if d <= threshold and hashes[i] != hashes[j]:
                pairs.append({"query": describe(data, i), "match": describe(data, j), "distance": float(d)})
    pairs.sort(key=lambda p: p["distance"])
    return {"status": "ok", "threshold": threshold, "metric": metric, "calibration": calibration,
            "count": len(pairs), "queries": queries, "cross_split_rate": len(pairs) / max(1, queries),
            "pairs": pairs}


def group_overlap(data: ImageDataset) -> dict:
    """Groups (patients) with images in more than one split."""
    if data.groups is None:
        return {"status": "skipped", "reason": "the dataset has no groups (patient ids)"}
    overlap = []
    for g in np.unique(data.groups):
        members = np.flatnonzero(data.groups == g)
        splits = sorted(set(data.splits[members].tolist()), key=SPLITS.index)
        if len(splits) > 1:
            counts = {s: int(np.count_nonzero(data.splits[members] == s)) for s in splits}
            examples = [describe(data, members[data.splits[members] == s][0]) for s in splits]
            overlap.append({"group": str(g), "counts": counts, "examples": examples,
                            "images": int(len(members))})
    return {"status": "ok", "groups": int(len(np.unique(data.groups))), "count": len(overlap),
            "images": int(sum(o["images"] for o in overlap)), "overlapping": overlap[:MAX_LISTED]}


def leakage_audit(data: ImageDataset, embeddings: np.ndarray, cfg: AuditConfig) -> dict:
    """All leakage checks. Embedding distances are cosine distances (1 - cos) between backbone features."""
    hashes = content_hashes(data.images)
    phash = perceptual_hashes(data.images)
    result = {
        "exact": exact_duplicates(data, hashes),
        "phash": near_duplicates(data, phash, "hamming", PHASH_BITS, hashes, cfg),
        "embedding": near_duplicates(data, embeddings, "cosine", 1.0, hashes, cfg),
        "groups": group_overlap(data),
    }
    result["phash"]["unit"] = f"of {PHASH_BITS} bits"
    result["embedding"]["unit"] = "(1 - cosine similarity)"
    flagged = {p["query"]["index"] for kind in ("phash", "embedding") for p in result[kind].get("pairs", [])}
    for kind in ("phash", "embedding"):
        if "pairs" in result[kind]:
            result[kind]["pairs"] = result[kind]["pairs"][:MAX_LISTED]
    result["near_duplicate_images"] = len(flagged)
    result["leak"] = bool(result["exact"]["cross_split_groups"] or flagged
                          or result["groups"].get("count", 0))
    return result
