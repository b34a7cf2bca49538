"""Reading what a run wrote: JSON-lines files, and snapshots that tell whether a tree changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root` with its bytes' hash and mode: equal snapshots mean the tree is
    byte-identical (nothing written, moved, added or deleted)."""
    out: dict[str, tuple] = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_mode)
    return out
