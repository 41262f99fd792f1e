"""Shared fixtures: every test runs offline with an empty, private TORCH_HOME, and tiny generated datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path_factory, monkeypatch) -> Path:
    """No test may download weights or read the user's cache: an empty TORCH_HOME and the offline switch."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("XFERLAB_OFFLINE", "1")
    return home


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


@pytest.fixture
def tiny_npy(tmp_path) -> Path:
    return write_tiny_npy(tmp_path / "tiny")
