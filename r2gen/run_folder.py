"""Run folders are r2gen's own: a run writes only into a folder that is new, empty, or an earlier r2gen run's.

`hydra.run.dir=/data/mycxr` (a slip for `data.root=`) must not scatter checkpoints, logs and Hydra's `.hydra/` over
a user's data set, nor overwrite another tool's `checkpoints/last.ckpt`. So before Hydra creates or writes anything
(`RunFolderGuard.on_run_start`, registered in `conf/hydra/default.yaml`), the folder is checked; once in use it gets
a marker file, `.r2gen-run`, so a later run or a resume may write there again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from r2gen.errors import StorageError, UnsafeWriteError

MARKER = ".r2gen-run"
HYDRA_FILES = {".hydra"}  # what Hydra itself writes into a run folder before r2gen's code runs (+ <job>.log)


def is_run_folder(path: Path) -> bool:
    """An r2gen run folder: it has the marker, or (written before the marker existed) a Hydra record of an r2gen
    config (`.hydra/config.yaml` with r2gen's lm/encoder/align groups)."""
    if (path / MARKER).is_file():
        return True
    hydra_cfg = path / ".hydra" / "config.yaml"
    try:
        text = hydra_cfg.read_text(errors="replace") if hydra_cfg.is_file() else ""
    except OSError:
        return False
    return all(f"\n{k}:" in f"\n{text}" for k in ("lm", "encoder", "align"))


def check_run_folder(path: str | Path, key: str = "hydra.run.dir", hydra_written: bool = False) -> Path:
    """Raise unless r2gen may write its run into `path`. `hydra_written`: Hydra has already made the folder and
    written its own record (`.hydra/`, `<job>.log`) into it, which therefore does not count as the user's."""
    path = Path(path).expanduser()
    parent = path
    while not parent.exists() and parent != parent.parent:  # the nearest folder that exists: can we create ours?
        parent = parent.parent
    if not parent.is_dir():
        raise StorageError(f"{key}={path}: {parent} is a file, not a folder; choose another run folder "
                           f"({key}=<new folder>)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"{key}={path}: {parent} is not writable (permission denied); choose a folder you can "
                           f"write ({key}=<folder>, or paths.log_dir=<folder> for every run)")
    if parent != path or is_run_folder(path):
        return path
    entries = {p.name for p in path.iterdir()}
    if hydra_written:
        entries = {e for e in entries if e not in HYDRA_FILES and not e.endswith(".log")}
    if entries:
        shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
        raise UnsafeWriteError(f"{key}={path} already holds files that are not an r2gen run ({shown}); r2gen writes "
                               f"runs only into a new or empty folder, or an earlier run's: choose another {key}")
    return path


def claim_run_folder(path: str | Path, key: str = "paths.output_dir") -> Path:
    """Check `path` (as `check_run_folder`, tolerating Hydra's own record), create it, and mark it as a run folder."""
    path = check_run_folder(path, key, hydra_written=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"r2gen_run": True, "created": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    except OSError as e:
        raise StorageError(f"{key}={path}: cannot write the run folder ({e.strerror or e}); free space or choose "
                           f"another folder") from None
    return path


def keep_earlier_checkpoints(out: Path, ckpt_path: str | None) -> None:
    """A training run may write into a folder that holds an earlier run's checkpoints only to continue that run
    (`ckpt_path=<out>/checkpoints/...`); otherwise its best.ckpt / last.ckpt would be overwritten."""
    found = sorted((out / "checkpoints").glob("*.ckpt")) if (out / "checkpoints").is_dir() else []
    if not found:
        return
    if ckpt_path and Path(str(ckpt_path)).expanduser().resolve().parent == (out / "checkpoints").resolve():
        return
    raise UnsafeWriteError(f"{out} holds an earlier run's checkpoints ({', '.join(p.name for p in found[:3])}); "
                           f"resume it with ckpt_path={out / 'checkpoints' / 'last.ckpt'}, or start a new run in "
                           f"another folder (hydra.run.dir=<new folder>)")


try:  # Hydra's callback API (hydra-core >= 1.1); the guard is only meaningful under Hydra's CLI
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class RunFolderGuard(Callback):
    """Checks `hydra.run.dir` (or, with `-m`, `hydra.sweep.dir`) before Hydra writes into it; a refused folder ends
    the command with one line and exit code 2, with nothing written."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        self._check(config, "hydra.sweep.dir")
        claim_run_folder(str(OmegaConf.select(config, "hydra.sweep.dir")), "hydra.sweep.dir")  # its jobs' parent

    @staticmethod
    def _check(config, key: str) -> None:
        from omegaconf import OmegaConf

        from r2gen.cli import exit_with

        try:
            check_run_folder(str(OmegaConf.select(config, key)), key)
        except (UnsafeWriteError, StorageError) as e:
            exit_with(e)
