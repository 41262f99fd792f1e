"""Pixel statistics (xferlab.audit.pixels): known values on constructed images, and the tests on the phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xferlab.audit.pixels import STATS, image_statistics, pixel_audit
from xferlab.config import AuditConfig

COL = {name: j for j, name in enumerate(STATS)}


def test_constant_image_has_no_spread_sharpness_or_noise():
    values = image_statistics(np.full((2, 16, 16), 100, np.uint8))
    assert values[:, COL["mean"]] == pytest.approx([100, 100])
    for stat in ("std", "sharpness", "noise"):
        assert values[:, COL[stat]] == pytest.approx([0, 0])
    assert values[0, COL["p01"]] == values[0, COL["p50"]] == values[0, COL["p99"]] == 100


def test_noise_estimate_recovers_the_added_noise():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128]
    smooth = 60 + 0.5 * x + 0.3 * y  # a ramp: no second-order structure for the estimator to mistake for noise
    for sigma in (3.0, 8.0):
        noisy = np.clip(smooth + rng.normal(0, sigma, (4, 128, 128)), 0, 255).round().astype(np.uint8)
        estimate = image_statistics(noisy)[:, COL["noise"]]
        assert estimate == pytest.approx(sigma, rel=0.1)


def test_blur_lowers_sharpness_and_colour_is_averaged_to_gray():
    rng = np.random.default_rng(1)
    sharp = rng.integers(0, 256, (3, 32, 32)).astype(np.uint8)
    blurred = ndimage.gaussian_filter(sharp.astype(float), (0, 1.5, 1.5)).round().astype(np.uint8)
    s = image_statistics(sharp)[:, COL["sharpness"]]
    b = image_statistics(blurred)[:, COL["sharpness"]]
    assert (b < s / 5).all()
    rgb = np.repeat(sharp[:, None], 3, axis=1)
    np.testing.assert_allclose(image_statistics(rgb), image_statistics(sharp), rtol=1e-5)


def test_acquisition_shift_shows_in_the_pixels_and_a_clean_split_does_not(phantom_embeddings):
    shifted, _ = phantom_embeddings["shifted"]
    result, values = pixel_audit(shifted, AuditConfig())
    assert values.shape == (len(shifted.labels), len(STATS))
    assert result["tests_count"] == 2 * len(STATS)
    changed = {(d["class"], d["stat"]) for d in result["differs"]}
    for cls in shifted.class_names:
        # the external site is noisier and brighter in the shadows (phantoms._SITES)
        assert (cls, "noise") in changed and (cls, "p01") in changed
        assert result["tests"][cls]["noise"]["difference"] > 0
    assert set(result["summary"]) == {"train", "val", "test"}
    clean, _ = phantom_embeddings["clean"]
    result, _ = pixel_audit(clean, AuditConfig())
    assert result["differs"] == []


def test_with_patient_ids_the_pixel_tests_count_patients(single_blas_thread):
    """A strong patient effect and no shift (patients split at random): testing images as if independent rejects
    often; testing each patient's mean keeps the Bonferroni-adjusted tests at alpha."""
    from xferlab.data.dataset import ImageDataset

    rng = np.random.default_rng(7)
    patients, k, reps = 80, 6, 40
    rejections = {"image": 0, "patient": 0}
    for _ in range(reps):
        labels = np.repeat(np.arange(patients) % 2, k)
        groups = np.repeat(np.arange(patients).astype(str), k)
        values = np.repeat(rng.normal(0, 3, (patients, len(STATS))), k, axis=0) + rng.normal(size=(patients * k,
                                                                                                   len(STATS)))
        side = np.where(rng.random(patients) < 0.3, "test", "train").astype(object)
        for c in (0, 1):  # the dataset needs a val split with both classes
            side[np.flatnonzero((side == "train") & (np.arange(patients) % 2 == c))[0]] = "val"
        splits = np.repeat(side, k)
        for unit, g in (("image", None), ("patient", groups)):
            data = ImageDataset(images=np.zeros((len(labels), 4, 4), np.uint8), labels=labels,
                                class_names=["normal", "pneumonia"], splits=splits, groups=g)
            result, _ = pixel_audit(data, AuditConfig(), values)
            assert result["unit"] == unit
            rejections[unit] += bool(result["differs"])
    assert rejections["patient"] <= 0.05 * reps + 2 * np.sqrt(0.05 * 0.95 * reps), rejections
    assert rejections["image"] >= reps // 2, rejections
