"""Writing DICOM files: the one header builder behind the tests' images and the image bombs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

RAMP = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (32, 1))  # [32, 64], the full 12-bit range


def header(rows: int, cols: int, photometric: str = "MONOCHROME2", bits_stored: int = 12, bits_allocated: int = 16,
           transfer_syntax: UID = ExplicitVRLittleEndian) -> Dataset:
    """A single-sample secondary-capture dataset with its file meta and pixel description, but no pixel data
    (`write_dicom` adds the pixels; the bombs stream or encapsulate their own)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "anon"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    return ds


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                **tags) -> Path:
    """A minimal valid DICOM file (Explicit VR Little Endian, 16 bits allocated); `pixels` [H, W] or [F, H, W]."""
    ds = header(*pixels.shape[-2:], photometric=photometric, bits_stored=bits_stored)
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
