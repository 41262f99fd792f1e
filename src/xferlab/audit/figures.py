"""The audit's figures (matplotlib, files only): embedding scatter and test p-values, pixel statistics, the most
test-like images, leakage pairs and the re-split experiment (the reference's Fig. 3, before vs after re-splitting)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from xferlab import files  # noqa: E402
from xferlab.audit.common import domain_masks  # noqa: E402
from xferlab.audit.leakage import split_positions  # noqa: E402
from xferlab.audit.pixels import STATS  # noqa: E402
from xferlab.audit.shift import METHODS  # noqa: E402
from xferlab.data.dataset import SPLITS, ImageDataset  # noqa: E402
from xferlab.style import FONT_RC, SPLIT_COLOURS, SPLIT_MARKERS  # noqa: E402

matplotlib.rcParams.update(FONT_RC)  # the report's font sizes (xferlab.style), legible at the report's size

MARKERS = "os^Dv<>p"  # fillable markers: test points are drawn hollow
CLASS_COLOURS = ("tab:blue", "tab:red", "tab:purple", "tab:olive", "tab:cyan", "tab:brown", "tab:pink", "tab:gray")
METHOD_LABELS = {"classifier": "classifier AUC", "mmd": "MMD", "ks": "KS (Bonferroni)"}
P_CLIP = 10  # -log10 p above this (KS reaches 300 on a site change) would flatten every other bar


def _save(fig, path: Path) -> str:
    files.save_figure(path, fig)
    plt.close(fig)
    return path.name


def _for_imshow(image: np.ndarray) -> np.ndarray:
    """H×W as it is, 3×H×W as H×W×3: imshow's layout (a colour image is shown in colour, not made gray)."""
    return image.transpose(1, 2, 0) if image.ndim == 3 else image


def _show(ax, image: np.ndarray, title: str) -> None:
    ax.imshow(_for_imshow(image), cmap="gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


SCATTER_POINTS = 5000


def shift_figure(data: ImageDataset, embeddings: np.ndarray, shift: dict, alpha: float, path: Path) -> str:
    """Left: the embeddings' first two principal components by split side and class. Right: every test's p-value."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"width_ratios": (1.25, 1)})
    ref, target = domain_masks(data)
    # A scatter of more points than SCATTER_POINTS is a blot, and the PCA of all of them costs gigabytes at 200k.
    shown = np.zeros(len(data.labels), dtype=bool)
    shown[np.random.default_rng(0).permutation(len(shown))[:SCATTER_POINTS]] = True
    xy = np.zeros((len(shown), 2))
    xy[shown] = PCA(n_components=2, random_state=0).fit_transform(embeddings[shown].astype(np.float64))
    for k, name in enumerate(data.class_names):
        # A class has its own colour and marker; the side is the fill: train+val filled, test hollow.
        colour, marker = CLASS_COLOURS[k % len(CLASS_COLOURS)], MARKERS[k % len(MARKERS)]
        for side, mask, filled in (("train+val", ref, True), ("test", target, False)):
            m = mask & (data.labels == k) & shown
            ax.scatter(xy[m, 0], xy[m, 1], s=14, alpha=0.45 if filled else 0.8, marker=marker, linewidths=0.8,
                       facecolors=colour if filled else "none", edgecolors=colour, label=f"{side} · {name}")
    ax.set(xlabel="PC 1", ylabel="PC 2", title="backbone embeddings (filled: train+val, hollow: test)")
    ax.legend(fontsize=9, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    scopes = {"all": shift["pooled"], **shift["per_class"]}
    width = 0.8 / len(METHODS)
    top = -np.log10(alpha)
    for i, method in enumerate(METHODS):
        heights = [min(P_CLIP, -np.log10(r[method]["p"])) if r.get("status") == "ok" else 0.0 for r in scopes.values()]
        bx.bar(np.arange(len(scopes)) + i * width, heights, width, label=METHOD_LABELS[method])
        top = max(top, *heights)
    bx.axhline(-np.log10(alpha), color="grey", linestyle=":", label=f"alpha = {alpha}")
    bx.set_xticks(np.arange(len(scopes)) + width * (len(METHODS) - 1) / 2, list(scopes))
    bx.set(ylabel=f"-log10 p (clipped at {P_CLIP})", ylim=(0, 1.15 * top),
           title="shift tests, train+val vs test (unadjusted; skipped scopes empty)")
    bx.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)  # off the bars
    fig.tight_layout()
    return _save(fig, path)


def pixel_figure(data: ImageDataset, values: np.ndarray, path: Path) -> str:
    """One panel per statistic: boxes per class and split."""
    names = list(STATS)
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.6 * rows), squeeze=False)  # <= 10 in: unshrunk
    splits = [s for s in SPLITS if (data.splits == s).any()]
    for j, (ax, stat) in enumerate(zip(axes.flat, names)):
        for k in range(data.num_classes):
            for i, s in enumerate(splits):
                v = values[(data.splits == s) & (data.labels == k), j]
                if len(v):
                    pos = k * (len(splits) + 1) + i
                    box = ax.boxplot(v, positions=[pos], widths=0.8, patch_artist=True, showfliers=False)
                    box["boxes"][0].set_facecolor(SPLIT_COLOURS[s])
        centres = [k * (len(splits) + 1) + (len(splits) - 1) / 2 for k in range(data.num_classes)]
        ax.set_xticks(centres, data.class_names, fontsize=9)
        ax.set_title(STATS[stat], fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=SPLIT_COLOURS[s]) for s in splits]
    fig.legend(handles, splits, loc="lower right", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def test_like_figure(data: ImageDataset, scores: np.ndarray, count: int, path: Path) -> str | None:
    """Per class: the test images least like train+val and the train+val images most like test, by the
    within-class domain classifier's out-of-fold score."""
    ref, target = domain_masks(data)
    rows = []
    for k, name in enumerate(data.class_names):
        for label, mask in ((f"{name}: test images least like train+val", target),
                            (f"{name}: train+val images most like test", ref)):
            idx = np.flatnonzero(mask & (data.labels == k) & np.isfinite(scores))
            if len(idx):
                rows.append((label, idx[np.argsort(-scores[idx])][:count]))
    if not rows:
        return None
    fig = plt.figure(figsize=(min(10.0, 1.3 * count), 2.0 * len(rows)), layout="constrained")
    position = split_positions(data.splits)  # "test #12": numbered within the split, as the leakage list is
    for (label, idx), sub in zip(rows, np.atleast_1d(fig.subfigures(len(rows), 1))):
        sub.suptitle(label, fontsize=9, weight="bold", x=0.01, ha="left")
        for ax, i in zip(np.atleast_1d(sub.subplots(1, count)), list(idx) + [None] * count):
            if i is None:
                ax.axis("off")
            else:
                # two lines: labels side by side do not overlap
                _show(ax, data.images[i], f"{data.splits[i]} #{position[i]}\nscore {scores[i]:.2f}")
    return _save(fig, path)


def _leak_pairs(data: ImageDataset, leakage: dict, limit: int) -> list[tuple[int, int, str]]:
    pairs = []
    for group in leakage["exact"]["cross_split"]:
        members = sorted(group["images"], key=lambda i: SPLITS.index(i["split"]))
        pairs.append((members[-1]["index"], members[0]["index"], "exact copy"))
    # confirmed copies first; look-alikes by embedding (a lead, not a leak) last, so they never crowd copies out
    labels = (("phash", "phash {:.0f} bits"), ("aligned", "aligned {:.2g}"), ("embedding", "look-alike {:.2g}"))
    for kind, label in labels:
        for p in leakage.get(kind, {}).get("pairs", []):
            pairs.append((p["query"]["index"], p["match"]["index"], label.format(p["distance"])))
    for g in leakage["groups"].get("overlapping", []):
        ex = g["examples"]
        pairs.append((ex[-1]["index"], ex[0]["index"], f"group {g['group']}"))
    return pairs[:limit]


def leakage_figure(data: ImageDataset, leakage: dict, limit: int, path: Path) -> str | None:
    """Each finding as a pair of thumbnails: the later split's image and its partner."""
    pairs = _leak_pairs(data, leakage, limit)
    if not pairs:
        return None
    cols = min(4, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.6 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    position = split_positions(data.splits)  # "test #12": the numbering audit.json and the report's list use
    for n, (a, b, what) in enumerate(pairs):
        r, c = divmod(n, cols)
        _show(axes[r, 2 * c], data.images[a], f"{data.splits[a]} #{position[a]}\n{what}")
        _show(axes[r, 2 * c + 1], data.images[b], f"{data.splits[b]} #{position[b]}")
    fig.tight_layout()
    return _save(fig, path)


def _curves(ax, history: list[dict], title: str) -> None:
    epochs = [h["epoch"] for h in history]
    for s in ("train", "val", "test"):
        ax.plot(epochs, [h[s] for h in history], color=SPLIT_COLOURS[s], label=s, marker=SPLIT_MARKERS[s], markersize=3)
    ax.set(xlabel="epoch", ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)


def resplit_figure(resplit: dict, path: Path) -> str:
    """(a) accuracy per epoch on the original split; (b) the mean over re-splits; (c) best-epoch accuracy per split,
    original (diamonds) against the re-split distribution (boxes and points): with patient groups, re-splits by
    patient and by image side by side."""
    # 10 in at files.save_figure's 110 dpi fits the report's 1116 px column unshrunk, so 9 pt text stays 9 pt
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.0))
    _curves(axes[0], resplit["original"]["history"], "(a) original split")
    unit = " by patient" if resplit.get("unit") == "patient" else ""
    _curves(axes[1], resplit["resplit_history_mean"], f"(b) re-split{unit} (mean of {resplit['resplits']})")
    lo = min(min(h[s] for h in resplit["original"]["history"] + resplit["resplit_history_mean"]) for s in SPLITS)
    for ax in axes[:2]:
        ax.set_ylim(max(0.0, lo - 0.05), 1.01)
    ax = axes[2]
    keys = ("train", "val", "test", "gap")
    # with patient groups: the re-splits by patient (filled) beside those by image (hatched), one pair per key
    ways = [(resplit["runs"], -0.2, None), (resplit["by_image"]["runs"], 0.2, "//")] \
        if "by_image" in resplit else [(resplit["runs"], 0.0, None)]
    width = 0.5 / len(ways)
    for i, key in enumerate(keys):
        colour = SPLIT_COLOURS.get(key, "tab:grey")
        for runs, offset, hatch in ways:
            values = [r[key] for r in runs]
            box = ax.boxplot(values, positions=[i + offset], widths=width, patch_artist=True, showfliers=False)
            box["boxes"][0].set(facecolor=colour, alpha=0.35, hatch=hatch)
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(values)) / len(ways)
            ax.scatter(i + offset + jitter, values, s=8, color=colour, alpha=0.8)
        ax.scatter([i], [resplit["original"][key]], marker="D", s=60, color="black", zorder=3,
                   label="original split" if i == 0 else None)
    ax.set_xticks(range(len(keys)), ["train", "val", "test", "val − test"])
    ax.axhline(0, color="grey", linewidth=0.5)
    ways_note = "\nleft: re-splits by patient, right (hatched): by image" if len(ways) > 1 else ""
    ax.set(ylabel="best-epoch accuracy; val − test: difference",
           title=f"(c) best epoch: original vs re-splits{ways_note}")
    ax.grid(alpha=0.3, axis="y")
    # One legend above the panels, off every curve and point: splits (a, b) and the original split's marker (c).
    handles, labels = axes[0].get_legend_handles_labels()
    extra_h, extra_l = ax.get_legend_handles_labels()
    fig.legend(handles + extra_h, labels + extra_l, loc="upper center", ncol=4, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return _save(fig, path)


def label_figure(data: ImageDataset, shown: np.ndarray, suggested: np.ndarray, positions: np.ndarray, cols: int,
                 path: Path) -> str:
    """The label check's most doubtful test images (`shown`, dataset rows), each with its given and suggested label
    (`suggested`: every image's suggested class)."""
    cols = min(cols, len(shown))  # a few images: no empty columns
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(10.0, max(4.0, 1.3 * cols)), 0.4 + 1.9 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        _show(ax, data.images[i], f"test #{positions[i]}\n{data.class_names[data.labels[i]]} →\n"
                                  f"{data.class_names[suggested[i]]}")
        ax.title.set_fontsize(8)
    fig.suptitle("most doubtful test images: given label → suggested label", fontsize=9)
    return _save(fig, path)

