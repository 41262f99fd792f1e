"""Leakage between splits: exact duplicates (content hash), near-duplicates (perceptual hash; aligned pixels for
re-exported copies, nearcopy.py), look-alikes by embedding (a lead, not a leak) and patient groups that appear in
more than one split.

Chest X-rays all look alike, so "near" cannot be a fixed distance: each near-duplicate threshold is calibrated on the
data, as a fraction of a low quantile of the distances between images and their nearest *other* image in the same
split (a seeded sample of CALIBRATION_IMAGES; exact copies removed). A cross-split pair closer than that is far
closer than distinct images normally get. The within-split rate below the same threshold is reported beside each
finding so natural look-alikes show.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
from PIL import Image
from scipy.fft import dct
from tqdm.auto import tqdm

from xferlab.audit.nearcopy import pair_similarities, spectral_descriptors
from xferlab.audit.neighbours import NeighbourSearch
from xferlab.config import AuditConfig
from xferlab.data.dataset import SPLITS, ImageDataset
from xferlab.data.images import gray_uint8

# Findings listed in audit.json per kind; the counts always cover all of them.
MAX_LISTED = 200
# 16×16 DCT coefficients (256 bits), not imagehash's default 8×8: measured on the 64 px phantoms, 8×8 hashes give
# distinct images a median nearest-neighbour distance of 4 bits and 7 % of them a twin at 0 bits, while 16×16 hashes
# put distinct images at >= 20 bits and noisy, brightened copies at 4-12.
PHASH_SIZE = 16
PHASH_BITS = PHASH_SIZE**2
PHASH_HIGHFREQ = 4  # imagehash's highfreq_factor: the image is resized to PHASH_SIZE × 4 before the DCT
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
    """N × PHASH_BITS boolean DCT perceptual hashes of the gray images, bit for bit imagehash.phash(hash_size=
    PHASH_SIZE): imagehash's Lanczos resize with Pillow per image, then its DCT (type II, unnormalised) and median
    rule over the whole stack at once. imagehash takes one PIL image per call, and its per-call overhead made
    perceptual hashing the largest part of the audit's image pass; tests compare the bits with imagehash.phash."""
    gray = gray_uint8(images)
    side = PHASH_SIZE * PHASH_HIGHFREQ
    resized = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.LANCZOS))
                        for im in gray]).astype(np.float64)
    # the low rows of the column transform are all the row transform needs: the same numbers as the full DCT
    low = dct(dct(resized, axis=1)[:, :PHASH_SIZE], axis=2)[:, :, :PHASH_SIZE].reshape(len(gray), -1)
    return low > np.median(low, axis=1, keepdims=True)


# Within-split pairs aligned to calibrate the aligned-copy threshold: a fixed number keeps the step linear in n.
ALIGN_CALIBRATION = 2000
# Images whose nearest other image of their split calibrates a threshold: a seeded sample of this size, drawn from
# the splits in proportion to their sizes as the full set would weigh them (150 images below a 1 % quantile),
# calibrates as every image would, at a fixed cost. Not an equal share per split: that would over-weigh the small
# splits, whose nearest neighbours lie further apart, and raise the threshold.
CALIBRATION_IMAGES = 15_000
# Aligned check: only cross-split pairs whose spectral descriptors are closer than this quantile of the within-split
# nearest-neighbour descriptor distances are aligned. With planted copies in the default phantoms at 32 px
# (`python benchmarks/audit_scale.py detect`), every 1-pixel crop, 3 % rescale, JPEG 75, brightness, noise and
# combined copy passes, and at most 16 % of the unplanted val/test images do; so alignment, the step's main cost,
# runs on about an eighth to a sixth of the queries (docs/audit-at-scale.md).
PREFILTER_QUANTILE = 0.10


def _split_rows(data: ImageDataset, hashes: np.ndarray) -> dict[str, np.ndarray]:
    """Each split's rows, one per distinct content within the split (exact copies are reported by
    exact_duplicates; a copy in another split does not remove an image from its own split's search)."""
    out = {}
    for s in SPLITS:
        rows = np.flatnonzero(data.splits == s)
        out[s] = np.sort(rows[np.unique(hashes[rows], return_index=True)[1]])
    return out


def _searches(features: np.ndarray, metric: str, groups: dict[str, np.ndarray], exact: bool,
              seed: int) -> tuple[NeighbourSearch, NeighbourSearch]:
    """The search that calibrates (always indexed, so that both modes apply the same thresholds) and the one that
    finds cross-split candidates (the all-pairs reference with `exact`)."""
    indexed = NeighbourSearch(features, metric, groups, seed=seed)
    return indexed, (NeighbourSearch(features, metric, groups, exact=True) if exact else indexed)


def _within_split_neighbours(search: NeighbourSearch, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded sample of the images (at most CALIBRATION_IMAGES, each split in proportion to its size) and their
    nearest other image of the same split: image, neighbour (dataset indices) and distance."""
    rng = np.random.default_rng(seed)
    total = sum(len(r) for r in search.groups.values())
    images, matches, dists = [], [], []
    for s in SPLITS:
        rows = search.groups[s]
        if len(rows) >= 2:
            take = max(2, round(len(rows) * CALIBRATION_IMAGES / total))
            sample = np.sort(rng.choice(rows, take, replace=False)) if len(rows) > take else rows
            dist, nn = search.nearest(sample, [s], exclude_self=True)
            found = np.isfinite(dist)
            images.append(sample[found])
            matches.append(nn[found])
            dists.append(dist[found])
    if not images:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0)
    return np.concatenate(images), np.concatenate(matches), np.concatenate(dists)


def _cross_split_candidates(data: ImageDataset, search: NeighbourSearch):
    """(query, nearest reference image, distance) for every image of a query split against its reference splits."""
    for query_split, ref_splits in CROSS:
        q = np.flatnonzero(data.splits == query_split)
        if len(q) and any(len(search.groups[s]) for s in ref_splits):
            dist, match = search.nearest(q, ref_splits)
            yield q, match, dist


def near_duplicates(data: ImageDataset, features: np.ndarray, metric: str, scale: float, hashes: np.ndarray,
                    cfg: AuditConfig, exact: bool = False,
                    groups: dict[str, np.ndarray] | None = None) -> tuple[dict, set[int]]:
    """Cross-split pairs closer than the calibrated threshold (exact copies are reported separately, not here), the
    closest MAX_LISTED of them listed, and the dataset indices of every flagged query image.

    `scale` converts sklearn's distance into the reported unit (PHASH_BITS for Hamming: bits).
    """
    groups = _split_rows(data, hashes) if groups is None else groups
    calibrate, cross = _searches(features, metric, groups, exact, cfg.seed)
    within = _within_split_neighbours(calibrate, cfg.seed)[2] * scale  # the calibration sample
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
    for q, match, dist in _cross_split_candidates(data, cross):
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
    """Groups (patients) with images in more than one split: how many, in which pairs of splits, and each one (up to
    MAX_LISTED) with its images per split and an example image from each."""
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
    present = np.zeros((len(names), len(SPLITS)), dtype=bool)
    present[pair_group, pairs % len(SPLITS)] = True
    shared = {f"{a}-{b}": int((present[:, i] & present[:, j]).sum())
              for i, a in enumerate(SPLITS) for j, b in enumerate(SPLITS) if i < j}
    positions = split_positions(data.splits)
    overlap = []
    for g in spanning[:MAX_LISTED]:
        rows = range(np.searchsorted(pair_group, g), np.searchsorted(pair_group, g, side="right"))
        overlap.append({"group": str(names[g]),
                        "counts": {SPLITS[pairs[r] % len(SPLITS)]: int(counts[r]) for r in rows},
                        "examples": [describe(data, first[r], positions) for r in rows],
                        "images": int(sizes[g])})
    return {"status": "ok", "groups": len(names), "count": len(spanning), "images": int(sizes[spanning].sum()),
            "shared_by_splits": shared, "overlapping": overlap}


def aligned_copies(data: ImageDataset, descriptors: np.ndarray, hashes: np.ndarray, cfg: AuditConfig,
                   exact: bool = False, groups: dict[str, np.ndarray] | None = None) -> tuple[dict, set[int]]:
    """Cross-split pairs that are the same picture after a re-export (nearcopy): each query image's nearest reference
    image by spectral descriptor, aligned when their descriptors are closer than the PREFILTER_QUANTILE of within-split
    nearest-neighbour descriptor distances; flagged when the residual 1 - correlation is below the threshold,
    calibrated like the other measures on the residuals of within-split nearest pairs (ALIGN_CALIBRATION of them,
    seeded)."""
    groups = _split_rows(data, hashes) if groups is None else groups
    calibrate, cross = _searches(descriptors, "euclidean", groups, exact, cfg.seed)
    images, matches, descriptor_dists = _within_split_neighbours(calibrate, cfg.seed)
    if len(images) < 2:
        return {"status": "skipped", "reason": "too few images per split to calibrate a threshold"}, set()
    rng = np.random.default_rng(cfg.seed)
    pick = rng.choice(len(images), min(ALIGN_CALIBRATION, len(images)), replace=False)
    within = 1.0 - pair_similarities(data.images, np.column_stack([images[pick], matches[pick]]))
    reference = float(np.quantile(within, cfg.near_duplicate_quantile))
    threshold = cfg.near_duplicate_factor * reference
    prefilter = float(np.quantile(descriptor_dists, PREFILTER_QUANTILE))
    calibration = {"quantile": cfg.near_duplicate_quantile, "factor": cfg.near_duplicate_factor,
                   "within_split_quantile": reference, "within_split_median": float(np.median(within)),
                   "within_split_images": len(within), "within_split_rate": float(np.mean(within <= threshold)),
                   "prefilter_quantile": PREFILTER_QUANTILE, "prefilter_distance": prefilter}
    pairs, queries, aligned = [], 0, 0
    for q, match, dist in _cross_split_candidates(data, cross):
        queries += len(q)
        close = dist <= prefilter
        q, match = q[close], match[close]
        aligned += len(q)
        residual = 1.0 - pair_similarities(data.images, np.column_stack([q, match]))
        pairs += [(float(d), int(i), int(j)) for i, j, d in zip(q, match, residual, strict=True)
                  if d <= threshold and hashes[i] != hashes[j]]
    result, flagged = _listed(data, pairs, threshold, "aligned", calibration, queries)
    result["aligned_pairs"] = aligned
    return result, flagged


def leakage_audit(data: ImageDataset, embeddings: np.ndarray, cfg: AuditConfig, *, hashes: np.ndarray | None = None,
                  phashes: np.ndarray | None = None, descriptors: np.ndarray | None = None,
                  exact: bool = False, progress: bool = False) -> dict:
    """All leakage checks. Embedding distances are cosine distances (1 - cos) between backbone features. Per-image
    hashes and descriptors come from the audit's streaming pass (scan.py) or are computed here; `exact` searches all
    pairs instead of the index (the reference the indexed search is tested against). `progress`: a bar over the
    three searches (minutes each at a few hundred thousand images)."""
    hashes = content_hashes(data.images) if hashes is None else hashes
    phashes = perceptual_hashes(data.images) if phashes is None else phashes
    descriptors = spectral_descriptors(data.images) if descriptors is None else descriptors
    groups = _split_rows(data, hashes)  # `groups`: each split's distinct images, shared by the three searches
    with tqdm(total=3, desc="leakage search", unit="measure", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("perceptual hash")
        phash, phash_flagged = near_duplicates(data, phashes, "hamming", PHASH_BITS, hashes, cfg, exact, groups)
        bar.update()
        bar.set_postfix_str("embedding")
        embedding, embedding_flagged = near_duplicates(data, embeddings, "cosine", 1.0, hashes, cfg, exact, groups)
        bar.update()
        bar.set_postfix_str("aligned pixels")
        aligned, aligned_flagged = aligned_copies(data, descriptors, hashes, cfg, exact, groups)
        bar.update()
    result = {"exact": exact_duplicates(data, hashes), "phash": phash, "embedding": embedding, "aligned": aligned,
              "groups": group_overlap(data)}
    result["phash"]["unit"] = f"of {PHASH_BITS} bits"
    result["embedding"]["unit"] = "(1 - cosine similarity)"
    result["aligned"]["unit"] = "(1 - correlation after alignment)"
    # A pixel measure (hash or alignment) confirms a copy. Closeness by embedding alone is a lead, not a finding:
    # at 58,000 phantoms it flagged two pairs of distinct look-alikes (perceptual hashes 68 and 72 bits apart, aligned
    # correlation 0.96 and 0.94), as a quantile threshold will once there are tens of thousands of queries.
    flagged = phash_flagged | aligned_flagged
    result["near_duplicate_images"] = len(flagged)
    result["embedding_only_images"] = len(embedding_flagged - flagged)
    result["leak"] = bool(result["exact"]["cross_split_groups"] or flagged
                          or result["groups"].get("count", 0))
    return result
