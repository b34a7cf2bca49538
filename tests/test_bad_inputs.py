"""Every bad input a user can bring: one clear line (a `UserError`, exit code 2 at the command line) or a
documented, safe handling, and nothing of the user's touched.

Rows already covered elsewhere (not repeated here):
- missing / unparsable JSONL line, missing column, bad split name, repeated id in a table: test_custom_data.py
  (`test_bad_tables_name_the_line_and_the_problem`, `test_missing_image_column_says_which_key_to_set`);
- missing annotation / table file, unknown `data.format`: test_custom_data.py (`test_file_and_format_errors_name_the_key`);
- a split emptied by skipped images: test_custom_data.py (`test_a_split_left_empty_is_an_error`);
- bad images through train.py (one line, exit 2; `skip` trains without them): test_iu_xray_tree.py;
- `image_problem` on truncated / garbage PNG, JPEG, DICOM and a compressed DICOM without decoder: test_images.py;
- 16-bit PNG and 12/16-bit DICOM pixel ranges: test_images.py;
- unknown `lm=`: test_train.py (`test_unknown_config_choice_names_the_options`, Hydra lists the options);
- unknown `encoder.name=`, invalid `lm.pad_token`, unknown `generate.<kwarg>`: test_model.py
  (`test_bad_config_values_name_the_key`, `test_generate_kwarg_checked_at_start`); here only that they are
  `UserError`s, which is what makes them one line at the command line.
"""

from __future__ import annotations

import json
import logging
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from r2gen.data.annotations import read_studies
from r2gen.data.checks import check_studies
from r2gen.data.clean import get_cleaner
from r2gen.data.images import image_problem, load_image
from r2gen.errors import ConfigError, InputError, MissingFileError, UserError
from r2gen.models.encoder import ImageEncoder, create_timm_model
from r2gen.scoring.report_html import render

from .helpers.cli import run_cli
from .helpers.config import SMALL
from .helpers.dicom import RAMP, write_dicom
from .helpers.files import snapshot

GOOD = {s: [{"id": f"{s}{i}", "report": "No pleural effusion.", "image_path": [f"{s}{i}/0.png"]} for i in range(2)]
        for s in ("train", "val", "test")}


def read(path: Path, **cfg):
    return read_studies({"annotation": str(path), "format": "auto", **cfg})


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------- annotation files
LATIN1 = "Cardiomégalie légère.".encode("latin-1")  # é is 0xe9 in Latin-1, not valid UTF-8 here


@pytest.mark.parametrize("name", ["annotation.json", "studies.jsonl", "studies.csv"])
def test_a_file_that_is_not_utf8_names_the_byte_line_and_fix(tmp_path, name):
    rows = [{"id": f"s{i}", "report": "ok", "split": s, "image_path": "a.png"} for i, s in enumerate(GOOD)]
    rows[1]["report"] = "REPORT"  # the val study's report is written in Latin-1
    if name.endswith(".json"):
        text = json.dumps({r["split"]: [r] for r in rows}, indent=1)
    elif name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = "id,report,split,image_path\n" + "".join(f"{r['id']},{r['report']},{r['split']},a.png\n" for r in rows)
    raw = text.encode().replace(b"REPORT", LATIN1)
    (tmp_path / name).write_bytes(raw)
    offset = raw.index(b"\xe9")
    line = raw[:offset].count(b"\n") + 1
    with pytest.raises(InputError) as e:
        read(tmp_path / name)
    msg = one_line(e)
    assert msg.startswith(f"{tmp_path / name}: not UTF-8 text: byte 0xe9 at byte offset {offset} (line {line},")
    assert "save the file as UTF-8" in msg


def test_malformed_json_names_line_and_column(tmp_path):
    (tmp_path / "annotation.json").write_text('{"train": [\n  {"id": "a",, "report": "x"}\n]}')
    with pytest.raises(InputError) as e:
        read(tmp_path / "annotation.json")
    assert one_line(e).startswith(f"{tmp_path}/annotation.json line 2 column 14: not valid JSON (Expecting")


@pytest.mark.parametrize("ann,message", [
    ([GOOD["train"]], "the top level is a JSON list, not an object; R2Gen's layout is"),
    ({**GOOD, "val": {"val0": GOOD["val"][0]}}, "'val' is a JSON object, not a list of studies"),
    ({**GOOD, "test": ["test0/0.png"]}, "test[0] is a JSON string, not an object"),
    ({**GOOD, "train": [{"id": "a", "image_path": ["a.png"]}]}, "train[0] has no 'report' (keys: ['id', 'image_path'])"),
    ({**GOOD, "train": [{"id": "a", "report": "x", "image_path": 3}]}, "train[0] (id 'a') has image_path=3: expected a list"),
    ({**GOOD, "train": [{"id": "a", "report": None, "image_path": []}]}, "train[0] (id 'a') has report=None: expected a string"),
    ({**GOOD, "train": [{"id": "", "report": "x", "image_path": []}]}, "train[0] has id=''; a study id is a non-empty string"),
])
def test_an_annotation_of_the_wrong_shape_says_where(tmp_path, ann, message):
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    with pytest.raises(InputError) as e:
        read(tmp_path / "annotation.json")
    assert message in one_line(e) and str(tmp_path / "annotation.json") in str(e.value)


def test_a_single_image_path_string_is_one_image(tmp_path):
    ann = {**GOOD, "train": [{"id": "a", "report": "x", "image_path": "a/0.png", "extra": 1}]}
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    assert read(tmp_path / "annotation.json")["train"] == [{"id": "a", "report": "x", "image_path": ["a/0.png"],
                                                            "extra": 1}]


@pytest.mark.parametrize("where,first,second", [("train", "train[0]", "train[1]"), ("test", "train[0]", "test[1]")])
def test_a_repeated_study_id_in_an_annotation_names_both_places(tmp_path, where, first, second):
    ann = json.loads(json.dumps(GOOD))
    ann[where][1]["id"] = "train0"
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    with pytest.raises(InputError) as e:
        read(tmp_path / "annotation.json")
    assert f"id 'train0' appears twice ({first} and {second}); study ids must be unique" in one_line(e)


def test_a_study_in_two_per_split_files_is_an_error(tmp_path):
    ann = json.loads(json.dumps(GOOD))
    ann["val"][0]["id"] = ann["test"][1]["id"] = "x"  # each file is fine on its own
    for s, rows in ann.items():
        (tmp_path / f"{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as e:
        read_studies({**{f"{s}_file": str(tmp_path / f"{s}.jsonl") for s in GOOD}, "format": "auto"})
    assert one_line(e).startswith(f"id 'x' is in both data.val_file={tmp_path}/val.jsonl and data.test_file=")


@pytest.mark.parametrize("name,content,message", [
    ("annotation.json", b"", "the file is empty"),
    ("annotation.json", b"  \n", "the file is empty"),
    ("studies.jsonl", b"\n\n", "no studies in it (the file is empty)"),
    ("studies.csv", b"", "no studies in it (the file is empty or has only a header row)"),
    ("studies.csv", b"id,report,split,image_path\n", "no studies in it (the file is empty or has only a header row)"),
])
def test_an_empty_annotation_file_is_an_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as e:
        read(tmp_path / name)
    assert one_line(e).startswith(f"{tmp_path / name}: {message}")


@pytest.mark.parametrize("content,message", [
    (b'id,report,split,image_path\na,x,train,a.png\nb,"unclosed,train,b.png\nc,y,train,c.png\n',
     "line 3: not valid CSV (unexpected end of data, in the row that starts on this line)"),
    (b'id,report,split,image_path\na,"x"y,train,a.png\n', "line 2: not valid CSV (',' expected after '\"'"),
    (b"id,report,split,image_path\n,x,train,a.png\n", "row 2: the id is empty"),
])
def test_a_broken_csv_row_is_named(tmp_path, content, message):
    (tmp_path / "s.csv").write_bytes(content)
    with pytest.raises(InputError) as e:
        read(tmp_path / "s.csv")
    assert message in one_line(e)


def test_a_bom_is_not_part_of_the_first_row(tmp_path):
    rows = [{"id": f"s{i}", "report": "x", "split": s, "image_path": "a.png"} for i, s in enumerate(GOOD)]
    (tmp_path / "s.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    (tmp_path / "annotation.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert read(tmp_path / "s.jsonl")["train"][0]["id"] == "s0"
    assert read(tmp_path / "annotation.json")["val"][1]["id"] == "val1"


# ------------------------------------------------------------------------------------------ empty reports
def write_pngs(root: Path, ann: dict) -> None:
    for s in ann:
        for e in ann[s]:
            for p in e["image_path"]:
                (root / p).parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (8, 8), 100).save(root / p)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_and_whitespace_reports_are_dropped_with_a_warning(tmp_path, caplog, split):
    ann = json.loads(json.dumps(GOOD))
    ann[split] += [{"id": f"{split}_empty", "report": "", "image_path": [f"{split}0/0.png"]},
                   {"id": f"{split}_blank", "report": " \n\t . ", "image_path": [f"{split}0/0.png"]}]
    write_pngs(tmp_path, ann)
    with caplog.at_level(logging.WARNING):
        out = check_studies(ann, tmp_path, get_cleaner("whitespace"), "error", "annotation.json")
    assert [e["id"] for e in out[split]] == [f"{split}0", f"{split}1"]
    assert f"{split}: dropped 2 studies whose report is empty once cleaned" in caplog.text


def test_a_split_whose_reports_are_all_empty_is_one_line(tmp_path):
    ann = json.loads(json.dumps(GOOD))
    for e in ann["test"]:
        e["report"] = "   "
    write_pngs(tmp_path, ann)
    with pytest.raises(InputError) as e:
        check_studies(ann, tmp_path, get_cleaner("whitespace"), "skip", "annotation.json")
    assert one_line(e).startswith("data split(s) test have no usable studies in annotation.json")


# ------------------------------------------------------------------------------------------------ images
def bad_image(folder: Path, fmt: str, kind: str) -> tuple[Path, str]:
    """A `kind` (missing, empty, truncated, corrupt) image file of format `fmt`, and the reason the check gives."""
    rng = np.random.default_rng(0)
    good = folder / f"good.{fmt}"
    if fmt == "dcm":
        write_dicom(good, RAMP)
    else:
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(good)
    data, path = good.read_bytes(), folder / f"{kind}.{fmt}"
    good.unlink()
    if kind == "missing":
        return path, "no such file"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty file (0 bytes)"
    if kind == "truncated":
        path.write_bytes(data[: len(data) - 200])
        return path, {"png": "unreadable", "jpg": "truncated JPEG", "dcm": "truncated DICOM pixel data"}[fmt]
    # corrupt: PNG and JPEG with their headers overwritten; a DICOM whose data set after the preamble is junk
    if fmt == "dcm":
        path.write_bytes(data[:132] + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
        return path, "DICOM file without pixel data"
    path.write_bytes(data[:12] + rng.integers(0, 256, 100, dtype=np.uint8).tobytes() + data[112:])
    return path, "unreadable"


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "corrupt"])
@pytest.mark.parametrize("fmt", ["png", "jpg", "dcm"])
def test_every_bad_image_is_found_at_set_up(tmp_path, caplog, fmt, kind, policy):
    ann = json.loads(json.dumps(GOOD))
    write_pngs(tmp_path, ann)
    path, reason = bad_image(tmp_path, fmt, kind)
    ann["train"][1]["image_path"].append(path.name)  # train1's second view is the bad file
    before = snapshot(tmp_path)
    clean = get_cleaner("whitespace")
    if policy == "error":
        with pytest.raises(MissingFileError if kind == "missing" else InputError) as e:
            check_studies(ann, tmp_path, clean, policy, "annotation.json")
        msg = one_line(e)
        assert msg.startswith("1 image(s) not found or unreadable, in 1 studies")
        assert f"train id train1: {path} ({reason}" in msg and "data.on_bad_sample=skip" in msg
    else:
        with caplog.at_level(logging.WARNING):
            out = check_studies(ann, tmp_path, clean, policy, "annotation.json")
        assert [e["id"] for e in out["train"]] == ["train0"] and len(out["val"]) == len(out["test"]) == 2
        assert "data.on_bad_sample=skip: dropping 1 image(s)" in caplog.text and reason in caplog.text
    assert snapshot(tmp_path) == before  # nothing of the user's is moved or deleted, whatever the policy


GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # [16, 64]


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I;16", "dicom16"])
def test_every_pixel_format_loads_as_sensible_rgb(tmp_path, mode):
    if mode == "dicom16":
        path = write_dicom(tmp_path / "x.dcm", GRADIENT.astype(np.uint16) * 257, bits_stored=16)
    elif mode == "I;16":
        path = tmp_path / "x.png"
        Image.fromarray(GRADIENT.astype(np.uint16) * 16 + 1000).save(path)  # 12-bit data, not starting at 0
    else:
        path = tmp_path / "x.png"
        im = Image.fromarray(GRADIENT)
        if mode == "RGBA":  # an alpha channel, half transparent: dropped, the grey values stay
            im = Image.merge("RGBA", [im, im, im, Image.new("L", im.size, 128)])
        im.convert(mode).save(path)
    assert image_problem(path) is None
    a = np.asarray(load_image(path)).astype(int)
    assert a.shape == (16, 64, 3) and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    row = a[0, :, 0]
    if mode == "1":  # bilevel (Pillow dithers the gradient): black or white, darker on the left
        assert set(np.unique(a)) == {0, 255} and a[:, :16].mean() < 64 < 192 < a[:, -16:].mean()
    elif mode in ("I;16", "dicom16"):  # stretched over 0..255, every level kept
        assert row[0] == 0 and row[-1] == 255 and (np.diff(row) > 0).all()
    else:
        assert np.abs(row - GRADIENT[0]).max() <= 2  # the grey values themselves (P: within its palette)


# ----------------------------------------------------------------------------- encoders with a fixed input size
def test_a_fixed_size_encoder_is_built_for_data_image_size(tmp_path):
    enc = ImageEncoder("swin_tiny_patch4_window7_224", pretrained=False, image_size=64)
    assert enc.data_config()["input_size"] == (3, 64, 64)  # what build.datamodule resizes to
    tok, mask = enc(torch.zeros(2, 2, 3, 64, 64), torch.ones(2, 2, dtype=torch.bool))
    assert tok.shape == (2, 4, 768) and mask.all()  # 64 px -> a 2 x 2 grid of 768-d tokens
    # local pretrained weights for 224 px load into the 64 px model (timm resizes the attention windows' tables)
    torch.save(create_timm_model("swin_tiny_patch4_window7_224").state_dict(), tmp_path / "w.pth")
    enc = ImageEncoder("swin_tiny_patch4_window7_224", pretrained=str(tmp_path / "w.pth"), image_size=64)
    assert enc(torch.zeros(1, 1, 3, 64, 64), torch.ones(1, 1, dtype=torch.bool))[0].shape == (1, 4, 768)


def test_a_size_the_encoder_cannot_take_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        ImageEncoder("swin_tiny_patch4_window7_224", image_size=2)
    msg = one_line(e)
    assert msg.startswith("encoder.name=swin_tiny_patch4_window7_224 cannot take data.image_size=2 images "
                          "(its own size is 224x224;")
    assert "set data.image_size=224 or data.image_size=null (the encoder's own size)" in msg
    with pytest.raises(ConfigError, match=r"data.image_size=-1: give a side in pixels"):
        ImageEncoder("resnet10t", image_size=-1)


def test_the_encoder_keeps_its_own_size_without_data_image_size():
    enc = ImageEncoder("resnet10t", image_size=None)
    assert enc.data_config()["input_size"] == (3, 176, 176)  # timm's own, as before


@pytest.mark.slow
def test_train_py_with_swin_on_the_demo(tmp_path, cache_dir):
    # `python train.py encoder.name=swin_tiny_patch4_window7_224` used to fail inside timm ("Input height (64) doesn't
    # match model (224)"); shrunk (32 px, two steps: ~10 s), align=shallow also sends the images through the cache
    r = run_cli("train.py", "encoder.name=swin_tiny_patch4_window7_224", "align=shallow", *SMALL,
                "trainer.limit_train_batches=2", "trainer.limit_val_batches=0", "test_after_fit=false",
                "~callbacks.best_checkpoint", f"hydra.run.dir={tmp_path}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------------------------------ the LM
@pytest.mark.slow
def test_an_lm_folder_without_a_tokenizer_is_one_line(tmp_path, cache_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = tmp_path / "weights_only"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(lm)
    assert not list(lm.glob("tokenizer*"))
    r = run_cli("train.py", f"lm.name_or_path={lm}", *SMALL, f"hydra.run.dir={tmp_path / 'run'}",
                cache_dir=cache_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = next(x for x in r.stderr.splitlines() if x.startswith("error: "))
    assert f"lm.name_or_path='{lm}': no tokenizer could be loaded from this folder" in line
    assert "tokenizer.save_pretrained(<folder>)" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_lm_and_generate_values_are_user_errors():
    """What test_model.py checks as ValueError is a UserError: one line and exit 2 at the command line."""
    from transformers import GenerationConfig

    from r2gen.models.lm import apply_pad_policy, generation_config

    class Tok:
        pad_token_id = eos_token_id = bos_token_id = None
        eos_token = unk_token = None

        def __len__(self):
            return 10

    class Model:
        generation_config = GenerationConfig()

    for policy in ("foo", "99", "unk", True):
        with pytest.raises(UserError, match="lm.pad_token="):
            apply_pad_policy(Tok(), policy)
    with pytest.raises(UserError, match="generate.num_beem: not a generation option"):
        generation_config(Model(), Tok(), {"num_beem": 3})
    with pytest.raises(UserError, match="encoder.name='resnet_does_not_exist' is not a timm model"):
        create_timm_model("resnet_does_not_exist")


# ----------------------------------------------------------------------------------------------- report.html
class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


def test_text_from_data_files_is_escaped_in_report_html(tmp_path):
    evil = ["<script>alert(1)</script>", "a \"quoted\" 'id' & </td></tr></table>", "<img src=x onerror=alert(2)>"]
    img = tmp_path / '"><img src=x onerror=alert(3)>.png'  # an image path is never shown, only its thumbnail
    Image.new("L", (8, 8), 90).save(img)
    records = [{"id": e, "prediction": f"no effusion {e}", "reference": f"{e} small effusion",
                "image_path": [str(img)]} for e in evil]
    meta = {"split": "</title><script>alert(4)</script>", "data": evil[1], "generate": {"k": evil[0]}}
    page = render(records, {"Bleu_4": 0.5, f"f1/{evil[0]}": 0.25}, meta)
    p = Page()
    p.feed(page)
    assert p.tags.count("script") == 1  # the page's own sorting script only
    # the page's own structure, nothing injected: meta rows + one score row + header + one row per study
    assert p.tags.count("tr") == len(meta) + 1 + 1 + len(records)
    assert p.tags.count("td") == 2 * len(meta) + 1 + 8 * len(records) and p.tags.count("img") == len(records)
    assert {k for k, _ in p.attrs} <= {"charset", "class", "width", "height", "role", "x", "y", "text-anchor",
                                         "fill", "data-v", "src", "alt", "id"}  # no onerror=..., no injected attribute
    assert all(v.startswith("data:image/jpeg;base64,") for k, v in p.attrs if k == "src")
    text = "".join(p.text)
    for e in evil:  # each shows up as the text it is: in the id, generated and reference cells
        assert text.count(e) >= 3
    assert meta["split"] in text and json.dumps(meta["generate"]) in text and "f1/" not in text


def test_an_image_that_breaks_after_the_set_up_check_names_the_study(tmp_path):
    from r2gen.data.datamodule import StudyDataset, image_transform

    (tmp_path / "s1").mkdir()
    Image.new("L", (8, 8), 100).save(tmp_path / "s1" / "0.png")
    ds = StudyDataset([{"id": "s1", "report": "clear .", "image_path": ["s1/0.png"]}], tmp_path,
                      image_transform(8, (0.5,) * 3, (0.5,) * 3, False), 1, str)
    assert ds[0]["images"].shape == (1, 3, 8, 8)
    (tmp_path / "s1" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # replaced on disk during the run
    with pytest.raises(InputError, match=r"s1/0.png \(study id s1\) can no longer be read"):
        ds[0]
