"""predict.py: reports for new studies (a folder, a table, a list of images) from a trained checkpoint.

Most tests call `r2gen.predict.predict` in-process on the session's tiny demo checkpoint; one (slow) runs
`predict.py` as a user would. Every test that reads a user's folder compares a snapshot of it before and after.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from r2gen.checkpoint import read_checkpoint
from r2gen.errors import ConfigError, InputError, MissingFileError, UnsafeWriteError, UserError
from r2gen.predict import predict, write_jsonl
from r2gen.scoring.chexpert import CHEXPERT_LABELS, label_reports

from .helpers.cli import run_cli
from .helpers.config import compose_cfg
from .helpers.dicom import RAMP, write_dicom
from .helpers.files import read_jsonl, snapshot

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@pytest.fixture
def ckpt(demo_run) -> Path:
    return demo_run / "checkpoints" / "last.ckpt"


def run_predict(ckpt, *overrides, tmp_path, cache_dir, run="run"):
    """`python predict.py ckpt=<ckpt> <overrides>` in-process, into the run folder `tmp_path/run`."""
    o = [f"ckpt={ckpt}", *FAST, *overrides]
    return predict(compose_cfg("predict", o, tmp_path / run, cache_dir), overrides=o)


def image(path: Path, seed: int = 0, size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def studies_folder(root: Path) -> Path:
    """A two-image PNG study (a subfolder), a JPEG study (a subfolder), a loose MONOCHROME1 DICOM, and files that
    are not images (skipped)."""
    image(root / "s1" / "b_lateral.png", 2)
    image(root / "s1" / "a_frontal.png", 1)  # name order, not creation order
    image(root / "s2" / "frontal.jpg", 3)
    write_dicom(root / "s3.dcm", RAMP, photometric="MONOCHROME1")
    (root / "notes.txt").write_text("not an image\n")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


def test_a_folder_of_png_jpeg_and_dicom_studies_gives_one_line_each(ckpt, tmp_path, cache_dir):
    folder = studies_folder(tmp_path / "new")
    before = snapshot(folder)
    path = run_predict(ckpt, f"input={folder}", tmp_path=tmp_path, cache_dir=cache_dir)
    assert path == tmp_path / "run" / "predictions.jsonl"
    rows = read_jsonl(path)
    assert [r["id"] for r in rows] == ["s1", "s2", "s3"]
    assert all(set(r) == {"id", "report", "images"} and isinstance(r["report"], str) for r in rows)
    assert rows[0]["images"] == [str(folder / "s1" / "a_frontal.png"), str(folder / "s1" / "b_lateral.png")]
    assert rows[1]["images"] == [str(folder / "s2" / "frontal.jpg")]
    assert rows[2]["images"] == [str(folder / "s3.dcm")]
    assert snapshot(folder) == before  # read, never written
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_reports_equal_the_evaluation_path(ckpt, tmp_path, cache_dir, monkeypatch):
    """The demo test studies as a table give exactly the reports evaluate.py writes for them, from the same
    model inputs (images and view masks, bit for bit) and generate config."""
    from r2gen.evaluate import evaluate
    from r2gen.models.module import R2GenModule

    inputs, generate = [], R2GenModule.generate

    def spy(self, images, view_mask, features=None, batch=None):
        inputs.append((images.clone(), view_mask.clone()))
        return generate(self, images, view_mask, features, batch)

    monkeypatch.setattr(R2GenModule, "generate", spy)
    o = [f"ckpt={ckpt}", *FAST]
    evaluate(compose_cfg("evaluate", o, tmp_path / "ev", cache_dir), overrides=o)
    expected = {r["id"]: r["prediction"] for r in read_jsonl(tmp_path / "ev" / "predictions.jsonl")}

    data = read_checkpoint(ckpt)["hyper_parameters"]["cfg"]["data"]
    test = json.loads(Path(data["annotation"]).read_text())["test"]
    table = tmp_path / "table" / "test.jsonl"
    table.parent.mkdir()
    table.write_text("".join(json.dumps({"id": e["id"], "image_path": e["image_path"]}) + "\n" for e in test))
    before = snapshot(table.parent)
    path = run_predict(ckpt, f"input={table}", f"data.image_dir={data['image_dir']}", tmp_path=tmp_path,
                       cache_dir=cache_dir)
    rows = read_jsonl(path)
    assert [r["id"] for r in rows] == list(expected)
    assert {r["id"]: r["report"] for r in rows} == expected
    (ev_images, ev_mask), (images, mask) = inputs
    assert torch.equal(images, ev_images) and torch.equal(mask, ev_mask)
    assert rows[0]["images"] == [str(Path(data["image_dir"]) / p) for p in test[0]["image_path"]]
    assert snapshot(table.parent) == before


def test_a_csv_table_reads_paths_next_to_it_and_ignores_report_and_split(ckpt, tmp_path, cache_dir):
    root = tmp_path / "mine"
    image(root / "img" / "x1.png", 1), image(root / "img" / "x2.png", 2), image(root / "img" / "y.png", 3)
    with open(root / "studies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image_path", "report", "split"])
        w.writerow(["x", "img/x1.png;img/x2.png", "old report", "train"])
        w.writerow(["y", str(root / "img" / "y.png"), "", ""])  # absolute paths are used as they are
    before = snapshot(root)
    rows = read_jsonl(run_predict(ckpt, f"input={root / 'studies.csv'}", tmp_path=tmp_path, cache_dir=cache_dir))
    assert [r["id"] for r in rows] == ["x", "y"]
    assert rows[0]["images"] == [str(root / "img" / "x1.png"), str(root / "img" / "x2.png")]
    assert rows[1]["images"] == [str(root / "img" / "y.png")]
    assert snapshot(root) == before


def test_a_list_of_images_is_one_study(ckpt, tmp_path, cache_dir):
    png = image(tmp_path / "in" / "front.png")
    dcm = write_dicom(tmp_path / "in" / "side.dcm", RAMP)
    rows = read_jsonl(run_predict(ckpt, f"input=[{png},{dcm}]", tmp_path=tmp_path, cache_dir=cache_dir))
    assert len(rows) == 1 and rows[0]["id"] == "front" and rows[0]["images"] == [str(png), str(dcm)]


def test_generate_override_and_labels(ckpt, tmp_path, cache_dir, monkeypatch):
    """`generate.num_beams=1` changes the generate config the model runs with; `labels=true` adds each report's
    CheXpert labels (1/0/-1/null per label)."""
    import r2gen.build as mod  # predict.py's model comes from build.load_model

    seen = []

    def spy(run, ck):
        model = load_model(run, ck)
        seen.append(model.gen_config)
        return model

    load_model = mod.load_model
    monkeypatch.setattr(mod, "load_model", spy)
    png = image(tmp_path / "in" / "one.png")
    rows = read_jsonl(run_predict(ckpt, f"input={png}", "generate.num_beams=1", "labels=true", tmp_path=tmp_path,
                                  cache_dir=cache_dir))
    assert seen[0].num_beams == 1  # the checkpoint's own is 2 (tests/conftest.py SMALL)
    assert seen[0].max_new_tokens == 8  # the rest of the checkpoint's generate block is kept
    labels = rows[0]["labels"]
    assert list(labels) == list(CHEXPERT_LABELS) and set(labels.values()) <= {1, 0, -1, None}
    assert labels == label_reports([rows[0]["report"]])[0]


def test_skip_leaves_out_a_study_with_a_missing_image(ckpt, tmp_path, cache_dir):
    table = tmp_path / "t.jsonl"
    image(tmp_path / "ok.png")
    table.write_text('{"id": "ok", "image_path": "ok.png"}\n{"id": "gone", "image_path": ["gone.png"]}\n')
    with pytest.raises(MissingFileError, match=r"1 image\(s\) not found or unreadable.*id gone: .*gone.png"):
        run_predict(ckpt, f"input={table}", tmp_path=tmp_path, cache_dir=cache_dir)
    rows = read_jsonl(run_predict(ckpt, f"input={table}", "data.on_bad_sample=skip", tmp_path=tmp_path,
                                  cache_dir=cache_dir))
    assert [r["id"] for r in rows] == ["ok"]


def test_an_existing_output_file_is_refused_but_the_run_folder_s_own_is_replaced(ckpt, tmp_path, cache_dir):
    png = image(tmp_path / "in" / "one.png")
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my results\n")
    with pytest.raises(UnsafeWriteError, match="mine.jsonl already exists"):
        run_predict(ckpt, f"input={png}", f"output={mine}", tmp_path=tmp_path, cache_dir=cache_dir)
    assert mine.read_text() == "my results\n"
    new = tmp_path / "sub" / "new.jsonl"  # a new file, its folder created
    assert run_predict(ckpt, f"input={png}", f"output={new}", tmp_path=tmp_path, cache_dir=cache_dir) == new
    assert len(read_jsonl(new)) == 1
    own = tmp_path / "run" / "predictions.jsonl"  # written by the previous run in this run folder: replaced
    own.write_text("stale\n")
    run_predict(ckpt, f"input={png}", f"output={own}", tmp_path=tmp_path, cache_dir=cache_dir)
    assert read_jsonl(own)[0]["id"] == "one"


def test_an_interrupted_write_leaves_no_file(tmp_path):
    out = tmp_path / "p.jsonl"
    with pytest.raises(TypeError):
        write_jsonl(out, [{"id": "a"}, {"id": object()}], tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- bad input: one clear line, before any model is built -------------------------------------------------------
def bad_inputs(root: Path) -> dict[str, tuple]:
    """name -> (input= value, error class, message part)."""
    (root / "empty").mkdir(parents=True)
    (root / "no_images" / "s1").mkdir(parents=True)
    (root / "no_images" / "s1" / "report.txt").write_text("x")
    (root / "notes.txt").write_text("x")
    (root / "empty.jsonl").write_text("")
    (root / "header.csv").write_text("id,image_path\n")
    (root / "no_id.jsonl").write_text('{"study": "a", "image_path": "a.png"}\n')
    (root / "no_image.csv").write_text("id,path\na,a.png\n")
    (root / "twice.jsonl").write_text('{"id": "a", "image_path": "a.png"}\n{"id": "a", "image_path": "b.png"}\n')
    image(root / "dup" / "s1" / "x.png"), image(root / "dup" / "s1.png")
    image(root / "broken" / "ok.png")
    (root / "broken" / "bad.png").write_bytes(image(root / "tmp.png").read_bytes()[:60])
    return {
        "missing": (root / "nope", MissingFileError, "no such file or folder"),
        "empty folder": (root / "empty", InputError, "no image files in the folder"),
        "folder without images": (root / "no_images", InputError, "no image files in the folder"),
        "unsupported file": (root / "notes.txt", InputError, "unsupported file type (.txt"),
        "empty table": (root / "empty.jsonl", InputError, "no studies in it (the file is empty)"),
        "header-only csv": (root / "header.csv", InputError, "or has only a header row"),
        "no id column": (root / "no_id.jsonl", InputError, "line 1: no column 'id'"),
        "no image column": (root / "no_image.csv", InputError, "row 2: no column 'image_path'"),
        "same id twice in a table": (root / "twice.jsonl", InputError, "two studies have id 'a' (line 1 and line 2)"),
        "same id twice in a folder": (root / "dup", InputError, "two studies have id 's1' (s1/ and s1.png)"),
        "unreadable image": (root / "broken", InputError, "bad.png (unreadable"),
        "a folder in a list": ([str(root / "empty")], InputError, "is a folder; a list names the image files"),
    }


def test_bad_inputs_are_one_clear_line_and_touch_nothing(ckpt, tmp_path, cache_dir):
    root = tmp_path / "user"
    cases = bad_inputs(root)
    before = snapshot(root)
    for name, (value, cls, message) in cases.items():
        value = f"[{','.join(value)}]" if isinstance(value, list) else value
        with pytest.raises(cls) as e:
            run_predict(ckpt, f"input={value}", tmp_path=tmp_path, cache_dir=cache_dir)
        assert message in str(e.value) and "\n" not in str(e.value), name
    assert snapshot(root) == before


@pytest.mark.parametrize("args,cls,message", [
    ([], ConfigError, "input is not set"),
    (["input=x.png", "labels=yes"], ConfigError, "labels='yes': choose true or false"),
    (["input=x.png", "data.on_bad_sample=ignore"], ConfigError, "data.on_bad_sample='ignore'"),
])
def test_bad_settings_name_the_key(ckpt, tmp_path, cache_dir, args, cls, message):
    if "input=x.png" in args:
        image(tmp_path / "x.png")
        args = [a.replace("x.png", str(tmp_path / "x.png")) for a in args]
    with pytest.raises(cls, match=message.replace("(", r"\(")):
        run_predict(ckpt, *args, tmp_path=tmp_path, cache_dir=cache_dir)


def test_the_entry_point_exits_2_with_one_line(ckpt, tmp_path, cache_dir, capsys):
    from r2gen.boundary import run_cli as cli

    o = [f"ckpt={ckpt}", f"input={tmp_path / 'nope'}"]
    cfg = compose_cfg("predict", o, tmp_path / "run", cache_dir)
    with pytest.raises(SystemExit) as e:
        cli(lambda c: predict(c, overrides=o), cfg)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: input={tmp_path / 'nope'}: no such file or folder")
    assert isinstance(MissingFileError("x"), UserError)


@pytest.mark.slow
def test_predict_py_in_a_fresh_process(ckpt, tmp_path, cache_dir):
    folder = studies_folder(tmp_path / "new")
    before = snapshot(folder)
    out = tmp_path / "p"
    r = run_cli("predict.py", f"ckpt={ckpt}", f"input={folder}", f"hydra.run.dir={out}", "trainer.accelerator=cpu",
                cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["s1", "s2", "s3"] and all(isinstance(r["report"], str) for r in rows)
    assert f"reports for 3 studies written to {out / 'predictions.jsonl'}" in r.stdout
    assert snapshot(folder) == before
