"""A split's studies packed into a few numpy buffers, so forked DataLoader workers share them instead of copying.

A list of dicts is tens of Python objects per study. A forked worker that reads one writes its reference counts
(and the cyclic GC writes every dict's header), so each page holding them is copied into that worker: at
MIMIC-CXR scale (270,790 studies) hundreds of MB per worker, growing as the epoch touches more studies. Here a
split is five arrays (UTF-8 bytes + offsets for ids, reports and image paths, one offset array for each study's
paths); reading study i decodes its strings and writes nothing shared, so a worker's memory stays flat whatever the
number of studies. Pickled (a spawned worker), it is those arrays: bytes, not objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


def _offsets(lengths: Iterable[int]) -> np.ndarray:
    lengths = np.fromiter(lengths, dtype=np.int64)
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    out[1:] = np.cumsum(lengths)
    return out


class Strings(Sequence[str]):
    """A read-only sequence of strings held as one UTF-8 buffer and `[n + 1]` offsets; decoded on access."""

    def __init__(self, items: Iterable[str]):
        encoded = [s.encode("utf-8") for s in items]
        self.offsets = _offsets(len(b) for b in encoded)  # [n + 1] int64
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8)  # [total bytes]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} strings")
        i = int(i) % n
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"Strings({len(self)} strings, {self.data.nbytes} bytes)"


class StudyTable(Sequence[dict]):
    """A split's studies as a read-only sequence of `{"id", "report", "image_path": [...]}` dicts, built on access
    from packed arrays. `reports` are stored as given (the datamodule stores them cleaned); other keys of the
    source dicts (an annotation's `split`, `subject_id`, ...) are not kept."""

    def __init__(self, entries: Iterable[dict[str, Any]], clean=None):
        entries = entries if isinstance(entries, Sequence) else list(entries)
        self.ids = Strings(str(e["id"]) for e in entries)
        self.reports = Strings(clean(e["report"]) if clean else e["report"] for e in entries)
        self.paths = Strings(p for e in entries for p in e["image_path"])  # every study's paths, in order
        self.starts = _offsets(len(e["image_path"]) for e in entries)  # study i's paths: [starts[i], starts[i+1])

    def __len__(self) -> int:
        return len(self.ids)

    def image_paths(self, i: int) -> list[str]:
        return [self.paths[k] for k in range(self.starts[i], self.starts[i + 1])]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices; IndexError past the end
        return {"id": self.ids[i], "report": self.reports[i], "image_path": self.image_paths(i)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    def nbytes(self) -> int:
        """Bytes held by the arrays (what a worker shares, and what pickling the table copies)."""
        return sum(a.nbytes for a in (self.ids.data, self.ids.offsets, self.reports.data, self.reports.offsets,
                                      self.paths.data, self.paths.offsets, self.starts))

    def __repr__(self) -> str:
        return f"StudyTable({len(self)} studies, {len(self.paths)} images, {self.nbytes()} bytes)"
