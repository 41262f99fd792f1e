"""A faithful re-implementation of the reference study's notebook loop, the baseline xferlab is measured against.

What the notebook did, and so what this does: the npy arrays become normalised float32 3-channel tensors held in
memory; a torch DataLoader (shuffled train, ordered val/test) feeds the model; Adam 1e-3 with a cosine schedule per
step; every epoch trains, then evaluates val and test (the report's Fig. 3b tracks test accuracy per epoch); loss and
accuracy are read back with `.item()` per batch. Frozen means `requires_grad=False` on the backbone only, so its
BatchNorm layers stay in train mode and their running statistics drift; the backbone still runs forward every epoch.
The model and weights are xferlab's (same architecture, same initial weights), so only the loop differs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

VAL_FRACTION = 0.2  # the npy layout: the last 20 % of each class file is val (xferlab's `--val-split ordered`)


def _float3(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 N×H×W -> normalised float32 N×3×H×W, the in-memory form the notebook trained on."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1).repeat(1, 3, 1, 1)
    return x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))


def load_splits(folder: Path, class_names: list[str], mean, std) -> dict[str, TensorDataset]:
    """train / val / test TensorDatasets of float32 3-channel images, split as xferlab's npy source splits them."""
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(class_names):
        pool = np.load(folder / f"{name}.npy")
        k = min(max(round(VAL_FRACTION * len(pool)), 1), len(pool) - 1)
        parts["train"].append((pool[: len(pool) - k], label))
        parts["val"].append((pool[len(pool) - k:], label))
        test = folder / f"test_{name}.npy"
        if test.exists():
            parts["test"].append((np.load(test), label))
    datasets = {}
    for split, items in parts.items():
        if items:
            x = torch.cat([_float3(a, mean, std) for a, _ in items])
            y = torch.cat([torch.full((len(a),), c, dtype=torch.long) for a, c in items])
            datasets[split] = TensorDataset(x, y)
    return datasets


def _epoch(model, loader, device, optimizer=None, scheduler=None) -> tuple[float, float]:
    """One pass: train when an optimizer is given, else evaluate. Per-batch .item() calls, as notebooks write them."""
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss = F.cross_entropy(out, y)
        if optimizer is not None:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return loss_sum / n, correct / n


def run_reference(folder: Path, model, regime: str, epochs: int, batch_size: int = 32, lr: float = 1e-3,
                  device: str = "cpu", seed: int = 0) -> dict:
    """Train `model` (an xferlab TransferModel, untouched by any regime) the notebook's way; timings and accuracies."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    data = load_splits(folder, ["normal", "pneumonia"], model.spec.mean, model.spec.std)
    if regime == "frozen":
        for p in model.body.parameters():  # the notebook's freezing: no gradients, BatchNorm left in train mode
            p.requires_grad = False
    model.to(device)
    loaders = {s: DataLoader(d, batch_size=batch_size, shuffle=(s == "train")) for s, d in data.items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loaders["train"]))
    history, train_s, eval_s = [], 0.0, 0.0
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        model.train()
        row = {"epoch": epoch, "train": _epoch(model, loaders["train"], device, optimizer, scheduler)}
        train_s += time.perf_counter() - t
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            row.update({s: _epoch(model, loaders[s], device) for s in ("val", "test") if s in loaders})
        eval_s += time.perf_counter() - t
        history.append(row)
    best = max(history, key=lambda r: r["val"][1])  # first epoch with the best val accuracy, as xferlab chooses
    return {
        "wall_s": time.perf_counter() - t0, "train_s": train_s, "eval_s": eval_s, "feature_s": 0.0,
        "best_epoch": best["epoch"], "val_acc": best["val"][1], "test_acc": best.get("test", (None, None))[1],
        "last_val_acc": history[-1]["val"][1],
        "n": {s: len(d) for s, d in data.items()},
    }
