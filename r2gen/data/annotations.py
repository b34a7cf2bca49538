"""Study lists from disk, in one shape: `{"train"|"val"|"test": [{"id", "report", "image_path": [...]}]}`.

`read_studies(data_cfg)` is the one entry point; `data.format` picks the reader:

- `r2gen`: R2Gen's `annotation.json` (`{"train": [...], "val": [...], "test": [...]}`), as IU-Xray and MIMIC-CXR
  are released;
- `jsonl` / `csv`: a table with columns `id`, `report`, the image columns named in `data.image_columns`, and
  either a `split` column (one file, `data.annotation`) or one file per split (`data.train_file`, `val_file`,
  `test_file`). An image cell holds one path, several joined with `;`, or (JSONL) a list;
- `auto`: by the file's suffix (`.json`, `.jsonl`, `.csv`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
FORMATS = {".json": "r2gen", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}

Studies = dict[str, list[dict[str, Any]]]


def read_studies(cfg) -> Studies:
    """Every split's studies as `data.*` describes them (format, annotation or per-split files, image columns);
    `cfg` is the `data` config node or a plain dict with the same keys."""
    files = {s: cfg.get(f"{s}_file") for s in SPLITS}
    image_columns = list(cfg.get("image_columns") or ["image_path"])  # R2Gen's field name if the config has none
    if any(files.values()):
        unset = [f"data.{s}_file" for s, f in files.items() if not f]
        if unset:
            raise ValueError(f"{', '.join(unset)} not set: give all three of data.train_file, data.val_file and "
                             f"data.test_file, or none of them and data.annotation with a split column")
        out = {}
        for split, f in files.items():
            fmt = file_format(f, cfg.get("format"))
            if fmt == "r2gen":
                raise ValueError(f"data.{split}_file={f}: per-split files must be JSONL or CSV (set data.format=jsonl "
                                 f"or csv); an R2Gen annotation.json holds all splits and goes in data.annotation")
            out[split] = read_table(f, fmt, image_columns, split=split)[split]
        return out
    path = cfg["annotation"]
    fmt = file_format(path, cfg.get("format"))
    return read_annotation(path) if fmt == "r2gen" else read_table(path, fmt, image_columns)


def file_format(path, fmt: str | None) -> str:
    if fmt in ("r2gen", "jsonl", "csv"):
        return fmt
    if fmt not in (None, "auto"):
        raise ValueError(f"data.format={fmt!r}: choose auto, r2gen, jsonl or csv")
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"data.format=auto: cannot tell the format of {path} from its suffix; "
                         f"set data.format=r2gen, jsonl or csv")
    return FORMATS[suffix]


def read_annotation(path: str | Path) -> Studies:
    """R2Gen's `annotation.json`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path} (set data.annotation, or data.root for its folder)")
    with open(path) as f:
        ann = json.load(f)
    missing = [s for s in SPLITS if s not in ann]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} split; expected keys {SPLITS} (R2Gen annotation layout)")
    for split in SPLITS:
        for i, e in enumerate(ann[split]):
            for key in ("id", "report", "image_path"):
                if key not in e:
                    raise ValueError(f"{path}: {split}[{i}] has no {key!r} (keys: {sorted(e)})")
    return {s: ann[s] for s in SPLITS}


def read_table(path: str | Path, fmt: str, image_columns: list[str], split: str | None = None) -> Studies:
    """A JSONL or CSV table of studies. With `split`, every row belongs to it; otherwise a `split` column says."""
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"{fmt.upper()} file not found: {path} (set data.annotation, or data.train_file/"
                                f"val_file/test_file, relative to where you run or absolute)")
    need = ["id", "report", *image_columns] + ([] if split else ["split"])
    out: Studies = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for where, row in _rows(path, fmt):
        missing = [c for c in need if c not in row]
        if missing:
            fix = " (set data.image_columns)" if set(missing) & set(image_columns) else ""
            raise ValueError(f"{path} {where}: no column {', '.join(map(repr, missing))}{fix}; "
                             f"its columns: {', '.join(map(str, row))}")
        s = split or SPLIT_NAMES.get(str(row["split"]).strip().lower())
        if s is None:
            raise ValueError(f"{path} {where}: split={row['split']!r}: expected train, val (or validate) or test")
        sid = str(row["id"]).strip()
        if sid in seen:
            raise ValueError(f"{path} {where}: id {sid!r} appears twice; study ids must be unique")
        seen.add(sid)
        images = [p for c in image_columns for p in _paths(row[c])]
        out[s].append({"id": sid, "report": "" if row["report"] is None else str(row["report"]),
                       "image_path": images, "split": s})
    return out


def _rows(path: Path, fmt: str):
    """(`line n` / `row n`, row dict) for each row of the table."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM from Excel is not part of a name
            for n, row in enumerate(csv.DictReader(f), 2):
                yield f"row {n}", row
        return
    for n, row in jsonl_objects(path):
        yield f"line {n}", row


def jsonl_objects(path: Path, name: str | None = None):
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a JSON object is an error
    naming `name` (how the user gave the file, e.g. `predictions=<path>`; default the path) and the line."""
    name = name or str(path)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{name} line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{name} line {n}: expected a JSON object per line, got {type(row).__name__}")
            yield n, row


def _paths(cell) -> list[str]:
    """An image cell: a list of paths (JSONL), or one string with paths joined by `;`; empty cells give none."""
    if cell is None:
        return []
    if isinstance(cell, list):
        return [str(p).strip() for p in cell if str(p).strip()]
    return [p.strip() for p in str(cell).split(";") if p.strip()]
