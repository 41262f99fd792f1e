"""ONNX Runtime as the CPU feature path of a fixed backbone: the same features as PyTorch, and a backbone it cannot
run leaves the caller on PyTorch (or raises, when ONNX Runtime was asked for)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xferlab.engine.onnxfeatures import OnnxFeatures, onnx_features

pytest.importorskip("onnxruntime")


def test_features_equal_pytorch_for_a_batch_size_other_than_the_example():
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    features = OnnxFeatures(body, torch.randn(2, 3, 16, 16), threads=1)
    x = torch.randn(7, 3, 16, 16)
    with torch.inference_mode():
        expected = body(x).numpy()
    assert np.allclose(features(x), expected, atol=1e-5)


class _NotExportable(torch.nn.Module):
    def forward(self, x):
        return torch.from_numpy(np.asarray(x.sum(1).numpy()))  # leaves the graph: the exporter cannot follow it


def test_an_unexportable_backbone_falls_back_or_raises_when_required():
    example = torch.randn(2, 3, 8, 8)
    assert onnx_features(_NotExportable(), example, threads=1, required=False) is None
    with pytest.raises(RuntimeError, match="ONNX Runtime cannot run this backbone"):
        onnx_features(_NotExportable(), example, threads=1, required=True)
