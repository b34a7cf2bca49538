"""data=mimic_cxr_jpg: MIMIC-CXR read from PhysioNet's layout as downloaded (r2gen.data.mimic_cxr_jpg), on a tiny
synthetic tree in the exact layout (tests/helpers/mimic_cxr.py): splits, targets, views, study times, the reports
zip and folder, what is left out and counted, the errors, and one training run through the public functions."""

from __future__ import annotations

import gzip
import json
import logging
import math
import zipfile
from pathlib import Path

import pytest

from r2gen.config_check import check_config
from r2gen.data import mimic_cxr_jpg
from r2gen.data.annotations import read_studies
from r2gen.data.clean import clean_report_mimic_cxr
from r2gen.data.datamodule import ReportDataModule
from r2gen.data.mimic_cxr_jpg import study_time
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.provenance import annotation_files

from .helpers.files import read_jsonl, snapshot
from .helpers.mimic_cxr import Study, build_tree, copy_tree, rel_report, studies


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    return build_tree(tmp_path_factory.mktemp("physionet"))


@pytest.fixture
def read(make_cfg):
    """read_studies of the composed data=mimic_cxr_jpg config with `overrides`."""
    def run(tree, *overrides: str, splits=("train", "val", "test")):
        cfg = make_cfg("data=mimic_cxr_jpg", f"data.root={tree['root']}", *overrides, small=False)
        return read_studies(cfg.data, splits)

    return run


def ids(studies):
    return {s: [e["id"] for e in studies[s]] for s in studies}


def test_the_official_split_with_findings_as_the_target(tree, read):
    got = read(tree)
    assert ids(got) == {"train": ["s50000001", "s50000003", "s50000004", "s50000005", "s50000007"],
                        "val": ["s50000009", "s50913680"], "test": ["s50000011", "s50000012", "s50000013"]}
    first = got["train"][0]
    assert first == {
        "id": "s50000001", "report": "The lungs are clear. The heart size is normal.",
        "image_path": ["files/p10/p10000032/s50000001/d0001a.jpg", "files/p10/p10000032/s50000001/d0001b.jpg"],
        "view_positions": ["PA", "LATERAL"], "subject_id": "10000032", "study_time": "2180-05-06T08:45:30",
        "findings": "The lungs are clear. The heart size is normal.",
        "impression": "No acute cardiopulmonary process.", "indication": "___F with cough // eval for pneumonia",
        "comparison": "Chest radiograph ___.", "split": "train", "prior_id": None}
    for split in got.values():
        for e in split:
            assert all((tree["root"] / p).is_file() for p in e["image_path"])
    by_id = {e["id"]: e for s in got.values() for e in s}
    assert by_id["s50000003"]["report"] == "Mild cardiomegaly. No focal consolidation."  # the last-paragraph fallback
    assert by_id["s50000004"]["report"] == "Impression: No pneumonia."  # lower-case headers: no sections
    assert by_id["s50000005"]["impression"] == "Normal chest."  # CONCLUSION, below a wet read
    assert by_id["s50913680"]["impression"] == "CT in 3 months."  # the authors' per-study rule
    assert by_id["s50000005"]["indication"] == "Chest pain."


@pytest.mark.parametrize("target, train, val", [
    ("impression", ["s50000001", "s50000002", "s50000005", "s50000006", "s50000007"], ["s50000009", "s50913680"]),
    ("findings_impression", [f"s5000000{i}" for i in range(1, 8)], ["s50000009", "s50913680"]),
])
def test_the_target_chooses_the_section_and_studies_without_it_are_left_out(tree, read, target, train, val, caplog):
    with caplog.at_level(logging.INFO, logger="r2gen.data.mimic_cxr_jpg"):
        got = read(tree, f"data.target={target}")
    assert ids(got)["train"] == train and ids(got)["val"] == val
    by_id = {e["id"]: e for s in got.values() for e in s}
    if target == "impression":
        assert by_id["s50000002"]["report"] == "Small left pleural effusion."  # FINDINGS AND IMPRESSION
        assert by_id["s50000006"]["findings"] is None
        assert by_id["s50000006"]["indication"] == "Trauma."  # HISTORY stands in for the indication
    else:
        assert by_id["s50000001"]["report"] == ("The lungs are clear. The heart size is normal. "
                                                "No acute cardiopulmonary process.")
        assert by_id["s50000003"]["report"] == "Mild cardiomegaly. No focal consolidation."
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mimic_cxr_jpg ")]
    assert len(lines) == 3  # one per split
    assert f"mimic_cxr_jpg val: 2 studies (data.target={target}" in lines[1] and f"1 no {target}" in lines[1]


def test_findings_counts_what_it_leaves_out(tree, read, caplog):
    with caplog.at_level(logging.INFO, logger="r2gen.data.mimic_cxr_jpg"):
        read(tree, "data.views=[PA,AP]")
    train = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("mimic_cxr_jpg train"))
    assert train.startswith("mimic_cxr_jpg train: 4 studies") and train.endswith(
        "left out: 2 no findings, 1 with no image of data.views")


def test_views_are_ordered_as_listed_and_the_others_dropped(tree, read):
    by_id = {e["id"]: e for e in read(tree)["train"]}
    assert by_id["s50000005"]["view_positions"] == ["AP", "AP", "LATERAL"]  # frontal first, then by dicom_id
    assert [p.rsplit("/", 1)[1] for p in by_id["s50000005"]["image_path"]] == ["d0005a.jpg", "d0005c.jpg",
                                                                               "d0005b.jpg"]
    assert by_id["s50000007"]["view_positions"] == ["LATERAL"]  # the image with no ViewPosition is dropped
    by_id = {e["id"]: e for e in read(tree, "data.views=[LATERAL,PA]")["train"]}
    assert by_id["s50000001"]["view_positions"] == ["LATERAL", "PA"]
    assert "s50000002" not in by_id and "s50000005" in by_id  # AP only: no image left; AP + LATERAL: the lateral
    assert by_id["s50000005"]["image_path"] == ["files/p11/p11000011/s50000005/d0005b.jpg"]
    by_id = {e["id"]: e for e in read(tree, "data.views=[pa]")["train"]}  # ViewPosition matched in any case
    assert sorted(by_id) == ["s50000001", "s50000003", "s50000004"]


@pytest.mark.parametrize("date, time, iso", [
    ("21800506", "84530.0", "2180-05-06T08:45:30"), ("21800506", "142302.234", "2180-05-06T14:23:02"),
    ("21810102", "530.5", "2181-01-02T00:05:30"), ("21810102", "0", "2181-01-02T00:00:00"),
    ("21810102", "235959.999", "2181-01-02T23:59:59"), ("21810102", "", "2181-01-02T00:00:00"),
    ("", "84530.0", None),
])
def test_study_time_from_study_date_and_a_time_without_leading_zeros(date, time, iso):
    assert study_time(date, time) == iso


@pytest.mark.parametrize("date, time", [("2180056", "84530.0"), ("21801306", "1.0"), ("21800506", "246000.0"),
                                        ("21800506", "8:45"), ("21800506", "1234567.0")])
def test_a_bad_study_date_or_time_is_named(date, time):
    with pytest.raises(InputError, match="row 7: StudyDate=.* expected|row 7: StudyDate=.* no date"):
        study_time(date, time, "metadata row 7")


def test_study_times_reach_the_studies(tree, read):
    by_id = {e["id"]: e for s in read(tree).values() for e in s}
    assert by_id["s50000003"]["study_time"] == "2181-01-02T00:05:30"
    assert by_id["s50000012"]["study_time"] == "2180-05-06T23:59:59"


def test_the_reports_zip_and_its_unpacked_folder_give_the_same_studies(tree, read):
    from_zip = read(tree)
    assert read(tree, f"data.reports={tree['folder']}") == from_zip
    assert read(tree, f"data.reports={tree['folder']}/files") == from_zip  # the files/ folder itself also does
    assert read(tree, "data.target=impression", f"data.reports={tree['folder']}") == read(
        tree, "data.target=impression")


def test_a_zip_whose_reports_sit_in_a_folder_and_unpacked_tables(tree, read, tmp_path):
    t = copy_tree(tree, tmp_path / "copy")
    with zipfile.ZipFile(tree["zip"]) as src, zipfile.ZipFile(t["zip"], "w") as dst:
        for name in src.namelist():
            dst.writestr(f"mimic-cxr-reports/{name}", src.read(name))
    for table in ("split", "metadata"):  # gunzipped after download: the .csv beside the configured .csv.gz
        gz = t["root"] / f"mimic-cxr-2.0.0-{table}.csv.gz"
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert read(t) == read(tree)


def test_only_the_splits_asked_for_are_read(tree, read, tmp_path):
    t = copy_tree(tree, tmp_path / "copy")
    with zipfile.ZipFile(tree["zip"]) as src, zipfile.ZipFile(t["zip"], "w") as dst:  # train's reports gone
        for name in src.namelist():
            if "/p10/" not in name:
                dst.writestr(name, src.read(name))
    got = read(t, splits=("test",))
    assert got["train"] == got["val"] == [] and ids(got)["test"] == ["s50000011", "s50000012", "s50000013"]
    with pytest.raises(MissingFileError):
        read(t)


def test_a_missing_report_is_an_error_or_left_out_and_counted(tree, read, tmp_path, caplog):
    t = copy_tree(tree, tmp_path / "copy")
    gone = [s for s in studies() if s.study in ("50000003", "50000011")]
    with zipfile.ZipFile(tree["zip"]) as src, zipfile.ZipFile(t["zip"], "w") as dst:
        for name in src.namelist():
            if name not in {rel_report(s) for s in gone}:
                dst.writestr(name, src.read(name))
    with pytest.raises(MissingFileError) as e:
        read(t)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"data.reports={t['zip']}: 2 report(s) not found: ")
    assert f"{t['zip']}:files/p10/p10000032/s50000003.txt" in msg and "data.on_bad_sample=skip" in msg
    with caplog.at_level(logging.INFO, logger="r2gen.data.mimic_cxr_jpg"):
        got = read(t, "data.on_bad_sample=skip")
    assert "s50000003" not in ids(got)["train"] and ids(got)["test"] == ["s50000012", "s50000013"]
    assert any("test: 2 studies" in r.getMessage() and "1 no report" in r.getMessage() for r in caplog.records)
    (t["folder"] / rel_report(gone[0])).unlink()  # the folder: named by its path
    with pytest.raises(MissingFileError, match=f"{t['folder']}/files/p10/p10000032/s50000003.txt"):
        read(t, f"data.reports={t['folder']}")


def rewrite_gz(path: Path, edit) -> None:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    path.write_bytes(gzip.compress(("\n".join(edit(lines)) + "\n").encode()))


@pytest.mark.parametrize("breakage, error, message", [
    (lambda t: (t["root"] / "mimic-cxr-2.0.0-split.csv.gz").unlink(), MissingFileError,
     r"data.split_file=.*mimic-cxr-2.0.0-split.csv.gz: no such file; download it from physionet.org"),
    (lambda t: (t["root"] / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(
        (t["root"] / "mimic-cxr-2.0.0-metadata.csv.gz").read_bytes()[:60]), InputError,
     r"data.metadata_file=.*: not a complete gzip file .*download it again"),
    (lambda t: rewrite_gz(t["root"] / "mimic-cxr-2.0.0-metadata.csv.gz",
                          lambda ls: [ls[0].replace("ViewPosition", "View"), *ls[1:]]), InputError,
     r"data.metadata_file=.*: no column ViewPosition \(its columns: dicom_id, subject_id, study_id, "),
    (lambda t: rewrite_gz(t["root"] / "mimic-cxr-2.0.0-split.csv.gz",
                          lambda ls: [*ls, "d9,50000001,10000032,dev"]), InputError,
     r"data.split_file=.* row \d+: split='dev': expected train, validate or test"),
    (lambda t: rewrite_gz(t["root"] / "mimic-cxr-2.0.0-split.csv.gz",
                          lambda ls: [*ls, "d9,50000001,10000032,test"]), InputError,
     r"study 50000001 is in both train and test"),
    (lambda t: rewrite_gz(t["root"] / "mimic-cxr-2.0.0-split.csv.gz",
                          lambda ls: [*ls, "d9,5000x001,10000032,test"]), InputError,
     r"row \d+: study_id='5000x001' is not a number"),
    (lambda t: rewrite_gz(t["root"] / "mimic-cxr-2.0.0-metadata.csv.gz",
                          lambda ls: [ls[0], ls[1].replace("84530.0", "8:45"), *ls[2:]]), InputError,
     r"data.metadata_file=.* row 2: StudyDate='21800506' StudyTime='8:45': expected YYYYMMDD"),
    (lambda t: t["zip"].write_bytes(b"not a zip"), InputError,
     r"data.reports=.*mimic-cxr-reports.zip: not a zip file .*unpacked into"),
    (lambda t: t["zip"].unlink(), MissingFileError, r"data.reports=.*: no such file or folder; download"),
])
def test_broken_inputs_are_one_line_naming_the_file_and_the_fix(tree, read, tmp_path, breakage, error, message):
    t = copy_tree(tree, tmp_path / "copy")
    breakage(t)
    with pytest.raises(error, match=message) as e:
        read(t)
    assert "\n" not in str(e.value)


def test_a_member_too_large_to_be_a_report_is_refused(tree, read, monkeypatch):
    monkeypatch.setattr(mimic_cxr_jpg, "MAX_REPORT_BYTES", 200)
    with pytest.raises(InputError, match=r"mimic-cxr-reports.zip:files/p10/p10000032/s50000001.txt: over "):
        read(tree)
    with pytest.raises(InputError, match=r"mimic-cxr-reports/files/p10/p10000032/s50000001.txt: over "):
        read(tree, f"data.reports={tree['folder']}")


@pytest.mark.parametrize("override, message", [
    ("data.target=report", r"data.target='report': choose findings, impression, findings_impression"),
    ("data.views=[]", r"data.views=.*: list the ViewPosition values"),
])
def test_bad_keys_name_the_choices(tree, read, override, message):
    with pytest.raises(ConfigError, match=message):
        read(tree, override)


def test_the_config_passes_the_key_check_and_names_its_files(tree, make_cfg):
    cfg = make_cfg("data=mimic_cxr_jpg", f"data.root={tree['root']}", small=False)
    check_config(cfg, "config")
    assert annotation_files(cfg.data) == [tree["root"] / "mimic-cxr-2.0.0-split.csv.gz",
                                          tree["root"] / "mimic-cxr-2.0.0-metadata.csv.gz", tree["zip"]]
    with pytest.raises(ConfigError, match="data.root is required"):
        check_config(make_cfg("data=mimic_cxr_jpg", small=False), "config")


def test_the_datamodule_serves_the_tree_and_writes_nothing_into_it(tree, make_cfg, tmp_path):
    before = snapshot(tree["root"].parent.parent)
    cfg = make_cfg("data=mimic_cxr_jpg", f"data.root={tree['root']}", "data.num_workers=0", "data.num_views=2",
                   small=False)
    dm = ReportDataModule(cfg.data, 32, (0.5,) * 3, (0.5,) * 3, augment=False, check_dir=tmp_path / "check")
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    item = dm.splits["train"][0]
    assert item["id"] == "s50000001" and item["images"].shape == (2, 3, 32, 32) and item["view_mask"].all()
    assert item["report"] == clean_report_mimic_cxr("The lungs are clear. The heart size is normal.")
    assert list((tmp_path / "check").iterdir())  # the set-up check's manifest: in r2gen's cache folder
    assert snapshot(tree["root"].parent.parent) == before


def test_a_tree_without_nih_images_is_drawn(tmp_path, monkeypatch, read):
    """The helper's fallback (no shared NIH sample): random JPEGs, the same studies."""
    from .helpers import mimic_cxr

    monkeypatch.setattr(mimic_cxr, "NIH_IMAGES", tmp_path / "none")
    t = build_tree(tmp_path / "drawn", [Study("10000032", "50000001", "train", mimic_cxr.FULL, [("d1", "PA")]),
                                        Study("10000032", "50000002", "validate", mimic_cxr.FULL, [("d2", "AP")]),
                                        Study("10000032", "50000003", "test", mimic_cxr.FULL, [("d3", "PA")])])
    got = read(t)
    assert ids(got) == {"train": ["s50000001"], "val": ["s50000002"], "test": ["s50000003"]}
    assert (t["root"] / got["train"][0]["image_path"][0]).read_bytes()[:2] == b"\xff\xd8"  # a JPEG


def test_train_evaluate_and_predict_on_the_tree(tree, tmp_path, cache_dir):
    """`train.py data=mimic_cxr_jpg data.target=findings`, then evaluate.py and predict.py on its checkpoint, through
    the functions they call (one epoch, tiny models: ~15 s)."""
    from r2gen.evaluate import evaluate
    from r2gen.predict import predict
    from r2gen.scoring import METRIC_NAMES
    from r2gen.train import train

    from .helpers.config import SMALL, compose_cfg

    before = snapshot(tree["root"].parent.parent)
    small = [o for o in SMALL if not o.startswith("data.demo.")]  # data=mimic_cxr_jpg has no data.demo block
    fast = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
    run = tmp_path / "run"
    train(compose_cfg("config", ["data=mimic_cxr_jpg", f"data.root={tree['root']}", "data.target=findings",
                                 "data.num_workers=0", *small], run, cache_dir))
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    test_ids = ["s50000011", "s50000012", "s50000013"]
    ev = [f"ckpt={best}", *fast]
    for folder in (run / "test", tmp_path / "eval"):  # the test after training, then evaluate.py's
        if folder != run / "test":
            evaluate(compose_cfg("evaluate", ev, folder, cache_dir), overrides=ev)
        m = json.loads((folder / "metrics.json").read_text())
        assert m["data"] == "mimic_cxr_jpg" and m["split"] == "test" and m["n_studies"] == 3
        assert all(math.isfinite(m[k]) for k in METRIC_NAMES)
        p = m["protocol"]  # the protocol is part of the result
        assert (p["data"], p["layout"], p["release"], p["target"]) == ("mimic_cxr_jpg", "mimic_cxr_jpg", "2.0.0",
                                                                       "findings")
        assert p["split"] == {"scheme": "official (PhysioNet's split file)", "scored": "test"}
        assert p["images"]["views"] == ["PA", "AP", "LATERAL", "LL"] and p["images"]["per_study"] == 1
        assert (p["references"], p["clean"], p["labeler"], p["uncertain"]) == ("full", "mimic_cxr", "chexpert",
                                                                                "negative")
        assert all(k in m["intervals"] for k in METRIC_NAMES)
        preds = read_jsonl(folder / "predictions.jsonl")
        assert [p["id"] for p in preds] == test_ids
        assert preds[1]["reference"] == clean_report_mimic_cxr("Right basilar atelectasis.")  # the findings only
    studies_dir = tree["root"] / "files" / "p12" / "p12000022"  # a folder of studies: one subfolder each
    pr = [f"ckpt={best}", f"input={studies_dir}", *fast]
    rows = read_jsonl(predict(compose_cfg("predict", pr, tmp_path / "predict", cache_dir), overrides=pr))
    assert [r["id"] for r in rows] == test_ids  # the subfolders s<study_id>, named as the reader names studies
    assert all(isinstance(r["report"], str) for r in rows)
    assert snapshot(tree["root"].parent.parent) == before  # read, never written


def test_the_reader_and_the_parser_import_only_the_standard_library_and_the_ground_floor():
    """Below r2gen.data.annotations (which registers the reader), never above it: no circle, no third-party import."""
    import ast
    import sys

    from .helpers.import_graph import edges
    from .helpers.paths import ROOT

    graph = edges(ROOT)
    assert graph["r2gen.data.mimic_cxr_jpg"] == {"r2gen.data.sections", "r2gen.data.splits", "r2gen.errors"}
    assert graph["r2gen.data.sections"] == set()
    for name in ("mimic_cxr_jpg", "sections"):
        tree = ast.parse((ROOT / "r2gen" / "data" / f"{name}.py").read_text())
        tops = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        tops |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert tops - {"r2gen"} <= set(sys.stdlib_module_names), tops


def test_each_study_is_linked_to_its_subjects_prior_in_its_split(tree, read):
    """Subjects with several studies: each study's prior is the latest earlier study of its subject and split."""
    studies = read(tree, "data.target=findings_impression")
    linked = 0
    for entries in studies.values():
        by_id = {e["id"]: e for e in entries}
        for e in entries:
            assert "prior_id" in e  # every study of this layout has a subject and a time
            earlier = sorted(o["study_time"] for o in entries
                             if o["subject_id"] == e["subject_id"] and o["study_time"] < e["study_time"])
            if e["prior_id"] is None:  # a first study, or its latest earlier study cannot be told (the same time)
                assert not earlier or earlier[-2:] == [earlier[-1]] * 2
                continue
            linked += 1
            p = by_id[e["prior_id"]]  # in the same split
            assert p["subject_id"] == e["subject_id"] and p["study_time"] < e["study_time"]
            assert not any(o["subject_id"] == e["subject_id"] and p["study_time"] < o["study_time"] < e["study_time"]
                           for o in entries)
    assert linked > 0
