"""Patient ids (groups) from where real data keeps them: a named preset or a regular expression on each file's path
relative to the dataset folder, the DICOM header's PatientID, the npy layout's `groups.csv` sidecar. The sources call
`file_groups` / `sidecar_groups`; splits, the bootstrap and the audit ask `patients_of` and `patient_counts`.

`data.groups` (CLI `--groups`) takes:
- a preset: `kermany` (`person23_bacteria_84.jpeg` -> person23, `IM-0117-0001.jpeg` -> IM-0117,
  `NORMAL2-IM-0927-0001.jpeg` -> NORMAL2-IM-0927), `nih` (`00000001_000.png` -> 00000001), `chexpert`
  (`patient00001/study1/view1_frontal.jpg` -> patient00001);
- `dicom`: the PatientID of each DICOM header (the default when every file is DICOM);
- `none`: every image its own patient (ignores a csv group column, an npy sidecar and PatientIDs);
- any other text: a regular expression searched in the path relative to the dataset folder (folder layout) or in the
  manifest's path cell (csv), whose first capture group is the patient.
Unset, the csv layout keeps its `group` column and the npy layout reads `groups.csv` when present.

Files the pattern does not match are an error naming a few, or with `data.unmatched: own-group` each its own patient
(with a warning). A PatientID that is empty or the same for every file (what anonymisation leaves) is a warning and
no groups, not one giant patient.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xferlab.data.hospital import _pydicom, is_dicom
from xferlab.data.images import check_regular_file, describe_files
from xferlab.errors import XferlabError, did_you_mean

log = logging.getLogger(__name__)

# Each preset is the public dataset's own naming convention, matched at the end of the path.
PRESETS: dict[str, str] = {
    # Kermany et al. 2018 (Mendeley doi:10.17632/rscbjbr9sj.2): IM-0117-0001.jpeg, IM-0505-0001-0002.jpeg,
    # NORMAL2-IM-0927-0001.jpeg (the NORMAL2 series is numbered on its own: the prefix is part of the id),
    # person23_bacteria_84.jpeg, person1004_virus_1686.jpeg
    "kermany": r"(?:^|/)((?:NORMAL2-)?IM-\d+|person\d+)[-_][^/]*$",
    # NIH ChestX-ray14 (Wang et al. 2017): <8-digit patient>_<3-digit follow-up>.png
    "nih": r"(?:^|/)(\d{8})_\d{3}\.[^/.]+$",
    # CheXpert (Irvin et al. 2019): .../patient00001/study1/view1_frontal.jpg
    "chexpert": r"(?:^|/)(patient\d+)/study\d+/[^/]+$",
}
DICOM = "dicom"  # the PatientID of each DICOM header
NONE = "none"  # every image its own patient
EXAMPLES = {
    "kermany": "person23_bacteria_84.jpeg -> person23, IM-0117-0001.jpeg -> IM-0117",
    "nih": "00000001_000.png -> 00000001",
    "chexpert": "patient00001/study1/view1_frontal.jpg -> patient00001",
}
CHOICES = (*PRESETS, DICOM, NONE)
UNMATCHED = ("error", "own-group")

# The npy layout's sidecar beside the arrays: columns array (the .npy file's name, with or without .npy), row (0-based
# row in that array) and group.
SIDECAR = "groups.csv"
SIDECAR_COLUMNS = ("array", "row", "group")

# The hint that names a preset: file names look like that dataset when at least this share of them match it (a few
# stray files, a README.png, should not hide it).
HINT_SHARE = 0.9
# DICOM headers are read only up to PatientID (specific_tags); values larger than this are not read into memory
# (pydicom's defer_size), so a header stuffed with large private elements costs a seek, not its size.
DICOM_DEFER_BYTES = 4096
# PatientID is VR LO: at most 64 characters (DICOM PS3.5 6.2); anything longer is not a patient id.
MAX_PATIENT_ID = 64
_hinted: set[tuple[str, str]] = set()  # (dataset, preset): the hint is logged once per process


def check_setting(value: str) -> str:
    """A data.groups value: a preset, dicom, none, or a regular expression with at least one capture group."""
    if value in CHOICES:
        return value
    try:
        pattern = re.compile(value)
    except re.error as err:
        raise ValueError(f"not a preset ({', '.join(CHOICES)}) and not a valid regular expression ({err})"
                         f"{did_you_mean(value, CHOICES)}") from None
    if pattern.groups < 1:
        raise ValueError(f"not a preset ({', '.join(CHOICES)}){did_you_mean(value, CHOICES)}, and as a regular "
                         "expression it has no capture group; put the patient id in parentheses, e.g. "
                         r"'^(\w+)_\d+\.png$'")
    return value


def _pattern(setting: str) -> re.Pattern:
    return re.compile(PRESETS.get(setting, setting))


def _described(setting: str) -> str:
    return f"the {setting} preset" if setting in PRESETS else f"the pattern {setting!r}"


# ---- the sources' entry points --------------------------------------------------------------------------------------


def file_groups(names: Sequence[str], files: Sequence[Path], setting: str | None, unmatched: str,
                where: str) -> tuple[np.ndarray | None, str | None]:
    """Patient ids of image files, and where they came from (the setting, or None without groups).

    `names` are what a pattern is matched against (paths relative to the dataset folder, or the manifest's path
    cells), `files` the files themselves (for DICOM headers). `setting` None: DICOM PatientIDs when every file is
    DICOM, else no groups (with a one-time hint when the names look like a preset's).
    """
    if setting == NONE or not names:
        return None, None
    if setting is None:
        if all(is_dicom(f) for f in files):
            return _dicom_groups(files, names, unmatched, where), DICOM
        hint_preset(names, where)
        return None, None
    if setting == DICOM:
        return _dicom_groups(files, names, unmatched, where), DICOM
    pattern = _pattern(setting)
    ids = [_match(pattern, name) for name in names]
    return _fill_unmatched(ids, names, unmatched, where, _described(setting)), setting


def from_names(setting: str | None) -> bool:
    """Whether the setting reads patients from the names alone (a preset or a pattern): then they can be matched
    before any pixel is decoded, so a pattern that fails does so at once."""
    return setting not in (None, NONE, DICOM)


def _match(pattern: re.Pattern, name: str) -> str:
    found = pattern.search(name)
    return (found.group(1) or "") if found else ""


def _fill_unmatched(ids: list[str], names: Sequence[str], unmatched: str, where: str, what: str) -> np.ndarray:
    """ids with the empty ones refused (an error naming a few) or, with unmatched 'own-group', each its own patient."""
    missing = [i for i, g in enumerate(ids) if not g]
    if missing:
        examples = describe_files([names[i] for i in missing])
        if unmatched != "own-group":
            raise XferlabError(
                f"{where}: {len(missing)} of {len(ids)} files have no patient id from {what} ({examples}); fix "
                "data.groups (--groups), or set data.unmatched: own-group (--unmatched own-group) to make each "
                "of them a patient of its own")
        log.warning("%s: %d of %d files have no patient id from %s (%s); each is a patient of its own "
                    "(data.unmatched: own-group)", where, len(missing), len(ids), what, examples)
        for i in missing:
            ids[i] = f"file:{names[i]}"  # a path, so it cannot collide with another file's own group
    return np.asarray(ids, dtype=str)


def hint_preset(names: Sequence[str], where: str) -> str | None:
    """The preset the names look like (HINT_SHARE of them match), said once per dataset as a warning; or None."""
    for preset, text in PRESETS.items():
        pattern = re.compile(text)
        if sum(bool(_match(pattern, n)) for n in names) >= HINT_SHARE * len(names):
            if (where, preset) not in _hinted:
                _hinted.add((where, preset))
                log.warning("%s: the file names look like %s patient ids (%s), but no groups were given, so every "
                            "image counts as its own patient; pass --groups %s (data.groups: %s) to keep each "
                            "patient in one split", where, preset, EXAMPLES[preset], preset, preset)
            return preset
    return None


# ---- DICOM ----------------------------------------------------------------------------------------------------------


def patient_id(path: str | os.PathLike) -> str:
    """The PatientID of one DICOM file ('' when absent or not a patient id), read from its header alone."""
    pydicom = _pydicom()  # imported on first use: only DICOM data pays for it
    check_regular_file(path)  # a FIFO would block the read
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"], defer_size=DICOM_DEFER_BYTES)
    except Exception as err:  # noqa: BLE001 - InvalidDicomError, EOFError, struct.error, ... on damaged files
        raise XferlabError(f"{path}: cannot read the DICOM header ({type(err).__name__}: {err}); replace or remove "
                           "the file, or pass --groups none") from None
    value = str(ds.get("PatientID", "") or "").strip()
    return value if len(value) <= MAX_PATIENT_ID else ""


def _dicom_groups(files: Sequence[Path], names: Sequence[str], unmatched: str, where: str) -> np.ndarray | None:
    """PatientIDs; None (with a warning) when they are all empty or all one value, as anonymisation leaves them."""
    ids = [patient_id(f) if is_dicom(f) else "" for f in files]
    present = {g for g in ids if g}
    if len(ids) > 1 and len(present) <= 1:
        seen = f"'{next(iter(present))}' wherever it is set" if present else "empty in every file"
        log.warning("%s: the DICOM PatientID is %s (anonymised?), so it tells no patients apart: no patient groups; "
                    "pass --groups PATTERN if the file names carry patient ids", where, seen)
        return None
    return _fill_unmatched(ids, names, unmatched, where, "the DICOM PatientID")


# ---- npy sidecar ----------------------------------------------------------------------------------------------------


def sidecar_groups(root: Path, arrays: Sequence[tuple[str, int]], setting: str | None,
                   unmatched: str) -> tuple[np.ndarray | None, str | None]:
    """Patient ids of the npy layout's rows from `root/groups.csv` (None without the file or with data.groups none).

    `arrays`: (file name, rows) of every .npy file in dataset order.
    """
    if setting == NONE:
        return None, None
    if setting is not None:
        raise XferlabError(f"data.groups {setting!r}: the npy layout has no file names to match; its patient ids come "
                           f"from {SIDECAR} beside the arrays (columns {', '.join(SIDECAR_COLUMNS)}); leave "
                           "data.groups unset, or set it to none")
    path = Path(root) / SIDECAR
    if not path.is_file():
        return None, None
    ids = {Path(name).stem: [""] * n for name, n in arrays}
    for line, array, row, group in _sidecar_rows(path):
        stem = array.removesuffix(".npy")
        if stem not in ids:
            raise XferlabError(f"{path}, line {line}: array '{array}' is not one of the .npy files "
                               f"{sorted(ids)}{did_you_mean(stem, ids)}; name the file the row belongs to")
        if not 0 <= row < len(ids[stem]):
            raise XferlabError(f"{path}, line {line}: row {row} is outside {stem}.npy's 0..{len(ids[stem]) - 1}")
        if ids[stem][row]:
            raise XferlabError(f"{path}, line {line}: {stem}.npy row {row} is listed twice; give each row once")
        ids[stem][row] = group
    names = [f"{Path(name).stem}.npy row {r}" for name, n in arrays for r in range(n)]
    flat = [g for name, _ in arrays for g in ids[Path(name).stem]]
    return _fill_unmatched(flat, names, unmatched, str(path), f"{SIDECAR}"), SIDECAR


def _sidecar_rows(path: Path):
    """(line, array, row, group) of every non-empty line of groups.csv; errors name the file and line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            missing = [c for c in SIDECAR_COLUMNS if c not in header]
            if missing:
                raise XferlabError(f"{path}: missing column(s) {missing} (found {header}); the header must be "
                                   f"{','.join(SIDECAR_COLUMNS)}")
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                cells = dict(zip(header, (c.strip() for c in row)))
                line = reader.line_num
                try:
                    index = int(cells.get("row", ""))
                except ValueError:
                    raise XferlabError(f"{path}, line {line}: row {cells.get('row')!r} is not a whole number (the "
                                       "0-based row of the array)") from None
                if not cells.get("array") or not cells.get("group"):
                    raise XferlabError(f"{path}, line {line}: empty array or group; fill it in or remove the line")
                yield line, cells["array"], index, cells["group"]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise XferlabError(f"{path}: cannot read ({err}); save it as UTF-8 CSV with columns "
                           f"{','.join(SIDECAR_COLUMNS)}") from None


def write_sidecar(root: Path, groups: dict[str, Sequence[str]]) -> Path:
    """Write `root/groups.csv` from {array file name: group of each row} (atomically)."""
    from xferlab import files

    lines = [",".join(SIDECAR_COLUMNS)] + [f"{array},{row},{group}" for array, ids in groups.items()
                                           for row, group in enumerate(ids)]
    files.write_text(Path(root) / SIDECAR, "\n".join(lines) + "\n")
    return Path(root) / SIDECAR


# ---- patients -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patients:
    """The patients of N images: `index` (N,) each image's patient, numbered in order of first appearance;
    `names` (P,) their ids; `label` (P,) each patient's majority label (ties: the lowest label); `images` (P,)."""

    index: np.ndarray
    names: np.ndarray
    label: np.ndarray
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def patients_of(groups: np.ndarray, labels: np.ndarray) -> Patients:
    """Patients in order of first appearance, with their majority labels."""
    groups, labels = np.asarray(groups).astype(str), np.asarray(labels, dtype=np.int64)
    names, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    index = rank[inverse.reshape(-1)]
    votes = np.zeros((len(order), int(labels.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(votes, (index, labels), 1)
    return Patients(index, names[order], votes.argmax(1), votes.sum(1))


def patient_counts(groups: np.ndarray, splits: np.ndarray, split_names: Sequence[str]) -> dict[str, dict]:
    """Per split present: patients, images, and images per patient (median, max, share of patients with more
    than one). A patient with images in two splits counts in each."""
    out = {}
    for split in split_names:
        members = np.asarray(groups)[np.asarray(splits) == split]
        if not len(members):
            continue
        per_patient = np.unique(members, return_counts=True)[1]
        out[split] = {"patients": int(len(per_patient)), "images": int(len(members)),
                      "median": float(np.median(per_patient)), "max": int(per_patient.max()),
                      "share_multi": float(np.mean(per_patient > 1))}
    return out
