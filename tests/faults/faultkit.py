"""Shared pieces of the fault suites (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TRAIN = ["--weights", "none", "--epochs", "1", "--device", "cpu", "--num-threads", "1"]


def tree(path: Path) -> set[str]:
    """Every path under `path`, relative (hidden staging, lock and temporary files included)."""
    return {str(p.relative_to(path)) for p in Path(path).rglob("*")}


def png_folder(root: Path, size: int = 16, n: int = 4, classes: tuple[str, ...] = ("a", "b"), seed: int = 0) -> Path:
    """train/<class>/<i>.png and test/<class>/<i>.png of random gray pixels."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in classes:
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(d / f"{i}.png")
    return root
