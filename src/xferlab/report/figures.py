"""Figures drawn from saved results: per-run accuracy and loss curves (the reference study's figure style)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


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
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
