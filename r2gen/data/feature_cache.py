"""Frozen work done once: a frozen encoder's per-image token features, computed once and read from disk.

`data.feature_cache` (auto | off | <dir>): with `align=shallow` (frozen encoder) and un-augmented training
images, every image goes through the encoder once; each epoch then reads its features `[V, L, C]` (before view
fusion and the projection) from a memory-mapped `.npy` file instead of decoding, resizing and encoding images.

One file per (split's image set, encoder, transform). Its name is a hash of
  * every image file the split uses: path relative to `data.image_dir`, size and mtime (an edited image is new),
  * the encoder: timm name and version, and a hash of its weights as they are when the loader is built
    (after a checkpoint was loaded), so retraining or swapping the encoder never reads stale features,
  * the image transform (`repr` of the torchvision pipeline: size, interpolation, mean, std),
  * the stored dtype (`data.feature_cache_dtype`: float16 by default, half of float32's size; float32 opts out),
so a change to any of them writes a new file. Before writing, the file's size (images x tokens x channels x bytes)
is logged and checked against the folder's free space: too little is one `StorageError` naming both and the fixes.
Files are written to a temporary name and moved into place with
`os.replace`; a `<name>.json` beside it records shape, dtype and a checksum of sampled rows, checked on every
load, so a truncated or overwritten file is rebuilt, never used. An exclusive `flock` on `<name>.lock` makes a
second run (or DDP rank) sharing the folder wait for the first and then reuse its file.

Building runs the encoder on the model's device (the GPU when there is one) while `data.num_workers` loader workers
decode and resize the next batches. At MIMIC-CXR scale (368,960 images; Swin-B at 224 px: 49 tokens x 1,024
channels) a split's file is ~37 GB in float16, ~74 GB in float32; every epoch then reads it memory-mapped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, Dataset

from r2gen.data.collate import collate
from r2gen.data.packed import Strings
from r2gen.errors import ConfigError, StorageError, UnsafeWriteError
from r2gen.locks import exclusive

log = logging.getLogger(__name__)
FORMAT = 1
CHECK_ROWS = 256  # rows hashed into the checksum (evenly spaced, first and last included): cheap even for MIMIC
DTYPES = ("float16", "float32")  # numpy cannot store bfloat16; float16 keeps 10 mantissa bits, ample for features
HEADROOM = 0.05, 100 * 2**20  # free space kept beyond a new file: 5% of its size + 100 MiB (logs, checkpoints)


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


def size_text(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_space(folder: Path, size: int, what: str, dtype: str) -> None:
    """Refuse (`StorageError`, one line) to write `size` bytes into `folder` unless it keeps `HEADROOM` free."""
    free = shutil.disk_usage(folder).free
    need = size + max(int(size * HEADROOM[0]), HEADROOM[1])
    if free < need:
        smaller = "" if dtype == "float16" else ", or data.feature_cache_dtype=float16 (half the size)"
        raise StorageError(f"{what} needs {size_text(size)} (+{size_text(need - size)} headroom) but {folder} has "
                           f"{size_text(free)} free; nothing was written: free space, set data.feature_cache=<a "
                           f"folder on a disk with room>{smaller}, or data.feature_cache=off (encode every step)")


class FeatureCache:
    """Builds and opens the feature files of a frozen `ImageEncoder` under `root`, stored as `dtype`."""

    def __init__(self, encoder, root: str | Path, batch_size: int = 32, num_workers: int = 0, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ConfigError(f"data.feature_cache_dtype={dtype!r}: choose float16 or float32 (numpy cannot store "
                              f"bfloat16)")
        self.encoder, self.root, self.dtype = encoder, Path(root), dtype
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
        if self.dtype != "float32":  # float32 files keep the names they had before the dtype was a choice
            spec["dtype"] = self.dtype
        return hashlib.blake2b(json.dumps(spec).encode(), digest_size=16).hexdigest()

    # --- open or build -------------------------------------------------------------------------------
    def dataset(self, split: str, base) -> CachedFeatures:
        """`base` (a StudyDataset with an un-augmented transform) served from its feature file."""
        images = self.images_of(base)
        path = self.root / f"{split}-{self.key(base, images)}.npy"
        claim_folder(self.root)
        rows = view_rows(base, images)
        with exclusive(path.with_suffix(".lock")):
            if not self.valid(path):
                self._build(path, base, len(images), rows)
        return CachedFeatures(base, path, Strings(images), rows)

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
    def _build(self, path: Path, base, n_images: int, rows: np.ndarray) -> None:
        """Encode every image of `base` into `path`; `rows` [N, V]: each study's rows in the file (-1: no view)."""
        from tqdm import tqdm

        device = next(self.encoder.parameters()).device  # the model's: the GPU once Lightning has moved it there
        # workers decode the next batches while the encoder runs; its own generator: building the cache must not
        # draw from the global RNG (the training shuffle's)
        studies = copy.copy(base)  # each study's own images once: not its prior's too (context.prior_images)
        studies.prior_index = None
        loader = DataLoader(studies, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate,
                            generator=torch.Generator(), pin_memory=device.type == "cuda")
        was_training = self.encoder.training
        self.encoder.eval()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        out, done = None, np.zeros(n_images, dtype=bool)
        limit = float(np.finfo(self.dtype).max)
        bar = tqdm(total=n_images, desc=f"feature cache {path.stem[:5]}", unit="img", disable=None, delay=2)
        try:
            for b, batch in enumerate(loader):
                keep = batch["view_mask"]  # [B, V]: real views only
                x = batch["images"][keep].to(device, non_blocking=True)
                tok = self.encoder.tokens(x).float().cpu().numpy()  # [n, L, C]
                self.encoded_images += len(tok)
                r = rows[b * self.batch_size: b * self.batch_size + len(keep)]
                r = r[r >= 0]  # [n], in the order of the real views above
                if out is None:
                    shape = (n_images, *tok.shape[1:])
                    size = int(np.prod(shape)) * np.dtype(self.dtype).itemsize
                    what = (f"feature cache {path.name} ({n_images} images x {shape[1]} tokens x {shape[2]} "
                            f"channels x {np.dtype(self.dtype).itemsize} bytes, {self.dtype})")
                    log.info("%s: %s, encoding %d studies", what, size_text(size), len(base))
                    check_space(path.parent, size, what, self.dtype)
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=shape)
                if self.dtype == "float16" and np.abs(tok).max() > limit:
                    raise ConfigError(f"data.feature_cache_dtype=float16: the encoder's features reach "
                                      f"{np.abs(tok).max():.3g}, beyond float16's range ({limit:.0f}); set "
                                      f"data.feature_cache_dtype=float32")
                out[r] = tok
                done[r] = True
                bar.update(len(tok))
            if out is None or not done.all():
                raise RuntimeError(f"feature cache {path}: {int((~done).sum())} images were never encoded")
            out.flush()
            meta = {"shape": list(out.shape), "dtype": str(out.dtype), "checksum": _checksum(out), "images": n_images}
            del out
            os.replace(tmp, path)
            meta_tmp = path.with_name(f".{path.stem}.{os.getpid()}.json.tmp")
            meta_tmp.write_text(json.dumps(meta))
            os.replace(meta_tmp, path.with_suffix(".json"))
        finally:
            bar.close()
            tmp.unlink(missing_ok=True)
            self.encoder.train(was_training)


def view_rows(base, images: list[str]) -> np.ndarray:
    """[N, V] int64: the feature-file row of each study's first `num_views` images (`images`: the file's sorted
    paths), -1 where a study has fewer. An array, not a dict of paths: DataLoader workers share it."""
    index = {p: i for i, p in enumerate(images)}
    out = np.full((len(base), base.num_views), -1, dtype=np.int64)
    for i, e in enumerate(base.entries):
        for k, p in enumerate(e["image_path"][: base.num_views]):
            out[i, k] = index[p]
    return out


class CachedFeatures(Dataset):
    """A StudyDataset's studies with `features` [V, L, C] (float32, whatever the file stores) read from the feature
    file instead of `images`."""

    def __init__(self, base, path: Path, images: Strings, view_rows: np.ndarray):
        self.base, self.path, self.images, self.view_rows = base, path, images, view_rows
        self._arr: np.ndarray | None = None  # opened lazily, once per process (DataLoader workers included)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}  # never pickle the mapped array into a worker

    def __len__(self) -> int:
        return len(self.base)

    def views(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Study `i`'s features [V, L, C] (absent views zero) and their mask [V]."""
        if self._arr is None:
            self._arr = np.load(self.path, mmap_mode="r")
        v, rows = self.base.num_views, self.view_rows[i]
        rows = rows[rows >= 0]
        feats = torch.zeros(v, *self._arr.shape[1:])  # [V, L, C] float32
        feats[: len(rows)] = torch.from_numpy(np.ascontiguousarray(self._arr[rows]))  # float16 widened here
        return feats, torch.arange(v) < len(rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        feats, mask = self.views(i)
        out = {"id": self.base.table.ids[i], "features": feats, "view_mask": mask, "report": self.base.reports[i],
               **self.base.extras(i)}
        prior = self.base.prior_index
        if prior is not None:  # the prior study's features (a study of the same split: in the same file)
            k = int(prior[i])
            out["prior_features"], out["prior_view_mask"] = self.views(k) if k >= 0 else (
                torch.zeros_like(feats), torch.zeros_like(mask))
        return out
