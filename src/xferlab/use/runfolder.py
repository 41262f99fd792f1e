"""A finished run folder read for use: xferlab.artifacts' run record (artifacts.read_run, artifacts.read_checkpoint)
turned into what prediction needs, the validated TrainConfig and model.pt's checkpoint with its input record.

File names and formats stay in xferlab.artifacts; this module only checks what it needs is there and interprets it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xferlab import artifacts
from xferlab.config import TrainConfig
from xferlab.engine.saved import check_run_with
from xferlab.errors import XferlabError
from xferlab.inputs import InputSpec

_CHECKPOINT_KEYS = ("state_dict", "backbone", "class_names", "image_size", "mean", "std")
_INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(InputSpec))


@dataclass(frozen=True)
class Checkpoint:
    """model.pt: the best weights and the preprocessing they were trained with."""

    state_dict: dict[str, torch.Tensor]
    backbone: str
    class_names: list[str]
    image_size: tuple[int, int]  # H, W every input is resized to
    input: InputSpec  # channels, intensity mapping, mean/std, fixed side: what Preprocess.for_input builds from


@dataclass(frozen=True)
class TrainedRun:
    """A finished run folder: artifacts' record (config values, history, metrics, predictions), the config validated
    as a TrainConfig, and model.pt's checkpoint."""

    record: artifacts.RunFolder
    config: TrainConfig
    checkpoint: Checkpoint

    @property
    def path(self) -> Path:
        return self.record.path

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.metrics


def input_spec(raw: dict[str, Any], where: Path) -> InputSpec:
    """The checkpoint's input record (engine.run saves the backbone's InputSpec as "preprocessing"). Runs from before
    that record existed used 3 channels, uint8 mapped onto 0..1 and no fixed side: the defaults, with their mean/std."""
    record = raw.get("preprocessing")
    if record is None:
        return InputSpec(channels=3, mean=tuple(float(v) for v in raw["mean"]),
                         std=tuple(float(v) for v in raw["std"]), value_range=(0.0, 1.0), size=None)
    unknown = sorted(set(record) - set(_INPUT_FIELDS))
    if unknown:
        raise XferlabError(f"{where}: its preprocessing record has {', '.join(unknown)}, which this xferlab does not "
                           "know; update xferlab to use this run")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
    return InputSpec(**values)


def _checkpoint(raw: dict[str, Any], where: Path) -> Checkpoint:
    missing = [k for k in _CHECKPOINT_KEYS if k not in raw]
    if missing:
        raise XferlabError(f"{where}: not an xferlab {artifacts.MODEL_PT} (missing {', '.join(missing)}); "
                           "point at a run folder written by xferlab train")
    return Checkpoint(raw["state_dict"], str(raw["backbone"]), [str(c) for c in raw["class_names"]],
                      (int(raw["image_size"][0]), int(raw["image_size"][1])), input_spec(raw, where))


def read_trained_run(path: str | os.PathLike) -> TrainedRun:
    """Read a run folder written by `xferlab train` (or a study); errors name the missing or damaged file."""
    root = Path(path)
    if not root.is_dir():
        raise XferlabError(f"{root}: not a run folder (no such directory); give a folder written by xferlab train")
    for name in (*artifacts.RUN_FILES, artifacts.MODEL_PT):
        if not (root / name).is_file():
            raise XferlabError(f"{root}: no {name}; give a finished run folder written by xferlab train "
                               "(a study keeps them under runs/<backbone>-<regime>-seed<S>/)")
    record = artifacts.read_run(root)
    raw = artifacts.read_checkpoint(root)
    # config.yaml still a TrainConfig, model.pt this run's backbone and class count: the checks `report` makes
    config = check_run_with(record, raw)
    return TrainedRun(record, config, _checkpoint(raw, root / artifacts.MODEL_PT))
