"""IU-Xray as Open-i ships it (`data=openi`): one XML report per file in `ecgen-radiology/` (NLMCXR_reports.tgz)
and one PNG per image, `<image id>.png` (NLMCXR_png.tgz).

A report (`1.xml`) is an `<eCitation>` with `<uId id="CXR1"/>`, the sections as
`<MedlineCitation><Article><Abstract><AbstractText Label="COMPARISON|INDICATION|FINDINGS|IMPRESSION">`, the
curated and the automatic MeSH terms as `<MeSH><major>..</major><automatic>..</automatic></MeSH>`, and its images
as `<parentImage id="CXR1_1_IM-0001-3001">` elements, in the order R2Gen numbered them (its `0.png`, `1.png` are the
first two). A study's id is R2Gen's: the first image id without its last `-NNNN` part (`CXR1_1_IM-0001`), so
`data.split=r2gen` takes each study's split from R2Gen's IU-Xray `annotation.json` (`data.r2gen_annotation`) and
results stay comparable with the R2Gen line; `data.split=random` splits 70/10/20 (R2Gen's ratios) by a stable
hash of the Open-i uid and `data.split_seed`.

`data.target` picks the report: `findings` (what R2Gen's IU-Xray report is), `impression`, or
`findings_impression` (the two joined by a space; either alone where the other is empty). Reports without an
image or without the target text, and (`split=r2gen`) studies R2Gen's annotation does not list, are left out and
counted in the log. Every report section and the MeSH terms are kept on the study (`r2gen.data.splits`).

The XML is untrusted input: a file over `MAX_XML_BYTES`, or with a DTD (`<!DOCTYPE`, `<!ENTITY`: entity expansion,
external entities) is refused before it is parsed. Nothing is written into the data folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from r2gen.data.splits import SPLIT_NAMES, SPLITS, Studies, target_choice, target_text
from r2gen.errors import ConfigError, InputError, MissingFileError

log = logging.getLogger(__name__)

SPLIT_MODES = ("r2gen", "random")
RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}  # R2Gen's IU-Xray split
SECTIONS = {"COMPARISON": "comparison", "INDICATION": "indication", "FINDINGS": "findings", "IMPRESSION": "impression"}
MAX_XML_BYTES = 1 << 20  # Open-i's reports are 2-6 KB; a bigger file is not one of them
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
FIX_ROOT = ("set data.root to the folder holding ecgen-radiology/ and images/ (NLMCXR_reports.tgz and NLMCXR_png.tgz "
            "unpacked), or data.reports to the XML folder")


def read(cfg, splits: tuple[str, ...] = SPLITS) -> Studies:
    """Every split's studies from the Open-i folders `cfg` (the `data` node) names; logs what was left out."""
    studies, left_out = read_counted(cfg)
    for split in SPLITS:
        c = left_out[split]
        log.info("data=openi %s: %d studies; left out %d without the %s text, %d without an image", split,
                 len(studies[split]), c["no_target"], cfg.get("target") or "findings", c["no_image"])
    if left_out[None]["no_image"] or left_out[None]["not_in_r2gen"]:
        log.info("data=openi: left out %d reports without an image (no R2Gen id) and %d not in "
                 "data.r2gen_annotation=%s", left_out[None]["no_image"], left_out[None]["not_in_r2gen"],
                 cfg.get("r2gen_annotation"))
    return studies


def read_counted(cfg) -> tuple[Studies, dict[str | None, Counter]]:
    """(studies, {split: Counter(no_target=, no_image=)} for what was left out, with key None for reports that got no
    split: `no_image` (split=r2gen: no image, so no R2Gen id) and `not_in_r2gen`)."""
    target = target_choice(cfg)
    mode = cfg.get("split") or "r2gen"
    if mode not in SPLIT_MODES:
        raise ConfigError(f"data.split={mode!r}: choose r2gen (R2Gen's splits, data.r2gen_annotation) or random "
                          f"(70/10/20 by data.split_seed)")
    r2gen_split = r2gen_splits(cfg.get("r2gen_annotation")) if mode == "r2gen" else None
    seed = cfg.get("split_seed") or 0
    studies: Studies = {s: [] for s in SPLITS}
    left_out: dict[str | None, Counter] = {s: Counter() for s in (*SPLITS, None)}
    first_file: dict[str, Path] = {}
    for path in report_files(cfg.get("reports")):
        r = parse_report(path)
        sid = study_id(r["images"][0]) if r["images"] else None
        if sid is not None:
            if sid in first_file:
                raise InputError(f"{path}: study id {sid!r} (its first image) is also {first_file[sid]}'s; each "
                                 f"report lists its own images: remove one of the two files")
            first_file[sid] = path
        if r2gen_split is None:
            split = random_split(r["uid"], seed)
        elif sid is None:
            left_out[None]["no_image"] += 1
            continue
        elif sid not in r2gen_split:
            left_out[None]["not_in_r2gen"] += 1
            continue
        else:
            split = r2gen_split[sid]
        if sid is None:
            left_out[split]["no_image"] += 1
            continue
        report = target_text(r["findings"], r["impression"], target) or ""
        if not report:
            left_out[split]["no_target"] += 1
            continue
        studies[split].append({"id": sid, "report": report, "image_path": [f"{i}.png" for i in r["images"]],
                               "split": split, "uid": r["uid"], **{k: r[k] for k in SECTIONS.values()},
                               "mesh_major": r["mesh_major"], "mesh_automatic": r["mesh_automatic"]})
    if r2gen_split is not None and not any(studies.values()):
        raise InputError(f"data.r2gen_annotation={cfg.get('r2gen_annotation')}: none of its {len(r2gen_split)} "
                         f"study ids is a study of data.reports={cfg.get('reports')}; give R2Gen's IU-Xray "
                         f"annotation.json, or data.split=random")
    return studies, left_out


def report_files(folder) -> list[Path]:
    """The `*.xml` files of `data.reports`, in numeric order (1.xml, 2.xml, ..., 10.xml)."""
    if folder is None:
        raise ConfigError(f"data.reports is not set: {FIX_ROOT}")
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "no such folder"
        raise MissingFileError(f"data.reports={folder}: {what}; {FIX_ROOT}")
    files = sorted((p for p in path.glob("*.xml") if p.is_file()),
                   key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))
    if not files:
        raise InputError(f"data.reports={folder}: no .xml report in it; {FIX_ROOT}")
    return files


def parse_report(path: Path) -> dict[str, Any]:
    """One Open-i XML report: {"uid", "images": [image id, ...], "comparison", "indication", "findings",
    "impression" (stripped text, None where the section is absent or empty), "mesh_major", "mesh_automatic"}."""
    size = path.stat().st_size
    if size > MAX_XML_BYTES:
        raise InputError(f"{path}: {size} bytes, over the {MAX_XML_BYTES} an Open-i report is at most; remove the "
                         f"file from data.reports (it is not an ecgen-radiology report)")
    raw = path.read_bytes()
    if _DTD.search(raw):
        raise InputError(f"{path}: has a DTD (<!DOCTYPE or <!ENTITY), which Open-i's reports never have and r2gen "
                         f"does not read (entity expansion); use the files of NLMCXR_reports.tgz as released")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        line, col = e.position
        raise InputError(f"{path} line {line} column {col + 1}: not well-formed XML ({str(e).split(':')[0]}); "
                         f"fix the file there or unpack it again from NLMCXR_reports.tgz") from None
    if root.tag != "eCitation":
        raise InputError(f"{path}: the root element is <{root.tag}>, not <eCitation>: not an Open-i report; "
                         f"data.reports must be the ecgen-radiology folder")
    uid_el = root.find("uId")
    uid = (uid_el.get("id") or "").strip() if uid_el is not None else ""
    if not uid:
        raise InputError(f'{path}: no <uId id="..."/> (the Open-i report id, e.g. CXR1); every Open-i report has '
                         f"one: unpack the file again from NLMCXR_reports.tgz")
    out: dict[str, Any] = {"uid": uid, **{k: None for k in SECTIONS.values()}}
    for node in root.iter("AbstractText"):
        key = SECTIONS.get((node.get("Label") or "").strip().upper())
        if key is not None:
            out[key] = "".join(node.itertext()).strip() or None
    mesh = root.find("MeSH")
    for kind in ("major", "automatic"):
        terms = [] if mesh is None else ["".join(m.itertext()).strip() for m in mesh.findall(kind)]
        out[f"mesh_{kind}"] = [t for t in terms if t]
    images = [(p.get("id") or "").strip() for p in root.iter("parentImage")]
    bad = next((i for i in images if not i or "/" in i or "\\" in i or i.startswith(".")), None)
    if bad is not None:
        raise InputError(f"{path}: <parentImage id={bad!r}>: an image id names a PNG in data.image_dir "
                         f"(e.g. CXR1_1_IM-0001-3001); fix the id")
    out["images"] = images
    return out


def study_id(first_image: str) -> str:
    """R2Gen's IU-Xray study id: the first image id without its last `-NNNN` part
    (CXR2384_IM-0942-1001 -> CXR2384_IM-0942; CXR1122_IM-0080-1001-0001 -> CXR1122_IM-0080-1001)."""
    return first_image.rsplit("-", 1)[0] if "-" in first_image else first_image


def random_split(uid: str, seed: int) -> str:
    """train/val/test for an Open-i uid: 70/10/20 by a hash of (seed, uid), the same on every machine and run."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode()).digest()[:8], "big") / 2 ** 64  # uniform in [0, 1)
    edge = 0.0
    for split, share in RATIOS.items():
        edge += share
        if u < edge:
            return split
    return "test"


def r2gen_splits(path) -> dict[str, str]:
    """{study id: split} from R2Gen's IU-Xray annotation.json (`data.r2gen_annotation`)."""
    if path is None:
        raise ConfigError("data.r2gen_annotation is not set: data.split=r2gen takes the splits from R2Gen's IU-Xray "
                          "annotation.json; set data.r2gen_annotation=/data/iu_xray/annotation.json, or "
                          "data.split=random")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise MissingFileError(f"data.r2gen_annotation={path}: no such file; give R2Gen's IU-Xray annotation.json "
                               f"(its ids decide the splits), or data.split=random")
    try:
        ann = json.loads(p.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"data.r2gen_annotation={path}: not R2Gen's annotation.json (not UTF-8 JSON: {e}); give "
                         f"R2Gen's IU-Xray annotation.json, or data.split=random") from None
    shape = 'R2Gen\'s layout is {"train": [{"id": ...}, ...], "val": [...], "test": [...]}'
    if not isinstance(ann, dict):
        raise InputError(f"data.r2gen_annotation={path}: the top level is not an object; {shape}")
    out: dict[str, str] = {}
    for name, entries in ann.items():
        split = SPLIT_NAMES.get(str(name).lower())
        if split is None or not isinstance(entries, list):
            raise InputError(f"data.r2gen_annotation={path}: key {name!r} is not a split with a list of studies; "
                             f"{shape}")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("id"), str):
                raise InputError(f"data.r2gen_annotation={path}: {name}[{i}] has no string id; {shape}")
            if out.setdefault(e["id"], split) != split:
                raise InputError(f"data.r2gen_annotation={path}: id {e['id']!r} is in both {out[e['id']]} and "
                                 f"{split}; a study belongs to one split")
    return out
