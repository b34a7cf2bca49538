"""A conversion's two folders: the source's (a folder as given, or a hub id's snapshot; only read, and its `.py`
files are never downloaded, imported or run) and the converted one, written into a temporary sibling and renamed
into place, so it is complete or absent: where the user says (`convert`) or in the cache (`ensure_converted`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from r2gen.convert.registry import family
from r2gen.errors import MissingFileError, UnsafeWriteError
from r2gen.locks import exclusive

WEIGHT_FILES = ["*.safetensors", "*.bin", "*.index.json"]
# what decides a conversion's content: hashed in full; weights are identified by name, size and mtime
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.model")
MARKER = "r2gen_conversion.json"  # provenance, written into the converted folder


def looks_like_path(source: str) -> bool:
    """A source that can only be a folder (a hub id is `owner/name`)."""
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") != 1 or Path(source).exists()


def source_folder(name: str, source: str | Path, what: str = "lm.name_or_path") -> Path:
    """The local folder of `source`: a folder as given, or a hub id's snapshot (downloaded without `.py` files;
    offline, from the local Hugging Face cache). `what` names the setting in error messages."""
    text = str(source)
    if looks_like_path(text):
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"{what}={text}: no such folder; point it at the downloaded checkpoint "
                                   "(config.json, tokenizer.model and the weights) or give a hub id (owner/name)")
        return folder
    from huggingface_hub import errors, snapshot_download

    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub >= 1.x: a partial cached snapshot
    meta = list(family(name).SOURCE_FILES)
    # safetensors when the repo has them, else the .bin shards: never both (the 6B ships 12 GB of each)
    weights = [("*.safetensors", "model.safetensors.index.json"), ("pytorch_model*.bin", "pytorch_model.bin.index.json")]
    for i, (shards, index) in enumerate(weights):
        try:
            folder = Path(snapshot_download(text, allow_patterns=[*meta, shards, index]))
        except incomplete:  # offline, and the cache holds the .bin files but not the safetensors
            if i + 1 < len(weights):
                continue
            raise MissingFileError(f"{what}={text}: the local Hugging Face cache holds only part of it and the hub "
                                   f"cannot be reached; download it where there is network (`hf download {text}`) or "
                                   f"set {what}=<a folder with its files>") from None
        except (OSError, ValueError) as e:  # offline and not cached, no such repo, gated, a malformed id
            detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
            raise MissingFileError(f"{what}={text}: could not get the hub checkpoint ({type(e).__name__}: {detail}); "
                                   f"download it where there is network (`hf download {text}`, which fills the cache "
                                   f"this machine reads offline) or set {what}=<a folder with its files>") from None
        if any(folder.glob(shards)):
            break
    return folder


def fingerprint(name: str, folder: Path) -> str:
    """Short hash of what a conversion depends on: the converter's version, the small files' bytes, and each weight
    file's name, size and modification time (hashing 12 GB of weights would take minutes)."""
    h = hashlib.sha256(f"{name}:{family(name).VERSION}".encode())
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        if f.name in SMALL_FILES:
            h.update(f"\0{f.name}\0".encode() + f.read_bytes())
        elif any(f.match(pattern) for pattern in WEIGHT_FILES):
            st = f.stat()  # follows a hub snapshot's symlinks to the blobs
            h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _write(name: str, folder: Path, target: Path, provenance: dict) -> None:
    """Convert into a temporary sibling of `target`, then rename it into place: `target` is complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        family(name).convert(folder, tmp)
        (tmp / MARKER).write_text(json.dumps(provenance, indent=2) + "\n")
        umask = os.umask(0o22)
        os.umask(umask)
        for f in tmp.iterdir():  # mkdtemp and safetensors create owner-only files: give them the usual modes
            f.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        os.replace(tmp, target)  # onto an absent or empty folder only; fails on a non-empty one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(name: str, source: str | Path, out: str | Path, what: str = "source") -> Path:
    """Write the native transformers folder of checkpoint `source` (a folder or hub id) of format `name` to `out`,
    which must not exist or be empty: a user's folder is never overwritten."""
    mod = family(name)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UnsafeWriteError(f"{out}: exists and is not an empty folder; choose a new output folder "
                               "(nothing was written)")
    folder = source_folder(name, source, what)
    if out.resolve() == folder.resolve():
        raise UnsafeWriteError(f"{out}: is the source folder; choose a new output folder (nothing was written)")
    _write(name, folder, out, {"family": name, "version": mod.VERSION, "source": str(source)})
    return out


def ensure_converted(name: str, source: str | Path, cache_dir: str | Path) -> Path:
    """`<cache_dir>/converted/<name>-<fingerprint>`: the native folder of `source` (lm.name_or_path), converted on
    first use and reused while the source's files are unchanged."""
    mod = family(name)
    folder = source_folder(name, source)
    fp = fingerprint(name, folder)
    root = Path(cache_dir).expanduser() / "converted"
    target = root / f"{name}-{fp}"
    if (target / MARKER).is_file():
        return target
    if target.exists() and any(target.iterdir()):  # not written by ensure_converted, which renames complete folders
        raise UnsafeWriteError(f"{target}: holds files but no {MARKER}, so it is not a finished conversion; "
                               "delete that folder to convert again")
    with exclusive(root / f".{target.name}.lock"):  # DDP ranks wait while the first converts, then reuse it
        if not (target / MARKER).is_file():  # another process may have finished it while this one waited
            _write(name, folder, target, {"family": name, "version": mod.VERSION, "source": str(source),
                                          "fingerprint": fp})
    return target
