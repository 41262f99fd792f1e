"""explain/run.py: what an INPUT file becomes before Grad-CAM, checked against the audit's view of the same image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xferlab.audit.leakage import perceptual_hashes
from xferlab.audit.pixels import STATS, image_statistics
from xferlab.explain.run import _read_input


def test_a_colour_input_is_made_gray_by_the_audits_rule(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    colour[0] = 255 - colour[2]  # far from gray, so the channel mean and a luma weighting disagree
    Image.fromarray(colour.transpose(1, 2, 0), "RGB").save(tmp_path / "c.png")

    explained = _read_input(tmp_path / "c.png", (32, 32))[0]

    channel_mean = np.round(colour.astype(np.float64).mean(axis=0)).astype(np.uint8)
    luma = np.round(np.tensordot((0.299, 0.587, 0.114), colour.astype(np.float64), axes=1)).astype(np.uint8)
    assert not np.array_equal(channel_mean, luma)
    np.testing.assert_array_equal(explained, channel_mean)
    # the audit sees the colour image as that same gray image: its hashes and its pixel statistics
    np.testing.assert_array_equal(perceptual_hashes(colour[None]), perceptual_hashes(explained[None]))
    mean = list(STATS).index("mean")
    assert image_statistics(colour[None])[0, mean] == pytest.approx(colour.astype(np.float64).mean(), rel=1e-6)
    assert image_statistics(colour[None])[0, mean] != pytest.approx(luma.astype(np.float64).mean(), rel=1e-3)
