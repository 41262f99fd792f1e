"""Typed, validated configs for data and training runs; YAML in (safe loader) and out.

Every config rejects unknown keys, so a typo in a YAML file is an error that names the key rather than a silently
ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xferlab.errors import XferlabError, did_you_mean

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the images are and how to read them."""

    path: Path = Field(description="dataset folder (npy, folder, medmnist) or manifest file (csv)")
    format: str = Field("npy", description="a registered data source: npy, folder, csv, medmnist")
    image_size: int | None = Field(None, gt=0, description="resize to S×S; default: the images' own size")
    val_split: Literal["ordered", "random"] = Field(
        "ordered", description="how val is carved from the train pool when the source has no val split"
    )
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="csv sources without a split column")
    medmnist_flag: str | None = Field(None, description="medmnist: dataset flag, e.g. pneumoniamnist")
    skip_unreadable: bool = Field(False, description="folder/csv: skip unreadable images with a warning")
    seed: int = 0

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from xferlab.data.sources import SOURCES

        if v not in SOURCES:
            raise ValueError(f"unknown data format{did_you_mean(v, SOURCES)}; choose one of {', '.join(sorted(SOURCES))}")
        return v


class TrainConfig(_Strict):
    """One training run. Defaults are the reference study's (Adam 1e-3, cosine per step, batch 32, 30 epochs)."""

    data: DataConfig
    backbone: str = "resnet18"
    weights: str = Field("imagenet", description="'imagenet', 'none' or a state-dict file path")
    regime: str = "frozen"
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "none"] = "cosine"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, gt=0, description="CPU threads for torch; default: torch's choice")

    @field_validator("regime")
    @classmethod
    def _known_regime(cls, v: str) -> str:
        from xferlab.backbones.regimes import parse_regime

        parse_regime(v)  # raises XferlabError with the valid choices
        return v


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line naming the first offending field, what was received and what is allowed."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown key '{loc}'; remove it or check its spelling"
    if e["type"] == "missing":
        return f"{where}: '{loc}' is required"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{where}: '{loc}' = {e.get('input')!r} is invalid: {msg}"


def build(model: type[BaseModel], values: dict[str, Any], where: str = "config"):
    """Validate `values` into `model`, turning pydantic's report into an XferlabError."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise XferlabError(format_validation_error(err, where)) from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Load a YAML mapping with the safe loader; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise XferlabError(f"{path}: cannot read config ({err.strerror}); check the path") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise XferlabError(f"{path}: YAML syntax error{line}: {problem}; fix the file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise XferlabError(f"{path}: a config must be a mapping of keys to values, got {type(values).__name__}")
    return values


def to_yaml(cfg: BaseModel) -> str:
    """The fully resolved config as YAML (paths as strings), saved beside every result."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class AuditConfig(_Strict):
    """The split audit: shift tests, pixel statistics, leakage and the re-split experiment (xferlab.audit)."""

    backbone: str = Field("efficientnet_lite0", description="fixed backbone whose embeddings the shift tests use")
    weights: str = "imagenet"
    regime: str = Field("frozen", description="regime trained on every re-split")
    resplits: int = Field(20, ge=0, description="R stratified, group-aware re-splits of the pooled data")
    alpha: float = Field(0.05, gt=0, lt=1)
    permutations: int = Field(1000, ge=1, description="permutations for the MMD and classifier tests")
    seed: int = 0
