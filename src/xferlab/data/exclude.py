"""data.exclude (`--exclude FILE`): images left out before the splits are made, named by their image ids.

An image's id is what the audit's label_issues.csv writes in its `id` column: the path relative to the dataset folder
for folder data, the manifest's path cell as written for csv data, `ARRAY.npy:ROW` for npy data (ROW 0-based within
that file) and `SPLIT_images:ROW` for a MedMNIST file. The sources give every image its id (`meta['ids']`) and drop
the excluded ones before carving val or drawing splits; an id the dataset does not hold is an error, so a file meant
for other data is not silently ignored."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xferlab.errors import XferlabError

ID_COLUMN = "id"
SHOWN = 3  # unknown ids named in the error


def npy_ids(file_name: str, rows: int) -> list[str]:
    return [f"{file_name}:{r}" for r in range(rows)]


def read_ids(path: Path) -> list[str]:
    """The ids of an exclude file: the `id` column of a CSV with a header naming it, else the first column of every
    row (a plain list, one id a line). Blank cells are skipped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise XferlabError(f"{path}: cannot read the exclude file ({err}); give a CSV with an 'id' column, as the "
                           "audit's label_issues.csv has (data.exclude, --exclude)") from None
    column = 0
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if ID_COLUMN in header:
        column, rows = header.index(ID_COLUMN), rows[1:]
    return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]


def keep_mask(ids: Sequence[str], exclude: Path | None) -> tuple[np.ndarray | None, dict | None]:
    """(which images to keep, the record for the dataset's meta) for data.exclude; (None, None) without it.
    Raises XferlabError naming the file and the first ids the dataset does not hold."""
    if exclude is None:
        return None, None
    path = Path(exclude)
    if not path.is_file():
        raise XferlabError(f"{path}: exclude file not found; give the audit's label_issues.csv or a CSV with an 'id' "
                           "column (data.exclude, --exclude)")
    wanted = read_ids(path)
    unknown = sorted(set(wanted) - set(ids))
    if unknown:
        example = ids[0] if len(ids) else "none"
        raise XferlabError(f"{path}: {len(unknown)} id(s) not in this dataset, e.g. {', '.join(unknown[:SHOWN])}; ids "
                           f"are written as the audit writes them (this dataset's first: {example}); audit the same "
                           "data or fix the file")
    dropped = set(wanted)
    keep = np.fromiter((i not in dropped for i in ids), dtype=bool, count=len(ids))
    return keep, {"file": str(path), "count": int((~keep).sum()), "sha256": file_digest(path)}


def file_digest(path: Path) -> str:
    """The exclude file's content digest: a run records it, so a resumed study notices a file edited since."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:  # hashlib.file_digest needs Python 3.11; xferlab supports 3.10
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
