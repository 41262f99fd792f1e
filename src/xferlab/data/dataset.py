"""The one form every data source produces: uint8 images (in memory, or streamed from files), integer labels, class
names, groups and splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from xferlab.artifacts import SPLITS  # noqa: F401  (the one tuple of split names, re-exported)
from xferlab.errors import XferlabError

if TYPE_CHECKING:
    from xferlab.data.streaming import FileImages


@dataclass
class ImageDataset:
    """Images stay uint8 (N×H×W grayscale or N×C×H×W) until a batch is made on the device.

    `splits` holds 'train', 'val' or 'test' for every image; `groups` (patient ids) is optional and is what
    group-aware splitting and the leakage audit key on. `images` is a numpy array, or FileImages (the folder and csv
    sources over data.memory_budget_mb) with the same shape, dtype and indexing, decoded from disk when indexed.
    `meta` holds what the source knows besides: its format and, for the file sources (folder, csv), `files`, each
    image's file in dataset order, and `skipped`, the unreadable files left out.
    """

    images: np.ndarray | FileImages
    labels: np.ndarray
    class_names: list[str]
    splits: np.ndarray
    groups: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.splits = np.asarray(self.splits, dtype=object)
        if self.groups is not None:
            self.groups = np.asarray(self.groups).astype(str)
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def streamed(self) -> bool:
        """True when the images are FileImages, decoded from disk per batch, not one array in memory."""
        # Checked against ndarray so that asking does not import torch (xferlab.data.streaming does).
        return not isinstance(self.images, np.ndarray)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.images.shape[-2:])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split (a view-free copy: fancy indexing; streamed images are decoded here, so
        for those use images.subset(indices(split)) to stay on disk)."""
        idx = self.indices(split)
        return self.images[idx], self.labels[idx]

    def counts(self) -> dict[str, list[int]]:
        """Images per class in each split present."""
        return {
            s: np.bincount(self.labels[self.splits == s], minlength=self.num_classes).tolist()
            for s in SPLITS
            if (self.splits == s).any()
        }

    def validate(self) -> None:
        """Check the invariants every consumer relies on; raise XferlabError naming what to fix."""
        where = self.source or "dataset"
        if self.images.dtype != np.uint8:
            raise XferlabError(f"{where}: images must be uint8 by now, got {self.images.dtype} (a source bug)")
        if self.images.ndim not in (3, 4):
            raise XferlabError(f"{where}: images must be N×H×W or N×C×H×W, got shape {self.images.shape}")
        if self.images.ndim == 4 and self.images.shape[1] not in (1, 3):
            raise XferlabError(f"{where}: images need 1 or 3 channels, got {self.images.shape[1]}")
        n = len(self.images)
        if len(self.labels) != n or len(self.splits) != n or (self.groups is not None and len(self.groups) != n):
            raise XferlabError(f"{where}: images, labels, splits and groups must have the same length ({n})")
        folded = [name.strip().casefold() for name in self.class_names]  # 'NORMAL' and 'normal' are one class
        if len(set(folded)) != len(folded):
            raise XferlabError(f"{where}: duplicated class names {self.class_names} (case and spaces ignored); "
                               "give every class a unique name")
        if n and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise XferlabError(
                f"{where}: labels must lie in 0..{self.num_classes - 1} for classes {self.class_names}, "
                f"got {self.labels.min()}..{self.labels.max()}"
            )
        bad = set(np.unique(self.splits)) - set(SPLITS)
        if bad:
            raise XferlabError(f"{where}: unknown split names {sorted(bad)}; use train, val or test")
        for s in ("train", "val"):
            if not (self.splits == s).any():
                raise XferlabError(f"{where}: the '{s}' split is empty; provide it or let xferlab draw it from train")
        for s, per_class in self.counts().items():
            missing = [self.class_names[c] for c, k in enumerate(per_class) if k == 0]
            if missing:
                raise XferlabError(
                    f"{where}: class {missing} has no images in the '{s}' split; add images or re-split the data"
                )
