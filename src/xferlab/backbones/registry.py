"""The backbone registry: one entry per model, with its weights, normalisation, head and stages.

To add a backbone, write a builder and decorate it with `@register(...)`; `create_model` and every test that
parametrizes over `list_backbones()` pick it up at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from xferlab.backbones.weights import (
    PackageWeights,
    StateDict,
    TorchvisionWeights,
    load_state_dict_file,
)
from xferlab.errors import XferlabError, did_you_mean

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs (x - 127) / 128 in 0..255 units (efficientnet_lite_builder.py, MEAN_RGB /
# STDDEV_RGB in the TensorFlow TPU repository); expressed here in 0..1 units.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    """Pretrained configuration as data (timm's PretrainedCfg idea)."""

    name: str
    build: Callable[[int], nn.Module]  # image size -> architecture, random init, original classifier in place
    head: str  # attribute name of the classifier that is replaced
    stages: tuple[tuple[str, ...], ...]  # module-name prefixes of each stage, input to output
    feature_dim: int
    weights: TorchvisionWeights | PackageWeights
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


def register(**spec_fields) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Decorator: register the decorated builder under `name` with the given spec fields."""

    def deco(build: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        spec = BackboneSpec(build=build, **spec_fields)
        if spec.name in _REGISTRY:
            raise ValueError(f"backbone {spec.name!r} registered twice")
        _REGISTRY[spec.name] = spec
        return build

    return deco


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise XferlabError(
            f"unknown backbone '{name}'{did_you_mean(name, _REGISTRY)}; choose one of {', '.join(list_backbones())}"
        ) from None


class TransferModel(nn.Module):
    """A backbone whose classifier became `nn.Identity` (so `body(x)` gives pooled features) plus a new linear head.

    Modules named in `frozen` stay in eval mode even when the model trains, so their BatchNorm statistics cannot
    drift (requires_grad=False alone does not stop that).
    """

    def __init__(self, spec: BackboneSpec, body: nn.Module, num_classes: int):
        super().__init__()
        self.spec = spec
        self.body = body
        self.head = nn.Linear(spec.feature_dim, num_classes)
        self.frozen: tuple[str, ...] = ()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if mode:
            for name in self.frozen:
                self.get_submodule(name).eval()
        return self


def _load_body_weights(body: nn.Module, spec: BackboneSpec, sd: StateDict, origin: str) -> None:
    """Load an architecture state dict into `body`, ignoring the replaced classifier; list any mismatch."""
    if sd and all(k.startswith(("body.", "head.")) for k in sd):  # an xferlab model.pt: keep the backbone part
        sd = {k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")}

    def without_head(d):
        return {k: v for k, v in d.items() if not k.startswith(spec.head + ".")}

    sd, own = without_head(sd), without_head(body.state_dict())
    # Files saved before PyTorch 0.4 (torchvision's ResNet and DenseNet among them) have no BN
    # num_batches_tracked; BatchNorm fills it in on load.
    missing = sorted(k for k in set(own) - set(sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(sd) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong_shape:
        def show(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{label}: {show(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        raise XferlabError(
            f"weights {origin} do not fit backbone '{spec.name}' ({'; '.join(parts)}); "
            f"give a state dict saved from the same architecture ('{spec.name}')"
        )
    body.load_state_dict(sd, strict=False)  # only the replaced classifier is left out


def create_model(name: str, num_classes: int, weights: str = "imagenet", image_size: int = 224) -> TransferModel:
    """Build backbone `name` with `weights` ('imagenet', 'none' or a state-dict path) and a head for `num_classes`."""
    spec = get_spec(name)
    if num_classes < 2:
        raise XferlabError(f"a classifier needs at least 2 classes, got {num_classes}")
    body = spec.build(image_size)
    if weights == "imagenet":
        _load_body_weights(body, spec, spec.weights.load(), f"ImageNet ({spec.weights.describe()})")
    elif weights != "none":
        _load_body_weights(body, spec, load_state_dict_file(weights), f"file {weights}")
    setattr(body, spec.head, nn.Identity())
    return TransferModel(spec, body, num_classes)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
