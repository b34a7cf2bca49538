"""Image "decompression bombs": small files whose header declares an image of hundreds of MB to GBs.

Each is written without ever holding its pixels: the compressed streams are fed zeros a chunk at a time.
  * `deflated_dicom`: Deflated Explicit VR Little Endian, 16384x16384 8-bit (268 MB of pixels, ~260 KB on disk);
  * `one_bit_png`: 13000x13000 1-bit grayscale (169 M pixels, ~20 KB), over Pillow's warning limit, under its error;
  * `rle_dicom`: RLE Lossless declaring 65535x65535 16-bit (8 GiB) with a few bytes of data (~900 bytes).
Used by tests/test_image_bombs.py, tests/test_app.py and benchmarks/image_bombs.py.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from . import dicom

CHUNK = 1 << 20


def _file_start(ds: Dataset) -> bytes:
    """Preamble, magic and file meta information."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    return fp.getvalue()


def _body(ds: Dataset) -> bytes:
    """The dataset's elements (no pixel data) in Explicit VR Little Endian."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def deflated_dicom(path: Path, side: int = 16384) -> Path:
    """A deflated DICOM of `side` x `side` 8-bit zeros."""
    ds = dicom.header(side, side, bits_stored=8, bits_allocated=8, transfer_syntax=DeflatedExplicitVRLittleEndian)
    n = side * side
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(_file_start(ds))
        f.write(z.compress(_body(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, n)))
        zeros = bytes(CHUNK)
        for start in range(0, n, CHUNK):
            f.write(z.compress(zeros[: min(CHUNK, n - start)]))
        f.write(z.flush())
    return path


def one_bit_png(path: Path, side: int = 13000) -> Path:
    """A `side` x `side` 1-bit grayscale PNG of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (side + 7) // 8)  # filter type 0, then the packed bits
    z = zlib.compressobj(9)
    idat = bytearray()
    for _ in range(side):
        idat += z.compress(row)
    idat += z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))
    return path


def rle_dicom(path: Path, side: int = 65535) -> Path:
    """An RLE Lossless DICOM declaring `side` x `side` 16-bit pixels, holding one tiny frame of RLE data."""
    ds = dicom.header(side, side, bits_stored=16, transfer_syntax=RLELossless)
    segment = bytes([0x81, 0])  # "repeat the next byte 128 times": nowhere near the declared size
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))  # two segments (high and low bytes)
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(path, enforce_file_format=True)
    return path
