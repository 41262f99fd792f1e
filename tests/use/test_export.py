"""`xferlab export RUN --format onnx`: onnxruntime equals torch to 1e-4, dynamic batch, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xferlab
from xferlab import artifacts
from xferlab.cli import main

onnx = pytest.importorskip("onnx")  # the onnx extra is installed by `make test`
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", str(tiny_run), "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_onnxruntime_matches_torch_on_the_test_images_at_any_batch_size(exported, tiny_run, tiny_data):
    run = xferlab.load_run(tiny_run)
    images = np.concatenate([np.load(tiny_data / "test_normal.npy"), np.load(tiny_data / "test_pneumonia.npy")])
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    rgb = np.repeat(images[:, None], 3, axis=1)  # the graph takes 3 channels: gray is repeated, as the metadata says
    for n in (1, 5, len(rgb)):  # the batch axis is dynamic (traced with 2)
        (probs,) = session.run(None, {"images": rgb[:n]})
        np.testing.assert_allclose(probs, run.predict(images[:n]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(session.run(None, {"images": rgb})[0],
                               artifacts.read_run(tiny_run).predictions["test"][1], atol=1e-4, rtol=0)


def test_metadata_describes_the_preprocessing(exported):
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(props["class_names"]) == ["normal", "pneumonia"]
    assert json.loads(props["image_size"]) == [32, 32] and props["input_channels"] == "3"
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert props["xferlab_version"] == xferlab.__version__ and props["backbone"] == "resnet18"
    assert props["preprocessing_baked_in"].startswith("yes")


def test_export_of_a_missing_run_is_an_error_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err
