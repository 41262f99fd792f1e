"""One tiny trained run shared by every test of xferlab.use (trained once per session: 32 px, random weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinydata import write_tiny_npy
from xferlab.config import DataConfig, TrainConfig
from xferlab.engine.run import train


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_npy(tmp_path_factory.mktemp("use") / "tiny", n=20, n_test=8, size=32)


@pytest.fixture(scope="session")
def tiny_run(tiny_data) -> Path:
    """A frozen ResNet-18 (random backbone weights, trained head: a fine-tuned one costs 5x the CPU) on the tiny npy
    data; model.pt still holds every weight, so loading it is tested whole."""
    out = tiny_data.parent / "run"
    cfg = TrainConfig(data=DataConfig(path=tiny_data), backbone="resnet18", weights="none", regime="frozen",
                      epochs=2, batch_size=8, device="cpu")
    train(cfg, out, progress=False)
    return out
