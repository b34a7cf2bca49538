"""A tiny MIMIC-CXR tree in PhysioNet's exact layout, synthetic (the real data set is credentialed): MIMIC-CXR-JPG's
gzipped split and metadata tables with every real column, JPEGs under files/pXX/p<subject>/s<study>/, and the
free-text reports both as mimic-cxr-reports.zip and unpacked into a folder.

The reports are written the way MIMIC-CXR's are (a centred FINAL REPORT title, every line indented by one space,
paragraphs separated by a line holding one space) and cover the section parser's cases. Images are the NIH
ChestX-ray14 sample's JPEGs (shared data, copied into the tree) when present, else small random ones.
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .paths import SHARED_DATA

NIH_IMAGES = SHARED_DATA / "nih_cxr14_sample" / "images"
SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
METADATA_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                   "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
                "": ""}


def report(*sections: tuple[str, str], wet_read: str | None = None) -> str:
    """A report as MIMIC-CXR writes one: (header, text) sections, `\n\n` in a text a paragraph break; header ""
    is text without one. `wet_read`: the preliminary read written above the final report."""
    lines = []
    if wet_read:
        lines += [" WET READ: ___ ___ 2:05 PM", f"  {wet_read}", " " + "_" * 78, ""]
    lines.append(" " * 33 + "FINAL REPORT")
    for header, text in sections:
        body = [f" {w}" if w else " " for w in text.split("\n")]
        if header:
            body[0] = f" {header}:  {body[0].strip()}"
        lines += [*body, " "]
    return "\n".join(lines) + "\n"


FULL = report(("EXAMINATION", "CHEST (PA AND LAT)"), ("INDICATION", "___F with cough  // eval for pneumonia"),
              ("TECHNIQUE", "Chest PA and lateral"), ("COMPARISON", "Chest radiograph ___."),
              ("FINDINGS", "The lungs are clear.\nThe heart size is normal."),
              ("IMPRESSION", "No acute cardiopulmonary process."))


@dataclass
class Study:
    subject: str
    study: str
    split: str  # as split.csv writes it: train | validate | test
    text: str | None  # None: no report file
    views: list[tuple[str, str]]  # (dicom_id, ViewPosition)
    date: str = "21800506"
    time: str = "84530.0"
    sections: dict = field(default_factory=dict)  # what the reader should make of it (for the tests)


def studies() -> list[Study]:
    """The tree's studies: three subjects, each with several studies in train, validate and test."""
    a, b, c = "10000032", "11000011", "12000022"
    lc = " FINAL REPORT\n Findings:  Heart size is normal.\n \n Impression:  No pneumonia.\n"
    return [
        # a complete report; images listed lateral first, the reader puts the frontal one first
        Study(a, "50000001", "train", FULL, [("d0001b", "LATERAL"), ("d0001a", "PA")], time="84530.0"),
        # FINDINGS AND IMPRESSION: is the impression (no findings)
        Study(a, "50000002", "train", report(("INDICATION", "Fever."), ("COMPARISON", "None."),
                                             ("FINDINGS AND IMPRESSION", "Small left pleural effusion.")),
              [("d0002a", "AP")], time="142302.234"),
        # no FINDINGS/IMPRESSION header: the last paragraphs are the findings (the authors' fallback)
        Study(a, "50000003", "train", report(("INDICATION", "Shortness of breath."),
                                             ("", "Mild cardiomegaly.\n\nNo focal consolidation.")),
              [("d0003a", "PA"), ("d0003b", "LL")], date="21810102", time="530.5"),
        # lower-case headers are no headers: the whole report splits into its first and last paragraphs
        Study(a, "50000004", "train", lc, [("d0004a", "PA")]),
        # a wet read above the final report; CONCLUSION is the impression
        Study(b, "50000005", "train", report(("INDICATION", "Chest pain."), ("FINDINGS", "Lungs are well expanded."),
                                             ("CONCLUSION", "Normal chest."), wet_read="No acute process."),
              [("d0005a", "AP"), ("d0005b", "LATERAL"), ("d0005c", "AP")]),
        # only an impression
        Study(b, "50000006", "train", report(("HISTORY", "Trauma."), ("IMPRESSION", "No fracture.")),
              [("d0006a", "PA")]),
        # only a lateral view and a view the config does not list (with data.views=[PA, AP]: no image left)
        Study(b, "50000007", "train", FULL, [("d0007a", "LATERAL"), ("d0007b", "")]),
        # a custom rule of the authors' tables: the impression is in the RECOMMENDATION(S) section
        Study(b, "50913680", "validate", report(("INDICATION", "Nodule follow-up."),
                                                ("FINDINGS", "A 5 mm nodule in the right upper lobe."),
                                                ("RECOMMENDATION(S)", "CT in 3 months.")),
              [("d0008a", "PA"), ("d0008b", "LATERAL")]),
        Study(b, "50000009", "validate", FULL.replace("clear", "hyperinflated"), [("d0009a", "AP")]),
        # a custom index table entry with [0, 0]: no findings or impression at all
        Study(b, "58235663", "validate", report(("INDICATION", "Line placement."), ("FINDINGS", "Line in place.")),
              [("d0010a", "AP")]),
        Study(c, "50000011", "test", FULL.replace("normal", "enlarged"), [("d0011a", "PA"), ("d0011b", "LATERAL")]),
        Study(c, "50000012", "test", report(("COMPARISON", "___."), ("FINDINGS", "Right basilar atelectasis."),
                                            ("IMPRESSION", "Atelectasis.")), [("d0012a", "AP")], time="235959.999"),
        Study(c, "50000013", "test", FULL.replace("clear", "clear bilaterally"), [("d0013a", "PA")]),
    ]


def _images(n: int):
    """`n` JPEG payloads: the NIH sample's images in name order, else random 64x64 ones."""
    real = sorted(NIH_IMAGES.glob("*.jpg")) if NIH_IMAGES.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(n):
        if real:
            yield real[i % len(real)].read_bytes()
        else:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="JPEG")
            yield buf.getvalue()


def _gz_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with gzip.open(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def rel_report(s: Study) -> str:
    return f"files/p{s.subject[:2]}/p{s.subject}/s{s.study}.txt"


def build_tree(base: Path, items: list[Study] | None = None) -> dict[str, Path]:
    """`base/mimic-cxr-jpg/2.0.0/` (tables, files/, mimic-cxr-reports.zip) and `base/mimic-cxr-reports/` (the zip
    unpacked: files/...). Returns {"root", "zip", "folder"}."""
    items = studies() if items is None else items
    root = base / "mimic-cxr-jpg" / "2.0.0"
    folder = base / "mimic-cxr-reports"
    root.mkdir(parents=True)
    payloads = _images(sum(len(s.views) for s in items))
    split_rows, meta_rows = [], []
    for s in items:
        study_dir = root / "files" / f"p{s.subject[:2]}" / f"p{s.subject}" / f"s{s.study}"
        study_dir.mkdir(parents=True)
        for dicom, view in s.views:
            (study_dir / f"{dicom}.jpg").write_bytes(next(payloads))
            split_rows.append([dicom, s.study, s.subject, s.split])
            meta_rows.append([dicom, s.subject, s.study, "CHEST (PA AND LAT)", view, 3056, 2544, s.date, s.time,
                              "CHEST (PA AND LAT)", VIEW_MEANING[view], "Erect"])
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_HEADER, split_rows)
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER, meta_rows)
    with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for s in items:
            if s.text is not None:
                z.writestr(rel_report(s), s.text)
                (folder / rel_report(s)).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel_report(s)).write_text(s.text)
    return {"root": root, "zip": root / "mimic-cxr-reports.zip", "folder": folder}


def copy_tree(tree: dict[str, Path], dest: Path) -> dict[str, Path]:
    """The tree copied under `dest` (for a test that breaks it)."""
    base = tree["root"].parent.parent
    shutil.copytree(base, dest)
    return {k: dest / p.relative_to(base) for k, p in tree.items()}
