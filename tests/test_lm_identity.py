"""A checkpoint carries the LM r2gen built for it (lm=tiny: tokenizer and config), so it rebuilds exactly that LM on
any data set and with the cache folder gone; and evaluation needs only the split it scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from r2gen import build
from r2gen.build import load_model, rebuild
from r2gen.checkpoint import FORMAT, read_checkpoint
from r2gen.errors import ConfigError, InputError
from r2gen.evaluate import evaluate
from r2gen.models import tiny_lm

from .helpers.cli import run_cli
from .helpers.config import SMALL, compose_cfg
from .helpers.files import read_jsonl

FAST = ["generate.max_new_tokens=4", "generate.num_beams=1", "trainer.enable_progress_bar=false"]
# data=custom replaces the demo's data group whole: keep what the demo model was trained with
AS_DEMO = ["data.num_views=2", "data.view_fusion=concat", "data.image_size=32", "data.clean=iu_xray",
           "data.num_workers=0", "data.eval_batch_size=8"]
OTHER_WORDS = "zebra quantum flux xylophone marmalade cobalt"  # no word of the demo's reports


def demo_data(ckpt: Path) -> dict:
    return read_checkpoint(ckpt)["hyper_parameters"]["cfg"]["data"]


def custom_table(folder: Path, ckpt: Path, splits=("train", "val", "test"), other: str | None = None) -> Path:
    """A JSONL table whose test studies are the demo's test studies (same ids and images) and whose other splits
    hold the demo's images with reports in another vocabulary."""
    data = demo_data(ckpt)
    ann = json.loads(Path(data["annotation"]).read_text())
    rows = []
    for split in splits:
        for e in ann[split]:
            report = e["report"] if split == "test" else other or f"{OTHER_WORDS} {e['id']}."
            images = [str(Path(data["image_dir"]) / p) for p in e["image_path"]]  # absolute: read as they are
            rows.append({"id": e["id"], "report": report, "image_path": images, "split": split})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def predictions(folder: Path) -> dict[str, str]:
    return {r["id"]: r["prediction"] for r in read_jsonl(folder / "predictions.jsonl")}


def test_a_checkpoint_stores_the_lm_it_was_trained_with(demo_run, make_cfg):
    ck = read_checkpoint(demo_run / "checkpoints" / "last.ckpt")
    assert ck["r2gen"]["format"] == FORMAT == 6
    lm = ck["r2gen"]["lm"]
    built = Path(build.lm_path(make_cfg()))  # the folder the demo run trained with
    assert lm["tokenizer"] == (built / "tokenizer.json").read_text()
    assert lm["config"] == (built / "config.json").read_text() and lm["seed"] == 0
    assert all(isinstance(v, (str, int, dict)) for v in lm.values())  # plain data: weights_only=True reads it


def test_demo_checkpoint_on_other_data_keeps_its_tokenizer_without_the_cache(demo_run, tmp_path, cache_dir,
                                                                            monkeypatch):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    o = [f"ckpt={ckpt}", *FAST]
    evaluate(compose_cfg("evaluate", o, tmp_path / "on-demo", cache_dir), overrides=o)  # on its own data
    expected = predictions(tmp_path / "on-demo")

    root = custom_table(tmp_path / "mine", ckpt)
    fresh = tmp_path / "empty-cache"  # as if the cache folder were deleted: no built LM, no demo set
    o = [f"ckpt={ckpt}", "data=custom", f"data.root={root}", *AS_DEMO, *FAST]

    def no_training(*args, **kwargs):
        raise AssertionError("a tokenizer was trained")

    monkeypatch.setattr(tiny_lm, "train_tokenizer", no_training)
    ev = compose_cfg("evaluate", o, tmp_path / "on-mine", fresh)
    evaluate(ev, overrides=o)
    assert predictions(tmp_path / "on-mine") == expected  # the same model: the same reports for the same images
    assert not (fresh / "demo").exists()  # nothing of the demo data set was needed

    trained = AutoTokenizer.from_pretrained(build.lm_path(compose_cfg("config", SMALL, tmp_path / "x", cache_dir)))
    ck, run = rebuild(ev, o)
    model = load_model(run, ck)
    assert Path(model.tokenizer.name_or_path).is_relative_to(fresh)
    assert model.tokenizer.get_vocab() == trained.get_vocab()
    text = f"the heart is normal. {OTHER_WORDS}"
    assert model.tokenizer(text).input_ids == trained(text).input_ids


def test_rebuilt_lm_is_the_trained_one_weight_for_weight(tmp_path):
    spec = {"vocab_size": 200, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "seed": 3}
    built = tiny_lm.ensure_tiny_lm(tmp_path / "lm", ["no effusion", "heart size normal"] * 20, spec)
    identity = tiny_lm.check_identity(tiny_lm.folder_identity(built, spec), "test")
    again = tiny_lm.ensure_lm_from_identity(tmp_path / "other" / "lm", identity)
    from transformers import AutoModelForCausalLM

    a, b = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (built, again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # a frozen tiny LM is its seed
    ta, tb = (AutoTokenizer.from_pretrained(p) for p in (built, again))
    assert ta.get_vocab() == tb.get_vocab() and ta.pad_token == tb.pad_token == "<pad>"


@pytest.mark.parametrize("field,value,message", [
    ("tokenizer", "x" * (tiny_lm.MAX_TOKENIZER_CHARS + 1), "at most"),
    ("tokenizer", "{not json", "tokenizer does not load"),
    ("seed", True, "seed=True"),
    ("special", {"bos_token": "<nope>"}, "not in its tokenizer"),
    ("config", json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "evil.Model"}}), "auto_map"),
    ("config", json.dumps({"model_type": "no-such-family"}), "not a transformers model type"),
    ("config", "huge", "parameters"),
    ("extra", 1, "expected the keys"),
])
def test_a_damaged_stored_lm_is_one_clear_error(demo_run, tmp_path, field, value, message):
    ck = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    if value == "huge":
        config = json.loads(ck["r2gen"]["lm"]["config"])
        value = json.dumps({**config, "hidden_size": 65536, "num_hidden_layers": 64, "intermediate_size": 65536})
    ck["r2gen"]["lm"][field] = value
    path = tmp_path / "damaged.ckpt"
    torch.save(ck, path)
    with pytest.raises(InputError, match=message) as e:
        read_checkpoint(path)
    assert f"ckpt={path}: its stored LM" in str(e.value) and "\n" not in str(e.value)


def test_a_format_5_checkpoint_keeps_the_prompt_it_was_trained_with(demo_run, tmp_path, cache_dir):
    """Formats 1-5: lm.add_bos=auto prepended BOS whenever the tokenizer named one, and the LMs r2gen built had
    tokenizers that never add it themselves; such a checkpoint reads as lm.add_bos=named, so its prompt is unchanged."""
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    ev = compose_cfg("evaluate", [f"ckpt={ckpt}", *FAST], tmp_path / "now", cache_dir)
    ck, run = rebuild(ev, [f"ckpt={ckpt}", *FAST])
    now = load_model(run, ck)
    assert run.lm.add_bos == "auto" and now.prompt.prefix[0] == now.tokenizer.bos_token_id  # its tokenizer adds it

    old = torch.load(ckpt, map_location="cpu", weights_only=True)
    tokenizer = json.loads(old["r2gen"]["lm"]["tokenizer"])
    tokenizer["post_processor"] = None  # a format 5 build: the tokenizer names <s> but does not add it
    old["r2gen"] = {**old["r2gen"], "format": 5, "lm": {**old["r2gen"]["lm"], "tokenizer": json.dumps(tokenizer)}}
    path = tmp_path / "format5.ckpt"
    torch.save(old, path)
    o = [f"ckpt={path}", *FAST]
    ck, run = rebuild(compose_cfg("evaluate", o, tmp_path / "old", cache_dir), o)
    assert ck["r2gen"]["config"]["lm"]["add_bos"] == ck["hyper_parameters"]["cfg"]["lm"]["add_bos"] == "named"
    model = load_model(run, ck)
    assert model.tokenizer("no").input_ids[:1] != [model.tokenizer.bos_token_id]
    assert model.prompt.prefix == now.prompt.prefix  # the prompt the run was trained with


def test_a_format_4_checkpoint_still_evaluates_on_its_own_data(demo_run, tmp_path, cache_dir):
    ck = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ck["r2gen"] = {k: v for k, v in ck["r2gen"].items() if k != "lm"} | {"format": 4}
    path = tmp_path / "old.ckpt"
    torch.save(ck, path)
    assert read_checkpoint(path)["r2gen"]["lm"] is None
    o = [f"ckpt={path}", "split=val", *FAST]
    assert evaluate(compose_cfg("evaluate", o, tmp_path / "ev", cache_dir), overrides=o)["Bleu_1"] >= 0


def test_a_format_4_checkpoint_on_other_data_is_one_line(demo_run, tmp_path, cache_dir):
    """Without a stored LM the tokenizer comes from the new data's reports: said in one line, not a traceback."""
    ck = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ck["r2gen"] = {k: v for k, v in ck["r2gen"].items() if k != "lm"} | {"format": 4}
    path = tmp_path / "old.ckpt"
    torch.save(ck, path)
    # few words: a vocabulary smaller than the demo's (equal sizes would load, and write garbage: undetectable)
    root = custom_table(tmp_path / "mine", demo_run / "checkpoints" / "last.ckpt", other="zebra.")
    o = [f"ckpt={path}", "data=custom", f"data.root={root}", *AS_DEMO, *FAST]
    with pytest.raises(InputError, match="do not fit this model .*lm_model.*another tokenizer"):
        evaluate(compose_cfg("evaluate", o, tmp_path / "ev", cache_dir), overrides=o)


def test_a_table_with_only_a_test_split_evaluates(demo_run, tmp_path, cache_dir):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    root = custom_table(tmp_path / "mine", ckpt, splits=("test",))
    o = [f"ckpt={ckpt}", "data=custom", f"data.root={root}", *AS_DEMO, *FAST]
    scores = evaluate(compose_cfg("evaluate", o, tmp_path / "ev", cache_dir), overrides=o)
    assert scores["Bleu_1"] >= 0 and len(predictions(tmp_path / "ev")) == 6
    o = [*o, "split=val"]  # the split it scores must be there
    with pytest.raises(InputError, match="split\\(s\\) val have no usable studies .*val needs at least one"):
        evaluate(compose_cfg("evaluate", o, tmp_path / "ev-val", cache_dir), overrides=o)


def test_only_a_test_file_evaluates(demo_run, tmp_path, cache_dir):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    table = custom_table(tmp_path / "mine", ckpt, splits=("test",)) / "studies.jsonl"
    o = [f"ckpt={ckpt}", "data=custom", f"data.root={table.parent}", f"data.test_file={table}", *AS_DEMO, *FAST]
    assert evaluate(compose_cfg("evaluate", o, tmp_path / "ev", cache_dir), overrides=o)["Bleu_1"] >= 0
    provenance = json.loads((tmp_path / "ev" / "provenance.json").read_text())
    assert list(provenance["annotation_sha256"]) == [str(table)]  # what was scored is recorded
    o = [*o, "split=val"]
    with pytest.raises(ConfigError, match="data.val_file not set: give data.val_file, or none of them"):
        evaluate(compose_cfg("evaluate", o, tmp_path / "ev-val", cache_dir), overrides=o)


def test_an_annotation_json_with_only_a_test_split_evaluates(demo_run, tmp_path, cache_dir):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    data = demo_data(ckpt)
    ann = json.loads(Path(data["annotation"]).read_text())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "annotation.json").write_text(json.dumps({"test": ann["test"]}))
    o = [f"ckpt={ckpt}", "data=iu_xray", f"data.root={mine}", f"data.image_dir={data['image_dir']}", *AS_DEMO, *FAST]
    assert evaluate(compose_cfg("evaluate", o, tmp_path / "ev", cache_dir), overrides=o)["Bleu_1"] >= 0
    o = [*o, "split=val"]
    with pytest.raises(InputError, match="no val split; this needs val"):
        evaluate(compose_cfg("evaluate", o, tmp_path / "ev-val", cache_dir), overrides=o)


def test_training_still_needs_all_three_splits(make_cfg, demo_run, tmp_path):
    from r2gen.train import train

    root = custom_table(tmp_path / "mine", demo_run / "checkpoints" / "last.ckpt", splits=("test",))
    with pytest.raises(InputError, match="train, val have no usable studies"):
        train(make_cfg("data=custom", f"data.root={root}", *AS_DEMO, *(o for o in SMALL if "data.demo" not in o),
                       small=False))


@pytest.mark.slow
def test_evaluate_cli_on_other_data_with_the_cache_deleted(demo_run, tmp_path):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    root = custom_table(tmp_path / "mine", ckpt, splits=("test",))
    r = run_cli("evaluate.py", f"ckpt={ckpt}", "data=custom", f"data.root={root}", *AS_DEMO, *FAST,
                f"hydra.run.dir={tmp_path / 'ev'}", cache_dir=tmp_path / "empty-cache")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(predictions(tmp_path / "ev")) == 6
