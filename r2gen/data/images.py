"""Chest X-ray files as 8-bit RGB images: PNG, JPEG (anything Pillow opens) and DICOM.

DICOM pixels go through the display pipeline a radiology viewer applies: the Modality LUT (rescale slope and
intercept), then the VOI LUT or the first window centre/width when the file has one, else a min-max stretch of the
actual pixel range; MONOCHROME1 (bright = air) is inverted so every image reads bright = dense. 12- and 16-bit
data are scaled to 0..255 from that range, not truncated (16-bit PNG/TIFF too: min-max of the pixel range).
A multi-frame file gives its first frame.

`image_problem` is the set-up check: it finds missing, truncated or undecodable files without decoding them.

Standalone (numpy, Pillow, pydicom only): `r2gen.export` copies this file into exported model folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = {".dcm", ".dicom"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def is_dicom(path: str | Path) -> bool:
    """By suffix; a file with another suffix (or none, as DICOM often has) by the `DICM` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in PIL_SUFFIXES:
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def load_image(path: str | Path) -> Image.Image:
    """The image at `path` as an RGB PIL image (grayscale repeated over three channels)."""
    if is_dicom(path):
        return Image.fromarray(dicom_to_uint8(path)).convert("RGB")
    with Image.open(path) as im:
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image as 8-bit RGB; 16-bit and float images (16-bit PNG/TIFF) min-max stretched over their own pixel range."""
    if im.mode in ("I", "I;16", "I;16B", "F"):  # Pillow's convert would clip at 255
        x = np.asarray(im, dtype=np.float64)
        return Image.fromarray(_stretch(x, x.min(), x.max())).convert("RGB")
    return im.convert("RGB")


def dicom_to_uint8(path: str | Path) -> np.ndarray:
    """First frame of a DICOM file as display-ready uint8: `[H, W]` (monochrome) or `[H, W, 3]` (colour)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, index=0)  # the first frame; only that one is decoded
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour (pydicom already converted YBR to RGB)
        return arr if arr.dtype == np.uint8 else _stretch(arr.astype(np.float64), arr.min(), arr.max())
    x = apply_modality_lut(arr, ds).astype(np.float64)
    if "VOILUTSequence" in ds:
        n, first, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        if bits == 8:  # pydicom 3.0 indexes an 8-bit LUT with uint8 indices, wrapping inputs above 255
            ds.VOILUTSequence[0].LUTDescriptor = [n, first, 16]
        x = apply_voi_lut(np.rint(x).astype(np.int64), ds)
        # the LUT's own output range (its nominal bit depth is often wider than the values it holds)
        lut = apply_voi_lut(np.arange(first, first + (n or 2**16), dtype=np.int64), ds)
        lo, hi = lut.min(), lut.max()
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        x = apply_voi_lut(x, ds)
        # pydicom maps the window onto an output range that depends on bit depth and rescale; values far outside
        # the window land exactly on its ends, so send -inf and +inf through the same transform to read them
        lo, hi = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
    else:
        lo, hi = x.min(), x.max()
    img = _stretch(x, lo, hi)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        img = 255 - img
    return img


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo -> 0 and hi -> 255 linearly, clipping outside (hi < lo, from a negative rescale slope, is fine;
    lo == hi, a constant image, becomes black)."""
    scale = 255.0 / (hi - lo) if hi != lo else 0.0
    return np.clip(np.rint((x - lo) * scale), 0, 255).astype(np.uint8)


def image_problem(path: str | Path) -> str | None:
    """Why `path` would fail to load (missing, truncated, not an image, no DICOM decoder), or None if it is fine.

    Cheap by design, as it runs over every image at set-up: no pixel decoding. PNG: Pillow's `verify()` walks
    every chunk and checks its CRC (catches truncation and corruption). JPEG: the header parses and the file ends
    with the end-of-image marker (a cut-off JPEG does not; Pillow's verify() checks nothing for JPEG). DICOM: the
    whole dataset is parsed (pixel bytes read, not decoded), the pixel data must be as long as rows x columns x
    frames say, and a compressed transfer syntax must have a decoder installed.
    """
    path = Path(path)
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        if is_dicom(path):
            return _dicom_problem(path)
        with Image.open(path) as im:
            im.verify()
            fmt = im.format
        if fmt in ("JPEG", "MPO"):  # by content: a PNG named .jpg is checked as the PNG it is
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 1024))
                if b"\xff\xd9" not in f.read():  # trailing padding after the marker is tolerated
                    return "truncated JPEG (no end-of-image marker)"
    except Exception as e:  # Pillow raises SyntaxError, OSError, struct.error ... for a broken file
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def _dicom_problem(path: Path) -> str | None:
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import get_expected_length

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        return "DICOM file without pixel data"
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        decoder = get_decoder(ts)
        if not decoder.is_available:
            return f"no decoder for {ts.name} installed (one of: {'; '.join(decoder.missing_dependencies)})"
    elif len(ds.PixelData) < get_expected_length(ds):
        return f"truncated DICOM pixel data ({len(ds.PixelData)} of {get_expected_length(ds)} bytes)"
    return None
