"""Uploaded files: each checked, written into the request's temporary folder, and previewed as the model reads it.

A file is stored under a name of r2gen's choosing (`0.dcm`, `1.png`: its own suffix when it is one r2gen reads,
else its type told from its bytes), so a client's file name never becomes a path. An image whose header declares
more pixels than the budget (`data.max_image_pixels`) is refused (413) before anything decodes it. Every problem is
an `UploadError`: one line naming the file as the user called it, and the HTTP status the server answers with.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from r2gen.data.images import IMAGE_SUFFIXES, ImageTooLarge, image_problem, load_image, read_size
from r2gen.errors import InputError

MAX_FILES = 4  # a study: one to four images (and its prior study as many)
TEXT_FIELDS = ("indication", "comparison", "prior_report")  # a study's context as the form's text fields
MAX_TEXT_CHARS = 8000  # the most characters one of them may have
PREVIEW = 1024  # longest side of a preview, in pixels
KINDS = "PNG, JPEG or DICOM"
PIL_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


class UploadError(InputError):
    """An upload the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def display_name(name: str | None, index: int) -> str:
    """The client's file name made safe for a one-line message: its last path part, printable, 80 characters."""
    name = re.split(r"[\\/]", name or "")[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "?", name).strip()[:80]
    return name or f"file {index + 1}"


@dataclass(frozen=True)
class Upload:
    """One request's study: its files and its prior's as (display name, bytes), and its context texts."""

    files: list[tuple[str, bytes]]
    prior: list[tuple[str, bytes]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)


def check_count(n: int, prior: bool = False) -> None:
    """A study's 1 to MAX_FILES images; its prior's (`prior`) 0 to MAX_FILES."""
    if n == 0 and not prior:
        raise UploadError(f"no file uploaded: send 1 to {MAX_FILES} images of one study ({KINDS}) as "
                          f"multipart/form-data")
    if n > MAX_FILES:
        what = "prior study files (field prior)" if prior else "files"
        raise UploadError(f"{n} {what} uploaded: a study is 1 to {MAX_FILES} images; send at most {MAX_FILES}")


def check_size(name: str, size: int, max_file_mb: float) -> None:
    if size > max_file_mb * 2**20:
        raise UploadError(f"{name}: {size / 2**20:.1f} MB, over the {max_file_mb:g} MB limit per file "
                          f"(max_file_mb); upload a smaller file", status=413)


def save(index: int, name: str, data: bytes, folder: Path, max_pixels: int | None) -> Path:
    """`data` written to `folder` as an image r2gen reads, checked as predict.py checks its input (over
    `max_pixels` pixels, empty, truncated or undecodable: an `UploadError` naming `name`)."""
    suffix = image_suffix(name, data)
    if suffix is None:
        raise UploadError(f"{name}: not an image r2gen reads; upload {KINDS} files", status=415)
    path = folder / f"{index}{suffix}"
    path.write_bytes(data)
    try:
        read_size(path, max_pixels)
    except ImageTooLarge as e:
        raise UploadError(f"{name}: {e.reason}", status=413) from None
    except Exception:  # noqa: BLE001 - a header that does not parse: image_problem says how
        pass
    problem = image_problem(path, max_pixels)
    if problem:
        raise UploadError(f"{name}: {problem.replace(str(path), name)}; upload a complete {KINDS} file", status=422)
    return path


def image_suffix(name: str, data: bytes) -> str | None:
    """The file's own suffix when r2gen reads it by that suffix, else its type from its bytes (a DICOM file often
    has no suffix), or None when it is no image r2gen reads."""
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return suffix
    if data[128:132] == b"DICM":
        return ".dcm"
    try:
        with Image.open(io.BytesIO(data)) as im:
            return PIL_FORMATS.get(im.format)
    except Exception:  # noqa: BLE001 - whatever Pillow raises for bytes it cannot read: not an image
        return None


def preview(path: Path, name: str, max_pixels: int | None) -> str:
    """A PNG data URL of the image as the model reads it (DICOM windowed, MONOCHROME1 inverted), at most PREVIEW
    pixels on its longest side; the pixels are decoded here, so a file that passed the header checks but does not
    decode is refused before the model sees it."""
    try:
        im = load_image(path, max_pixels)
    except Exception as e:  # noqa: BLE001 - any decoder's failure (Pillow, pydicom, numpy) is the file's problem
        reason = type(e).__name__ + (": " + str(e).splitlines()[0].replace(str(path), name) if str(e) else "")
        raise UploadError(f"{name}: the image does not decode ({reason}); upload a complete {KINDS} file",
                          status=422) from None
    im.thumbnail((PREVIEW, PREVIEW))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
