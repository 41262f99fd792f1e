"""Data sources: each reads one on-disk layout (npy, folder, csv, medmnist) into an ImageDataset.

A source is a function DataConfig -> ImageDataset registered under its format name; load_dataset picks it.
Every source returns uint8 N×H×W (gray) or N×3×H×W (RGB) images, resized to cfg.image_size when given. The folder
and csv sources return them as a decoded array, or, when that would exceed cfg.memory_budget_mb, as FileImages
(xferlab.data.streaming) that decode them from disk per batch with the same pixels.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xferlab.data.config import DataConfig
from xferlab.data.dataset import SPLITS, ImageDataset
from xferlab.data.exclude import keep_mask, npy_ids
from xferlab.data.groups import file_groups, from_names, sidecar_groups
from xferlab.data.images import (
    channels_first,
    check_file_sizes,
    check_regular_file,
    concat_batches,
    describe_files,
    read_each,
    read_image_file,
    resize_image,
    resize_images,
    stack_images,
    to_uint8,
)
from xferlab.data.registry import SOURCES, SourceFn, register_source  # noqa: F401  (re-exported)
from xferlab.data.splits import carve_val, draw_splits
from xferlab.errors import XferlabError, did_you_mean

if TYPE_CHECKING:
    from xferlab.data.streaming import FileImages, FileScan

logger = logging.getLogger(__name__)


IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
NPY_TEST_PREFIX = "test_"
MEDMNIST_DEFAULT_SIZE = 28  # `<flag>.npz` holds the original 28×28 release; `<flag>_<S>.npz` the MedMNIST+ sizes


def load_dataset(cfg: DataConfig) -> ImageDataset:
    """Read the dataset cfg describes with the source registered for cfg.format (DataConfig checked the name)."""
    if not Path(cfg.path).exists():
        raise XferlabError(f"{cfg.path}: data path does not exist; check data.path (--data)")
    data = SOURCES[cfg.format](cfg)
    if cfg.exclude is not None and not data.meta.get("excluded"):  # a source that ignores it would exclude nothing
        raise XferlabError(f"data.exclude (--exclude {cfg.exclude}): the '{cfg.format}' source gives its images no "
                           "ids, so it cannot leave any out; remove data.exclude or use a source that names its "
                           "images (npy, folder, csv, medmnist)")
    return data


def check_exclude(cfg: DataConfig) -> None:
    """Raise the error data.exclude would raise when the data is loaded (a missing file, unknown ids): a study calls
    it before writing its folder. It reads the data as a run does, streamed where the source can (folder and csv
    files are opened once more; npy arrays are memory-mapped), so it costs one extra pass over a folder's headers
    (and over its RGB files, whose colour is checked), not a training's."""
    load_dataset(cfg.model_copy(update={"memory_budget_mb": 0}))


# ---- shared steps -------------------------------------------------------------------------------------------------


def _dataset(
    cfg: DataConfig,
    images: np.ndarray | FileImages,
    labels: np.ndarray,
    class_names: Sequence[str],
    splits: np.ndarray,
    groups: np.ndarray | None = None,
    **meta: object,
) -> ImageDataset:
    if groups is not None:
        _warn_shared_patients(groups, splits, str(cfg.path))
    return ImageDataset(
        images=images,
        labels=labels,
        class_names=list(class_names),
        splits=splits,
        groups=groups,
        source=str(cfg.path),
        meta={"format": cfg.format, **meta},
    )


def _warn_shared_patients(groups: np.ndarray, splits: np.ndarray, where: str) -> None:
    """Splits the data brought with it (folders, a manifest's split column) may share patients: say so at once."""
    names, patient = np.unique(groups, return_inverse=True)
    split_names, split = np.unique(splits.astype(str), return_inverse=True)
    pairs = np.unique(patient.ravel() * len(split_names) + split.ravel())  # one per (patient, split) present
    spans = names[np.bincount(pairs // len(split_names), minlength=len(names)) > 1].tolist()
    if spans:
        logger.warning("%s: %d patient(s) have images in more than one split (e.g. %s), so the later splits' accuracy "
                       "is optimistic; `xferlab audit` lists them all", where, len(spans), ", ".join(spans[:3]))


def _carve(
    splits: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, cfg: DataConfig, class_names: Sequence[str]
) -> np.ndarray:
    """Turn part of the train split into val (in place) with cfg.val_split / val_fraction / seed."""
    pool = np.flatnonzero(splits == "train")
    pool_groups = None if groups is None else groups[pool]
    val = carve_val(
        labels[pool], pool_groups, cfg.val_fraction, cfg.val_split, cfg.seed, class_names=class_names
    )
    splits[pool[val]] = "val"
    return splits


def _prepare_batch(array: np.ndarray, where: str, image_size: int | None) -> np.ndarray:
    batch = to_uint8(channels_first(array, where), where)
    return batch if image_size is None else resize_images(batch, image_size)


def _skipped_files(paths: Sequence[Path], skipped: Sequence[int], where: str) -> list[Path]:
    files = [paths[i] for i in skipped]
    if files:
        logger.warning("%s: skipped %d unreadable image(s): %s", where, len(files), describe_files(files))
    return files


def _read_images(
    paths: Sequence[Path], cfg: DataConfig, where: str, scan: FileScan | None = None
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Decode files into one batch. Returns (images, indices of the files kept, files skipped as unreadable).

    Images are resized as they are read, so a folder of large scans never sits in memory at full size. With `scan`
    (streaming.scan_image_files of the same paths) its header checks stand: only the files it kept are decoded, and
    the files it skipped are reported with any that fail to decode now.
    """
    if scan is None:
        candidates, skipped = list(range(len(paths))), []
        if cfg.image_size is None:
            check_file_sizes(paths, where)
    else:
        candidates, skipped = scan.kept, list(scan.skipped)

    def read(path: Path) -> np.ndarray:
        image = read_image_file(path, cfg.image_size)
        return image if cfg.image_size is None else resize_image(image, cfg.image_size)

    failed: list[int] = []
    kept, images = [], []
    for j, image in read_each([paths[i] for i in candidates], read, cfg.skip_unreadable, failed):
        kept.append(candidates[j])
        images.append(image)
    skipped_files = _skipped_files(paths, sorted(skipped + [candidates[j] for j in failed]), where)
    names = [str(paths[i]) for i in kept]
    return stack_images(images, where, cfg.image_size, names), np.asarray(kept, dtype=np.int64), skipped_files


def _load_with_groups(
    names: Sequence[str], paths: Sequence[Path], cfg: DataConfig, where: str
) -> tuple[np.ndarray | FileImages, np.ndarray, list[Path], tuple[np.ndarray | None, str | None]]:
    """_load_images, and the patient ids of the files kept (xferlab.data.groups.file_groups). Ids from names are
    matched before any pixel is decoded, so a pattern that misses files fails at once; DICOM headers are read for
    the files kept."""
    early = file_groups(names, paths, cfg.groups, cfg.unmatched, where) if from_names(cfg.groups) else None
    images, kept, skipped = _load_images(paths, cfg, where)
    if early is not None:
        groups, groups_from = early
        return images, kept, skipped, (groups[kept], groups_from)
    return images, kept, skipped, file_groups([names[i] for i in kept], [paths[i] for i in kept], cfg.groups,
                                              cfg.unmatched, where)


def _load_images(
    paths: Sequence[Path], cfg: DataConfig, where: str
) -> tuple[np.ndarray | FileImages, np.ndarray, list[Path]]:
    """_read_images, or, when the decoded images would take more than cfg.memory_budget_mb, FileImages that decode
    them per batch. Returns (images, indices of the files kept, files skipped as unreadable)."""
    if cfg.memory_budget_mb is None:
        return _read_images(paths, cfg, where)
    import xferlab.data.streaming as streaming  # imports torch: only sources given a memory budget pay for it

    budget = cfg.memory_budget_mb * streaming.MIB
    scan = streaming.scan_image_files(paths, where, cfg.image_size, cfg.skip_unreadable)
    rgb = None
    if streaming.decoded_nbytes(len(scan.kept), scan.size, rgb=True) > budget:  # then colour decides, so find it
        rgb, scan = streaming.find_colour(paths, scan, cfg.skip_unreadable)
    if rgb is None or streaming.decoded_nbytes(len(scan.kept), scan.size, rgb) <= budget:
        images, kept, skipped = _read_images(paths, cfg, where, scan)
        logger.info("%s: %d images take %.1f MiB decoded, within data.memory_budget_mb = %g MiB: loaded into memory",
                    where, len(images), images.nbytes / streaming.MIB, cfg.memory_budget_mb)
        return images, kept, skipped
    images = streaming.FileImages([paths[i] for i in scan.kept], scan.size, rgb, resize=cfg.image_size is not None)
    logger.info("%s: %d images would take %.1f MiB decoded, over data.memory_budget_mb = %g MiB: streaming them "
                "from disk per batch", where, len(images), images.nbytes / streaming.MIB, cfg.memory_budget_mb)
    return images, np.asarray(scan.kept, dtype=np.int64), _skipped_files(paths, scan.skipped, where)


# ---- npy: <class>.npy per class, optional test_<class>.npy ---------------------------------------------------------


def _load_npy(path: Path) -> np.ndarray:
    try:
        # Memory-mapped: uint8 files are copied once, straight into the final array.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise XferlabError(
            f"{path}: cannot load .npy ({err}); the file may be truncated, corrupt or pickled: "
            "re-save it with np.save from a numeric (not object) array"
        ) from None
    if not isinstance(array, np.ndarray):  # an .npz archive renamed to .npy
        raise XferlabError(f"{path}: holds an .npz archive, not one array; save each class with np.save")
    return array


def _npy_files(root: Path) -> tuple[list[Path], list[Path]]:
    if not root.is_dir():
        raise XferlabError(f"{root}: the npy format expects a folder of <class>.npy files, not a file")
    files = sorted(root.glob("*.npy"))
    train = [f for f in files if not f.stem.startswith(NPY_TEST_PREFIX)]
    test = [f for f in files if f.stem.startswith(NPY_TEST_PREFIX)]
    if not train:
        found = describe_files([f.name for f in files]) or "no .npy files"
        if (root / "train").is_dir():  # the folder layout (train/<class>/ images) given as the default npy format
            raise XferlabError(f"{root}: holds a train/ folder, the folder layout, not <class>.npy files; add "
                               "--format folder (or data: {format: folder} in the config)")
        raise XferlabError(
            f"{root}: no <class>.npy files (found {found}); save one array per class, e.g. normal.npy, pneumonia.npy"
        )
    class_names = [f.stem for f in train]
    for f in test:
        name = f.stem[len(NPY_TEST_PREFIX):]
        if name not in class_names:
            raise XferlabError(
                f"{f}: test class '{name}' has no {name}.npy in the train pool; name test files "
                f"test_<class>.npy with a class from {class_names}{did_you_mean(name, class_names)}"
            )
    return train, test


@register_source("npy")
def load_npy(cfg: DataConfig) -> ImageDataset:
    """A folder of `<class>.npy` arrays (the train pool; val carved from it) and optional `test_<class>.npy`."""
    root = Path(cfg.path)
    train, test = _npy_files(root)
    class_names = [f.stem for f in train]
    files = train + test
    batches = [_prepare_batch(_load_npy(f), str(f), cfg.image_size) for f in files]
    file_labels = [class_names.index(f.stem.removeprefix(NPY_TEST_PREFIX)) for f in files]
    file_splits = ["train"] * len(train) + ["test"] * len(test)
    labels = np.concatenate([np.full(len(b), c, dtype=np.int64) for b, c in zip(batches, file_labels)])
    splits = np.concatenate([np.full(len(b), s, dtype=object) for b, s in zip(batches, file_splits)])
    images = concat_batches(batches, [str(f) for f in files], str(root))
    groups, groups_from = sidecar_groups(root, [(f.name, len(b)) for f, b in zip(files, batches)], cfg.groups,
                                         cfg.unmatched)
    ids = [i for f, b in zip(files, batches) for i in npy_ids(f.name, len(b))]
    keep, excluded = keep_mask(ids, cfg.exclude)
    if keep is not None:  # before val is carved, so the splits are those of the data without them
        images, labels, splits = images[keep], labels[keep], splits[keep]
        groups = None if groups is None else groups[keep]
        ids = [i for i, k in zip(ids, keep) if k]
    splits = _carve(splits, labels, groups, cfg, class_names)
    return _dataset(cfg, images, labels, class_names, splits, groups, val_carved=cfg.val_split,
                    groups_from=groups_from, ids=ids, excluded=excluded)


# ---- folder: train/<class>/*.png, optional val/ and test/ ----------------------------------------------------------


def _subdirs(folder: Path) -> list[Path]:
    """Class folders, sorted; hidden and '__MACOSX'-style folders are not classes."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith((".", "__")))


def _image_files(folder: Path) -> list[Path]:
    """Entries with an image suffix that are not folders. FIFOs, devices and broken or looping links are kept, so
    that reading them is refused by name (images.check_regular_file) rather than silently dropped or blocked on."""
    return sorted(
        f for f in folder.iterdir()
        if not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS and not _is_dir(f)
    )


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a symlink loop or an over-long name is not a folder; reading it reports the problem
        return False


def _check_links_inside(paths: Sequence[Path], root: Path, allow: bool) -> None:
    """A symlink (of a file or of a class folder) whose target lies outside the dataset folder is refused unless
    data.allow_external_links: a dataset copied from elsewhere should not read files beyond itself."""
    if allow:
        return
    top = root.resolve()
    for path in paths:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing or looping targets are reported when the file is read
            continue
        if not target.is_relative_to(top):
            raise XferlabError(
                f"{path}: a symlink to {target}, outside the dataset folder {top}; copy the file into the dataset, "
                "or set data.allow_external_links: true (--allow-external-links) if the links are meant"
            )


def _class_name(folder: Path) -> str:
    """The folder's name as text: bytes that are not UTF-8 (held by Python as surrogates, which no file format,
    figure or terminal can write) are shown as \\xNN."""
    return os.fsencode(folder.name).decode("utf-8", "backslashreplace")


def _folder_entries(root: Path) -> tuple[list[str], list[Path], list[int], list[str]]:
    """Class names (train subfolders) and, per image file, its path, label and split."""
    if not (root / "train").is_dir():
        inside = [d.name for d in _subdirs(root)] if root.is_dir() else []
        raise XferlabError(
            f"{root}: no train/ folder; the folder format expects train/<class>/, optional val/ and test/ "
            f"(subfolders here: {inside or 'none'}); point data.path at the folder that holds train/"
        )
    class_names = [_class_name(d) for d in _subdirs(root / "train")]
    if not class_names:
        raise XferlabError(f"{root / 'train'}: no class subfolders; put each class's images in train/<class>/")
    paths, labels, splits = [], [], []
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        for class_dir in _subdirs(root / split):
            name = _class_name(class_dir)
            if name not in class_names:
                raise XferlabError(
                    f"{class_dir}: '{name}' is not a class of train/ {class_names}"
                    f"{did_you_mean(name, class_names)}; rename or remove the folder"
                )
            files = _image_files(class_dir)
            paths += files
            labels += [class_names.index(name)] * len(files)
            splits += [split] * len(files)
    return class_names, paths, labels, splits


@register_source("folder")
def load_folder(cfg: DataConfig) -> ImageDataset:
    """`train/<class>/` image files (PNG/JPEG/TIFF/BMP), optional `val/` and `test/`; val carved when absent."""
    root = Path(cfg.path)
    class_names, paths, labels, splits = _folder_entries(root)
    _check_links_inside(paths, root, cfg.allow_external_links)
    names = [p.relative_to(root).as_posix() for p in paths]  # what data.groups patterns match; the images' ids
    keep, excluded = keep_mask(names, cfg.exclude)
    if keep is not None:  # before any file is read and before val is carved
        paths, labels, splits, names = ([x for x, k in zip(seq, keep) if k] for seq in (paths, labels, splits, names))
    images, kept, skipped, (groups, groups_from) = _load_with_groups(names, paths, cfg, str(root))
    labels = np.asarray(labels, dtype=np.int64)[kept]
    splits = np.asarray(splits, dtype=object)[kept]
    files = [paths[i] for i in kept]
    carved = not (splits == "val").any()
    if carved:
        splits = _carve(splits, labels, groups, cfg, class_names)
    meta = {"val_carved": cfg.val_split if carved else None, "skipped": [str(p) for p in skipped],
            "files": [str(f) for f in files], "groups_from": groups_from, "ids": [names[i] for i in kept],
            "excluded": excluded}
    return _dataset(cfg, images, labels, class_names, splits, groups, **meta)


# ---- csv: manifest with path,label[,split][,group] -----------------------------------------------------------------


def _manifest_rows(manifest: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header (stripped, lower-case) and (line number, row) pairs; errors name the file."""
    if manifest.is_dir():
        raise XferlabError(f"{manifest}: the csv format expects a manifest file, not a folder")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = [(reader.line_num, dict(zip(header, row))) for row in reader if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise XferlabError(f"{manifest}: cannot read manifest ({err}); save it as UTF-8 CSV") from None
    if not header:
        raise XferlabError(f"{manifest}: empty manifest; write a header line 'path,label' (optional split, group)")
    for column in ("path", "label"):
        if column not in header:
            raise XferlabError(
                f"{manifest}: missing column '{column}' (found {header}){did_you_mean(column, header)}; "
                "the header must name path and label (optional split, group)"
            )
    if not rows:
        raise XferlabError(f"{manifest}: the manifest has a header but no rows; list one image per line")
    return header, rows


def _cell(row: dict, column: str, line: int, manifest: Path, required: bool = True) -> str:
    value = (row.get(column) or "").strip()
    if required and not value:
        raise XferlabError(f"{manifest}, line {line}: empty '{column}'; fill it in or remove the row")
    return value


def _manifest_split(value: str, line: int, manifest: Path) -> str:
    value = value.lower()
    if value and value not in SPLITS:
        raise XferlabError(
            f"{manifest}, line {line}: split '{value}' is not one of {list(SPLITS)}{did_you_mean(value, SPLITS)}; "
            "or leave it blank to have it drawn"
        )
    return value


def _manifest_columns(manifest: Path) -> dict[str, list]:
    """Resolved paths, their cells as written, label names, split cells ('' = draw) and groups (None without a
    group column)."""
    header, rows = _manifest_rows(manifest)
    cols: dict[str, list] = {"path": [], "label": [], "split": [], "group": [] if "group" in header else None,
                             "cell": []}
    for line, row in rows:
        cell = _cell(row, "path", line, manifest)
        cols["cell"].append(Path(cell).as_posix())
        path = Path(cell)
        cols["path"].append(path if path.is_absolute() else manifest.parent / path)
        cols["label"].append(_cell(row, "label", line, manifest))
        cols["split"].append(_manifest_split(_cell(row, "split", line, manifest, required=False), line, manifest))
        if cols["group"] is not None:
            cols["group"].append(_cell(row, "group", line, manifest))
    missing = [(line, err) for (line, _), p in zip(rows, cols["path"], strict=True) if (err := _file_problem(p))]
    if missing:
        line, err = missing[0]
        raise XferlabError(
            f"{manifest}, line {line}: {err} ({len(missing)} row(s) point at missing or unusable files); "
            f"relative paths are read from the manifest's folder {manifest.parent}"
        )
    return cols


def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an image file (missing, a folder, a FIFO, a device, a loop), or None."""
    try:
        check_regular_file(path)
    except XferlabError as err:
        return str(err)
    return None


def _manifest_splits(
    cells: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, cfg: DataConfig, class_names: Sequence[str]
) -> tuple[np.ndarray, str]:
    """Fill blank split cells by drawing (stratified, group-aware); carve val when the manifest gives none."""
    splits = cells.copy()
    blank = np.flatnonzero(splits == "")
    if len(blank):
        sizes = {"val": cfg.val_fraction, "test": cfg.test_fraction}
        blank_groups = None if groups is None else groups[blank]
        splits[blank] = draw_splits(labels[blank], blank_groups, sizes, cfg.seed, class_names=class_names)
        return splits, "drawn"
    if not (splits == "val").any():
        return _carve(splits, labels, groups, cfg, class_names), f"val carved ({cfg.val_split})"
    return splits, "manifest"


@register_source("csv")
def load_csv(cfg: DataConfig) -> ImageDataset:
    """A manifest `path,label[,split][,group]`; blank or absent splits are drawn with val/test_fraction."""
    manifest = Path(cfg.path)
    cols = _manifest_columns(manifest)
    keep, excluded = keep_mask(cols["cell"], cfg.exclude)  # ids: the path cells as written
    if keep is not None:  # before any file is read and before splits are drawn
        cols = {k: None if v is None else [x for x, m in zip(v, keep) if m] for k, v in cols.items()}
    names, labels = np.unique(np.asarray(cols["label"], dtype=str), return_inverse=True)  # sorted class names
    class_names = names.tolist()
    if cols["group"] is not None and cfg.groups is None:  # the manifest's own column
        images, kept, skipped = _load_images(cols["path"], cfg, str(manifest))
        groups, groups_from = np.asarray(cols["group"], dtype=str)[kept], "group column"
    else:  # or data.groups: a pattern on the path cells as written, dicom or none
        images, kept, skipped, (groups, groups_from) = _load_with_groups(cols["cell"], cols["path"], cfg,
                                                                          str(manifest))
    labels = labels.astype(np.int64)[kept]
    cells = np.asarray(cols["split"], dtype=object)[kept]
    splits, how = _manifest_splits(cells, labels, groups, cfg, class_names)
    meta = {"splits_from": how, "skipped": [str(p) for p in skipped], "files": [str(cols["path"][i]) for i in kept],
            "groups_from": groups_from, "ids": [cols["cell"][i] for i in kept], "excluded": excluded}
    return _dataset(cfg, images, labels, class_names, splits, groups, **meta)


# ---- medmnist: local .npz files, never downloaded ------------------------------------------------------------------


def _medmnist_sizes(folder: Path, flag: str) -> dict[int, Path]:
    pattern = re.compile(rf"{re.escape(flag)}(?:_(\d+))?\.npz")
    sizes = {}
    for f in folder.glob("*.npz"):
        m = pattern.fullmatch(f.name)
        if m:
            sizes[int(m.group(1)) if m.group(1) else MEDMNIST_DEFAULT_SIZE] = f
    return sizes


def _medmnist_file(cfg: DataConfig) -> Path:
    """cfg.path itself, or the `<flag>[_<size>].npz` in that folder closest to cfg.image_size (never smaller if any)."""
    path = Path(cfg.path)
    if path.is_file():
        return path
    flag = cfg.medmnist_flag
    if not flag:
        raise XferlabError(f"{path} is a folder; set data.medmnist_flag (e.g. pneumoniamnist) or give the .npz file")
    sizes = _medmnist_sizes(path, flag)
    if not sizes:
        stems = sorted(f.stem for f in path.glob("*.npz"))
        raise XferlabError(
            f"{path}: no {flag}.npz or {flag}_<size>.npz (found {stems or 'no .npz files'})"
            f"{did_you_mean(flag, stems)}; download it with the medmnist package first (xferlab never downloads)"
        )
    wanted = cfg.image_size
    if wanted is None or wanted in sizes:
        return sizes[wanted if wanted is not None else min(sizes)]
    larger = [s for s in sizes if s >= wanted]
    return sizes[min(larger) if larger else max(sizes)]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    keys = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise XferlabError(
                    f"{path}: not a MedMNIST file, missing arrays {missing} (found {npz.files}); "
                    "use the .npz the medmnist package downloads"
                )
            return {k: npz[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise XferlabError(f"{path}: cannot read .npz ({err}); download the file again") from None


def _medmnist_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise XferlabError(
            f"{where}: labels have shape {labels.shape} (multi-label); xferlab needs one class per image, "
            "choose a single-label MedMNIST dataset"
        )
    if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise XferlabError(f"{where}: labels must be non-negative integers, got {labels.dtype}")
    return labels.astype(np.int64)


def _medmnist_class_names(flag: str, n_labels: int) -> list[str]:
    """Names from medmnist.INFO when the package is installed (imported lazily: it pulls in torch), else classK."""
    fallback = [f"class{i}" for i in range(n_labels)]
    try:
        from medmnist import INFO
    except ImportError:
        return fallback
    info = INFO.get(flag)
    if info is None:
        logger.warning("medmnist flag '%s' is unknown to the medmnist package%s; using class0..", flag,
                       did_you_mean(flag, INFO))
        return fallback
    if "multi-label" in info.get("task", ""):
        raise XferlabError(f"{flag} is a multi-label dataset; xferlab needs one class per image")
    names = [info["label"][k] for k in sorted(info["label"], key=int)]
    if n_labels > len(names):
        raise XferlabError(f"{flag}: label {n_labels - 1} is out of range for its {len(names)} classes "
                           f"(0..{len(names) - 1}); the file is damaged or belongs to another dataset")
    return names


@register_source("medmnist")
def load_medmnist(cfg: DataConfig) -> ImageDataset:
    """A local MedMNIST `.npz` (train/val/test images and labels); the splits are the file's own."""
    if cfg.groups not in (None, "none"):
        raise XferlabError(f"data.groups {cfg.groups!r}: MedMNIST files carry no patient ids; leave data.groups unset")
    path = _medmnist_file(cfg)
    flag = cfg.medmnist_flag or re.sub(r"_\d+$", "", path.stem)
    arrays = _load_npz(path)
    names = [f"{path}:{s}_images" for s in SPLITS]
    batches = [_prepare_batch(arrays.pop(f"{s}_images"), name, cfg.image_size) for s, name in zip(SPLITS, names)]
    labels = [_medmnist_labels(arrays[f"{s}_labels"], f"{path}:{s}_labels") for s in SPLITS]
    for batch, lab, name in zip(batches, labels, names):
        if len(batch) != len(lab):
            raise XferlabError(f"{name}: {len(batch)} images but {len(lab)} labels; download the file again")
    images = concat_batches(batches, names, str(path))
    ids = [i for s, lab in zip(SPLITS, labels) for i in npy_ids(f"{s}_images", len(lab))]
    splits = np.concatenate([np.full(len(lab), s, dtype=object) for s, lab in zip(SPLITS, labels)])
    labels = np.concatenate(labels)
    keep, excluded = keep_mask(ids, cfg.exclude)
    if keep is not None:
        images, labels, splits = images[keep], labels[keep], splits[keep]
        ids = [i for i, k in zip(ids, keep) if k]
    class_names = _medmnist_class_names(flag, int(labels.max()) + 1 if len(labels) else 0)
    return _dataset(cfg, images, labels, class_names, splits, flag=flag, file=str(path), ids=ids, excluded=excluded)
