"""InternLM2 without remote code (r2gen.convert.internlm2): a tiny checkpoint made with InternLM2's own code is
converted to transformers' native LLaMA and must give what the original gave (token ids, decoded text, chat ids,
logits, greedy generations); the source is only read; bad inputs fail in one line; a folder loaded without
`lm.convert` says which key converts it; and the converted model trains, generates and verifies through r2gen
(lm=internlm2-7b)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from r2gen import build
from r2gen.convert import convert, detect, ensure_converted
from r2gen.convert.__main__ import main as convert_cli
from r2gen.convert.internlm2 import llama_config, settings, source_shapes, tensor_mapper
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.models.lm import lm_kind, load_tokenizer

from .helpers.cli import run_cli
from .helpers.config import SMALL_NO_BUILD
from .helpers.files import snapshot
from .helpers.models import batch, train_steps

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "internlm2"
SOURCE = FIXTURE / "model"
pytestmark = pytest.mark.skipif(not SOURCE.is_dir(), reason=f"the InternLM2 fixture is absent ({FIXTURE})")
# lm=internlm2-7b on the tiny fixture, in float32 (the reference was computed in float32), LoRA on q/v
INTERNLM2 = ["lm=internlm2-7b", f"lm.name_or_path={SOURCE}", "lm.dtype=float32", "lm.lora.r=4", *SMALL_NO_BUILD]
# internlm/internlm2-7b's published config.json, the keys that decide the shapes and the rope
CONFIG_7B = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
             "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 92544, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
             "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0},
             "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert("internlm2", SOURCE, tmp_path_factory.mktemp("convert") / "llama")


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


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in {**data, **changes}.items() if v != "DROP"}))


def logits(model, ref, positions: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ours, the original's, attention mask) on the reference's left-padded batch; positions 0..L-1 on every row
    (`arange`: pads numbered too) or cumsum(mask) - 1 (`maskpos`: what generate uses)."""
    li = ref["logits_inputs"]
    ids, mask = torch.tensor(li["input_ids"]), torch.tensor(li["attention_mask"])
    pos = torch.arange(ids.shape[1]).expand_as(ids) if positions == "arange" else torch.tensor(li["maskpos_position_ids"])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.numpy()
    want = np.load(FIXTURE / ("reference_logits.npy" if positions == "arange" else "reference_logits_maskpos.npy"))
    return out, want, mask.numpy().astype(bool)


# --- the converted model against the original's outputs -----------------------------------------------------
def test_tokenizer_ids_decoding_and_chat_match_the_original(tokenizer, ref):
    for e in ref["encode"]:
        assert e["fast_equals_slow"]  # InternLM2's two tokenizer classes agree on every id
        ids, plain = tokenizer(e["text"]).input_ids, tokenizer(e["text"], add_special_tokens=False).input_ids
        assert ids == e["ids_slow"] and ids[0] == tokenizer.bos_token_id, e["text"]  # <s> prepended
        assert plain == e["ids_no_special_slow"], e["text"]
        # decoding: its fast class's text (the slow class also writes a space before a special token not at the
        # start); with special tokens dropped, as reports are decoded, both classes agree
        assert tokenizer.decode(plain) == e["decode_fast"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == e["decode_skip_special_slow"] == \
            e["decode_skip_special_fast"]
    for c in ref["chat"]:
        messages = [{"role": "user", "content": c["query"]}]
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = enc if isinstance(enc, list) else enc["input_ids"]  # transformers 5 returns a BatchEncoding
        assert ids == c["ids"] == c["ids_slow"], c["query"]
        assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == c["text"]
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in ref["special_ids"]} == ref["special_ids"]
    assert set(ref["special_ids"]) <= set(tokenizer.all_special_tokens)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == \
        (1, 2, 2, 0)  # InternLM2 pads with </s>
    assert len(tokenizer) == ref["sp_vocab_size"]


@pytest.mark.parametrize("positions", ["arange", "maskpos"])
def test_logits_match_the_original(model, ref, positions):
    out, want, mask = logits(model, ref, positions)
    assert out.shape == tuple(ref["logits_inputs"]["shape"]) == want.shape
    diff = np.abs(out - want)[mask]  # padded positions are not compared
    assert diff.max() < 1e-4, diff.max()


def test_greedy_generations_match_the_original(model, ref):
    for g in ref["generate"]:  # the converted generation config as it is: stops on </s> and <|im_end|>
        out = model.generate(input_ids=torch.tensor([g["input_ids"]]), max_new_tokens=12, do_sample=False)
        assert out[0].tolist() == g["output_ids"]
    g = ref["generate_left_padded_batch"]
    out = model.generate(input_ids=torch.tensor(g["input_ids"]), attention_mask=torch.tensor(g["attention_mask"]),
                         max_new_tokens=12, do_sample=False)
    assert out.tolist() == g["output_ids"]


def test_converted_folder_is_plain_transformers(converted, model):
    from transformers import AutoConfig

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    assert not any(n.endswith(".py") for n in names)
    cfg = AutoConfig.from_pretrained(converted)
    assert cfg.model_type == "llama" and not getattr(cfg, "auto_map", None) and type(model).__name__ == "LlamaForCausalLM"
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 1e6} and not cfg.attention_bias
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings) == (2, 16, False)
    gen = json.loads((converted / "generation_config.json").read_text())
    # </s>, and <|im_end|> where InternLM2's chat() stops; no decoding settings of ours
    assert {k: v for k, v in gen.items() if k != "transformers_version"} == {"eos_token_id": [2, 4], "pad_token_id": 2}
    assert detect(SOURCE) == "internlm2" and detect(converted) is None


def test_7b_config_maps_to_the_native_shapes(tmp_path):
    from transformers import LlamaForCausalLM

    c = settings(CONFIG_7B, tmp_path / "config.json")
    llama = llama_config(c)
    assert (llama.num_hidden_layers, llama.hidden_size, llama.num_attention_heads, llama.num_key_value_heads,
            llama.head_dim, llama.intermediate_size, llama.vocab_size) == (32, 4096, 32, 8, 128, 14336, 92544)
    # dynamic NTK: LLaMA's dynamic rope, the plain rope up to 32768 tokens
    assert llama.rope_parameters == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    assert llama.dtype == "bfloat16"
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in LlamaForCausalLM(llama).state_dict().items()}
    mapper, got = tensor_mapper(c), {}
    for name, shape in source_shapes(c).items():
        got.update({k: tuple(v.shape) for k, v in mapper(name, torch.empty(shape, device="meta"))})
    assert got == want  # every native parameter, nothing else, each with its shape
    assert got["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)  # 8 KV heads x 128
    assert 7.7e9 < sum(np.prod(s) for s in want.values()) < 7.8e9  # InternLM2-7B: 7.74 B parameters


def test_wqkv_rows_are_per_kv_head_queries_then_key_then_value():
    """Fused rows built the documented way (per KV head: its query heads, its key head, its value head) come back
    as LLaMA's q/k/v, query head i attending with KV head i // (heads / KV heads)."""
    heads, groups, d, h = 4, 2, 3, 5
    c = {"num_attention_heads": heads, "num_key_value_heads": groups, "hidden_size": heads * d}
    q, k, v = torch.randn(heads, d, h), torch.randn(groups, d, h), torch.randn(groups, d, h)
    per = heads // groups
    fused = torch.cat([torch.cat([q[g * per:(g + 1) * per].reshape(-1, h), k[g], v[g]]) for g in range(groups)])
    out = dict(tensor_mapper(c)("model.layers.0.attention.wqkv.weight", fused))
    assert torch.equal(out["model.layers.0.self_attn.q_proj.weight"], q.reshape(-1, h))
    assert torch.equal(out["model.layers.0.self_attn.k_proj.weight"], k.reshape(-1, h))
    assert torch.equal(out["model.layers.0.self_attn.v_proj.weight"], v.reshape(-1, h))
    bias = dict(tensor_mapper(c)("model.layers.0.attention.wqkv.bias", fused[:, 0]))  # a bias splits alike
    assert torch.equal(bias["model.layers.0.self_attn.k_proj.bias"], k[:, :, 0].reshape(-1))


@pytest.mark.parametrize("variant", ["dynamic", "bias", "tied"])
def test_config_variants_convert(tmp_path, converted, model, ref, variant):
    """rope_scaling dynamic: within max_position_embeddings the plain rope, so the original's logits; bias=true:
    wqkv/wo biases land on q/k/v/o_proj; tied embeddings: no output.weight, lm_head is the embeddings."""
    from transformers import AutoModelForCausalLM

    src = copy_source(tmp_path)
    state = load_file(src / "model.safetensors")
    if variant == "dynamic":
        edit_json(src / "config.json", rope_scaling={"type": "dynamic", "factor": 2.0})
    elif variant == "bias":
        edit_json(src / "config.json", bias=True)
        for i in range(2):
            state[f"model.layers.{i}.attention.wqkv.bias"] = torch.randn(4 * 16 + 2 * 2 * 16)
            state[f"model.layers.{i}.attention.wo.bias"] = torch.randn(64)
    else:
        edit_json(src / "config.json", tie_word_embeddings=True)
        del state["output.weight"]
    save_file(state, src / "model.safetensors")
    m = AutoModelForCausalLM.from_pretrained(convert("internlm2", src, tmp_path / "out")).eval()
    if variant == "dynamic":
        assert m.config.rope_parameters["rope_type"] == "dynamic"
        out, want, mask = logits(m, ref, "maskpos")
        assert np.abs(out - want)[mask].max() < 1e-4
    elif variant == "bias":
        assert m.config.attention_bias
        attn = m.model.layers[1].self_attn
        assert torch.equal(attn.o_proj.bias, state["model.layers.1.attention.wo.bias"])
        assert torch.equal(torch.cat([attn.q_proj.bias[:32], attn.k_proj.bias[:16], attn.v_proj.bias[:16]]),
                           state["model.layers.1.attention.wqkv.bias"][:64])  # KV head 0's block
        assert torch.equal(attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight)
    else:
        assert m.config.tie_word_embeddings and m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


# --- the source is the user's; the command line ------------------------------------------------------------------
def test_source_untouched_and_second_call_reuses_the_folder(tmp_path):
    before = snapshot(SOURCE)
    first = ensure_converted("internlm2", str(SOURCE), tmp_path / "cache")
    assert snapshot(SOURCE) == before and first.name.startswith("internlm2-")
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    again = ensure_converted("internlm2", str(SOURCE), tmp_path / "cache")
    assert again == first and {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == stamps  # not rewritten


def test_python_m_r2gen_convert_internlm2(tmp_path, capsys, converted):
    out = tmp_path / "llama"
    convert_cli(["internlm2", str(SOURCE), str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() == (converted / "model.safetensors").read_bytes()


# --- bad inputs: one line naming the file and the fix -------------------------------------------------------------
def _config(**changes):
    return lambda src: edit_json(src / "config.json", **changes)


def _weights(edit):
    def change(src: Path):
        state = load_file(src / "model.safetensors")
        edit(state)
        save_file(state, src / "model.safetensors")
    return change


BAD = {
    "no config": (lambda src: (src / "config.json").unlink(), MissingFileError, r"config\.json: missing"),
    "no tokenizer": (lambda src: (src / "tokenizer.model").unlink(), MissingFileError, r"tokenizer\.model: missing"),
    "no weights": (lambda src: (src / "model.safetensors").unlink(), MissingFileError, "no weights"),
    "llama config": (_config(model_type="llama", architectures=["LlamaForCausalLM"]), InputError,
                     "not an InternLM2 config"),
    "yarn": (_config(rope_scaling={"type": "yarn", "factor": 4.0}), InputError, "rope_scaling=.*yarn.*linear and dynamic"),
    "factor": (_config(rope_scaling={"type": "linear", "factor": 0.5}), InputError, "factor=0.5 must be a number >= 1"),
    "heads": (_config(num_key_value_heads=3), InputError, "num_key_value_heads=3 must divide"),
    "wrong size": (_config(intermediate_size=200), InputError, "shape .* config.json implies"),
    "missing tensor": (_weights(lambda s: s.pop("model.layers.1.ffn_norm.weight")), InputError,
                       "lack model.layers.1.ffn_norm.weight"),
    "extra tensor": (_weights(lambda s: s.update({"model.layers.0.attention.lora_A": torch.zeros(2, 2)})),
                     InputError, "unexpected tensor model.layers.0.attention.lora_A"),
    "tied with output": (_config(tie_word_embeddings=True), InputError, "holds output.weight, yet .*tie_word_embeddings"),
    "foreign tokenizer": (lambda src: (src / "tokenizer.model").write_bytes(b"not a model"), InputError,
                          "not a SentencePiece model"),
    "other tokenizer config": (lambda src: edit_json(src / "tokenizer_config.json", added_tokens_decoder={
        "3": {"content": "<|im_end|>", "special": True}}), InputError, "'<\\|im_end\\|>' has id 3, but tokenizer.model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_source_fails_in_one_line_and_writes_nothing(tmp_path, case):
    edit, error, message = BAD[case]
    src = copy_source(tmp_path)
    edit(src)
    with pytest.raises(error, match=message) as e:
        ensure_converted("internlm2", src, tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert [p.name for p in (tmp_path / "cache" / "converted").iterdir() if not p.name.endswith(".lock")] == []


# --- through r2gen: lm=internlm2-7b --------------------------------------------------------------------------------
def test_trains_and_generates_through_r2gen(make_cfg):
    cfg = make_cfg(*INTERNLM2, "align=shallow", small=False)  # frozen encoder: LoRA and the projection learn
    assert cfg.lm.trust_remote_code is False
    m = build.model(cfg)  # as train() and evaluate() build it: from the converted folder
    tok = m.tokenizer
    assert type(m.lm_model.get_base_model()).__name__ == "LlamaForCausalLM"
    assert m.prompt.prefix[0] == tok.bos_token_id == 1 and tok.pad_token_id == 2  # its own pad </s>, kept
    assert m.gen_config.eos_token_id == [2, tok.convert_tokens_to_ids("<|im_end|>")]
    trainable = [n for n, p in m.lm_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {t for n in trainable for t in ("q_proj", "k_proj", "v_proj", "o_proj") if f".{t}." in n} == \
        {"q_proj", "v_proj"}  # the yaml's targets, split out of the original's fused wqkv

    b = batch(m)
    losses = train_steps(m, b, steps=4, lr=3e-3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    m.eval()
    out = m.generate(b["images"], b["view_mask"])  # beam search over left-padded inputs_embeds
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_verify_passes(make_cfg, capsys):
    from r2gen.verify import run

    report = run(make_cfg(*INTERNLM2, small=False))
    assert report["model_type"] == "llama" and report["class"] == "PeftModelForCausalLM"  # LoRA on the native LLaMA
    assert report["bos"].startswith("1 ") and report["eos"].startswith("2 ") and report["pad"].startswith("2 ")
    assert "ok: lm.name_or_path=" in capsys.readouterr().out


def test_folder_without_lm_convert_names_the_conversion(make_cfg):
    fix = (f"lm.name_or_path={SOURCE} is an InternLM2ForCausalLM checkpoint (model_type 'internlm2'), whose own code "
           f"does not run under transformers 5: add lm.convert=internlm2 (or use lm=internlm2-7b), or python -m "
           f"r2gen.convert internlm2 {SOURCE} <out>")
    for load in (lm_kind, load_tokenizer):  # not "trust_remote_code" nor "tiktoken is required"
        with pytest.raises(ConfigError) as e:
            load(str(SOURCE))
        assert str(e.value) == fix
    with pytest.raises(ConfigError, match="add lm.convert=internlm2"):
        build.model(make_cfg(*INTERNLM2, "lm.convert=null", small=False))


@pytest.mark.slow
def test_train_py_then_evaluate_py(tmp_path, cache_dir):
    run = tmp_path / "run"
    r = run_cli("train.py", *INTERNLM2, "generate.max_new_tokens=4", f"hydra.run.dir={run}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (run / "test" / "metrics.json").is_file()
    assert len([p for p in (cache_dir / "converted").glob("internlm2-*") if p.is_dir()]) == 1
    ev = tmp_path / "eval"
    r = run_cli("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={ev}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.isfinite(json.loads((ev / "metrics.json").read_text())["Bleu_4"])
