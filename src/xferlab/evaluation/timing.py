"""Wall-clock timing that is honest on every device: warm-up first, and synchronise CUDA before reading the clock."""

from __future__ import annotations

import time

import torch

from xferlab.data.batches import batch_indices


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Accumulates seconds of `with timer:` blocks, synchronising the device at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Timer":
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._t0


@torch.no_grad()
def inference_throughput(model: torch.nn.Module, images: torch.Tensor, preprocess, batch_size: int,
                         device: torch.device, max_images: int = 512, warmup_batches: int = 2) -> float:
    """Images per second of the whole model (preprocessing included) in eval mode, after warm-up batches."""
    model.eval()
    images = images[:max_images]
    batches = list(batch_indices(len(images), batch_size))
    for idx in batches[:warmup_batches]:
        model(preprocess(images[idx]))
    timer = Timer(device)
    with timer:
        for idx in batches:
            model(preprocess(images[idx]))
    return len(images) / timer.seconds
