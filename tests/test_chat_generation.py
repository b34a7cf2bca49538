"""A chat/instruct checkpoint's `generation_config.json` never blocks a run: the `generate` group decides how reports
are decoded, the checkpoint gives its stop tokens, and its sampling values only when `generate.do_sample=true`.
Also: a model folder r2gen cannot load (a speech encoder-decoder, a vision model) is one line, before any weights."""

import json
import logging
from pathlib import Path

import pytest
import torch

from r2gen import build
from r2gen.errors import ConfigError, InputError
from r2gen.export import export, import_exported
from r2gen.models.tiny_lm import build_causal_lm
from r2gen.verify import verify

from .helpers.config import SMALL_NO_BUILD
from .helpers.lm_families import ADDS_BOS, FAMILIES, TEXTS
from .helpers.models import batch

# The decoding settings of meta-llama/Llama-2-7b-chat-hf's and Qwen/Qwen2-7B-Instruct's generation_config.json, as
# shipped; the token ids are the tiny tokenizers' own (stop tokens: Qwen's <|im_end|> and <|endoftext|>).
CHAT = {
    "llama": ("llama2-7b", {"do_sample": True, "max_length": 4096, "temperature": 0.6, "top_p": 0.9,
                            "transformers_version": "4.32.0.dev0"}, ()),
    "qwen2": ("qwen2-7b", {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8,
                           "top_k": 20, "transformers_version": "4.37.0"}, ("<|im_end|>",)),
}


def build_chat(out: Path, family: str) -> str:
    """A tiny random checkpoint of `family` with its chat model's generation_config.json."""
    _, model_type, special, _, kw = FAMILIES[family]
    _, decoding, extra = CHAT[family]
    path = build_causal_lm(out, TEXTS, model_type=model_type, vocab_size=300, special=special, extra_tokens=extra,
                           adds_bos=family in ADDS_BOS, **kw)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = {"bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id}
    stops = [tok.convert_tokens_to_ids(t) for t in extra] + [tok.eos_token_id]
    (Path(path) / "generation_config.json").write_text(json.dumps(
        {**{k: v for k, v in ids.items() if v is not None}, "eos_token_id": stops if extra else tok.eos_token_id,
         **decoding}, indent=2))
    return str(path)


@pytest.fixture(scope="module")
def chat_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return {family: build_chat(root / family, family) for family in CHAT}


def chat_cfg(make_cfg, chat_dirs, family, *overrides):
    return make_cfg(f"lm={CHAT[family][0]}", f"lm.name_or_path={chat_dirs[family]}", *SMALL_NO_BUILD, *overrides,
                    small=False)


@pytest.mark.parametrize("family", list(CHAT))
def test_chat_sampling_settings_are_dropped_with_one_line(make_cfg, chat_dirs, family, caplog):
    with caplog.at_level(logging.INFO):
        m = build.model(chat_cfg(make_cfg, chat_dirs, family))
    g = m.gen_config
    assert not g.do_sample and g.num_beams == 2  # generate=beam, shrunk to 2 beams by conftest
    assert g.temperature is None and g.top_p is None and g.top_k is None
    assert g.repetition_penalty == 1.0  # the generate group's, not Qwen's 1.05
    tok = m.tokenizer
    if family == "qwen2":  # the checkpoint's stop tokens are kept: eos first, then the end of turn
        assert g.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    lines = [r.getMessage() for r in caplog.records if "generation_config.json" in r.getMessage()]
    assert len(lines) == 1, lines
    for key in ("do_sample=True", "temperature=", "top_p=", *(("top_k=20", "repetition_penalty=1.05")
                                                             if family == "qwen2" else ())):
        assert key in lines[0], lines[0]


@pytest.mark.parametrize("family", list(CHAT))
def test_chat_checkpoint_verifies_trains_and_evaluates(make_cfg, chat_dirs, family, tmp_path):
    from r2gen.evaluate import evaluate
    from r2gen.train import train

    r = verify(chat_cfg(make_cfg, chat_dirs, family))
    assert "num_beams=2" in r["generate"] and len(r["generated (untrained)"]) == 2
    cfg = chat_cfg(make_cfg, chat_dirs, family, "lm.lora.r=4", "test_after_fit=false")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    ev = make_cfg(f"ckpt={ckpt}", config_name="evaluate")
    scores = evaluate(ev)
    assert scores and all(torch.isfinite(torch.tensor(v)) for v in scores.values() if isinstance(v, float))

    # the export: its generation config decodes as the run did; do_sample=True samples with the checkpoint's values
    o = [f"ckpt={ckpt}", f"out={tmp_path / 'export'}"]
    folder = export(make_cfg(*o, config_name="export", small=False), overrides=o)
    config = json.loads((folder / "config.json").read_text())
    assert "temperature" not in config["generate"] and config["generate"]["do_sample"] is False
    assert config["sampling"]["temperature"] == CHAT[family][1]["temperature"]
    model = import_exported(folder).R2GenModel.from_pretrained(folder).eval()
    study = [[str(p) for p in sorted(Path(cfg.data.image_dir).rglob("*.png"))[:2]]]
    assert len(model.generate_reports(study)) == 1
    used = []
    generate = model.lm_model.generate
    model.lm_model.generate = lambda **kw: used.append(kw["generation_config"]) or generate(**kw)
    model.generate_reports(study, do_sample=True, num_beams=1)
    assert used[-1].do_sample and used[-1].temperature == CHAT[family][1]["temperature"]


@pytest.mark.parametrize("family", list(CHAT))
def test_do_sample_true_samples_with_the_checkpoints_values(make_cfg, chat_dirs, family):
    m = build.model(chat_cfg(make_cfg, chat_dirs, family, "generate.do_sample=true", "generate.num_beams=1",
                             "generate.max_new_tokens=12")).eval()
    g = m.gen_config
    want = CHAT[family][1]
    assert g.do_sample and g.temperature == want["temperature"] and g.top_p == want["top_p"]
    assert g.top_k == want.get("top_k")
    assert g.repetition_penalty == 1.0  # not a sampling setting: the generate group owns it
    b = batch(m)
    texts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        texts.append(m.generate(b["images"], b["view_mask"]))
    assert texts[0] != texts[1]  # sampling happened: another seed, other reports
    # a generate.* key still wins over the checkpoint's value
    m2 = build.model(chat_cfg(make_cfg, chat_dirs, family, "generate.do_sample=true", "+generate.temperature=1.3"))
    assert m2.gen_config.temperature == 1.3 and m2.gen_config.top_p == want["top_p"]


def test_a_users_own_sampling_key_without_sampling_still_fails(make_cfg, chat_dirs):
    with pytest.raises(ConfigError, match="temperature"):
        build.model(chat_cfg(make_cfg, chat_dirs, "llama", "+generate.temperature=0.3"))


# --- model folders r2gen cannot load ------------------------------------------------------------------------------
def _save(folder: Path, model_type: str, **kw) -> Path:
    from transformers import AutoConfig, AutoModel

    from r2gen.models.tiny_lm import train_tokenizer

    config = AutoConfig.for_model(model_type, **kw)
    AutoModel.from_config(config).save_pretrained(folder)
    train_tokenizer(TEXTS, 300).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type, kw, says", [
    # an encoder-decoder whose encoder reads audio, not text embeddings (T5 and BART load: tests/test_seq2seq.py)
    ("whisper", dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=300,
                     num_mel_bins=8, max_source_positions=8, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, decoder_start_token_id=1), "encoder does not read text"),
    ("vit", dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8,
                 patch_size=4), "not an LM that AutoModelForCausalLM loads"),
])
def test_a_folder_that_is_not_an_lm_is_one_line(make_cfg, tmp_path, model_type, kw, says, monkeypatch):
    folder = _save(tmp_path / model_type, model_type, **kw)
    (folder / "model.safetensors").write_bytes(b"not weights")  # never read: the config is checked first
    cfg = make_cfg("lm=llama2-7b", f"lm.name_or_path={folder}", *SMALL_NO_BUILD, small=False)
    with pytest.raises(InputError) as e:
        build.model(cfg)
    msg = str(e.value)
    assert "\n" not in msg and says in msg and f"'{model_type}'" in msg and "AutoModelForCausalLM" in msg, msg
    assert "lm.trust_remote_code=true" in msg
