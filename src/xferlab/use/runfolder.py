"""The one place this package opens a run folder's files (config.yaml, metrics.json, model.pt, predictions.npz).

When the run-folder records move (an artifacts module), only read_run_folder changes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xferlab.config import TrainConfig, build, read_yaml
from xferlab.errors import XferlabError

CONFIG, METRICS, MODEL, PREDICTIONS = "config.yaml", "metrics.json", "model.pt", "predictions.npz"
# model.pt of the largest registered backbone (DenseNet/ResNet-50: ~100 MB) with room to spare; a bigger file is not a
# run of ours and is refused before unpickling.
MAX_CHECKPOINT_BYTES = 2 * 1024**3
_CHECKPOINT_KEYS = ("state_dict", "backbone", "class_names", "image_size", "mean", "std")


@dataclass(frozen=True)
class Checkpoint:
    """model.pt: the best weights and the preprocessing they were trained with."""

    state_dict: dict[str, torch.Tensor]
    backbone: str
    class_names: list[str]
    image_size: tuple[int, int]  # H, W every input is resized to
    mean: tuple[float, ...]  # per channel, in value_range units
    std: tuple[float, ...]
    # Written by newer trainings as checkpoint["preprocessing"] (the backbone's input record); these defaults are what
    # every run before that used: 3 channels, uint8 mapped onto 0..1, no fixed side.
    channels: int = 3
    value_range: tuple[float, float] = (0.0, 1.0)
    fixed_size: int | None = None


@dataclass(frozen=True)
class RunFolder:
    """A finished run folder's records, as xferlab.engine.run wrote them."""

    path: Path
    config: TrainConfig
    metrics: dict
    checkpoint: Checkpoint
    predictions: dict[str, np.ndarray] = field(repr=False)  # val/test labels and probs at the best epoch


def _load_checkpoint(path: Path) -> Checkpoint:
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise XferlabError(f"{path}: {size / 1024**2:.0f} MiB is larger than any xferlab model.pt "
                           f"({MAX_CHECKPOINT_BYTES / 1024**3:.0f} GiB at most); point at a run folder xferlab wrote")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError ... depending on the damage
        raise XferlabError(f"{path}: cannot be loaded safely ({str(err).strip()[:200] or type(err).__name__}); "
                           "retrain the run or copy its model.pt again") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise XferlabError(f"{path}: not an xferlab model.pt (missing {', '.join(missing)}); "
                           "point at a run folder written by xferlab train")
    pre = raw.get("preprocessing") or {}
    mean, std = pre.get("mean", raw["mean"]), pre.get("std", raw["std"])
    return Checkpoint(raw["state_dict"], str(raw["backbone"]), [str(c) for c in raw["class_names"]],
                      (int(raw["image_size"][0]), int(raw["image_size"][1])),
                      tuple(float(v) for v in mean), tuple(float(v) for v in std),
                      channels=int(pre.get("channels", 3)),
                      value_range=tuple(float(v) for v in pre.get("value_range", (0.0, 1.0))),
                      fixed_size=None if pre.get("size") is None else int(pre["size"]))


def read_run_folder(path: str | os.PathLike) -> RunFolder:
    """Read a run folder written by `xferlab train` (or a study); errors name the missing or damaged file."""
    root = Path(path)
    if not root.is_dir():
        raise XferlabError(f"{root}: not a run folder (no such directory); give a folder written by xferlab train")
    for name in (CONFIG, METRICS, MODEL):
        if not (root / name).is_file():
            raise XferlabError(f"{root}: no {name}; give a finished run folder written by xferlab train "
                               "(a study keeps them under runs/<backbone>-<regime>-seed<S>/)")
    config = build(TrainConfig, read_yaml(root / CONFIG), str(root / CONFIG))
    try:
        metrics = json.loads((root / METRICS).read_text())
    except (OSError, ValueError) as err:
        raise XferlabError(f"{root / METRICS}: cannot read ({err}); retrain the run") from None
    predictions = {}
    if (root / PREDICTIONS).is_file():
        with np.load(root / PREDICTIONS, allow_pickle=False) as npz:
            predictions = {k: npz[k] for k in npz.files}
    return RunFolder(root, config, metrics, _load_checkpoint(root / MODEL), predictions)
