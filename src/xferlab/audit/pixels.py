"""What differs in the pixels: per-image intensity, sharpness and noise statistics, summarised per split and class,
and tested (Mann-Whitney U, Bonferroni over statistics and classes) between train+val and test within each class."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

from xferlab.audit.common import domain_masks, size_problem, skipped
from xferlab.config import AuditConfig
from xferlab.data.dataset import SPLITS, ImageDataset

STATS = {
    "mean": "mean intensity (0-255)",
    "std": "intensity standard deviation",
    "p01": "1st intensity percentile",
    "p50": "median intensity",
    "p99": "99th intensity percentile",
    "sharpness": "variance of the Laplacian (higher = sharper)",
    "noise": "noise sigma (Immerkær 1996)",
}

_CHUNK = 512  # images per float32 block: bounds memory for large datasets at full resolution
_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32)[None]
# Immerkær's mask is the difference of two Laplacians: it cancels image structure up to second order and keeps noise.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)[None]


def _gray(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)
    return x.mean(axis=1) if x.ndim == 4 else x


def _noise_sigma(gray: np.ndarray) -> np.ndarray:
    """Immerkær (1996), "Fast noise variance estimation": sigma = sqrt(pi/2) / (6 (W-2)(H-2)) · sum |I * N|.

    Written here because it is three lines, while scikit-image's estimate_sigma (a wavelet estimator) would be a
    new dependency for one number per image.
    """
    response = np.abs(ndimage.correlate(gray, _IMMERKAER, mode="reflect"))[:, 1:-1, 1:-1]
    h, w = gray.shape[1:]
    return np.sqrt(np.pi / 2.0) * response.sum(axis=(1, 2)) / (6.0 * (w - 2) * (h - 2))


def image_statistics(images: np.ndarray) -> np.ndarray:
    """N × len(STATS) per-image statistics, columns in STATS order (colour images are averaged to gray first)."""
    rows = []
    for start in range(0, len(images), _CHUNK):
        gray = _gray(images[start:start + _CHUNK])
        flat = gray.reshape(len(gray), -1)
        p01, p50, p99 = np.percentile(flat, [1, 50, 99], axis=1)
        laplacian = ndimage.correlate(gray, _LAPLACIAN, mode="reflect")
        rows.append(np.column_stack([flat.mean(axis=1), flat.std(axis=1), p01, p50, p99,
                                     laplacian.reshape(len(gray), -1).var(axis=1), _noise_sigma(gray)]))
    return np.concatenate(rows) if rows else np.empty((0, len(STATS)))


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"n": 0}
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def _compare(ref: np.ndarray, test: np.ndarray) -> dict:
    res = stats.mannwhitneyu(test, ref, alternative="two-sided")
    return {"ref_median": float(np.median(ref)), "test_median": float(np.median(test)),
            "difference": float(np.median(test) - np.median(ref)),
            # P(test image > train+val image): 0.5 is no difference (common-language effect size)
            "auc": float(res.statistic / (len(ref) * len(test))), "p": float(res.pvalue)}


def pixel_audit(data: ImageDataset, cfg: AuditConfig, values: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Per split and class summaries and within-class tests. Returns the results and the per-image table (`values`:
    image_statistics already computed by the audit's streaming pass)."""
    values = image_statistics(data.images) if values is None else values
    names = list(STATS)
    summary = {s: {c: {stat: _summary(values[(data.splits == s) & (data.labels == k), j])
                       for j, stat in enumerate(names)}
                   for k, c in enumerate(data.class_names)}
               for s in SPLITS if (data.splits == s).any()}
    ref, target = domain_masks(data)
    tests: dict[str, dict] = {}
    for k, c in enumerate(data.class_names):
        r, t = ref & (data.labels == k), target & (data.labels == k)
        problem = size_problem(int(r.sum()), int(t.sum()), f"class '{c}'")
        tests[c] = skipped(problem) if problem else {
            "status": "ok", **{stat: _compare(values[r, j], values[t, j]) for j, stat in enumerate(names)}}
    tested = [c for c, r in tests.items() if r["status"] == "ok"]
    m = len(tested) * len(names)
    differs = []
    for c in tested:
        for stat in names:
            entry = tests[c][stat]
            entry["p_adjusted"] = min(1.0, m * entry["p"])  # Bonferroni over all tests
            entry["reject"] = bool(entry["p_adjusted"] <= cfg.alpha)
            if entry["reject"]:
                differs.append({"class": c, "stat": stat, **entry})
    differs.sort(key=lambda d: -abs(d["auc"] - 0.5))
    result = {"status": "ok", "stats": STATS, "summary": summary, "tests": tests, "tests_count": m,
              "differs": differs}
    return result, values
