"""From uint8 arrays to model input, one batch at a time: the only place pixels become floats.

Grayscale becomes the 3 channels a pretrained stem expects by broadcasting per batch (colour becomes gray for a
one-channel backbone); no float or 3-channel copy of the dataset is ever stored. What a backbone expects (channels,
the intensity range 0..255 maps to, mean/std, a fixed input side) is an InputSpec, which the registry gives per
backbone (xferlab.inputs). A split's stored inputs are a tensor (indexed per batch) or, for data beyond the memory
budget, StreamedImages (decoded per batch by DataLoader workers); `take_batches` serves both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from xferlab.errors import XferlabError
from xferlab.inputs import InputSpec

_WORKER_PREFIX = re.compile(r"^[\w.]*XferlabError: ")


class Preprocess:
    """uint8 batch (B×H×W or B×C×H×W, any device) -> normalised float32 B×C×H×W on `device`.

    C is `channels` (3 by default: grayscale is broadcast; 1: colour is averaged to gray). `channels_last=True`
    returns the batch in NHWC memory order, for a model converted to channels_last.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu",
                 channels_last: bool = False, *, channels: int = 3,
                 value_range: tuple[float, float] = (0.0, 1.0), size: int | None = None):
        if len(mean) != channels or len(std) != channels:
            raise XferlabError(f"input normalisation: {channels} channel(s) need as many mean and std values, got "
                               f"mean {tuple(mean)} and std {tuple(std)}")
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.channels, self.size = channels, size
        # Fold x/255 -> [lo, hi] and the normalisation into one multiply-add: x * scale + shift.
        lo, hi = value_range
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        self.scale = ((hi - lo) / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self.shift = ((lo - mean_t) / std_t).view(1, -1, 1, 1).to(self.device)

    @classmethod
    def for_input(cls, spec: InputSpec, device: torch.device | str = "cpu", channels_last: bool = False) -> Preprocess:
        return cls(spec.mean, spec.std, device, channels_last, channels=spec.channels, value_range=spec.value_range,
                   size=spec.size)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        # Only the uint8 batch crosses to the device (a quarter of float32's bytes); the float work happens there.
        x = batch.to(self.device, non_blocking=True)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = x.float()
        if x.shape[1] == 1 and self.channels > 1:
            x = x.expand(-1, self.channels, -1, -1)  # a view: the grayscale channel is read three times, not copied
        elif x.shape[1] > 1 and self.channels == 1:
            # the model's own input rule, kept as it is: the channel mean on the device (the audit's and explain's
            # rule, xferlab.data.images.gray_levels, is the same mean on the host)
            x = x.mean(1, keepdim=True)
        x = torch.addcmul(self.shift, x, self.scale)
        if self.size is not None and x.shape[-2:] != (self.size, self.size):
            # after the intensity mapping, as torchxrayvision resizes normalised images (utils.fix_resolution)
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return x.contiguous(memory_format=self.memory_format)


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """Share the uint8 array's memory with a tensor (no copy)."""
    return torch.from_numpy(np.ascontiguousarray(images))


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Index batches over n items: shuffled with `generator`, in order without one. The last batch may be short.

    The order is drawn on the host (the same seed gives the same batches on every device) and, with `device`, moved
    there in one copy per epoch, so indexing device-resident data needs no host-device transfer per batch.
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if device is not None:
        order = order.to(device)
    yield from order.split(batch_size)


class StreamedImages:
    """A split read from disk per batch: its files (xferlab.data.streaming.FileImages) and the DataLoader settings."""

    device = torch.device("cpu")  # where index batches for it are made

    def __init__(self, images, workers: int, pin_memory: bool = False):
        self.images, self.workers, self.pin_memory = images, workers, pin_memory

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from xferlab.data.streaming import stream_batches

        batches = [idx.cpu() for idx in batches]
        try:
            yield from zip(batches, stream_batches(self.images, batches, self.workers, pin_memory=self.pin_memory))
        except XferlabError as err:  # from a worker, DataLoader wraps the one-line message in the worker's traceback
            raise XferlabError(_WORKER_PREFIX.sub("", str(err).strip().splitlines()[-1])) from None


def take_batches(inputs, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, batch) for every index batch: a stored tensor is indexed, StreamedImages decode from disk."""
    if isinstance(inputs, torch.Tensor):
        return ((idx, inputs[idx]) for idx in batches)
    return inputs.batches(batches)
