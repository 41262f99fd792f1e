"""Embeddings for the audit: every image through the fixed backbone once (eval mode, BatchNorm frozen), through the
fixed-backbone runtime (xferlab.engine.runtime: ONNX Runtime on the CPU); the shift tests, the nearest-neighbour
leakage search and every frozen re-split reuse them."""

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
from xferlab.engine.runtime import CHECK_IMAGES, fixed_pass
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

# Images handed to the embedder per call by embed_dataset: small enough for a progress bar that moves, large enough
# that the per-call overhead is negligible.
_CHUNK = 256
# Pixels per batch of the pass: about 4 Mpx. 256 images up to 128 px (larger batches amortise ONNX Runtime's per-call
# cost on small images), 83 at 224 px, floored at 32 (512 px: 32 MB of float input per batch).
_BATCH_PIXELS = 1 << 22
_BATCH_RANGE = (32, 256)


def fixed_backbone(data: ImageDataset, cfg: AuditConfig, device: torch.device) -> TransferModel:
    """The audit backbone with the frozen regime applied (parameters and BatchNorm statistics fixed)."""
    model = create_model(cfg.backbone, max(2, data.num_classes), cfg.weights, image_size=data.image_size[0])
    apply_regime(model, parse_regime("frozen"))
    return model.to(device).eval()


def batch_size_for(image_size: tuple[int, int]) -> int:
    low, high = _BATCH_RANGE
    return int(np.clip(_BATCH_PIXELS // (image_size[0] * image_size[1]), low, high))


class Embedder:
    """Embeds one chunk of uint8 images at a time with the audit backbone (for the streaming pass, scan.py); the
    runtime is chosen for the whole dataset on its first images. `runtime`: the path that runs (the record's)."""

    def __init__(self, data: ImageDataset, cfg: AuditConfig):
        self.cfg = cfg
        device = resolve_device(cfg.device)
        self.model = fixed_backbone(data, cfg, device)
        preprocess = Preprocess.for_input(self.model.spec.input, device)
        example = as_tensor(np.asarray(data.images[:CHECK_IMAGES]))
        try:
            self.features = fixed_pass(self.model.body, preprocess, example, cfg.runtime, n_images=len(data.labels))
        except XferlabError as err:
            raise XferlabError(f"audit.{err} (backbone '{cfg.backbone}')") from None
        self.batch_size = batch_size_for(data.image_size)

    @property
    def runtime(self) -> str:
        return self.features.path

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return extract_features(self.features, as_tensor(images), self.batch_size).cpu().numpy()

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
