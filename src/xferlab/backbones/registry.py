"""The backbone registry: one entry per model, with its weights, normalisation, head and stages.

To add a backbone, write a builder and decorate it with `@register(...)`; `create_model` and every test that
parametrizes over `list_backbones()` pick it up at once. A family (`timm:NAME`, `xrv:WEIGHTS`) is registered with
`register_family`: its factory turns the part after the colon into a spec on first use.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from xferlab import extras
from xferlab.backbones.weights import StateDict, load_state_dict_file
from xferlab.errors import XferlabError, did_you_mean
from xferlab.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec

# EfficientNet-Lite was trained on inputs (x - 127) / 128 in 0..255 units (efficientnet_lite_builder.py, MEAN_RGB /
# STDDEV_RGB in the TensorFlow TPU repository); expressed here in 0..1 units.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


class WeightsSource(Protocol):
    """Where a backbone's pretrained weights come from (xferlab.backbones.weights and the family modules)."""

    def available(self) -> bool: ...  # present locally: usable with no network

    def load(self) -> StateDict: ...  # the state dict, or an XferlabError naming the file and where to put it

    def describe(self) -> str: ...


@dataclass(frozen=True)
class BackboneSpec:
    """Pretrained configuration as data (timm's PretrainedCfg idea)."""

    name: str
    build: Callable[[int], nn.Module]  # image size -> architecture, random init, original classifier in place
    head: str  # module name of the classifier that is replaced (dotted for nested heads, e.g. timm's 'head.fc')
    stages: tuple[tuple[str, ...], ...]  # module-name prefixes of each stage, input to output
    feature_dim: int
    weights: WeightsSource
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    description: str = ""
    channels: int = 3  # input channels the stem takes (torchxrayvision: 1)
    value_range: tuple[float, float] = (0.0, 1.0)  # uint8 0..255 is mapped onto this before mean/std
    input_size: int | None = None  # side the weights were trained at (pretrained configuration), for reference
    resize_to: int | None = None  # every batch is resized to this side (weights that only work at one resolution)
    # (image size, state dict, origin) -> architecture with those weights, for families whose loading adapts the
    # checkpoint (timm resamples a ViT's position embeddings to the image size); None: build + load_state_dict.
    build_pretrained: Callable[[int, StateDict, str], nn.Module] | None = None
    # Grad-CAM on token outputs: (B, N, C) activations -> (B, C, H, W) maps (pytorch-grad-cam's reshape_transform);
    # None for backbones whose layers already give B×C×H×W maps.
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    cam_layer: str = ""  # module name of the layer Grad-CAM reads (xferlab.explain): the last spatial feature map

    @property
    def input(self) -> InputSpec:
        return InputSpec(self.channels, tuple(self.mean), tuple(self.std), tuple(self.value_range), self.resize_to)


_REGISTRY: dict[str, BackboneSpec] = {}


@dataclass(frozen=True)
class Family:
    """Backbones named PREFIX:NAME, made on demand (timm alone has over a thousand)."""

    prefix: str
    spec: Callable[[str], BackboneSpec]  # NAME -> spec (an XferlabError for an unknown NAME)
    available: Callable[[str | None], list[tuple[str, WeightsSource]]]  # (NAME, weights) matching a glob, or all
    package: str  # the module the family needs ...
    extra: str  # ... and the xferlab extra that installs it
    example: str

    def installed(self) -> bool:
        return extras.installed(self.package)


_FAMILIES: dict[str, Family] = {}
_FAMILY_SPECS: dict[str, BackboneSpec] = {}


def register_family(family: Family) -> None:
    if family.prefix in _FAMILIES:
        raise ValueError(f"backbone family {family.prefix!r} registered twice")
    _FAMILIES[family.prefix] = family


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
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, colon, rest = name.partition(":")
    if colon and prefix in _FAMILIES:
        if name not in _FAMILY_SPECS:  # building a family spec reads the architecture once: keep it
            _FAMILY_SPECS[name] = _FAMILIES[prefix].spec(rest)
        return _FAMILY_SPECS[name]
    families = "".join(f", or {f.example}" for f in _FAMILIES.values())
    hint = did_you_mean(prefix + ":", [f + ":" for f in _FAMILIES]) if colon else did_you_mean(name, _REGISTRY)
    raise XferlabError(f"unknown backbone '{name}'{hint}; "
                       f"choose one of {', '.join(list_backbones())}{families} (xferlab backbones --all lists them)")


def list_families() -> list[Family]:
    return [_FAMILIES[k] for k in sorted(_FAMILIES)]


def list_available(pattern: str | None = None) -> list[tuple[str, WeightsSource]]:
    """(name, weights) of every registered backbone and every family member with pretrained weights whose name
    matches the glob `pattern` (e.g. 'timm:vit_*', '*convnext*'); None: all of them."""
    rows = [(n, get_spec(n).weights) for n in list_backbones() if pattern is None or fnmatch.fnmatch(n, pattern)]
    for family in list_families():
        sub = None
        if pattern is not None:  # 'timm:vit_*' -> 'vit_*' for the family; a pattern without a prefix as it is
            sub = pattern.split(":", 1)[1] if pattern.startswith(family.prefix + ":") else pattern
            if ":" in sub:
                continue
        if family.installed():  # a family whose package is missing lists nothing (the CLI says how to add it)
            rows += [(f"{family.prefix}:{n}", w) for n, w in family.available(sub)]
    return rows


def preprocessing_for(backbone: str | BackboneSpec) -> InputSpec:
    """What `backbone` expects of its input (channels, intensity mapping, mean/std, fixed side): build
    xferlab.data.batches.Preprocess.for_input from it, in training, prediction and export alike."""
    return (get_spec(backbone) if isinstance(backbone, str) else backbone).input


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


def backbone_part(sd: StateDict) -> StateDict:
    """An xferlab model.pt (body.* and head.* keys) gives its backbone part; any other state dict is returned as is."""
    if sd and all(k.startswith(("body.", "head.")) for k in sd):
        return {k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")}
    return sd


def load_body_weights(body: nn.Module, spec: BackboneSpec, sd: StateDict, origin: str) -> None:
    """Load an architecture state dict into `body`, ignoring the replaced classifier; list any mismatch."""
    sd = backbone_part(sd)

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


#: `weights` values meaning "the backbone's own pretrained weights" (ImageNet for most, chest X-rays for xrv:).
PRETRAINED = ("imagenet", "pretrained")


def create_model(name: str, num_classes: int, weights: str = "imagenet", image_size: int = 224) -> TransferModel:
    """Build backbone `name` with `weights` ('imagenet' or 'pretrained': the backbone's own pretrained weights,
    'none' or a state-dict path) and a head for `num_classes`."""
    spec = get_spec(name)
    if num_classes < 2:
        raise XferlabError(f"a classifier needs at least 2 classes, got {num_classes}")
    sd, origin = None, ""
    if weights in PRETRAINED:
        sd, origin = spec.weights.load(), f"pretrained ({spec.weights.describe()})"
    elif weights != "none":
        sd, origin = load_state_dict_file(weights), f"file {weights}"
    if sd is not None and spec.build_pretrained is not None:
        body = spec.build_pretrained(image_size, backbone_part(sd), origin)
    else:
        body = spec.build(image_size)
        if sd is not None:
            load_body_weights(body, spec, sd, origin)
    body.set_submodule(spec.head, nn.Identity())
    return TransferModel(spec, body, num_classes)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
