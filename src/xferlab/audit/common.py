"""Shared pieces of the audit: the comparison it makes (train+val against test), size floors, skipped results and
permutation p-values."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from xferlab.data.dataset import ImageDataset

REFERENCE = ("train", "val")  # what test is compared with: everything a model could have learned from
TARGET = "test"

# A two-sample test on fewer images per side is not worth reporting: 5-fold cross-validation leaves a fold with one
# or two images of the smaller side, and per-class power is near zero, so a p-value there would only mislead.
MIN_PER_SIDE = 10


class Stopped(Exception):
    """The audit set a check's `stop` event (the audit around it failed or was interrupted): a check running beside
    the statistics ends at its next step."""


def check_stop(stop: threading.Event | None, what: str) -> None:
    if stop is not None and stop.is_set():
        raise Stopped(f"{what} was stopped by its caller")


def skipped(reason: str, **extra: Any) -> dict:
    """A result that could not be computed, with the reason in words (shown in the verdict and the report)."""
    return {"status": "skipped", "reason": reason, **extra}


def is_ok(result: dict | None) -> bool:
    return bool(result) and result.get("status") == "ok"


def permutation_p(observed: float, null: np.ndarray) -> float:
    """(1 + #{T_b >= T}) / (B + 1): never zero, and exact under exchangeability (Phipson & Smyth 2010). A permuted
    statistic that is undefined (NaN: e.g. a block permutation that left one image on a side) counts as at least the
    observed one, so it can only make the test more conservative, never reject."""
    if np.isnan(observed):  # nothing observed to test
        return 1.0
    null = np.asarray(null)
    return float((1 + np.count_nonzero((null >= observed) | np.isnan(null))) / (len(null) + 1))


def bonferroni(pvalues: list[float]) -> float | None:
    """min(1, m · min p) over the p-values given; None when there are none."""
    return None if not pvalues else float(min(1.0, len(pvalues) * min(pvalues)))


def domain_masks(data: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the reference side (train+val) and the target side (test)."""
    ref = np.isin(data.splits, REFERENCE)
    return ref, data.splits == TARGET


def size_problem(n_ref: int, n_target: int, where: str, unit: str = "image") -> str | None:
    """The reason a two-sample test cannot be run on these sizes (of images, or of patients when permutations move
    whole patients), or None when it can."""
    if n_target == 0:
        return f"{where}: the test split has no {unit}s"
    small = [(name, n) for name, n in (("test", n_target), ("train+val", n_ref)) if n < MIN_PER_SIDE]
    if small:
        name, n = small[0]
        return (f"{where}: only {n} {name} {unit}{'s' if n != 1 else ''}; the shift tests need at least "
                f"{MIN_PER_SIDE} per side, so no p-value is reported")
    return None


def jsonable(obj: Any) -> Any:
    """numpy scalars and arrays -> Python; NaN and infinity -> None (audit.json is strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if math.isnan(value) or math.isinf(value) else value
    return obj
