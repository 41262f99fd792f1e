"""The shortcut check: does the model's strongest evidence sit where no diagnosis is (the border band, outside the
region of interest) rather than where a diagnosis is (inside the region of interest)?

For each image, the zone is the border band less, when the data has one, the region of interest; the reference
region is the region of interest, or without one the centre (everything inside the border band, where windows must
lie wholly inside it: centred at its edge, a window would cover the band too). In each region the `n_windows`
squares of `window_fraction` of the image side, centred in the region, that hold the most Grad-CAM mass (each centre
at least half a window from the others) are occluded one at a time, each filled with the median of its own region
(the background a burned-in mark sits on; the lung's own grey), and the largest change of the predicted class's
probability in each region is kept. Taking the largest of as many windows on both sides keeps the comparison even
and lets a coarse map miss the exact spot (at 32 px a 4×4 map) as long as a window near it is among the few.
Null hypothesis: evidence in the zone matters no more than the strongest evidence where a diagnosis is, so the
per-image differences (zone minus reference) are centred on zero or below; the one-sided Wilcoxon signed-rank test
over images (scipy.stats.wilcoxon, alternative 'greater') gives the p-value. A sound model reads the lungs at least
as much as the chest wall or the air around them; a model that learnt a burned-in marker loses more when the marker
goes. A shortcut is named when the p-value is below alpha. The share of the maps' mass in the zone, against the zone's
area, is reported beside it but no longer gates the alarm: occlusion is the causal evidence, a coarse map is not,
and on the phantoms the gate removed no false alarm while it cost shortcut draws (benchmarks/shortcut_check.py prints
both rates). False-alarm rate and power on phantoms: benchmarks/shortcut_check.py (docs/explanations.md).

The first design compared the zone's salient window with random windows in the zone; its null failed for sound
models (false alarms 0.141 at alpha 0.05): the zone holds the chest wall and body outline, which a sound model uses,
and random zone windows mostly fall on air, so the salient one always won.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.stats import wilcoxon

from xferlab.explain.regions import border_mask, border_widths

WINDOW_FRACTION = 0.25  # window side / image side: 1/16 of the area, larger than a burned-in marker (0.16 of a side)
# Salient windows per region and image. At 32 px the map is 4×4 and its most salient zone window often misses the
# marker; the largest change of a few windows finds it more often. Eight occlusions per image (4 per region), about
# the first design's nine (1 + 8).
N_WINDOWS = 4


@dataclass
class ShortcutResult:
    p_value: float  # one-sided Wilcoxon signed-rank test of zone change minus reference change
    alarm: bool  # a likely shortcut: p < alpha
    zone_share: float  # mean share of CAM mass in the zone (context: where the maps point)
    zone_area: float  # mean share of the image the zone covers (what a uniform map would put there)
    zone_change: float  # mean over images of the largest |Δ p(predicted class)| occluding a salient zone window
    roi_change: float  # the same for the reference region (region of interest, or the centre without one)
    zone_wins: float  # share of images whose zone change exceeds their reference change
    n_images: int
    n_windows: int  # salient windows per region and image
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
        zone &= ~roi.astype(bool)
    return zone


def references(shape: tuple[int, int, int], roi: np.ndarray | None = None, side: int = 0) -> np.ndarray:
    """N×H×W: where a diagnosis is, to compare the zone with: the region of interest, or without one (or where an
    image's is empty) the centre, everything inside the border band. With `side`, the centre is cut to the centres of
    `side`-windows that lie wholly inside it: a window centred at the band's inner edge would cover the band itself
    (half a window is as wide as the band), and with it a mark burned there. A region of interest is kept whole: it
    is the lungs, whose windows reach little of the band's corners."""
    n, h, w = shape
    centre = ~border_mask(h, w)
    if side:
        by, bx = border_widths(h, w)
        inside = np.zeros((h, w), dtype=bool)
        inside[by + side // 2:h - by - side + side // 2 + 1, bx + side // 2:w - bx - side + side // 2 + 1] = True
        centre = inside if inside.any() else centre
    centre = np.broadcast_to(centre, (n, h, w))
    if roi is None:
        return centre.copy()
    ref = roi.astype(bool).copy()
    empty = ~ref.any(axis=(1, 2))
    ref[empty] = centre[empty]
    return ref


def _window(side: int, cy: int, cx: int, h: int, w: int) -> tuple[slice, slice]:
    y0 = int(np.clip(cy - side // 2, 0, h - side))
    x0 = int(np.clip(cx - side // 2, 0, w - side))
    return slice(y0, y0 + side), slice(x0, x0 + side)


def salient_centres(cam: np.ndarray, region: np.ndarray, side: int, k: int) -> list[tuple[int, int]]:
    """Up to `k` window centres in `region` (H×W bool) holding the most CAM mass, greedily, each at least half a window
    (Chebyshev) from those before; when the region is too small for that, the next centres by mass. [] for an empty
    region."""
    mass = uniform_filter(cam.astype(np.float64), size=side, mode="constant")
    ys, xs = np.nonzero(region)
    order = np.argsort(-mass[ys, xs], kind="stable")
    picked: list[tuple[int, int]] = []
    for j in order:
        y, x = int(ys[j]), int(xs[j])
        if all(max(abs(y - py), abs(x - px)) >= side // 2 for py, px in picked):
            picked.append((y, x))
            if len(picked) == k:
                return picked
    rest = [(int(ys[j]), int(xs[j])) for j in order if (int(ys[j]), int(xs[j])) not in picked]
    return picked + rest[:k - len(picked)]


def _occlusions(image: np.ndarray, region: np.ndarray, centres: list[tuple[int, int]], side: int) -> np.ndarray:
    """len(centres)×H×W: the image with each window in turn filled with the median of `region` (a blur would leave a
    bright marker a bright blob)."""
    h, w = image.shape
    out = np.repeat(image[None], len(centres), axis=0)
    fill = np.median(image[region])
    for j, (cy, cx) in enumerate(centres):
        ys, xs = _window(side, cy, cx, h, w)
        out[j, ys, xs] = fill
    return out


def largest_changes(images: np.ndarray, cams: np.ndarray, regions: np.ndarray,
                    predict: Callable[[np.ndarray], np.ndarray], base: np.ndarray, n_windows: int,
                    side: int) -> np.ndarray:
    """N floats: per image, the largest |Δ p(class)| of occluding one of the region's `n_windows` most salient windows
    (0 where the region is empty); `base` is the N×C probabilities of the unoccluded images."""
    n = len(images)
    stacks, owner = [], []
    for i in range(n):
        centres = salient_centres(cams[i], regions[i], side, n_windows)
        if centres:
            stacks.append(_occlusions(images[i], regions[i], centres, side))
            owner.extend([i] * len(centres))
    changes = np.zeros(n)
    if stacks:
        owner_idx = np.asarray(owner)
        cls = base.argmax(1)
        probs = predict(np.concatenate(stacks))
        delta = np.abs(probs[np.arange(len(owner_idx)), cls[owner_idx]] - base[owner_idx, cls[owner_idx]])
        np.maximum.at(changes, owner_idx, delta)
    return changes


def paired_p_value(zone_changes: np.ndarray, roi_changes: np.ndarray) -> float:
    """One-sided p-value that zone changes exceed the paired reference changes (Wilcoxon signed-rank, zero differences
    dropped; 1.0 when every difference is zero: nothing to tell the regions apart)."""
    diff = np.asarray(zone_changes, dtype=np.float64) - np.asarray(roi_changes, dtype=np.float64)
    if not np.any(diff != 0):
        return 1.0
    return float(wilcoxon(diff, alternative="greater", zero_method="wilcox").pvalue)


def shortcut_check(images: np.ndarray, cams: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                   roi: np.ndarray | None = None, alpha: float = 0.05, n_windows: int = N_WINDOWS) -> ShortcutResult:
    """The check on N uint8 images (N×H×W) with their Grad-CAM maps; `predict` maps uint8 images to probabilities."""
    n, h, w = images.shape
    zone = zones((n, h, w), roi)
    side = max(2, round(WINDOW_FRACTION * min(h, w)))
    ref = references((n, h, w), roi, side)
    base = predict(images)
    zone_changes = largest_changes(images, cams, zone, predict, base, n_windows, side)
    roi_changes = largest_changes(images, cams, ref, predict, base, n_windows, side)
    p = paired_p_value(zone_changes, roi_changes)
    total = cams.sum(axis=(1, 2))
    share = float(np.mean(np.where(total > 0, (cams * zone).sum(axis=(1, 2)) / np.maximum(total, 1e-12), 0.0)))
    area = float(zone.mean())
    return ShortcutResult(p, bool(p < alpha), share, area, float(zone_changes.mean()),
                          float(roi_changes.mean()), float(np.mean(zone_changes > roi_changes)), n, n_windows, alpha)
