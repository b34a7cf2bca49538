"""The set-up check: find every study that would fail or mislead in epoch 3, before epoch 1.

A study is bad when an image it lists is missing, unreadable or over the pixel budget `data.max_image_pixels` (see
`images.image_problem`: the size is read from the header, nothing is decoded) or it lists none.
`data.on_bad_sample=error` stops with one line that counts them and names the first few; `skip` drops them with
a warning. Studies whose report is empty once cleaned are always dropped (with a warning): there is nothing to
learn or score. A split left with no studies is an error.

At MIMIC-CXR scale (368,960 images) opening every image takes minutes, so the check is remembered: given a
folder (`<paths.cache_dir>/setup-check/`), the images found good are recorded in a manifest named by a hash of the
image folder and the annotation source, with each file's size and mtime. A later run stats every image (cheap) and
opens only those that are new or whose size or mtime changed; unchanged, it starts in seconds. Bad images are never
recorded, so they are checked (and reported) every time. The manifest lives in r2gen's cache folder, never in the
data folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from r2gen.data.images import image_problem
from r2gen.data.splits import SPLITS, Studies
from r2gen.errors import ConfigError, InputError, MissingFileError

log = logging.getLogger(__name__)
POLICIES = ("error", "skip")
SHOW = 5  # bad images named in the message
THREADS = 8  # images opened at once: the check waits on the file system (a network one most of all), not the CPU
CHUNK = 4096  # images handed to the threads at a time
MANIFEST_VERSION = 1


def has_words(report: str) -> bool:
    """Is a cleaned report worth learning or scoring (a letter or digit in it)? Studies whose report is not are
    dropped, here and when a predictions file is matched to its split."""
    return any(c.isalnum() for c in report)


def check_studies(ann: Studies, image_dir: Path, clean: Callable[[str], str], on_bad_sample: str,
                  source: str, manifest_dir: Path | None = None, splits: tuple[str, ...] = SPLITS,
                  max_pixels: int | None = None) -> Studies:
    """`ann` without its unusable studies; raises under `on_bad_sample=error` if any image is bad (missing,
    unreadable, over `max_pixels` pixels), or if a split of `splits` (those the run needs) is left empty.
    `source` names where the studies came from, for messages; with `manifest_dir`, images found good by an
    earlier check and unchanged since (size, mtime) are not opened again."""
    if on_bad_sample not in POLICIES:
        raise ConfigError(f"data.on_bad_sample={on_bad_sample!r}: choose error or skip")
    max_pixels = pixel_budget(max_pixels)
    t0 = time.perf_counter()
    paths = list(dict.fromkeys(p for s in SPLITS for e in ann[s] for p in e["image_path"]))  # unique, in order
    manifest = None
    if manifest_dir is not None:
        key = f"{os.path.abspath(image_dir)}\n{source}\n{max_pixels}"  # another budget: checked again
        manifest = Path(manifest_dir) / f"{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}.npz"
    problems, opened = image_problems(image_dir, paths, manifest, max_pixels)
    bad = []  # (split, id, path, reason)
    for s in SPLITS:
        for e in ann[s]:
            if not e["image_path"]:
                bad.append((s, e["id"], "-", "the study lists no image"))
            for p in e["image_path"]:
                if p in problems:
                    bad.append((s, e["id"], image_dir / p, problems[p]))
    n = sum(len(e["image_path"]) for s in SPLITS for e in ann[s])
    log.info("set-up check: %d images, %d bad, %d opened (the rest unchanged since the last check), in %.2f s",
             n, len(bad), opened, time.perf_counter() - t0)
    if bad:
        studies = {(s, i) for s, i, _, _ in bad}
        listed = "; ".join(f"{s} id {i}: {p} ({r})" for s, i, p, r in bad[:SHOW])
        more = f"; and {len(bad) - SHOW} more" if len(bad) > SHOW else ""
        summary = (f"{len(bad)} image(s) not found or unreadable, in {len(studies)} studies, under "
                   f"data.image_dir={image_dir}: {listed}{more}")
        if on_bad_sample == "error":
            err = MissingFileError if all(r == "no such file" for *_, r in bad) else InputError
            raise err(f"{summary}. Fix or remove them, or set data.on_bad_sample=skip to train without those studies")
        log.warning("data.on_bad_sample=skip: dropping %s", summary)
        ann = {s: [e for e in ann[s] if (s, e["id"]) not in studies] for s in SPLITS}

    out = {}
    for s in SPLITS:
        out[s] = [e for e in ann[s] if has_words(clean(e["report"]))]
        if len(out[s]) < len(ann[s]):
            log.warning("%s: dropped %d studies whose report is empty once cleaned", s, len(ann[s]) - len(out[s]))
    empty = [s for s in splits if not out[s]]
    if empty:
        need = "each of train, val and test needs" if tuple(splits) == SPLITS else f"{' and '.join(splits)} needs"
        raise InputError(f"data split(s) {', '.join(empty)} have no usable studies in {source} (after dropping bad "
                         f"images and empty reports); {need} at least one")
    return out


def image_problems(image_dir: Path, paths: list[str], manifest: Path | None = None,
                   max_pixels: int | None = None) -> tuple[dict[str, str], int]:
    """({path: why it is bad} for the bad ones among `paths` (relative to `image_dir`), images opened), each image
    also refused when its header declares more than `max_pixels` pixels (None: Pillow's limit). With `manifest`,
    an image it records as good with the same size and mtime is not opened; the manifest is then rewritten with
    the images found good now."""
    from tqdm import tqdm

    known = read_manifest(manifest) if manifest is not None else {}
    good: dict[str, tuple[int, int]] = {}
    todo: list[tuple[str, tuple[int, int] | None]] = []  # (path, its (size, mtime_ns) before opening)
    for p in paths:
        try:
            st = os.stat(os.path.join(image_dir, p))
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:  # missing: image_problem says so
            stamp = None
        if stamp is not None and known.get(p) == stamp:
            good[p] = stamp
        else:
            todo.append((p, stamp))
    if len(todo) > 1000:
        log.info("set-up check: opening %d of %d images (%s)", len(todo), len(paths),
                 "unchanged ones are remembered for the next run" if manifest else "every run")
    problems = {}
    with ThreadPoolExecutor(THREADS) as pool, tqdm(total=len(todo), desc="set-up check", unit="img",
                                                  disable=None, delay=2) as bar:
        for start in range(0, len(todo), CHUNK):  # in chunks: a future per image of MIMIC would be ~0.2 GB
            chunk = todo[start:start + CHUNK]
            reasons = pool.map(lambda t: image_problem(image_dir / t[0], max_pixels), chunk)
            for (p, stamp), reason in zip(chunk, reasons, strict=True):
                if reason:
                    problems[p] = reason
                elif stamp is not None:
                    good[p] = stamp
            bar.update(len(chunk))
    if manifest is not None and (todo or len(known) != len(good)):
        write_manifest(manifest, good)
    return problems, len(todo)


def pixel_budget(value) -> int | None:
    """`data.max_image_pixels` checked: a positive whole number of pixels (None: a run config from before the key,
    which gets Pillow's limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"data.max_image_pixels={value!r}: choose a positive whole number of pixels (width x "
                          f"height x frames an image may declare), e.g. data.max_image_pixels=64000000")
    return value


def read_manifest(path: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of the images an earlier check found good; {} if none or unreadable."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != MANIFEST_VERSION:
                return {}
            buf, offsets, size, mtime = z["paths"].tobytes(), z["offsets"], z["size"].tolist(), z["mtime_ns"].tolist()
    except (OSError, ValueError, KeyError) as e:  # truncated or foreign: checked again in full, then rewritten
        log.warning("set-up check: ignoring unreadable manifest %s (%s)", path, e)
        return {}
    names = buf.decode("utf-8")
    if len(names) != len(buf):  # non-ASCII paths: offsets count bytes
        names = [buf[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    else:
        names = [names[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    return dict(zip(names, zip(size, mtime, strict=True), strict=True))


def write_manifest(path: Path, good: dict[str, tuple[int, int]]) -> None:
    """Atomically (a temporary file renamed into place); a cache folder that cannot be written only costs the
    next run a full check."""
    encoded = [p.encode("utf-8") for p in good]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    stamps = np.array(list(good.values()), dtype=np.int64).reshape(-1, 2)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, version=MANIFEST_VERSION, paths=np.frombuffer(b"".join(encoded), dtype=np.uint8),
                     offsets=offsets, size=stamps[:, 0], mtime_ns=stamps[:, 1])
        os.replace(tmp, path)
    except OSError as e:
        log.warning("set-up check: could not write %s (%s); the next run checks every image again", path, e)
    finally:
        tmp.unlink(missing_ok=True)
