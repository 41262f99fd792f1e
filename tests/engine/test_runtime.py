"""The fixed-backbone runtime: every path gives eager fp32's outputs within its tolerance, `auto` picks by counted
work and falls back with one warning, a path asked for by name is honoured or refused, and the choice is recorded."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import xferlab.engine.runtime as runtime
from xferlab.data.batches import Preprocess, StreamedImages
from xferlab.engine.loop import extract_features
from xferlab.engine.runtime import first_images, fixed_pass
from xferlab.errors import XferlabError

pytest.importorskip("onnxruntime")

PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _body() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def _images(n: int, side: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


class _TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _body()

    def forward(self, x):
        f = self.body(x)
        return f, f.sum(1, keepdim=True)


class _NotExportable(torch.nn.Module):
    def forward(self, x):
        return torch.from_numpy(np.asarray(x.mean((2, 3)).numpy()))  # leaves the graph: the exporter cannot follow


def test_onnxruntime_gives_eager_fp32s_features_for_other_batch_sizes():
    body, images = _body(), _images(11)
    want = runtime.eager(body, PRE)(images)
    features = fixed_pass(body, PRE, images[:4], "onnxruntime", n_images=len(images))
    assert features.path == "onnxruntime" and features.record.check["error"] <= runtime.FP32_TOLERANCE
    got = extract_features(features, images, batch_size=7)  # a short last batch: the batch axis is dynamic
    assert torch.allclose(got, want, atol=1e-5)


def test_a_module_with_several_outputs_runs_through_onnxruntime():
    module, images = _TwoOutputs(), _images(5)
    got = fixed_pass(module, PRE, images, "onnxruntime", n_images=5)(images)
    want = runtime.eager(module, PRE)(images)
    assert isinstance(got, tuple) and all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


def test_auto_keeps_a_small_pass_in_eager_pytorch_and_exports_a_large_one(monkeypatch):
    body, images = _body(), _images(4)
    small = fixed_pass(body, PRE, images, "auto", n_images=10)
    assert small.path == "torch" and "GFLOP" in small.record.reason and small.record.check is None
    flops = 2 * 8 * 3 * 9 * 14 * 14  # the one convolution: FLOPs per image as FlopCounterMode counts them
    monkeypatch.setattr(runtime, "MIN_EXPORT_FLOPS", 100 * flops)
    assert fixed_pass(body, PRE, images, "auto", n_images=99).path == "torch"
    assert fixed_pass(body, PRE, images, "auto", n_images=100).path == "onnxruntime"


def test_auto_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "MIN_EXPORT_FLOPS", 0.0)
    images = _images(4)
    with caplog.at_level(logging.WARNING, logger="xferlab.engine.runtime"):
        features = fixed_pass(_NotExportable(), PRE, images, "auto", n_images=4)
    assert features.path == "torch" and "fell back" in features.record.reason
    assert len(caplog.records) == 1 and "onnxruntime cannot run this network" in caplog.records[0].message
    assert torch.equal(features(images), runtime.eager(_NotExportable(), PRE)(images))


def test_a_failing_check_falls_back_under_auto_and_is_an_error_when_asked_for(monkeypatch):
    monkeypatch.setattr(runtime, "MIN_EXPORT_FLOPS", 0.0)
    monkeypatch.setattr(runtime, "FP32_TOLERANCE", -1.0)  # nothing passes: every difference is >= 0
    body, images = _body(), _images(4)
    assert fixed_pass(body, PRE, images, "auto", n_images=4).path == "torch"
    with pytest.raises(XferlabError, match="differs from eager fp32.*use runtime auto or torch"):
        fixed_pass(body, PRE, images, "onnxruntime", n_images=4)


def test_a_path_asked_for_by_name_that_cannot_run_here_is_refused(monkeypatch):
    body, images = _body(), _images(4)
    with pytest.raises(XferlabError, match="onnxruntime cannot run this network"):
        fixed_pass(_NotExportable(), PRE, images, "onnxruntime", n_images=4)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    with pytest.raises(XferlabError, match="no native bf16"):
        fixed_pass(body, PRE, images, "torch-bf16", n_images=4)
    with pytest.raises(XferlabError, match="did you mean 'onnxruntime'"):
        fixed_pass(body, PRE, images, "onnx", n_images=4)


def test_bf16_is_checked_with_its_own_tolerance(monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)  # autocast runs emulated where it is not
    body, images = _body(), _images(6)
    features = fixed_pass(body, PRE, images, "torch-bf16", n_images=6)
    assert features.record.check["tolerance"] == runtime.BF16_TOLERANCE
    assert runtime.relative_error(features(images), runtime.eager(_body(), PRE)(images)) <= runtime.BF16_TOLERANCE


def test_the_compile_path_is_checked_like_the_others(monkeypatch):
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", "eager")  # dynamo's graph capture without inductor's build
    body, images = _body(), _images(6)
    features = fixed_pass(body, PRE, images, "compile", n_images=6)
    assert features.path == "compile" and features.record.check["error"] <= runtime.FP32_TOLERANCE
    assert torch.allclose(features(images), runtime.eager(body, PRE)(images), atol=1e-6)


def test_streamed_images_give_the_check_images_and_the_same_features(tmp_path):
    from PIL import Image

    from xferlab.data.streaming import FileImages

    images = _images(5)
    paths = []
    for i, im in enumerate(images.numpy()):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    streamed = StreamedImages(FileImages(paths, (16, 16), rgb=False), workers=0)
    assert torch.equal(first_images(streamed, 3), images[:3])
    features = fixed_pass(_body(), PRE, first_images(streamed, 4), "onnxruntime", n_images=5)
    assert torch.allclose(extract_features(features, streamed, 2), extract_features(features, images, 2))
