"""The audit's shortcut check on a trained run (`audit: {shortcut_run: RUN}`): Grad-CAM maps of the run on the
audited data's val images (where a shortcut learnt in training still shows), then xferlab.explain.shortcut."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xferlab.data.batches import as_tensor
from xferlab.data.dataset import ImageDataset
from xferlab.errors import XferlabError
from xferlab.explain.cam import choose_layer, grad_cam
from xferlab.explain.regions import dataset_regions, mass_share
from xferlab.explain.shortcut import shortcut_check
from xferlab.use.model import LoadedRun, load_run

MAX_CHECK_IMAGES = 256  # the signed-rank test (exact for small samples) needs tens of images; more only costs time
MIN_CHECK_IMAGES = 20


def check_shortcut_run(data: ImageDataset, run_dir: str | Path, split: str = "val",
                       runtime: str = "auto") -> LoadedRun:
    """The run, if it fits the audited data (classes, image size, enough images); called before the audit's long
    steps, so a wrong run fails at once. `runtime`: what runs its predictions (xferlab.engine.runtime)."""
    run = load_run(run_dir, runtime=runtime)
    size = run.preprocessing.image_size
    if data.class_names != run.class_names or data.image_size != size:
        raise XferlabError(f"audit.shortcut_run {run_dir}: trained on classes {run.class_names} at {size}, "
                           f"the audited data has {data.class_names} at {data.image_size}; give a run trained on it")
    n = len(data.indices(split))
    if n < MIN_CHECK_IMAGES:
        raise XferlabError(f"audit.shortcut_run: the {split} split has {n} images; the shortcut check needs "
                           f"at least {MIN_CHECK_IMAGES}")
    if data.images.ndim != 3:
        raise XferlabError("audit.shortcut_run: the shortcut check works on grayscale images (N×H×W)")
    return run


def audit_shortcut(data: ImageDataset, data_format: str, data_path: Path, run_dir: str | Path, alpha: float,
                   seed: int = 0, split: str = "val", runtime: str = "auto") -> dict:
    """The check's record for audit.json: p-value, alarm, shares and changes, the layer and the images used."""
    run = check_shortcut_run(data, run_dir, split, runtime)
    idx = data.indices(split)
    idx = np.sort(np.random.default_rng(seed).permutation(idx)[:MAX_CHECK_IMAGES])
    images = np.asarray(data.images[idx])
    regions = dataset_regions(data, data_format, data_path)
    roi = regions["roi"].masks[idx] if "roi" in regions and regions["roi"].known[idx].all() else None
    model = run.model
    preprocess = run.preprocessing.batch_preprocess(run.device)  # the run's own input record
    layer = choose_layer(model, run.preprocessing.image_size)
    cams, _ = grad_cam(model, as_tensor(images), preprocess, layer=layer, runtime=runtime)
    result = shortcut_check(images, cams, run.predict, roi=roi, alpha=alpha)
    record = {**result.as_dict(), "run": str(run_dir), "split": split, "cam_layer": layer,
              "zone": "border band less the region of interest" if roi is not None else "border band",
              "reference": "region of interest" if roi is not None else "centre (inside the border band)"}
    if "marker" in regions:  # the data records its burned-in markers: how much of the maps sits on them
        marker = regions["marker"]
        known = marker.known[idx]
        if known.any():
            record["marker_share"] = round(float(np.nanmean(mass_share(cams[known], marker.masks[idx][known]))), 4)
    return record


def shortcut_finding(record: dict) -> tuple[str, str]:
    """The check's finding for the audit's verdict: (level, text), the audit's Finding (xferlab.audit.entry)."""
    where, ref = record["zone"], record["reference"]
    changes = (f"mean largest change {record['zone_change']:.3f} vs {record['roi_change']:.3f}, the zone's larger on "
               f"{record['zone_wins']:.0%} of the images; p = {record['p_value']:.3g}, alpha {record['alpha']}")
    maps = f"the maps put {record['zone_share']:.0%} of their mass there, on {record['zone_area']:.0%} of the image"
    if record["alarm"]:
        text = (f"Likely shortcut: occluding the run's most salient windows in the {where} changes its predictions "
                f"more than occluding those of the {ref} ({changes}); {maps}.")
        return "caution", text
    text = (f"No shortcut found: occluding the most salient windows in the {where} changes predictions no more than "
            f"occluding those of the {ref} beyond chance ({changes}); {maps}.")
    return "ok", text
