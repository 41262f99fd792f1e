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

from xferlab.audit.nearcopy import pair_similarities, spectral_descriptors
from xferlab.audit.neighbours import nearest
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


def split_positions(splits: np.ndarray) -> np.ndarray:
    """Each image's position within its own split (0-based, in dataset order)."""
    positions = np.zeros(len(splits), dtype=np.int64)
    for s in SPLITS:
        mask = splits == s
        positions[mask] = (np.cumsum(mask) - 1)[mask]
    return positions


def describe(data: ImageDataset, i: int, positions: np.ndarray) -> dict:
    """How a finding names an image: dataset index, split, class, position within its split (`positions`, from
    split_positions) and file if known."""
    entry = {"index": int(i), "split": str(data.splits[i]), "class": data.class_names[data.labels[i]],
             "split_index": int(positions[i])}
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
    cross, within, conflicts = [], [], 0
    for members in (m for m in by_hash.values() if len(m) > 1):
        conflicts += len(set(data.labels[members].tolist())) > 1
        (cross if len(set(data.splits[members].tolist())) > 1 else within).append(members)
    positions = split_positions(data.splits)

    def listed(groups: list[list[int]]) -> list[dict]:
        return [{"images": [describe(data, i, positions) for i in members],
                 "label_conflict": len(set(data.labels[members].tolist())) > 1} for members in groups[:MAX_LISTED]]

    return {"cross_split_groups": len(cross), "within_split_groups": len(within),
            "cross_split": listed(cross), "within_split": listed(within), "label_conflicts": conflicts}


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """N × PHASH_BITS boolean DCT perceptual hashes (imagehash.phash) of the gray images."""
    gray = images.mean(axis=1).round().astype(np.uint8) if images.ndim == 4 else images
    return np.stack([imagehash.phash(Image.fromarray(im), hash_size=PHASH_SIZE).hash.ravel() for im in gray])


# Within-split pairs aligned to calibrate the aligned-copy threshold: a fixed number keeps the step linear in n.
ALIGN_CALIBRATION = 2000


def _within_split_neighbours(data: ImageDataset, features: np.ndarray, metric: str,
                             unique: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (unique) image's nearest other image of the same split (indexed search, the same in both search modes,
    so that thresholds do not depend on the mode): image, neighbour (dataset indices) and distance."""
    images, matches, dists = [], [], []
    for s in SPLITS:
        idx = np.flatnonzero((data.splits == s) & unique)
        if len(idx) >= 2:
            dist, nn = nearest(features[idx], metric)
            images.append(idx)
            matches.append(idx[nn])
            dists.append(dist)
    if not images:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0)
    return np.concatenate(images), np.concatenate(matches), np.concatenate(dists)


def _cross_split_candidates(data: ImageDataset, features: np.ndarray, metric: str, exact: bool):
    """(query, nearest reference image, distance) for every image of a query split against its reference splits:
    exact (all pairs, in chunks) or indexed."""
    for query_split, ref_splits in CROSS:
        q = np.flatnonzero(data.splits == query_split)
        r = np.flatnonzero(np.isin(data.splits, ref_splits))
        if len(q) and len(r):
            dist, nn = nearest(features[r], metric, features[q], exact=exact)
            yield q, r[nn], dist


def near_duplicates(data: ImageDataset, features: np.ndarray, metric: str, scale: float, hashes: np.ndarray,
                    cfg: AuditConfig, exact: bool = False) -> tuple[dict, set[int]]:
    """Cross-split pairs closer than the calibrated threshold (exact copies are reported separately, not here), the
    closest MAX_LISTED of them listed, and the dataset indices of every flagged query image.

    `scale` converts sklearn's distance into the reported unit (PHASH_BITS for Hamming: bits).
    """
    unique = np.zeros(len(hashes), dtype=bool)
    unique[np.unique(hashes, return_index=True)[1]] = True
    within = _within_split_neighbours(data, features, metric, unique)[2] * scale  # the calibration sample
    if len(within) < 2:
        return {"status": "skipped", "reason": "too few images per split to calibrate a threshold"}, set()
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
                          "look-alikes here"}, set()
    pairs, queries = [], 0
    for q, match, dist in _cross_split_candidates(data, features, metric, exact):
        queries += len(q)
        for i, j, d in zip(q, match, dist * scale, strict=True):
            if d <= threshold and hashes[i] != hashes[j]:
                pairs.append((float(d), int(i), int(j)))
    return _listed(data, pairs, threshold, metric, calibration, queries)


def _listed(data: ImageDataset, pairs: list, threshold: float, metric: str, calibration: dict,
            queries: int) -> tuple[dict, set[int]]:
    pairs.sort(key=lambda p: p[0])  # stable: equal distances keep the query order
    positions = split_positions(data.splits)
    listed = [{"query": describe(data, i, positions), "match": describe(data, j, positions), "distance": d}
              for d, i, j in pairs[:MAX_LISTED]]
    return {"status": "ok", "threshold": threshold, "metric": metric, "calibration": calibration,
            "count": len(pairs), "queries": queries, "cross_split_rate": len(pairs) / max(1, queries),
            "pairs": listed}, {i for _, i, _ in pairs}


def group_overlap(data: ImageDataset) -> dict:
    """Groups (patients) with images in more than one split."""
    if data.groups is None:
        return {"status": "skipped", "reason": "the dataset has no groups (patient ids)"}
    names, group = np.unique(data.groups, return_inverse=True)
    split = np.zeros(len(group), dtype=np.int64)
    for k, s in enumerate(SPLITS):
        split[data.splits == s] = k
    # one row per (group, split) present, ordered by group then split; `first`: the pair's first image
    pairs, first, counts = np.unique(group * len(SPLITS) + split, return_index=True, return_counts=True)
    pair_group = pairs // len(SPLITS)
    spanning = np.flatnonzero(np.bincount(pair_group, minlength=len(names)) > 1)
    sizes = np.bincount(group, minlength=len(names))
    positions = split_positions(data.splits)
    overlap = []
    for g in spanning[:MAX_LISTED]:
        rows = range(np.searchsorted(pair_group, g), np.searchsorted(pair_group, g, side="right"))
        overlap.append({"group": str(names[g]),
                        "counts": {SPLITS[pairs[r] % len(SPLITS)]: int(counts[r]) for r in rows},
                        "examples": [describe(data, first[r], positions) for r in rows],
                        "images": int(sizes[g])})
    return {"status": "ok", "groups": len(names), "count": len(spanning), "images": int(sizes[spanning].sum()),
            "overlapping": overlap}


def aligned_copies(data: ImageDataset, descriptors: np.ndarray, hashes: np.ndarray, cfg: AuditConfig,
                   exact: bool = False) -> tuple[dict, set[int]]:
    """Cross-split pairs that are the same picture after a re-export (nearcopy): each query image's nearest reference
    image by spectral descriptor, aligned; flagged when the residual 1 - correlation is below the threshold, calibrated
    like the other measures on the residuals of within-split nearest pairs (ALIGN_CALIBRATION of them, seeded)."""
    unique = np.zeros(len(hashes), dtype=bool)
    unique[np.unique(hashes, return_index=True)[1]] = True
    images, matches, _ = _within_split_neighbours(data, descriptors, "euclidean", unique)
    if len(images) < 2:
        return {"status": "skipped", "reason": "too few images per split to calibrate a threshold"}, set()
    rng = np.random.default_rng(cfg.seed)
    pick = rng.choice(len(images), min(ALIGN_CALIBRATION, len(images)), replace=False)
    within = 1.0 - pair_similarities(data.images, np.column_stack([images[pick], matches[pick]]))
    reference = float(np.quantile(within, cfg.near_duplicate_quantile))
    threshold = cfg.near_duplicate_factor * reference
    calibration = {"quantile": cfg.near_duplicate_quantile, "factor": cfg.near_duplicate_factor,
                   "within_split_quantile": reference, "within_split_median": float(np.median(within)),
                   "within_split_images": len(within), "within_split_rate": float(np.mean(within <= threshold))}
    pairs, queries = [], 0
    for q, match, _ in _cross_split_candidates(data, descriptors, "euclidean", exact):
        queries += len(q)
        residual = 1.0 - pair_similarities(data.images, np.column_stack([q, match]))
        pairs += [(float(d), int(i), int(j)) for i, j, d in zip(q, match, residual, strict=True)
                  if d <= threshold and hashes[i] != hashes[j]]
    return _listed(data, pairs, threshold, "aligned", calibration, queries)


def leakage_audit(data: ImageDataset, embeddings: np.ndarray, cfg: AuditConfig, *, hashes: np.ndarray | None = None,
                  phashes: np.ndarray | None = None, descriptors: np.ndarray | None = None,
                  exact: bool = False) -> dict:
    """All leakage checks. Embedding distances are cosine distances (1 - cos) between backbone features. Per-image
    hashes and descriptors come from the audit's streaming pass (scan.py) or are computed here; `exact` searches all
    pairs instead of the index (the reference the indexed search is tested against)."""
    hashes = content_hashes(data.images) if hashes is None else hashes
    phashes = perceptual_hashes(data.images) if phashes is None else phashes
    descriptors = spectral_descriptors(data.images) if descriptors is None else descriptors
    phash, phash_flagged = near_duplicates(data, phashes, "hamming", PHASH_BITS, hashes, cfg, exact)
    embedding, embedding_flagged = near_duplicates(data, embeddings, "cosine", 1.0, hashes, cfg, exact)
    aligned, aligned_flagged = aligned_copies(data, descriptors, hashes, cfg, exact)
    result = {"exact": exact_duplicates(data, hashes), "phash": phash, "embedding": embedding, "aligned": aligned,
              "groups": group_overlap(data)}
    result["phash"]["unit"] = f"of {PHASH_BITS} bits"
    result["embedding"]["unit"] = "(1 - cosine similarity)"
    result["aligned"]["unit"] = "(1 - correlation after alignment)"
    flagged = phash_flagged | embedding_flagged | aligned_flagged
    result["near_duplicate_images"] = len(flagged)
    result["leak"] = bool(result["exact"]["cross_split_groups"] or flagged
                          or result["groups"].get("count", 0))
    return result
