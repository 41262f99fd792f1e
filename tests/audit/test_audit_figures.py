"""The audit's thumbnail figures name each image as the report's lists and audit.json do: its split and its
position within that split ("test #3"), not its row in the dataset."""

from __future__ import annotations

import numpy as np
import pytest

import xferlab.audit.figures as figures
from xferlab.data.dataset import ImageDataset

SPLITS = np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 4)


@pytest.fixture
def titles(monkeypatch) -> list[str]:
    shown, real = [], figures._show

    def record(ax, image, title):
        shown.append(title)
        real(ax, image, title)

    monkeypatch.setattr(figures, "_show", record)
    return shown


def _data() -> ImageDataset:
    images = np.random.default_rng(0).integers(0, 255, size=(len(SPLITS), 8, 8), dtype=np.uint8)
    return ImageDataset(images, np.arange(len(SPLITS)) % 2, ["normal", "pneumonia"], SPLITS, source="test")


def test_test_like_thumbnails_number_images_within_their_split(titles, tmp_path):
    scores = np.linspace(0.1, 0.9, len(SPLITS))
    figures.test_like_figure(_data(), scores, 4, tmp_path / "test_like.png")
    test_titles = sorted(t.split("\n")[0] for t in titles if t.startswith("test"))
    assert test_titles == ["test #0", "test #1", "test #2", "test #3"]  # rows 8-11 of the dataset


def test_leakage_thumbnails_number_images_within_their_split(titles, tmp_path):
    leakage = {"exact": {"cross_split": []}, "groups": {},
               "phash": {"pairs": [{"query": {"index": 9}, "match": {"index": 2}, "distance": 3.0}]}}
    figures.leakage_figure(_data(), leakage, 10, tmp_path / "leakage.png")
    assert [t.split("\n")[0] for t in titles] == ["test #1", "train #2"]
