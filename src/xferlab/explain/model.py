"""A finished run folder loaded back for explanation: its resolved config and its best weights (weights-only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import xferlab.backbones.zoo  # noqa: F401  (registers the backbones)
from xferlab.backbones.registry import TransferModel, create_model
from xferlab.config import TrainConfig, build, read_yaml
from xferlab.errors import XferlabError

MAX_CHECKPOINT_BYTES = 4 << 30  # larger than any registered backbone's model.pt by far; refuse before reading


@dataclass
class LoadedRun:
    path: Path
    config: TrainConfig
    model: TransferModel
    class_names: list[str]
    image_size: tuple[int, int]


def load_run(run_dir: str | Path) -> LoadedRun:
    """config.yaml and model.pt of a run folder; the model on the CPU in eval mode."""
    run_dir = Path(run_dir)
    config_file, weights_file = run_dir / "config.yaml", run_dir / "model.pt"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise XferlabError(f"{run_dir}: no {f.name}; give a run folder written by `xferlab train` or a study")
    cfg = build(TrainConfig, read_yaml(config_file), where=str(config_file))
    if weights_file.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise XferlabError(f"{weights_file}: larger than {MAX_CHECKPOINT_BYTES >> 30} GiB; not a run's model.pt")
    try:
        saved = torch.load(weights_file, map_location="cpu", weights_only=True)  # a pickle that runs code is refused
    except Exception as err:  # torch raises several types for corrupt, truncated or unsafe files
        raise XferlabError(f"{weights_file}: cannot load ({type(err).__name__}: {str(err).splitlines()[0]}); "
                           "retrain the run or restore the file") from None
    if not isinstance(saved, dict) or "state_dict" not in saved or "class_names" not in saved:
        raise XferlabError(f"{weights_file}: not an xferlab model.pt (no state_dict / class_names)")
    class_names = list(saved["class_names"])
    image_size = tuple(int(s) for s in saved.get("image_size", (224, 224)))
    model = create_model(saved.get("backbone", cfg.backbone), len(class_names), "none", image_size=image_size[0])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        raise XferlabError(f"{weights_file}: weights do not fit backbone '{cfg.backbone}' "
                           f"({str(err).splitlines()[0]}); the run folder is inconsistent") from None
    model.eval()
    return LoadedRun(run_dir, cfg, model, class_names, image_size)
