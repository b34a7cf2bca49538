"""MIMIC-CXR read from PhysioNet's layout as downloaded (`data=mimic_cxr_jpg`): the study lists of
`r2gen.data.splits` from MIMIC-CXR-JPG's split and metadata tables, its JPEGs and MIMIC-CXR's free-text reports.

What it reads (`data.*`):

- `split_file`: `mimic-cxr-2.0.0-split.csv.gz` (or the `.csv` beside it, unpacked): dicom_id, study_id, subject_id,
  split (train / validate / test; validate is r2gen's val);
- `metadata_file`: `mimic-cxr-2.0.0-metadata.csv.gz` (or `.csv`): per image its ViewPosition, StudyDate
  (YYYYMMDD) and StudyTime (HHMMSS.fff written as a number: `84530.0` is 08:45:30);
- `reports`: `mimic-cxr-reports.zip`, read inside the zip (nothing is extracted), or the folder it was unpacked
  into; a study's report is `files/pXX/p<subject_id>/s<study_id>.txt` (XX: the subject id's first two digits);
- images: `files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg`, relative to `data.image_dir`.

A study's `id` is `s<study_id>` (`s50414267`), as its report file is named. Its report is split into sections
(`r2gen.data.sections`, the authors' parser) and `data.target` chooses what the model writes: `findings` (the
FINDINGS section, or for a report with neither findings nor impression its last paragraphs, as the authors'
parser falls back), `impression`, or `findings_impression` (both, those present, joined). A study without it is
left out and counted. Images are kept by ViewPosition in the order of `data.views` (frontal first), then by
dicom_id; other views are dropped, and a study left with no image is counted and left out. A missing report is an
error under `data.on_bad_sample=error`, counted and left out under `skip`. The context keys of the study
contract are filled: indication (INDICATION, else HISTORY), comparison, view_positions, subject_id, study_time
(ISO 8601 from the study's first StudyDate + StudyTime), findings, impression.

Imports only the standard library, the split names and the section parser: nothing here writes to disk.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path

from r2gen.data.sections import split_sections
from r2gen.data.splits import SPLIT_NAMES, SPLITS, TARGETS, Studies, target_choice, target_text
from r2gen.errors import ConfigError, InputError, MissingFileError

log = logging.getLogger(__name__)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
METADATA_COLUMNS = ("dicom_id", "study_id", "subject_id", "ViewPosition", "StudyDate", "StudyTime")
MAX_REPORT_BYTES = 4 << 20  # MIMIC-CXR's longest report is a few kB: a larger member is not a report
REPORT_NAME = re.compile(r"(?:^|/)(files/p\d\d/p\d+/s\d+\.txt)$")  # a report's path in the zip (maybe in a folder)
SHOW = 5  # missing reports named in the message
DOWNLOAD = "physionet.org/content/mimic-cxr-jpg/2.0.0"


def read(cfg, splits: tuple[str, ...] = SPLITS) -> Studies:
    """The studies of `splits` (the others empty) from the files `cfg` (the `data` node) names; see the module
    docstring. Every error is one line naming the key or file and the fix."""
    target = target_choice(cfg)
    views = [str(v).strip().upper() for v in (cfg.get("views") or [])]
    if not views:
        raise ConfigError(f"data.views={cfg.get('views')!r}: list the ViewPosition values to use, frontal first, "
                          f"e.g. data.views=[PA,AP,LATERAL,LL]")
    policy = cfg.get("on_bad_sample", "error")
    if policy not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_sample={policy!r}: choose error or skip")
    split_of, images = _read_split(cfg["split_file"])
    meta = _read_metadata(cfg["metadata_file"])
    needed = [s for s in SPLITS if s in splits]
    out: Studies = {s: [] for s in SPLITS}
    with Reports(cfg["reports"]) as reports:
        missing: list[str] = []
        for split in needed:
            counts: Counter = Counter()
            for study in sorted(sid for sid, s in split_of.items() if s == split):
                subject = images[study][0][1]
                entry = _study(study, subject, images[study], meta, views, counts)
                if entry is None:
                    continue
                text = reports.read(subject, study)
                if text is None:
                    missing.append(reports.where(subject, study))
                    counts["no report"] += 1
                    continue
                sections = split_sections(text, study)
                texts = target_texts(sections)
                if not texts[target]:
                    counts[f"no {target}"] += 1
                    continue
                out[split].append({**entry, "report": texts[target], "findings": texts["findings"],
                                   "impression": texts["impression"],
                                   "indication": sections.get("indication") or sections.get("history"),
                                   "comparison": sections.get("comparison"), "split": split})
            left = ", ".join(f"{n} {why}" for why, n in sorted(counts.items())) or "none"
            log.info("mimic_cxr_jpg %s: %d studies (data.target=%s, data.views=%s); left out: %s", split,
                     len(out[split]), target, views, left)
        if missing and policy == "error":
            more = f" and {len(missing) - SHOW} more" if len(missing) > SHOW else ""
            raise MissingFileError(f"data.reports={cfg['reports']}: {len(missing)} report(s) not found: "
                                   f"{', '.join(missing[:SHOW])}{more}; give the complete mimic-cxr-reports.zip (or "
                                   f"its unpacked folder), or set data.on_bad_sample=skip to leave those studies out")
        if missing:
            log.warning("data.on_bad_sample=skip: left out %d studies without a report in %s", len(missing),
                        cfg["reports"])
    return out


def target_texts(sections: dict[str, str]) -> dict[str, str | None]:
    """The text of each `data.target` choice in a split report (None: not in it): findings (else, in a report with
    neither findings nor impression, its last paragraphs), impression, and both joined (those present)."""
    findings = sections.get("findings") or (None if "impression" in sections else sections.get("last_paragraph"))
    impression = sections.get("impression")
    return {t: target_text(findings, impression, t) for t in TARGETS}


def _study(study: str, subject: str, rows: list[tuple[str, str]], meta: dict, views: list[str],
           counts: Counter) -> dict | None:
    """The study's images of `views` in that order (then by dicom_id), its time and subject; None (counted) when no
    image of those views is left."""
    rank = {v: i for i, v in enumerate(views)}
    kept = sorted(((rank[meta[d][0]], d) for d, _ in rows if d in meta and meta[d][0] in rank))
    if not kept:
        counts["with no image of data.views"] += 1
        return None
    folder = f"files/p{subject[:2]}/p{subject}/s{study}"
    times = sorted(meta[d][1] for d, _ in rows if d in meta and meta[d][1])
    return {"id": f"s{study}", "image_path": [f"{folder}/{d}.jpg" for _, d in kept],
            "view_positions": [views[r] for r, _ in kept], "subject_id": subject,
            "study_time": times[0] if times else None}


def _existing(path) -> Path:
    """`path`, or the `.csv` beside a `.csv.gz` that is not there (a table unpacked after download)."""
    path = Path(str(path)).expanduser()
    if not path.is_file() and path.name.endswith(".csv.gz") and path.with_suffix("").is_file():
        return path.with_suffix("")
    return path


def _rows(key: str, path, columns: tuple[str, ...]):
    """(row number, row) of the CSV table `data.<key>` (gzipped or not, told by its first bytes) with `columns`."""
    path = _existing(path)
    name = f"data.{key}={path}"
    if not path.is_file():
        raise MissingFileError(f"{name}: no such file; download it from {DOWNLOAD} into data.root, or set "
                               f"data.{key} to where it is")
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rt", encoding="utf-8", newline="") if gz
              else open(path, encoding="utf-8-sig", newline="")) as f:
            reader = csv.DictReader(f, strict=True)
            header = reader.fieldnames or []
            lacking = [c for c in columns if c not in header]
            if lacking:
                raise InputError(f"{name}: no column {', '.join(lacking)} (its columns: {', '.join(header) or 'none'});"
                                 f" is it the right file? Download it again from {DOWNLOAD}")
            yield from enumerate(reader, 2)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(f"{name}: not a complete gzip file ({e or type(e).__name__}); download it again from "
                         f"{DOWNLOAD}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start}); download it again from "
                         f"{DOWNLOAD}") from None
    except csv.Error as e:
        raise InputError(f"{name}: not valid CSV ({e}); download it again from {DOWNLOAD}") from None


def _ids(name: str, n: int, row: dict, *keys: str) -> list[str]:
    out = []
    for k in keys:
        v = (row.get(k) or "").strip()
        if not v.isdigit():
            raise InputError(f"{name} row {n}: {k}={v!r} is not a number; download the file again from {DOWNLOAD}")
        out.append(v)
    return out


def _read_split(path) -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
    """({study_id: r2gen split}, {study_id: [(dicom_id, subject_id)]}) from the split table."""
    split_of: dict[str, str] = {}
    images: dict[str, list[tuple[str, str]]] = defaultdict(list)
    name = f"data.split_file={_existing(path)}"
    for n, row in _rows("split_file", path, SPLIT_COLUMNS):
        study, subject = _ids(name, n, row, "study_id", "subject_id")
        split = SPLIT_NAMES.get((row["split"] or "").strip().lower())
        if split is None:
            raise InputError(f"{name} row {n}: split={row['split']!r}: expected train, validate or test")
        if split_of.setdefault(study, split) != split:
            raise InputError(f"{name} row {n}: study {study} is in both {split_of[study]} and {split}; a study "
                             f"belongs to one split: download the file again from {DOWNLOAD}")
        if images[study] and images[study][0][1] != subject:
            raise InputError(f"{name} row {n}: study {study} belongs to subjects {images[study][0][1]} and "
                             f"{subject}; download the file again from {DOWNLOAD}")
        images[study].append(((row["dicom_id"] or "").strip(), subject))
    if not split_of:
        raise InputError(f"{name}: no rows; expected one row per image with {', '.join(SPLIT_COLUMNS)}")
    return split_of, images


def _read_metadata(path) -> dict[str, tuple[str, str | None]]:
    """{dicom_id: (ViewPosition upper-cased, ISO 8601 study time or None)} from the metadata table."""
    name = f"data.metadata_file={_existing(path)}"
    return {(row["dicom_id"] or "").strip(): ((row["ViewPosition"] or "").strip().upper(),
                                              study_time(row["StudyDate"], row["StudyTime"], f"{name} row {n}"))
            for n, row in _rows("metadata_file", path, METADATA_COLUMNS)}


def study_time(date: str | None, time: str | None, where: str = "") -> str | None:
    """`StudyDate` 21800506 and `StudyTime` 84530.0 (HHMMSS.fff as a number, leading zeros dropped) ->
    `2180-05-06T08:45:30`; None when the date is empty. A value that is no date or time is an InputError."""
    date, time = (date or "").strip(), (time or "").strip()
    if not date:
        return None
    whole = time.split(".")[0] if time else "0"
    if not (len(date) == 8 and date.isdigit() and whole.isdigit() and len(whole) <= 6):
        raise InputError(f"{where}: StudyDate={date!r} StudyTime={time!r}: expected YYYYMMDD and HHMMSS(.fff); "
                         f"download the file again from {DOWNLOAD}")
    hms = whole.zfill(6)
    h, m, s = int(hms[:2]), int(hms[2:4]), int(hms[4:])
    mo, d = int(date[4:6]), int(date[6:])
    if not (h < 24 and m < 60 and s < 60 and 1 <= mo <= 12 and 1 <= d <= 31):
        raise InputError(f"{where}: StudyDate={date!r} StudyTime={time!r} is no date and time; download the file "
                         f"again from {DOWNLOAD}")
    return f"{date[:4]}-{date[4:6]}-{date[6:]}T{hms[:2]}:{hms[2:4]}:{hms[4:]}"


class Reports:
    """The free-text reports, from `mimic-cxr-reports.zip` (read in place, member by member, each at most
    MAX_REPORT_BYTES) or the folder it was unpacked into (holding `files/`)."""

    def __init__(self, path):
        self.path = Path(str(path)).expanduser()
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.base = self.path
        if self.path.is_dir():
            self.base = self.path.parent if self.path.name == "files" and not (self.path / "files").is_dir() \
                else self.path
            return
        if not self.path.is_file():
            raise MissingFileError(f"data.reports={self.path}: no such file or folder; download mimic-cxr-reports.zip "
                                   f"from physionet.org/content/mimic-cxr/2.0.0 and set data.reports to it (or to the "
                                   f"folder it was unpacked into)")
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"data.reports={self.path}: not a zip file ({e}); download mimic-cxr-reports.zip again, "
                             f"or set data.reports to the folder it was unpacked into") from None
        for info in self.zip.infolist():
            m = REPORT_NAME.search(info.filename)
            if m:
                self.members[m.group(1)] = info

    def __enter__(self) -> Reports:
        return self

    def __exit__(self, *exc) -> None:
        if self.zip is not None:
            self.zip.close()

    @staticmethod
    def relative(subject: str, study: str) -> str:
        return f"files/p{subject[:2]}/p{subject}/s{study}.txt"

    def where(self, subject: str, study: str) -> str:
        rel = self.relative(subject, study)
        return f"{self.path}:{rel}" if self.zip else str(self.base / rel)

    def read(self, subject: str, study: str) -> str | None:
        """The report's text (UTF-8), or None where it is not there."""
        rel = self.relative(subject, study)
        if self.zip is None:
            p = self.base / rel
            if not p.is_file():
                return None
            if p.stat().st_size > MAX_REPORT_BYTES:
                raise self._too_big(str(p))
            with open(p, "rb") as f:
                return self._decode(f.read(MAX_REPORT_BYTES + 1), str(p))
        info = self.members.get(rel)
        if info is None:
            return None
        where = f"{self.path}:{info.filename}"
        if info.file_size > MAX_REPORT_BYTES:
            raise self._too_big(where)
        try:
            with self.zip.open(info) as f:
                raw = f.read(MAX_REPORT_BYTES + 1)  # bounded even when the header lies about the size
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise InputError(f"data.reports={where}: cannot be read from the zip ({e}); download "
                             f"mimic-cxr-reports.zip again") from None
        return self._decode(raw, where)

    def _decode(self, raw: bytes, where: str) -> str:
        if len(raw) > MAX_REPORT_BYTES:
            raise self._too_big(where)
        try:
            return io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig").read()  # universal newlines, as the
        except UnicodeDecodeError as e:  # authors' parser read the files (its per-study offsets count that text)
            raise InputError(f"data.reports={where}: not UTF-8 text ({e.reason} at byte {e.start}); download "
                             f"mimic-cxr-reports.zip again") from None

    @staticmethod
    def _too_big(where: str) -> InputError:
        return InputError(f"data.reports={where}: over {MAX_REPORT_BYTES >> 20} MB, not a MIMIC-CXR report (a few "
                          f"kB); download mimic-cxr-reports.zip again")
