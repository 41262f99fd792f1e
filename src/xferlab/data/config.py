"""The data settings (DataConfig): where the images are and how to read them. Here, inside data/, so that the data
sources can take it without importing xferlab.config (which sits above the backbones); xferlab.config re-exports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, field_validator

from xferlab.data.groups import check_setting
from xferlab.data.registry import SOURCES
from xferlab.errors import did_you_mean
from xferlab.options import MAX_SEED


class StrictModel(BaseModel):
    """Every config rejects unknown keys (a typo is an error naming the key) and validates assignments."""

    # allow_inf_nan=False: `lr: .nan` or `--lr inf` is an error naming the key, not a run that trains on NaN.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Seeds reach numpy's generators (which refuse negative seeds) and scikit-learn's random_state (at most 2**32 - 1):
# every seed of a config is a whole number in that range, so a bad one is a config error, not a traceback mid-run.
Seed = Annotated[int, annotated_types.Ge(0), annotated_types.Le(MAX_SEED)]

# Upper bound that catches a typo (an extra zero) before it allocates: 4096 px is beyond every registered backbone's
# useful input and near full chest-radiograph resolution.
MAX_IMAGE_SIZE = 4096


class DataConfig(StrictModel):
    """Where the images are and how to read them."""

    path: Path = Field(description="dataset folder (npy, folder, medmnist) or manifest file (csv)")
    format: str = Field("npy", description="data layout, a registered data source: npy, folder, csv or medmnist")
    image_size: int | None = Field(None, gt=0, le=MAX_IMAGE_SIZE,
                                   description="resize to S×S; default: the images' own size")
    val_split: Literal["ordered", "random"] = Field(
        "ordered", description="how val is carved from the train pool when the source has no val split"
    )
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="csv sources without a split column")
    medmnist_flag: str | None = Field(None, description="medmnist: dataset flag, e.g. pneumoniamnist (required there)")
    skip_unreadable: bool = Field(False, description="folder/csv: skip unreadable images with a warning")
    allow_external_links: bool = Field(
        False, description="folder: follow symlinks whose target lies outside the dataset folder (refused by default)"
    )
    memory_budget_mb: float | None = Field(
        None, ge=0,
        description="folder/csv: when the decoded uint8 images would take more than this many MiB, stream them from "
        "disk per batch (DataLoader workers) instead of loading them; default: load everything. npy (memory-mapped) "
        "and medmnist ignore it",
    )
    loader_workers: int = Field(
        2, ge=0, description="DataLoader worker processes that decode streamed images (0: in the main process)"
    )
    groups: str | None = Field(
        None, description="patient ids: a preset (kermany, nih, chexpert), dicom (the header's PatientID), none, or "
        "a regular expression on each file's path relative to the dataset folder whose first capture group is the "
        "patient; default: the csv group column, the npy groups.csv, PatientID for DICOM files (docs/patients.md)"
    )
    unmatched: Literal["error", "own-group"] = Field(
        "error", description="files data.groups gives no patient id: an error, or each a patient of its own"
    )
    exclude: Path | None = Field(
        None, description="a CSV of image ids to leave out before the splits are made: the audit's label_issues.csv "
        "or any CSV with an id column (a path relative to the dataset folder; ARRAY.npy:ROW for npy; docs/labels.md)"
    )
    seed: Seed = 0

    @field_validator("groups")
    @classmethod
    def _known_groups(cls, v: str | None) -> str | None:
        return None if v is None else check_setting(v)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"unknown data format{did_you_mean(v, SOURCES)}; "
                             f"choose one of {', '.join(sorted(SOURCES))}")
        return v
