"""Second fault suite, images: decompression bombs, multi-frame files, empty / truncated / mislabelled files, links
that loop or leave the dataset, FIFOs / devices / folders where an image should be, odd file names; and every Pillow
mode a user meets, decoded to the right pixels."""

from __future__ import annotations

import os
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from faultkit import TRAIN, png_folder
from PIL import Image

from xferlab.config import DataConfig
from xferlab.data.images import read_image_file, read_image_header
from xferlab.data.sources import load_dataset


@pytest.fixture
def no_hang():
    """A case that could block (FIFO, device) fails after 60 s instead of hanging the suite."""

    def alarm(signum, frame):
        raise TimeoutError("blocked reading a file")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _train(root: Path, fmt: str = "folder") -> list:
    return ["train", "--data", root, "--format", fmt, "--out", root.parent / "run", *TRAIN]


def _manifest(tmp_path: Path, extra: list[str]) -> Path:
    """A csv manifest over a valid png folder, plus `extra` rows (path,label)."""
    root = png_folder(tmp_path / "imgs")
    rows = [f"{p},{p.parent.name}" for p in sorted(root.rglob("*.png"))] + extra
    manifest = tmp_path / "data" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    return manifest


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A 16×16 PNG whose header claims width×height: what a decompression bomb's header looks like."""
    Image.new("L", (16, 16)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16: width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC covers its type and data
    path.write_bytes(bytes(data))
    return path


# ---- refused, one error line, nothing written ---------------------------------------------------------------------

def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, fails):
    root = png_folder(tmp_path / "data")
    bomb = _png_with_size(root / "train" / "a" / "bomb.png", 10_000, 10_000)  # below Pillow's own refusal
    fails(_train(root), tmp_path, "bomb.png", "decompression bomb", "10000×10000")
    with pytest.raises(Exception, match="decompression bomb"):  # the streaming scan reads headers only
        read_image_header(bomb)


def test_a_multi_page_tiff_is_refused(tmp_path, fails):
    root = png_folder(tmp_path / "data")
    pages = [Image.new("L", (16, 16), v) for v in (0, 100, 200)]
    pages[0].save(root / "train" / "a" / "scan.tif", save_all=True, append_images=pages[1:])
    fails(_train(root), tmp_path, "scan.tif", "3 pages")


def test_an_animated_gif_in_a_manifest_is_refused(tmp_path, fails):
    frames = [Image.new("L", (16, 16), v) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    manifest = _manifest(tmp_path, [f"{tmp_path / 'anim.gif'},a"])
    fails(_train(manifest, "csv"), tmp_path, "anim.gif", "2 pages or frames")


def test_a_zero_byte_file_is_named(tmp_path, fails):
    root = png_folder(tmp_path / "data")
    (root / "test" / "b" / "empty.png").write_bytes(b"")
    fails(_train(root), tmp_path, "empty.png", "empty file (0 bytes)")


def test_a_truncated_jpeg_is_named(tmp_path, fails):
    root = png_folder(tmp_path / "data")
    jpeg = root / "train" / "b" / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    fails(_train(root), tmp_path, "cut.jpg", "cannot read image")


def test_a_text_file_with_an_image_suffix_is_named(tmp_path, fails):
    root = png_folder(tmp_path / "data")
    (root / "train" / "a" / "notes.png").write_text("radiologist's notes, not an image\n")
    fails(_train(root), tmp_path, "notes.png", "cannot read image")


def test_a_symlink_loop_is_named_not_followed_forever(tmp_path, fails):
    root = png_folder(tmp_path / "data")
    os.symlink("loop.png", root / "train" / "a" / "loop.png")
    fails(_train(root), tmp_path, "loop.png", "symbolic links")


def test_a_link_leaving_the_dataset_is_refused_unless_allowed(tmp_path, fails):
    root = png_folder(tmp_path / "data")
    outside = tmp_path / "elsewhere.png"
    Image.new("L", (16, 16), 7).save(outside)
    os.symlink(outside, root / "train" / "a" / "linked.png")
    fails(_train(root), tmp_path, "linked.png", "outside the dataset folder", "allow_external_links")
    allowed = load_dataset(DataConfig(path=root, format="folder", allow_external_links=True))
    linked = allowed.meta["files"].index(str(root / "train" / "a" / "linked.png"))
    assert (allowed.images[linked] == 7).all()


def test_a_manifest_row_naming_a_fifo_never_blocks(tmp_path, fails, no_hang):
    os.mkfifo(tmp_path / "pipe.png")
    manifest = _manifest(tmp_path, [f"{tmp_path / 'pipe.png'},a"])
    fails(_train(manifest, "csv"), tmp_path, "m.csv, line 18", "pipe.png", "FIFO")


def test_a_fifo_inside_a_class_folder_never_blocks(tmp_path, fails, no_hang):
    root = png_folder(tmp_path / "data")
    os.mkfifo(root / "train" / "b" / "pipe.png")
    fails(_train(root), tmp_path, "pipe.png", "FIFO")


def test_a_manifest_row_naming_a_device_is_not_read(tmp_path, fails, no_hang):
    manifest = _manifest(tmp_path, ["/dev/zero,a"])
    fails(_train(manifest, "csv"), tmp_path, "/dev/zero", "a device")


def test_a_manifest_row_naming_a_folder_is_named(tmp_path, fails):
    (tmp_path / "adir.png").mkdir()
    manifest = _manifest(tmp_path, [f"{tmp_path / 'adir.png'},b"])
    fails(_train(manifest, "csv"), tmp_path, "adir.png", "a folder")


def test_an_over_long_path_in_a_manifest_is_named(tmp_path, fails):
    manifest = _manifest(tmp_path, ["x" * 5000 + ".png,a"])
    fails(_train(manifest, "csv"), tmp_path, "line 18", "File name too long")


def test_32_bit_pixels_beyond_16_bits_are_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 70_000, np.int32), mode="I").save(tmp_path / "wide.tif")
    with pytest.raises(Exception, match=r"wide\.tif: integer pixels range 70000\.\.70000, outside 0\.\.65535"):
        read_image_file(tmp_path / "wide.tif")


# ---- odd but valid: the right pixels ------------------------------------------------------------------------------

GRAY = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # 0..252


def _mode_file(tmp_path: Path, mode: str) -> tuple[Path, np.ndarray]:
    """A lossless file of Pillow mode `mode` and the uint8 pixels read_image_file must return for it."""
    rgb = np.stack([GRAY, 255 - GRAY, np.full_like(GRAY, 60)], -1)
    if mode == "1":
        image, want = Image.fromarray(GRAY > 127), np.where(GRAY > 127, 255, 0)
    elif mode == "L":
        image, want = Image.fromarray(GRAY), GRAY
    elif mode == "LA":
        image, want = Image.fromarray(np.stack([GRAY, 255 - GRAY], -1), mode="LA"), GRAY  # alpha dropped
    elif mode == "P":
        image, want = Image.fromarray(GRAY).convert("P"), GRAY  # a gray palette decodes gray
    elif mode == "P+transparency":
        image = Image.fromarray(rgb).quantize(colors=256)
        image.info["transparency"] = 0
        want = np.asarray(image.convert("RGB")).transpose(2, 0, 1)  # palette colours, transparency ignored
    elif mode == "RGB":
        image, want = Image.fromarray(rgb), rgb.transpose(2, 0, 1)
    elif mode == "RGBA":
        image, want = Image.fromarray(np.dstack([rgb, GRAY]), mode="RGBA"), rgb.transpose(2, 0, 1)
    elif mode == "CMYK":
        cmyk = np.stack([GRAY, 255 - GRAY, np.zeros_like(GRAY), np.full_like(GRAY, 40)], -1)
        image = Image.fromarray(cmyk, mode="CMYK")
        want = np.asarray(image.convert("RGB")).transpose(2, 0, 1)  # Pillow's CMYK -> RGB, the reference
        assert not (want[0] == want[1]).all()  # a colour image: it must not come back gray
    elif mode == "I;16":
        wide = GRAY.astype(np.uint16) * 257  # 0..64764: the full 16-bit range maps back to GRAY exactly
        image, want = Image.fromarray(wide), GRAY  # uint16 arrays become mode I;16
    elif mode == "I":
        image, want = Image.fromarray(GRAY.astype(np.int32) * 257, mode="I"), GRAY
    elif mode == "F":
        image, want = Image.fromarray(GRAY.astype(np.float32) / 255, mode="F"), GRAY
    path = tmp_path / f"{mode}.{'png' if mode in ('1', 'L', 'LA', 'P', 'P+transparency', 'RGB', 'RGBA') else 'tif'}"
    image.save(path)
    return path, np.asarray(want, dtype=np.uint8)


MODES = ("1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "I;16", "I", "F")


@pytest.mark.parametrize("mode", MODES)
def test_every_pillow_mode_decodes_to_the_right_pixels(tmp_path, mode):
    path, want = _mode_file(tmp_path, mode)
    with Image.open(path) as saved:  # the file really is of that mode (Pillow could have converted on save)
        assert saved.mode == mode.split("+")[0] or (mode == "I" and saved.mode.startswith("I"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning reaches the user
        got = read_image_file(path)
    np.testing.assert_array_equal(got, want)


def test_exif_orientation_is_applied_to_pixels_and_to_the_header_size(tmp_path):
    stored = np.zeros((16, 32), np.uint8)
    stored[:4, :4] = 255  # a mark in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    root = png_folder(tmp_path / "data", size=16)
    for p in root.rglob("*.png"):  # the other images are 32 wide × 16 high as displayed
        Image.fromarray(np.zeros((32, 16), np.uint8)).save(p)
    Image.fromarray(stored).save(root / "train" / "a" / "rotated.png", exif=exif.tobytes())
    got = read_image_file(root / "train" / "a" / "rotated.png")
    np.testing.assert_array_equal(got, np.rot90(stored, k=-1))  # clockwise: the mark moves to the top-right
    assert read_image_header(root / "train" / "a" / "rotated.png")[0] == (32, 16)
    ds = load_dataset(DataConfig(path=root, format="folder"))  # one displayed size, no --image-size needed
    assert ds.images.shape[-2:] == (32, 16)


def test_a_png_named_jpg_is_read_by_its_content(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / "really_png.jpg", format="PNG")
    np.testing.assert_array_equal(read_image_file(tmp_path / "really_png.jpg"), GRAY)  # lossless: not JPEG-decoded


def test_non_utf8_and_very_long_file_names_load(tmp_path, capsys):
    root = png_folder(tmp_path / "data", n=2)
    folder = os.fsencode(root / "train" / "a")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(os.fsdecode(folder + b"/caf\xe9-\xff.png"))
    long_name = "x" * 240 + ".png"  # within the usual 255-byte limit of a file name
    Image.fromarray(np.full((16, 16), 11, np.uint8)).save(root / "train" / "b" / long_name)
    ds = load_dataset(DataConfig(path=root, format="folder"))
    files = ds.meta["files"]
    assert (ds.images[files.index(os.fsdecode(folder + b"/caf\xe9-\xff.png"))] == 9).all()
    assert (ds.images[files.index(str(root / "train" / "b" / long_name))] == 11).all()
    # and a broken file with such a name is still one printable error line
    (root / "test" / "a" / os.fsdecode(b"bad-\xff.png")).write_bytes(b"\x89PNG broken")
    from xferlab.cli import main

    assert main([str(a) for a in _train(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad-" in err
