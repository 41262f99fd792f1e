"""Embeddings for the audit: every image through the fixed backbone once (eval mode, BatchNorm frozen), on the
engine's feature path; the shift tests, the nearest-neighbour leakage search and every frozen re-split reuse them."""

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
from xferlab.engine.run import resolve_device
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

# Images handed to extract_features per call: small enough for a progress bar that moves, large enough that the
# per-call overhead is negligible.
_CHUNK = 256
_FEATURE_BATCH = 64


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

    def __call__(self, images: np.ndarray) -> np.ndarray:
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
