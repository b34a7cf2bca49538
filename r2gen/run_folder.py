"""Run folders are r2gen's own: a run writes only into a folder that is new, empty, or an earlier r2gen run's.

`hydra.run.dir=/data/mycxr` (a slip for `data.root=`) must not scatter checkpoints, logs and Hydra's `.hydra/` over
a user's data set, nor overwrite another tool's `checkpoints/last.ckpt`. So before Hydra creates or writes anything
(`RunFolderGuard.on_run_start`, registered in `conf/hydra/default.yaml`), the folder is checked; once in use it gets
a marker file, `.r2gen-run`, so a later run or a resume may write there again.

One run per folder: a run holds the folder's lock (`.r2gen-lock`, an `flock` its process keeps until it ends, also
after `kill -9`) from before Hydra writes until it exits, so a second command started on the same folder is refused
in one line instead of mixing its config, checkpoints and logs with the first's. Holding the lock, a run also removes
what a killed run left half-written (`r2gen.checkpoint_io.remove_stale_temps`). And a command that fails on a user
error before it trained (`r2gen.boundary`) removes the folder it created, while it holds only what this
command wrote there (`discard_if_unused`); a folder that existed before, or holds anything else, is kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from hydra.experimental.callback import Callback  # Hydra's callback API: the guard runs under Hydra's CLI
from omegaconf import OmegaConf

from r2gen import locks
from r2gen.boundary import at_user_error, exit_with
from r2gen.checkpoint_io import remove_stale_temps
from r2gen.errors import StorageError, UnsafeWriteError

log = logging.getLogger(__name__)
MARKER = ".r2gen-run"
LOCK = ".r2gen-lock"  # held (flock) by the process whose run uses the folder
HYDRA_FILES = {".hydra"}  # what Hydra itself writes into a run folder before r2gen's code runs (+ <job>.log)
# What a command writes into its run folder before training starts: a folder holding only these (and empty folders)
# has no results in it (r2gen.train writes config.yaml and provenance.json first; a logger may make its folder).
BEFORE_TRAINING = {MARKER, LOCK, ".hydra", "config.yaml", "provenance.json", "multirun.yaml"}
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # set for a process of a distributed run


def is_rank_zero() -> bool:
    """Is this process the one that owns the run (not rank 1.. of a distributed run, which shares rank 0's folder:
    Lightning's DDP launcher starts those with the same hydra.run.dir)?"""
    return all(os.environ.get(k, "0") in ("", "0") for k in RANK_VARIABLES)


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
    entries = {p.name for p in path.iterdir()} - {LOCK}
    if hydra_written:
        entries = {e for e in entries if e not in HYDRA_FILES and not e.endswith(".log")}
    if entries:
        shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
        raise UnsafeWriteError(f"{key}={path} already holds files that are not an r2gen run ({shown}); r2gen writes "
                               f"runs only into a new or empty folder, or an earlier run's: choose another {key}")
    return path


def lock_run_folder(path: Path, key: str) -> None:
    """Hold `path`'s run lock for the rest of this process (reentrant), then remove what dead runs left half-written
    in it; `UnsafeWriteError` if another process's run holds it. Ranks 1.. of a distributed run share rank 0's lock."""
    if not is_rank_zero():
        return
    if not locks.hold(path / LOCK):
        pid = locks.holder(path / LOCK)
        raise UnsafeWriteError(f"{key}={path} is in use by another r2gen command that is still running"
                               f"{f' (pid {pid})' if pid else ''}; two runs in one folder would mix their config, "
                               f"checkpoints and logs: wait for it to end, or choose another folder ({key}=<folder>)")
    remove_stale_temps(path)


def release_run_folder(path: str | Path) -> None:
    """Give up this process's lock on the run folder `path` (a Python caller that trains into one folder and then
    hands it to another process; the lock otherwise lasts as long as the process)."""
    locks.release(Path(path).expanduser() / LOCK)


def claim_run_folder(path: str | Path, key: str = "paths.output_dir") -> Path:
    """Check `path` (as `check_run_folder`, tolerating Hydra's own record), create it, take its run lock (refused
    while another process's run holds it) and mark it as a run folder."""
    path = check_run_folder(path, key, hydra_written=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"{key}={path}: cannot write the run folder ({e.strerror or e}); free space or choose "
                           f"another folder") from None
    lock_run_folder(path, key)
    try:
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
    last = out / "checkpoints" / "last.ckpt"  # what a resume wants; if a kill lost it, the newest there is
    resume = last if last.is_file() else max(found, key=lambda p: p.stat().st_mtime)
    raise UnsafeWriteError(f"{out} holds an earlier run's checkpoints ({', '.join(p.name for p in found[:3])}); "
                           f"resume it with ckpt_path={resume}, or start a new run in another folder "
                           f"(hydra.run.dir=<new folder>)")


def created_folders(path: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` of `path` would create, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def discard_if_unused(created: list[Path]) -> bool:
    """Remove the run folder `created[0]` (and the parents in `created` it leaves empty), which this command made,
    if it holds only what a command writes before training (`BEFORE_TRAINING`, logs, empty folders): a command that
    failed before it trained leaves nothing behind. A folder with anything else in it (a checkpoint, a metric, a
    file someone put there) is kept whole. True if it was removed."""
    path = created[0]
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    for p in entries:
        if p.is_symlink():
            return False
        if p.is_dir():
            if p.name != ".hydra" and any(p.iterdir()):
                return False
            if p.name == ".hydra" and any(not q.is_file() or q.is_symlink() for q in p.iterdir()):
                return False
        elif p.name not in BEFORE_TRAINING and not p.name.endswith(".log"):
            return False
    release_run_folder(path)
    try:
        for p in entries:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for folder in created:
            os.rmdir(folder)  # fails (and stops) at the first that is not empty
    except OSError:
        pass
    return not path.exists()


class RunFolderGuard(Callback):
    """Checks `hydra.run.dir` (or, with `-m`, `hydra.sweep.dir`) and takes its run lock before Hydra writes into it;
    a refused folder ends the command with one line and exit code 2, with nothing written. A folder this command
    creates is removed again if the command fails on a user error before training (`discard_if_unused`)."""

    def on_run_start(self, config, **kwargs) -> None:
        self._claim(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        created = self._claim(config, "hydra.sweep.dir")  # the jobs' parent: one sweep at a time writes there
        claim_run_folder(str(OmegaConf.select(config, "hydra.sweep.dir")), "hydra.sweep.dir")
        self.job: Path | None = None  # the job running now, if its folder is this command's to discard
        if created:  # the failing job's folder goes first, then the sweep folder if that leaves it unused
            at_user_error(lambda: self.job is not None and discard_if_unused([self.job]))

    def on_job_start(self, config, **kwargs) -> None:
        if hasattr(self, "job"):  # a job of a sweep (Hydra made its folder inside the sweep folder)
            self.job = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir")))

    def on_job_end(self, config, **kwargs) -> None:
        if getattr(self, "job", None) is not None:  # a sweep's job is over: its folder stays, the next job may start
            release_run_folder(self.job)
            self.job = None

    @staticmethod
    def _claim(config, key: str) -> list[Path]:
        """Check and lock the folder at `key`, creating it; the folders this created (deepest first)."""
        path = Path(str(OmegaConf.select(config, key))).expanduser()
        try:
            check_run_folder(path, key)
            created = created_folders(path)
            try:
                path.mkdir(parents=True, exist_ok=not created)  # exist_ok=False: of two racing commands, one made it
            except FileExistsError:
                created = []
            except OSError as e:
                raise StorageError(f"{key}={path}: cannot create the run folder ({e.strerror or e}); choose another "
                                   f"folder ({key}=<folder>)") from None
            if not is_rank_zero():
                return []
            lock_run_folder(path, key)
        except (UnsafeWriteError, StorageError) as e:
            exit_with(e)
        if created:
            at_user_error(lambda: discard_if_unused(created))
        return created
