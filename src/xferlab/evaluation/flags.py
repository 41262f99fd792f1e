"""Degenerate-run flags: a split's predictions that look like a result but are not one.

A run is flagged on a split when it predicts (nearly) one class for everything, when sensitivity or specificity at
its threshold (argmax) is close to zero, or when its AUROC cannot be told from chance. The flags are short codes
(machine-readable in results.csv/json); `describe` turns them into words for the terminal and the report.
"""

from __future__ import annotations

import numpy as np

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
