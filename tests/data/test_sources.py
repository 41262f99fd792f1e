"""Every data source on tiny generated files (xferlab.data.sources)."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xferlab.config import DataConfig
from xferlab.data import ImageDataset, load_dataset
from xferlab.data.sources import SOURCES, register_source
from xferlab.errors import XferlabError


def _gray(n: int, size: int = 8, value: int = 0, seed: int = 0) -> np.ndarray:
    """n constant images of `value`, or random ones when value < 0."""
    if value < 0:
        return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)
    return np.full((n, size, size), value, np.uint8)


def _save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _npy_folder(root: Path, train: dict[str, np.ndarray], test: dict[str, np.ndarray] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, array in train.items():
        np.save(root / f"{name}.npy", array)
    for name, array in (test or {}).items():
        np.save(root / f"test_{name}.npy", array)
    return root


def _image_folder(root: Path, counts: dict[str, dict[str, int]], size: int = 8) -> Path:
    """root/<split>/<class>/<i>.png with pixel value = i (so file order is visible in the pixels)."""
    for split, per_class in counts.items():
        for name, k in per_class.items():
            for i in range(k):
                _save_png(root / split / name / f"{i:03d}.png", np.full((size, size), i, np.uint8))
    return root


def _manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _medmnist_npz(path: Path, shape=(8, 8), labels_shape=(1,)) -> Path:
    arrays = {}
    for split, n in (("train", 10), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = np.random.default_rng(n).integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n * int(np.prod(labels_shape))) % 2).reshape(n, *labels_shape)
    np.savez(path, **arrays)
    return path


# ---- registry --------------------------------------------------------------------------------------------------


def test_every_format_of_the_config_is_registered():
    assert set(SOURCES) >= {"npy", "folder", "csv", "medmnist"}


def test_unknown_format_suggests_the_closest(tmp_path):
    from xferlab.config import build

    with pytest.raises(XferlabError, match="'format' = 'foldr' is invalid: unknown data format.*did you mean 'folder'"):
        build(DataConfig, {"path": str(tmp_path), "format": "foldr"})


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_source("npy")(lambda cfg: None)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(XferlabError, match="data path does not exist"):
        load_dataset(DataConfig(path=tmp_path / "nope", format="npy"))


# ---- npy -----------------------------------------------------------------------------------------------------------


def test_npy_loads_classes_test_split_and_ordered_val(tmp_path):
    root = _npy_folder(
        tmp_path / "d",
        {"normal": _gray(10, value=-1), "pneumonia": _gray(5, value=-1, seed=1)},
        {"normal": _gray(3), "pneumonia": _gray(2)},
    )
    ds = load_dataset(DataConfig(path=root, format="npy"))
    assert ds.class_names == ["normal", "pneumonia"]
    assert ds.images.shape == (20, 8, 8) and ds.images.dtype == np.uint8
    assert ds.counts() == {"train": [8, 4], "val": [2, 1], "test": [3, 2]}
    # ordered: the last 20 % of each class in file order
    assert ds.splits[:10].tolist() == ["train"] * 8 + ["val"] * 2
    np.testing.assert_array_equal(ds.images[:10], np.load(root / "normal.npy"))
    assert ds.source == str(root) and ds.meta["format"] == "npy"


def test_npy_random_val_is_seeded_and_stratified(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(20), "b": _gray(10)})
    cfg = DataConfig(path=root, format="npy", val_split="random", seed=1)
    first, again = load_dataset(cfg), load_dataset(cfg)
    np.testing.assert_array_equal(first.splits, again.splits)
    assert first.counts()["val"] == [4, 2]
    assert first.splits[:20].tolist() != ["train"] * 16 + ["val"] * 4


def test_npy_channel_last_rgb_becomes_channel_first(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    root = _npy_folder(tmp_path / "d", {"a": rgb, "b": rgb})
    ds = load_dataset(DataConfig(path=root, format="npy"))
    assert ds.images.shape == (10, 3, 8, 6)
    np.testing.assert_array_equal(ds.images[0], rgb[0].transpose(2, 0, 1))


def test_npy_float_unit_range_is_scaled(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": np.ones((5, 8, 8), np.float32), "b": np.zeros((5, 8, 8), np.float32)})
    ds = load_dataset(DataConfig(path=root, format="npy"))
    assert ds.images.dtype == np.uint8 and ds.images[0].max() == 255


def test_npy_resizes_to_image_size(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(5, size=16), "b": _gray(5, size=12)})
    ds = load_dataset(DataConfig(path=root, format="npy", image_size=8))
    assert ds.images.shape == (10, 8, 8)


def test_npy_mixed_shapes_without_image_size_names_both_files(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(5, size=16), "b": _gray(5, size=12)})
    with pytest.raises(XferlabError, match=r"a\.npy holds 16×16 images but .*b\.npy holds 12×12.*--image-size"):
        load_dataset(DataConfig(path=root, format="npy"))


def test_npy_nan_is_an_error_naming_the_file(tmp_path):
    bad = np.full((5, 8, 8), 0.5)
    bad[2, 3, 3] = np.nan
    root = _npy_folder(tmp_path / "d", {"a": bad, "b": _gray(5)})
    with pytest.raises(XferlabError, match=r"a\.npy: pixel values contain NaN"):
        load_dataset(DataConfig(path=root, format="npy"))


def test_npy_floats_outside_range_are_an_error(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": np.full((5, 8, 8), 300.0), "b": _gray(5)})
    with pytest.raises(XferlabError, match=r"a\.npy: float pixels range 300\.\.300"):
        load_dataset(DataConfig(path=root, format="npy"))


def test_npy_truncated_file_is_an_error_naming_it(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(5), "b": _gray(5)})
    data = (root / "b.npy").read_bytes()
    (root / "b.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(XferlabError, match=r"b\.npy: cannot load \.npy.*truncated"):
        load_dataset(DataConfig(path=root, format="npy"))


def test_npy_corrupt_file_is_an_error_naming_it(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(5)})
    (root / "b.npy").write_bytes(b"definitely not an array" * 10)
    with pytest.raises(XferlabError, match=r"b\.npy: cannot load \.npy"):
        load_dataset(DataConfig(path=root, format="npy"))


def test_npy_pickled_object_array_is_refused(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(5)})
    np.save(root / "b.npy", np.array([{"x": 1}] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(XferlabError, match=r"b\.npy: cannot load \.npy.*numeric \(not object\)"):
        load_dataset(DataConfig(path=root, format="npy"))


def test_npy_test_class_without_train_counterpart_is_an_error(tmp_path):
    root = _npy_folder(tmp_path / "d", {"normal": _gray(5), "pneumonia": _gray(5)}, {"pneumonai": _gray(2)})
    with pytest.raises(XferlabError, match="no pneumonai.npy in the train pool.*did you mean 'pneumonia'"):
        load_dataset(DataConfig(path=root, format="npy"))


def test_class_missing_from_a_split_is_reported(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(5), "b": _gray(5)}, {"a": _gray(2)})
    with pytest.raises(XferlabError, match=r"class \['b'\] has no images in the 'test' split"):
        load_dataset(DataConfig(path=root, format="npy"))


# ---- folder --------------------------------------------------------------------------------------------------------


def test_folder_loads_train_val_test(tmp_path):
    root = _image_folder(
        tmp_path / "xray",
        {
            "train": {"NORMAL": 4, "PNEUMONIA": 3},
            "val": {"NORMAL": 1, "PNEUMONIA": 1},
            "test": {"NORMAL": 2, "PNEUMONIA": 2},
        },
    )
    ds = load_dataset(DataConfig(path=root, format="folder"))
    assert ds.class_names == ["NORMAL", "PNEUMONIA"]
    assert ds.images.shape == (13, 8, 8) and ds.images.dtype == np.uint8
    assert ds.counts() == {"train": [4, 3], "val": [1, 1], "test": [2, 2]}
    assert ds.meta["val_carved"] is None


def test_folder_carves_val_from_train_when_absent(tmp_path):
    root = _image_folder(tmp_path / "xray", {"train": {"a": 10, "b": 5}})
    ds = load_dataset(DataConfig(path=root, format="folder"))
    assert ds.counts() == {"train": [8, 4], "val": [2, 1]}
    # file order: the val images of class a are 008.png and 009.png
    assert ds.images[ds.indices("val")][:, 0, 0].tolist() == [8, 9, 4]


def test_folder_rgb_images_become_channel_first(tmp_path):
    root = _image_folder(tmp_path / "d", {"train": {"a": 3, "b": 3}})
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    _save_png(root / "train" / "a" / "zzz.png", colour)
    ds = load_dataset(DataConfig(path=root, format="folder"))
    assert ds.images.shape == (7, 3, 8, 8)
    assert ds.images[3].tolist() == colour.transpose(2, 0, 1).tolist()


def test_folder_mixed_sizes_need_image_size(tmp_path):
    root = _image_folder(tmp_path / "d", {"train": {"a": 3, "b": 3}})
    _save_png(root / "train" / "b" / "big.png", np.zeros((16, 12), np.uint8))
    with pytest.raises(XferlabError, match=r"8×8 \(6 images.*16×12 \(1 image, e\.g\. .*big\.png\).*--image-size"):
        load_dataset(DataConfig(path=root, format="folder"))
    ds = load_dataset(DataConfig(path=root, format="folder", image_size=10))
    assert ds.images.shape == (7, 10, 10)


def test_folder_corrupt_png_is_an_error_naming_it(tmp_path):
    root = _image_folder(tmp_path / "d", {"train": {"a": 5, "b": 5}})
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(XferlabError, match=r"broken\.png: cannot read image.*skip_unreadable"):
        load_dataset(DataConfig(path=root, format="folder"))


def test_folder_corrupt_png_is_skipped_with_a_warning(tmp_path, caplog):
    root = _image_folder(tmp_path / "d", {"train": {"a": 5, "b": 5}})
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with caplog.at_level(logging.WARNING, logger="xferlab.data.sources"):
        ds = load_dataset(DataConfig(path=root, format="folder", skip_unreadable=True))
    assert len(ds.images) == 10
    assert "skipped 1 unreadable image(s)" in caplog.text and "broken.png" in caplog.text
    assert ds.meta["skipped"] == [str(root / "train" / "a" / "broken.png")]


def test_folder_names_each_image_file_in_dataset_order(tmp_path):
    root = _image_folder(tmp_path / "d", {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    (root / "train" / "a" / "001.png").write_bytes(b"not a png")
    ds = load_dataset(DataConfig(path=root, format="folder", skip_unreadable=True))
    expected = [f"train/a/{i}" for i in ("000", "002")] + [f"train/b/{i}" for i in ("000", "001", "002")]
    expected += ["val/a/000", "val/b/000"]
    assert ds.meta["files"] == [str(root / f"{name}.png") for name in expected]
    assert ds.images[:, 0, 0].tolist() == [0, 2, 0, 1, 2, 0, 0]  # pixel value = file number: the same order


def test_folder_without_train_explains_the_layout(tmp_path):
    _image_folder(tmp_path / "outer" / "chest_xray", {"train": {"a": 2}})
    with pytest.raises(XferlabError, match=r"no train/ folder.*\['chest_xray'\]"):
        load_dataset(DataConfig(path=tmp_path / "outer", format="folder"))


def test_folder_val_class_not_in_train_is_an_error(tmp_path):
    root = _image_folder(tmp_path / "d", {"train": {"cat": 2, "dog": 2}, "val": {"dgo": 1}})
    with pytest.raises(XferlabError, match="'dgo' is not a class of train/.*did you mean 'dog'"):
        load_dataset(DataConfig(path=root, format="folder"))


# ---- csv -----------------------------------------------------------------------------------------------------------


def _csv_images(root: Path, n: int) -> list[str]:
    return [_save_png(root / "img" / f"{i:03d}.png", np.full((8, 8), i, np.uint8)).relative_to(root).as_posix()
            for i in range(n)]


def test_csv_with_split_column(tmp_path):
    files = _csv_images(tmp_path, 8)
    splits = ["train", "train", "train", "train", "val", "val", "test", "test"]
    lines = ["path,label,split"] + [f"{f},{'b' if i % 2 else 'a'},{s}" for i, (f, s) in enumerate(zip(files, splits))]
    ds = load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", lines), format="csv"))
    assert ds.class_names == ["a", "b"]
    assert ds.splits.tolist() == splits
    assert ds.images[:, 0, 0].tolist() == list(range(8))
    assert ds.meta["splits_from"] == "manifest"


def test_csv_labels_index_the_sorted_class_names_and_files_are_named(tmp_path):
    files = _csv_images(tmp_path, 9)
    names = ["pneumonia", "covid", "normal"] * 3
    lines = ["path,label,split"] + [f"{f},{c},{'val' if i >= 6 else 'train'}" for i, (f, c) in
                                    enumerate(zip(files, names))]
    ds = load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", lines), format="csv"))
    assert ds.class_names == ["covid", "normal", "pneumonia"]
    assert [ds.class_names[k] for k in ds.labels] == names
    assert ds.meta["files"] == [str(tmp_path / f) for f in files]


def test_csv_without_split_column_draws_group_aware_splits(tmp_path):
    files = _csv_images(tmp_path, 60)
    lines = ["path,label,group"] + [f"{f},{'ab'[(i // 3) % 2]},p{i // 3}" for i, f in enumerate(files)]
    ds = load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", lines), format="csv", seed=2))
    assert ds.meta["splits_from"] == "drawn"
    owner = {}
    for group, split in zip(ds.groups, ds.splits):
        assert owner.setdefault(group, split) == split
    assert set(ds.splits) == {"train", "val", "test"}


def test_csv_blank_split_cells_are_drawn(tmp_path):
    files = _csv_images(tmp_path, 22)
    lines = ["path,label,split"] + [f"{f},{'ab'[i % 2]},{'test' if i < 2 else ''}" for i, f in enumerate(files)]
    cfg = DataConfig(path=_manifest(tmp_path / "m.csv", lines), format="csv", val_fraction=0.25, test_fraction=0.1)
    ds = load_dataset(cfg)
    assert ds.splits[:2].tolist() == ["test", "test"]
    assert (ds.splits[2:] == "val").sum() == 5 and (ds.splits[2:] == "test").sum() == 2


def test_csv_train_test_only_carves_val(tmp_path):
    files = _csv_images(tmp_path, 12)
    lines = ["path,label,split"] + [f"{f},{'ab'[i % 2]},{'test' if i >= 10 else 'train'}" for i, f in enumerate(files)]
    ds = load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", lines), format="csv"))
    assert ds.counts() == {"train": [4, 4], "val": [1, 1], "test": [1, 1]}


def test_csv_empty_file_is_an_error(tmp_path):
    with pytest.raises(XferlabError, match=r"m\.csv: empty manifest"):
        load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", []), format="csv"))


def test_csv_missing_column_is_an_error(tmp_path):
    expected = r"missing column 'path' \(found \['paths', 'label'\]\).*did you mean 'paths'"
    with pytest.raises(XferlabError, match=expected):
        load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", ["paths,label", "a.png,x"]), format="csv"))


def test_csv_missing_file_names_the_row(tmp_path):
    files = _csv_images(tmp_path, 2)
    lines = ["path,label", f"{files[0]},a", f"{files[1]},b", "img/gone.png,a"]
    with pytest.raises(XferlabError, match=r"m\.csv, line 4: image file .*gone\.png not found"):
        load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", lines), format="csv"))


def test_csv_bad_split_value_suggests_closest(tmp_path):
    files = _csv_images(tmp_path, 1)
    lines = ["path,label,split", f"{files[0]},a,valid"]
    with pytest.raises(XferlabError, match=r"line 2: split 'valid'.*did you mean 'val'"):
        load_dataset(DataConfig(path=_manifest(tmp_path / "m.csv", lines), format="csv"))


# ---- medmnist ------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_medmnist(monkeypatch):
    """A stand-in for the medmnist package (the real one imports torch, which is slow)."""
    module = types.ModuleType("medmnist")
    module.INFO = {
        "pneumoniamnist": {"task": "binary-class", "label": {"0": "normal", "1": "pneumonia"}},
        "chestmnist": {"task": "multi-label, binary-class", "label": {"0": "a", "1": "b"}},
    }
    monkeypatch.setitem(sys.modules, "medmnist", module)


def test_medmnist_npz_file_with_class_names(tmp_path, fake_medmnist):
    path = _medmnist_npz(tmp_path / "pneumoniamnist.npz")
    ds = load_dataset(DataConfig(path=path, format="medmnist"))
    assert ds.class_names == ["normal", "pneumonia"]
    assert ds.images.shape == (20, 8, 8) and ds.labels.shape == (20,)
    assert [int((ds.splits == s).sum()) for s in ("train", "val", "test")] == [10, 4, 6]
    assert ds.meta["flag"] == "pneumoniamnist"


def test_medmnist_folder_picks_the_size_file_and_rgb(tmp_path, fake_medmnist):
    _medmnist_npz(tmp_path / "pneumoniamnist.npz")
    _medmnist_npz(tmp_path / "pneumoniamnist_16.npz", shape=(16, 16, 3))
    ds = load_dataset(DataConfig(path=tmp_path, format="medmnist", medmnist_flag="pneumoniamnist", image_size=12))
    assert ds.images.shape == (20, 3, 12, 12)
    assert ds.meta["file"].endswith("pneumoniamnist_16.npz")


def test_medmnist_without_package_names_classes_by_index(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # import medmnist -> ImportError
    ds = load_dataset(DataConfig(path=_medmnist_npz(tmp_path / "x.npz"), format="medmnist"))
    assert ds.class_names == ["class0", "class1"]


def test_medmnist_multilabel_is_refused(tmp_path, fake_medmnist):
    path = _medmnist_npz(tmp_path / "chestmnist.npz", labels_shape=(3,))
    with pytest.raises(XferlabError, match=r"labels have shape \(10, 3\) \(multi-label\)"):  # by the label shape
        load_dataset(DataConfig(path=path, format="medmnist"))


def test_medmnist_multilabel_task_is_refused_even_with_one_label_column(tmp_path, fake_medmnist):
    path = _medmnist_npz(tmp_path / "chestmnist.npz", labels_shape=(1,))  # 1-D labels: only the task tells
    with pytest.raises(XferlabError, match="chestmnist is a multi-label dataset"):
        load_dataset(DataConfig(path=path, format="medmnist"))


def test_medmnist_folder_without_the_flag_file_is_an_error(tmp_path):
    _medmnist_npz(tmp_path / "pneumoniamnist.npz")
    cfg = DataConfig(path=tmp_path, format="medmnist", medmnist_flag="pneumonimnist")
    with pytest.raises(XferlabError, match="no pneumonimnist.npz.*did you mean 'pneumoniamnist'.*never downloads"):
        load_dataset(cfg)


def test_load_dataset_returns_an_image_dataset(tmp_path):
    root = _npy_folder(tmp_path / "d", {"a": _gray(5), "b": _gray(5)})
    assert isinstance(load_dataset(DataConfig(path=root, format="npy")), ImageDataset)
