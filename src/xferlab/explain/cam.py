"""Grad-CAM maps with the maintained `grad-cam` package (pytorch_grad_cam), over the layer the registry names.

The CAM object is used as a context manager so that its forward and backward hooks are released, and it runs on the
uncompiled module (hooks on a torch.compile'd graph do not fire as expected). grad-cam switches the model to eval
mode and min-max scales every map on its own, so maps are compared by the share of their mass in a region, never by
raw values across images.

A map needs the gradient of the class score with respect to the CAM layer's activations and nothing else: no weight
gets a gradient, nothing below the layer records a graph, and where torch.fx can cut the network at the layer
(split_at) the part below runs as a fixed pass through the runtime (ONNX Runtime on the CPU), like features.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from operator import attrgetter

import numpy as np
import torch
import torch.fx

from xferlab import extras
from xferlab.backbones.registry import TransferModel
from xferlab.data.batches import Preprocess
from xferlab.engine.runtime import CHECK_IMAGES, fixed_pass
from xferlab.errors import XferlabError


def grad_cam_classes():
    extras.require("pytorch_grad_cam", "explain", "Grad-CAM (xferlab explain, the audit's shortcut check)")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

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


class _LeafAt(torch.fx.Tracer):
    """torch.fx's tracer, keeping the CAM layer one call (a stage such as ResNet's layer4 would be traced into)."""

    def __init__(self, leaf: str):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, module: torch.nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(module, qualname)


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    seen, stack = {node}, [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _graph_module(model: torch.nn.Module, graph: torch.fx.Graph, extra: dict) -> torch.fx.GraphModule:
    """A GraphModule over `graph` sharing `model`'s modules and tensors (no copies of the weights)."""
    owned = {n.target: extra[n.target] if n.target in extra else attrgetter(n.target)(model)
             for n in graph.nodes if n.op in ("call_module", "get_attr")}
    return torch.fx.GraphModule(owned, graph)


def _batch_read(node: torch.fx.Node, below: set[torch.fx.Node]) -> bool:
    """`input.size(0)` read above the cut (efficientnet-pytorch flattens with `x.view(inputs.size(0), -1)`): the
    activation's batch size is the same number."""
    return (node.op == "call_method" and node.target == "size" and node.args[0] in below
            and node.args[0].op == "placeholder" and (tuple(node.args[1:]) == (0,) or node.kwargs == {"dim": 0}))


def split_at(model: torch.nn.Module, layer: str) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule] | None:
    """The network cut at the output of module `layer` (a qualified name in `model`): `below` (input -> the layer's
    output) and `above` (that output -> the model's output, through a _Graft named `cam_input` that Grad-CAM
    reads). None when torch.fx cannot trace the model, the layer runs more than once, or the part above needs
    anything from below besides the layer's output and the batch size (a ViT's residual stream): the caller then
    runs the network whole. Both parts share the model's weights."""
    try:
        traced = _LeafAt(layer).trace(model)
    except Exception:  # noqa: BLE001 - any construct torch.fx cannot trace: no split, the whole network runs instead
        return None
    nodes = list(traced.nodes)
    cuts = [n for n in nodes if n.op == "call_module" and n.target == layer]
    output = next(n for n in nodes if n.op == "output")
    if len(cuts) != 1:
        return None
    cut = cuts[0]
    below = _ancestors(cut)
    above = [n for n in nodes if n in _ancestors(output) and n not in below]
    reads = {n for n in above if _batch_read(n, below)}
    if {p for n in above if n not in reads for p in n.all_input_nodes if p in below} != {cut}:
        return None
    low, env = torch.fx.Graph(), {}
    for n in nodes:
        if n in below:
            env[n] = low.node_copy(n, lambda a: env[a])
    low.output(env[cut])
    high = torch.fx.Graph()
    env = {cut: high.call_module("cam_input", (high.placeholder("activation"),))}
    for n in above:
        env[n] = high.call_method("size", (env[cut], 0)) if n in reads else high.node_copy(n, lambda a: env[a])
    return _graph_module(model, low, {}), _graph_module(model, high, {"cam_input": _Graft()})


def _image_side(images: torch.Tensor, preprocess: Preprocess) -> tuple[int, int]:
    """(W, H) of the preprocessed input: the size grad-cam scales its maps to."""
    side = getattr(preprocess, "size", None)
    return (side, side) if side else (int(images.shape[-1]), int(images.shape[-2]))


@contextmanager
def _no_weight_gradients(model: torch.nn.Module) -> Iterator[None]:
    """Every parameter without gradients for the block (the trainable flags restored afterwards): a map needs the
    gradient of the class score with respect to the CAM layer's activations only, never a weight's."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class _Graft(torch.nn.Module):
    """A leaf activation's copy inside the graph: what grad-cam hooks and what the layers above receive. A copy,
    because a layer above may work in place (DenseNet's ReLU after norm5), which a leaf that requires gradients
    refuses, and so that grad-cam sees the output object the layer's own output was."""

    def forward(self, leaf: torch.Tensor) -> torch.Tensor:
        return leaf.clone()


def _leaf(out: torch.Tensor) -> torch.Tensor:
    return _Graft()(out.detach().requires_grad_(True))


@contextmanager
def _activation_leaf(module: torch.nn.Module) -> Iterator[None]:
    """The module's output grafted onto a leaf that requires gradients: the backward pass starts there, and nothing
    below it records a graph. Registered first, so that grad-cam's hooks see the grafted output."""
    handle = module.register_forward_hook(lambda _m, _i, out: _leaf(out), prepend=True)
    try:
        yield
    finally:
        handle.remove()


def _targets(ClassifierOutputTarget, targets: np.ndarray | None, start: int, stop: int):
    return None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets[start:stop]]


def grad_cam(model: TransferModel, images: torch.Tensor, preprocess: Preprocess, targets: np.ndarray | None = None,
             batch_size: int = 32, layer: str | None = None, runtime: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N×H×W float32 in [0, 1], at the image size) and class probabilities (N×K) of uint8 `images`.

    `targets`: the class whose evidence each map shows (default: the predicted class). No weight gets a gradient
    (the model's trainable flags are left as they were): the backward pass starts at the CAM layer's activations.
    Where the network splits there (split_at: CNNs), the part below runs as a fixed pass under `runtime`
    (xferlab.engine.runtime: ONNX Runtime on the CPU) and only the part above runs in PyTorch with gradients;
    elsewhere (ViTs) the whole network runs in PyTorch, recording nothing below the layer. A target layer whose map is
    1×1 (a small image at the last stage) has no spatial information: its maps are all zero; name an earlier `layer`
    then.
    """
    grad_cam_classes()  # the extra is installed, or a clear error before any work
    model = _uncompiled(model).eval()
    target = target_layer(model, layer)
    name = next(n for n, m in model.named_modules() if m is target)
    parts = None if getattr(model.spec, "reshape_transform", None) else split_at(model, name)
    with _no_weight_gradients(model):
        if parts is None:
            return _whole(model, target, images, preprocess, targets, batch_size)
        return _split(parts, images, preprocess, targets, batch_size, runtime)


def _whole(model: TransferModel, target: torch.nn.Module, images, preprocess, targets, batch_size: int):
    """Grad-CAM on the whole network, the CAM layer's output made the leaf of the backward pass."""
    GradCAM, ClassifierOutputTarget = grad_cam_classes()
    maps, probs = [], []
    # token models (ViT) register a reshape_transform beside their cam_layer; CNNs have none
    reshape = getattr(model.spec, "reshape_transform", None)
    with _activation_leaf(target), GradCAM(model=model, target_layers=[target], reshape_transform=reshape) as cam:
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start:start + batch_size])
            maps.append(cam(input_tensor=x, targets=_targets(ClassifierOutputTarget, targets, start,
                                                             start + batch_size)))
            probs.append(cam.outputs.detach().float().softmax(1).cpu().numpy())
    return np.concatenate(maps).astype(np.float32), np.concatenate(probs)


def _split(parts, images, preprocess, targets, batch_size: int, runtime: str):
    """Grad-CAM on the part above the CAM layer, fed by the part below as a fixed pass. grad-cam scales each map to
    its input, here the activation; scale_cam_image (what grad-cam calls) then brings it to the image size and
    min-max scales it once more, as grad-cam does after resizing to the image."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    GradCAM, ClassifierOutputTarget = grad_cam_classes()
    below, above = parts
    activations = fixed_pass(below, preprocess, images[:CHECK_IMAGES], runtime, n_images=len(images))
    size = _image_side(images, preprocess)
    maps, probs = [], []
    with GradCAM(model=above, target_layers=[above.cam_input]) as cam:
        for start in range(0, len(images), batch_size):
            leaf = activations(images[start:start + batch_size]).to(preprocess.device).requires_grad_(True)
            small = cam(input_tensor=leaf, targets=_targets(ClassifierOutputTarget, targets, start, start + batch_size))
            maps.append(scale_cam_image(scale_cam_image(small, size)))  # as grad-cam's min-max after its resize
            probs.append(cam.outputs.detach().float().softmax(1).cpu().numpy())
    return np.concatenate(maps).astype(np.float32), np.concatenate(probs)
