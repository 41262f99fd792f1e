"""Embeddings for the audit: every image through the fixed backbone once (eval mode, BatchNorm frozen), on the
engine's feature path or, on the CPU, through ONNX Runtime (engine/onnxfeatures.py: about 4× faster there); the
shift tests, the nearest-neighbour leakage search and every frozen re-split reuse them."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from xferlab.backbones.regimes import apply_regime, parse_regime
from xferlab.backbones.registry import TransferModel, create_model
from xferlab.config import AuditConfig
from xferlab.data.batches import Preprocess, as_tensor
from xferlab.data.dataset import ImageDataset
from xferlab.engine.loop import extract_features
from xferlab.engine.onnxfeatures import onnx_features
from xferlab.engine.run import resolve_device
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

# Images handed to extract_features per call: small enough for a progress bar that moves, large enough that the
# per-call overhead is negligible.
_CHUNK = 256
_FEATURE_BATCH = 64
_ONNX_BATCH = 256  # ONNX Runtime: larger batches amortise its per-call cost


def fixed_backbone(data: ImageDataset, cfg: AuditConfig, device: torch.device) -> TransferModel:
    """The audit backbone with the frozen regime applied (parameters and BatchNorm statistics fixed)."""
    model = create_model(cfg.backbone, max(2, data.num_classes), cfg.weights, image_size=data.image_size[0])
    apply_regime(model, parse_regime("frozen"))
    return model.to(device).eval()


class Embedder:
    """Embeds one chunk of uint8 images at a time with the audit backbone (for the streaming pass, scan.py)."""

    def __init__(self, data: ImageDataset, cfg: AuditConfig):
        self.cfg = cfg
        device = resolve_device(cfg.device)
        self.model = fixed_backbone(data, cfg, device)
        self.preprocess = Preprocess.for_input(self.model.spec.input, device)
        self.onnx = self._onnx(data, device)
        self.runtime = "onnxruntime" if self.onnx is not None else "torch"

    def _onnx(self, data: ImageDataset, device: torch.device):
        if self.cfg.runtime == "torch" or device.type != "cpu":
            if self.cfg.runtime == "onnxruntime":
                raise XferlabError(f"audit.runtime onnxruntime runs on the CPU, but the device is {device.type}; "
                                   "use --device cpu or --runtime auto")
            return None
        example = self.preprocess(as_tensor(np.asarray(data.images[:2])))
        try:
            return onnx_features(self.model.body, example, torch.get_num_threads(),
                                 required=self.cfg.runtime == "onnxruntime")
        except RuntimeError as err:
            hint = ("install it with pip install 'xferlab[onnx]', or use --runtime torch"
                    if isinstance(err.__cause__, ImportError) else "use --runtime torch")
            raise XferlabError(f"audit.runtime onnxruntime: backbone '{self.cfg.backbone}': {err}; {hint}") from None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.onnx is not None:
            batches = range(0, len(images), _ONNX_BATCH)
            return np.concatenate([self.onnx(self.preprocess(as_tensor(images[i:i + _ONNX_BATCH]))) for i in batches])
        features = extract_features(self.model.body, as_tensor(images), self.preprocess, _FEATURE_BATCH)
        return features.float().cpu().numpy()

    def check(self, features: np.ndarray) -> None:
        if not np.isfinite(features).all():
            raise XferlabError(f"backbone '{self.cfg.backbone}' produced non-finite features; check the weights file")


def embed_dataset(data: ImageDataset, cfg: AuditConfig, progress: bool = True) -> np.ndarray:
    """Pooled backbone features of every in-memory image (N × D float32, dataset order): the Embedder of the
    streaming pass (scan.py), chunk by chunk."""
    embed = Embedder(data, cfg)
    chunks = range(0, len(data.labels), _CHUNK)
    bar = tqdm(chunks, desc=f"embedding ({cfg.backbone})", unit="chunk", disable=not progress, leave=False)
    out = np.concatenate([embed(np.asarray(data.images[i:i + _CHUNK])) for i in bar])
    embed.check(out)
    log.debug("embedded %d images into %d dimensions", *out.shape)
    return out
