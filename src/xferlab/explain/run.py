"""`xferlab explain RUN [INPUT...] --out DIR`: Grad-CAM maps of a finished run, as figures and explain.json.

Without INPUT, the run's own val and test splits (reloaded from its config, or from `data` when given) are explained:
every image up to `max_images` per split gets a map, and the shares of its mass in the border band, the region of
interest and, for phantoms with markers, the marker box go into explain.json per image and per split and class.
Overlays are written for the test errors (up to `max_errors` per split) and `per_class` correct images per class;
one contact sheet per split shows them together. With INPUT (image files or .npy arrays) those images are explained
as one split, 'inputs', without labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xferlab import artifacts, files
from xferlab.data.batches import as_tensor
from xferlab.data.config import DataConfig
from xferlab.data.images import gray_uint8, read_image_file, resize_image
from xferlab.data.sources import load_dataset
from xferlab.errors import XferlabError
from xferlab.explain.cam import choose_layer, grad_cam
from xferlab.explain.figures import contact_sheet, enlarged, overlay, png_bytes
from xferlab.explain.regions import BORDER_FRACTION, Region, border_mask, dataset_regions, mass_share
from xferlab.use.model import LoadedRun, load_run

log = logging.getLogger(__name__)

SPLITS = artifacts.EVAL_SPLITS
MAX_INPUT_BYTES = 512 << 20  # one input file; larger is refused rather than decoded


@dataclass
class ExplainOptions:
    max_errors: int = 16  # overlays of misclassified images per split
    per_class: int = 4  # overlays of correctly classified images per class and split
    max_images: int = 512  # maps per split (a seeded sample beyond it): enough for shares to a few points
    batch_size: int = 32
    seed: int = 0
    data: str | None = None  # another dataset path for the run's data config (e.g. shortcut phantoms)
    layer: str | None = None  # a module to read; default: the registry's cam_layer, or an earlier stage when its
    # map would be too coarse at this image size (cam.choose_layer)
    runtime: str = "auto"  # what runs the network below the CAM layer (xferlab.engine.runtime)


@dataclass
class SplitInput:
    """What one split contributes: uint8 images, labels (None for INPUT files), dataset indices and regions."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None
    index: np.ndarray
    regions: dict[str, Region] = field(default_factory=dict)
    names: list[str] | None = None


def _sample(idx: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(idx) <= limit:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))


def dataset_splits(run: LoadedRun, opts: ExplainOptions) -> list[SplitInput]:
    """The run's val and test images (resized as the run saw them) with their regions."""
    data_cfg = run.config.data
    if opts.data is not None:
        data_cfg = DataConfig.model_validate({**data_cfg.model_dump(), "path": opts.data})
    dataset = load_dataset(data_cfg)
    if dataset.class_names != run.class_names:
        raise XferlabError(f"{data_cfg.path}: classes {dataset.class_names} differ from the run's {run.class_names}; "
                           "explain the run on data with the same classes")
    size = run.preprocessing.image_size
    if dataset.image_size != size:
        raise XferlabError(f"{data_cfg.path}: images are {dataset.image_size} but the run was trained on {size}; "
                           "set data.image_size in the run's config or resize the data")
    regions = dataset_regions(dataset, data_cfg.format, Path(data_cfg.path))
    out = []
    for split in SPLITS:
        idx = _sample(dataset.indices(split), opts.max_images, opts.seed)
        if len(idx):
            out.append(SplitInput(split, np.asarray(dataset.images[idx]), dataset.labels[idx], idx,
                                  {k: r.take(idx) for k, r in regions.items()}))
    return out


def _read_input(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One INPUT file as K×H×W uint8 at the run's size: an .npy array (H×W or N×H×W) or an image file decoded as
    `xferlab predict` decodes it (xferlab.data.images.read_image_file: DICOM and 16-bit included)."""
    if not path.is_file():
        raise XferlabError(f"{path}: no such input file; give image files or .npy arrays")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise XferlabError(f"{path}: larger than {MAX_INPUT_BYTES >> 20} MiB; split it into smaller files")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise XferlabError(f"{path}: cannot load .npy ({err}); save a uint8 H×W or N×H×W array") from None
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise XferlabError(f"{path}: need a uint8 H×W or N×H×W array, got {array.dtype} {array.shape}")
        frames = [array] if array.ndim == 2 else list(array)
    else:
        frames = [gray_uint8(read_image_file(path, size)[None])[0]]  # the maps are drawn over gray images
    return np.stack([resize_image(f, size) for f in frames])


def input_split(paths: list[Path], run: LoadedRun) -> SplitInput:
    arrays = [_read_input(Path(p), run.preprocessing.image_size) for p in paths]
    names = [f"{Path(p).name}[{i}]" if len(a) > 1 else Path(p).name for p, a in zip(paths, arrays, strict=True)
             for i in range(len(a))]
    images = np.concatenate(arrays)
    return SplitInput("inputs", images, None, np.arange(len(images)), names=names)


def _shares(split: SplitInput, maps: np.ndarray) -> dict[str, np.ndarray]:
    shares = {"border": mass_share(maps, border_mask(*maps.shape[-2:]))}
    for name, region in split.regions.items():
        s = mass_share(maps, region.masks)
        shares[name] = np.where(region.known, s, np.nan)
    return shares


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def _summary(shares: dict[str, np.ndarray], labels: np.ndarray | None, preds: np.ndarray,
             class_names: list[str]) -> dict:
    """Mean share per region over all images of the split and per true class (with the counts that went in)."""
    def mean(values: np.ndarray) -> float | None:
        values = values[~np.isnan(values)]
        return round(float(values.mean()), 4) if len(values) else None

    out = {"all": {"n": len(preds), **{f"{k}_share": mean(v) for k, v in shares.items()}}}
    if labels is not None:
        out["all"]["accuracy"] = round(float((preds == labels).mean()), 4)
        for c, name in enumerate(class_names):
            sel = labels == c
            out[name] = {"n": int(sel.sum()), **{f"{k}_share": mean(v[sel]) for k, v in shares.items()}}
    return out


def _chosen(labels: np.ndarray | None, preds: np.ndarray, opts: ExplainOptions, n_classes: int) -> np.ndarray:
    """Positions to draw: errors (capped) first, then `per_class` correct ones per class, seeded."""
    rng = np.random.default_rng(opts.seed)
    if labels is None:
        return np.arange(min(len(preds), opts.max_errors + opts.per_class * n_classes))
    errors = np.flatnonzero(preds != labels)
    picks = [np.sort(rng.permutation(errors)[:opts.max_errors])]
    for c in range(n_classes):
        correct = np.flatnonzero((preds == labels) & (labels == c))
        picks.append(np.sort(rng.permutation(correct)[:opts.per_class]))
    return np.concatenate(picks).astype(np.int64)


def _draw(split: SplitInput, maps, preds, probs, shares, chosen, class_names, stage: Path, title: str) -> list[str]:
    folder = stage / artifacts.OVERLAYS / split.name
    folder.mkdir(parents=True, exist_ok=True)
    tiles, captions, drawn = [], [], []
    for i in chosen:
        rgb = enlarged(overlay(split.images[i], maps[i]))
        truth = class_names[split.labels[i]] if split.labels is not None else (split.names or [""] * (i + 1))[i]
        tag = "error" if split.labels is not None and preds[i] != split.labels[i] else "ok"
        name = f"{split.name}_{int(split.index[i]):06d}_{tag}_pred-{class_names[preds[i]]}.png"
        data = png_bytes(rgb)
        files.write_file(folder / name, lambda handle, data=data: handle.write(data))
        drawn.append(f"{artifacts.OVERLAYS}/{split.name}/{name}")
        tiles.append(rgb)
        captions.append(f"{truth} -> {class_names[preds[i]]} {probs[i, preds[i]]:.2f}\n"
                        f"border {shares['border'][i]:.2f}" + (f" roi {shares['roi'][i]:.2f}" if 'roi' in shares and
                                                              not np.isnan(shares['roi'][i]) else ""))
    if tiles:
        import matplotlib.pyplot as plt

        fig = contact_sheet(tiles, captions, f"{title} · {split.name}: errors first, then correct cases per class")
        files.save_figure(stage / artifacts.CONTACT_SHEET_PNG.format(split.name), fig)
        plt.close(fig)
    return drawn


def explain_split(run: LoadedRun, split: SplitInput, opts: ExplainOptions, layer: str, stage: Path) -> dict:
    preprocess = run.preprocessing.batch_preprocess(run.device)  # the run's own: channels, value range, mean/std
    maps, probs = grad_cam(run.model, as_tensor(split.images), preprocess, batch_size=opts.batch_size,
                           layer=layer, runtime=opts.runtime)
    preds = probs.argmax(1)
    shares = _shares(split, maps)
    chosen = _chosen(split.labels, preds, opts, len(run.class_names))
    title = f"{run.config.backbone} · {run.config.regime}"
    drawn_files = _draw(split, maps, preds, probs, shares, chosen, run.class_names, stage, title)
    images = [{"index": int(split.index[i]), **({"name": split.names[i]} if split.names else {}),
               "label": None if split.labels is None else int(split.labels[i]), "pred": int(preds[i]),
               "prob": round(float(probs[i, preds[i]]), 4),
               **{f"{k}_share": _nan_to_none(s[i:i + 1])[0] for k, s in shares.items()}}
              for i in range(len(preds))]
    drawn = dict(zip(chosen.tolist(), drawn_files, strict=True))
    for i, record in enumerate(images):
        record["overlay"] = drawn.get(i)
    return {"summary": _summary(shares, split.labels, preds, run.class_names),
            "contact_sheet": artifacts.CONTACT_SHEET_PNG.format(split.name) if drawn_files else None,
            "images": images}


def explain_run(run_dir: str | Path, out: str | Path, inputs: list[Path] | None = None,
                opts: ExplainOptions | None = None) -> dict:
    """Explain a run into the (existing, empty) folder `out`; explain.json is written last and returned."""
    opts = opts or ExplainOptions()
    t0 = time.perf_counter()
    run = load_run(run_dir)
    torch.manual_seed(opts.seed)
    splits = [input_split(inputs, run)] if inputs else dataset_splits(run, opts)
    layer = opts.layer or choose_layer(run.model, run.preprocessing.image_size)
    out = Path(out)
    result = {
        "run": str(Path(run_dir)),
        "backbone": run.config.backbone,
        "regime": run.config.regime,
        "cam_layer": layer,
        "registry_cam_layer": run.model.spec.cam_layer,
        "method": "Grad-CAM (pytorch-grad-cam), target: the predicted class; each map min-max scaled on its own, so "
                  "compare shares of a map's mass, not raw values",
        "border_fraction": BORDER_FRACTION,
        "data": opts.data or str(run.config.data.path),
        "class_names": run.class_names,
        "splits": {s.name: explain_split(run, s, opts, layer, out) for s in splits},
    }
    result["seconds"] = round(time.perf_counter() - t0, 2)
    artifacts.write_explain(out, result)
    return result


def explain_study(study_dir: str | Path, run_names: list[str], force: bool = False,
                  opts: ExplainOptions | None = None) -> list[str]:
    """Explain each finished run DIR/runs/<name> into DIR/explain/<name> (skipped when its explain.json exists and
    not `force`); returns the names explained now. Each folder is staged, so one that exists is complete."""
    study = artifacts.StudyFolder(Path(study_dir), None, None)
    done = []
    for name in run_names:
        target = study.explain_dir(name)
        if artifacts.is_finished_explain(target) and not force:
            continue
        with files.staged_dir(target, overwrite=True) as stage:
            explain_run(study.run_dir(name), stage, opts=opts)
        done.append(name)
    return done
