"""timm backbones as `timm:NAME` (optional extra `timm`): any timm architecture, optionally with a weight tag
(`timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k`).

Everything the registry keeps by hand for its own CNNs is read from timm as data: mean/std, input size and the
classifier's name from the pretrained configuration, the stages from the model's coarse layer groups (timm's
`group_matcher`: stem, then stages or transformer blocks). Weights come offline first: `--weights PATH`, else the
Hugging Face cache; a download is tried only when neither XFERLAB_OFFLINE nor HF_HUB_OFFLINE forbids it.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xferlab import extras
from xferlab.backbones.registry import BackboneSpec, Family
from xferlab.backbones.weights import (
    OFFLINE_ENV,
    StateDict,
    WeightsUnavailable,
    is_offline,
    load_state_dict_file,
)
from xferlab.errors import XferlabError, did_you_mean
from xferlab.inputs import IMAGENET_MEAN, IMAGENET_STD

#: The files timm publishes on the Hugging Face hub, preferred first.
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    return extras.require("timm", "timm", "this backbone")


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TimmWeights:
    """A timm model's pretrained weights: the Hugging Face cache (or torch.hub's, for the few URL-only ones)."""

    model: str  # timm name with its tag
    hf_hub_id: str | None
    hf_filename: str | None
    url: str | None

    @classmethod
    def from_cfg(cls, model: str, cfg) -> TimmWeights:
        get = cfg.get if isinstance(cfg, dict) else functools.partial(getattr, cfg)
        return cls(model, get("hf_hub_id", None), get("hf_hub_filename", None), get("url", None) or None)

    @property
    def files(self) -> tuple[str, ...]:
        return (self.hf_filename,) if self.hf_filename else HF_FILES

    @property
    def hf_cache(self) -> Path:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)  # read at call time: HF_HOME / HF_HUB_CACHE as the hub resolves them

    def cached_file(self) -> Path | None:
        if self.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache

            for name in self.files:
                found = try_to_load_from_cache(self.hf_hub_id, name, cache_dir=self.hf_cache)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
        if self.url:
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.url)
            if path.is_file():
                return path
        return None

    def available(self) -> bool:
        return self.cached_file() is not None

    def _where(self) -> str:
        if self.hf_hub_id:
            folder = self.hf_cache / f"models--{self.hf_hub_id.replace('/', '--')}"
            return (f"put {self.files[0]} from https://huggingface.co/{self.hf_hub_id} into the Hugging Face cache "
                    f"({folder}/snapshots/<revision>/, e.g. `huggingface-cli download {self.hf_hub_id} "
                    f"{self.files[0]}` on a machine with network, then copy {self.hf_cache})")
        return f"place {os.path.basename(self.url)} (from {self.url}) in {Path(torch.hub.get_dir()) / 'checkpoints'}"

    def load(self) -> StateDict:
        path = self.cached_file()
        if path is None:
            path = self._download()
        return load_state_dict_file(path)

    def _download(self) -> Path:
        if not self.hf_hub_id and not self.url:
            raise XferlabError(f"timm model '{self.model}' has no pretrained weights; use --weights none or "
                               "--weights PATH (a state dict)")
        if is_offline() or _hf_offline():
            switch = OFFLINE_ENV if is_offline() else "HF_HUB_OFFLINE"
            raise WeightsUnavailable(f"timm weights for '{self.model}' are not cached and {switch} forbids "
                                     f"downloading; {self._where()}")
        try:
            if self.hf_hub_id:
                from huggingface_hub import hf_hub_download

                return Path(hf_hub_download(self.hf_hub_id, self.files[0], cache_dir=self.hf_cache))
            torch.hub.load_state_dict_from_url(self.url, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsUnavailable(f"cannot download timm weights for '{self.model}' ({type(err).__name__}); "
                                     f"{self._where()}") from None
        return self.cached_file()

    def describe(self) -> str:
        return f"timm {self.hf_hub_id or self.url or self.model + ' (no pretrained weights)'}"


def tokens_to_map(x: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """Grad-CAM reshape for ViT-style token outputs: (B, prefix + H*W, C) -> (B, C, H, W), class/register tokens
    dropped (pytorch-grad-cam's reshape_transform contract)."""
    grid = x[:, prefix_tokens:, :]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise XferlabError(f"cannot arrange {grid.shape[1]} patch tokens in a square grid for a class-activation map")
    return grid.reshape(x.shape[0], side, side, x.shape[-1]).permute(0, 3, 1, 2)


def nhwc_to_map(x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM reshape for channels-last stage outputs (timm's Swin): (B, H, W, C) -> (B, C, H, W)."""
    return x.permute(0, 3, 1, 2)


def _reshape_transform(model: nn.Module):
    if getattr(model, "output_fmt", None) == "NHWC":
        return nhwc_to_map
    if hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks"):
        return functools.partial(tokens_to_map, prefix_tokens=int(model.num_prefix_tokens))
    return None


def _cam_layer(model: nn.Module) -> str:
    """The module whose output is the last spatial feature map: timm's last feature stage (feature_info). A ViT that
    pools its class token reads the last block's first norm instead (pytorch-grad-cam's choice for ViTs): the last
    block's patch-token outputs reach the class token through no later layer, so their gradients are zero."""
    info = getattr(model, "feature_info", None) or []
    last = info[-1]["module"] if info else ""
    if last and getattr(model, "global_pool", None) == "token" and hasattr(model, "num_prefix_tokens"):
        norm = f"{last}.norm1"
        if norm in dict(model.named_modules()):
            return norm
    return last


def _stage_prefixes(model: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Stages from timm's coarse layer groups: the stem group is left out (it stays fixed in partial:K, as the
    stem of the registry's own CNNs), groups after the last feature stage (final norms, pre-logits) join the last
    stage. Each stage is named by the fewest module prefixes that cover exactly its parameters."""
    from timm.models import group_parameters

    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return tuple((info["module"],) for info in getattr(model, "feature_info", []))
    groups = group_parameters(model, matcher)  # ordinal -> parameter names, input to output
    ordinals = sorted(groups)
    if "stem" in matcher and ordinals:
        ordinals = ordinals[1:]
    features = [info["module"] for info in getattr(model, "feature_info", [])]
    tail = features[-1] + "." if features else None
    last = max((i for i, g in enumerate(ordinals) if tail and any(n.startswith(tail) for n in groups[g])),
               default=len(ordinals) - 1)
    stage_of = {name: min(i, last) for i, g in enumerate(ordinals) for name in groups[g]}
    out: list[list[str]] = [[] for _ in range(last + 1)]

    def visit(module: nn.Module, name: str) -> None:
        owners = {stage_of.get(f"{name}.{p}" if name else p) for p, _ in module.named_parameters()}
        if name and len(owners) == 1 and None not in owners:
            out[owners.pop()].append(name)
            return
        if owners - {None}:
            for child_name, child in module.named_children():
                visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")  # parameters held by the root itself (a ViT's cls_token) belong to the stem
    return tuple(tuple(stage) for stage in out if stage)


def _meta_model(timm, name: str) -> nn.Module:
    """The architecture on the meta device: its configuration and layout without allocating or initialising (on
    the CPU for the few models whose construction computes values the meta device cannot give)."""
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                return timm.create_model(name, pretrained=False)
        except Exception as err:
            problem = err
    raise XferlabError(f"timm cannot build '{name}' ({type(problem).__name__}: {str(problem)[:200]})") from None


def _feature_dim(model: nn.Module, channels: int, side: int) -> int:
    """Width of the pooled features once the classifier is gone: a forward pass (free on the meta device), else
    timm's attributes (pre-logits width first: MobileNetV3's conv_head widens the features)."""
    try:
        with torch.no_grad():
            return int(model(torch.empty(1, channels, side, side, device=next(model.parameters()).device)).shape[-1])
    except Exception:
        return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _check_name(timm, name: str) -> None:
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise XferlabError(f"unknown timm model '{arch}'{did_you_mean(arch, timm.list_models())}; "
                           f"`xferlab backbones --filter 'timm:*{arch[:5]}*'` lists the close ones")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise XferlabError(f"timm model '{arch}' has no weights tagged '{tag}'{did_you_mean(tag, tags)}; "
                           f"tags: {', '.join(tags) or 'none'}")


def timm_spec(name: str) -> BackboneSpec:
    """The registry entry of timm model `name` (architecture, optionally '.tag')."""
    timm = _timm()
    _check_name(timm, name)
    meta = _meta_model(timm, name)
    cfg = meta.pretrained_cfg
    classifiers = cfg.get("classifier") or "head"
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    head_keys = tuple(c + "." for c in classifiers)
    head_shapes = {k: v.shape for k, v in meta.state_dict().items() if k.startswith(head_keys)}
    meta.reset_classifier(0)
    channels, native, _ = cfg.get("input_size", (3, 224, 224))
    feature_dim = _feature_dim(meta, channels, native)
    # ViTs and Swins fix their token grid when built (timm marks their configurations fixed_input_size)
    sized = bool(cfg.get("fixed_input_size")) or "img_size" in inspect.signature(type(meta).__init__).parameters

    def create(image_size: int, sd: StateDict | None = None, origin: str = "") -> nn.Module:
        kw = {"img_size": image_size} if sized else {}
        if sd is not None:  # timm's own loader adapts the checkpoint (a ViT's position embeddings) and loads strictly
            kw.update(pretrained=True, pretrained_cfg_overlay={"state_dict": sd})
        try:
            model = timm.create_model(name, **kw)
        except Exception as err:
            reason = " ".join(str(err).split())[:300]
            if sd is not None and "state_dict" in reason:
                raise XferlabError(f"weights {origin} do not fit backbone 'timm:{name}' ({reason}); give a state "
                                   f"dict saved from the same architecture ('{name}')") from None
            raise XferlabError(f"timm cannot build '{name}' for {image_size}px images ({type(err).__name__}: "
                               f"{reason}); try --image-size {native}") from None
        model.reset_classifier(0)
        return model

    def build_pretrained(image_size: int, sd: StateDict, origin: str) -> nn.Module:
        # The classifier is replaced anyway: the file's (any class count, or none) is swapped for zeros of the
        # architecture's shape, so the strict load checks everything else.
        sd = {k: v for k, v in sd.items() if not k.startswith(head_keys)}
        sd.update({k: torch.zeros(shape) for k, shape in head_shapes.items()})
        return create(image_size, sd, origin)

    return BackboneSpec(
        name=f"timm:{name}", build=create, head=classifiers[0],
        stages=_stage_prefixes(meta), feature_dim=feature_dim, weights=TimmWeights.from_cfg(name, cfg),
        mean=tuple(cfg.get("mean") or IMAGENET_MEAN), std=tuple(cfg.get("std") or IMAGENET_STD),
        description=f"timm {name}", channels=3, input_size=int(native), build_pretrained=build_pretrained,
        reshape_transform=_reshape_transform(meta), cam_layer=_cam_layer(meta),
    )


def timm_available(pattern: str | None) -> list[tuple[str, TimmWeights]]:
    """timm models with pretrained weights (name.tag) matching the glob `pattern`."""
    timm = _timm()
    names = timm.list_pretrained(pattern or "")
    return [(n, TimmWeights.from_cfg(n, timm.models.get_pretrained_cfg(n))) for n in names]


FAMILY = Family(prefix="timm", spec=timm_spec, available=timm_available, package="timm", extra="timm",
                example="timm:NAME (any timm model, e.g. timm:convnext_atto)")
