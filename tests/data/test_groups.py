"""Patient ids from where real data keeps them (xferlab.data.groups): presets and patterns on file paths, DICOM
PatientID, the npy sidecar, the hint that names --groups, unmatched files, and the sources that use them."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hospitalfiles import write_dicom
from tinydata import write_tiny_npy
from xferlab.config import DataConfig
from xferlab.data import groups as g
from xferlab.data.sources import load_dataset
from xferlab.errors import XferlabError

KERMANY_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kermany-sample"


@pytest.mark.parametrize("preset, path, patient", [
    ("kermany", "train/PNEUMONIA/person23_bacteria_84.jpeg", "person23"),
    ("kermany", "train/PNEUMONIA/person1004_virus_1686.jpeg", "person1004"),
    ("kermany", "train/NORMAL/IM-0117-0001.jpeg", "IM-0117"),
    ("kermany", "train/NORMAL/IM-0505-0001-0002.jpeg", "IM-0505"),
    ("kermany", "test/NORMAL/NORMAL2-IM-0927-0001.jpeg", "NORMAL2-IM-0927"),
    ("nih", "images/00000001_000.png", "00000001"),
    ("chexpert", "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "patient00001"),
])
def test_presets_take_the_patient_from_the_public_datasets_names(preset, path, patient):
    assert g._match(re.compile(g.PRESETS[preset]), path) == patient


def test_a_setting_is_a_preset_or_a_pattern_with_a_capture_group():
    assert g.check_setting("kermany") == "kermany" and g.check_setting(r"^(\w+)-") == r"^(\w+)-"
    with pytest.raises(ValueError, match="no capture group.*put the patient id in parentheses"):
        g.check_setting("kermani")
    with pytest.raises(ValueError, match="did you mean 'kermany'"):
        g.check_setting("kermani")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        g.check_setting("(unclosed")
    with pytest.raises(XferlabError, match="'groups' = 'x_y' is invalid: not a preset"):
        from xferlab.config import build

        build(DataConfig, {"path": "x", "groups": "x_y"})


def test_patients_in_order_of_first_appearance_with_majority_labels():
    p = g.patients_of(np.array(["b", "a", "b", "c", "a", "b"]), np.array([1, 0, 1, 0, 1, 0]))
    assert p.names.tolist() == ["b", "a", "c"] and p.index.tolist() == [0, 1, 0, 2, 1, 0]
    assert p.label.tolist() == [1, 0, 0] and p.images.tolist() == [3, 2, 1]  # a: one each, the tie goes to 0
    counts = g.patient_counts(np.array(["a", "a", "b", "c", "c", "c"]), np.array(["train"] * 3 + ["test"] * 3),
                              ("train", "val", "test"))
    assert counts == {"train": {"patients": 2, "images": 3, "median": 1.5, "max": 2, "share_multi": 0.5},
                      "test": {"patients": 1, "images": 3, "median": 3.0, "max": 3, "share_multi": 1.0}}


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _named_folder(root: Path, extra: tuple[str, ...] = ()) -> Path:
    """train/ with 6 patients per class (2 images each, Kermany-style names) and test/ with 2 more per class."""
    for split, patients in (("train", range(6)), ("test", range(6, 8))):
        for p in patients:
            for k in range(2):
                _png(root / split / "NORMAL" / f"IM-{p:04d}-{k + 1:04d}.png", 10 * p + k)
                _png(root / split / "PNEUMONIA" / f"person{p}_bacteria_{k}.png", 100 + 10 * p + k)
    for name in extra:
        _png(root / name)
    return root


def test_folder_groups_from_a_preset_carve_val_by_patient_and_are_named_in_meta(tmp_path):
    data = load_dataset(DataConfig(path=_named_folder(tmp_path / "d"), format="folder", groups="kermany"))
    assert data.meta["groups_from"] == "kermany" and len(np.unique(data.groups)) == 16
    assert not set(data.groups[data.splits == "val"]) & set(data.groups[data.splits == "train"])
    assert set(data.groups[data.splits == "val"]) == {"IM-0005", "person5"}  # the last patient of each class
    assert data.groups[data.splits == "test"].tolist().count("person7") == 2


def test_without_groups_the_hint_names_the_option_once(tmp_path, caplog):
    root = _named_folder(tmp_path / "d")
    with caplog.at_level(logging.WARNING, logger="xferlab.data.groups"):
        for _ in range(2):
            data = load_dataset(DataConfig(path=root, format="folder"))
    hints = [r.getMessage() for r in caplog.records if "--groups kermany" in r.getMessage()]
    assert len(hints) == 1 and "look like kermany patient ids" in hints[0] and data.groups is None


def test_unmatched_files_are_an_error_naming_them_or_each_a_patient_of_its_own(tmp_path, caplog):
    root = _named_folder(tmp_path / "d", extra=("train/NORMAL/scan_a.png", "train/NORMAL/scan_b.png"))
    with pytest.raises(XferlabError, match=r"2 of 34 files have no patient id from the kermany preset "
                                           r"\(train/NORMAL/scan_a.png, train/NORMAL/scan_b.png\).*--unmatched "
                                           "own-group"):
        load_dataset(DataConfig(path=root, format="folder", groups="kermany"))
    with caplog.at_level(logging.WARNING, logger="xferlab.data.groups"):
        data = load_dataset(DataConfig(path=root, format="folder", groups="kermany", unmatched="own-group"))
    assert "each is a patient of its own" in caplog.text
    assert {"file:train/NORMAL/scan_a.png", "file:train/NORMAL/scan_b.png"} <= set(data.groups)
    assert len(np.unique(data.groups)) == 18


def test_a_pattern_matches_the_path_relative_to_the_dataset_folder(tmp_path):
    data = load_dataset(DataConfig(path=_named_folder(tmp_path / "d"), format="folder",
                                   groups=r"^(\w+/\w+/(?:IM-|person)\d+)"))
    assert len(np.unique(data.groups)) == 16 and "train/NORMAL/IM-0000" in data.groups  # <split>/<class>/<file>


def test_csv_keeps_its_group_column_unless_groups_says_otherwise(tmp_path):
    root = _named_folder(tmp_path / "d")
    files = sorted((root / "train").rglob("*.png"))
    manifest = tmp_path / "d" / "m.csv"
    manifest.write_text("path,label,group\n" + "".join(
        f"{f.relative_to(root).as_posix()},{f.parent.name},col{i % 5}\n" for i, f in enumerate(files)))
    assert load_dataset(DataConfig(path=manifest, format="csv")).meta["groups_from"] == "group column"
    data = load_dataset(DataConfig(path=manifest, format="csv", groups="kermany"))
    assert data.meta["groups_from"] == "kermany" and len(np.unique(data.groups)) == 12
    assert not set(data.groups[data.splits == "test"]) & set(data.groups[data.splits != "test"])
    assert load_dataset(DataConfig(path=manifest, format="csv", groups="none")).groups is None


def test_npy_sidecar_names_the_patients_of_every_array_row(tmp_path):
    root = write_tiny_npy(tmp_path / "t", n=20, n_test=8)
    rows = {"normal.npy": [f"n{i // 2}" for i in range(20)], "pneumonia": [f"p{i // 4}" for i in range(20)],
            "test_normal.npy": [f"tn{i}" for i in range(8)], "test_pneumonia.npy": [f"tp{i}" for i in range(8)]}
    g.write_sidecar(root, rows)
    data = load_dataset(DataConfig(path=root))
    assert data.meta["groups_from"] == g.SIDECAR and len(np.unique(data.groups)) == 10 + 5 + 16
    assert set(data.groups[data.splits == "val"]) == {"n8", "n9", "p4"}  # the last fifth of each class's patients
    assert load_dataset(DataConfig(path=root, groups="none")).groups is None
    with pytest.raises(XferlabError, match="npy layout has no file names to match.*groups.csv"):
        load_dataset(DataConfig(path=root, groups="kermany"))


@pytest.mark.parametrize("lines, message", [
    (["normal,0,a", "normal,0,b"], "line 3: normal.npy row 0 is listed twice"),
    (["normals,0,a"], "line 2: array 'normals' is not one of the .npy files.*did you mean 'normal'"),
    (["normal,20,a"], r"line 2: row 20 is outside normal.npy's 0..19"),
    (["normal,x,a"], "line 2: row 'x' is not a whole number"),
    (["normal,0,a"], r"groups.csv: 55 of 56 files have no patient id from groups.csv \(normal.npy row 1"),
])
def test_a_bad_sidecar_is_an_error_naming_its_line(tmp_path, lines, message):
    root = write_tiny_npy(tmp_path / "t", n=20, n_test=8)
    (root / g.SIDECAR).write_text("array,row,group\n" + "\n".join(lines) + "\n")
    with pytest.raises(XferlabError, match=message):
        load_dataset(DataConfig(path=root))


def _dicom_folder(root: Path, ids: list[str | None]) -> Path:
    for i, patient in enumerate(ids):
        for name, split in (("normal", "train"), ("pneumonia", "train")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            own = patient and patient + ("" if len(set(ids)) == 1 else f"-{name}")  # one class per patient
            write_dicom(folder / f"{i}.dcm", np.full((8, 8), 100 * i, np.uint16), 12, patient_id=own)
    return root


def test_dicom_patient_id_is_the_default_for_dicom_files(tmp_path):
    data = load_dataset(DataConfig(path=_dicom_folder(tmp_path / "d", ["A", "A", "B", "C", "D"]), format="folder"))
    assert data.meta["groups_from"] == "dicom" and len(np.unique(data.groups)) == 8
    assert (data.groups == "A-normal").sum() == 2 and (data.groups == "A-pneumonia").sum() == 2
    assert not set(data.groups[data.splits == "val"]) & set(data.groups[data.splits == "train"])


@pytest.mark.parametrize("ids", [["ANON"] * 4, [""] * 4], ids=["constant", "empty"])
def test_an_anonymised_patient_id_is_a_warning_and_no_groups(tmp_path, caplog, ids):
    with caplog.at_level(logging.WARNING, logger="xferlab.data.groups"):
        data = load_dataset(DataConfig(path=_dicom_folder(tmp_path / "d", ids), format="folder"))
    assert data.groups is None and "tells no patients apart" in caplog.text


@pytest.mark.skipif(not KERMANY_SAMPLE.is_dir(), reason="../shared/data/kermany-sample is not here (a lone clone)")
def test_every_file_of_the_kermany_sample_has_its_patient(caplog):
    """Headers only (memory_budget_mb 0 streams): 100 NORMAL images of 94 patients, 200 PNEUMONIA of 162 (the
    sample's own README)."""
    with caplog.at_level(logging.WARNING, logger="xferlab.data.groups"):
        plain = load_dataset(DataConfig(path=KERMANY_SAMPLE, format="folder", memory_budget_mb=0, image_size=64))
    assert plain.groups is None and "pass --groups kermany" in caplog.text
    data = load_dataset(DataConfig(path=KERMANY_SAMPLE, format="folder", memory_budget_mb=0, image_size=64,
                                   groups="kermany"))
    for c, (images, patients) in enumerate(((100, 94), (200, 162))):
        assert (data.labels == c).sum() == images and len(np.unique(data.groups[data.labels == c])) == patients
    assert not set(data.groups[data.splits == "val"]) & set(data.groups[data.splits == "train"])
