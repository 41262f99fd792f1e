"""The audit top to bottom: data -> embeddings (once) -> every check of xferlab.audit.checks by its stage (the
statistics: shift tests, class balance, pixel statistics, leakage; beside them the label check and, for the frozen
regime, the re-split experiment; after them, the shortcut check on a trained run) -> verdict -> figures,
audit_arrays.npz and audit.json (written last: its presence means the audit is complete)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from xferlab import artifacts
from xferlab.audit.checks import CHECKS
from xferlab.audit.common import jsonable
from xferlab.audit.entry import (
    AFTER,
    BESIDE,
    STATISTICS,
    AuditCheck,
    AuditInputs,
    Computed,
    is_unavailable,
    stage_of,
    unavailable,
    unavailable_record,
)
from xferlab.audit.pixels import STATS
from xferlab.audit.scan import load_embeddings, scan_dataset
from xferlab.audit.verdict import make_verdict
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.groups import patient_counts
from xferlab.data.sources import load_dataset
from xferlab.engine.accel import num_threads as torch_threads
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)


@contextmanager
def _timed(seconds: dict, name: str) -> Iterator[None]:
    """Adds the block's wall-clock seconds to seconds[name] (a check timed with another adds to its entry)."""
    start = time.perf_counter()
    yield
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


def _dataset_info(data: ImageDataset) -> dict:
    """What was audited; with patient groups, where they came from and images per patient per split."""
    patients = None if data.groups is None else patient_counts(data.groups, data.splits, artifacts.SPLITS)
    return {"source": data.source, "format": data.meta.get("format"), "class_names": data.class_names,
            "counts": data.counts(), "images": len(data.labels), "image_size": list(data.image_size),
            "channels": data.channels, "groups": data.groups is not None,
            "groups_from": data.meta.get("groups_from"), "patients": patients,
            "excluded": data.meta.get("excluded")}  # data.exclude: {file, count} of the images left out, or None


def _compute(check: AuditCheck, inputs: AuditInputs, seconds: dict) -> Computed:
    """One check's record (skipped with the install line when its optional package is missing), timed."""
    reason = unavailable(check)
    if reason:
        return Computed(unavailable_record(check, reason))
    with _timed(seconds, check.timed_as or check.name):
        return check.compute(inputs)


def _run_checks(checks: list[AuditCheck], inputs: AuditInputs, seconds: dict) -> dict[str, Computed]:
    """Every check by its stage: those BESIDE the statistics start on a worker thread first, the STATISTICS run in
    order on this one, then the others wait for the checks beside them and the AFTER ones run. Should any fail or the
    process be interrupted, the checks beside are asked to stop (inputs.stop) and waited for, so that no thread of
    the audit outlives it.

    BLAS runs single-threaded during the statistics: the matrices are small (at most a few thousand rows), and
    measured on a shared 2-core machine, multi-threaded OpenBLAS LAPACK calls (the PCA) ran 8× slower than one
    thread under load."""
    stages = {c.name: stage_of(c, inputs.cfg) for c in checks}
    done: dict[str, Computed] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xferlab-audit") as pool:
        beside = {c.name: pool.submit(_compute, c, inputs, seconds) for c in checks if stages[c.name] == BESIDE}
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                done.update((c.name, _compute(c, inputs, seconds)) for c in checks if stages[c.name] == STATISTICS)
            for c in checks:
                if c.name in beside:
                    done[c.name] = beside[c.name].result()
                elif stages[c.name] == AFTER:
                    done[c.name] = _compute(c, inputs, seconds)
        except BaseException:
            inputs.stop.set()  # leaving the block waits for the thread beside to end
            raise
    return {c.name: done[c.name] for c in checks}


def _figures(checks: list[AuditCheck], inputs: AuditInputs, result: dict, arrays: dict, out: Path) -> dict:
    made: dict[str, str | None] = {}
    for check in checks:
        if check.figures and not is_unavailable(result[check.name]):
            made.update(check.figures(inputs, result[check.name], arrays, out))
    return {k: v for k, v in made.items() if v}


def run_audit(data_cfg: DataConfig, audit_cfg: AuditConfig, out_dir: Path, progress: bool = True,
              embeddings: np.ndarray | str | Path | None = None) -> dict:
    """Audit the dataset's splits and write `out_dir/audit.json` (every statistic), figures (PNG) and
    `audit_arrays.npz` (per-image pixel statistics and domain scores). Returns what audit.json holds.

    `embeddings` (an N × D array or .npy file, one row per image in dataset order) replaces the backbone pass."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise XferlabError(f"cannot create {out} ({err.strerror or err}); choose a writable --out") from None
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    # Images are read a chunk at a time (scan.py), so data.memory_budget_mb holds as in training.
    data = load_dataset(data_cfg)
    checks = [c for c in CHECKS.values() if c.enabled(audit_cfg)]
    for check in checks:  # a check that cannot run on this data fails now, not after the embeddings
        if check.prepare and not unavailable(check):
            check.prepare(data, audit_cfg)
    given = None if embeddings is None else load_embeddings(embeddings, len(data.labels))
    with torch_threads(audit_cfg.num_threads):
        with _timed(seconds, "embedding"):  # the streaming pass: embeddings, hashes, descriptors, pixel statistics
            scan = scan_dataset(data, audit_cfg, given, progress)
        inputs = AuditInputs(data, scan, audit_cfg, data_cfg, progress)
        computed = _run_checks(checks, inputs, seconds)
    result = {"dataset": _dataset_info(data), "embedding_runtime": scan.runtime, "runtime": scan.runtime_record,
              **{name: c.record for name, c in computed.items()},
              "config": {"data": data_cfg.model_dump(mode="json"), "audit": audit_cfg.model_dump(mode="json")}}
    result["verdict"] = make_verdict(result, checks)
    arrays = {name: array for c in computed.values() for name, array in c.arrays.items()}
    with _timed(seconds, "figures"):
        result["figures"] = _figures(checks, inputs, result, arrays, out)
    arrays = {"labels": data.labels, "splits": data.splits.astype(str), "stat_names": np.array(list(STATS)),
              **arrays}
    seconds["total"] = time.perf_counter() - start
    result["seconds"] = seconds
    result = jsonable(result)
    artifacts.write_audit(out, result, arrays)
    log.info("audit written to %s in %.1fs", out, seconds["total"])
    return result
