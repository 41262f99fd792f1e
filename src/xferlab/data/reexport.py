"""What re-exporting an image does to it: a small crop or rescale, JPEG re-encoding, a brightness/contrast change,
mild noise. The audit's near-copy check is measured against these (tests/audit, benchmarks/audit_scale.py), so the
test and the benchmark plant the same alterations."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def crop(im: np.ndarray, frac: float) -> np.ndarray:
    """Crop `frac` of the side (at least one pixel, all from the bottom-right: the largest displacement) and
    re-export at the original size."""
    h, w = im.shape
    k = max(1, round(frac * h))
    return np.asarray(Image.fromarray(im[:h - k, :w - k]).resize((w, h), Image.BILINEAR))


def rescale(im: np.ndarray, frac: float) -> np.ndarray:
    """Enlarge by `frac` and keep the top-left of the original size."""
    h, w = im.shape
    return np.asarray(Image.fromarray(im).resize((round(w * (1 + frac)), round(h * (1 + frac))), Image.BILINEAR)
                      .crop((0, 0, w, h)))


def jpeg(im: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def brightness_contrast(im: np.ndarray) -> np.ndarray:
    """Contrast ×1.1 and brightness +8 grey levels."""
    return np.clip(im * 1.1 + 8, 0, 255).astype(np.uint8)


def noise(im: np.ndarray, rng: np.random.Generator, sd: float = 3.0) -> np.ndarray:
    return np.clip(im + rng.normal(0, sd, im.shape), 0, 255).astype(np.uint8)
