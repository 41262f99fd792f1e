"""Test-time BatchNorm (--test-bn adapt): statistics from the evaluated images, plain numbers untouched, refused
below its minimum image count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xferlab.backbones.registry import create_model
from xferlab.cli import main
from xferlab.config import TrainConfig
from xferlab.data.batches import Preprocess, as_tensor
from xferlab.data.config import DataConfig
from xferlab.data.phantoms import generate_phantoms
from xferlab.engine.accel import num_threads
from xferlab.engine.run import train
from xferlab.engine.testtime_bn import adapted_model
from xferlab.errors import XferlabError


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    return generate_phantoms(tmp_path_factory.mktemp("tbn") / "p", size=32, n_per_class=40, n_test_per_class=12,
                             shift="acquisition", seed=0)


def test_adapted_copy_carries_the_images_statistics(shifted: Path) -> None:
    import xferlab.backbones.zoo  # noqa: F401

    model = create_model("resnet18", 2, "none", image_size=32).eval()
    before = model.body.bn1.running_mean.clone()
    images = as_tensor(np.load(shifted / "test_normal.npy"))
    preprocess = Preprocess(model.spec.mean, model.spec.std)
    with num_threads(1):
        adapted = adapted_model(model, images, preprocess, batch_size=12, min_images=8)
        with torch.no_grad():  # the first BN's new mean is the mean of conv1's output over those images
            expected = model.body.conv1(preprocess(images)).mean(dim=(0, 2, 3))
    assert torch.allclose(adapted.body.bn1.running_mean, expected, atol=1e-4)
    assert torch.equal(model.body.bn1.running_mean, before)  # the original is untouched
    assert not adapted.training
    with pytest.raises(XferlabError, match="12 images, fewer than the 13"):
        adapted_model(model, images, preprocess, batch_size=12, min_images=13)


def _cfg(data: Path, **kw) -> TrainConfig:
    return TrainConfig(data=DataConfig(path=data), backbone="resnet18", weights="none", regime="finetune", epochs=1,
                       batch_size=16, device="cpu", **kw)


def test_run_reports_test_bn_beside_unchanged_plain_numbers(shifted: Path, tmp_path: Path) -> None:
    with num_threads(1):
        plain = train(_cfg(shifted), tmp_path / "plain", progress=False).metrics
        adapted = train(_cfg(shifted, test_bn="adapt", test_bn_min_images=16), tmp_path / "tbn", progress=False).metrics
    assert "test_bn" not in plain
    record = json.loads((tmp_path / "tbn" / "metrics.json").read_text())["test_bn"]
    assert record["transductive"] is True and record["mode"] == "adapt" and record["min_images"] == 16
    assert set(record) >= {"val", "test"} and 0 <= record["test"]["accuracy"] <= 1
    for split in ("val", "test"):  # the plain numbers are the run's, whatever test_bn does
        assert adapted[split] == plain[split]
    # the adapted numbers come from other statistics: the probabilities differ, so some metric does
    assert record["test"] != adapted["test"] or record["val"] != adapted["val"]


def test_refused_below_minimum_before_training(shifted: Path, tmp_path: Path, capsys) -> None:
    status = main(["train", "--data", str(shifted), "--backbone", "resnet18", "--weights", "none", "--epochs", "1",
                   "--test-bn", "adapt", "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and "val split has 16 images, fewer than the 32" in err
    assert not (tmp_path / "run").exists()
