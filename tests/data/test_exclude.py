"""data.exclude: images named by their ids (ARRAY.npy:ROW, a path relative to the dataset folder, a manifest's path
cell) are left out before the splits are made; an id the data does not hold is an error naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinydata import write_tiny_folder, write_tiny_npy
from xferlab.config import DataConfig
from xferlab.data.exclude import read_ids
from xferlab.data.sources import load_dataset
from xferlab.errors import XferlabError

KERMANY = Path(__file__).resolve().parents[3] / "shared" / "data" / "kermany-sample"


def _ids_file(path: Path, ids: list[str], header: bool = True) -> Path:
    path.write_text(("id,split\n" if header else "") + "".join(f"{i},test\n" if header else f"{i}\n" for i in ids))
    return path


def test_npy_exclusion_equals_data_without_those_rows(tmp_path):
    """Leaving rows out by id gives the dataset those rows were never in: the same val carve, labels and images."""
    root = write_tiny_npy(tmp_path / "tiny")
    drop = {"normal.npy": [0, 5], "test_pneumonia.npy": [3]}
    excluded = load_dataset(DataConfig(path=root, exclude=_ids_file(
        tmp_path / "ex.csv", [f"{f}:{r}" for f, rows in drop.items() for r in rows])))
    smaller = tmp_path / "smaller"
    smaller.mkdir()
    for f in root.glob("*.npy"):
        np.save(smaller / f.name, np.delete(np.load(f), drop.get(f.name, []), axis=0))
    expected = load_dataset(DataConfig(path=smaller))
    assert np.array_equal(excluded.images, expected.images)
    assert np.array_equal(excluded.labels, expected.labels)
    assert np.array_equal(excluded.splits, expected.splits)
    assert {k: excluded.meta["excluded"][k] for k in ("file", "count")} == {"file": str(tmp_path / "ex.csv"),
                                                                             "count": 3}
    assert "normal.npy:0" not in excluded.meta["ids"] and "normal.npy:1" in excluded.meta["ids"]
    assert len(excluded.meta["ids"]) == len(excluded.labels)


def test_folder_ids_are_relative_paths(tmp_path):
    root = write_tiny_folder(tmp_path / "folder")
    full = load_dataset(DataConfig(path=root, format="folder"))
    assert full.meta["ids"][0] == "train/normal/000.png"
    drop = ["train/normal/000.png", "test/pneumonia/002.png"]
    data = load_dataset(DataConfig(path=root, format="folder", exclude=_ids_file(tmp_path / "ex.csv", drop, False)))
    assert len(data.labels) == len(full.labels) - 2
    assert not any(f.endswith(("train/normal/000.png", "test/pneumonia/002.png")) for f in data.meta["files"])


def test_csv_ids_are_the_path_cells(tmp_path):
    root = write_tiny_folder(tmp_path / "folder")
    manifest = tmp_path / "folder" / "manifest.csv"
    rows = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.png"))]
    manifest.write_text("path,label,split\n" + "".join(f"{r},{r.split('/')[1]},{r.split('/')[0]}\n" for r in rows))
    data = load_dataset(DataConfig(path=manifest, format="csv", exclude=_ids_file(tmp_path / "ex.csv", rows[:1])))
    assert data.meta["ids"] == rows[1:] and data.meta["excluded"]["count"] == 1


def test_unknown_ids_are_an_error_naming_the_file_and_them(tmp_path):
    root = write_tiny_npy(tmp_path / "tiny")
    bad = _ids_file(tmp_path / "bad.csv", ["normal.npy:0", "normal.npy:999", "other.npy:1"])
    with pytest.raises(XferlabError, match=r"bad\.csv: 2 id\(s\) not in this dataset, e\.g\. normal\.npy:999, "
                                           r"other\.npy:1"):
        load_dataset(DataConfig(path=root, exclude=bad))
    with pytest.raises(XferlabError, match="exclude file not found"):
        load_dataset(DataConfig(path=root, exclude=tmp_path / "missing.csv"))


def test_the_id_column_is_found_by_its_header(tmp_path):
    path = tmp_path / "issues.csv"
    path.write_text("split,id,score\ntest,a.npy:1,0.1\n\ntest,b.npy:2,0.2\n")
    assert read_ids(path) == ["a.npy:1", "b.npy:2"]


@pytest.mark.skipif(not KERMANY.is_dir(), reason="../shared/data/kermany-sample is absent")
def test_real_files_are_excluded_by_their_relative_path(tmp_path):
    files = sorted(p.relative_to(KERMANY).as_posix() for p in KERMANY.rglob("*.jp*g"))
    drop = [files[0], files[-1]]
    # groups given: the preset hint is logged once per process, and tests/data/test_groups.py looks for it
    data = load_dataset(DataConfig(path=KERMANY, format="folder", image_size=32, groups="kermany",
                                   exclude=_ids_file(tmp_path / "ex.csv", drop)))
    assert len(data.labels) == len(data.groups) == len(files) - 2 and not set(drop) & set(data.meta["ids"])


def test_a_study_with_unknown_ids_writes_nothing(tmp_path, capsys):
    import yaml

    from xferlab.cli import main

    root = write_tiny_npy(tmp_path / "tiny")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"data": {"path": str(root)}, "backbones": ["resnet18"], "regimes": ["frozen"],
                                     "train": {"weights": "none", "epochs": 1}}))
    bad = _ids_file(tmp_path / "bad.csv", ["normal.npy:999"])
    assert main(["study", str(study), "--exclude", str(bad), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "bad.csv: 1 id(s) not in this dataset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_source_that_names_no_images_cannot_exclude(tmp_path, monkeypatch):
    from xferlab.data import sources

    root = write_tiny_npy(tmp_path / "tiny")
    plain = sources.SOURCES["npy"]
    monkeypatch.setitem(sources.SOURCES, "npy", lambda cfg: plain(cfg.model_copy(update={"exclude": None})))
    with pytest.raises(XferlabError, match="the 'npy' source gives its images no ids"):
        load_dataset(DataConfig(path=root, exclude=_ids_file(tmp_path / "ex.csv", ["normal.npy:0"])))
