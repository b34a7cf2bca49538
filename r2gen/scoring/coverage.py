"""Which studies of a split a score covers, said beside the score: in metrics.json and on the terminal.

A corpus score over part of a split reads like one over all of it (macro F1 over 3 of 8 studies can be four times
the whole split's), so every evaluation that knows its split records `"coverage": {"split", "scored", "studies",
"missing": [ids]}` and, when studies are missing, prints a line saying so under the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SHOW = 5  # ids named in a message


def first_ids(ids: Sequence[str]) -> str:
    """The first few ids, quoted, for a one-line message."""
    shown = ", ".join(repr(i) for i in ids[:SHOW])
    return f"{shown}, ..." if len(ids) > SHOW else shown


@dataclass(frozen=True)
class Coverage:
    """The `studies` of `split` a score covers: all but the ids `missing`; `why` says in words why those are
    missing (e.g. "not in the predictions file")."""

    split: str
    studies: int
    missing: tuple[str, ...] = ()
    why: str = "not scored"

    @classmethod
    def of(cls, split: str, split_ids: Sequence[str], scored_ids: Sequence[str], why: str) -> Coverage:
        scored = set(scored_ids)
        return cls(split, len(split_ids), tuple(i for i in split_ids if i not in scored), why)

    @property
    def scored(self) -> int:
        return self.studies - len(self.missing)

    def meta(self) -> dict[str, Any]:
        """What metrics.json says under "coverage"."""
        return {"split": self.split, "scored": self.scored, "studies": self.studies, "missing": list(self.missing)}

    def summary(self) -> str | None:
        """The line printed under the scores when studies are missing (None when the score covers the split)."""
        if not self.missing:
            return None
        return (f"  partial: {self.scored} of the {self.studies} {self.split} studies scored; {len(self.missing)} "
                f"{self.why} ({first_ids(self.missing)}), listed in metrics.json under coverage.missing")
