"""The record of one audit check (AuditCheck: what it computes, its finding, report block and figures, when it runs)
and what its functions get and give (AuditInputs, Computed). The registry of checks is xferlab.audit.checks.CHECKS.

An entry's functions get:
  compute(inputs)                        -> Computed (audit.json's record under the check's name; per-image arrays
                                            for audit_arrays.npz)
  finding(record, audit)                 -> (level, text) or None; `audit`: everything audit.json holds so far
  block(record, audit)                   -> blocks.Block or None: the check's part of the report, as neutral data
  figures(inputs, record, arrays, out)   -> {figure name: PNG file written in `out`, or None}; `arrays`: every
                                            check's per-image arrays
A check whose optional package is missing (`needs`) is recorded as skipped with the install line; the verdict notes
it and the report shows the note, without the check's own functions being called."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import xferlab.audit.blocks as blocks
from xferlab import extras
from xferlab.audit.common import skipped
from xferlab.audit.scan import ImageScan
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.dataset import ImageDataset

# When a check runs. STATISTICS: on the main thread, in the registry's order, with one BLAS thread (audit/run.py says
# why). BESIDE: on a worker thread while the statistics run (it must end when `inputs.stop` is set). AFTER: once the
# statistics (and the checks beside them) are done, e.g. a check that loads a trained model.
STATISTICS, BESIDE, AFTER = "statistics", "beside", "after"
STAGES = (STATISTICS, BESIDE, AFTER)

Finding = tuple[str, str]  # (level: 'ok' | 'caution' | 'problem', text)


@dataclass(frozen=True)
class AuditInputs:
    """What a check may read: the data, the streaming pass's per-image arrays (embeddings, hashes, descriptors, pixel
    statistics), the configs, whether to show progress, and the event that asks a check beside others to stop."""

    data: ImageDataset
    scan: ImageScan
    cfg: AuditConfig
    data_cfg: DataConfig
    progress: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Computed:
    """A check's record for audit.json (JSON-able once numpy scalars are converted) and its per-image arrays (one
    row per image, dataset order) for audit_arrays.npz."""

    record: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _always(cfg: AuditConfig) -> bool:
    return True


@dataclass(frozen=True)
class AuditCheck:
    """One audit check. `name`: its key in audit.json, its verdict topic and its timing entry (`timed_as` when it is
    timed with another check); `title`: what the verdict and report call it when it could not run; `enabled`: whether
    this audit runs it at all; `stage`: when it runs (a stage, or a function of the config giving one);
    `prepare(data, cfg)`: raises before the long steps when the check cannot run on this
    data; `needs`: (module, extra) of an optional package; `headline`: the verdict's headline when this check's finding
    is a problem (the first such check in registry order wins; None: 'the test split is not a random sample');
    `headline_defers`: its headline only when no other check's finding is a problem (a lesser concern, e.g. labels)."""

    name: str
    title: str
    compute: Callable[[AuditInputs], Computed]
    finding: Callable[[dict, dict], Finding | None] | None = None
    block: Callable[[dict, dict], blocks.Block | None] | None = None
    figures: Callable[[AuditInputs, dict, dict[str, np.ndarray], Path], dict[str, str | None]] | None = None
    stage: str | Callable[[AuditConfig], str] = STATISTICS
    enabled: Callable[[AuditConfig], bool] = _always
    prepare: Callable[[ImageDataset, AuditConfig], None] | None = None
    needs: tuple[str, str] | None = None
    headline: str | None = None
    headline_defers: bool = False
    timed_as: str | None = None


def stage_of(check: AuditCheck, cfg: AuditConfig) -> str:
    stage = check.stage(cfg) if callable(check.stage) else check.stage
    if stage not in STAGES:  # a check that never ran would be missing from audit.json without a word
        raise ValueError(f"audit check {check.name!r}: stage {stage!r} is not one of {', '.join(STAGES)}")
    return stage


# ----------------------------------------------------------------------------------- a missing optional package


def unavailable(check: AuditCheck) -> str | None:
    """Why the check cannot run here (its optional package is not installed), or None."""
    return None if check.needs is None else extras.missing(*check.needs)


def is_unavailable(record: dict) -> bool:
    """Whether a check's record says its optional package was missing (recorded by the runner, not the check)."""
    return record.get("status") == "skipped" and "missing" in record


def unavailable_record(check: AuditCheck, reason: str) -> dict:
    return skipped(reason, missing=check.needs[0] if check.needs else None)


def check_finding(check: AuditCheck, audit: dict) -> Finding | None:
    """The check's finding from its record in `audit`; a note for a check whose package was missing."""
    record = audit[check.name]
    if is_unavailable(record):
        return "ok", f"{check.title}: not checked ({record['reason']})."
    return check.finding(record, audit) if check.finding else None


def check_block(check: AuditCheck, audit: dict) -> blocks.Block | None:
    """The check's report block from its record in `audit`; a note for a check whose package was missing."""
    record = audit[check.name]
    if is_unavailable(record):
        return blocks.Block(check.title, [blocks.Text(f"Not run: {record['reason']}.")])
    return check.block(record, audit) if check.block else None


