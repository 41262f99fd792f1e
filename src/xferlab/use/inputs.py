"""What `xferlab predict` reads: image files (DICOM included), folders (recursive), CSV manifests and .npy stacks,
as one ordered list of items, decoded batch by batch.

A label is known when a manifest has a `label` column, when a file's folder is named after one of the run's classes
(the folder layout), or when an .npy stack is named `<class>.npy` / `test_<class>.npy` (the npy layout).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xferlab.data.hospital import is_dicom
from xferlab.data.images import channels_first, describe_files, read_image_file, to_uint8
from xferlab.data.sources import IMAGE_EXTENSIONS, NPY_TEST_PREFIX
from xferlab.errors import XferlabError, did_you_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputItem:
    """One image to predict: a file, or one image of an .npy stack (index)."""

    path: Path
    index: int | None = None
    label: int | None = None  # index into the run's class names, when known


def _class_of(name: str, class_names: Sequence[str]) -> int | None:
    return class_names.index(name) if name in class_names else None


def _npy_items(path: Path, class_names: Sequence[str]) -> list[InputItem]:
    stack = _open_npy(path)
    label = _class_of(path.stem.removeprefix(NPY_TEST_PREFIX), class_names)
    return [InputItem(path, i, label) for i in range(len(stack))]


def _open_npy(path: Path) -> np.ndarray:
    try:
        stack = np.load(path, mmap_mode="r", allow_pickle=False)  # memory-mapped: read batch by batch
    except (OSError, ValueError, EOFError) as err:
        raise XferlabError(f"{path}: cannot read .npy ({err}); re-save it with numpy.save") from None
    if stack.ndim not in (3, 4):
        raise XferlabError(f"{path}: array of shape {stack.shape} is not an image stack; "
                           "save N×H×W, N×H×W×C or N×C×H×W (C = 1 or 3)")
    return stack


def _folder_items(folder: Path, class_names: Sequence[str]) -> list[InputItem]:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")
                   and (f.suffix.lower() in IMAGE_EXTENSIONS or f.suffix.lower() == ".npy" or (
                       not f.suffix and is_dicom(f))))
    items = []
    for f in files:
        if f.suffix.lower() == ".npy":
            items += _npy_items(f, class_names)
        else:
            items.append(InputItem(f, None, _class_of(f.parent.name, class_names) if f.parent != folder else None))
    if not items:
        raise XferlabError(f"{folder}: no image files found (suffixes {', '.join(sorted(IMAGE_EXTENSIONS))}, .npy); "
                           "check the folder")
    return items


def _manifest_items(manifest: Path, class_names: Sequence[str]) -> list[InputItem]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            rows = [(reader.line_num, {k.strip().lower(): (v or "").strip() for k, v in row.items() if k})
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise XferlabError(f"{manifest}: cannot read manifest ({err}); save it as UTF-8 CSV") from None
    if "path" not in header:
        raise XferlabError(f"{manifest}: no 'path' column (found {header}){did_you_mean('path', header)}; "
                           "write a header line 'path[,label]'")
    items = []
    for line, row in rows:
        if not row.get("path"):
            raise XferlabError(f"{manifest}, line {line}: empty 'path'; fill it in or remove the row")
        path = Path(row["path"])
        path = path if path.is_absolute() else manifest.parent / path
        label = row.get("label") or None
        if label is not None and label not in class_names:
            raise XferlabError(f"{manifest}, line {line}: label '{label}' is not a class of this run "
                               f"({', '.join(class_names)}){did_you_mean(label, class_names)}")
        items.append(InputItem(path, None, _class_of(label, class_names) if label else None))
    if not items:
        raise XferlabError(f"{manifest}: the manifest lists no images; one path per line under the header")
    return items


def collect_inputs(inputs: Sequence[str | Path], class_names: Sequence[str]) -> list[InputItem]:
    """Every item of every INPUT, in the order given (folders: sorted, recursive)."""
    items: list[InputItem] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            items += _folder_items(path, class_names)
        elif not path.exists():
            raise XferlabError(f"{path}: no such file or folder; check the INPUT path")
        elif path.suffix.lower() == ".csv":
            items += _manifest_items(path, class_names)
        elif path.suffix.lower() == ".npy":
            items += _npy_items(path, class_names)
        else:
            items.append(InputItem(path, None, _class_of(path.parent.name, class_names)))
    return items


class Decoder:
    """Decodes items batch by batch: files with read_image_file (unreadable ones skipped and listed, or an error
    naming them; JPEGs far larger than `size`, the side they will be resized to, decode at a reduced scale), .npy
    stacks from a memory map kept open per file."""

    def __init__(self, skip_unreadable: bool, size: tuple[int, int] | None = None):
        self.skip_unreadable = skip_unreadable
        self.size = size
        self.skipped: list[InputItem] = []
        self._stacks: dict[Path, np.ndarray] = {}

    def _read(self, item: InputItem) -> np.ndarray:
        if item.index is None:
            return read_image_file(item.path, self.size)
        if item.path not in self._stacks:
            self._stacks[item.path] = _open_npy(item.path)
        stack = self._stacks[item.path]
        where = f"{item.path}[{item.index}]"
        return to_uint8(channels_first(np.asarray(stack[item.index])[None], where)[0], where)

    def batches(self, items: Sequence[InputItem], batch_size: int
                ) -> Iterator[tuple[list[InputItem], list[np.ndarray]]]:
        """(items kept, their uint8 images) per batch of up to batch_size items."""
        for start in range(0, len(items), batch_size):
            kept, images = [], []
            for item in items[start:start + batch_size]:
                try:
                    images.append(self._read(item))
                except XferlabError as err:
                    if not self.skip_unreadable:
                        raise XferlabError(f"{err} (or pass --skip-unreadable to skip unreadable files)") from None
                    self.skipped.append(item)
                    continue
                kept.append(item)
            if kept:
                yield kept, images

    def report_skipped(self) -> None:
        if self.skipped:
            log.warning("skipped %d unreadable file(s): %s", len(self.skipped),
                        describe_files([str(i.path) for i in self.skipped]))
