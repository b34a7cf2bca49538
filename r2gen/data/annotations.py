"""Study lists from disk, in one shape: `{"train"|"val"|"test": [{"id", "report", "image_path": [...]}]}`.

`read_studies(data_cfg)` is the one entry point; `data.format` picks the reader:

- `r2gen`: R2Gen's `annotation.json` (`{"train": [...], "val": [...], "test": [...]}`), as IU-Xray and MIMIC-CXR
  are released;
- `jsonl` / `csv`: a table with columns `id`, `report`, the image columns named in `data.image_columns`, and
  either a `split` column (one file, `data.annotation`) or one file per split (`data.train_file`, `val_file`,
  `test_file`). An image cell holds one path, several joined with `;`, or (JSONL) a list;
- `auto`: by the file's suffix (`.json`, `.jsonl`, `.csv`).

A table may also give a study's context (r2gen.data.splits), each column optional and each cell may be empty:
`indication`, `comparison`, `subject_id`, `study_time` (ISO 8601: `2180-07-15` or `2180-07-15T10:42:00`) and
`view_positions` (one per image, as the image cell: `PA;LATERAL`, or a JSONL list). Every layout's studies with a
subject and a time are then linked to their prior study (`prior_id`, r2gen.data.priors).

Training needs all three splits; evaluation only the one it scores (`read_studies(cfg, splits=("test",))`): a table
with only that split, an annotation.json without the others' keys, or only `data.test_file` set will do.

Files are UTF-8 (a BOM is fine). A file that is not (the byte, line and column named), malformed JSON (line and
column), the wrong shape, an empty file, an empty or repeated study id (within a file, or across splits) is an
`InputError` naming the file and the spot: one line, nothing read half-way.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from r2gen.data import mimic_cxr_jpg, openi
from r2gen.data.priors import link_priors, parse_time
from r2gen.data.splits import SPLIT_NAMES, SPLITS, Studies
from r2gen.errors import ConfigError, InputError, MissingFileError

FORMATS = {".json": "r2gen", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# data.format of an official layout -> its reader `read(data_cfg, splits) -> Studies` (modules below this one)
LAYOUTS: dict = {"mimic_cxr_jpg": mimic_cxr_jpg.read, "openi": openi.read}


def read_studies(cfg, splits: tuple[str, ...] = SPLITS) -> Studies:
    """Every split's studies as `data.*` describes them (format, annotation or per-split files, image columns);
    `cfg` is the `data` config node or a plain dict with the same keys. `splits`: the splits the caller needs
    (training: all three; evaluation: the one it scores); a split not needed may be absent from the files (its
    per-split file unset, its key missing from annotation.json) and is then empty."""
    return link_priors(_read(cfg, splits))


def _read(cfg, splits: tuple[str, ...]) -> Studies:
    if cfg.get("format") in LAYOUTS:  # a data set's official layout, read by its own module
        return LAYOUTS[cfg["format"]](cfg, splits)
    files = {s: cfg.get(f"{s}_file") for s in SPLITS}
    image_columns = list(cfg.get("image_columns") or ["image_path"])  # R2Gen's field name if the config has none
    if any(files.values()):
        unset = [f"data.{s}_file" for s in splits if not files[s]]
        if unset:
            need = ("all three of data.train_file, data.val_file and data.test_file" if tuple(splits) == SPLITS
                    else " and ".join(f"data.{s}_file" for s in splits))
            raise ConfigError(f"{', '.join(unset)} not set: give {need}, or none of them and data.annotation with "
                              f"a split column")
        out = {s: [] for s in SPLITS}
        for split, f in files.items():
            if not f:
                continue
            fmt = file_format(f, cfg.get("format"))
            if fmt == "r2gen":
                raise ConfigError(f"data.{split}_file={f}: per-split files must be JSONL or CSV (set data.format=jsonl "
                                  f"or csv); an R2Gen annotation.json holds all splits and goes in data.annotation")
            out[split] = read_table(f, fmt, image_columns, split=split)[split]
        first = {}  # id -> the split file it is in
        for split in SPLITS:
            for e in out[split]:
                if e["id"] in first:
                    raise InputError(f"id {e['id']!r} is in both data.{first[e['id']]}_file={files[first[e['id']]]} "
                                     f"and data.{split}_file={files[split]}; a study belongs to one split: remove it "
                                     f"from one of them")
                first[e["id"]] = split
        return out
    path = cfg["annotation"]
    fmt = file_format(path, cfg.get("format"))
    return read_annotation(path, splits) if fmt == "r2gen" else read_table(path, fmt, image_columns)


def file_format(path, fmt: str | None) -> str:
    if fmt in ("r2gen", "jsonl", "csv"):
        return fmt
    if fmt not in (None, "auto"):
        raise ConfigError(f"data.format={fmt!r}: choose auto, r2gen, jsonl or csv")
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"data.format=auto: cannot tell the format of {path} from its suffix; "
                          f"set data.format=r2gen, jsonl or csv")
    return FORMATS[suffix]


def read_annotation(path: str | Path, splits: tuple[str, ...] = SPLITS) -> Studies:
    """R2Gen's `annotation.json`. Anything off its shape is an `InputError` naming the file and the entry; an
    `image_path` given as one string is one image; study ids must be unique across all splits. A split not in
    `splits` may be missing (it is then empty). An entry's other keys are kept as they are (the context keys of
    r2gen.data.splits, e.g. `subject_id`, `indication`), `study_time` checked and written as ISO 8601 (`parse_time`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"annotation file not found: {path} (set data.annotation, or data.root for its folder)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate a BOM some editors write
    except UnicodeDecodeError:
        raise _utf8_error(path) from None  # its position counted from the file's first byte, BOM or not
    del raw  # not held while the JSON is parsed: MIMIC-CXR's file is ~150 MB
    if not text.strip():
        raise InputError(f"{path}: the file is empty; expected R2Gen's layout "
                         f'{{"train": [...], "val": [...], "test": [...]}}')
    try:
        ann = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); fix the file there "
                         f"(a JSON checker, e.g. `python -m json.tool {path}`, shows the spot)") from None
    layout = 'R2Gen\'s layout is {"train": [...], "val": [...], "test": [...]}'
    if not isinstance(ann, dict):
        raise InputError(f"{path}: the top level is a JSON {_json_type(ann)}, not an object; {layout} (a table of "
                         f"studies goes in a JSONL or CSV file with a split column: data=custom)")
    missing = [s for s in splits if s not in ann]
    if missing:
        expected = f"expected keys {SPLITS}" if tuple(splits) == SPLITS else f"this needs {', '.join(splits)}"
        raise InputError(f"{path}: no {', '.join(missing)} split; {expected} (R2Gen annotation layout)")
    out: Studies = {s: [] for s in SPLITS}
    seen: dict[str, str] = {}  # id -> where it was first seen
    for split in (s for s in SPLITS if s in ann):
        if not isinstance(ann[split], list):
            raise InputError(f"{path}: {split!r} is a JSON {_json_type(ann[split])}, not a list of studies; {layout}")
        for i, e in enumerate(ann[split]):
            where = f"{split}[{i}]"
            if not isinstance(e, dict):
                raise InputError(f"{path}: {where} is a JSON {_json_type(e)}, not an object "
                                 f'{{"id", "report", "image_path"}}')
            for key in ("id", "report", "image_path"):
                if key not in e:
                    raise InputError(f"{path}: {where} has no {key!r} (keys: {sorted(e)})")
            sid, report, images = e["id"], e["report"], e["image_path"]
            if not isinstance(sid, (str, int)) or isinstance(sid, bool) or not str(sid).strip():
                raise InputError(f"{path}: {where} has id={sid!r}; a study id is a non-empty string")
            if not isinstance(report, str):
                raise InputError(f"{path}: {where} (id {sid!r}) has report={report!r}: expected a string")
            if isinstance(images, str):  # one image, written without the list
                images = [images]
            if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
                raise InputError(f"{path}: {where} (id {sid!r}) has image_path={images!r}: expected a list of paths "
                                 f"relative to the image folder")
            sid = str(sid)
            if sid in seen:
                raise InputError(f"{path}: id {sid!r} appears twice ({seen[sid]} and {where}); study ids must be "
                                 f"unique across train, val and test: remove or rename one")
            seen[sid] = where
            entry = {**e, "id": sid, "image_path": images}
            if "study_time" in e:
                entry["study_time"] = parse_time(e["study_time"], f"{path}: {where} (id {sid!r})")
            out[split].append(entry)
    return out


def _json_type(x) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(x), "number")


def not_utf8(path: Path | str, raw: bytes, e: UnicodeDecodeError) -> InputError:
    """The error for a file (`path`: how the user named it) that is not UTF-8, naming the first bad byte: its offset,
    line and column (1-based)."""
    line = raw.count(b"\n", 0, e.start) + 1
    col = e.start - raw.rfind(b"\n", 0, e.start)
    bad = raw[e.start:e.start + 1].hex()
    return InputError(f"{path}: not UTF-8 text: byte 0x{bad} at byte offset {e.start} (line {line}, column {col}); "
                      f"save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`, or your editor's or "
                      f"spreadsheet's 'save as UTF-8')")


def _utf8_error(path: Path, name: str | None = None) -> InputError:
    """`not_utf8` for a file a text reader failed on mid-way (its own error only knows the position in a buffer)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return not_utf8(name or path, raw, e)
    return InputError(f"{name or path}: not UTF-8 text; save the file as UTF-8")


def read_table(path: str | Path, fmt: str, image_columns: list[str], split: str | None = None) -> Studies:
    """A JSONL or CSV table of studies. With `split`, every row belongs to it; otherwise a `split` column says."""
    path = Path(str(path))
    if not path.is_file():
        raise MissingFileError(f"{fmt.upper()} file not found: {path} (set data.annotation, or data.train_file/"
                               f"val_file/test_file, relative to where you run or absolute)")
    need = ["id", "report", *image_columns] + ([] if split else ["split"])
    out: Studies = {s: [] for s in SPLITS}
    seen: dict[str, str] = {}  # id -> the line it was first seen on
    for where, row in table_rows(path, fmt):
        missing = [c for c in need if c not in row]
        if missing:
            fix = " (set data.image_columns)" if set(missing) & set(image_columns) else ""
            raise InputError(f"{path} {where}: no column {', '.join(map(repr, missing))}{fix}; "
                             f"its columns: {', '.join(map(str, row))}")
        s = split or SPLIT_NAMES.get(str(row["split"]).strip().lower())
        if s is None:
            raise InputError(f"{path} {where}: split={row['split']!r}: expected train, val (or validate) or test")
        sid = "" if row["id"] is None else str(row["id"]).strip()
        if not sid:
            raise InputError(f"{path} {where}: the id is empty; every study needs a unique id")
        if sid in seen:
            raise InputError(f"{path} {where}: id {sid!r} appears twice (first on {seen[sid]}); study ids must be "
                             f"unique: remove or rename one")
        seen[sid] = where
        images = [p for c in image_columns for p in cell_paths(row[c])]
        entry = {"id": sid, "report": "" if row["report"] is None else str(row["report"]), "image_path": images,
                 "split": s}
        out[s].append({**entry, **context(row, len(images), f"{path} {where}")})
    if not seen:
        header = " or has only a header row" if fmt == "csv" else ""
        raise InputError(f"{path}: no studies in it (the file is empty{header}); expected one row per study with "
                         f"{', '.join(need)}")
    return out


def context(row: dict, n_images: int, where: str) -> dict:
    """The optional context columns of one table row (module docstring), the empty ones left out."""
    out = {}
    for key in ("indication", "comparison", "subject_id"):
        value = row.get(key)
        if value is not None and str(value).strip():
            out[key] = str(value).strip()
    if (when := parse_time(row.get("study_time"), where)) is not None:
        out["study_time"] = when
    views = [v.upper() for v in cell_paths(row.get("view_positions"))]
    if views:
        if len(views) != n_images:
            raise InputError(f"{where}: {len(views)} view_positions for {n_images} images; give one per image, in "
                             f"the images' order (e.g. PA;LATERAL), or leave the cell empty")
        out["view_positions"] = views
    return out


def table_rows(path: Path, fmt: str):
    """(`line n` / `row n`, row dict) for each row of the table."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM from Excel is not part of a name
            # strict: a quote opened and never closed is an error, not the rest of the file read as one field
            reader = csv.DictReader(f, strict=True)
            start = 1  # the line the next record starts on
            try:
                if reader.fieldnames is None:  # reads the header row; None: an empty file
                    return
                start = reader.line_num + 1
                for n, row in enumerate(reader, 2):
                    yield f"row {n}", row
                    start = reader.line_num + 1
            except UnicodeDecodeError:
                raise _utf8_error(path) from None
            except csv.Error as e:  # an unclosed quote, text after a closing quote, a field over the size limit
                raise InputError(f"{path} line {start}: not valid CSV ({e}, in the row that starts on this line); "
                                 f"a quoted field must close its quote: fix it there, or save the file again as "
                                 f"CSV (UTF-8) from your spreadsheet") from None
        return
    for n, row in jsonl_objects(path):
        yield f"line {n}", row


def jsonl_objects(path: Path, name: str | None = None):
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a JSON object is an error
    naming `name` (how the user gave the file, e.g. `predictions=<path>`; default the path) and the line."""
    name = name or str(path)
    with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first object
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{name} line {n}: not JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{name} line {n}: expected a JSON object per line, got {_json_type(row)}")
                yield n, row
        except UnicodeDecodeError:
            raise _utf8_error(path, name) from None


def cell_paths(cell) -> list[str]:
    """An image cell: a list of paths (JSONL), or one string with paths joined by `;`; empty cells give none."""
    if cell is None:
        return []
    if isinstance(cell, list):
        return [str(p).strip() for p in cell if str(p).strip()]
    return [p.strip() for p in str(cell).split(";") if p.strip()]
