"""ChatGLM3 without remote code (r2gen.convert): a tiny checkpoint made with ChatGLM3's own code is converted to
transformers' native GLM and must give what the original gave (token ids, decoded text, chat ids, logits, greedy
generations); the source is only read and its .py files never run; bad inputs fail in one line; and the
converted model trains, beam-searches, checkpoints, evaluates and verifies through r2gen (lm=chatglm3-6b)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from r2gen import build
from r2gen.convert import MARKER, convert, detect, ensure_converted
from r2gen.convert.chatglm3 import glm_config, source_shapes, tensor_mapper
from r2gen.errors import ConfigError, InputError, MissingFileError, UnsafeWriteError

from .helpers.cli import cli_env
from .helpers.config import SMALL_NO_BUILD, compose_cfg
from .helpers.files import snapshot
from .helpers.models import batch, train_steps
from .helpers.paths import ROOT

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "chatglm3"
SOURCE = FIXTURE / "model"
pytestmark = pytest.mark.skipif(not SOURCE.is_dir(), reason=f"the ChatGLM3 fixture is absent ({FIXTURE})")
# lm=chatglm3-6b on the tiny fixture, in float32 (the reference was computed in float32), LoRA on q/k/v
CHATGLM3 = ["lm=chatglm3-6b", f"lm.name_or_path={SOURCE}", "lm.dtype=float32", "lm.lora.r=4", *SMALL_NO_BUILD]


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert("chatglm3", SOURCE, tmp_path_factory.mktemp("convert") / "glm")


@pytest.fixture(scope="module")
def tokenizer(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted, trust_remote_code=False)


@pytest.fixture(scope="module")
def model(converted):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(converted, trust_remote_code=False).eval()


def copy_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src)
    for p in [src, *src.iterdir()]:  # the fixture is read-only; its copy is for the test to change
        p.chmod(0o755 if p.is_dir() else 0o644)
    return src


def leftovers(root: Path) -> list[str]:
    """What a failed conversion left in a cache or output parent folder (the lock file is expected)."""
    return sorted(p.name for p in root.rglob("*") if not p.name.endswith(".lock")) if root.exists() else []


# --- the converted model against the original's outputs -----------------------------------------------------
def test_tokenizer_ids_decoding_and_chat_match_the_original(tokenizer, ref):
    for e in ref["encode"]:
        assert tokenizer(e["text"]).input_ids == e["ids"], e["text"]  # [gMASK] sop prepended
        assert tokenizer(e["text"], add_special_tokens=False).input_ids == e["ids_no_special"], e["text"]
    for d in ref["decode"]:
        assert tokenizer.decode(d["ids"]) == d["text"]
    for c in ref["chat"]:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": c["query"]}], add_generation_prompt=True,
                                            tokenize=True)
        ids = enc if isinstance(enc, list) else enc["input_ids"]  # transformers 5 returns a BatchEncoding
        assert ids == c["ids"], c["query"]
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in ref["special_tokens"]} == ref["special_tokens"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (None, 2, 0)
    # `sop` / `eop` are ChatGLM3 control tokens, yet also letters inside words: only whole words become them
    ids = tokenizer("people isoproterenol sopping", add_special_tokens=False).input_ids
    assert not set(ids) & set(ref["special_tokens"].values())
    assert tokenizer.decode(ids) == "people isoproterenol sopping"


def test_logits_match_the_original(model, ref):
    li = ref["logits_inputs"]
    ids, mask = torch.tensor(li["input_ids"]), torch.tensor(li["attention_mask"])
    positions = torch.arange(ids.shape[1]).expand_as(ids)  # the original numbered pads too: 0..L-1 on every row
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    want = np.load(FIXTURE / "reference_logits.npy")
    assert logits.shape == tuple(li["shape"]) == want.shape
    diff = np.abs(logits.numpy() - want)[mask.numpy().astype(bool)]
    assert diff.max() < 1e-4, diff.max()


def test_greedy_generations_match_the_original(model, ref):
    for g in ref["generate"]:
        out = model.generate(input_ids=torch.tensor([g["input_ids"]]), max_new_tokens=12, do_sample=False,
                             num_beams=1, eos_token_id=[2], pad_token_id=0)
        assert out[0].tolist() == g["output_ids"]


def test_converted_folder_is_plain_transformers(converted, model):
    from transformers import AutoConfig, GenerationConfig

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", MARKER} <= names
    assert not any(n.endswith(".py") for n in names)
    cfg = AutoConfig.from_pretrained(converted)
    assert cfg.model_type == "glm" and not getattr(cfg, "auto_map", None) and type(model).__name__ == "GlmForCausalLM"
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.5 and cfg.rope_parameters["rope_theta"] == 10000.0
    gen = GenerationConfig.from_pretrained(converted)
    assert gen.eos_token_id == [2, 706, 708] and gen.pad_token_id == 0  # </s>, and a new <|user|> / <|observation|> turn
    assert detect(SOURCE) == "chatglm3" and detect(converted) is None


def test_6b_config_maps_to_the_native_shapes():
    from transformers import GlmForCausalLM

    config = json.loads((FIXTURE / "chatglm3-6b-config.json").read_text())
    glm = glm_config(config)
    assert (glm.num_hidden_layers, glm.hidden_size, glm.num_attention_heads, glm.num_key_value_heads, glm.head_dim,
            glm.intermediate_size, glm.vocab_size, glm.max_position_embeddings) == \
        (28, 4096, 32, 2, 128, 13696, 65024, 8192)
    assert glm.dtype == "float16" and glm.rope_parameters["rope_theta"] == 10000.0
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in GlmForCausalLM(glm).state_dict().items()}
    mapper, got = tensor_mapper(config), {}
    for name, shape in source_shapes(config).items():
        if not name.endswith("inv_freq"):  # checked against the rope base on real values, then dropped
            got.update({k: tuple(v.shape) for k, v in mapper(name, torch.empty(shape, device="meta"))})
    assert got == want  # every native parameter, nothing else, each with its shape
    assert got["model.layers.0.self_attn.k_proj.weight"] == (256, 4096)  # 2 KV groups x 128
    assert 6.2e9 < sum(np.prod(s) for s in want.values()) < 6.3e9  # ChatGLM3-6B: 6.24 B parameters


# --- the source is the user's ----------------------------------------------------------------------------------
def test_source_untouched_and_second_call_reuses_the_folder(tmp_path):
    before = snapshot(SOURCE)
    first = ensure_converted("chatglm3", str(SOURCE), tmp_path / "cache")
    assert snapshot(SOURCE) == before
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    again = ensure_converted("chatglm3", str(SOURCE), tmp_path / "cache")
    assert again == first and {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == stamps  # not rewritten
    assert first.parent == tmp_path / "cache" / "converted" and first.name.startswith("chatglm3-")
    assert leftovers(tmp_path / "cache" / "converted") == sorted([first.name, *stamps])  # no temporary folder


def test_changed_source_converts_anew(tmp_path):
    src = copy_source(tmp_path)
    first = ensure_converted("chatglm3", src, tmp_path / "cache")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "rope_ratio": 1}))  # same meaning, different bytes
    assert ensure_converted("chatglm3", src, tmp_path / "cache") != first


def test_python_files_in_the_source_never_run(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = copy_source(tmp_path)
    marker = tmp_path / "IMPORTED"
    for name in ("modeling_chatglm.py", "configuration_chatglm.py", "tokenization_chatglm.py", "__init__.py"):
        (src / name).write_text(f"open({str(marker)!r}, 'a').write({name!r})\nraise SystemExit('remote code ran')\n")
    before = snapshot(src)
    out = ensure_converted("chatglm3", src, tmp_path / "cache")
    AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert not marker.exists() and snapshot(src) == before
    assert not list(out.glob("*.py"))


@pytest.mark.parametrize("layout", ["bin-shards", "safetensors-shards", "bin", "bfloat16"])
def test_sharded_and_bin_checkpoints_convert_alike(tmp_path, converted, layout):
    from transformers import AutoModelForCausalLM

    src = copy_source(tmp_path)
    state = load_file(src / "model.safetensors")
    dtype = torch.bfloat16 if layout == "bfloat16" else torch.float32
    if layout == "bfloat16":  # kept as it is: the converted config says bfloat16 and the tensors are the same
        state = {k: v.to(dtype) for k, v in state.items()}
        _config(torch_dtype="bfloat16")(src, tmp_path)
    (src / "model.safetensors").unlink()
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2:]] if layout != "bin" else [names]
    ext, stem = (".safetensors", "model") if layout == "safetensors-shards" else (".bin", "pytorch_model")
    weight_map = {}
    for i, part in enumerate(shards):
        file = f"{stem}{ext}" if len(shards) == 1 else f"{stem}-{i + 1:05d}-of-{len(shards):05d}{ext}"
        tensors = {k: state[k] for k in part}
        save_file(tensors, src / file) if ext == ".safetensors" else torch.save(tensors, src / file)
        weight_map.update(dict.fromkeys(part, file))
    if len(shards) > 1:
        (src / f"{stem}{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = convert("chatglm3", src, tmp_path / "out")
    assert (out / "model.safetensors.index.json").is_file() == (len(shards) > 1)
    a = AutoModelForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    b = AutoModelForCausalLM.from_pretrained(converted).state_dict()
    assert a.keys() == b.keys() and all(a[k].dtype == dtype and torch.equal(a[k], b[k].to(dtype)) for k in a)


# --- bad inputs: one line naming the file and the fix -------------------------------------------------------------
def _drop(src: Path, name: str) -> None:
    (src / name).unlink()


def _config(**changes):
    def edit(src: Path, _):
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({k: v for k, v in {**cfg, **changes}.items() if v != "DROP"}))
    return edit


def _weights(edit):
    def change(src: Path, _):
        state = load_file(src / "model.safetensors")
        edit(state)
        save_file(state, src / "model.safetensors")
    return change


BAD = {
    "no config": (lambda src, _: _drop(src, "config.json"), MissingFileError, r"config\.json: missing"),
    "no tokenizer": (lambda src, _: _drop(src, "tokenizer.model"), MissingFileError, r"tokenizer\.model: missing"),
    "no weights": (lambda src, _: _drop(src, "model.safetensors"), MissingFileError, "no weights"),
    "llama config": (_config(model_type="llama", num_layers="DROP"), InputError, "not a ChatGLM3 config"),
    "native config": (_config(model_type="glm"), InputError, "already native.*drop lm.convert"),
    "layernorm": (_config(rmsnorm=False), InputError, "rmsnorm=False"),
    "p-tuning": (_config(pre_seq_len=128), InputError, "pre_seq_len=128"),
    "wrong size": (_config(ffn_hidden_size=200), InputError, "shape .* config.json implies"),
    "missing tensor": (_weights(lambda s: s.pop("transformer.output_layer.weight")), InputError,
                       "lack transformer.output_layer.weight"),
    "extra tensor": (_weights(lambda s: s.update({"transformer.prefix_encoder.embedding.weight": torch.zeros(2, 2)})),
                     InputError, "unexpected tensor transformer.prefix_encoder"),
    "rope base": (_config(rope_ratio=50), InputError, "inv_freq does not match the rope base"),
    "foreign tokenizer": (lambda src, _: (src / "tokenizer.model").write_bytes(b"not a model"), InputError,
                          "not a SentencePiece model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_source_fails_in_one_line_and_writes_nothing(tmp_path, case):
    edit, error, message = BAD[case]
    src = copy_source(tmp_path)
    edit(src, tmp_path)
    with pytest.raises(error, match=message) as e:
        ensure_converted("chatglm3", src, tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert leftovers(tmp_path / "cache") == ["converted"]  # the temporary folder went with the failure


def test_bad_source_names_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="lm.convert='chatglm9'.*choose chatglm3"):
        ensure_converted("chatglm9", SOURCE, tmp_path)
    with pytest.raises(MissingFileError, match="lm.name_or_path=./no/such/folder: no such folder"):
        ensure_converted("chatglm3", "./no/such/folder", tmp_path)
    # a hub id offline (conftest sets HF_HUB_OFFLINE) that the local cache lacks: the fix is named
    with pytest.raises(MissingFileError, match=r"lm.name_or_path=r2gen-test/absent-model: .*hf download") as e:
        ensure_converted("chatglm3", "r2gen-test/absent-model", tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "converted").exists()


def test_convert_refuses_a_folder_that_is_not_empty(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UnsafeWriteError, match="not an empty folder"):
        convert("chatglm3", SOURCE, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    assert convert("chatglm3", SOURCE, out) == out and (out / "config.json").is_file()  # an empty one is fine


@pytest.mark.slow
def test_cli_writes_a_loadable_folder_and_refuses_a_full_one(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "r2gen.convert", *args], cwd=ROOT, env=cli_env(tmp_path),
                              capture_output=True, text=True, timeout=300)

    r = cli("--help")
    assert r.returncode == 0 and "chatglm3" in r.stdout
    out = tmp_path / "glm"
    r = cli("chatglm3", str(SOURCE), str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"wrote {out}" in r.stdout
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "glm"
    assert AutoTokenizer.from_pretrained(out)("The heart").input_ids[:2] == [701, 703]
    r = cli("chatglm3", str(SOURCE), str(out))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and err[0].startswith(f"error: {out}: exists and is not an empty folder"), r.stderr


# --- through r2gen: lm=chatglm3-6b ----------------------------------------------------------------------------------
def test_prompt_is_chatglm3_chat_input(make_cfg):
    cfg = make_cfg(*CHATGLM3, "align=shallow", small=False)  # frozen encoder: LoRA and the projection learn
    m = build.model(cfg)  # as train() and evaluate() build it: from the converted folder
    tok = m.tokenizer
    assert type(m.lm_model.get_base_model()).__name__ == "GlmForCausalLM"
    # [gMASK] sop <|user|> encode("\n"), then the content's own dummy-prefix space before the image
    assert m.prompt.prefix == [701, 703, 706, *tok("\n", add_special_tokens=False).input_ids, 632]
    assert m.prompt.suffix[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.decode(m.prompt.suffix).startswith("Generate a comprehensive")
    # a report ends on </s>, and generation also stops where the original chat model's turn would end
    assert m.gen_config.eos_token_id == [tok.eos_token_id, *tok.convert_tokens_to_ids(["<|user|>", "<|observation|>"])]
    trainable = [n for n, p in m.lm_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {t for n in trainable for t in ("q_proj", "k_proj", "v_proj", "o_proj") if f".{t}." in n} == \
        {"q_proj", "k_proj", "v_proj"}  # the yaml's targets: the original's fused query_key_value

    losses = train_steps(m, batch(m), steps=4, lr=3e-3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_verify_passes(make_cfg, capsys):
    from r2gen.verify import run

    report = run(make_cfg(*CHATGLM3, small=False))
    assert report["model_type"] == "glm" and report["class"] == "PeftModelForCausalLM"  # LoRA on the native GLM
    assert report["bos"] == "none" and report["eos"].startswith("2 ") and report["pad"].startswith("0 ")
    assert "num_beams=2" in report["generate"]
    assert "ok: lm.name_or_path=" in capsys.readouterr().out


def test_4bit_loads_the_converted_model_and_trains(make_cfg):
    cfg = make_cfg(*CHATGLM3, "quant=4bit", "align=shallow", small=False)
    m = build.model(cfg)
    assert any(type(mod).__name__ == "Linear4bit" for mod in m.lm_model.modules())
    losses = train_steps(m, batch(m), steps=2, lr=1e-2)
    assert all(np.isfinite(losses)), losses


@pytest.mark.slow
def test_trains_checkpoints_and_evaluates_end_to_end(tmp_path, cache_dir):
    import csv

    from r2gen.evaluate import evaluate
    from r2gen.train import train

    out = tmp_path / "run"
    cfg = compose_cfg("config", CHATGLM3 + ["trainer.max_epochs=3", "generate.max_new_tokens=4"], out, cache_dir)
    assert cfg.generate.num_beams == 2  # batched beam search over left-padded inputs_embeds
    train(cfg)
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 6 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    ckpt = out / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (out / "test" / "metrics.json").is_file()
    converted = list((cache_dir / "converted").glob("chatglm3-*"))
    assert len([p for p in converted if p.is_dir()]) == 1  # one conversion, reused by every rebuild

    ev = tmp_path / "eval"
    scores = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}"], ev, cache_dir))
    assert np.isfinite(scores["Bleu_4"])
    assert json.loads((ev / "metrics.json").read_text())["generate"]["num_beams"] == 2


def test_hub_id_is_read_from_the_local_cache_offline(tmp_path, monkeypatch, converted):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--r2gen-test--chatglm3-tiny"
    shutil.copytree(SOURCE, repo / "snapshots" / commit)
    marker = tmp_path / "IMPORTED"
    (repo / "snapshots" / commit / "modeling_chatglm.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # conftest keeps the hub offline
    out = ensure_converted("chatglm3", "r2gen-test/chatglm3-tiny", tmp_path / "cache")
    assert (out / "model.safetensors").read_bytes() == (converted / "model.safetensors").read_bytes()
    assert not marker.exists()
