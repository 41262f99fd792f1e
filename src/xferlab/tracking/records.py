"""What a tracker is given, drawn from configs and saved records: flattened params, tags (dataset digest, xferlab
version, git commit), a finished run folder (history, final metrics with bootstrap CIs, confusion matrices,
degenerate-run flags, files) and an audit folder (verdict and statistics). Everything here reads, through
xferlab.artifacts' records; nothing writes outside a temporary folder."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xferlab import artifacts
from xferlab.evaluation.evaluate import BootstrapSettings, evaluate_split
from xferlab.evaluation.flags import degenerate_flags
from xferlab.tracking.base import Tracker, numeric

# Above this many bytes the data digest hashes the file listing (relative path, size, mtime) instead of the contents:
# tracking runs beside training and should not read a 100 GB image folder once more.
CONTENT_DIGEST_MAX_BYTES = 1 << 30
RUN_FILES = (artifacts.CONFIG_YAML, artifacts.HISTORY_CSV, artifacts.METRICS_JSON, artifacts.PREDICTIONS_NPZ,
             artifacts.MODEL_PT, artifacts.CURVES_PNG)
# Final values copied from metrics.json besides the per-split metrics with their CIs, under the names they are logged
# as (the run's totals of train_seconds and eval_seconds must not land on the per-epoch metrics of those names).
RUN_SCALARS = {"best_epoch": "best_epoch", "train_seconds": "train_seconds_total", "eval_seconds": "eval_seconds_total",
               "feature_seconds": "feature_seconds", "total_seconds": "total_seconds",
               "inference_images_per_s": "inference_images_per_s", "params": "params",
               "trainable_params": "trainable_params"}
AUDIT_PREFIX = "audit"
FLAGS_PREFIX, DEGENERATE_TAG = "flags", "degenerate"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys ({'data': {'path': p}} -> {'data.path': p}); lists as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = "None" if value is None else value
    return flat


_digest_lock = threading.Lock()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def _listing(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime) of every file of the dataset: cheap to take, and it changes when a file does."""
    out = []
    for f in _files(root):
        st = f.stat()
        out.append((f.relative_to(root).as_posix() if root.is_dir() else f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _cached_digest(path: str, listing: tuple[tuple[str, int, int], ...]) -> tuple[str, str]:
    root = Path(path)
    h = hashlib.sha256()
    if sum(size for _, size, _ in listing) > CONTENT_DIGEST_MAX_BYTES:
        h.update(repr(listing).encode())
        return h.hexdigest(), "listing"
    for rel, _, _ in listing:
        h.update(rel.encode() + b"\0")
        with open(root / rel if root.is_dir() else root, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 (consumed within the iteration)
                h.update(block)
    return h.hexdigest(), "content"


def data_digest(path: str | os.PathLike) -> tuple[str, str]:
    """(sha256, 'content' or 'listing') of the dataset's files (a folder: every file under it; a manifest: itself).
    The contents are hashed once per process while no file changes (a study's runs share one digest)."""
    p = Path(path).resolve()
    try:
        listing = _listing(p)
    except OSError:
        return "unavailable", "missing"
    with _digest_lock:  # MLflow's and TensorBoard's workers ask at the same time: hash once
        return _cached_digest(str(p), listing)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the xferlab checkout this code runs from (src/xferlab of a clone), or None: an installed copy
    may sit in a virtual environment inside some other repository, whose commit would say nothing about xferlab."""
    root = Path(__file__).resolve().parents[3]
    if not ((root / ".git").exists() and (root / "src" / "xferlab").is_dir()):
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def common_tags(data_path: str | os.PathLike) -> dict[str, str]:
    """Tags of every tracked run: the dataset path and digest, the xferlab version and, in a checkout, its commit."""
    from xferlab import __version__

    digest, kind = data_digest(data_path)
    tags = {"data_path": str(Path(data_path).resolve()), "data_digest": digest, "data_digest_kind": kind,
            "xferlab_version": __version__}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def run_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """A training run's tags: backbone, regime, seed and the common ones."""
    return {"backbone": config["backbone"], "regime": config["regime"], "seed": str(config["seed"]),
            **common_tags(config["data"]["path"])}


def start_run(tracker: Tracker, config: Mapping[str, Any]) -> None:
    """What a training run logs when it starts: its resolved config as params, and its tags."""
    tracker.log_params(flatten(config))
    tracker.set_tags(run_tags(config))


@dataclass(frozen=True)
class FinalRecord:
    """What a finished run folder gives its trackers beyond the per-epoch history."""

    metrics: dict[str, float]  # metrics.json's scalars, every val/test metric with its CI bounds
    matrices: dict[str, list]  # split -> confusion matrix
    flags: dict[str, list[str]]  # split -> degenerate-run flags (evaluation.flags), as results.csv has them


def final_metrics(run: artifacts.RunFolder, settings: BootstrapSettings) -> FinalRecord:
    """Final values of a finished run: metrics.json's scalars, and every val/test metric with its bootstrap CI bounds
    (`<split>_<metric>`, `_low`, `_high`; the same numbers results.csv gets with the same settings), plus the
    confusion matrices and the degenerate-run flags by split (from the same evaluation, so they match results.csv)."""
    final = numeric({name: run.metrics.get(key) for key, name in RUN_SCALARS.items()})
    matrices, flags = {}, {}
    for split, (labels, probs) in run.predictions.items():
        ev = evaluate_split(labels, probs, settings, run.groups.get(split))
        for name, m in ev["metrics"].items():
            final.update(numeric({f"{split}_{name}": m["value"], f"{split}_{name}_low": m["low"],
                                  f"{split}_{name}_high": m["high"]}))
        matrices[split] = ev["confusion_matrix"]
        flags[split] = degenerate_flags(labels, probs, ev)
    return FinalRecord(final, matrices, flags)


def flag_tags(flags: Mapping[str, list[str]]) -> dict[str, str]:
    """The degenerate-run flags as tags: `flags.<split>` (results.csv's codes, space-separated, or 'none') and
    `degenerate` ('true' when any split is flagged, as results.csv's column)."""
    tags = {f"{FLAGS_PREFIX}.{split}": " ".join(codes) or "none" for split, codes in flags.items()}
    tags[DEGENERATE_TAG] = str(any(flags.values())).lower()
    return tags


def _confusion_png(matrices: dict[str, list], class_names: list[str], path: Path) -> Path:
    """The confusion matrices of one run as a PNG (sklearn's display), for the trackers' image views."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(matrices), figsize=(3.2 * len(matrices), 3.2), squeeze=False)
    for ax, (split, cm) in zip(axes[0], matrices.items(), strict=True):
        ConfusionMatrixDisplay(np.asarray(cm), display_labels=class_names).plot(ax=ax, colorbar=False,
                                                                                 values_format="d")
        ax.set_title(split)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def log_run_folder(tracker: Tracker, run_dir: Path, settings: BootstrapSettings, history: bool) -> None:
    """Log a finished run folder: (with `history`, the per-epoch metrics it holds, for a run trained without this
    tracker) final metrics with CIs, the confusion matrices as an image, and the folder's files as artifacts."""
    run = artifacts.read_run(run_dir)
    if history:
        for row in run.history:
            tracker.log_metrics(row, step=int(row["epoch"]))
    final = final_metrics(run, settings)
    matrices = final.matrices
    tracker.log_metrics(final.metrics)
    tracker.set_tags(flag_tags(final.flags))  # MLflow tags; TensorBoard shows them as `tag.` hparams
    files = [run.path / name for name in RUN_FILES if (run.path / name).is_file()]
    tracker.log_artifacts(files)
    if matrices:
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifacts([_confusion_png(matrices, run.class_names, Path(tmp) / "confusion.png")])


def audit_metrics(audit: Mapping[str, Any]) -> dict[str, float]:
    """The audit's statistics as flat numbers (`audit.shift....`, booleans as 0/1; lists and text left out)."""
    flat = flatten({k: v for k, v in audit.items() if k not in ("config", "figures", "dataset", "verdict")},
                   prefix=f"{AUDIT_PREFIX}.")
    return numeric({k: float(v) if isinstance(v, bool) else v for k, v in flat.items()})


def log_audit_folder(tracker: Tracker, audit_dir: Path) -> None:
    """The audit's verdict (tags), statistics (final metrics) and files (audit.json, figures) on `tracker`."""
    audit = artifacts.read_audit(audit_dir).result
    verdict = audit.get("verdict") or {}
    if isinstance(verdict, Mapping):
        tags = {f"{AUDIT_PREFIX}.verdict": verdict.get("level", ""),
                f"{AUDIT_PREFIX}.headline": verdict.get("headline", "")}
        tags.update({f"{AUDIT_PREFIX}.finding.{i}": f"[{f.get('level')}] {f.get('text')}"
                     for i, f in enumerate(verdict.get("findings") or [])})
    else:
        tags = {f"{AUDIT_PREFIX}.verdict": str(verdict)}
    tracker.set_tags(tags)
    tracker.log_metrics(audit_metrics(audit))
    tracker.log_artifacts(sorted(p for p in audit_dir.iterdir() if p.is_file() and not p.name.startswith(".")),
                          subdir=AUDIT_PREFIX)
