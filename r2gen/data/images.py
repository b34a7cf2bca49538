"""Chest X-ray files as 8-bit RGB images: PNG, JPEG (anything Pillow opens) and DICOM, each read within a pixel
budget.

DICOM pixels go through the display pipeline a radiology viewer applies: the Modality LUT (rescale slope and
intercept), then the VOI LUT or the first window centre/width when the file has one, else a min-max stretch of the
actual pixel range; MONOCHROME1 (bright = air) is inverted so every image reads bright = dense. 12- and 16-bit
data are scaled to 0..255 from that range, not truncated (16-bit PNG/TIFF too: min-max of the pixel range).
A multi-frame file gives its first frame.

The budget (`max_pixels`: width x height x frames, `data.max_image_pixels` in r2gen's config; None: Pillow's own
`Image.MAX_IMAGE_PIXELS`) is checked from the header before a pixel is decoded, so a small file that declares a
huge image (a "decompression bomb") is refused in milliseconds, with `ImageTooLarge` naming its size: Pillow's open
is lazy (`im.size` before `load()`); a DICOM header is read without its pixel data, and a deflated one (Deflated
Explicit VR Little Endian, which pydicom would inflate whole first) is inflated only as far as its header, then no
further than its declared pixels. Compressed DICOM pixel data (RLE, JPEG) is decoded only for images within the
budget, one frame, and the display pipeline works through it a stripe of rows at a time (pydicom's LUT functions
compute in float64), so an admitted image costs a few bytes a pixel. A decoder's failure says its reason, not
pydicom's "exceptions were raised by all available plugins".

`image_problem` is the set-up check: it finds missing, truncated, undecodable and over-budget files without
decoding them.

Standalone: this file is copied verbatim into every exported model folder (r2gen.export.exporter.EXPORTED), which
runs without r2gen, so it imports only the standard library, torch, torchvision, timm, transformers, numpy, Pillow,
pydicom and the other exported files (relatively), and r2gen (its error types, another exported file) only inside
`try: ... except ImportError:` with a fallback; tests/test_export.py::test_the_exported_files_are_standalone keeps
it so.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = {".dcm", ".dicom"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
IMAGE_SUFFIXES = PIL_SUFFIXES | DICOM_SUFFIXES  # what r2gen reads as an image
BUDGET_KEY = "data.max_image_pixels"  # the config key a refusal names
STRIPE = 1 << 18  # pixels per stripe through the display pipeline: its float64 work costs 2 MB, whatever the size
HEADER_MAX = 16 << 20  # bytes of a deflated DICOM inflated at most to find its header (they are a few KB)
PIL_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}  # else 8 bits a band


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the budget (or a deflated DICOM that inflates past what
    its header declares); `reason` is the message without the file's name."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def is_dicom(path: str | Path) -> bool:
    """By suffix; a file with another suffix (or none, as DICOM often has) by the `DICM` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in PIL_SUFFIXES:
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """The image at `path` as an RGB PIL image (grayscale repeated over three channels); `ImageTooLarge` when its
    header declares more than `max_pixels` pixels (None: Pillow's limit)."""
    if is_dicom(path):
        return Image.fromarray(dicom_to_uint8(path, max_pixels)).convert("RGB")
    with open_pil(path, max_pixels) as im:
        return to_rgb(im)


def open_pil(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """`Image.open(path)` (lazy: the header only), refused with `ImageTooLarge` when the image it declares is over
    the budget. Pillow's own check (`Image.MAX_IMAGE_PIXELS`) runs first and refuses past twice its limit."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(path, f"{e} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS, applies whatever "
                                  f"{BUDGET_KEY} says)") from None
    w, h = im.size
    bits = PIL_BITS.get(im.mode, 8 * len(im.getbands()))
    reason = budget_problem(f"{w}x{h}", w * h, bits, w * h * max(1, bits // 8), max_pixels)
    if reason:
        im.close()
        raise ImageTooLarge(path, reason)
    return im


def read_size(path: str | Path, max_pixels: int | None = None) -> None:
    """Read `path`'s header only: `ImageTooLarge` when it declares more than `max_pixels` pixels (and whatever
    its reader raises for a header that does not parse)."""
    if is_dicom(path):
        read_dicom(path, max_pixels, pixels=False)
    else:
        open_pil(path, max_pixels).close()


def budget(max_pixels: int | None) -> int | None:
    """The pixel budget in force: `max_pixels`, or Pillow's limit when None (None when that is off too)."""
    return Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels


def budget_problem(dims: str, pixels: int, bits: int, nbytes: int, max_pixels: int | None) -> str | None:
    """Why an image of `pixels` pixels (`dims`, `bits` a pixel, `nbytes` decoded) is refused, or None."""
    limit = budget(max_pixels)
    if limit is None or pixels <= limit:
        return None
    return (f"{dims} pixels, {bits} bit = {size_text(nbytes)} decoded: over the pixel budget {BUDGET_KEY}="
            f"{limit}; if it is a real image, set {BUDGET_KEY}={pixels} (or more) to read it")


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image as 8-bit RGB; 16-bit and float images (16-bit PNG/TIFF) min-max stretched over their own pixel range."""
    if im.mode in ("I", "I;16", "I;16B", "F"):  # Pillow's convert would clip at 255
        x = np.asarray(im)
        return Image.fromarray(stretched(x, x.min(), x.max())).convert("RGB")
    return im.convert("RGB")


# --- DICOM -----------------------------------------------------------------------------------------------------
def dicom_to_uint8(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """First frame of a DICOM file as display-ready uint8: `[H, W]` (monochrome) or `[H, W, 3]` (colour);
    `ImageTooLarge` when its header declares more than `max_pixels` pixels."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds, arr = read_dicom(path, max_pixels, pixels=True)
    if arr is None:
        raise ValueError(f"{path}: DICOM file without pixel data")
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour (pydicom already converted YBR to RGB)
        return arr if arr.dtype == np.uint8 else stretched(arr, arr.min(), arr.max())
    modality = lambda a: apply_modality_lut(a, ds)  # noqa: E731 - elementwise, so it may run stripe by stripe
    if "VOILUTSequence" in ds:
        n, first, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
        if bits == 8:  # pydicom 3.0 indexes an 8-bit LUT with uint8 indices, wrapping inputs above 255
            ds.VOILUTSequence[0].LUTDescriptor = [n, first, 16]
        display = lambda a: apply_voi_lut(np.rint(modality(a)).astype(np.int64), ds)  # noqa: E731
        # the LUT's own output range (its nominal bit depth is often wider than the values it holds)
        lut = apply_voi_lut(np.arange(first, first + (n or 2**16), dtype=np.int64), ds)
        lo, hi = lut.min(), lut.max()
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        display = lambda a: apply_voi_lut(modality(a), ds)  # noqa: E731
        # pydicom maps the window onto an output range that depends on bit depth and rescale; values far outside
        # the window land exactly on its ends, so send -inf and +inf through the same transform to read them
        lo, hi = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
    else:
        display = modality
        ranges = [(x.min(), x.max()) for x in map(modality, stripes(arr))]
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    img = stretched(arr, lo, hi, display)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        img = 255 - img
    return img


def stripes(arr: np.ndarray):
    """`arr` [H, W, ...] a few rows at a time (views, no copies)."""
    rows = max(1, STRIPE // max(1, int(np.prod(arr.shape[1:]))))
    for i in range(0, len(arr), rows):
        yield arr[i : i + rows]


def stretched(arr: np.ndarray, lo: float, hi: float, f=None) -> np.ndarray:
    """`f(arr)` (elementwise; identity without `f`) mapped lo -> 0 and hi -> 255 as uint8, a stripe of rows at a
    time, so the float64 numpy and pydicom compute in is never the size of the image."""
    out = np.empty(arr.shape, dtype=np.uint8)
    i = 0
    for s in stripes(arr):
        out[i : i + len(s)] = _stretch(s if f is None else f(s), lo, hi)
        i += len(s)
    return out


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo -> 0 and hi -> 255 linearly, clipping outside (hi < lo, from a negative rescale slope, is fine;
    lo == hi, a constant image, becomes black)."""
    scale = 255.0 / (float(hi) - float(lo)) if hi != lo else 0.0
    return np.clip(np.rint((x - float(lo)) * scale), 0, 255).astype(np.uint8)


def read_dicom(path: str | Path, max_pixels: int | None, pixels: bool):
    """(dataset without its pixel data, first frame's pixels or None), the header checked against the budget
    before any pixel is read. `ImageTooLarge` when it is over; a decoder's failure as a ValueError saying why."""
    import pydicom
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    if meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return read_deflated(path, max_pixels, pixels)[:2]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    check_dicom_budget(path, ds, max_pixels)
    if not pixels:
        return ds, None
    from pydicom.pixels import pixel_array

    return ds, decoded(lambda: pixel_array(str(path), index=0), ds)  # only the first frame is read and decoded


def check_dicom_budget(path, ds, max_pixels: int | None) -> int:
    """The pixel data's declared size in bytes; `ImageTooLarge` when its pixels are over the budget."""
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 8)
    nbytes = rows * cols * frames * samples * -(-bits // 8)
    dims = f"{rows}x{cols}" + (f"x{frames} frames" if frames > 1 else "") + (f"x{samples}" if samples > 1 else "")
    reason = budget_problem(dims, rows * cols * frames, bits, nbytes, max_pixels)
    if reason:
        raise ImageTooLarge(path, reason)
    return nbytes


def decoded(decode, ds) -> np.ndarray:
    """`decode()`, its failure in pydicom's plugin chain ("Unable to decode as exceptions were raised by all
    available plugins:" and one line per plugin) told as the plugins' reasons in one line."""
    try:
        return decode()
    except RuntimeError as e:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        if not lines or not lines[0].startswith("Unable to decode"):
            raise
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        what = f"{ts.name} pixel data" if ts is not None else "the pixel data"
        raise ValueError(f"cannot decode {what}: {'; '.join(lines[1:]) or lines[0]}") from None


class Inflater:
    """The deflated dataset after a DICOM file's meta information, inflated on demand and never past a limit."""

    def __init__(self, f):
        self.f, self.z = f, zlib.decompressobj(-zlib.MAX_WBITS)
        self.out, self.total, self.eof = bytearray(), 0, False  # bytes kept, bytes inflated, at the end

    def grow(self, n: int, keep: bool = True) -> int:
        """Inflate until `n` bytes are out (or the stream ends); with `keep=False` they are counted, not kept.
        Returns the bytes inflated so far."""
        while self.total < n and not self.eof:
            data = self.z.unconsumed_tail or self.f.read(1 << 16)
            if not data:
                self.eof = True
                break
            chunk = self.z.decompress(data, min(n - self.total, 1 << 20))
            self.total += len(chunk)
            if keep:
                self.out += chunk
            self.eof = self.z.eof
        return self.total


def read_deflated(path, max_pixels: int | None, pixels: bool):
    """`read_dicom` for Deflated Explicit VR Little Endian, plus the bytes of pixel data the file holds (None:
    no pixel data). The header is parsed from as few inflated bytes as it needs; the rest is inflated (counted,
    or kept when `pixels`) only up to what the header declares."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    with open(path, "rb") as f:
        read_preamble(f, False)
        meta = _read_file_meta_info(f)
        z = Inflater(f)
        where: dict[str, int] = {}  # where the pixel data's value starts in the inflated bytes

        def at_pixels(tag, vr, length) -> bool:
            if tag == 0x7FE00010:
                where["value"] = buf.tell()
            return tag >= 0x7FE00010

        n, ds = 1 << 16, None
        while True:  # 64 KiB, 256 KiB, ... until the header is whole
            z.grow(n)
            buf = DicomBytesIO(bytes(z.out))
            try:
                ds = read_dataset(buf, is_implicit_VR=False, is_little_endian=True, stop_when=at_pixels)
            except (EOFError, OSError, ValueError):  # the prefix ends inside an element: inflate more
                ds = None
            if "value" in where or z.eof or n >= HEADER_MAX:
                break
            n *= 4
        if "value" not in where and not z.eof:  # stopped at HEADER_MAX
            raise ImageTooLarge(path, f"a deflated DICOM whose header inflates past {size_text(HEADER_MAX)} "
                                      f"without reaching its pixel data: not a real image")
        if ds is None:
            raise ValueError("no DICOM dataset in the deflated data")
        ds.file_meta = meta
        nbytes = check_dicom_budget(path, ds, max_pixels)
        if "value" not in where:
            return ds, None, None
        # the whole dataset inflates to its header, the pixels it declares and at most HEADER_MAX bytes more
        limit = where["value"] + nbytes + HEADER_MAX
        if z.grow(limit + 1, keep=pixels) > limit:
            raise ImageTooLarge(path, f"a deflated DICOM that inflates to more than {size_text(limit)}, past the "
                                      f"{size_text(nbytes)} of pixels its header declares: not a real image")
        held = z.total - where["value"]
        if not pixels:
            return ds, None, held
        data, z.out = bytes(z.out), bytearray()
    full = read_dataset(DicomBytesIO(data), is_implicit_VR=False, is_little_endian=True)
    del data
    full.file_meta = meta
    full.set_original_encoding(False, True)
    from pydicom.pixels import pixel_array

    arr = decoded(lambda: pixel_array(full, index=0), full)
    del full.PixelData
    return full, arr, held


def image_problem(path: str | Path, max_pixels: int | None = None) -> str | None:
    """Why `path` would fail to load (missing, truncated, not an image, over the pixel budget, no DICOM decoder),
    or None if it is fine.

    Cheap by design, as it runs over every image at set-up: no pixel decoding. PNG: Pillow's `verify()` walks
    every chunk and checks its CRC (catches truncation and corruption). JPEG: the header parses and the file ends
    with the end-of-image marker (a cut-off JPEG does not; Pillow's verify() checks nothing for JPEG). DICOM: the
    header is parsed (pixel bytes neither read nor decoded), the pixel data must be as long as rows x columns x
    frames say, and a compressed transfer syntax must have a decoder installed. Every image's declared size is
    checked against `max_pixels` (None: Pillow's limit) first.
    """
    path = Path(path)
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        if is_dicom(path):
            return _dicom_problem(path, max_pixels)
        with open_pil(path, max_pixels) as im:
            im.verify()
            fmt = im.format
        if fmt in ("JPEG", "MPO"):  # by content: a PNG named .jpg is checked as the PNG it is
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 1024))
                if b"\xff\xd9" not in f.read():  # trailing padding after the marker is tolerated
                    return "truncated JPEG (no end-of-image marker)"
    except ImageTooLarge as e:
        return e.reason
    except Exception as e:  # Pillow raises SyntaxError, OSError, struct.error ... for a broken file
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def _dicom_problem(path: Path, max_pixels: int | None) -> str | None:
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import get_expected_length

    meta = pydicom.filereader.read_file_meta_info(path)
    ts = meta.get("TransferSyntaxUID")
    if ts == pydicom.uid.DeflatedExplicitVRLittleEndian:
        ds, _, have = read_deflated(path, max_pixels, pixels=False)
        if have is None:
            return "DICOM file without pixel data"
    else:
        ds = pydicom.dcmread(path, defer_size=1024)  # large values (the pixel data) are not read, only located
        if "PixelData" not in ds:
            return "DICOM file without pixel data"
        check_dicom_budget(path, ds, max_pixels)
        raw = ds.get_item(0x7FE00010, keep_deferred=True)
        have = len(raw.value) if raw.value is not None else min(raw.length, path.stat().st_size - raw.value_tell)
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        decoder = get_decoder(ts)
        if not decoder.is_available:
            return f"no decoder for {ts.name} installed (one of: {'; '.join(decoder.missing_dependencies)})"
    elif have is not None and have < get_expected_length(ds):
        return f"truncated DICOM pixel data ({have} of {get_expected_length(ds)} bytes)"
    return None
