"""How r2gen writes and reads checkpoint files: Lightning's `CheckpointIO`, made crash-safe and pickle-safe.

Write: the checkpoint is serialised in memory, written to a temporary file in the same folder, flushed and
fsynced, renamed over the final name (`os.replace`, atomic), and the folder is fsynced. `last.ckpt` and
`best.ckpt` are therefore always a complete file, the previous one or the new one, whatever kills the process
(`kill -9`, a power cut). A failed write (full disk, no permission) removes the temporary file, leaves the previous
checkpoint byte-identical and raises `StorageError`. Weights that are NaN/inf are never written
(`TrainingDiverged`): a diverged model must not replace the last good checkpoint. Only `kill -9` (or a power cut)
mid-write leaves the temporary file, `.<name>.<pid>.<hex>.tmp`; `remove_stale_temps` deletes those of dead processes
when a run next claims the folder.

Read: `torch.load(weights_only=True)`: a checkpoint holds only tensors and plain data, so a pickle that would run
code is refused before any of it runs.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from r2gen.errors import InputError, StorageError, TrainingDiverged

log = logging.getLogger(__name__)
CHUNK = 64 << 20  # bytes per write call
TEMP_NAME = re.compile(r"^\.(?P<name>.+\.ckpt)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")  # what temp_path() names


def temp_path(path: Path) -> Path:
    """The temporary file a write of `path` goes to first: hidden, beside it, named for this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def remove_stale_temps(folder: Path, depth: int = 1) -> list[Path]:
    """Delete the temporary checkpoint files (`temp_path`) in `folder` and its subfolders down to `depth` whose
    writer is dead (`kill -9` mid-write); a live process's are kept. The caller holds the folder's run lock
    (r2gen.run_folder), so no other run is writing there. Returns what was removed."""
    removed: list[Path] = []
    folders = [Path(folder)]
    for level in range(depth + 1):
        subfolders = []
        for d in folders:
            try:
                entries = list(d.iterdir())
            except OSError:
                continue
            for p in entries:
                m = TEMP_NAME.match(p.name)
                if m and p.is_file() and not p.is_symlink() and not _alive(int(m["pid"])):
                    try:
                        size = p.stat().st_size
                        p.unlink()
                    except OSError:
                        continue
                    removed.append(p)
                    log.info("removed %s (%.1f MB): an unfinished write of %s by a process that no longer runs",
                             p, size / 2**20, m["name"])
                elif level < depth and p.is_dir() and not p.is_symlink():
                    subfolders.append(p)
        folders = subfolders
    return removed


def _write_bytes(f, data: memoryview) -> None:
    """Write `data` to the open file `f` (a seam: tests make it fail as a full disk would)."""
    for start in range(0, len(data), CHUNK):
        f.write(data[start:start + CHUNK])


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def nonfinite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in `state_dict` holding a NaN or an inf."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def storage_error(path: Path, e: OSError) -> StorageError:
    """The one-line error for a checkpoint that could not be written: the file, the cause, the fix."""
    reason = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system"}.get(e.errno, e.strerror or str(e))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk holding {path.parent}"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {path.parent} writable"
    else:
        fix = f"check the disk holding {path.parent}"
    last = path.with_name("last.ckpt")
    resume = (f"then resume with ckpt_path={last}" if last.is_file()
              else "then start the run again (no last.ckpt was written yet)")
    kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    return StorageError(f"could not write checkpoint {path}: {reason}; {kept}. Fix: {fix}, or choose another run "
                        f"folder (hydra.run.dir=<folder>), {resume}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """`Trainer(plugins=[AtomicCheckpointIO()])`: atomic, fsynced checkpoint files; weights-only loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own (fsspec) writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        bad = nonfinite_weights(checkpoint.get("state_dict") or {})
        if bad:
            raise TrainingDiverged(
                f"refusing to write {path}: {len(bad)} weight tensors hold NaN/inf (e.g. {bad[0]}), at global step "
                f"{checkpoint.get('global_step')} (epoch {checkpoint.get('epoch')}); the checkpoints on disk keep the "
                f"last finite weights. Likely causes: a learning rate too high (optim.lr, optim.encoder_lr, "
                f"optim.lm_lr), fp16 overflow (trainer.precision=16-mixed: use bf16-mixed or 32-true), bad input data")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first: a disk error surfaces as an OSError from our own writes
        tmp = temp_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() would
            with os.fdopen(fd, "wb") as f:
                _write_bytes(f, buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise storage_error(path, e) from e
        except BaseException:  # Ctrl-C, or anything else mid-write: never leave the temporary file behind
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Always `weights_only=True`, whatever the caller asks: checkpoints are untrusted input."""
        if "://" in str(path):  # remote storage: Lightning's own (fsspec) reader, still weights-only
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_untrusted(path, "ckpt_path", map_location)


def load_untrusted(path, key: str, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a checkpoint the user named as `key`: a pickle that would run code is
    refused before any of it runs; an empty, truncated or foreign file is one `InputError` naming it. `mmap`: map
    the weights instead of reading them (a check that reads only the checkpoint's small parts stays cheap)."""
    p = Path(str(path)).expanduser()
    if p.is_file() and p.stat().st_size == 0:
        raise InputError(f"{key}={path}: the file is empty (an interrupted copy?); use another checkpoint, e.g. "
                         f"<run>/checkpoints/last.ckpt")
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - the unpickler's refusal or a damaged file: either way unusable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise InputError(f"{key}={path}: refused: it holds Python objects that would run code when loaded "
                             f"({first}); r2gen checkpoints hold only tensors and plain data, so this one was not "
                             f"written by r2gen or was tampered with") from None
        raise InputError(f"{key}={path}: not a readable PyTorch checkpoint (truncated, or another kind of file: "
                         f"{type(e).__name__}: {first}); use a complete .ckpt written by train.py") from None
