"""Grad-CAM layers: every registered entry names a module of its network, and a ViT (token outputs, a
reshape_transform in its entry) gets maps with spatial information. Maps computed without weight gradients, split
at the CAM layer (the part below as a fixed pass), equal whole-network Grad-CAM's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xferlab.backbones.registry import create_model, list_backbones
from xferlab.data.batches import Preprocess
from xferlab.engine.accel import num_threads

pytest.importorskip("pytorch_grad_cam")


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_cam_layer_is_a_module_of_the_network(name):
    with num_threads(1):
        model = create_model(name, 2, "none", image_size=64)
    assert model.spec.cam_layer, f"{name} names no Grad-CAM layer"
    model.body.get_submodule(model.spec.cam_layer)


def test_a_timm_vit_gets_spatial_maps_through_its_reshape_transform():
    pytest.importorskip("timm")
    from xferlab.explain.cam import grad_cam

    with num_threads(1):
        model = create_model("timm:vit_tiny_patch16_224", 2, "none", image_size=64)
        assert model.spec.cam_layer == "blocks.11.norm1" and model.spec.reshape_transform is not None
        images = torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        maps, probs = grad_cam(model, images, Preprocess.for_input(model.spec.input))
    assert maps.shape == (2, 64, 64) and probs.shape == (2, 2)
    assert all(m.std() > 0.05 for m in maps)  # not a flat map: the patch tokens carry gradients


def _reference_maps(model, images, preprocess, layer):
    """What grad_cam computed before: pytorch-grad-cam on the whole network with every weight requiring gradients."""
    from pytorch_grad_cam import GradCAM

    from xferlab.explain.cam import target_layer

    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    with GradCAM(model=model, target_layers=[target_layer(model, layer)]) as cam:
        maps = cam(input_tensor=preprocess(images), targets=None)
        probs = cam.outputs.detach().softmax(1).numpy()
    for p, flag in zip(model.parameters(), flags):
        p.requires_grad_(flag)
    model.zero_grad(set_to_none=True)
    return maps, probs


@pytest.mark.parametrize("name, layer, runtime", [
    ("resnet18", "layer3", "onnxruntime"),  # a stage: one leaf of the traced graph
    ("efficientnet_lite0", "_blocks.10", "torch"),  # its flatten reads the input's batch size above the cut
    ("densenet121", "features.norm5", "torch"),  # an in-place ReLU right above the cut
])
def test_maps_split_at_the_cam_layer_equal_whole_network_grad_cam(name, layer, runtime):
    from xferlab.backbones.regimes import apply_regime, parse_regime
    from xferlab.explain.cam import grad_cam, split_at

    with num_threads(1):
        torch.manual_seed(0)
        model = create_model(name, 2, "none", image_size=64).eval()
        apply_regime(model, parse_regime("partial:1"))
        flags = [p.requires_grad for p in model.parameters()]
        images = torch.randint(0, 256, (5, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        pre = Preprocess.for_input(model.spec.input)
        assert split_at(model, f"body.{layer}") is not None
        maps, probs = grad_cam(model, images, pre, layer=layer, runtime=runtime, batch_size=3)
        want_maps, want_probs = _reference_maps(model, images, pre, layer)
    assert maps.shape == (5, 64, 64) and np.abs(maps - want_maps).max() < 1e-3  # maps in [0, 1], float rounding
    assert np.abs(probs - want_probs).max() < 1e-5
    assert [p.requires_grad for p in model.parameters()] == flags  # the regime's flags, as they were
    assert all(p.grad is None for p in model.parameters())  # no weight got a gradient


def test_a_vit_is_not_split_its_residual_stream_crosses_the_cam_layer():
    pytest.importorskip("timm")
    from xferlab.explain.cam import split_at

    with num_threads(1):
        model = create_model("timm:vit_tiny_patch16_224", 2, "none", image_size=64)
    assert split_at(model, f"body.{model.spec.cam_layer}") is None
