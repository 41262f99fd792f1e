"""Hospital image files (xferlab.data.hospital): 12/16-bit PNG/TIFF scaling and DICOM, written by the tests or shipped
with pydicom's wheel (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hospitalfiles import save_png16, write_dicom
from xferlab.config import DataConfig
from xferlab.data.hospital import bits_for_max, png_significant_bits
from xferlab.data.images import check_file_sizes, read_image_file, read_image_header
from xferlab.data.sources import load_dataset
from xferlab.errors import XferlabError

pydicom = pytest.importorskip("pydicom")  # the dicom extra is installed by `make test`

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in the wheel; get_testdata_file
# would try to download files that are not


RAMP12 = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)  # every 16th 12-bit value


# ---- 16-bit PNG / TIFF ------------------------------------------------------------------------------------------


def test_12bit_png_with_sbit_matches_8bit_within_one(tmp_path):
    data = np.random.default_rng(0).integers(0, 4096, (24, 24))
    save_png16(tmp_path / "a12.png", data, sbit=12)
    Image.fromarray((data >> 4).astype(np.uint8)).save(tmp_path / "a8.png")  # the same image saved in 8 bits
    assert png_significant_bits(tmp_path / "a12.png") == 12
    wide, narrow = read_image_file(tmp_path / "a12.png"), read_image_file(tmp_path / "a8.png")
    assert wide.dtype == np.uint8 and wide.max() > 240  # not the old 4095/65535 -> 16
    assert np.abs(wide.astype(int) - narrow.astype(int)).max() <= 1


def test_16bit_png_without_sbit_uses_smallest_depth_at_or_above_max(tmp_path):
    save_png16(tmp_path / "a.png", RAMP12)  # max 4080 -> 12 bits
    assert png_significant_bits(tmp_path / "a.png") is None
    expected = np.rint(RAMP12 * (255 / 4095)).astype(np.uint8)
    assert np.array_equal(read_image_file(tmp_path / "a.png"), expected)
    assert [bits_for_max(v) for v in (200, 1000, 1500, 4095, 4096, 16000, 65535)] == [8, 10, 12, 12, 14, 14, 16]


def test_sbit_smaller_than_the_data_falls_back_to_the_data(tmp_path, caplog):
    save_png16(tmp_path / "a.png", RAMP12, sbit=10)  # lies: values reach 4080
    out = read_image_file(tmp_path / "a.png")
    assert out.max() == 254 and "declares 10 significant bits" in caplog.text


def test_16bit_tiff_max_sample_value_sets_the_depth(tmp_path):
    dark = (RAMP12 // 4).astype(np.uint16)  # a dark 12-bit image: max 1020 would otherwise read as 10-bit
    Image.fromarray(dark).save(tmp_path / "a.tif", tiffinfo={281: 4095})
    assert np.array_equal(read_image_file(tmp_path / "a.tif"), np.rint(dark * (255 / 4095)).astype(np.uint8))


def test_folder_of_12bit_pngs_loads_as_its_8bit_copy(tmp_path):
    rng = np.random.default_rng(1)
    for bits, root in ((12, tmp_path / "wide"), (8, tmp_path / "narrow")):
        rng = np.random.default_rng(1)
        for split in ("train", "test"):
            for k, name in enumerate(("a", "b")):
                (root / split / name).mkdir(parents=True)
                for i in range(3):
                    data = rng.integers(0, 2048, (16, 16)) + 2047 * k
                    path = root / split / name / f"{i}.png"
                    save_png16(path, data, sbit=12) if bits == 12 else Image.fromarray(
                        (data >> 4).astype(np.uint8)).save(path)
    wide = load_dataset(DataConfig(path=tmp_path / "wide", format="folder"))
    narrow = load_dataset(DataConfig(path=tmp_path / "narrow", format="folder"))
    assert wide.labels.tolist() == narrow.labels.tolist()
    assert np.abs(wide.images.astype(int) - narrow.images.astype(int)).max() <= 1


# ---- DICOM written here -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [12, 16])
def test_dicom_monochrome2_scales_by_bits_stored(tmp_path, bits):
    data = (RAMP12.astype(np.int64) * (2 ** (bits - 12))).clip(0, 2**bits - 1)
    out = read_image_file(write_dicom(tmp_path / "a.dcm", data, bits))
    assert np.array_equal(out, np.rint(data * (255 / (2**bits - 1))).astype(np.uint8))


def test_dicom_monochrome1_is_inverted(tmp_path):
    two = read_image_file(write_dicom(tmp_path / "a.dcm", RAMP12, 12))
    one = read_image_file(write_dicom(tmp_path / "b.dcm", RAMP12, 12, photometric="MONOCHROME1"))
    assert np.array_equal(one, 255 - two)


def _windowed(x: np.ndarray, center: float, width: float, full: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear window onto 0..full, then to 0..255 (written out independently of pydicom)."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * full
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0, np.where(x > center - 0.5 + (width - 1) / 2, full, y))
    return np.rint(y * 255 / full)


def test_dicom_window_then_monochrome1_inversion(tmp_path):
    center, width = 2048.0, 1024.0
    two = read_image_file(write_dicom(tmp_path / "a.dcm", RAMP12, 12, window=(center, width)))
    one = read_image_file(write_dicom(tmp_path / "b.dcm", RAMP12, 12, "MONOCHROME1", window=(center, width)))
    expected = _windowed(RAMP12.astype(float), center, width, 4095)
    assert np.abs(two.astype(int) - expected).max() <= 1
    assert two[0, 0] == 0 and two[-1, -1] == 255  # below / above the window
    # inverted after the window: dark below the window in MONOCHROME2 is bright in MONOCHROME1 (inverting the stored
    # values first and windowing after would give 0 here)
    assert np.array_equal(one, 255 - two) and one[0, 0] == 255


def test_dicom_rescale_slope_intercept_is_applied_before_scaling(tmp_path):
    out = read_image_file(write_dicom(tmp_path / "a.dcm", RAMP12, 12, rescale=(2.0, -1024.0)))
    lo, hi = -1024.0, 4095 * 2.0 - 1024  # the modality range the stored range maps to
    expected = np.rint((RAMP12 * 2.0 - 1024 - lo) * 255 / (hi - lo))
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_dicom_multiframe_is_refused(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.stack([RAMP12, RAMP12]), 12, frames=2)
    with pytest.raises(XferlabError, match=r"a\.dcm: multi-frame DICOM \(2 frames\)"):
        read_image_file(path)


def test_dicom_header_and_suffixless_file(tmp_path):
    path = write_dicom(tmp_path / "IM0001", RAMP12[:8], 12)  # PACS exports often have no suffix
    assert read_image_header(path) == ((8, 16), False)
    assert read_image_file(path).shape == (8, 16)


def test_damaged_dicom_names_the_file(tmp_path):
    whole = write_dicom(tmp_path / "a.dcm", RAMP12, 12).read_bytes()
    (tmp_path / "bad.dcm").write_bytes(whole[: len(whole) - 200])  # pixel data cut short
    with pytest.raises(XferlabError, match=r"bad\.dcm: cannot"):
        read_image_file(tmp_path / "bad.dcm")


def test_folder_source_reads_dicoms(tmp_path):
    for split in ("train", "test"):
        for k, name in enumerate(("normal", "pneumonia")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                write_dicom(tmp_path / split / name / f"{i}.dcm", RAMP12 // (k + 1), 12)
    write_dicom(tmp_path / "train" / "normal" / "odd.dcm", RAMP12[:8], 12)
    with pytest.raises(XferlabError, match=r"16×16 .*8×16 \(1 image, e\.g\. .*odd\.dcm"):
        check_file_sizes(sorted(tmp_path.rglob("*.dcm")), "data")
    ds = load_dataset(DataConfig(path=tmp_path, format="folder", image_size=16))
    assert ds.images.shape == (13, 16, 16) and ds.class_names == ["normal", "pneumonia"]


# ---- DICOM shipped with pydicom ---------------------------------------------------------------------------------


def test_pydicom_ct_with_rescale_and_mr_with_window():
    ct = read_image_file(PYDICOM_FILES / "CT_small.dcm")  # signed 16-bit, rescale slope/intercept
    mr = read_image_file(PYDICOM_FILES / "MR_small.dcm")  # window centre/width
    assert ct.shape == (128, 128) and ct.dtype == np.uint8 and ct.std() > 1
    stored = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    expected = _windowed(stored.pixel_array.astype(float), float(stored.WindowCenter), float(stored.WindowWidth),
                         2.0**16 - 1)  # signed 16-bit: windowing maps onto the whole int16 range
    assert mr.shape == (64, 64) and np.abs(mr.astype(int) - expected).max() <= 1 and mr.std() > 10


def test_pydicom_rle_decodes_to_the_uncompressed_pixels():
    assert np.array_equal(read_image_file(PYDICOM_FILES / "MR_small_RLE.dcm"),
                          read_image_file(PYDICOM_FILES / "MR_small.dcm"))


def test_pydicom_multiframe_refused():
    with pytest.raises(XferlabError, match="multi-frame DICOM"):
        read_image_file(PYDICOM_FILES / "rtdose.dcm")


def test_compressed_without_decoder_names_the_package():
    path = PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"
    try:
        pixels = read_image_file(path)
    except XferlabError as err:  # no JPEG-LS plugin installed (the dicom extra installs none)
        assert "JPEG-LS Lossless" in str(err) and ("pyjpegls" in str(err) or "pylibjpeg-libjpeg" in str(err))
    else:  # a decoder is installed: then it decodes losslessly
        assert np.array_equal(pixels, read_image_file(PYDICOM_FILES / "MR_small.dcm"))
