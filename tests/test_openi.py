"""data=openi: IU-Xray as Open-i ships it (ecgen-radiology/*.xml + <image id>.png), read by r2gen.data.openi.

A tiny tree in Open-i's own XML layout (tests/helpers/openi.py) checks the studies, the sections, the image order,
the target choice, what is left out and counted, both split modes, the errors, and that nothing is written into the
data folder. With the shared IU-Xray data present, all 3,955 Open-i reports are written as XML and read with R2Gen's
splits: every study R2Gen kept has R2Gen's id, split, images and report text.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from r2gen.config_check import check_config
from r2gen.data import openi
from r2gen.data.annotations import read_studies
from r2gen.data.clean import clean_report_iu_xray
from r2gen.data.datamodule import ReportDataModule
from r2gen.data.splits import SPLITS
from r2gen.errors import ConfigError, InputError, MissingFileError

from .helpers.config import SMALL
from .helpers.files import snapshot
from .helpers.openi import report_xml, write_pngs, write_reports
from .helpers.paths import SHARED_DATA

IU = SHARED_DATA / "iu_xray"


def rep(uid: str, images: list[str], findings: str | None = "No effusion.", impression: str | None = "Normal.",
        **more) -> dict:
    return {"uid": uid, "comparison": more.get("comparison"), "indication": more.get("indication"),
            "findings": findings, "impression": impression, "mesh_major": more.get("mesh_major", ["normal"]),
            "mesh_automatic": more.get("mesh_automatic", []), "images": images}


REPORTS = [
    rep("CXR1", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"], "The heart is normal. No pneumothorax.",
        "Normal chest x-XXXX.", comparison="None.", indication="Positive TB test",
        mesh_major=["Cardiomegaly/mild", "Lung/hypoinflation"], mesh_automatic=["sternotomy"]),
    # three images, the lateral listed first: kept in the XML's order; R2Gen's id drops only the last -NNNN
    rep("CXR2", ["CXR2_IM-0652-1001-0002", "CXR2_IM-0652-1001-0001", "CXR2_IM-0652-2001"], "Clear lungs.",
        "No acute findings."),
    rep("CXR3", ["CXR3_IM-1384-1001", "CXR3_IM-1384-2001"], None, "No rib fracture."),  # no findings section
    rep("CXR4", [], "Heart size normal.", "Normal."),  # no image
    rep("CXR5", ["CXR5_IM-2117-1001", "CXR5_IM-2117-2001"], "Effusion < 1 cm & stable.", None),  # XML escapes
    rep("CXR6", ["CXR6_IM-2192-1001"], "One view only.", "Normal."),  # not in R2Gen's annotation
    rep("CXR7", ["CXR7_IM-2263-1001", "CXR7_IM-2263-2001"], "Mild cardiomegaly.", "Cardiomegaly."),
    rep("CXR10", ["CXR10_IM-0002-1001", "CXR10_IM-0002-2001"], "Low lung volumes.", "No acute disease."),
    rep("CXR11", ["CXR11_IM-0067-1001", "CXR11_IM-0067-2001"], "Stable chest.", "Stable."),
]
# R2Gen's annotation.json for the tree (ids -> splits; its report text is not read)
R2GEN_SPLITS = {"train": ["CXR1_1_IM-0001", "CXR3_IM-1384", "CXR7_IM-2263"], "val": ["CXR2_IM-0652-1001", "CXR11_IM-0067"],
                "test": ["CXR5_IM-2117", "CXR10_IM-0002"]}


def build_tree(root: Path, reports: list[dict] = REPORTS) -> Path:
    """`root/ecgen-radiology/<n>.xml`, `root/images/<image id>.png`, and R2Gen's `root/../annotation.json`."""
    write_reports(root / "ecgen-radiology", reports)
    write_pngs(root / "images", [i for r in reports for i in r["images"]])
    ann = {s: [{"id": i, "report": "r2gen text", "image_path": [f"{i}/0.png", f"{i}/1.png"], "split": s}
               for i in ids] for s, ids in R2GEN_SPLITS.items()}
    (root.parent / "annotation.json").write_text(json.dumps(ann))
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return build_tree(tmp_path / "openi")


def data_cfg(root: Path, **keys) -> dict:
    return {"format": "openi", "root": str(root), "reports": str(root / "ecgen-radiology"),
            "image_dir": str(root / "images"), "target": "findings", "split": "r2gen",
            "r2gen_annotation": str(root.parent / "annotation.json"), "split_seed": 0, **keys}


def by_id(studies) -> dict:
    return {e["id"]: e for s in SPLITS for e in studies[s]}


def test_studies_sections_images_and_r2gen_ids(tree):
    studies = read_studies(data_cfg(tree))  # through the LAYOUTS entry, as the DataModule reads it
    assert {s: [e["id"] for e in studies[s]] for s in SPLITS} == {
        "train": ["CXR1_1_IM-0001", "CXR7_IM-2263"], "val": ["CXR2_IM-0652-1001", "CXR11_IM-0067"],
        "test": ["CXR5_IM-2117", "CXR10_IM-0002"]}  # 10.xml after 7.xml: numeric file order
    s = by_id(studies)
    one = s["CXR1_1_IM-0001"]
    assert one == {"id": "CXR1_1_IM-0001", "report": "The heart is normal. No pneumothorax.",
                   "image_path": ["CXR1_1_IM-0001-3001.png", "CXR1_1_IM-0001-4001.png"], "split": "train",
                   "uid": "CXR1", "comparison": "None.", "indication": "Positive TB test",
                   "findings": "The heart is normal. No pneumothorax.", "impression": "Normal chest x-XXXX.",
                   "mesh_major": ["Cardiomegaly/mild", "Lung/hypoinflation"], "mesh_automatic": ["sternotomy"]}
    assert s["CXR2_IM-0652-1001"]["image_path"] == ["CXR2_IM-0652-1001-0002.png", "CXR2_IM-0652-1001-0001.png",
                                                    "CXR2_IM-0652-2001.png"]
    assert s["CXR2_IM-0652-1001"]["comparison"] is None and s["CXR2_IM-0652-1001"]["mesh_automatic"] == []
    assert s["CXR5_IM-2117"]["report"] == "Effusion < 1 cm & stable." and s["CXR5_IM-2117"]["impression"] is None
    for e in s.values():
        assert all((tree / "images" / p).is_file() for p in e["image_path"])


def test_left_out_reports_are_counted_and_logged(tree, caplog):
    with caplog.at_level(logging.INFO, logger="r2gen.data.openi"):
        studies = openi.read(data_cfg(tree))
    _, left = openi.read_counted(data_cfg(tree))
    assert left["train"] == {"no_target": 1}  # CXR3: impression only
    assert left[None] == {"no_image": 1, "not_in_r2gen": 1}  # CXR4 (no image, so no R2Gen id), CXR6
    assert sum(map(len, studies.values())) == len(REPORTS) - 3
    assert "data=openi train: 2 studies; left out 1 without the findings text, 0 without an image" in caplog.text
    assert "data=openi val: 2 studies; left out 0 without the findings text" in caplog.text
    assert "left out 1 reports without an image (no R2Gen id) and 1 not in data.r2gen_annotation=" in caplog.text


@pytest.mark.parametrize("target,expected,dropped", [
    ("findings", {"CXR7_IM-2263": "Mild cardiomegaly."}, {"CXR3_IM-1384"}),
    ("impression", {"CXR7_IM-2263": "Cardiomegaly.", "CXR3_IM-1384": "No rib fracture."}, {"CXR5_IM-2117"}),
    ("findings_impression", {"CXR7_IM-2263": "Mild cardiomegaly. Cardiomegaly.", "CXR3_IM-1384": "No rib fracture.",
                             "CXR5_IM-2117": "Effusion < 1 cm & stable."}, set()),
])
def test_target_picks_the_report_and_leaves_out_studies_without_it(tree, target, expected, dropped):
    studies, left = openi.read_counted(data_cfg(tree, target=target))
    s = by_id(studies)
    assert {i: s[i]["report"] for i in expected} == expected
    assert not dropped & set(s)
    assert sum(left[split]["no_target"] for split in SPLITS) == len(dropped)
    assert s["CXR7_IM-2263"]["findings"] == "Mild cardiomegaly."  # every section kept, whatever the target


def test_random_split_is_stable_seeded_and_needs_no_r2gen_annotation(tree):
    cfg = data_cfg(tree, split="random", r2gen_annotation=None)
    studies, left = openi.read_counted(cfg)
    again, _ = openi.read_counted(cfg)
    assert studies == again
    ids = by_id(studies)
    # every report with an image and findings is in, CXR6 too (no R2Gen annotation); CXR4 and CXR3 left out
    assert set(ids) == {openi.study_id(r["images"][0]) for r in REPORTS if r["images"] and r["findings"]}
    assert sum(c["no_image"] for c in left.values()) == 1 and sum(c["no_target"] for c in left.values()) == 1
    assert all(e["split"] == openi.random_split(e["uid"], 0) for e in ids.values())
    # the split of a uid depends only on it and the seed: 70/10/20 over many uids, another seed another split
    uids = [f"CXR{n}" for n in range(1, 20001)]
    for seed in (0, 1):
        counts = {s: 0 for s in SPLITS}
        for u in uids:
            counts[openi.random_split(u, seed)] += 1
        assert all(abs(counts[s] / len(uids) - share) < 0.01 for s, share in openi.RATIOS.items()), counts
    moved = sum(openi.random_split(u, 0) != openi.random_split(u, 1) for u in uids)
    assert moved > len(uids) * 0.3


def test_study_id_is_r2gen_s():
    assert openi.study_id("CXR2384_IM-0942-1001") == "CXR2384_IM-0942"
    assert openi.study_id("CXR1_1_IM-0001-3001") == "CXR1_1_IM-0001"
    assert openi.study_id("CXR1122_IM-0080-1001-0001") == "CXR1122_IM-0080-1001"


def test_missing_folder_and_files_are_one_line_naming_the_key(tmp_path, tree):
    with pytest.raises(MissingFileError, match=r"data\.reports=.*/nope: no such folder; set data\.root"):
        openi.read(data_cfg(tree, reports=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"data\.reports=.*/empty: no \.xml report in it"):
        openi.read(data_cfg(tree, reports=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match=r"data\.r2gen_annotation is not set: data\.split=r2gen .* or "
                                          r"data\.split=random"):
        openi.read(data_cfg(tree, r2gen_annotation=None))
    with pytest.raises(MissingFileError, match=r"data\.r2gen_annotation=.*/none\.json: no such file"):
        openi.read(data_cfg(tree, r2gen_annotation=str(tmp_path / "none.json")))
    (tmp_path / "bad.json").write_text('{"train": [')
    with pytest.raises(InputError, match=r"data\.r2gen_annotation=.*bad\.json: not R2Gen's annotation\.json"):
        openi.read(data_cfg(tree, r2gen_annotation=str(tmp_path / "bad.json")))
    (tmp_path / "other.json").write_text('{"train": [{"id": "s1"}], "val": [], "test": []}')
    with pytest.raises(InputError, match=r"none of its 1 study ids is a study of data\.reports="):
        openi.read(data_cfg(tree, r2gen_annotation=str(tmp_path / "other.json")))
    for key, value, choices in (("target", "report", "findings, impression"), ("split", "official", "r2gen")):
        with pytest.raises(ConfigError, match=rf"data\.{key}='{value}': choose {choices}"):
            openi.read(data_cfg(tree, **{key: value}))


def test_malformed_xml_is_an_input_error_naming_the_file_and_line(tree):
    bad = tree / "ecgen-radiology" / "3.xml"
    bad.write_text(report_xml(REPORTS[2]).replace("</Abstract>", "</Abstrct>"))
    with pytest.raises(InputError) as e:
        openi.read(data_cfg(tree))
    msg = str(e.value)
    assert f"{bad} line " in msg and "not well-formed XML (mismatched tag)" in msg and "\n" not in msg
    bad.write_text("<MedlineCitation/>")
    with pytest.raises(InputError, match="root element is <MedlineCitation>, not <eCitation>"):
        openi.read(data_cfg(tree))
    bad.write_text(report_xml(REPORTS[2]).replace('<uId id="CXR3"/>', ""))
    with pytest.raises(InputError, match=r'no <uId id="\.\.\."/>'):
        openi.read(data_cfg(tree))
    bad.write_text(report_xml(REPORTS[2]).replace("CXR3_IM-1384-1001", "../../etc/passwd"))
    with pytest.raises(InputError, match=r"<parentImage id='\.\./\.\./etc/passwd'>"):
        openi.read(data_cfg(tree))


@pytest.mark.parametrize("dtd", [
    '<!DOCTYPE eCitation [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',  # expansion
    '<!DOCTYPE eCitation [<!ENTITY x SYSTEM "file:///etc/passwd">]>',  # an external entity
    '<!doctype eCitation SYSTEM "http://example.org/e.dtd">',
])
def test_a_dtd_is_refused_before_parsing(tree, dtd):
    bad = tree / "ecgen-radiology" / "1.xml"
    bad.write_text(report_xml(REPORTS[0]).replace('<?xml version="1.0" encoding="utf-8"?>',
                                                  f'<?xml version="1.0" encoding="utf-8"?>\n{dtd}')
                   .replace("No pneumothorax.", "&b;" if "ENTITY a" in dtd else "No pneumothorax."))
    with pytest.raises(InputError, match=r"1\.xml: has a DTD \(<!DOCTYPE or <!ENTITY\)"):
        openi.read(data_cfg(tree))


def test_an_oversized_file_is_refused(tree):
    big = tree / "ecgen-radiology" / "1.xml"
    big.write_text(report_xml(REPORTS[0]).replace("No pneumothorax.", "x" * openi.MAX_XML_BYTES))
    with pytest.raises(InputError, match=rf"1\.xml: \d+ bytes, over the {openi.MAX_XML_BYTES}"):
        openi.read(data_cfg(tree))


def test_the_real_config_reads_the_tree_and_writes_nothing_into_it(tree, make_cfg, tmp_path):
    cfg = make_cfg("data=openi", f"data.root={tree}", f"data.r2gen_annotation={tree.parent}/annotation.json",
                   "data.num_workers=0", *(o for o in SMALL if not o.startswith("data.demo.")), small=False)
    check_config(cfg, "config")  # every key of conf/data/openi.yaml known, of its kind
    assert cfg.data.reports == f"{tree}/ecgen-radiology" and cfg.data.format == "openi"
    before = snapshot(tree)
    dm = ReportDataModule(cfg.data, 32, (0.5,) * 3, (0.5,) * 3, augment=False, check_dir=tmp_path / "check")
    dm.setup()
    assert [len(dm.splits[s]) for s in SPLITS] == [2, 2, 2]
    item = dm.splits["val"][0]  # CXR2: three images listed, num_views=2 takes the first two
    assert item["images"].shape == (2, 3, 32, 32) and item["view_mask"].all()
    assert item["report"] == "clear lungs ."  # data.clean=iu_xray
    assert snapshot(tree) == before and any((tmp_path / "check").iterdir())


def test_the_openi_config_needs_its_root_and_names_it(make_cfg):
    with pytest.raises(ConfigError, match=r"data\.root is required and has no value"):
        check_config(make_cfg("data=openi", small=False), "config")


@pytest.mark.skipif(not (IU / "openi_reports.jsonl").is_file(), reason="shared IU-Xray/Open-i data not present")
def test_all_open_i_reports_read_with_r2gen_splits_give_r2gen_s_studies(tmp_path):
    """The 3,955 Open-i reports, as XML, read with data.split=r2gen: R2Gen's 2,069/296/590 studies, each with R2Gen's
    id, split, first two images (R2Gen's 0.png, 1.png) and report text. The text is R2Gen's byte for byte: R2Gen
    did not normalise whitespace (two reports have a double space, kept by both), so no cleaning is applied to
    compare. R2Gen kept exactly the reports with a findings section and at least two images:
    3,955 - 104 without an image - 514 without findings - 382 with one image = 2,955."""
    reports = [json.loads(line) for line in (IU / "openi_reports.jsonl").read_text().splitlines()]
    ann = json.loads((IU / "annotation.json").read_text())
    mapping = json.loads((IU / "r2gen_to_openi.json").read_text())
    root = tmp_path / "openi"
    write_reports(root / "ecgen-radiology", reports)
    assert len(list((root / "ecgen-radiology").glob("*.xml"))) == len(reports) == 3955
    studies, left = openi.read_counted(data_cfg(root, r2gen_annotation=str(IU / "annotation.json")))
    ours = by_id(studies)
    assert {s: len(studies[s]) for s in SPLITS} == {s: len(ann[s]) for s in SPLITS} == {"train": 2069, "val": 296,
                                                                                          "test": 590}
    for split in SPLITS:
        assert [e["id"] for e in studies[split]] != [] and left[split]["no_target"] == 0
        for e in ann[split]:
            o = ours[e["id"]]
            assert o["split"] == split == mapping[e["id"]]["split"]
            assert o["report"] == o["findings"] == e["report"], e["id"]
            assert o["uid"] == mapping[e["id"]]["openi_uid"]
            images = [p.removesuffix(".png") for p in o["image_path"]]
            # R2Gen's 0.png, 1.png are the first two; its list holds the images named under the study id
            assert images[:2] == mapping[e["id"]]["openi_image_ids"][:2]
            assert [i for i in images if i.startswith(e["id"] + "-")] == mapping[e["id"]]["openi_image_ids"]
            assert o["impression"] == (mapping[e["id"]]["impression"] or None)
            assert o["mesh_major"] == [t.strip() for t in mapping[e["id"]]["mesh_major"]]  # terms stripped
    assert left[None] == {"no_image": 104, "not_in_r2gen": 896}
    with_images = [r for r in reports if r["images"]]
    kept = {openi.study_id(r["images"][0]) for r in with_images if r["findings"] and len(r["images"]) >= 2}
    assert kept == set(ours)
    assert sum(not r["findings"] for r in with_images) == 514
    assert sum(bool(r["findings"]) and len(r["images"]) == 1 for r in with_images) == 382
    # the random split over the same reports: all 3,337 with an image and findings, about 70/10/20
    rand, _ = openi.read_counted(data_cfg(root, split="random", r2gen_annotation=None))
    n = sum(map(len, rand.values()))
    assert n == 3337 and all(math.isclose(len(rand[s]) / n, share, abs_tol=0.03) for s, share in openi.RATIOS.items())


@pytest.mark.slow  # a tiny training run with a test pass (METEOR's JVM): ~30 s on 2 CPU cores
def test_train_on_an_open_i_tree_through_the_public_entry_point(tree, make_cfg, tmp_path):
    from r2gen.train import train

    ann = tree.parent / "annotation.json"
    cfg = make_cfg("data=openi", f"data.root={tree}", f"data.r2gen_annotation={ann}", "data.num_workers=0",
                   *(o for o in SMALL if not o.startswith("data.demo.")), small=False)
    check_config(cfg, "config")
    before = snapshot(tree)
    train(cfg)
    out = Path(cfg.paths.output_dir)
    m = json.loads((out / "test" / "metrics.json").read_text())
    assert m["data"] == "openi" and m["n_studies"] == 2 and all(math.isfinite(m[k]) for k in ("Bleu_4", "CIDEr"))
    preds = [json.loads(line) for line in (out / "test" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == R2GEN_SPLITS["test"]
    assert preds[0]["reference"] == clean_report_iu_xray("Effusion < 1 cm & stable.")  # data.clean=iu_xray
    assert str(ann) in json.loads((out / "provenance.json").read_text())["annotation_sha256"]
    assert snapshot(tree) == before
