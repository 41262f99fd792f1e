"""Validation of saved run and study folders. Every reader of a saved file (the report today; predict, export and the
Python API as they come) calls these, so a truncated, mismatched or hand-edited file is one error naming the file,
what is wrong with it and what to rerun, rather than a traceback or a silently wrong number.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from xferlab.errors import XferlabError

METRICS_JSON = "metrics.json"
PREDICTIONS_NPZ = "predictions.npz"
MODEL_PT = "model.pt"
CONFIG_YAML = "config.yaml"
HISTORY_CSV = "history.csv"
SPLITS = ("val", "test")
METRICS_KEYS = ("backbone", "regime", "best_epoch", "class_names", "val")
# model.pt of the largest registered backbone (DenseNet-121 / ResNet-50 with a head) is about 100 MB; a file far
# beyond that is not one of ours, and loading it would only spend memory.
MAX_CHECKPOINT_BYTES = 2 << 30
_PROB_SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; a hand-edited row is off by far more


def rerun_hint(run_dir: Path) -> str:
    """What to do about a damaged run folder of a study (or a lone run)."""
    return (f"delete {run_dir} and rerun `xferlab study` with the same --out (only missing runs are trained), "
            "or retrain it with `xferlab train`")


def _damaged(path: Path, problem: str) -> XferlabError:
    return XferlabError(f"{path}: {problem}; {rerun_hint(path.parent)}")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a run folder, parsed and with the keys readers rely on."""
    path = Path(run_dir) / METRICS_JSON
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _damaged(path, f"not valid JSON, truncated or edited ({err})") from None
    if not isinstance(metrics, dict):
        raise _damaged(path, f"holds a {type(metrics).__name__}, not the run's metrics object")
    missing = [k for k in METRICS_KEYS if k not in metrics]
    if missing:
        raise _damaged(path, f"has no {', '.join(missing)}")
    names = metrics["class_names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise _damaged(path, f"class_names must list at least two class names, got {names!r}")
    return metrics


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml of a run folder as saved (a mapping), after checking that it is still a valid TrainConfig."""
    from xferlab.config import TrainConfig, build, read_yaml

    path = Path(run_dir) / CONFIG_YAML
    try:
        values = read_yaml(path)
        build(TrainConfig, values, where=str(path))
    except XferlabError as err:
        raise XferlabError(f"{err} ({rerun_hint(Path(run_dir))})") from None
    return dict(values)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """history.csv of a run folder: one row per epoch, numbers parsed (empty cells None)."""
    path = Path(run_dir) / HISTORY_CSV
    try:
        with open(path, newline="") as f:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as err:
        raise _damaged(path, f"not the run's per-epoch table ({err})") from None
    if not rows or any(row.get("epoch") is None for row in rows):
        raise _damaged(path, "has no epoch rows")
    return rows


def _number(text: str | None) -> float | int | None:
    if text in ("", "None"):
        return None
    value = float(text)  # ValueError on anything else, a None (short row) is a TypeError
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def read_predictions(run_dir: Path, num_classes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """predictions.npz: per split present, int labels (N) in 0..K-1 and finite class probabilities (N×K) whose rows
    sum to 1, K = num_classes (metrics.json's class_names)."""
    path = Path(run_dir) / PREDICTIONS_NPZ
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    except (OSError, ValueError, EOFError, KeyError) as err:  # zipfile.BadZipFile is an OSError-free ValueError kin
        raise _damaged(path, f"unreadable, truncated or not an npz archive ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001 - zipfile raises BadZipFile (an Exception) on a damaged archive
        raise _damaged(path, f"unreadable ({type(err).__name__}: {err})") from None
    if "val_labels" not in arrays or "val_probs" not in arrays:
        raise _damaged(path, f"has no val_labels / val_probs (found {sorted(arrays)})")
    return {s: _split_predictions(path, s, arrays, num_classes) for s in SPLITS if f"{s}_labels" in arrays}


def _split_predictions(path: Path, split: str, arrays: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = arrays[f"{split}_labels"], arrays.get(f"{split}_probs")
    if probs is None:
        raise _damaged(path, f"has {split}_labels but no {split}_probs")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _damaged(path, f"{split}_labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if probs.shape != (len(labels), k) or not np.issubdtype(probs.dtype, np.floating):
        raise _damaged(path, f"{split}_probs has shape {probs.shape} ({probs.dtype}); expected {len(labels)}×{k} "
                             f"floats ({len(labels)} {split} cases × {k} classes of metrics.json)")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise _damaged(path, f"{split}_labels range {labels.min()}..{labels.max()}, outside 0..{k - 1}")
    if not np.isfinite(probs).all() or (probs < 0).any() or \
            (len(probs) and np.abs(probs.sum(1) - 1).max() > _PROB_SUM_TOLERANCE):
        raise _damaged(path, f"{split}_probs are not probabilities (NaN/inf, negative, or rows not summing to 1)")
    return labels.astype(np.int64), probs


def check_checkpoint(run_dir: Path, backbone: str, num_classes: int) -> dict[str, Any]:
    """model.pt, loaded weights-only (no code runs) and memory-mapped: it must be this run's backbone with a head of
    `num_classes` outputs. Returns the checkpoint dictionary."""
    import torch

    path = Path(run_dir) / MODEL_PT
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise _damaged(path, f"{size:,} bytes, more than any xferlab checkpoint ({MAX_CHECKPOINT_BYTES:,})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        raise _damaged(path, f"not a weights-only xferlab checkpoint ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "head.weight" not in state:
        raise _damaged(path, "has no state_dict with a head.weight; it is not an xferlab run's model.pt")
    if ckpt.get("backbone") != backbone:
        raise _damaged(path, f"was saved for backbone {ckpt.get('backbone')!r}, but the run is {backbone!r}")
    head = tuple(state["head.weight"].shape)
    if head[0] != num_classes:
        raise _damaged(path, f"its head has {head[0]} outputs, but the run has {num_classes} classes")
    dim = _feature_dim(backbone)
    if dim is not None and head[1] != dim:
        raise _damaged(path, f"its head takes {head[1]} features, but {backbone} gives {dim}: the weights are from "
                             "another backbone")
    return ckpt


def _feature_dim(backbone: str) -> int | None:
    try:
        import xferlab.backbones.zoo  # noqa: F401  (registers the backbones)
        from xferlab.backbones.registry import get_spec

        return get_spec(backbone).feature_dim
    except XferlabError:  # not registered here (e.g. a plugin backbone): the class count check stands alone
        return None


def check_results_json(path: Path, schema_version: int) -> dict[str, Any]:
    """results.json of a study folder: JSON without NaN literals, this schema version, one object per run with its
    name and split results."""
    path = Path(path)
    fix = f"run `xferlab report {path.parent}` to rebuild it from the run folders"
    try:
        doc = json.loads(path.read_text(), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise XferlabError(f"{path}: unreadable or hand-edited ({err}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != schema_version:
        found = doc.get("schema_version") if isinstance(doc, dict) else type(doc).__name__
        raise XferlabError(f"{path}: schema_version {found!r}, expected {schema_version}; {fix}")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("run"), str) for r in runs):
        raise XferlabError(f"{path}: 'runs' must be a list of objects with a 'run' name; {fix}")
    for r in runs:
        for split in SPLITS:
            ev = r.get(split)
            if ev is not None and not (isinstance(ev, dict) and isinstance(ev.get("metrics"), dict)):
                raise XferlabError(f"{path}: run {r['run']!r} has a malformed '{split}' entry; {fix}")
    return doc


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (results hold no NaN or infinity)")

