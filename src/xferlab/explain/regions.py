"""Regions of an image a map's mass is measured in: the border band, and a region of interest when the data has one.

Region of interest formats (documented in docs/explanations.md, "Regions of interest"):
- npy layout: `roi/<stem>.npy` beside each `<stem>.npy`, in the same image order: N×H×W masks (nonzero = inside) or
  N×4 boxes `x0, y0, x1, y1` in pixels, end exclusive (a row of -1: no region for that image). The phantoms write
  their lung fields this way, and `markers/<stem>.npy` boxes for burned-in markers.
- csv manifest: a `roi` column holding a box `x0,y0,x1,y1` (pixels of the original image, quoted in the CSV) or the
  path of a mask file (.npy, or an image read with Pillow; nonzero = inside; relative to the manifest's folder);
  an empty cell: no region for that image.
Regions are brought to the dataset's image size (masks nearest-neighbour, boxes scaled).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xferlab.data.dataset import ImageDataset
from xferlab.data.images import read_image_header
from xferlab.errors import XferlabError

# Markers and burned-in text sit in the outer eighth of each side of a film (the definition of the band;
# DeGrave et al. 2021 found COVID-19 detectors reading exactly such laterality markers and text).
BORDER_FRACTION = 1 / 8
MAX_MASK_BYTES = 1 << 30  # an roi/ file larger than this is refused rather than read into memory


@dataclass
class Region:
    """Per-image boolean masks (N×H×W) in dataset order, and which images have one at all."""

    name: str
    masks: np.ndarray
    known: np.ndarray  # N bool

    def take(self, idx: np.ndarray) -> Region:
        return Region(self.name, self.masks[idx], self.known[idx])


def border_widths(height: int, width: int, fraction: float = BORDER_FRACTION) -> tuple[int, int]:
    """The border band's width in pixels on the vertical and horizontal sides (at least one pixel)."""
    return max(1, round(height * fraction)), max(1, round(width * fraction))


def border_mask(height: int, width: int, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """True in the outer `fraction` of each side (at least one pixel)."""
    by, bx = border_widths(height, width, fraction)
    mask = np.ones((height, width), dtype=bool)
    mask[by:height - by, bx:width - bx] = False
    return mask


def mass_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's mass inside its mask (N floats; NaN for a map with no mass). Maps are non-negative."""
    total = maps.sum(axis=(-2, -1), dtype=np.float64)
    inside = (maps * masks).sum(axis=(-2, -1), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of N×h×w masks to `size`."""
    if masks.shape[-2:] == tuple(size):
        return masks.astype(bool)
    import torch

    t = torch.from_numpy(masks.astype(np.uint8)).unsqueeze(1)
    return torch.nn.functional.interpolate(t, size=tuple(size), mode="nearest")[:, 0].numpy().astype(bool)


def boxes_to_masks(boxes: np.ndarray, size: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0),
                   where: str = "boxes") -> tuple[np.ndarray, np.ndarray]:
    """N×4 boxes (x0, y0, x1, y1; negative: none) -> N×H×W masks at `size` and the known flags; `scale` is (sy, sx)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    known = (boxes >= 0).all(axis=1)
    bad = known & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if bad.any():
        raise XferlabError(f"{where}: box {boxes[np.flatnonzero(bad)[0]].tolist()} is empty; write x0,y0,x1,y1 with "
                           "x1 > x0 and y1 > y0 (pixels, end exclusive)")
    h, w = size
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    sy, sx = scale
    for i in np.flatnonzero(known):
        x0, y0, x1, y1 = boxes[i]
        masks[i, int(np.floor(y0 * sy)):int(np.ceil(y1 * sy)), int(np.floor(x0 * sx)):int(np.ceil(x1 * sx))] = True
    return masks, known


def _load_array(path: Path) -> np.ndarray:
    if path.stat().st_size > MAX_MASK_BYTES:
        raise XferlabError(f"{path}: larger than {MAX_MASK_BYTES >> 20} MiB; split it or store boxes instead")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise XferlabError(f"{path}: cannot load region file ({err}); save masks or boxes with np.save") from None


def _npy_region(root: Path, folder: str, stems: list[str], counts: list[int], size: tuple[int, int],
                original: tuple[int, int]) -> Region | None:
    """`root/folder/<stem>.npy` per stem (masks or boxes), concatenated in dataset order; None if any is absent."""
    files = [root / folder / f"{stem}.npy" for stem in stems]
    if not all(f.is_file() for f in files):
        return None
    masks, known = [], []
    for f, n in zip(files, counts, strict=True):
        array = _load_array(f)
        if len(array) != n:
            raise XferlabError(f"{f}: {len(array)} regions for {n} images in {f.stem}.npy; write one per image, in "
                               "the same order")
        if array.ndim == 2 and array.shape[1] == 4:
            scale = (size[0] / original[0], size[1] / original[1])
            m, k = boxes_to_masks(array, size, scale, where=str(f))
        elif array.ndim == 3:
            m, k = _resize_masks(array != 0, size), np.ones(n, dtype=bool)
        else:
            raise XferlabError(f"{f}: shape {array.shape} is neither N×H×W masks nor N×4 boxes")
        masks.append(m)
        known.append(k)
    return Region(folder, np.concatenate(masks), np.concatenate(known))


def npy_regions(dataset: ImageDataset, root: Path) -> dict[str, Region]:
    """Regions of an npy-layout dataset: `roi/` (as 'roi') and `markers/` (as 'marker') when present."""
    train = sorted(f.stem for f in root.glob("*.npy") if not f.stem.startswith("test_"))
    test = sorted(f.stem for f in root.glob("*.npy") if f.stem.startswith("test_"))
    stems = train + test  # the npy source's order: class files, then test files, each sorted by name
    shapes = [np.load(root / f"{s}.npy", mmap_mode="r", allow_pickle=False).shape for s in stems]
    counts = [shape[0] for shape in shapes]
    original_size = tuple(shapes[0][-2:]) if shapes else dataset.image_size  # boxes are in the files' pixels
    if sum(counts) != len(dataset.labels):
        return {}  # not the layout these files describe (e.g. skipped images): no regions rather than wrong ones
    out = {}
    for folder, name in (("roi", "roi"), ("markers", "marker")):
        region = _npy_region(root, folder, stems, counts, dataset.image_size, original_size)
        if region is not None:
            region.name = name
            out[name] = region
    return out


def _parse_box(cell: str) -> list[float] | None:
    parts = [p.strip() for p in cell.split(",")]
    if len(parts) != 4:
        return None
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def _manifest_roi_cells(manifest: Path) -> dict[str, str]:
    """Resolved image path -> `roi` cell of a CSV manifest ({} without a roi column)."""
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "roi" not in header or "path" not in header:
            return {}
        cells = {}
        for row in reader:
            values = dict(zip(header, row, strict=False))
            path = Path((values.get("path") or "").strip())
            path = path if path.is_absolute() else manifest.parent / path
            cells[str(path)] = (values.get("roi") or "").strip()
    return cells


def _csv_mask(cell: str, image_path: Path, manifest: Path, size: tuple[int, int]) -> np.ndarray:
    """One image's region from its `roi` cell: a box or a mask file."""
    box = _parse_box(cell)
    if box is not None:
        (height, width), _ = read_image_header(image_path)  # the box is in the original image's pixels (as shown)
        return boxes_to_masks(np.array([box]), size, (size[0] / height, size[1] / width), where=f"{manifest} roi")[0][0]
    mask_path = Path(cell) if Path(cell).is_absolute() else manifest.parent / cell
    if not mask_path.is_file():
        raise XferlabError(f"{manifest}: roi '{cell}' of {image_path.name} is neither a box x0,y0,x1,y1 nor an "
                           "existing mask file; fix the cell or leave it empty")
    if mask_path.suffix == ".npy":
        mask = _load_array(mask_path)
    else:
        from PIL import Image

        with Image.open(mask_path) as im:
            mask = np.asarray(im.convert("L"))
    if mask.ndim != 2:
        raise XferlabError(f"{mask_path}: a mask must be one H×W array, got shape {mask.shape}")
    return _resize_masks((mask != 0)[None], size)[0]


def csv_regions(dataset: ImageDataset, manifest: Path) -> dict[str, Region]:
    """The `roi` column of a CSV manifest, for the dataset's images (which the source lists in meta['files'])."""
    cells = _manifest_roi_cells(manifest)
    files = dataset.meta.get("files")
    if not cells or files is None:
        return {}
    size = dataset.image_size
    masks = np.zeros((len(files), *size), dtype=bool)
    known = np.zeros(len(files), dtype=bool)
    for i, f in enumerate(files):
        cell = cells.get(str(f), "")
        if cell:
            masks[i], known[i] = _csv_mask(cell, Path(f), manifest, size), True
    return {"roi": Region("roi", masks, known)} if known.any() else {}


def dataset_regions(dataset: ImageDataset, fmt: str, path: Path) -> dict[str, Region]:
    """Every region the data carries, by name ('roi', 'marker'), in dataset order."""
    if fmt == "npy":
        return npy_regions(dataset, path)
    if fmt == "csv":
        return csv_regions(dataset, path)
    return {}
