"""Chest-X-ray-pretrained backbones from torchxrayvision as `xrv:WEIGHTS` (optional extra `xrv`), e.g.
`xrv:densenet121-res224-all` (DenseNet-121 trained on eight public chest X-ray datasets, Cohen et al. 2022).

Their preprocessing is not ImageNet's: one input channel, intensities mapped to [-1024, 1024]
(xrv.utils.normalize), 224 px (the models resize to their training resolution; xferlab's Preprocess does the same,
bilinear and antialiased). The weights are read from torchxrayvision's cache folder (~/.torchxrayvision/models_data)
when present; torchxrayvision pickles whole models there, which are unpickled allowing layer classes only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from xferlab import extras
from xferlab.backbones.registry import BackboneSpec, Family, load_body_weights
from xferlab.backbones.weights import (
    OFFLINE_ENV,
    StateDict,
    WeightsUnavailable,
    is_offline,
    load_pickled_module_state,
)
from xferlab.errors import XferlabError, did_you_mean

#: torchxrayvision's intensity range (xrv.utils.normalize maps 0..maxval onto it).
XRV_RANGE = (-1024.0, 1024.0)
#: Its DenseNet stages, as for torchvision's DenseNet-121 (the same layer names).
DENSENET_STAGES = (("features.denseblock1", "features.transition1"), ("features.denseblock2", "features.transition2"),
                   ("features.denseblock3", "features.transition3"), ("features.denseblock4", "features.norm5"))
# A buffer for operating-point rescaling of the 18 pathology outputs; meaningless once the classifier is replaced.
_OUTPUT_BUFFERS = ("op_threshs",)


def _xrv():
    return extras.require("torchxrayvision", "xrv", "this backbone")


@dataclass(frozen=True)
class XrvWeights:
    """torchxrayvision's weights file in its cache folder."""

    weights: str  # e.g. "densenet121-res224-all"
    url: str

    @property
    def cache_file(self) -> Path:
        return Path(os.path.expanduser(_xrv().utils.get_cache_dir())) / os.path.basename(self.url)

    def available(self) -> bool:
        return self.cache_file.is_file()

    def load(self) -> StateDict:
        if not self.available():
            self._download()
        return load_pickled_module_state(self.cache_file)  # build_pretrained drops the output buffers

    def _download(self) -> None:
        where = f"place {self.cache_file.name} (from {self.url}) at {self.cache_file}"  # WeightsUnavailable adds
        if is_offline():  # the --weights fixes (the CLI swaps them for the command's own)
            raise WeightsUnavailable(f"torchxrayvision weights {self.weights} are not cached and {OFFLINE_ENV} "
                                     f"forbids downloading; {where}")
        try:
            _xrv().models.get_weights(self.weights)
        except Exception as err:
            raise WeightsUnavailable(f"cannot download torchxrayvision weights {self.weights} "
                                     f"({type(err).__name__}); {where}") from None

    def describe(self) -> str:
        return f"torchxrayvision {self.weights} ({self.cache_file})"


def _densenet_weights() -> dict[str, dict]:
    return {k: v for k, v in _xrv().models.model_urls.items() if k.startswith("densenet")}


def xrv_spec(weights: str) -> BackboneSpec:
    """The registry entry of torchxrayvision's DenseNet-121 with weights `weights`."""
    xrv = _xrv()
    known = _densenet_weights()
    if weights not in known:
        raise XferlabError(f"unknown torchxrayvision weights '{weights}'{did_you_mean(weights, known)}; choose one of "
                           f"{', '.join('xrv:' + k for k in sorted(known))}")
    entry = known[weights]
    resolution = int(entry.get("input_resolution", 224))

    def build(image_size: int) -> nn.Module:
        # Built without `weights=`: no download, no resize or normalisation check inside forward (Preprocess does
        # both), no operating-point rescaling (the classifier is replaced).
        return xrv.models.DenseNet(num_classes=len(entry["labels"]), in_channels=1)

    def build_pretrained(image_size: int, sd: StateDict, origin: str) -> nn.Module:
        body = build(image_size)
        load_body_weights(body, spec, {k: v for k, v in sd.items() if k not in _OUTPUT_BUFFERS}, origin)
        return body

    spec = BackboneSpec(
        name=f"xrv:{weights}", build=build, head="classifier", stages=DENSENET_STAGES, feature_dim=1024,
        weights=XrvWeights(weights, entry["weights_url"]), mean=(0.0,), std=(1.0,),
        description=f"torchxrayvision DenseNet-121, chest X-ray weights {weights}", channels=1,
        value_range=XRV_RANGE, input_size=resolution, resize_to=resolution, build_pretrained=build_pretrained,
        cam_layer="features.norm5",  # the last feature map, as torchvision's DenseNet-121 (the same layer names)
    )
    return spec


def xrv_available(pattern: str | None) -> list[tuple[str, XrvWeights]]:
    import fnmatch

    return [(k, XrvWeights(k, v["weights_url"])) for k, v in sorted(_densenet_weights().items())
            if pattern is None or fnmatch.fnmatch(k, pattern)]


FAMILY = Family(prefix="xrv", spec=xrv_spec, available=xrv_available, package="torchxrayvision", extra="xrv",
                example="xrv:WEIGHTS (torchxrayvision chest X-ray DenseNet-121, e.g. xrv:densenet121-res224-all)")
