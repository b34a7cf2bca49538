"""The three splits every data set reader gives, and the names data sets write them under. Below every reader
(r2gen.data.annotations and the official layouts' readers), so they share them without importing each other."""

from __future__ import annotations

from typing import Any

SPLITS = ("train", "val", "test")
# how data sets name their splits (MIMIC-CXR's split.csv says `validate`) -> r2gen's
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}

Studies = dict[str, list[dict[str, Any]]]
