"""The files hospitals hand out: 12/16-bit grayscale scaled by the bits actually used, and DICOM via pydicom.

Two rules (docs/data.md, "Hospital image files"):
- Wide integer pixels (16-bit PNG/TIFF) map to 0..255 by 255 / (2^bits - 1), with `bits` from the file when it says
  (PNG sBIT chunk, TIFF MaxSampleValue) and otherwise the smallest common detector depth (8, 10, 12, 14, 16 bits)
  whose maximum is at or above the image's maximum. A 12-bit radiograph (0..4095) in a 16-bit container thus fills
  0..255 instead of 0..16.
- DICOM follows the display pipeline: modality LUT (rescale slope/intercept) -> VOI LUT or window -> 0..255 over the
  range pydicom's windowing maps into -> MONOCHROME1 inverted last. Multi-frame files are refused.

images.py calls into this module; it imports nothing from images.py (no cycle).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from xferlab import extras
from xferlab.errors import XferlabError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_DICOM_MAGIC_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then b"DICM"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Detector depths seen in radiography (DR panels: 10-16 bits, CR: 10-12): an image without a declared depth gets the
# smallest of these that holds its maximum. Odd depths are left out so a dark 12-bit image (max 1500) is not
# stretched as 11-bit.
_COMMON_DEPTHS = (8, 10, 12, 14, 16)
_TIFF_MAX_SAMPLE_VALUE = 281  # TIFF 6.0 tag MaxSampleValue
# Decompression-bomb guard for every format, checked on the header before any pixel is decoded: 8192×8192 is twice
# the side of the largest digital chest radiographs (about 4300×3500 px, 43×35 cm at 100 µm); 192 MiB as RGB.
MAX_IMAGE_PIXELS = 8192 * 8192


# ---- wide integer pixels --------------------------------------------------------------------------------------------


def png_significant_bits(path: str | os.PathLike) -> int | None:
    """Bits per sample a PNG declares in its sBIT chunk (the largest over its channels), or None without one.

    Pillow does not expose sBIT, so the chunks before the first IDAT are walked here (PNG spec 11.3.3.4); CRCs are
    checked, so a damaged chunk is ignored rather than trusted.
    """
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                return None
            data, crc = f.read(length), f.read(4)
            if kind == b"sBIT":
                if len(crc) < 4 or zlib.crc32(kind + data) != struct.unpack(">I", crc)[0] or not data:
                    return None
                return max(data)


def declared_bits(image: Image.Image, path: str | os.PathLike | None) -> int | None:
    """The bits per sample a 16-bit file says it uses: PNG sBIT, TIFF MaxSampleValue; None when it says nothing
    (or, for a PNG, when its file is not known)."""
    if image.format == "PNG" and path is not None:
        return png_significant_bits(path)
    if image.format == "TIFF":
        max_value = getattr(image, "tag_v2", {}).get(_TIFF_MAX_SAMPLE_VALUE)
        if isinstance(max_value, tuple):
            max_value = max(max_value)
        if max_value:
            return max(1, int(max_value).bit_length())
    return None


def bits_for_max(max_value: int) -> int:
    """The smallest common detector depth whose full scale is at or above `max_value` (16 for anything larger)."""
    for bits in _COMMON_DEPTHS:
        if max_value <= 2**bits - 1:
            return bits
    return 16


def wide_to_uint8(pixels: np.ndarray, bits: int | None, where: str) -> np.ndarray:
    """Integer pixels in 0..65535 -> uint8 by 255 / (2^bits - 1); `bits` None: bits_for_max of the image.

    Pixels above a declared depth (a wrong sBIT) fall back to the image's own depth, with a warning.
    """
    pixels = np.asarray(pixels)
    lo, hi = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise XferlabError(f"{where}: integer pixels range {lo}..{hi}, outside 0..65535; re-export as 8 or 16 bit")
    if bits is not None and hi > 2**bits - 1:
        log.warning("%s: declares %d significant bits but holds values up to %d; scaling by the values instead",
                    where, bits, hi)
        bits = None
    full_scale = 2 ** (bits if bits is not None else bits_for_max(hi)) - 1
    return np.rint(pixels.astype(np.float32) * np.float32(255.0 / full_scale)).astype(np.uint8)


# ---- DICOM ----------------------------------------------------------------------------------------------------------


def is_dicom(path: str | os.PathLike) -> bool:
    """A .dcm/.dicom file, or a suffix-less file with the DICM marker (how PACS exports often name them)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _pydicom():
    return extras.require("pydicom", "dicom", "reading DICOM files")


def _read_dataset(path: str | os.PathLike, header_only: bool):
    pydicom = _pydicom()
    where = str(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    except FileNotFoundError:
        raise XferlabError(f"{where}: DICOM file not found; check the path") from None
    except Exception as err:  # InvalidDicomError, EOFError, struct.error, ... on damaged files
        raise XferlabError(f"{where}: cannot read DICOM ({type(err).__name__}: {err}); replace or remove the file") \
            from None
    if not header_only and "PixelData" not in ds:
        raise XferlabError(f"{where}: DICOM holds no image (SOP class {ds.get('SOPClassUID', '?')}); "
                           "give image files only")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise XferlabError(f"{where}: multi-frame DICOM ({frames} frames) is not supported; export the frame to "
                           "classify as a single-frame file")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_IMAGE_PIXELS:
        raise XferlabError(f"{where}: {rows}×{cols} pixels exceed the limit of {MAX_IMAGE_PIXELS:,}; downsample the "
                           "image")
    return ds


def dicom_header(path: str | os.PathLike) -> tuple[tuple[int, int], bool]:
    """(H, W) and whether the image is colour, from the DICOM header alone."""
    ds = _read_dataset(path, header_only=True)
    return (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)), int(ds.get("SamplesPerPixel", 1)) == 3


def _stored_pixels(ds, where: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises RuntimeError/ValueError/NotImplementedError alike
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is not None and syntax.is_compressed:
            # pydicom's own message lists the plugins that can decode this syntax and their packages
            needs = " ".join(str(err).split())
            raise XferlabError(f"{where}: pixel data compressed as '{syntax.name}' and no installed decoder reads it; "
                               f"install one of the packages pydicom names ({needs})") from None
        raise XferlabError(f"{where}: cannot decode DICOM pixel data ({type(err).__name__}: {err}); "
                           "replace or remove the file") from None


def _modality_range(ds) -> tuple[float, float]:
    """The range modality-LUT output can take: where pydicom's windowing maps into (pixels.processing.apply_windowing),
    so windowed and unwindowed images are scaled to 0..255 the same way."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    lo, hi = (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return float(min(lo, hi)), float(max(lo, hi))


def _display_values(ds, stored: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Modality LUT, then the VOI LUT or window when present: (values, and the range they lie in)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(stored, ds)
    lo, hi = _modality_range(ds)
    if ds.get("VOILUTSequence"):
        values = apply_voi_lut(values, ds, prefer_lut=True)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values = apply_voi_lut(values, ds, prefer_lut=False)  # output spans (lo, hi): see _modality_range
    return values, lo, hi


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Decode one single-frame DICOM into uint8 H×W (monochrome) or 3×H×W (RGB).

    Monochrome: modality LUT -> VOI LUT or window (the first one when several) -> linear map of the range those
    produce onto 0..255 -> MONOCHROME1 inverted. Colour (RGB, YBR decoded to RGB by pydicom): 8-bit as is, wider by
    BitsStored.
    """
    where = str(path)
    ds = _read_dataset(path, header_only=False)
    stored = _stored_pixels(ds, where)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        bits = int(ds.get("BitsStored", 8))
        rgb = stored if stored.dtype == np.uint8 else wide_to_uint8(stored, bits, where)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise XferlabError(f"{where}: photometric interpretation {photometric} is not supported; "
                           "export the image as MONOCHROME2 or RGB")
    values, lo, hi = _display_values(ds, stored)
    scaled = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return 255 - out if photometric == "MONOCHROME1" else out
