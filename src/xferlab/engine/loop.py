"""One epoch of training and one pass of evaluation, shared by the image path and the cached-feature path.

`forward` maps a batch of stored inputs (uint8 images or cached features) to logits; everything else is the same.
Loss and accuracy accumulate on the device and batch indices live where the data lives, so the inner loop has no
host-device sync (one `.item()` per epoch). Under torchrun (xferlab.engine.distributed) the epoch's sums are
all-reduced and evaluation / feature extraction gather every rank's share. `adapt_batchnorm` and `extract_features`
prepare the fixed-backbone regimes: BatchNorm statistics re-estimated once (adabn), then features computed once
through the fixed-backbone runtime (xferlab.engine.runtime).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from xferlab.data.batches import batch_indices, take_batches
from xferlab.engine.distributed import SINGLE, Dist

Forward = Callable[[torch.Tensor], torch.Tensor]


def make_adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with torch's fused kernel where it has one for the device (per step on CPU, ResNet-18, 1 thread: 16 ms
    instead of 85 ms); plain Adam otherwise (torch < 2.4 has no fused CPU Adam)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def train_one_epoch(forward: Forward, inputs, labels: torch.Tensor, optimizer, scheduler, batches,
                    device: torch.device, dist: Dist = SINGLE) -> tuple[float, float]:
    """Mean training loss and accuracy over the epoch's `batches` (index tensors; scheduler stepped per batch),
    summed over every rank. `inputs`: stored tensors or streamed images (xferlab.data.batches.take_batches)."""
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0  # counted on the host: a tensor made from a Python number per step would be a host-device copy
    for idx, x in take_batches(inputs, batches):
        y = labels[idx.to(labels.device)].to(device, non_blocking=True)  # no-op moves when labels sit with inputs
        logits = forward(x).float()
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y).sum()
        n += len(idx)
    totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(n), device=device, dtype=torch.float64)])
    loss_total, correct_total, n_total = dist.all_reduce_sum(totals).tolist()  # the epoch's one host-device sync
    return loss_total / n_total, correct_total / n_total


@torch.no_grad()
def predict(forward: Forward, inputs, batches) -> torch.Tensor:
    """float32 outputs of `forward` for the items of `batches`, in that order."""
    return torch.cat([forward(x).float() for _, x in take_batches(inputs, batches)])


def _local_batches(inputs, n: int, batch_size: int, dist: Dist) -> list[torch.Tensor]:
    """This rank's evaluation share of range(n), in order, as index batches where the inputs live."""
    return list(dist.eval_indices(n).to(inputs.device).split(batch_size))


@torch.no_grad()
def evaluate(forward: Forward, inputs, labels: torch.Tensor, batch_size: int, device: torch.device,
             dist: Dist = SINGLE) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and the class probabilities (N×K, on the host) of one split; each rank evaluates its
    share and the logits are gathered, so every item counts once whatever the number of ranks."""
    n = len(inputs)
    logits = dist.gather(predict(forward, inputs, _local_batches(inputs, n, batch_size, dist)), n)
    y = labels.to(logits.device)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).double().mean().item()
    return loss, acc, logits.softmax(1).cpu().numpy()


@torch.no_grad()
def extract_features(features: Forward, images, batch_size: int, dist: Dist = SINGLE) -> torch.Tensor:
    """float32 outputs of a fixed pass (`features`: uint8 batch -> features, xferlab.engine.runtime.fixed_pass) for
    every image, computed once; each rank computes its share and every rank gets all of them."""
    n = len(images)
    return dist.gather(predict(features, images, _local_batches(images, n, batch_size, dist)), n)


def adapt_batchnorm(body: torch.nn.Module, images, preprocess, batch_size: int,
                    generator: torch.Generator | None = None, dist: Dist = SINGLE) -> int:
    """AdaBN: replace every BatchNorm's running statistics by their estimate on `images`, in one pass.

    torch's `update_bn` resets the statistics, then averages the per-batch statistics over the pass (momentum=None)
    with the backbone in train mode and without gradients; the batches are drawn with `generator` so that each one
    mixes the classes, as the reference's shuffled train-mode batches did. A short last batch is left out: update_bn
    weighs every batch equally, and a batch of one image has no variance. With several ranks each takes every
    W-th batch and the per-rank averages are combined weighted by their batch counts: the same statistics as one
    process. Returns the number of BatchNorm layers.
    """
    from torch.optim.swa_utils import update_bn

    bns = [m for m in body.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    order = list(batch_indices(len(images), batch_size, generator, device=images.device))
    if len(order) > 1 and len(order[-1]) < batch_size:
        order = order[:-1]
    mine = order[dist.rank::dist.world_size]
    update_bn((preprocess(x) for _, x in take_batches(images, mine)), body)  # restores train mode and momentum
    if dist.enabled:
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                buf.mul_(len(mine) / len(order))
                dist.all_reduce_sum(buf)
            dist.all_reduce_sum(bn.num_batches_tracked)
    return len(bns)
