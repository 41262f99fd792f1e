"""Pixel conversion, resizing, decoding and stacking (xferlab.data.images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xferlab.data.images import (
    channels_first,
    check_file_sizes,
    concat_batches,
    gray_levels,
    gray_uint8,
    read_image_file,
    resize_image,
    resize_images,
    stack_images,
    to_uint8,
)
from xferlab.errors import XferlabError


def test_uint8_passes_through_without_copy():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_uint8(a, "x") is a


def test_integers_in_range_convert():
    out = to_uint8(np.array([0, 7, 255], dtype=np.int64), "x")
    assert out.dtype == np.uint8 and out.tolist() == [0, 7, 255]


def test_integers_out_of_range_error():
    with pytest.raises(XferlabError, match=r"x: integer pixels \(uint16\) range 0\.\.4095"):
        to_uint8(np.array([0, 4095], dtype=np.uint16), "x")


def test_bool_becomes_0_255():
    assert to_uint8(np.array([True, False]), "x").tolist() == [255, 0]


def test_floats_in_unit_range_are_scaled():
    assert to_uint8(np.array([0.0, 0.5, 1.0], dtype=np.float32), "x").tolist() == [0, 128, 255]


def test_floats_in_byte_range_are_rounded():
    assert to_uint8(np.array([0.0, 2.6, 255.0]), "x").tolist() == [0, 3, 255]


def test_nan_float_errors():
    with pytest.raises(XferlabError, match="x: pixel values contain NaN or infinity"):
        to_uint8(np.array([0.1, np.nan]), "x")


def test_floats_outside_accepted_ranges_error_with_range():
    with pytest.raises(XferlabError, match=r"range -1\.5\.\.3; accepted ranges are \[0, 1\] or \[0, 255\]"):
        to_uint8(np.array([-1.5, 3.0]), "x")


def test_non_numeric_dtype_errors():
    with pytest.raises(XferlabError, match="non-numeric dtype"):
        to_uint8(np.array(["a", "b"]), "x")


def test_float_conversion_is_chunked(monkeypatch):
    monkeypatch.setattr("xferlab.data.images._CHUNK_ELEMENTS", 16)
    a = np.linspace(0, 1, 10 * 4 * 4).reshape(10, 4, 4)
    np.testing.assert_array_equal(to_uint8(a, "x"), np.rint(a * 255).astype(np.uint8))


def test_resize_gray_and_rgb_batches():
    gray = np.random.default_rng(0).integers(0, 256, (2, 16, 12), dtype=np.uint8)
    rgb = np.random.default_rng(1).integers(0, 256, (2, 3, 16, 12), dtype=np.uint8)
    assert resize_images(gray, 8).shape == (2, 8, 8)
    out = resize_images(rgb, (8, 6))
    assert out.shape == (2, 3, 8, 6) and out.dtype == np.uint8


def test_resize_is_noop_at_same_size():
    gray = np.zeros((2, 8, 8), dtype=np.uint8)
    assert resize_images(gray, 8) is gray


def test_resize_antialiases_a_checkerboard_to_mid_gray():
    board = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
    small = resize_image(board, 4)
    assert abs(float(small.mean()) - 127.5) < 2 and small.std() < 2


def test_read_gray_png(tmp_path):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_image_file(tmp_path / "a.png")
    np.testing.assert_array_equal(out, pixels)


def test_read_rgba_png_becomes_3_channels(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (8, 10, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image_file(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgba[..., :3].transpose(2, 0, 1))


def test_read_gray_content_saved_as_rgb_stays_gray(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "a.jpg", quality=90)
    assert read_image_file(tmp_path / "a.jpg").shape == (8, 8)


def test_read_16bit_png_using_all_16_bits_scales_by_65535(tmp_path):
    Image.fromarray(np.array([[0, 65535], [257, 32896]], dtype=np.uint16)).save(tmp_path / "a.png")
    assert read_image_file(tmp_path / "a.png").tolist() == [[0, 255], [1, 128]]


def test_read_float_tiff_follows_float_rules(tmp_path):
    Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32)).save(tmp_path / "a.tif")
    assert read_image_file(tmp_path / "a.tif").tolist() == [[0, 255]]


def test_read_corrupt_file_names_it(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(XferlabError, match=r"bad\.png: cannot read image"):
        read_image_file(tmp_path / "bad.png")


def test_stack_mixed_sizes_without_image_size_lists_sizes_and_fix():
    images = [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), np.zeros((10, 12), np.uint8)]
    expected = r"8×8 \(2 images, e\.g\. a\); 10×12 \(1 image, e\.g\. c\).*--image-size S"
    with pytest.raises(XferlabError, match=expected):
        stack_images(images, "ds", names=["a", "b", "c"])


def test_stack_resizes_when_image_size_given():
    images = [np.zeros((8, 8), np.uint8), np.full((10, 12), 9, np.uint8)]
    out = stack_images(images, "ds", image_size=6)
    assert out.shape == (2, 6, 6) and out[1].min() == 9


def test_stack_mixed_gray_and_rgb_makes_all_rgb():
    gray = np.full((4, 4), 7, np.uint8)
    rgb = np.zeros((3, 4, 4), np.uint8)
    out = stack_images([gray, rgb], "ds")
    assert out.shape == (2, 3, 4, 4) and (out[0] == 7).all()


def test_check_file_sizes_fails_from_headers(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(XferlabError, match="images differ in size"):
        check_file_sizes([tmp_path / "a.png", tmp_path / "b.png"], "ds")


def test_concat_batches_names_both_files_on_size_mismatch():
    with pytest.raises(XferlabError, match=r"a\.npy holds 8×8 images but b\.npy holds 9×9.*--image-size"):
        concat_batches([np.zeros((2, 8, 8), np.uint8), np.zeros((2, 9, 9), np.uint8)], ["a.npy", "b.npy"], "ds")


# The real radiographs beside the repository (<repo root>/../shared/data), absent from a clone of the project alone.
KERMANY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kermany-sample"


def _draft_difference(path: Path, side: int) -> np.ndarray:
    """|full decode resized - draft decode resized| in grey levels, gray."""
    full, draft = (resize_image(read_image_file(path, size), side) for size in (None, side))
    gray = [im if im.ndim == 2 else im.mean(0) for im in (full, draft)]
    return np.abs(gray[0].astype(np.float64) - gray[1])


def test_a_large_jpeg_decodes_at_a_reduced_scale_to_the_same_pixels_after_resizing(tmp_path):
    from xferlab.data.images import DRAFT_MEAN_TOLERANCE, DRAFT_P999_TOLERANCE

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1200, 0:1600]
    image = 128 + 60 * np.sin(x / 90.0) * np.cos(y / 70.0) + rng.normal(0, 4, (1200, 1600))
    image[500:700, 200:260] = 250  # a hard-edged burned-in mark
    path = tmp_path / "large.jpg"
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
    with Image.open(path) as im:
        im.draft(im.mode, (448, 448))
        assert im.size == (800, 600)  # the DCT scale 1/2: still at least twice the target side
    diff = _draft_difference(path, 224)
    assert diff.mean() <= DRAFT_MEAN_TOLERANCE and np.percentile(diff, 99.9) <= DRAFT_P999_TOLERANCE
    assert read_image_file(path, 1000).shape == (1200, 1600)  # less than twice the target: decoded whole


@pytest.mark.skipif(not KERMANY.is_dir(), reason="needs ../shared/data/kermany-sample (real radiographs)")
def test_real_radiographs_decode_at_a_reduced_scale_within_the_stated_tolerance():
    from xferlab.data.images import DRAFT_MEAN_TOLERANCE, DRAFT_P999_TOLERANCE

    files = sorted(KERMANY.rglob("*.jpeg"))[::10]  # 30 of the 300: every size and both modes (L, RGB)
    diffs = np.concatenate([_draft_difference(f, 224).ravel() for f in files])
    assert len(files) >= 25
    assert diffs.mean() <= DRAFT_MEAN_TOLERANCE and np.percentile(diffs, 99.9) <= DRAFT_P999_TOLERANCE


def test_gray_levels_is_the_channel_mean_and_gray_passes_through():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    np.testing.assert_allclose(gray_levels(colour), colour.astype(np.float64).mean(axis=1), rtol=1e-6)
    assert gray_levels(colour).dtype == np.float32
    np.testing.assert_array_equal(gray_uint8(colour), np.round(colour.astype(np.float64).mean(axis=1)))
    gray = colour[:, 0]
    assert gray_uint8(gray) is gray
    np.testing.assert_array_equal(gray_levels(gray), gray)


def test_channels_first_reads_each_layout_once():
    nchw = np.zeros((2, 3, 5, 7), dtype=np.uint8)
    assert channels_first(nchw.transpose(0, 2, 3, 1), "x").shape == (2, 3, 5, 7)
    assert channels_first(nchw, "x") is nchw
    assert channels_first(np.zeros((2, 1, 5, 7)), "x").shape == (2, 5, 7)
    assert channels_first(np.zeros((2, 5, 7, 1)), "x").shape == (2, 5, 7)
    assert channels_first(np.zeros((5, 7, 3))[None], "x")[0].shape == (3, 5, 7)  # one image
    with pytest.raises(XferlabError, match="x: array shape .* is not images"):
        channels_first(np.zeros((2, 5, 7, 4)), "x")
