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


def write_patient_folder(root: Path, patients: int = 24, images_per_patient: int = 3, test_patients: int = 8,
                         planted: int = 0, size: int = 32, seed: int = 0) -> tuple[Path, list[str]]:
    """Phantoms with several images per patient as PNG files named the pediatric pneumonia set's way (normal:
    IM-0007-0002.png, pneumonia: person7_bacteria_2.png), in the folder layout train/<class>/, test/<class>/ with
    patients split between them, so `--groups kermany` finds the patients. The first image of each of the last
    `planted` train patients of each class lies in test instead (a patient leak, no copied pixels); returns the
    folder and those patients' ids."""
    from PIL import Image

    from xferlab.data.phantoms import generate_phantoms

    n = patients * images_per_patient
    arrays = generate_phantoms(root.parent / f"{root.name}-npy", size=size, n_per_class=n, n_test_per_class=1,
                               images_per_patient=images_per_patient, seed=seed)
    leaked = []
    for name, pattern in (("normal", "IM-{p:04d}-{k:04d}.png"), ("pneumonia", "person{p}_bacteria_{k}.png")):
        images = np.load(arrays / f"{name}.npy")
        for i, pixels in enumerate(images):
            p, k = i // images_per_patient, i % images_per_patient
            planted_here = patients - test_patients - planted <= p < patients - test_patients
            split = "test" if p >= patients - test_patients or (planted_here and k == 0) else "train"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / pattern.format(p=p, k=k))
            if planted_here and k == 0:
                leaked.append(pattern.format(p=p, k=0).split("_")[0].rsplit("-", 1)[0])
    return root, sorted(leaked)
