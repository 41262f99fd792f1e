"""Tests for the synthetic chest-radiograph phantoms: determinism, layout, the shift contract and argument checks."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from xferlab.data import phantoms
from xferlab.data.phantoms import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    AcquisitionParams,
    generate_phantoms,
    lung_mask,
    render_phantom,
    sample_anatomy,
)
from xferlab.errors import XferlabError

SIZE = 32
N = 10
N_TEST = 4
TRAIN_FILES = ("normal.npy", "pneumonia.npy")
TEST_FILES = ("test_normal.npy", "test_pneumonia.npy")


def _make(out: Path, **kwargs) -> Path:
    args = {"size": SIZE, "n_per_class": N, "n_test_per_class": N_TEST, "seed": 0} | kwargs
    return generate_phantoms(out, **args)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {name: np.load(folder / name) for name in TRAIN_FILES + TEST_FILES}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("shifted"), shift="acquisition")


def test_files_shapes_and_dtypes(plain: Path) -> None:
    arrays = _arrays(plain)
    for name in TRAIN_FILES:
        assert arrays[name].shape == (N, SIZE, SIZE)
    for name in TEST_FILES:
        assert arrays[name].shape == (N_TEST, SIZE, SIZE)
    assert all(a.dtype == np.uint8 for a in arrays.values())
    assert not list(plain.glob("*.tmp")), "temporary files must be renamed or removed"
    # images use the display range, not a sliver of it
    assert all(a.min() < 40 and a.max() > 160 for a in arrays.values())


def test_files_get_the_usual_permissions(plain: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in plain.iterdir() if f.is_file()}
    assert modes == {name: 0o666 & ~umask for name in (*TRAIN_FILES, *TEST_FILES, "phantoms.json")}
    roi_modes = {stat.S_IMODE(f.stat().st_mode) for f in (plain / "roi").iterdir()}
    assert roi_modes == {0o666 & ~umask}


def test_metadata_records_every_parameter(plain: Path, shifted: Path) -> None:
    meta = json.loads((plain / "phantoms.json").read_text())
    assert meta["size"] == SIZE
    assert meta["n_per_class"] == N
    assert meta["n_test_per_class"] == N_TEST
    assert meta["seed"] == 0
    assert meta["shift"] is None
    assert meta["generator_version"] == GENERATOR_VERSION
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["train_fraction"] == 0.8
    assert sorted(meta["files"].values()) == sorted(TRAIN_FILES + TEST_FILES)
    assert json.loads((shifted / "phantoms.json").read_text())["shift"] == "acquisition"


def test_same_seed_is_byte_identical(plain: Path, tmp_path: Path) -> None:
    again = _arrays(_make(tmp_path / "again"))
    for name, array in _arrays(plain).items():
        assert np.array_equal(array, again[name]), name


def test_other_seed_differs(plain: Path, tmp_path: Path) -> None:
    other = _arrays(_make(tmp_path / "other", seed=1))
    for name, array in _arrays(plain).items():
        assert not np.array_equal(array, other[name]), name


def test_thread_count_does_not_change_the_images(plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phantoms, "_RENDER_THREADS", 1)
    single = _arrays(_make(tmp_path / "single"))
    for name, array in _arrays(plain).items():
        assert np.array_equal(array, single[name]), name


def test_images_do_not_depend_on_how_many_were_asked_for(plain: Path, tmp_path: Path) -> None:
    fewer = _arrays(_make(tmp_path / "fewer", n_per_class=3, n_test_per_class=2))
    for name, array in fewer.items():
        assert np.array_equal(array, _arrays(plain)[name][: len(array)]), name


def test_shift_changes_the_test_split_only(plain: Path, shifted: Path, tmp_path: Path) -> None:
    base, moved = _arrays(plain), _arrays(shifted)
    for name in TRAIN_FILES:
        assert np.array_equal(base[name], moved[name]), f"{name}: the shift must leave the train pool identical"
    for name in TEST_FILES:
        assert not np.array_equal(base[name], moved[name]), f"{name}: the shift must change the test images"
    spelled_out = _arrays(_make(tmp_path / "none", shift="none"))
    assert all(np.array_equal(spelled_out[name], base[name]) for name in TEST_FILES), "shift='none' is no shift"


def test_opacities_brighten_the_lungs_and_nothing_else() -> None:
    """Same patients with and without lesions, same noise: the lesions add density inside the lung fields only."""
    size = 48
    inside, outside = [], []
    for seed in range(12):
        anatomy = sample_anatomy(np.random.default_rng(seed), pneumonia=True)
        assert 1 <= len(anatomy.lesions) <= 3
        normal, sick = (
            render_phantom(np.random.default_rng(seed), size, sick, noise_rng=np.random.default_rng(99)).astype(float)
            for sick in (False, True)
        )
        lungs = lung_mask(anatomy, size)
        far = gaussian_filter(lungs, 3.0) < 1e-3  # beyond the detector blur's reach
        inside.append((sick - normal)[lungs > 0.5].mean())
        outside.append(np.abs(sick - normal)[far].max())
    assert np.mean(inside) > 1.0 and min(inside) > 0.0
    assert max(outside) <= 1.0  # the FFT blur may flip a rounding far away, nothing more


def test_pneumonia_class_is_brighter_on_average_in_the_lung_fields(tmp_path: Path) -> None:
    arrays = _arrays(_make(tmp_path / "many", size=48, n_per_class=40, n_test_per_class=1))
    size = 48
    # central lung zones of an average patient: clear of the spine, heart, shoulders and diaphragm
    rows, cols = slice(size * 3 // 10, size * 6 // 10), np.r_[size // 5 : size * 2 // 5, size * 3 // 5 : size * 4 // 5]
    lung_mean = {name: arrays[name][:, rows][:, :, cols].mean() for name in TRAIN_FILES}
    assert lung_mean["pneumonia.npy"] > lung_mean["normal.npy"] + 1.0


def test_render_phantom_accepts_dict_and_marker() -> None:
    image = render_phantom(np.random.default_rng(0), 40, False, {"gamma": 1.5, "marker": True, "noise": 0.0})
    assert image.shape == (40, 40) and image.dtype == np.uint8
    plain = render_phantom(np.random.default_rng(0), 40, False, AcquisitionParams(gamma=1.5, noise=0.0))
    corner = (slice(0, 10), slice(0, 10))
    assert image[corner].astype(int).mean() > plain[corner].astype(int).mean() + 50


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": 16}, "size"),
        ({"size": 32.0}, "size"),
        ({"n_per_class": 0}, "n_per_class"),
        ({"n_test_per_class": -1}, "n_test_per_class"),
        ({"shift": "acquisiton"}, "shift"),
        ({"shift": "site"}, "shift"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(XferlabError, match=field):
        _make(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad" / "phantoms.json").exists()


def test_typo_in_shift_suggests_the_right_value(tmp_path: Path) -> None:
    with pytest.raises(XferlabError, match="did you mean 'acquisition'"):
        _make(tmp_path, shift="acquisiton")


def test_unknown_acquisition_key_is_an_error() -> None:
    with pytest.raises(XferlabError, match="gama"):
        render_phantom(np.random.default_rng(0), 32, False, {"gama": 1.2})


@pytest.fixture(scope="module")
def shortcut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory.mktemp("shortcut"), shift="shortcut", n_per_class=60)


def test_shortcut_marker_goes_with_pneumonia_in_train_pool_only(shortcut: Path, plain: Path) -> None:
    meta = json.loads((shortcut / "phantoms.json").read_text())
    assert meta["shift"] == "shortcut" and meta["shortcut_marker_share"] == {"normal": 0.1, "pneumonia": 0.9}
    boxes = {stem: np.load(shortcut / meta["markers"][stem]) for stem in ("normal", "pneumonia", "test_normal",
                                                                           "test_pneumonia")}
    share = {stem: float((b[:, 0] >= 0).mean()) for stem, b in boxes.items()}
    assert share["pneumonia"] > 0.75 and share["normal"] < 0.25  # 60 draws around 0.9 and 0.1
    assert share["test_normal"] == share["test_pneumonia"] == 0.0
    # the marker is where its box says: a bright block in the top-left corner, absent elsewhere
    images = np.load(shortcut / "pneumonia.npy")
    i = int(np.flatnonzero(boxes["pneumonia"][:, 0] >= 0)[0])
    x0, y0, x1, y1 = boxes["pneumonia"][i]
    assert x1 - x0 >= 6 and np.median(images[i, y0:y1, x0:x1]) > 200
    # test is the unshifted test split, byte for byte; an unmarked train image is the plain one
    for name in TEST_FILES:
        assert np.array_equal(np.load(shortcut / name), np.load(plain / name))
    j = int(np.flatnonzero(boxes["normal"][:N, 0] < 0)[0])
    assert np.array_equal(np.load(shortcut / "normal.npy")[j], np.load(plain / "normal.npy")[j])


def test_roi_masks_are_the_lung_fields(plain: Path) -> None:
    meta = json.loads((plain / "phantoms.json").read_text())
    assert meta["roi"]["kind"] == "mask" and meta["markers"] == {}
    for stem, rel in meta["roi"]["files"].items():
        roi = np.load(plain / rel)
        images = np.load(plain / f"{stem}.npy")
        assert roi.shape == images.shape and roi.dtype == np.uint8 and set(np.unique(roi)) <= {0, 1}
        share = roi.mean(axis=(1, 2))
        assert (share > 0.1).all() and (share < 0.5).all()  # two lungs, not the whole film
        # lungs are darker than the rest of the body on the film
        assert images[roi == 1].mean() < images[roi == 0].mean()
    # the npy layout still sees only the two classes
    from xferlab.data.config import DataConfig
    from xferlab.data.sources import load_dataset

    assert load_dataset(DataConfig(path=str(plain))).class_names == list(CLASS_NAMES)


def test_one_image_per_patient_is_what_the_phantoms_always_were(plain: Path, tmp_path: Path) -> None:
    again = _make(tmp_path / "k1", images_per_patient=1)
    for name, array in _arrays(plain).items():
        assert np.array_equal(array, _arrays(again)[name]), name
    assert not (again / "groups.csv").exists()
    assert json.loads((again / "phantoms.json").read_text())["images_per_patient"] == 1


def test_several_images_per_patient_show_one_recognisable_patient(tmp_path: Path) -> None:
    """K = 3: consecutive images are one patient, named in groups.csv. They are not copies, and the patient is
    recognisable: an image's nearest neighbour (pixels standardised per image, which removes the acquisition's
    brightness and contrast) is another image of its patient far more often than chance (2 of 119)."""
    folder = _make(tmp_path / "k3", n_per_class=60, images_per_patient=3)
    from xferlab.config import DataConfig
    from xferlab.data.sources import load_dataset

    data = load_dataset(DataConfig(path=folder))
    assert data.meta["groups_from"] == "groups.csv"
    pool = data.splits != "test"
    assert data.groups[pool].tolist() == [f"{c}-{i // 3:05d}" for c in ("normal", "pneumonia") for i in range(60)]
    assert not set(data.groups[data.splits == "val"]) & set(data.groups[data.splits == "train"])
    x = data.images[pool].reshape(pool.sum(), -1).astype(float)
    assert len({im.tobytes() for im in data.images[pool]}) == pool.sum()  # no two images alike
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    same = data.groups[pool][dist.argmin(1)] == data.groups[pool]
    assert same.mean() > 0.8  # measured 1.0 at 32 px (120 images, 40 patients)
    _make(folder, images_per_patient=1)  # the same folder again, one image per patient: groups.csv goes
    assert not (folder / "groups.csv").exists()


@pytest.mark.parametrize("value", [0, 101, 2.0, True])
def test_images_per_patient_is_checked(tmp_path: Path, value) -> None:
    with pytest.raises(XferlabError, match="images_per_patient: must be an integer from 1 to 100"):
        _make(tmp_path / "bad", images_per_patient=value)
    assert not (tmp_path / "bad").exists()
