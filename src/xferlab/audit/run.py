"""The audit top to bottom: data -> embeddings (once) -> shift tests, class balance, pixel statistics, leakage, and
beside them (frozen regime) the re-split experiment -> verdict -> figures, audit_arrays.npz and audit.json (written
last: its presence means the audit is complete)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import xferlab.audit.figures as figures
from xferlab import artifacts
from xferlab.audit.common import jsonable
from xferlab.audit.leakage import leakage_audit
from xferlab.audit.pixels import STATS, pixel_audit
from xferlab.audit.resplit import resplit_experiment
from xferlab.audit.scan import ImageScan, load_embeddings, scan_dataset
from xferlab.audit.shift import class_balance, shift_tests
from xferlab.audit.verdict import make_verdict
from xferlab.backbones.regimes import parse_regime
from xferlab.config import AuditConfig, DataConfig
from xferlab.data.dataset import ImageDataset
from xferlab.data.groups import patient_counts
from xferlab.data.sources import load_dataset
from xferlab.engine.accel import num_threads as torch_threads
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

@contextmanager
def _timed(seconds: dict, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def _overlaps(cfg: AuditConfig) -> bool:
    """Whether the re-split experiment trains beside the statistics: when it fits linear heads on the cached
    embeddings (one torch thread on a CPU, or an accelerator). A regime that trains the backbone uses every thread
    itself and runs after them. The statistics' faiss searches use every thread too, so on 2 cores the two sides
    share them; measured at 58,000 phantoms (README), the whole audit took 0.74 of the time it took in sequence."""
    return parse_regime(cfg.regime).cache_features


def _resplit(data: ImageDataset, embeddings: np.ndarray, cfg: AuditConfig, seconds: dict, progress: bool,
             stop: threading.Event) -> dict:
    with _timed(seconds, "resplit"):
        return resplit_experiment(data, embeddings, cfg, progress, stop)


def _dataset_info(data: ImageDataset) -> dict:
    """What was audited; with patient groups, where they came from and images per patient per split."""
    patients = None if data.groups is None else patient_counts(data.groups, data.splits, artifacts.SPLITS)
    return {"source": data.source, "format": data.meta.get("format"), "class_names": data.class_names,
            "counts": data.counts(), "images": len(data.labels), "image_size": list(data.image_size),
            "channels": data.channels, "groups": data.groups is not None,
            "groups_from": data.meta.get("groups_from"), "patients": patients}


def _statistics(data: ImageDataset, scan: ImageScan, cfg: AuditConfig, seconds: dict,
                progress: bool) -> tuple[dict, dict]:
    """Shift, class balance, pixels and leakage; returns the results and the per-image arrays behind them.

    BLAS runs single-threaded here: the matrices are small (at most a few thousand rows), and measured on a shared
    2-core machine, multi-threaded OpenBLAS LAPACK calls (the PCA) ran 8× slower than one thread under load.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        with _timed(seconds, "shift"):
            shift, scores = shift_tests(data, scan.embeddings, cfg)
            balance = class_balance(data, cfg)
        with _timed(seconds, "pixels"):
            pixels, values = pixel_audit(data, cfg, scan.pixel_stats)
        with _timed(seconds, "leakage"):
            leakage = leakage_audit(data, scan.embeddings, cfg, hashes=scan.hashes, phashes=scan.phashes,
                                    descriptors=scan.descriptors, progress=progress)
    results = {"shift": shift, "class_balance": balance, "pixels": pixels, "leakage": leakage}
    return results, {"domain_scores": scores, "pixel_stats": values}


def _statistics_and_resplits(data: ImageDataset, scan: ImageScan, cfg: AuditConfig, seconds: dict,
                              progress: bool) -> tuple[dict, dict]:
    """_statistics, and the re-split experiment beside them when _overlaps (it needs only the embeddings), else
    after them. Should either side fail or the process be interrupted, the re-splits are stopped at their next epoch
    and waited for, so that no thread of the audit outlives it."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xferlab-resplit") as pool:
        args = (data, scan.embeddings, cfg, seconds, progress, stop)
        beside = pool.submit(_resplit, *args) if _overlaps(cfg) else None
        try:
            result, arrays = _statistics(data, scan, cfg, seconds, progress)
            result["resplit"] = beside.result() if beside else _resplit(*args)
        except BaseException:
            stop.set()  # leaving the block waits for the re-splits' thread to end
            raise
    return result, arrays


def _figures(data: ImageDataset, embeddings: np.ndarray, result: dict, arrays: dict, cfg: AuditConfig,
             out: Path) -> dict:
    made = {"shift": figures.shift_figure(data, embeddings, result["shift"], cfg.alpha, out / "shift.png"),
            "pixels": figures.pixel_figure(data, arrays["pixel_stats"], out / "pixels.png"),
            "test_like": figures.test_like_figure(data, arrays["domain_scores"], cfg.thumbnails, out / "test_like.png"),
            "leakage": figures.leakage_figure(data, result["leakage"], 2 * cfg.thumbnails, out / "leakage.png")}
    if result["resplit"].get("status") == "ok":
        made["resplit"] = figures.resplit_figure(result["resplit"], out / "resplit.png")
    return {k: v for k, v in made.items() if v}


def _shortcut(data: ImageDataset, data_cfg: DataConfig, cfg: AuditConfig, result: dict,
              seconds: dict) -> dict[str, tuple[str, str]]:
    """The shortcut check into result["shortcut"]; its verdict finding (make_verdict's `extra`)."""
    from xferlab.explain.audit_check import audit_shortcut, shortcut_finding

    with _timed(seconds, "shortcut"), torch_threads(cfg.num_threads):
        result["shortcut"] = audit_shortcut(data, data_cfg.format, Path(data_cfg.path), cfg.shortcut_run, cfg.alpha,
                                            cfg.seed)
    finding = shortcut_finding(result["shortcut"])
    return {"shortcut": (finding["level"], finding["text"])}


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
    if audit_cfg.shortcut_run:  # a run that does not fit the data fails now, not after the embeddings
        from xferlab.explain.audit_check import check_shortcut_run

        check_shortcut_run(data, audit_cfg.shortcut_run)
    given = None if embeddings is None else load_embeddings(embeddings, len(data.labels))
    with torch_threads(audit_cfg.num_threads):
        with _timed(seconds, "embedding"):  # the streaming pass: embeddings, hashes, descriptors, pixel statistics
            scan = scan_dataset(data, audit_cfg, given, progress)
        embeddings = scan.embeddings
        result, arrays = _statistics_and_resplits(data, scan, audit_cfg, seconds, progress)
    result = {"dataset": _dataset_info(data), "embedding_runtime": scan.runtime, **result,
              "config": {"data": data_cfg.model_dump(mode="json"), "audit": audit_cfg.model_dump(mode="json")}}
    # the shortcut check needs a trained model: the run named in the config
    extra = _shortcut(data, data_cfg, audit_cfg, result, seconds) if audit_cfg.shortcut_run else None
    result["verdict"] = make_verdict(result, extra)
    with _timed(seconds, "figures"):
        result["figures"] = _figures(data, embeddings, result, arrays, audit_cfg, out)
    arrays = {"labels": data.labels, "splits": data.splits.astype(str), "stat_names": np.array(list(STATS)),
              **arrays}
    seconds["total"] = time.perf_counter() - start
    result["seconds"] = seconds
    result = jsonable(result)
    artifacts.write_audit(out, result, arrays)
    log.info("audit written to %s in %.1fs", out, seconds["total"])
    return result
