"""The audit's image pass: ONNX Runtime and PyTorch give the same embeddings, and the scan says which ran and why."""

from __future__ import annotations

import numpy as np
import pytest

from xferlab.audit.scan import scan_dataset
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.sources import load_dataset
from xferlab.engine import runtime

pytest.importorskip("onnxruntime")


def test_onnxruntime_embeddings_equal_pytorch_ones(tiny_npy, monkeypatch):
    data = load_dataset(DataConfig(path=tiny_npy))
    cfg = {"device": "cpu", "num_threads": 1}  # ImageNet weights: random ones give features near 1e-9, all rounding
    torch_scan = scan_dataset(data, AuditConfig(runtime="torch", **cfg), progress=False)
    onnx_scan = scan_dataset(data, AuditConfig(runtime="onnxruntime", **cfg), progress=False)
    assert (torch_scan.runtime, onnx_scan.runtime) == ("torch", "onnxruntime")
    scale = np.abs(torch_scan.embeddings).max()
    assert np.abs(onnx_scan.embeddings - torch_scan.embeddings).max() <= 1e-3 * scale
    auto = scan_dataset(data, AuditConfig(**cfg), progress=False)
    assert auto.runtime == "torch" and "GFLOP" in auto.runtime_record["reason"]  # too little work for an export
    monkeypatch.setattr(runtime, "MIN_EXPORT_FLOPS", 0.0)
    assert scan_dataset(data, AuditConfig(**cfg), progress=False).runtime == "onnxruntime"  # auto, on the CPU
