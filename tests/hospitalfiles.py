"""Hospital image files for tests, written here (importable from any test module): 16-bit PNGs with an sBIT chunk
and uncompressed DICOMs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def save_png16(path: Path, pixels: np.ndarray, sbit: int | None = None) -> Path:
    """A 16-bit grayscale PNG, with an sBIT chunk after IHDR when `sbit` is given (Pillow cannot write one)."""
    Image.fromarray(pixels.astype(np.uint16)).save(path)
    if sbit is not None:
        raw = path.read_bytes()
        end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
        chunk = struct.pack(">I", 1) + b"sBIT" + bytes([sbit]) + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([sbit])))
        path.write_bytes(raw[:end_of_ihdr] + chunk + raw[end_of_ihdr:])
    return path


def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                frames: int = 1, patient_id: str | None = None) -> Path:
    """An uncompressed single-sample DICOM with 16-bit containers holding `bits_stored` bits (and a PatientID when
    `patient_id` is given)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if patient_id is not None:
        ds.PatientID = patient_id
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
