"""Tiny generated datasets for tests (importable from any test module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_npy(root: Path, n: int = 20, n_test: int = 8, size: int = 32, seed: int = 0,
                   classes: tuple[str, ...] = ("normal", "pneumonia")) -> Path:
    """A learnable npy-layout dataset: class k has a bright square in a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(classes):
        for prefix, count in (("", n), ("test_", n_test)):
            x = rng.integers(0, 80, size=(count, size, size)).astype(np.uint8)
            q = size // 4
            x[:, q * k: q * (k + 1), q: 2 * q] = 220
            np.save(root / f"{prefix}{name}.npy", x)
    return root


def write_tiny_folder(root: Path, **kw) -> Path:
    """The same images as write_tiny_npy, as PNG files in the folder layout train/<class>/, test/<class>/."""
    from PIL import Image

    arrays = write_tiny_npy(root.parent / f"{root.name}-npy", **kw)
    for npy in sorted(arrays.glob("*.npy")):
        split, name = ("test", npy.stem[5:]) if npy.stem.startswith("test_") else ("train", npy.stem)
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(np.load(npy)):
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root
