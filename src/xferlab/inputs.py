"""What a backbone expects of its input batch: the record the registry holds per backbone
(xferlab.backbones.registry.preprocessing_for) and the batch preprocessing honours (xferlab.data.batches.Preprocess),
in training, prediction and export alike. A leaf module, so both can import it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

# ImageNet's per-channel mean and standard deviation (RGB, 0..1 units): torchvision's and timm's defaults.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects of its input batch (the registry holds one per backbone: `preprocessing_for`).

    uint8 0..255 is first mapped linearly onto `value_range`, then normalised by `mean`/`std` (in that range's
    units, one value per channel). ImageNet models: range (0, 1) and ImageNet mean/std; torchxrayvision's models:
    one channel, range (-1024, 1024), mean 0, std 1 (xrv.utils.normalize). `size`: every batch is resized to
    size x size (bilinear, antialiased, as torchxrayvision does) when the weights only work at that side; None keeps
    the data's size.
    """

    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    value_range: tuple[float, float] = (0.0, 1.0)
    size: int | None = None
