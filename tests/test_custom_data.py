"""data=custom (JSONL / CSV tables) and the set-up check (data.on_bad_sample), through the real DataModule."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from r2gen.data.annotations import read_studies
from r2gen.data.datamodule import ReportDataModule

SPLIT_SIZES = {"train": 4, "val": 2, "test": 2}


def make_images(root: Path, n_views: int = 2) -> list[dict]:
    """Studies s0..s7 with PNG views under root/images/<id>/<v>.png."""
    rows = []
    for split, n in SPLIT_SIZES.items():
        for _ in range(n):
            sid = f"s{len(rows)}"
            (root / "images" / sid).mkdir(parents=True)
            for v in range(n_views):
                Image.new("L", (20, 20), 40 * v + len(rows)).save(root / "images" / sid / f"{v}.png")
            rows.append({"id": sid, "report": f"Study {sid}: No  effusion.\nHeart normal.", "split": split,
                         "views": [f"{sid}/{v}.png" for v in range(n_views)]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows({c: r.get(c, "") for c in columns} for r in rows)
    return path


def dm_for(make_cfg, root: Path, *overrides: str) -> ReportDataModule:
    cfg = make_cfg("data=custom", f"data.root={root}", "data.num_workers=0", "data.batch_size=4", *overrides,
                   small=False)
    return ReportDataModule(cfg.data, 16, (0.5,) * 3, (0.5,) * 3, augment=False)


def test_jsonl_with_a_split_column_trains_in_batches(make_cfg, tmp_path):
    rows = make_images(tmp_path)
    for i, r in enumerate(rows):  # a list cell, or one string with paths joined by ';'
        r["image_path"] = r.pop("views") if i % 2 else ";".join(r.pop("views"))
    rows[4]["split"] = "validate"  # MIMIC-CXR's own name for val
    write_jsonl(tmp_path / "studies.jsonl", rows)
    dm = dm_for(make_cfg, tmp_path, "data.num_views=2")
    dm.setup()
    assert {s: len(d) for s, d in dm.splits.items()} == SPLIT_SIZES
    assert dm.splits["train"].entries[0]["image_path"] == ["s0/0.png", "s0/1.png"]
    b = next(iter(dm.train_dataloader()))
    assert b["images"].shape == (4, 2, 3, 16, 16) and b["view_mask"].all()
    assert b["reports"][0].startswith("study s") and "  " not in b["reports"][0]  # data.clean=whitespace


def test_csv_per_split_files_with_two_image_columns(make_cfg, tmp_path):
    rows = make_images(tmp_path)
    for r in rows:
        r["frontal"], r["lateral"] = r.pop("views")
    rows[0]["lateral"] = ""  # a study with one view: its second view is masked
    for split in SPLIT_SIZES:
        write_csv(tmp_path / f"{split}.csv", [r for r in rows if r["split"] == split], ["id", "report", "frontal", "lateral"])
    dm = dm_for(make_cfg, tmp_path, "data.num_views=2", "data.image_columns=[frontal,lateral]",
                *(f"data.{s}_file={tmp_path}/{s}.csv" for s in SPLIT_SIZES))
    dm.setup()
    assert [e["image_path"] for e in dm.splits["train"].entries[:2]] == [["s0/0.png"], ["s1/0.png", "s1/1.png"]]
    assert dm.splits["train"][0]["view_mask"].tolist() == [True, False]
    assert [e["id"] for e in dm.splits["test"].entries] == ["s6", "s7"]


def test_r2gen_annotation_is_read_by_suffix_under_data_custom(make_cfg, tmp_path):
    rows = make_images(tmp_path)
    ann = {s: [{"id": r["id"], "report": r["report"], "image_path": r["views"]} for r in rows if r["split"] == s]
           for s in SPLIT_SIZES}
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    dm = dm_for(make_cfg, tmp_path, f"data.annotation={tmp_path}/annotation.json")
    dm.setup()
    assert len(dm.splits["val"]) == 2


@pytest.mark.parametrize("edit,message", [
    (lambda rows: [r.pop("report") for r in rows], "line 1: no column 'report'; its columns: id, split, image_path"),
    (lambda rows: rows[3].update(split="dev"), "line 4: split='dev': expected train, val (or validate) or test"),
    (lambda rows: rows[5].update(id="s1"), "line 6: id 's1' appears twice"),
])
def test_bad_tables_name_the_line_and_the_problem(make_cfg, tmp_path, edit, message):
    rows = make_images(tmp_path)
    for r in rows:
        r["image_path"] = r.pop("views")
    edit(rows)
    write_jsonl(tmp_path / "studies.jsonl", rows)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dm_for(make_cfg, tmp_path).setup()


def test_missing_image_column_says_which_key_to_set(make_cfg, tmp_path):
    write_csv(tmp_path / "studies.csv", [{"id": "a", "report": "x", "path": "a.png", "split": "train"}],
              ["id", "report", "path", "split"])
    with pytest.raises(ValueError, match=r"row 2: no column 'image_path' \(set data.image_columns\); its columns: "
                                         r"id, report, path, split"):
        dm_for(make_cfg, tmp_path, f"data.annotation={tmp_path}/studies.csv").setup()


def test_file_and_format_errors_name_the_key(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="JSONL file not found: .*studies.jsonl .*data.annotation"):
        dm_for(make_cfg, tmp_path).setup()
    with pytest.raises(ValueError, match="data.format=auto: cannot tell the format of .*studies.txt.*set data.format"):
        dm_for(make_cfg, tmp_path, f"data.annotation={tmp_path}/studies.txt").setup()
    with pytest.raises(ValueError, match="data.format='xml': choose auto, r2gen, jsonl or csv"):
        dm_for(make_cfg, tmp_path, "data.format=xml").setup()
    with pytest.raises(ValueError, match="data.val_file, data.test_file not set"):
        dm_for(make_cfg, tmp_path, f"data.train_file={tmp_path}/t.csv").setup()


# ------------------------------------------------------------------------------------------ the set-up check
def broken_tree(root: Path) -> None:
    """8 studies; s2's second view is missing, s5's first is a truncated PNG, s6's report is empty once cleaned."""
    rows = make_images(root)
    for r in rows:
        r["image_path"] = r.pop("views")
    (root / "images" / "s2" / "1.png").unlink()
    png = (root / "images" / "s5" / "0.png").read_bytes()
    (root / "images" / "s5" / "0.png").write_bytes(png[: len(png) // 2])
    rows[6]["report"] = " ... "
    write_jsonl(root / "studies.jsonl", rows)


def test_bad_images_stop_the_run_with_one_line_naming_them_all(make_cfg, tmp_path):
    broken_tree(tmp_path)
    with pytest.raises(ValueError) as e:
        dm_for(make_cfg, tmp_path).setup()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("2 image(s) not found or unreadable, in 2 studies")
    assert f"train id s2: {tmp_path}/images/s2/1.png (no such file)" in msg
    assert f"val id s5: {tmp_path}/images/s5/0.png (unreadable" in msg
    assert "data.on_bad_sample=skip" in msg


def test_skip_drops_bad_studies_and_empty_reports_with_warnings(make_cfg, tmp_path, caplog):
    broken_tree(tmp_path)
    dm = dm_for(make_cfg, tmp_path, "data.on_bad_sample=skip")
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert {s: [e["id"] for e in d.entries] for s, d in dm.splits.items()} == {
        "train": ["s0", "s1", "s3"], "val": ["s4"], "test": ["s7"]}
    assert "dropping 2 image(s)" in caplog.text and "test: dropped 1 studies whose report is empty" in caplog.text
    next(iter(dm.val_dataloader()))


def test_a_split_left_empty_is_an_error(make_cfg, tmp_path):
    broken_tree(tmp_path)
    (tmp_path / "images" / "s4" / "0.png").unlink()  # with s5 bad too, nothing is left of val
    with pytest.raises(ValueError, match=r"data split\(s\) val have no usable studies in .*studies.jsonl"):
        dm_for(make_cfg, tmp_path, "data.on_bad_sample=skip").setup()


def test_unknown_policy_names_the_choices(make_cfg, tmp_path):
    rows = make_images(tmp_path)
    for r in rows:
        r["image_path"] = r.pop("views")
    write_jsonl(tmp_path / "studies.jsonl", rows)
    with pytest.raises(ValueError, match="data.on_bad_sample='ignore': choose error or skip"):
        dm_for(make_cfg, tmp_path, "data.on_bad_sample=ignore").setup()


def test_read_studies_is_usable_without_hydra(tmp_path):
    rows = make_images(tmp_path)
    for r in rows:
        r["image_path"] = r.pop("views")
    write_jsonl(tmp_path / "all.jsonl", rows)
    studies = read_studies({"annotation": str(tmp_path / "all.jsonl"), "format": "auto"})
    assert [len(studies[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert studies["val"][0] == {"id": "s4", "report": rows[4]["report"], "image_path": ["s4/0.png", "s4/1.png"],
                                 "split": "val"}
