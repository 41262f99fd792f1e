"""The report's calibration section: per run and split, ECE and Brier before and after temperature scaling, the
operating points chosen on val and their test sensitivity and specificity with CIs, and reliability diagrams.
Drawn from StudyResults' records only (xferlab.evaluation.calibration and .operating computed them)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

import xferlab.report.figures as figures
from xferlab.evaluation.metrics import ECE_BINS
from xferlab.evaluation.operating import DEFAULT_TARGET_SENSITIVITY
from xferlab.report.render import render
from xferlab.study.results import SPLITS, StudyResults
from xferlab.style import SPLIT_MARKERS


def reliability_figure(panels: Sequence[tuple[str, dict[str, dict]]]):
    """One reliability diagram per run: mean top-label confidence vs accuracy per bin, val and test told apart by
    colour and marker; empty bins are left out; the diagonal is perfect calibration."""
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 4.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, calibration) in zip(axes.flat, panels, strict=False):  # spare axes (hidden) have no panel
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for split, cal in calibration.items():
            r = cal["reliability"]
            pts = [(c, a, k) for c, a, k in zip(r["confidence"], r["accuracy"], r["counts"], strict=True) if k]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=figures.SPLIT_COLOURS[split], linewidth=1,
                    marker=SPLIT_MARKERS.get(split, "o"), markersize=5, label=f"{split} (ECE {cal['ece']:.3f})")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("mean confidence (top label)", fontsize=9)
        ax.set_ylabel("accuracy", fontsize=9)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)  # off the data
    return fig


def _rate(rates: dict | None, key: str) -> str:
    if not rates:
        return "n/a"
    value, low, high = rates[key], rates[f"{key}_low"], rates[f"{key}_high"]
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


HEADING = "Calibration and operating points"  # the navigation's shorter title is the report's entry's


def render_calibration_section(results: StudyResults) -> str:
    """The section's HTML (`<section id="calibration">`)."""
    cal_rows, op_rows = [], []
    for r in results.records:
        for split in SPLITS:
            c = r.calibration.get(split)
            if c:
                bound = " (search bound: not fitted)" if c.get("temperature_at_bound") else ""
                cal_rows.append([r.name, split, f"{c['ece']:.3f}", f"{c['ece_scaled']:.3f}", f"{c['brier']:.3f}",
                                 f"{c['brier_scaled']:.3f}", f"{c['temperature']:.3g}{bound}"])
        for p in r.operating_points or []:
            op_rows.append([r.name, p["rule"], f"{p['threshold']:.3f}", _rate(p["val"], "sensitivity"),
                            _rate(p["val"], "specificity"), _rate(p["test"], "sensitivity"),
                            _rate(p["test"], "specificity")])
    panels = [(r.name, r.calibration) for r in results.records if r.calibration]
    reliability = {"uri": figures.figure_uri(reliability_figure(panels)), "alt": "reliability diagrams",
                   "caption": "Reliability: accuracy against mean top-label confidence per bin; points on the dotted "
                              "diagonal are calibrated, below it over-confident."}
    target = results.study.target_sensitivity if results.study else DEFAULT_TARGET_SENSITIVITY
    intro = (f"ECE: expected calibration error over {ECE_BINS} equal-width bins of the top-label confidence "
             "(Guo et al. 2017); "
             "Brier: scikit-learn's, the squared error of the probabilities (0 is perfect; binary data: the positive "
             "class's, 0.25 for a constant 50/50 guess). "
             "Temperature scaling divides the logits by one T fitted on val (it never changes a prediction). "
             f"Thresholds are chosen on val (Youden's J; the highest reaching sensitivity {target:g}) and applied "
             "unchanged to test.")
    return render("calibration.html", sid="calibration", title=HEADING, intro=intro, calibration_rows=cal_rows,
                  operating_rows=op_rows, conf=f"{100 * results.settings.confidence:.0f}%", reliability=reliability)
