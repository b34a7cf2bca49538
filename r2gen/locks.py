"""One exclusive file lock, shared by everything r2gen writes once and many processes may want at the same time
(the feature cache, a converted LM): the first process builds while the others (DDP ranks, concurrent runs sharing
`paths.cache_dir`) wait, then reuse what it wrote."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created with its folder if missing, never truncated). Where there is no
    `fcntl` (Windows) there is no lock: the writes it guards are atomic renames, so concurrent builders stay correct
    and only duplicate work."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
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
