"""The folders xferlab writes, as typed records: a run folder, a study folder and an audit folder.

This module is the only place that knows their file names and formats; everything else hands it a record to write
or asks it for one. Its readers validate what they read through xferlab.checks, so a damaged or hand-edited file is
an error naming it and what to rerun. It sits at the bottom of the layers (it imports only xferlab.errors,
xferlab.files and xferlab.checks), so any layer may use it.

Schema: every folder kind has a SCHEMA_VERSION, stored in its main JSON file (metrics.json, results.json,
audit.json). Files without one were written before versioning and read as version 1, the format they have; a file
from a newer xferlab is refused with an error that says to upgrade.

    1  the first format
    2  predictions.npz may hold {split}_groups (patient ids); audit.json, results.json and metrics.json gained
       patient fields (the readers take version 1 folders as they are: no groups, every image its own patient)

    run folder     config.yaml (resolved TrainConfig), history.csv (one row per epoch), metrics.json,
                   predictions.npz ({split}_labels, {split}_probs for val and test at the best epoch, and
                   {split}_groups, the patient ids, when the data has them: schema 2), model.pt,
                   curves.png (drawn by xferlab.report from the history), model.onnx (only from xferlab export),
                   report.html (only from `xferlab report RUN`)
    diverged run   a study's run whose losses diverged: config.yaml, history.csv (the epochs trained) and
                   diverged.json (what stopped it), no results; a resumed study skips it unless asked to retry
    study folder   study.yaml, environment.json (or environment-shard-I-of-N.json), runs/<name>/ (run folders),
                   audit/ (an audit folder), results.csv, results.json, report.html
    audit folder   audit.json (written last: its presence means the audit is complete), audit_arrays.npz, *.png
    explain folder explain.json (written last), contact_<split>.png, overlays/<split>/*.png (xferlab explain --out, or
                   a study's explain/<run>/); explain.json names its figures
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xferlab import checks, files
from xferlab.errors import XferlabError

SCHEMA_VERSION = 2

# The data splits, in order; the splits evaluated and saved with predictions are the last two (train only trains).
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")

# run folder
CONFIG_YAML = "config.yaml"
HISTORY_CSV = "history.csv"
METRICS_JSON = "metrics.json"
PREDICTIONS_NPZ = "predictions.npz"
MODEL_PT = "model.pt"
CURVES_PNG = "curves.png"
MODEL_ONNX = "model.onnx"  # only on request: xferlab export's default output (xferlab.use.export writes it)
DIVERGED_JSON = "diverged.json"  # in place of metrics.json and the rest: a study's run that diverged
# model.pt of the largest registered backbone (DenseNet/ResNet-50: ~100 MB; a ViT-B ~350 MB) with room to spare; a
# bigger file is not a run of ours and is refused before unpickling.
# What read_run needs of a finished run folder, in the order a reader checks them (model.pt only to load the model).
RUN_FILES = (CONFIG_YAML, METRICS_JSON, HISTORY_CSV, PREDICTIONS_NPZ)
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                   "train_seconds", "eval_seconds")

# study folder
RUNS = "runs"
AUDIT = "audit"
STUDY_YAML = "study.yaml"
ENVIRONMENT_JSON = "environment.json"
SHARD_ENVIRONMENT_JSON = "environment-shard-{}-of-{}.json"  # one per shard: jobs of an array may run on other machines
SHARD_ENVIRONMENT_NAME = re.compile(r"environment-shard-([0-9]+)-of-([0-9]+)\.json")
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
REPORT_HTML = "report.html"

# audit folder
AUDIT_JSON = "audit.json"
AUDIT_ARRAYS_NPZ = "audit_arrays.npz"
# the label check's flagged images, one per line; the `id` column is what `--exclude` (data.exclude) reads
LABEL_ISSUES_CSV = "label_issues.csv"
LABEL_ISSUES_COLUMNS = ("id", "split", "split_index", "index", "given", "suggested", "score")

# explain folder (xferlab explain; in a study: explain/<run name>/)
EXPLAIN = "explain"
EXPLAIN_JSON = "explain.json"
CONTACT_SHEET_PNG = "contact_{}.png"  # one per split
OVERLAYS = "overlays"  # overlays/<split>/<image>.png


def _check_schema(doc: dict, path: Path) -> int:
    version = int(doc.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise XferlabError(f"{path} has schema version {version}, newer than this xferlab reads ({SCHEMA_VERSION}); "
                           "upgrade xferlab to read it")
    return version


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------- runs


@dataclass
class RunFolder:
    """A finished run as saved: the resolved config (YAML values), per-epoch history, metrics.json, the best
    epoch's predictions as {split: (labels, probs)} and, when the data had them, each split's patient ids as
    {split: groups} (empty for runs without groups and for folders of schema 1)."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]
    schema_version: int = SCHEMA_VERSION
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics.get("class_names") or [])


def history_csv(history: list[dict[str, Any]]) -> str:
    """history.csv's text: HISTORY_COLUMNS, one row per epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def write_run(folder: Path, config_yaml: str, history: list[dict[str, Any]], metrics: dict[str, Any],
              predictions: dict[str, tuple[np.ndarray, np.ndarray]], checkpoint: dict[str, Any] | None = None,
              groups: dict[str, np.ndarray] | None = None) -> None:
    """Write a run folder's data files into `folder` (a staging folder: xferlab.files.staged_dir); `groups`: patient
    ids per split of `predictions`, when the data has them."""
    folder = Path(folder)
    files.write_text(folder / CONFIG_YAML, config_yaml)
    files.write_text(folder / HISTORY_CSV, history_csv(history))
    files.write_json(folder / METRICS_JSON, {**metrics, "schema_version": SCHEMA_VERSION})
    arrays = {f"{s}_{kind}": arr for s, (labels, probs) in predictions.items()
              for kind, arr in (("labels", labels), ("probs", probs))}
    arrays.update({f"{s}_groups": np.asarray(ids).astype(str) for s, ids in (groups or {}).items()})
    files.save_npz(folder / PREDICTIONS_NPZ, **arrays)
    if checkpoint is not None:
        files.save_torch(folder / MODEL_PT, checkpoint)


def read_run_config(folder: Path) -> dict[str, Any]:
    """The run's saved config.yaml as a mapping (for xferlab.config.build); an error if it is not a run folder."""
    path = Path(folder) / CONFIG_YAML
    if not path.is_file():
        raise XferlabError(f"{folder} is not a run folder (no {CONFIG_YAML}); remove it or pass --force")
    return files.read_yaml(path)


def is_finished_run(folder: Path) -> bool:
    return (Path(folder) / METRICS_JSON).is_file()


def is_run_folder(folder: Path) -> bool:
    """A run folder (config.yaml, finished or diverged), not a study folder (study.yaml, runs/)."""
    folder = Path(folder)
    return (folder / CONFIG_YAML).is_file() and not (folder / STUDY_YAML).exists() and not (folder / RUNS).is_dir()


def read_run(folder: Path) -> RunFolder:
    """Read a run folder (metrics.json, config.yaml, history.csv, predictions.npz), each file checked by
    xferlab.checks (predictions against metrics.json's classes); model.pt is not needed (read_checkpoint)."""
    folder = Path(folder)
    metrics = checks.read_metrics(folder / METRICS_JSON)
    version = _check_schema(metrics, folder / METRICS_JSON)
    metrics.pop("schema_version", None)
    try:
        config = files.read_yaml(folder / CONFIG_YAML)  # line-aware: a config check above names the key's line
    except XferlabError as err:
        raise XferlabError(f"{err} ({checks.rerun_hint(folder)})") from None
    history = checks.read_history(folder / HISTORY_CSV)
    predictions, groups = checks.read_predictions(folder / PREDICTIONS_NPZ, EVAL_SPLITS, len(metrics["class_names"]))
    return RunFolder(folder, config, history, metrics, predictions, version, groups)


@dataclass
class DivergedRun:
    """A study's run that diverged, as saved: its resolved config (YAML values), the epochs it trained (history.csv
    rows, the last one the epoch that diverged) and diverged.json (xferlab.engine.guards.Divergence.as_dict)."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    divergence: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name


def write_diverged_run(folder: Path, config_yaml: str, history: list[dict[str, Any]],
                       divergence: dict[str, Any]) -> None:
    """Write a diverged run's files into `folder` (a staging folder: xferlab.files.staged_dir); no results."""
    folder = Path(folder)
    files.write_text(folder / CONFIG_YAML, config_yaml)
    files.write_text(folder / HISTORY_CSV, history_csv(history))
    files.write_json(folder / DIVERGED_JSON, {**divergence, "schema_version": SCHEMA_VERSION})


def is_diverged_run(folder: Path) -> bool:
    return (Path(folder) / DIVERGED_JSON).is_file() and not is_finished_run(folder)


def read_diverged_run(folder: Path) -> DivergedRun:
    """A diverged run folder: config.yaml, history.csv and diverged.json."""
    folder = Path(folder)
    path = folder / DIVERGED_JSON
    try:
        divergence = _read_json(path)
    except (OSError, ValueError) as err:
        raise checks.damaged(path, f"unreadable ({err})") from None
    if not isinstance(divergence, dict) or not isinstance(divergence.get("reason"), str):
        raise checks.damaged(path, "has no 'reason'; it is not what a diverged run records")
    _check_schema(divergence, path)
    divergence.pop("schema_version", None)
    return DivergedRun(folder, read_run_config(folder), checks.read_history(folder / HISTORY_CSV), divergence)


def read_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The run's model.pt, loaded weights-only (checks.read_checkpoint), or None when the run kept no weights."""
    path = Path(folder) / MODEL_PT
    return checks.read_checkpoint(path) if path.exists() else None


def read_config_text(folder: Path) -> str:
    """config.yaml of a run folder as text (shown verbatim in the report)."""
    return (Path(folder) / CONFIG_YAML).read_text()


# --------------------------------------------------------------------------------------------------------- studies


@dataclass
class StudyFolder:
    """What a study folder holds before results are computed: the saved study (YAML values, None for a bare folder
    of runs), its environment record and the names of its run folders (finished or not)."""

    path: Path
    study: dict[str, Any] | None
    environment: dict[str, Any] | None
    run_names: list[str] = field(default_factory=list)

    def run_dir(self, name: str) -> Path:
        return self.path / RUNS / name

    def explain_dir(self, name: str) -> Path:
        return self.path / EXPLAIN / name


def environment_file(shard: tuple[int, int] | None) -> str:
    """Where a run of the study records its environment: environment.json, or one file per shard (no clobbering)."""
    return ENVIRONMENT_JSON if shard is None else SHARD_ENVIRONMENT_JSON.format(*shard)


def find_environment(out: Path) -> Path | None:
    """The study folder's environment record: environment.json, else that of the first shard (lowest I)."""
    out = Path(out)
    if (out / ENVIRONMENT_JSON).is_file():
        return out / ENVIRONMENT_JSON
    shards = sorted((int(m[1]), int(m[2]), path) for path in out.glob("environment-shard-*.json")
                    if (m := SHARD_ENVIRONMENT_NAME.fullmatch(path.name)))
    return shards[0][2] if shards else None


def write_study_header(out: Path, study_yaml: str, environment: dict[str, Any],
                       shard: tuple[int, int] | None = None) -> None:
    """Create out/runs; write study.yaml (the same from every shard, atomically: racing shards are fine) and the
    environment record."""
    out = Path(out)
    try:
        (out / RUNS).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise XferlabError(f"cannot create {out} ({err.strerror or err}); choose a writable --out") from None
    files.write_text(out / STUDY_YAML, study_yaml)
    files.write_json(out / environment_file(shard), environment)


def study_yaml_path(out: Path) -> Path | None:
    path = Path(out) / STUDY_YAML
    return path if path.is_file() else None


def read_study(out: Path) -> StudyFolder:
    """The study folder's saved study, environment and run folder names (without study.yaml: every run folder)."""
    out = Path(out)
    if not out.is_dir():
        raise XferlabError(f"{out}: no such study folder; run `xferlab study STUDY.yaml --out {out}` first")
    study = None
    if (out / STUDY_YAML).is_file():
        study = files.read_yaml(out / STUDY_YAML)  # line-aware, for errors that name the key's line
    names = sorted(p.name for p in (out / RUNS).glob("*") if p.is_dir() and not p.name.startswith("."))
    env_path = find_environment(out)
    environment = _read_json(env_path) if env_path else None
    return StudyFolder(out, study, environment, names)


def write_results(out: Path, csv_rows: list[dict[str, Any]], doc: dict[str, Any]) -> tuple[Path, Path]:
    """results.csv (flat rows; the columns of every row, in the order first seen, a cell a row lacks left empty)
    and results.json (`doc`, stamped with the schema version)."""
    out = Path(out)
    buf = io.StringIO()
    columns = list(dict.fromkeys(key for row in csv_rows for key in row))
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows)
    csv_path, json_path = out / RESULTS_CSV, out / RESULTS_JSON
    files.write_text(csv_path, buf.getvalue())
    files.write_json(json_path, {"schema_version": SCHEMA_VERSION, **doc})
    return csv_path, json_path


def read_results(out: Path) -> dict[str, Any]:
    """results.json, checked (checks.check_results_json: no NaN, a schema this xferlab reads, well-formed runs)."""
    return checks.check_results_json(Path(out) / RESULTS_JSON, SCHEMA_VERSION, EVAL_SPLITS)


def write_report_html(out: Path, html: str) -> Path:
    path = Path(out) / REPORT_HTML
    files.write_text(path, html)
    return path


# ---------------------------------------------------------------------------------------------------------- audits


@dataclass
class AuditFolder:
    """A finished audit: what audit.json holds (every statistic, the verdict, figure file names) and the folder."""

    path: Path
    result: dict[str, Any]
    schema_version: int = SCHEMA_VERSION

    def figure(self, name: str | None) -> Path | None:
        return self.path / name if name else None


def is_finished_audit(folder: Path) -> bool:
    return (Path(folder) / AUDIT_JSON).is_file()


def write_audit(folder: Path, result: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """audit_arrays.npz, then audit.json last: its presence means the audit is complete."""
    folder = Path(folder)
    files.save_npz(folder / AUDIT_ARRAYS_NPZ, **arrays)
    files.write_json(folder / AUDIT_JSON, {**result, "schema_version": SCHEMA_VERSION})


def write_label_issues(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """label_issues.csv: the label check's flagged images (LABEL_ISSUES_COLUMNS), the header even when none is."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LABEL_ISSUES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(folder) / LABEL_ISSUES_CSV
    files.write_text(path, out.getvalue())
    return path


def read_audit(folder: Path) -> AuditFolder:
    folder = Path(folder)
    try:
        result = _read_json(folder / AUDIT_JSON)
    except (OSError, json.JSONDecodeError) as err:
        raise XferlabError(f"{folder}: no readable {AUDIT_JSON} ({err}); run `xferlab audit --out {folder}` "
                           "first") from None
    version = _check_schema(result, folder / AUDIT_JSON)
    result.pop("schema_version", None)
    return AuditFolder(folder, result, version)


# --------------------------------------------------------------------------------------------------------- explain


def write_explain(folder: Path, result: dict[str, Any]) -> None:
    """explain.json, written after the figures it names: its presence means the explanation is complete."""
    files.write_json(Path(folder) / EXPLAIN_JSON, {"schema_version": SCHEMA_VERSION, **result})


def is_finished_explain(folder: Path) -> bool:
    return (Path(folder) / EXPLAIN_JSON).is_file()


def read_explain(folder: Path) -> dict[str, Any]:
    """explain.json of an explain folder (figure names in it are relative to `folder`)."""
    path = Path(folder) / EXPLAIN_JSON
    try:
        result = _read_json(path)
    except (OSError, json.JSONDecodeError) as err:
        raise XferlabError(f"{folder}: no readable {EXPLAIN_JSON} ({err}); run `xferlab explain RUN --out {folder}` "
                           "again") from None
    _check_schema(result, path)
    result.pop("schema_version", None)
    return result


def study_explanations(out: Path) -> list[Path]:
    """The finished explain folders of a study (DIR/explain/<run>/), sorted by run name."""
    return sorted(p.parent for p in (Path(out) / EXPLAIN).glob(f"*/{EXPLAIN_JSON}"))
