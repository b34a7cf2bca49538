"""Baichuan2-7B without remote code (r2gen.convert.baichuan2): a tiny checkpoint made with Baichuan2's own code is
converted to transformers' native LLaMA and must give what the original gave (token ids, pieces, decoded text, chat
ids, the normalised output layer, logits, greedy generations); the source is only read; Baichuan2-13B (ALiBi) and bad
inputs fail in one line; and the converted model trains, generates and verifies through r2gen (lm=baichuan2-7b),
with no BOS prepended, as its tokenizer prepends none."""

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
from r2gen.convert.baichuan2 import llama_config, matches, settings, source_shapes, tensor_mapper
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.models.prompt import Prompt

from .helpers.cli import run_cli
from .helpers.config import SMALL_NO_BUILD
from .helpers.files import snapshot
from .helpers.models import batch, train_steps

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "baichuan2"
SOURCE = FIXTURE / "model"
pytestmark = pytest.mark.skipif(not SOURCE.is_dir(), reason=f"the Baichuan2 fixture is absent ({FIXTURE})")
# lm=baichuan2-7b on the tiny fixture, in float32 (the reference was computed in float32), LoRA on q/v
BAICHUAN2 = ["lm=baichuan2-7b", f"lm.name_or_path={SOURCE}", "lm.dtype=float32", "lm.lora.r=4", *SMALL_NO_BUILD]
# baichuan-inc/Baichuan2-7B-Base's published config.json, the keys that decide the shapes
CONFIG_7B = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 125696,
             "max_position_embeddings": 4096, "model_max_length": 4096, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16", "z_loss_weight": 0}
# Baichuan2-13B's: ALiBi, so model_max_length but no max_position_embeddings
CONFIG_13B = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 5120,
              "intermediate_size": 13696, "num_hidden_layers": 40, "num_attention_heads": 40, "vocab_size": 125696,
              "model_max_length": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    before = snapshot(SOURCE)
    out = convert("baichuan2", SOURCE, tmp_path_factory.mktemp("convert") / "llama")
    assert snapshot(SOURCE) == before  # the source is only read
    return out


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


# --- the converted model against the original's outputs -----------------------------------------------------
def test_tokenizer_ids_pieces_decoding_and_chat_match_the_original(tokenizer, ref):
    for e in ref["encode"]:
        ids = tokenizer(e["text"]).input_ids
        assert ids == e["ids"] == tokenizer(e["text"], add_special_tokens=False).input_ids == e["ids_no_special"]
        assert tokenizer.convert_ids_to_tokens(ids) == e["tokens"], e["text"]
        assert tokenizer.decode(ids) == e["decode"] == e["text"]
    for c in ref["chat"]:
        enc = tokenizer.apply_chat_template(c["messages"], add_generation_prompt=True, tokenize=True)
        assert (enc if isinstance(enc, list) else enc["input_ids"]) == c["ids"], c["messages"]
    special = ref["special_ids"]
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [special[t] for t in
                                                                                      ("<unk>", "<s>", "</s>")]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == \
        (0, 1, 2, 0)
    assert tokenizer("x").input_ids[:1] != [1]  # it names <s>, but starts no text with it: the original's add_bos_token=false


def test_lm_head_holds_the_rows_the_original_uses(model, ref):
    want = np.load(FIXTURE / "reference_lm_head_normalized.npy")
    got = model.lm_head.weight.detach().numpy()
    assert np.abs(got - want).max() < 1e-7
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    saved = load_file(SOURCE / "model.safetensors")["lm_head.weight"].norm(dim=1)
    assert [round(saved.min().item(), 4), round(saved.max().item(), 4)] == \
        [round(x, 4) for x in ref["lm_head"]["saved_row_norms_min_max"]]  # the saved rows are not unit-norm


@pytest.mark.parametrize("positions", ["0..L-1", "cumsum(mask)-1"])
def test_logits_of_a_left_padded_batch_match_the_original(model, ref, positions):
    li = ref["logits_inputs"]
    ids, mask = torch.tensor(li["input_ids"]), torch.tensor(li["attention_mask"])
    pos = torch.arange(ids.shape[1]).expand_as(ids) if positions == "0..L-1" else torch.tensor(li["maskpos_position_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.numpy()
    want = np.load(FIXTURE / ("reference_logits.npy" if positions == "0..L-1" else "reference_logits_maskpos.npy"))
    assert logits.shape == tuple(li["shape"]) == want.shape
    diff = np.abs(logits - want)[mask.numpy().astype(bool)]  # a pad row's logits are anyone's
    assert diff.max() < 1e-4, diff.max()


def test_greedy_generations_match_the_original(model, ref):
    kwargs = ref["generate_kwargs"]  # greedy, overriding the checkpoint's sampling settings
    for g in ref["generate"]:
        out = model.generate(input_ids=torch.tensor([g["input_ids"]]), **kwargs)
        assert out[0].tolist() == g["output_ids"]
    b = ref["generate_left_padded_batch"]
    out = model.generate(input_ids=torch.tensor(b["input_ids"]), attention_mask=torch.tensor(b["attention_mask"]),
                         **kwargs)
    assert out.tolist() == b["output_ids"]


def test_converted_folder_is_plain_transformers(converted, model):
    from transformers import AutoConfig, GenerationConfig

    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    assert not any(n.endswith(".py") for n in names)
    cfg = AutoConfig.from_pretrained(converted)
    assert cfg.model_type == "llama" and not getattr(cfg, "auto_map", None) and type(model).__name__ == "LlamaForCausalLM"
    assert cfg.rope_parameters["rope_theta"] == 10000.0 and cfg.rms_norm_eps == 1e-6
    assert cfg.num_key_value_heads == cfg.num_attention_heads == 4
    shipped = json.loads((SOURCE / "generation_config.json").read_text())
    gen = GenerationConfig.from_pretrained(converted)  # as the checkpoint ships it: r2gen decides what it uses
    assert {k: getattr(gen, k) for k in shipped if k != "transformers_version"} == \
        {k: v for k, v in shipped.items() if k != "transformers_version"}
    assert detect(SOURCE) == "baichuan2" and detect(converted) is None


def test_7b_config_maps_to_the_native_shapes(tmp_path):
    from transformers import LlamaForCausalLM

    c = settings(CONFIG_7B, tmp_path / "config.json")
    llama = llama_config(c)
    assert (llama.num_hidden_layers, llama.hidden_size, llama.num_attention_heads, llama.num_key_value_heads,
            llama.head_dim, llama.intermediate_size, llama.vocab_size, llama.max_position_embeddings) == \
        (32, 4096, 32, 32, 128, 11008, 125696, 4096)
    assert llama.dtype == "bfloat16" and llama.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in LlamaForCausalLM(llama).state_dict().items()}
        mapper, got = tensor_mapper(c), {}
        for name, shape in source_shapes(c).items():
            if not name.endswith("inv_freq"):  # optional; checked on real values, then dropped
                got.update({k: tuple(v.shape) for k, v in mapper(name, torch.empty(shape))})
    assert got == want  # every native parameter, nothing else, each with its shape
    assert 7.4e9 < sum(np.prod(s) for s in want.values()) < 7.6e9  # Baichuan2-7B: 7.5 B parameters


def test_w_pack_rows_are_query_then_key_then_value():
    c = settings({**CONFIG_7B, "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 4,
                  "num_hidden_layers": 1, "vocab_size": 4}, Path("config.json"))
    w = torch.arange(24 * 8, dtype=torch.float).reshape(24, 8)
    out = dict(tensor_mapper(c)("model.layers.0.self_attn.W_pack.weight", w))
    p = "model.layers.0.self_attn."
    assert [out[p + f"{t}_proj.weight"][0, 0].item() for t in "qkv"] == [0, 64, 128]


def test_13b_and_first_generation_baichuan_are_refused(tmp_path, make_cfg):
    for config, what in ((CONFIG_13B, "13B Baichuan .*ALiBi"),
                         ({**CONFIG_7B, "architectures": ["BaiChuanForCausalLM"], "vocab_size": 64000},
                          "first-generation Baichuan-7B")):
        assert not matches(config)
        with pytest.raises(InputError, match=f"{what}.*Baichuan2-7B-Base or -Chat") as e:
            settings(config, tmp_path / "config.json")
        assert "\n" not in str(e.value)
    src = copy_source(tmp_path)  # through r2gen: lm=baichuan2-7b pointed at a 13B-style checkpoint
    edit_json(src / "config.json", max_position_embeddings="DROP")
    with pytest.raises(InputError, match=r"config\.json: a 13B Baichuan .*no max_position_embeddings") as e:
        build.model(make_cfg(*BAICHUAN2, f"lm.name_or_path={src}", small=False))
    assert "\n" not in str(e.value) and detect(src) is None


def _weights(edit):
    def change(src: Path):
        state = load_file(src / "model.safetensors")
        edit(state)
        save_file(state, src / "model.safetensors")
    return change


def _inv_freq(base: float):
    d = 16  # head_dim of the fixture: 64 / 4
    return _weights(lambda s: s.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq":
                                        1.0 / base ** (torch.arange(0, d, 2).float() / d) for i in range(2)}))


BAD = {
    "no tokenizer": (lambda src: (src / "tokenizer.model").unlink(), MissingFileError, r"tokenizer\.model: missing"),
    "no weights": (lambda src: (src / "model.safetensors").unlink(), MissingFileError, "no weights"),
    "llama config": (lambda src: edit_json(src / "config.json", model_type="llama"), InputError,
                     "not a Baichuan2 config"),
    "tied head": (lambda src: edit_json(src / "config.json", tie_word_embeddings=True), InputError,
                  "tie_word_embeddings=true"),
    "wrong size": (lambda src: edit_json(src / "config.json", intermediate_size=200), InputError,
                   "shape .* config.json implies"),
    "chat token": (lambda src: edit_json(src / "generation_config.json", user_token_id=300), InputError,
                   "user_token_id=300 is not a chat token"),
    "missing tensor": (_weights(lambda s: s.pop("lm_head.weight")), InputError, "lack lm_head.weight"),
    "extra tensor": (_weights(lambda s: s.update({"model.layers.0.self_attn.W_pack.lora_A": torch.zeros(2, 2)})),
                     InputError, "unexpected tensor model.layers.0.self_attn.W_pack.lora_A"),
    "rope base": (_inv_freq(500000.0), InputError, "inv_freq does not match the rope base 10000"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_source_fails_in_one_line_and_writes_nothing(tmp_path, case):
    edit, error, message = BAD[case]
    src = copy_source(tmp_path)
    edit(src)
    with pytest.raises(error, match=message) as e:
        ensure_converted("baichuan2", src, tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert [p.name for p in (tmp_path / "cache" / "converted").iterdir() if not p.name.endswith(".lock")] == []


def test_stored_inv_freq_of_the_right_base_is_dropped(tmp_path, converted):
    src = copy_source(tmp_path)
    _inv_freq(10000.0)(src)
    out = convert("baichuan2", src, tmp_path / "out")
    assert load_file(out / "model.safetensors").keys() == load_file(converted / "model.safetensors").keys()


# --- through r2gen: lm=baichuan2-7b --------------------------------------------------------------------------------
def test_trains_and_generates_through_r2gen(make_cfg):
    cfg = make_cfg(*BAICHUAN2, "align=shallow", small=False)  # frozen encoder: LoRA and the projection learn
    assert cfg.lm.trust_remote_code is False
    m = build.model(cfg)  # as train() and evaluate() build it: from the converted folder
    tok = m.tokenizer
    assert type(m.lm_model.get_base_model()).__name__ == "LlamaForCausalLM"
    before = cfg.lm.prompt.text.split("<image>")[0]
    assert m.prompt.prefix == tok(before, add_special_tokens=False).input_ids  # no BOS: the tokenizer adds none
    assert tok.pad_token_id == 0 and m.gen_config.eos_token_id in (2, [2])
    # the checkpoint's chat settings (do_sample, temperature 0.3, repetition_penalty 1.05) are not used: the generate
    # group's beam search
    gen = m.gen_config
    assert (gen.do_sample, gen.num_beams, gen.repetition_penalty) == (False, 2, 1.0) and gen.temperature != 0.3
    trainable = [n for n, p in m.lm_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {t for n in trainable for t in ("q_proj", "k_proj", "v_proj", "o_proj") if f".{t}." in n} == \
        {"q_proj", "v_proj"}  # the yaml's targets, split out of the original's fused W_pack

    b = batch(m)
    losses = train_steps(m, b, steps=4, lr=3e-3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    m.eval()
    out = m.generate(b["images"], b["view_mask"])  # beam search over left-padded inputs_embeds
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_chat_prompt_is_baichuan2_chat_input(tokenizer):
    p = Prompt(tokenizer, "<image>Describe the chest xray.", template="chat", add_bos=False)  # as lm=baichuan2-7b
    assert p.prefix == [3] and p.suffix[-1] == 4  # <reserved_106> <image tokens> text <reserved_107>
    assert p.suffix[:-1] == tokenizer("Describe the chest xray.", add_special_tokens=False).input_ids


def test_verify_passes(make_cfg, capsys):
    from r2gen.verify import run

    report = run(make_cfg(*BAICHUAN2, small=False))
    assert report["model_type"] == "llama" and report["class"] == "PeftModelForCausalLM"  # LoRA on the native LLaMA
    assert report["bos"].startswith("1 ") and report["prompt starts with bos"] is False
    assert report["eos"].startswith("2 ") and report["pad"].startswith("0 ")
    assert "ok: lm.name_or_path=" in capsys.readouterr().out


def test_folder_without_lm_convert_names_the_conversion(make_cfg):
    with pytest.raises(ConfigError, match=r"BaichuanForCausalLM checkpoint .*: add lm.convert=baichuan2 \(or use "
                                          r"lm=baichuan2-7b\)") as e:
        build.model(make_cfg(*BAICHUAN2, "lm.convert=null", small=False))
    assert "trust_remote_code" not in str(e.value)


@pytest.mark.slow
def test_train_py_then_evaluate_py(tmp_path, cache_dir):
    run = tmp_path / "run"
    r = run_cli("train.py", *BAICHUAN2, "generate.max_new_tokens=4", f"hydra.run.dir={run}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (run / "test" / "metrics.json").is_file()
    assert len([p for p in (cache_dir / "converted").glob("baichuan2-*") if p.is_dir()]) == 1
    ev = tmp_path / "eval"
    r = run_cli("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={ev}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.isfinite(json.loads((ev / "metrics.json").read_text())["Bleu_4"])
