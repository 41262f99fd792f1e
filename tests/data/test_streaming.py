"""Streaming folder/csv images from disk (xferlab.data.streaming): same pixels as in-memory loading, chosen by
data.memory_budget_mb, decoded in DataLoader workers."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xferlab.config import DataConfig
from xferlab.data import ImageDataset, load_dataset
from xferlab.data.streaming import MIB, FileImages, stream_batches
from xferlab.errors import XferlabError

LAYOUT = [("train", "a", 6), ("train", "b", 6), ("val", "a", 2), ("val", "b", 2)]  # 16 images


def _pixels(rng: np.random.Generator, size: tuple[int, int], kind: str) -> np.ndarray:
    """Random pixels: 'gray' (mode L), 'rgb' (colour), 'gray_rgb' (gray content saved as RGB: decodes gray)."""
    gray = rng.integers(0, 256, size, dtype=np.uint8)
    if kind == "gray":
        return gray
    if kind == "gray_rgb":
        return np.repeat(gray[..., None], 3, axis=-1)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _files(root: Path, kinds: dict[int, str], sizes: list[tuple[int, int]], seed: int = 0) -> list[tuple]:
    """(path, split, class) for LAYOUT's 16 images under root/<split>/<class>/; image k is kinds.get(k, 'gray') and
    of size sizes[k % len(sizes)]."""
    rng = np.random.default_rng(seed)
    out = []
    for split, label, n in LAYOUT:
        for i in range(n):
            k = len(out)
            pixels = _pixels(rng, sizes[k % len(sizes)], kinds.get(k, "gray"))
            path = _png(root / split / label / f"{i:02d}.png", pixels)
            out.append((path, split, label))
    return out


def _folder(root: Path, kinds: dict[int, str] | None = None, sizes=((24, 24),)) -> Path:
    _files(root, kinds or {}, list(sizes))
    return root


def _csv(root: Path, kinds: dict[int, str] | None = None, sizes=((24, 24),)) -> Path:
    files = _files(root / "img", kinds or {}, list(sizes), seed=1)
    lines = ["path,label,split"] + [f"{p.relative_to(root)},{label},{split}" for p, split, label in files]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


def _both(path: Path, fmt: str, **kw) -> tuple[ImageDataset, ImageDataset]:
    """(in memory, streamed) loads of the same data."""
    memory = load_dataset(DataConfig(path=path, format=fmt, **kw))
    streamed = load_dataset(DataConfig(path=path, format=fmt, memory_budget_mb=0, **kw))
    return memory, streamed


def _assert_same(memory: ImageDataset, streamed: ImageDataset) -> None:
    assert not memory.streamed and streamed.streamed and isinstance(streamed.images, FileImages)
    assert streamed.meta["files"] == memory.meta["files"] == list(streamed.images.paths)
    assert streamed.images.shape == memory.images.shape and streamed.images.nbytes == memory.images.nbytes
    np.testing.assert_array_equal(streamed.images[:], memory.images)
    np.testing.assert_array_equal(streamed.labels, memory.labels)
    np.testing.assert_array_equal(streamed.splits, memory.splits)


# ---- same pixels as in memory ----------------------------------------------------------------------------------


CASES = {  # name: (kinds, sizes, image_size)
    "gray": ({3: "gray_rgb"}, [(24, 24)], None),  # an RGB-mode file of gray content keeps the set gray
    "rgb": ({5: "rgb", 9: "gray_rgb"}, [(24, 24)], None),  # one colour file makes every image 3-channel
    "gray_resized": ({}, [(20, 20), (28, 24)], 16),
    "rgb_resized": ({0: "rgb"}, [(20, 20), (28, 24)], 16),
}


@pytest.mark.parametrize("case", CASES)
def test_streamed_folder_has_the_in_memory_pixels(tmp_path, case):
    kinds, sizes, image_size = CASES[case]
    memory, streamed = _both(_folder(tmp_path / "d", kinds, sizes), "folder", image_size=image_size)
    _assert_same(memory, streamed)
    assert memory.channels == (3 if "rgb" in case else 1)


@pytest.mark.parametrize("case", ["rgb", "gray_resized"])
def test_streamed_csv_has_the_in_memory_pixels(tmp_path, case):
    kinds, sizes, image_size = CASES[case]
    memory, streamed = _both(_csv(tmp_path, kinds, sizes), "csv", image_size=image_size)
    _assert_same(memory, streamed)


def test_streamed_dataset_validates_and_reports_its_shape(tmp_path):
    _, streamed = _both(_folder(tmp_path / "d", {2: "rgb"}), "folder")
    streamed.validate()
    assert (streamed.channels, streamed.image_size) == (3, (24, 24))
    assert streamed.counts() == {"train": [6, 6], "val": [2, 2]}
    images, labels = streamed.split("val")
    assert images.shape == (4, 3, 24, 24) and labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(XferlabError, match="same length"):
        ImageDataset(images=streamed.images.subset(slice(1, None)), labels=streamed.labels,
                     class_names=streamed.class_names, splits=streamed.splits)


# ---- the budget decides ------------------------------------------------------------------------------------------


def test_budget_streams_only_above_it(tmp_path, caplog):
    root = _folder(tmp_path / "d")
    nbytes = 16 * 24 * 24
    loads = {mb: load_dataset(DataConfig(path=root, format="folder", memory_budget_mb=mb))
             for mb in (0, (nbytes - 1) / MIB, nbytes / MIB, 1e6)}
    assert [ds.streamed for ds in loads.values()] == [True, True, False, False]
    with caplog.at_level(logging.INFO, logger="xferlab.data.sources"):
        load_dataset(DataConfig(path=root, format="folder", memory_budget_mb=0))
    assert "over data.memory_budget_mb = 0 MiB: streaming" in caplog.text


@pytest.mark.parametrize("kind, streamed", [("rgb", True), ("gray_rgb", False)])
def test_budget_counts_three_channels_only_for_colour_sets(tmp_path, kind, streamed):
    gray_mb = 16 * 24 * 24 / MIB
    root = _folder(tmp_path / "d", {7: kind})
    ds = load_dataset(DataConfig(path=root, format="folder", memory_budget_mb=2 * gray_mb))
    assert ds.streamed is streamed


def test_a_load_within_the_budget_reads_each_header_once_and_decodes_each_file_once(tmp_path, monkeypatch):
    from xferlab.data import sources, streaming

    root = _folder(tmp_path / "d", {3: "gray_rgb"})
    calls = {"header": 0, "decode": 0}

    def counted(name, fn):
        def wrapper(path, *size):  # read_image_file may be told the size the image is resized to
            calls[name] += 1
            return fn(path, *size)
        return wrapper

    def no_second_header_pass(paths, where):
        raise AssertionError("the scan already checked the sizes")

    monkeypatch.setattr(streaming, "read_image_header", counted("header", streaming.read_image_header))
    monkeypatch.setattr(streaming, "read_image_file", counted("decode", streaming.read_image_file))
    monkeypatch.setattr(sources, "read_image_file", counted("decode", sources.read_image_file))
    monkeypatch.setattr(sources, "check_file_sizes", no_second_header_pass)
    ds = load_dataset(DataConfig(path=root, format="folder", memory_budget_mb=2 * 16 * 24 * 24 / MIB))
    assert not ds.streamed and calls == {"header": 16, "decode": 16 + 1}  # + the RGB-mode file find_colour decodes


def test_a_load_within_the_budget_skips_what_the_scan_skipped(tmp_path):
    root = _folder(tmp_path / "d")
    garbage, truncated = _damage(root)
    memory = load_dataset(DataConfig(path=root, format="folder", skip_unreadable=True))
    budgeted = load_dataset(DataConfig(path=root, format="folder", skip_unreadable=True, memory_budget_mb=1e6))
    assert not budgeted.streamed and budgeted.meta["skipped"] == [str(garbage), str(truncated)]
    assert budgeted.meta == memory.meta
    np.testing.assert_array_equal(budgeted.images, memory.images)


def test_budget_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="memory_budget_mb"):
        DataConfig(path=tmp_path, format="folder", memory_budget_mb=-1)


# ---- unreadable files ----------------------------------------------------------------------------------------------


def _damage(root: Path) -> tuple[Path, Path]:
    """Replace one file by garbage and truncate another mid-pixels; both unreadable."""
    garbage = root / "train" / "a" / "01.png"
    garbage.write_bytes(b"not an image at all")
    truncated = root / "train" / "b" / "03.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    return garbage, truncated


def test_streaming_skips_unreadable_files_like_loading(tmp_path):
    root = _folder(tmp_path / "d", {4: "rgb"})
    garbage, truncated = _damage(root)
    memory, streamed = _both(root, "folder", skip_unreadable=True)
    _assert_same(memory, streamed)
    assert len(streamed.images) == 14
    assert streamed.meta["skipped"] == memory.meta["skipped"] == [str(garbage), str(truncated)]


def test_streaming_refuses_an_unreadable_file_naming_it(tmp_path):
    garbage, _ = _damage(_folder(tmp_path / "d"))
    with pytest.raises(XferlabError, match=rf"{garbage}: cannot read image.*data.skip_unreadable: true"):
        load_dataset(DataConfig(path=tmp_path / "d", format="folder", memory_budget_mb=0))


def test_a_png_that_only_fails_verify_is_kept_as_loading_keeps_it(tmp_path):
    root = _folder(tmp_path / "d")
    endless = root / "train" / "a" / "02.png"
    endless.write_bytes(endless.read_bytes()[:-12])  # no IEND chunk: Pillow's verify() refuses, decoding does not
    _assert_same(*_both(root, "folder"))


# ---- FileImages as an array ---------------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path) -> tuple[FileImages, np.ndarray]:
    memory, streamed = _both(_folder(tmp_path / "d", {1: "rgb"}), "folder")
    return streamed.images, memory.images


def test_file_images_index_like_numpy(pair):
    files, array = pair
    mask = np.arange(len(array)) % 3 == 0
    for index in (0, -1, np.int64(5), torch.tensor(7)):
        np.testing.assert_array_equal(files[index], array[int(index)])
    for index in ([4, 2, 4], np.array([-1, 0]), torch.tensor([3, 1]), slice(2, 12, 3), mask, []):
        expected = array[np.asarray(index, np.int64) if isinstance(index, list) else index]
        np.testing.assert_array_equal(files[index], expected)
    np.testing.assert_array_equal(files.subset([9, 3])[1], array[3])
    assert files.subset(mask).shape == array[mask].shape and files.dtype == array.dtype and files.ndim == 4


def test_file_images_refuse_bad_indices_and_whole_conversion(pair):
    files, _ = pair
    with pytest.raises(IndexError, match="16 images"):
        files[16]
    with pytest.raises(IndexError, match="16 images"):
        files[[0, -17]]
    with pytest.raises(TypeError, match="one index per image"):
        files[0, 1]
    with pytest.raises(TypeError, match="streamed from disk"):
        np.asarray(files)


def test_file_images_pickle(pair):
    files, array = pair
    again = pickle.loads(pickle.dumps(files))
    assert again.paths == files.paths and again.shape == files.shape
    np.testing.assert_array_equal(again[[3, 1]], array[[3, 1]])


def test_file_image_changed_on_disk_is_an_error_naming_it(pair):
    files, _ = pair
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(files.paths[2])
    with pytest.raises(XferlabError, match=rf"{files.paths[2]}: decodes to 10×10, not 3×24×24.*load the data again"):
        files[2]


# ---- stream_batches ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_batches_yields_the_given_batches_in_order(pair, workers):
    files, array = pair
    batches = list(torch.randperm(len(array), generator=torch.Generator().manual_seed(0)).split(5))
    rng_before = torch.get_rng_state()
    streamed = list(stream_batches(files, batches, workers))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is not advanced by the loader
    assert len(streamed) == len(batches)
    for batch, idx in zip(streamed, batches):
        assert batch.dtype == torch.uint8
        np.testing.assert_array_equal(batch.numpy(), array[idx.numpy()])


def test_stream_batches_accepts_lists_and_reports_worker_errors(pair):
    files, array = pair
    first = next(stream_batches(files, [[2, 0]], workers=0))
    np.testing.assert_array_equal(first.numpy(), array[[2, 0]])
    Path(files.paths[4]).write_bytes(b"damaged after loading")
    with pytest.raises(XferlabError, match=rf"{files.paths[4]}: cannot read image"):
        list(stream_batches(files, [[0, 1], [4]], workers=2))
