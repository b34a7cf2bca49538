"""Frozen work done once: a frozen encoder's per-image token features, computed once and read from disk.

`data.feature_cache` (auto | off | <dir>): with `align=shallow` (frozen encoder) and un-augmented training
images, every image goes through the encoder once; each epoch then reads its features `[V, L, C]` (before view
fusion and the projection) from a memory-mapped `.npy` file instead of decoding, resizing and encoding images.

One file per (split's image set, encoder, transform). Its name is a hash of
  * every image file the split uses: path relative to `data.image_dir`, size and mtime (an edited image is new),
  * the encoder: timm name and version, and a hash of its weights as they are when the loader is built
    (after a checkpoint was loaded), so retraining or swapping the encoder never reads stale features,
  * the image transform (`repr` of the torchvision pipeline: size, interpolation, mean, std),
so a change to any of them writes a new file. Files are written to a temporary name and moved into place with
`os.replace`; a `<name>.json` beside it records shape, dtype and a checksum of sampled rows, checked on every
load, so a truncated or overwritten file is rebuilt, never used. An exclusive `flock` on `<name>.lock` makes a
second run (or DDP rank) sharing the folder wait for the first and then reuse its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, Dataset

from r2gen.errors import StorageError, UnsafeWriteError

log = logging.getLogger(__name__)
FORMAT = 1
CHECK_ROWS = 256  # rows hashed into the checksum (evenly spaced, first and last included): cheap even for MIMIC


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_key(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _checksum(arr: np.ndarray) -> str:
    rows = np.unique(np.linspace(0, len(arr) - 1, min(len(arr), CHECK_ROWS)).astype(np.int64))
    return hashlib.blake2b(np.ascontiguousarray(arr[rows]).tobytes(), digest_size=16).hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (POSIX flock); elsewhere no lock: writes are atomic and checked anyway."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


MARKER = ".r2gen-feature-cache"
_OWN_FILE = re.compile(r"(train|val|test)-[0-9a-f]{32}\.(npy|json|lock)|\..*\.tmp")  # what this module writes


def claim_folder(root: Path) -> None:
    """Create `root` as a feature-cache folder, or accept it if it is one (its marker, or only files this module
    writes). A folder holding anything else is someone's, and `data.feature_cache=<folder>` pointing there is a
    slip: refused before a byte is written."""
    if root.is_dir() and not (root / MARKER).is_file():
        foreign = sorted(p.name for p in root.iterdir() if not _OWN_FILE.fullmatch(p.name))
        if foreign:
            raise UnsafeWriteError(
                f"data.feature_cache={root} holds files that are not r2gen's feature cache ({', '.join(foreign[:4])}"
                f"{', ...' if len(foreign) > 4 else ''}); give a new or empty folder, or data.feature_cache=auto")
    elif root.exists() and not root.is_dir():
        raise UnsafeWriteError(f"data.feature_cache={root} is a file; give a new or empty folder, or auto")
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).touch()
    except OSError as e:
        raise StorageError(f"data.feature_cache={root}: cannot create the cache folder ({e.strerror or e}); choose "
                           "another folder or data.feature_cache=off") from None


class FeatureCache:
    """Builds and opens the feature files of a frozen `ImageEncoder` under `root`."""

    def __init__(self, encoder, root: str | Path, batch_size: int = 32, num_workers: int = 0):
        self.encoder, self.root = encoder, Path(root)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.encoded_images = 0  # images this object ran through the encoder (tests and logs read it)

    # --- naming --------------------------------------------------------------------------------------
    def images_of(self, dataset) -> list[str]:
        """The split's image paths (first `num_views` of each study), relative to its image folder, sorted."""
        return sorted({p for e in dataset.entries for p in e["image_path"][: dataset.num_views]})

    def key(self, dataset, images: list[str]) -> str:
        model = self.encoder.model
        spec = {
            "format": FORMAT, "timm": timm.__version__, "encoder": type(model).__name__,
            "name": getattr(model, "default_cfg", {}).get("architecture", ""), "weights": weights_hash(model),
            "transform": repr(dataset.transform),
            "images": [[p, *file_key(Path(dataset.image_dir) / p)] for p in images],
        }
        return hashlib.blake2b(json.dumps(spec).encode(), digest_size=16).hexdigest()

    # --- open or build -------------------------------------------------------------------------------
    def dataset(self, split: str, base) -> CachedFeatures:
        """`base` (a StudyDataset with an un-augmented transform) served from its feature file."""
        images = self.images_of(base)
        path = self.root / f"{split}-{self.key(base, images)}.npy"
        claim_folder(self.root)
        with _locked(path.with_suffix(".lock")):
            if not self.valid(path):
                self._build(path, base, images)
        return CachedFeatures(base, path, {p: i for i, p in enumerate(images)})

    @staticmethod
    def valid(path: Path) -> bool:
        meta_path = path.with_suffix(".json")
        if not (path.is_file() and meta_path.is_file()):
            return False
        try:
            meta = json.loads(meta_path.read_text())
            arr = np.load(path, mmap_mode="r")
            ok = (list(arr.shape) == meta["shape"] and str(arr.dtype) == meta["dtype"]
                  and _checksum(arr) == meta["checksum"])
        except (OSError, ValueError, KeyError) as e:  # truncated, not an .npy, or unreadable metadata
            log.warning("feature cache %s is unreadable (%s): rebuilding it", path, e)
            return False
        if not ok:
            log.warning("feature cache %s does not match its checksum: rebuilding it", path)
        return ok

    @torch.inference_mode()
    def _build(self, path: Path, base, images: list[str]) -> None:
        row = {p: i for i, p in enumerate(images)}
        from r2gen.data.collate import collate

        # its own generator: building the cache must not draw from the global RNG (the training shuffle's)
        loader = DataLoader(base, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate,
                            generator=torch.Generator())
        device = next(self.encoder.parameters()).device
        was_training = self.encoder.training
        self.encoder.eval()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        out, done = None, np.zeros(len(images), dtype=bool)
        log.info("feature cache: encoding %d images of %d studies into %s", len(images), len(base), path)
        try:
            for b, batch in enumerate(loader):
                keep = batch["view_mask"]  # [B, V]: real views only
                tok = self.encoder.tokens(batch["images"][keep].to(device)).float().cpu().numpy()  # [n, L, C]
                self.encoded_images += len(tok)
                rows = [row[p] for k in range(len(batch["ids"]))
                        for p in base.entries[b * self.batch_size + k]["image_path"][: base.num_views]]
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), *tok.shape[1:]))
                out[rows] = tok
                done[rows] = True
            if out is None or not done.all():
                raise RuntimeError(f"feature cache {path}: {int((~done).sum())} images were never encoded")
            out.flush()
            meta = {"shape": list(out.shape), "dtype": str(out.dtype), "checksum": _checksum(out), "images": len(images)}
            del out
            os.replace(tmp, path)
            meta_tmp = path.with_name(f".{path.stem}.{os.getpid()}.json.tmp")
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, path.with_suffix(".json"))
        finally:
            tmp.unlink(missing_ok=True)
            self.encoder.train(was_training)


class CachedFeatures(Dataset):
    """A StudyDataset's studies with `features` [V, L, C] read from the feature file instead of `images`."""

    def __init__(self, base, path: Path, rows: dict[str, int]):
        self.base, self.path, self.rows = base, path, rows
        self._arr: np.ndarray | None = None  # opened lazily, once per process (DataLoader workers included)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}  # never pickle the mapped array into a worker

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._arr is None:
            self._arr = np.load(self.path, mmap_mode="r")
        e, v = self.base.entries[i], self.base.num_views
        rows = [self.rows[p] for p in e["image_path"][:v]]
        feats = torch.zeros(v, *self._arr.shape[1:])
        feats[: len(rows)] = torch.from_numpy(np.ascontiguousarray(self._arr[rows]))
        return {"id": str(e["id"]), "features": feats, "view_mask": torch.arange(v) < len(rows),
                "report": self.base.reports[i], **self.base.extras(i)}
