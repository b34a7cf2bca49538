"""Exclusive file locks: `exclusive` for what r2gen writes once and many processes may want at the same time (the
feature cache, a converted LM), `hold` for what one process owns for its whole life (a run folder).

`exclusive`: the first process builds while the others (DDP ranks, concurrent runs sharing `paths.cache_dir`) wait,
then reuse what it wrote. `hold`: a second process is told at once that the lock is taken (and by which pid); the
lock is the process's until it releases it or ends, however it ends (`kill -9` included: the OS drops a `flock`
with the process's last file descriptor).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks (see `exclusive`)
    fcntl = None  # type: ignore[assignment]

_held: dict[str, IO[str]] = {}  # realpath of a lock file -> its open file, for the locks this process holds


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created with its folder if missing, never truncated). Where there is no
    `fcntl` (Windows) there is no lock: the writes it guards are atomic renames, so concurrent builders stay correct
    and only duplicate work."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def hold(path: str | Path) -> bool:
    """Take an exclusive `flock` on the file `path` (created if missing) without waiting, and keep it until
    `release(path)` or the end of the process; the file then holds this process's pid. True if this process holds
    the lock now (also when it already did: reentrant), False if another process holds it. Without `fcntl`
    (Windows) every call succeeds."""
    key = os.path.realpath(path)
    if key in _held or fcntl is None:
        return True
    f = open(path, "a+")  # noqa: SIM115 - kept open: the lock lives as long as this file object
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return False
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = f
    return True


def holder(path: str | Path) -> str:
    """The pid written into the lock file `path` by the process that holds it ("" if unreadable)."""
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip()
    return ""


def release(path: str | Path) -> None:
    """Give up the lock `hold(path)` took (a no-op if this process does not hold it)."""
    f = _held.pop(os.path.realpath(path), None)
    if f is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
