"""Figures drawn from saved results: per-run curves, all runs' val curves on shared axes, timing, confusion matrices
and ROC curves (the reference study's figure style). Each function returns a matplotlib Figure; the caller saves it."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from xferlab import artifacts, files  # noqa: E402
from xferlab.style import SPLIT_COLOURS  # noqa: E402,F401  (re-exported)

PNG_DPI = 100  # sharp on screen while keeping a 4-run report around 1.5 MB


def to_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed. No bbox_inches='tight': the figures lay themselves out
    (tight_layout), and a tight bounding box would draw everything twice."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI)
    plt.close(fig)
    return buf.getvalue()


def png_uri(png: bytes) -> str:
    """PNG bytes as a data: URI (base64): an image the page carries inside itself."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_run_curves(run_dir: Path, history: Sequence[dict], config: dict, missing_only: bool = False) -> Path:
    """A run folder's curves.png, drawn from its history (the engine writes data, not pictures)."""
    path = Path(run_dir) / artifacts.CURVES_PNG
    if not (missing_only and path.is_file()):
        fig = curves_figure(history, title=f"{config.get('backbone')} · {config.get('regime')}")
        files.save_figure(path, fig)
        plt.close(fig)
    return path


def curves_figure(history: Sequence[dict], title: str = ""):
    """Accuracy and loss per epoch for train, val and test; the best (val-chosen) epoch is marked."""
    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "acc", "accuracy"), (axes[1], "loss", "cross-entropy loss")):
        for split, colour in SPLIT_COLOURS.items():
            values = [row.get(f"{split}_{metric}") for row in history]
            if all(v is not None for v in values):
                ax.plot(epochs, values, color=colour, label=split, marker="o", markersize=2.5)
        ax.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best epoch ({best})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


REGIME_STYLES = ("-", "--", ":", "-.")


def comparison_figure(runs: Sequence[tuple[str, str, Sequence[dict]]]):
    """Every run's val accuracy and val loss per epoch on shared axes (the reference study's Fig. 2).

    `runs`: (backbone, regime, history). Colour tells the backbone, line style the regime; seeds of one
    configuration share both.
    """
    backbones = list(dict.fromkeys(b for b, _, _ in runs))
    regimes = list(dict.fromkeys(r for _, r, _ in runs))
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backbones)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labelled = set()
    for backbone, regime, history in runs:
        epochs = [row["epoch"] for row in history]
        style = {"color": colours[backbone], "linestyle": REGIME_STYLES[regimes.index(regime) % len(REGIME_STYLES)],
                 "marker": "o", "markersize": 2.5, "linewidth": 1.4}
        key = (backbone, regime)
        name = f"{backbone} · {regime}" if key not in labelled else None
        labelled.add(key)
        axes[0].plot(epochs, [row["val_acc"] for row in history], label=name, **style)
        axes[1].plot(epochs, [row["val_loss"] for row in history], **style)
    for ax, ylabel in zip(axes, ("val accuracy", "val cross-entropy loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.legend(loc="upper center", ncol=min(4, len(labelled)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def timing_figure(runs: Sequence[tuple[str, dict]]):
    """Per run: seconds of feature caching, training loop and evaluation (stacked), and inference images/s."""
    labels = [label for label, _ in runs]
    y = list(range(len(runs)))[::-1]  # first run on top
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.9 + 0.45 * len(runs)), sharey=True,
                             gridspec_kw={"width_ratios": (3, 2)})
    left = [0.0] * len(runs)
    for key, name, colour in (("feature_seconds", "feature caching", "tab:gray"),
                              ("fit_seconds", "training loop", "tab:blue"),
                              ("eval_seconds", "val + test evaluation", "tab:orange")):
        widths = [t.get(key) or 0.0 for _, t in runs]
        axes[0].barh(y, widths, left=left, color=colour, label=name, height=0.6)
        left = [a + b for a, b in zip(left, widths)]
    axes[0].set_xlabel("seconds")
    axes[1].barh(y, [t.get("inference_images_per_s") or 0.0 for _, t in runs], color="tab:green", height=0.6)
    axes[1].set_xlabel("inference images/s")
    axes[0].set_yticks(y, labels, fontsize=8)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the legend above the bars
    return fig


def confusion_figure(matrices: dict[str, Sequence[Sequence[int]]], class_names: Sequence[str], title: str = ""):
    """One confusion matrix per split (rows: true class, columns: predicted), counts in the cells."""
    k = len(class_names)
    size = 2.2 + 0.35 * k
    fig, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices) + 0.6, size), squeeze=False)
    for ax, (split, cm) in zip(axes[0], matrices.items()):
        ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(class_names)).plot(
            ax=ax, cmap="Blues", colorbar=False, values_format="d")
        ax.set_title(split, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def roc_figure(panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float], Sequence[float], float]]]]):
    """ROC panels side by side; each panel is (title, [(label, fpr, tpr, auc), ...]) with the chance diagonal."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        for label, fpr, tpr, auc in curves:
            ax.plot(fpr, tpr, linewidth=1.4, label=f"{label} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
