"""One epoch of training and one pass of evaluation, shared by the image path and the cached-feature path.

`forward` maps a batch of stored inputs (uint8 images or cached features) to logits; everything else is the same.
Loss and accuracy accumulate on the device so the inner loop has no host-device sync.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from xferlab.data.batches import batch_indices

Forward = Callable[[torch.Tensor], torch.Tensor]


def train_one_epoch(forward: Forward, inputs: torch.Tensor, labels: torch.Tensor, optimizer, scheduler,
                    batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[float, float]:
    """Mean training loss and accuracy over the epoch (scheduler stepped per batch)."""
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for idx in batch_indices(len(inputs), batch_size, generator):
        y = labels[idx].to(device, non_blocking=True)
        logits = forward(inputs[idx])
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y).sum()
    n = len(inputs)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def evaluate(forward: Forward, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int,
             device: torch.device) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and the class probabilities (N×K, on the host) of one split."""
    loss_sum = torch.zeros((), device=device)
    probs = []
    for idx in batch_indices(len(inputs), batch_size):
        logits = forward(inputs[idx]).float()
        loss_sum += F.cross_entropy(logits, labels[idx].to(device), reduction="sum")
        probs.append(logits.softmax(1))
    p = torch.cat(probs)
    acc = (p.argmax(1).cpu() == labels.cpu()).float().mean().item()
    return loss_sum.item() / len(inputs), acc, p.cpu().numpy()


@torch.no_grad()
def extract_features(body: torch.nn.Module, images: torch.Tensor, preprocess, batch_size: int) -> torch.Tensor:
    """Pooled features of a fixed backbone for every image, computed once (eval mode: BN uses running stats)."""
    was_training = body.training
    body.eval()
    feats = [body(preprocess(images[idx])) for idx in batch_indices(len(images), batch_size)]
    body.train(was_training)
    return torch.cat(feats)
