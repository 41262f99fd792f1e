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
from xferlab.style import FONT_RC, MIN_FONT_PT, SPLIT_COLOURS, SPLIT_MARKERS  # noqa: E402,F401  (re-exported)

PNG_DPI = 100  # sharp on screen while keeping a 4-run report around 1.5 MB
GRID_WIDTH_IN = 5.4  # one cell of the report's two-column grid (540 px)
matplotlib.rcParams.update(FONT_RC)  # legible at the report's size (xferlab.style.MIN_FONT_PT)


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


def figure_uri(fig) -> str:
    """A matplotlib figure as a data: URI (PNG, base64); the figure is closed."""
    return png_uri(to_png(fig))


def write_run_curves(run_dir: Path, history: Sequence[dict], config: dict, missing_only: bool = False) -> Path:
    """A run folder's curves.png, drawn from its history (the engine writes data, not pictures)."""
    path = Path(run_dir) / artifacts.CURVES_PNG
    if not (missing_only and path.is_file()):
        fig = curves_figure(history, title=f"{config.get('backbone')} · {config.get('regime')}")
        files.save_figure(path, fig)
        plt.close(fig)
    return path


def curves_figure(history: Sequence[dict], title: str = ""):
    """Accuracy (top) and loss (bottom) per epoch for train, val and test; the best (val-chosen) epoch is marked. One
    grid cell wide, the legend below the panels, clear of the data."""
    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]
    fig, axes = plt.subplots(2, 1, figsize=(GRID_WIDTH_IN, 5.6), sharex=True, layout="constrained")
    for ax, metric, label in ((axes[0], "acc", "accuracy"), (axes[1], "loss", "cross-entropy loss")):
        for split, colour in SPLIT_COLOURS.items():
            values = [row.get(f"{split}_{metric}") for row in history]
            if all(v is not None for v in values):
                ax.plot(epochs, values, color=colour, label=split, marker=SPLIT_MARKERS[split], markersize=4)
        ax.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best epoch ({best})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    epoch_axis(axes[1], epochs)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Whole-number epoch ticks; with few epochs exactly those (MaxNLocator alone labels 1 epoch 0.945 ... 1.050)."""
    if len(epochs) <= 12:
        ax.set_xticks(list(epochs))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


REGIME_STYLES = ("-", "--", ":", "-.")
REGIME_MARKERS = ("o", "s", "^", "D")


def comparison_figure(runs: Sequence[tuple[str, str, Sequence[dict]]]):
    """Every run's val accuracy and val loss per epoch on shared axes (the reference study's Fig. 2).

    `runs`: (backbone, regime, history). Colour tells the backbone, line style the regime; seeds of one
    configuration share both.
    """
    backbones = list(dict.fromkeys(b for b, _, _ in runs))
    regimes = list(dict.fromkeys(r for _, r, _ in runs))
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backbones)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    labelled = set()
    for backbone, regime, history in runs:
        epochs = [row["epoch"] for row in history]
        r = regimes.index(regime)
        style = {"color": colours[backbone], "linestyle": REGIME_STYLES[r % len(REGIME_STYLES)],
                 "marker": REGIME_MARKERS[r % len(REGIME_MARKERS)], "markersize": 4, "linewidth": 1.4}
        key = (backbone, regime)
        name = f"{backbone} · {regime}" if key not in labelled else None
        labelled.add(key)
        axes[0].plot(epochs, [row["val_acc"] for row in history], label=name, **style)
        axes[1].plot(epochs, [row["val_loss"] for row in history], **style)
    all_epochs = sorted({row["epoch"] for _, _, history in runs for row in history})
    for ax, ylabel in zip(axes, ("val accuracy", "val cross-entropy loss"), strict=True):
        epoch_axis(ax, all_epochs)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside upper center", ncol=min(4, len(labelled)), frameon=False)
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
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes[0].set_xlabel("seconds")
    axes[1].barh(y, [t.get("inference_images_per_s") or 0.0 for _, t in runs], color="tab:green", height=0.6)
    axes[1].set_xlabel("inference images/s")
    axes[0].set_yticks(y, labels)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the legend above the bars
    return fig


def confusion_figure(matrices: dict[str, Sequence[Sequence[int]]], class_names: Sequence[str], title: str = ""):
    """One confusion matrix per split (rows: true class, columns: predicted), counts in the cells."""
    k = len(class_names)
    size = min(GRID_WIDTH_IN / 2, 1.9 + 0.3 * k) if k <= 4 else 1.9 + 0.35 * k  # up to 4 classes: one grid cell
    fig, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices), size + 0.5), squeeze=False,
                             layout="constrained")
    for ax, (split, cm) in zip(axes[0], matrices.items(), strict=True):
        ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(class_names)).plot(
            ax=ax, cmap="Blues", colorbar=False, values_format="d")
        ax.set_title(split)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.suptitle(title)
    return fig


def roc_figure(panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float], Sequence[float], float]]]]):
    """ROC panels side by side; each panel is (title, [(label, fpr, tpr, auc), ...]) with the chance diagonal."""
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    n_curves = max(len(curves) for _, curves in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, (4.6 + 0.22 * n_curves) * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, curves) in zip(axes.flat, panels, strict=False):  # spare axes (hidden) have no panel
        for i, (label, fpr, tpr, auc) in enumerate(curves):
            ax.plot(fpr, tpr, linewidth=1.4, label=f"{label} (AUC {auc:.3f})",
                    linestyle=REGIME_STYLES[i // 10 % len(REGIME_STYLES)])  # more than 10 colours: styles too
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # below the axes, off the curves
    return fig
