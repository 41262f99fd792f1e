"""Grad-CAM layers: every registered entry names a module of its network, and a ViT (token outputs, a
reshape_transform in its entry) gets maps with spatial information."""

from __future__ import annotations

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
