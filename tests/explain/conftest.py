"""Explain fixtures: tiny shortcut phantoms (32 px) and one run trained on them, made once per module that asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from xferlab.cli import main
from xferlab.data.phantoms import generate_phantoms
from xferlab.engine.accel import num_threads


@pytest.fixture(scope="session")
def shortcut_phantoms(tmp_path_factory) -> Path:
    return generate_phantoms(tmp_path_factory.mktemp("explain") / "phantoms", size=32, n_per_class=60,
                             n_test_per_class=6, shift="shortcut", seed=0)


@pytest.fixture(scope="session")
def tiny_run(shortcut_phantoms: Path, tmp_path_factory) -> Path:
    """ResNet-18 from random weights, head trained one epoch on frozen features: a real run folder, quickly."""
    out = tmp_path_factory.mktemp("explain_run") / "run"
    with num_threads(1):
        assert main(["train", "--data", str(shortcut_phantoms), "--backbone", "resnet18", "--weights", "none",
                     "--regime", "frozen", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                     "--out", str(out)]) == 0
    return out
