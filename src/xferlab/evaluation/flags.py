"""Degenerate-run flags: a split's predictions that look like a result but are not one.

A run is flagged on a split when it predicts (nearly) one class for everything, when sensitivity or specificity at
its threshold (argmax) is close to zero, or when its AUROC cannot be told from chance. The flags are short codes
(machine-readable in results.csv/json, and in every run's metrics.json: run_flags); `describe` turns them into words
for the terminal and the report.
"""

from __future__ import annotations

import numpy as np

from xferlab.evaluation.evaluate import BootstrapSettings, evaluate_split

ONE_CLASS_SHARE = 0.95  # at least this share of a split predicted as one class: the model ignores its input
MIN_RATE = 0.05  # sensitivity or specificity below this: one class is (almost) never recognised
CHANCE_AUROC = 0.5

ONE_CLASS = "one_class"
LOW_SENSITIVITY = "low_sensitivity"
LOW_SPECIFICITY = "low_specificity"
AUROC_AT_CHANCE = "auroc_ci_holds_0.5"
FLAGS = (ONE_CLASS, LOW_SENSITIVITY, LOW_SPECIFICITY, AUROC_AT_CHANCE)


def degenerate_flags(labels: np.ndarray, probs: np.ndarray, evaluation: dict) -> list[str]:
    """The flags (of FLAGS) that one split's predictions raise; `evaluation` is evaluate_split's record of them."""
    metrics = evaluation["metrics"]
    predicted = np.bincount(np.asarray(probs).argmax(1), minlength=probs.shape[1])
    flags = []
    if len(labels) and predicted.max() / len(labels) >= ONE_CLASS_SHARE:
        flags.append(ONE_CLASS)
    for name, flag in (("sensitivity", LOW_SENSITIVITY), ("specificity", LOW_SPECIFICITY)):
        value = metrics[name]["value"]
        if value is not None and value < MIN_RATE:
            flags.append(flag)
    auroc = metrics["auroc"]
    if auroc["low"] is not None and auroc["low"] <= CHANCE_AUROC <= auroc["high"]:
        flags.append(AUROC_AT_CHANCE)
    return flags


def describe(flags: list[str], split: str, evaluation: dict, class_names: list[str] | None = None) -> str:
    """The flags of one split in words: 'test: predicts pneumonia for 99% of cases; specificity 0.01 < 0.05'."""
    metrics = evaluation["metrics"]
    parts = []
    for flag in flags:
        if flag == ONE_CLASS:
            counts = np.asarray(evaluation["confusion_matrix"]).sum(0)
            k = int(counts.argmax())
            name = class_names[k] if class_names and k < len(class_names) else f"class {k}"
            parts.append(f"predicts {name} for {100 * counts[k] / counts.sum():.0f}% of cases")
        elif flag in (LOW_SENSITIVITY, LOW_SPECIFICITY):
            metric = "sensitivity" if flag == LOW_SENSITIVITY else "specificity"
            parts.append(f"{metric} {metrics[metric]['value']:.3f} < {MIN_RATE}")
        elif flag == AUROC_AT_CHANCE:
            a = metrics["auroc"]
            parts.append(f"AUROC CI [{a['low']:.2f}, {a['high']:.2f}] holds 0.5 (chance)")
    return f"{split}: " + "; ".join(parts) if parts else ""


# metrics.json's keys for a run's flags (engine.run writes them, readers take them from there)
RUN_FLAG_KEYS = ("flags", "degenerate", "flag_text", "flags_bootstrap")


def run_flags(predictions: dict[str, tuple[np.ndarray, np.ndarray]], settings: BootstrapSettings | None = None,
              class_names: list[str] | None = None, groups: dict[str, np.ndarray] | None = None) -> dict:
    """A run's degenerate flags, as metrics.json records them: `flags` (split -> codes), `degenerate` (any split
    flagged), `flag_text` (describe's words for every flagged split) and `flags_bootstrap` (the bootstrap settings of
    the AUROC interval). The same evaluation a study's results make with the same settings, so a run's flags equal
    its row's in results.csv. `settings`: default, the evaluation's; `groups`: split -> patient ids, when known (the
    AUROC interval then resamples patients, as the study's does)."""
    settings, groups = settings or BootstrapSettings(), groups or {}
    evaluations = {s: evaluate_split(y, p, settings, groups.get(s)) for s, (y, p) in predictions.items()}
    flags = {s: degenerate_flags(y, p, evaluations[s]) for s, (y, p) in predictions.items()}
    text = "; ".join(t for s in flags if (t := describe(flags[s], s, evaluations[s], class_names)))
    return {"flags": flags, "degenerate": any(flags.values()), "flag_text": text,
            "flags_bootstrap": settings.as_kwargs()}


def saved_run_flags(metrics: dict, predictions: dict[str, tuple[np.ndarray, np.ndarray]],
                    groups: dict[str, np.ndarray] | None = None) -> dict:
    """The flags metrics.json holds (run_flags' keys); for a run saved before runs recorded them, computed now from
    its predictions with the default bootstrap settings."""
    if all(key in metrics for key in RUN_FLAG_KEYS):
        return {key: metrics[key] for key in RUN_FLAG_KEYS}
    return run_flags(predictions, class_names=metrics.get("class_names"), groups=groups)
