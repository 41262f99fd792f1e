"""Results of a study folder, read from its saved run folders only: one row per run (config, metrics with bootstrap
CIs, confusion matrices, timing), mean ± sd across seeds per configuration, and results.csv / results.json.

Every number is recomputed from each run's predictions.npz (the best epoch's val and test class probabilities), so
the results can be rebuilt at any time without training. A run that diverged (xferlab.engine.guards) has no results:
it is a row of results.csv with status 'diverged' and its reason, and results.json lists it under diverged_runs.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xferlab import artifacts
from xferlab.artifacts import EVAL_SPLITS, RESULTS_CSV, RESULTS_JSON, SCHEMA_VERSION  # noqa: F401  (re-exported)
from xferlab.config import StudyConfig, build
from xferlab.engine.saved import check_run
from xferlab.errors import XferlabError
from xferlab.evaluation.bootstrap import describe
from xferlab.evaluation.calibration import calibrate
from xferlab.evaluation.evaluate import BootstrapSettings, evaluate_split
from xferlab.evaluation.flags import degenerate_flags
from xferlab.evaluation.metrics import METRICS
from xferlab.evaluation.operating import DEFAULT_TARGET_SENSITIVITY, operating_points
from xferlab.study.grid import expand_grid

log = logging.getLogger(__name__)

SPLITS = EVAL_SPLITS  # the splits evaluated (xferlab.artifacts); this name is kept for older imports
TEST_BN_COLUMNS = ("accuracy", "balanced_accuracy", "auroc")  # results.csv columns of the transductive numbers
# The run settings copied into every row beside the full resolved config (the columns a reader sorts by).
CONFIG_COLUMNS = ("backbone", "regime", "seed", "weights", "epochs", "batch_size", "lr", "weight_decay", "scheduler")
TIMING_KEYS = ("feature_seconds", "fit_seconds", "train_seconds", "seconds_per_epoch", "eval_seconds",
               "total_seconds", "inference_images_per_s")
FINISHED, DIVERGED = "finished", "diverged"  # results.csv's status column


@dataclass
class RunRecord:
    """One finished run as saved on disk, plus its evaluation."""

    name: str
    path: Path
    config: dict
    metrics: dict
    history: list[dict]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # split -> patient ids, when the run saved them
    evaluation: dict[str, dict] = field(default_factory=dict)
    calibration: dict[str, dict] = field(default_factory=dict)  # split -> calibration.Calibration.as_dict()
    operating_points: list[dict] | None = None  # operating.OperatingPoint.as_dict() each; None: not binary
    flags: dict[str, list[str]] = field(default_factory=dict)  # split -> degenerate-run flags (study.flags)

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics.get("class_names") or [])


@dataclass
class StudyResults:
    """What a study folder (or, kind 'run', a single run folder: `xferlab report RUN`) holds, evaluated: the finished
    runs' records, the runs of the grid not run yet, the runs that diverged."""

    out: Path
    study: StudyConfig | None
    settings: BootstrapSettings
    records: list[RunRecord]
    missing: list[str]
    environment: dict | None
    diverged: list[artifacts.DivergedRun] = field(default_factory=list)
    kind: str = "study"

    @property
    def primary_split(self) -> str:
        """The split results are ranked and compared on: test when every run has one, else val."""
        return "test" if self.records and all("test" in r.predictions for r in self.records) else "val"


def read_evaluated_run(run_dir: Path, settings: BootstrapSettings,
             target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> RunRecord:
    """Read one run folder (artifacts.read_run), check it (check_run) and evaluate its predictions: metrics with CIs
    (resampling patients when the run saved patient ids), calibration (temperature fitted on val), operating points
    chosen on val, degenerate flags. A damaged or mismatched file is an error naming it and what to rerun."""
    return evaluate_run(artifacts.read_run(run_dir), settings, target_sensitivity)


def evaluate_run(run: artifacts.RunFolder, settings: BootstrapSettings,
                 target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> RunRecord:
    """read_evaluated_run's work on a run folder already read."""
    check_run(run)
    predictions = run.predictions
    record = RunRecord(run.name, run.path, run.config, run.metrics, run.history, predictions, run.groups)
    record.evaluation = {s: evaluate_split(y, p, settings, run.groups.get(s)) for s, (y, p) in predictions.items()}
    record.calibration = {s: c.as_dict() for s, c in calibrate(predictions).items()}
    points = operating_points(predictions, target_sensitivity, groups=run.groups, **settings.as_kwargs())
    record.operating_points = None if points is None else [p.as_dict() for p in points]
    record.flags = {s: degenerate_flags(y, p, record.evaluation[s]) for s, (y, p) in predictions.items()}
    return record


def collect_results(out: str | Path) -> StudyResults:
    """Every finished run of the study saved in `out`, evaluated. Runs of the study's grid that have no folder yet
    are listed as missing; without study.yaml, every run folder under out/runs is used."""
    folder = artifacts.read_study(Path(out))
    out = folder.path
    study = None
    if folder.study is not None:
        where = str(out / artifacts.STUDY_YAML)
        study = build(StudyConfig, folder.study, where=where)
        names = [spec.name for spec in expand_grid(study, where=where)]
        settings = BootstrapSettings.of_study(study)
    else:
        names = folder.run_names
        settings = BootstrapSettings()
    finished = [n for n in names if artifacts.is_finished_run(folder.run_dir(n))]
    diverged = [n for n in names if artifacts.is_diverged_run(folder.run_dir(n))]
    if not finished and not diverged:
        runs = out / artifacts.RUNS
        raise XferlabError(f"{out}: no finished runs under {runs}; run `xferlab study STUDY.yaml --out {out}`")
    target = study.target_sensitivity if study else DEFAULT_TARGET_SENSITIVITY
    records = [read_evaluated_run(folder.run_dir(n), settings, target) for n in finished]
    missing = [n for n in names if n not in finished and n not in diverged]
    return StudyResults(out, study, settings, records, missing, folder.environment,
                        [artifacts.read_diverged_run(folder.run_dir(n)) for n in diverged])


def collect_run(run_dir: str | Path) -> StudyResults:
    """A single run folder evaluated as a study of one run (kind 'run'), with the bootstrap settings its flags were
    computed with (metrics.json's flags_bootstrap; the defaults for a run saved before runs recorded them)."""
    run_dir = Path(run_dir)
    if artifacts.is_diverged_run(run_dir):
        reason = artifacts.read_diverged_run(run_dir).divergence["reason"]
        raise XferlabError(f"{run_dir}: this run diverged ({reason}) and has no results to report; retrain it with a "
                           "lower lr")
    run = artifacts.read_run(run_dir)
    saved = run.metrics.get("flags_bootstrap") or {}
    settings = BootstrapSettings(**saved) if saved else BootstrapSettings()
    return StudyResults(run_dir, None, settings, [evaluate_run(run, settings)], [], None, kind="run")


def timing(record: RunRecord) -> dict[str, float | None]:
    """Seconds of a run: feature caching (fixed backbones), the fit loop, their sum (training), per epoch, evaluation
    (val and test every epoch), the whole run, and inference images/s, from metrics.json."""
    m = record.metrics
    fit = float(m.get("train_seconds") or 0.0)
    features = float(m.get("feature_seconds") or 0.0)
    epochs = len(record.history) or int(record.config.get("epochs") or 1)
    return {
        "feature_seconds": features,
        "fit_seconds": fit,
        "train_seconds": features + fit,
        "seconds_per_epoch": fit / epochs,
        "eval_seconds": m.get("eval_seconds"),
        "total_seconds": m.get("total_seconds"),
        "inference_images_per_s": m.get("inference_images_per_s"),
    }


def result_row(record: RunRecord) -> dict:
    """The results.json row of a run: its settings and resolved config, metrics with CIs per split, timing."""
    m = record.metrics
    return {
        "run": record.name,
        "status": FINISHED,
        **{key: record.config.get(key) for key in CONFIG_COLUMNS},
        "image_size": (record.config.get("data") or {}).get("image_size"),
        "best_epoch": m.get("best_epoch"),
        "params": m.get("params"),
        "trainable_params": m.get("trainable_params"),
        "device": m.get("device"),
        "class_names": record.class_names,
        **{split: record.evaluation.get(split) for split in SPLITS},
        "flags": {split: record.flags.get(split) for split in SPLITS if split in record.flags},
        "degenerate": any(record.flags.values()),
        "calibration": record.calibration,
        "operating_points": record.operating_points,
        "timing": timing(record),
        "test_bn": m.get("test_bn"),  # transductive test-time BatchNorm metrics (xferlab.engine.testtime_bn), or None
        "config": record.config,
    }


def diverged_row(run: artifacts.DivergedRun) -> dict:
    """The results.json entry of a run that diverged: its settings, what stopped it (epoch, split, loss, rule, reason,
    lr), the epochs it trained, its resolved config."""
    return {"run": run.name, "status": DIVERGED, **{key: run.config.get(key) for key in CONFIG_COLUMNS},
            "image_size": (run.config.get("data") or {}).get("image_size"), "divergence": run.divergence,
            "epochs_trained": len(run.history), "config": run.config}


def diverged_csv_row(row: dict) -> dict:
    """A diverged run's results.csv row: settings, status and reason; its metric cells stay empty."""
    flat = {k: v for k, v in row.items() if k not in ("divergence", "config")}
    flat.update({"diverged_epoch": row["divergence"].get("epoch"), "diverged_split": row["divergence"].get("split"),
                 "diverged_reason": row["divergence"].get("reason")})
    return flat


def csv_row(row: dict) -> dict:
    """A results.json row flattened to scalars: <split>_<metric>, <split>_<metric>_low/_high, timing columns."""
    nested = (*SPLITS, "timing", "config", "class_names", "flags", "calibration", "operating_points", "test_bn")
    flat = {k: v for k, v in row.items() if k not in nested}
    for split in SPLITS:
        ev = row.get(split)
        flat[f"{split}_n"] = ev["n"] if ev else None
        flat[f"{split}_patients"] = ev.get("patients") if ev else None
        for name in METRICS:
            metric = ev["metrics"][name] if ev else {}
            flat[f"{split}_{name}"] = metric.get("value")
            flat[f"{split}_{name}_low"] = metric.get("low")
            flat[f"{split}_{name}_high"] = metric.get("high")
        flat[f"{split}_flags"] = " ".join(row["flags"].get(split) or [])
        cal = row["calibration"].get(split) or {}
        for key in ("ece_scaled", "brier_scaled"):  # <split>_ece and <split>_brier (with CIs) come from METRICS
            flat[f"{split}_{key}"] = cal.get(key)
    flat["temperature"] = (row["calibration"].get("val") or {}).get("temperature")
    flat.update(_operating_columns(row["operating_points"]))
    flat.update(row["timing"])
    for split in SPLITS:  # always present (empty without --test-bn adapt): one header for every row
        adapted = (row.get("test_bn") or {}).get(split) or {}
        flat.update({f"test_bn_{split}_{name}": adapted.get(name) for name in TEST_BN_COLUMNS})
    return flat


def _operating_columns(points: list[dict] | None) -> dict:
    """op_youden_threshold, op_youden_test_sensitivity(_low/_high), ... (target-sensitivity rule named 'target')."""
    flat = {}
    for point in points or []:
        rule = "youden" if point["rule"] == "youden" else "target"
        flat[f"op_{rule}_rule"] = point["rule"]
        flat[f"op_{rule}_threshold"] = point["threshold"]
        for split in SPLITS:
            rates = point.get(split) or {}
            for key in ("sensitivity", "specificity"):
                for suffix in ("", "_low", "_high"):
                    flat[f"op_{rule}_{split}_{key}{suffix}"] = rates.get(key + suffix)
    return flat


def _mean_sd(values: list[float | None]) -> dict[str, float | int | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def configurations(records: list[RunRecord]) -> list[dict]:
    """Runs grouped over seeds (same backbone and regime): mean ± sd (sample sd, n - 1) of every metric and timing."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.config["backbone"], r.config["regime"]), []).append(r)
    out = []
    for (backbone, regime), runs in groups.items():
        summary = {"backbone": backbone, "regime": regime, "runs": [r.name for r in runs],
                   "seeds": [r.config.get("seed") for r in runs], "params": runs[0].metrics.get("params"),
                   "trainable_params": runs[0].metrics.get("trainable_params")}
        for split in SPLITS:
            evs = [r.evaluation.get(split) for r in runs]
            if all(evs):
                summary[split] = {name: _mean_sd([ev["metrics"][name]["value"] for ev in evs]) for name in METRICS}
        summary["timing"] = {key: _mean_sd([timing(r)[key] for r in runs]) for key in TIMING_KEYS}
        out.append(summary)
    return out


def bootstrap_method(results: StudyResults) -> str:
    """The bootstrap(s) behind the study's intervals in words: of images, or of patients where runs saved patient
    ids (evaluation.bootstrap.describe)."""
    methods = dict.fromkeys(ev.get("bootstrap") or describe(None)
                            for r in results.records for ev in r.evaluation.values())
    return "; ".join(methods) or describe(None)


def write_results(results: StudyResults) -> tuple[Path, Path]:
    """results.csv (one flat row per run) and results.json (rows, per-configuration summaries, settings)."""
    rows = [result_row(r) for r in results.records]
    diverged = [diverged_row(run) for run in results.diverged]
    doc = {
        "study": results.study.name if results.study else results.out.name,
        "bootstrap": {"method": bootstrap_method(results), **results.settings.as_kwargs()},
        "primary_split": results.primary_split,
        "runs": rows,
        "configurations": configurations(results.records),
        "missing_runs": results.missing,
        "diverged_runs": diverged,
    }
    return artifacts.write_results(results.out, [csv_row(row) for row in rows] +
                                   [diverged_csv_row(row) for row in diverged], doc)
