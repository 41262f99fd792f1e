"""The shortcut check: does the model's evidence sit where no diagnosis is (the border band, outside the region of
interest), and does removing it there change the predictions more than removing a random patch there would?

For each image, the zone is the border band less, when the data has one, the region of interest.
The salient window is the square of `window_fraction` of the image side, centred in the zone, that holds the most
Grad-CAM mass; `n_random` more windows of the same size are centred at random zone pixels. Each window is filled with
the median of the image's zone (the background a burned-in mark sits on), and the change of the predicted class's
probability is measured. Null hypothesis: the salient window is no more important than a random window of the same
area in the same zone, so its rank among the K + 1 windows (ties broken at random) is uniform; the ranks of N images,
each scaled to (0, 1), sum to an Irwin-Hall variable, and the one-sided p-value comes from its normal approximation.
A shortcut is named when the p-value is below alpha and the maps put more of their mass in the zone than its area
(evidence concentrates there). The false-alarm rate and power are measured in benchmarks/shortcut_check.py; on
unshifted phantoms they came out above the stated bound (README: 0.141 over 142 draws at alpha 0.05), so the null
(a sound model uses nothing in the zone) does not hold there yet and the alarm is a lead to look at, not a finding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.stats import norm

from xferlab.explain.regions import border_mask

WINDOW_FRACTION = 0.25  # window side / image side: 1/16 of the area, larger than a burned-in marker (0.16 of a side)
N_RANDOM = 8  # random windows per image: ranks 0..8, fine enough once summed over tens of images


@dataclass
class ShortcutResult:
    p_value: float
    alarm: bool  # a likely shortcut: p < alpha and zone share > zone area
    zone_share: float  # mean share of CAM mass in the zone
    zone_area: float  # mean share of the image the zone covers (what a uniform map would put there)
    salient_change: float  # mean |Δ p(predicted class)| occluding the salient window
    random_change: float  # the same for the random windows
    n_images: int
    n_random: int
    alpha: float

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def zones(shape: tuple[int, int, int], roi: np.ndarray | None = None) -> np.ndarray:
    """N×H×W: the border band, less the region of interest where one is given (`roi`, N×H×W bool). Outside the lungs
    but inside the body lie the heart, mediastinum and diaphragm, which a sound model may read; the band outside the
    lungs holds only air, chest wall and what was burned in."""
    n, h, w = shape
    zone = np.broadcast_to(border_mask(h, w), (n, h, w)).copy()
    if roi is not None:
        zone &= ~roi
    return zone


def _window(side: int, cy: int, cx: int, h: int, w: int) -> tuple[slice, slice]:
    y0 = int(np.clip(cy - side // 2, 0, h - side))
    x0 = int(np.clip(cx - side // 2, 0, w - side))
    return slice(y0, y0 + side), slice(x0, x0 + side)


def _windows(cams: np.ndarray, zone: np.ndarray, side: int, n_random: int, rng: np.random.Generator) -> np.ndarray:
    """N×(1+K)×2 window centres: the most CAM mass among centres in the zone, then K random zone centres."""
    n, h, w = cams.shape
    centres = np.zeros((n, 1 + n_random, 2), dtype=np.int64)
    for i in range(n):
        mass = uniform_filter(cams[i].astype(np.float64), size=side, mode="constant")
        ys, xs = np.nonzero(zone[i])
        best = int(np.argmax(mass[ys, xs]))
        centres[i, 0] = ys[best], xs[best]
        pick = rng.integers(0, len(ys), size=n_random)
        centres[i, 1:, 0], centres[i, 1:, 1] = ys[pick], xs[pick]
    return centres


def _occluded(images: np.ndarray, zone: np.ndarray, centres: np.ndarray, side: int) -> np.ndarray:
    """(N·(1+K))×H×W uint8: each image with one window filled with the median of its zone, the background a burned-in
    mark sits on (a blur would leave a bright marker a bright blob)."""
    n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    out = np.repeat(images[:, None], centres.shape[1], axis=1).copy()
    for i in range(n):
        fill = np.median(images[i][zone[i]])
        for j, (cy, cx) in enumerate(centres[i]):
            ys, xs = _window(side, int(cy), int(cx), h, w)
            out[i, j, ys, xs] = fill
    return out.reshape(-1, h, w)


def rank_p_value(changes: np.ndarray, rng: np.random.Generator) -> float:
    """One-sided p-value that column 0 of N×(1+K) `changes` ranks higher than exchangeable columns would."""
    n, k1 = changes.shape
    jitter = rng.random(changes.shape) * 1e-9  # random tie-breaking: equal changes (often all zero) rank at random
    ranks = (changes + jitter).argsort(axis=1).argsort(axis=1)[:, 0]  # 0..K
    u = (ranks + rng.random(n)) / k1  # uniform on (0, 1) under the null
    z = (u.sum() - n / 2) / np.sqrt(n / 12)
    return float(norm.sf(z))


def shortcut_check(images: np.ndarray, cams: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                   roi: np.ndarray | None = None, alpha: float = 0.05, n_random: int = N_RANDOM,
                   seed: int = 0) -> ShortcutResult:
    """The check on N uint8 images (N×H×W) with their Grad-CAM maps; `predict` maps uint8 images to probabilities."""
    n, h, w = images.shape
    rng = np.random.default_rng(seed)
    zone = zones((n, h, w), roi)
    side = max(2, round(WINDOW_FRACTION * min(h, w)))
    centres = _windows(cams, zone, side, n_random, rng)
    base = predict(images)
    cls = base.argmax(1)
    probs = predict(_occluded(images, zone, centres, side)).reshape(n, 1 + n_random, -1)
    changes = np.abs(probs[np.arange(n), :, cls] - base[np.arange(n), cls][:, None])
    p = rank_p_value(changes, rng)
    total = cams.sum(axis=(1, 2))
    share = float(np.mean(np.where(total > 0, (cams * zone).sum(axis=(1, 2)) / np.maximum(total, 1e-12), 0.0)))
    area = float(zone.mean())
    return ShortcutResult(p, bool(p < alpha and share > area), share, area, float(changes[:, 0].mean()),
                          float(changes[:, 1:].mean()), n, n_random, alpha)
