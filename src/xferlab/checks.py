"""Validation of saved run and study files, so that a truncated, mismatched or hand-edited file is one error naming
the file, what is wrong with it and what to rerun, rather than a traceback or a silently wrong number.

This module knows what a valid file holds, not where it is: xferlab.artifacts owns the file names and calls these
checks from its readers (read_run, read_checkpoint, read_results), so every reader of a saved folder (the report
today; predict, export and the Python API as they come) gets the same errors. Like artifacts it sits at the bottom
of the layers (it imports only xferlab.errors); checks that need the config models or the backbone registry take
their answers as arguments (check_checkpoint's feature_dim) or live above (engine.saved.check_run).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from xferlab.errors import XferlabError

METRICS_KEYS = ("backbone", "regime", "best_epoch", "class_names", "val")
# model.pt of the largest registered backbone (DenseNet-121 / ResNet-50 with a head) is about 100 MB; a file far
# beyond that is not one of ours, and loading it would only spend memory.
MAX_CHECKPOINT_BYTES = 2 << 30
_PROB_SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; a hand-edited row is off by far more


def rerun_hint(run_dir: Path) -> str:
    """What to do about a damaged run folder: a study's run (under runs/) is retrained by resuming the study; a lone
    run of `xferlab train` is trained again from its own config.yaml."""
    run_dir = Path(run_dir)
    if run_dir.parent.name == "runs":
        return (f"delete {run_dir} and rerun `xferlab study` with the same --out (only missing runs are trained), "
                "or retrain it with `xferlab train`")
    return "retrain it: rerun `xferlab train` with the settings of its config.yaml and a new --out"


def damaged(path: Path, problem: str) -> XferlabError:
    """The error for a damaged file of a run folder: the file, the problem, what to rerun."""
    path = Path(path)
    return XferlabError(f"{path}: {problem}; {rerun_hint(path.parent)}")


def read_metrics(path: Path) -> dict[str, Any]:
    """A run's metrics.json, parsed and with the keys readers rely on."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise damaged(path, f"not valid JSON, truncated or edited ({err})") from None
    if not isinstance(metrics, dict):
        raise damaged(path, f"holds a {type(metrics).__name__}, not the run's metrics object")
    missing = [k for k in METRICS_KEYS if k not in metrics]
    if missing:
        raise damaged(path, f"has no {', '.join(missing)}")
    names = metrics["class_names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise damaged(path, f"class_names must list at least two class names, got {names!r}")
    return metrics


def read_history(path: Path) -> list[dict[str, Any]]:
    """A run's history.csv: one row per epoch, numbers parsed (empty cells None)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as err:
        raise damaged(path, f"not the run's per-epoch table ({err})") from None
    if not rows or any(row.get("epoch") is None for row in rows):
        raise damaged(path, "has no epoch rows")
    return rows


def _number(text: str | None) -> float | int | None:
    if text in ("", "None"):
        return None
    value = float(text)  # ValueError on anything else, a None (short row) is a TypeError
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def read_predictions(path: Path, splits: tuple[str, ...], num_classes: int
                     ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """A run's predictions.npz: per split of `splits` present, int labels (N) in 0..K-1 and finite class
    probabilities (N×K) whose rows sum to 1, K = num_classes (metrics.json's class_names); the first split is
    required. Also the patient ids (N strings) of the splits that have them ({split}_groups, schema 2)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, ValueError, EOFError, KeyError) as err:
        raise damaged(path, f"unreadable, truncated or not an npz archive ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001 - zipfile raises BadZipFile (an Exception) on a damaged archive
        raise damaged(path, f"unreadable ({type(err).__name__}: {err})") from None
    first = splits[0]
    if f"{first}_labels" not in arrays or f"{first}_probs" not in arrays:
        raise damaged(path, f"has no {first}_labels / {first}_probs (found {sorted(arrays)})")
    predictions = {s: _split_predictions(path, s, arrays, num_classes) for s in splits if f"{s}_labels" in arrays}
    return predictions, {s: _split_groups(path, s, arrays, len(predictions[s][0])) for s in predictions
                         if f"{s}_groups" in arrays}


def _split_groups(path: Path, split: str, arrays: dict, n: int) -> np.ndarray:
    groups = arrays[f"{split}_groups"]
    if groups.shape != (n,) or groups.dtype.kind != "U":
        raise damaged(path, f"{split}_groups must hold one patient id (text) per {split} case ({n}), got "
                            f"{groups.dtype} {groups.shape}")
    return groups


def _split_predictions(path: Path, split: str, arrays: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = arrays[f"{split}_labels"], arrays.get(f"{split}_probs")
    if probs is None:
        raise damaged(path, f"has {split}_labels but no {split}_probs")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise damaged(path, f"{split}_labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if probs.shape != (len(labels), k) or not np.issubdtype(probs.dtype, np.floating):
        raise damaged(path, f"{split}_probs has shape {probs.shape} ({probs.dtype}); expected {len(labels)}×{k} "
                            f"floats ({len(labels)} {split} cases × {k} classes of metrics.json)")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise damaged(path, f"{split}_labels range {labels.min()}..{labels.max()}, outside 0..{k - 1}")
    if not np.isfinite(probs).all() or (probs < 0).any() or \
            (len(probs) and np.abs(probs.sum(1) - 1).max() > _PROB_SUM_TOLERANCE):
        raise damaged(path, f"{split}_probs are not probabilities (NaN/inf, negative, or rows not summing to 1)")
    return labels.astype(np.int64), probs


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A run's model.pt, loaded weights-only (no code runs) and memory-mapped; it must hold a state_dict with a
    head.weight."""
    import torch

    path = Path(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise damaged(path, f"{size:,} bytes, more than any xferlab checkpoint ({MAX_CHECKPOINT_BYTES:,})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        # torch's own text is a long multi-line advice to unpickle anyway, with terminal escapes: not for us
        raise damaged(path, f"not a weights-only xferlab checkpoint ({type(err).__name__}); it may run code "
                            "when loaded, or be damaged") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "head.weight" not in state:
        raise damaged(path, "has no state_dict with a head.weight; it is not an xferlab run's model.pt")
    return ckpt


def check_checkpoint(path: Path, ckpt: dict[str, Any], backbone: str, num_classes: int,
                     feature_dim: int | None = None) -> None:
    """The checkpoint read from `path` (read_checkpoint) must be this run's: saved for `backbone`, with a head of
    `num_classes` outputs taking `feature_dim` features (the backbone's, from its registry entry; None: unchecked)."""
    if ckpt.get("backbone") != backbone:
        raise damaged(path, f"was saved for backbone {ckpt.get('backbone')!r}, but the run is {backbone!r}")
    head = tuple(ckpt["state_dict"]["head.weight"].shape)
    if head[0] != num_classes:
        raise damaged(path, f"its head has {head[0]} outputs, but the run has {num_classes} classes")
    if feature_dim is not None and head[1] != feature_dim:
        raise damaged(path, f"its head takes {head[1]} features, but {backbone} gives {feature_dim}: the weights are "
                            "from another backbone")


def check_results_json(path: Path, schema_version: int, splits: tuple[str, ...]) -> dict[str, Any]:
    """results.json of a study folder: JSON without NaN literals, a schema version this xferlab reads (at most
    `schema_version`; a file without one is version 1), one object per run with its name and results per split of
    `splits`."""
    path = Path(path)
    fix = f"run `xferlab report {path.parent}` to rebuild it from the run folders"
    try:
        doc = json.loads(path.read_text(), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise XferlabError(f"{path}: unreadable or hand-edited ({err}); {fix}") from None
    found = doc.get("schema_version", 1) if isinstance(doc, dict) else type(doc).__name__
    if not isinstance(found, int) or isinstance(found, bool) or found > schema_version:
        raise XferlabError(f"{path}: schema_version {found!r}, expected {schema_version} or older (a newer file needs "
                           f"a newer xferlab); {fix}")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("run"), str) for r in runs):
        raise XferlabError(f"{path}: 'runs' must be a list of objects with a 'run' name; {fix}")
    for r in runs:
        for split in splits:
            ev = r.get(split)
            if ev is not None and not (isinstance(ev, dict) and isinstance(ev.get("metrics"), dict)):
                raise XferlabError(f"{path}: run {r['run']!r} has a malformed '{split}' entry; {fix}")
    return doc


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (results hold no NaN or infinity)")
