"""A saved run folder checked against what wrote it: its config.yaml must still be a valid TrainConfig and its
model.pt, when kept, this run's (backbone, class count, the backbone's feature width). Above config and the backbone
registry, below every reader of run folders (study results, the report, predict / export / load_run)."""

from __future__ import annotations

from xferlab import artifacts, checks
from xferlab.backbones.registry import get_spec
from xferlab.config import TrainConfig, build
from xferlab.errors import XferlabError


def check_run(run: artifacts.RunFolder) -> None:
    """What a run folder must agree with beyond its files' own checks (artifacts.read_run): config.yaml is still a
    valid TrainConfig, and model.pt, when kept, is this run's (backbone, class count, the backbone's feature width).
    The report needs no weights, but a mismatched model.pt is reported."""
    check_run_with(run, artifacts.read_checkpoint(run.path))


def check_run_with(run: artifacts.RunFolder, ckpt: dict | None) -> TrainConfig:
    """check_run for a model.pt already read (artifacts.read_checkpoint; None: none kept), so a caller that needs
    the weights (xferlab.use) loads them once; returns the validated config."""
    try:
        cfg = build(TrainConfig, run.config, where=str(run.path / artifacts.CONFIG_YAML))
    except XferlabError as err:
        raise XferlabError(f"{err} ({checks.rerun_hint(run.path)})") from None
    if ckpt is not None:
        checks.check_checkpoint(run.path / artifacts.MODEL_PT, ckpt, cfg.backbone, len(run.class_names),
                                _feature_dim(cfg.backbone))
    return cfg


def _feature_dim(backbone: str) -> int | None:
    try:
        return get_spec(backbone).feature_dim
    except XferlabError:  # its family's package is missing here: the class count check stands alone
        return None
