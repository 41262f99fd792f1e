"""Grad-CAM maps with the maintained `grad-cam` package (pytorch_grad_cam), over the layer the registry names.

The CAM object is used as a context manager so that its forward and backward hooks are released, and it runs on the
uncompiled module (hooks on a torch.compile'd graph do not fire as expected). grad-cam switches the model to eval
mode and min-max scales every map on its own, so maps are compared by the share of their mass in a region, never by
raw values across images.
"""

from __future__ import annotations

import numpy as np
import torch

from xferlab.backbones.registry import TransferModel
from xferlab.data.batches import Preprocess
from xferlab.errors import XferlabError

EXTRA_HINT = "pip install 'xferlab[explain]'"


def grad_cam_classes():
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as err:
        raise XferlabError(f"explanations need the grad-cam package ({err}); install it with {EXTRA_HINT}") from None
    return GradCAM, ClassifierOutputTarget


def target_layer(model: TransferModel, layer: str | None = None) -> torch.nn.Module:
    """The module Grad-CAM reads: `layer` (a module name inside the backbone) or the registry's `cam_layer`."""
    spec = model.spec
    if layer:
        try:
            return model.body.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.body.named_modules() if n and "." not in n]
            raise XferlabError(f"layer '{layer}' is not a module of backbone '{spec.name}'; give a module name such "
                               f"as {', '.join(names[-4:])}") from None
    if not spec.cam_layer:
        raise XferlabError(f"backbone '{spec.name}' names no Grad-CAM layer; set cam_layer= in its registry entry "
                           "(the module whose output is the last spatial feature map)")
    try:
        return model.body.get_submodule(spec.cam_layer)
    except AttributeError:
        raise XferlabError(f"backbone '{spec.name}': cam_layer '{spec.cam_layer}' is not a module of the network; "
                           "fix its registry entry") from None


# A map of fewer cells than this per side says little about where the evidence lies (a 2×2 map puts a whole quadrant
# in one cell); 64 px phantoms leave ResNet's layer4 and Lite's head at 2×2.
MIN_CAM_SIDE = 4


def _output_sides(model: TransferModel, names: list[str], image_size: tuple[int, int]) -> dict[str, int]:
    """The smaller spatial side of each named module's output for one blank image (one forward, hooks removed)."""
    sides, handles = {}, []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            if torch.is_tensor(output) and output.ndim == 4:
                sides[name] = int(min(output.shape[-2:]))

        handles.append(model.body.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model.eval()(torch.zeros(1, model.spec.channels, *image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return sides


def choose_layer(model: TransferModel, image_size: tuple[int, int]) -> str:
    """The registry's cam_layer, or when its map would be under MIN_CAM_SIDE cells a side at this image size, the
    last module of the latest stage whose map is at least that large."""
    target_layer(model)  # the registry entry must name a valid layer either way
    spec = model.spec
    if spec.resize_to:  # weights that work at one side only: Preprocess resizes every batch to it
        image_size = (spec.resize_to, spec.resize_to)
    candidates = [spec.cam_layer] + [stage[-1] for stage in reversed(spec.stages)]
    sides = _output_sides(model, candidates, image_size)
    for name in candidates:
        if sides.get(name, 0) >= MIN_CAM_SIDE:
            return name
    return spec.cam_layer


def _uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def grad_cam(model: TransferModel, images: torch.Tensor, preprocess: Preprocess, targets: np.ndarray | None = None,
             batch_size: int = 32, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N×H×W float32 in [0, 1], at the image size) and class probabilities (N×K) of uint8 `images`.

    `targets`: the class whose evidence each map shows (default: the predicted class). The model's trainable flags
    are left as they were; gradients are needed only to reach the target layer, so parameters are not updated.
    A target layer whose map is 1×1 (a small image at the last stage) has no spatial information: its maps are all
    zero; name an earlier `layer` then.
    """
    GradCAM, ClassifierOutputTarget = grad_cam_classes()
    model = _uncompiled(model)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)  # a frozen backbone would leave the target layer's activations without gradients
    maps, probs = [], []
    try:
        # token models (ViT) register a reshape_transform beside their cam_layer; CNNs have none
        reshape = getattr(model.spec, "reshape_transform", None)
        with GradCAM(model=model, target_layers=[target_layer(model, layer)], reshape_transform=reshape) as cam:
            for start in range(0, len(images), batch_size):
                x = preprocess(images[start:start + batch_size])
                batch_targets = None
                if targets is not None:
                    batch_targets = [ClassifierOutputTarget(int(t)) for t in targets[start:start + batch_size]]
                maps.append(cam(input_tensor=x, targets=batch_targets))
                probs.append(cam.outputs.detach().float().softmax(1).cpu().numpy())
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    return np.concatenate(maps).astype(np.float32), np.concatenate(probs)
