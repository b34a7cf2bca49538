"""Any causal LM is one `lm.name_or_path=<dir>` away: with no other lm key, the default yaml's `pad_token: auto` and
`attn_implementation: auto` choose what each checkpoint needs (its own pad, else unk, else eos; SDPA where the
architecture has it, else eager), and the model trains, beam-generates and passes `verify`."""

import pytest
import torch

from r2gen import build
from r2gen.models.lm import auto_attention, auto_pad_policy, load_tokenizer
from r2gen.models.tiny_lm import build_causal_lm
from r2gen.verify import verify

from .helpers.cli import run_cli
from .helpers.config import SMALL_NO_BUILD
from .helpers.lm_families import GQA, LLAMA_SPECIAL, TEXTS, built_once
from .helpers.models import batch, train_steps

NO_PAD_NO_BOS = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": None, "unk_token": None}
# family -> (model_type, special tokens, config, the pad auto must pick, the attention transformers must end on)
HELD_OUT = {
    "llama": ("llama", LLAMA_SPECIAL, GQA, "unk", "sdpa"),
    "mistral": ("mistral", LLAMA_SPECIAL, GQA, "unk", "sdpa"),
    # saved without a pad token, but transformers' Qwen2Tokenizer names <|endoftext|> (its eos) as pad, as Qwen's own
    "qwen2": ("qwen2", NO_PAD_NO_BOS, GQA, "keep", "sdpa"),
    "falcon": ("falcon", NO_PAD_NO_BOS, dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2), "eos", "sdpa"),
    "gemma2": ("gemma2", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
               dict(GQA, head_dim=16), "keep", "eager"),  # transformers 5 has no SDPA path for Gemma-2
    "phi3": ("phi3", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                      "unk_token": "<unk>"}, GQA, "keep", "sdpa"),
}


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    def build(out, family):
        model_type, special, kw, _, _ = HELD_OUT[family]
        return build_causal_lm(out, TEXTS, model_type=model_type, vocab_size=300, special=special, **kw)

    return built_once(tmp_path_factory.mktemp("any_lm"), build)


@pytest.mark.parametrize("family", list(HELD_OUT))
def test_default_lm_yaml_trains_any_family(make_cfg, held_out, family):
    _, _, _, pad_policy, attention = HELD_OUT[family]
    path = held_out(family)
    assert auto_pad_policy(load_tokenizer(path)) == pad_policy  # what auto finds in the tokenizer as loaded
    cfg = make_cfg(f"lm.name_or_path={path}", *SMALL_NO_BUILD, small=False)
    assert cfg.lm.pad_token == "auto" and cfg.lm.attn_implementation == "auto"  # the defaults, nothing else set
    torch.manual_seed(0)
    m = build.model(cfg)
    tok = m.tokenizer
    assert auto_pad_policy(tok) == "keep"  # a pad token is set now
    want = {"unk": tok.unk_token_id, "eos": tok.eos_token_id}.get(pad_policy, tok.pad_token_id)
    assert tok.pad_token_id == want == m.lm_model.config.pad_token_id == m.gen_config.pad_token_id
    assert len(tok) <= m.lm_model.get_input_embeddings().num_embeddings  # nothing added, no resize needed
    assert m.lm_model.config._attn_implementation == attention

    b = batch(m)
    losses = train_steps(m, b, steps=4, lr=3e-3)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    m.eval()
    b["view_mask"][1, 1] = False  # ragged before left padding
    out = m.generate(b["images"], b["view_mask"])
    assert len(out) == 2 and m.gen_config.num_beams == 2

    r = verify(cfg)
    assert r["model_type"] == HELD_OUT[family][0] and r["pad"] != "none"


def test_auto_pad_policy_prefers_the_tokenizers_own_then_unk_then_eos():
    class Tok:
        def __init__(self, pad=None, unk=None, eos=None, bos=None):
            self.pad_token_id, self.unk_token_id, self.eos_token_id, self.bos_token_id = pad, unk, eos, bos

    assert auto_pad_policy(Tok(pad=5, unk=0, eos=2)) == "keep"
    assert auto_pad_policy(Tok(unk=0, eos=2, bos=1)) == "unk"  # LLaMA / Mistral: <unk>, as R2GenGPT pads
    assert auto_pad_policy(Tok(unk=7, eos=7, bos=7)) == "eos"  # GPT-2 / NeoX: unk is eos; say eos
    assert auto_pad_policy(Tok(eos=2)) == "eos"  # Qwen2: no pad, no unk
    assert auto_pad_policy(Tok()) == "add"  # nothing to reuse (load_lm then refuses: no eos)


def test_auto_attention_takes_flash_attention_only_on_a_gpu_with_the_package(held_out, monkeypatch):
    import importlib.util

    path = held_out("llama")
    assert auto_attention("sdpa", path, "float32") == "sdpa"  # explicit choices pass through
    assert auto_attention("auto", path, "bfloat16") is None  # this machine: transformers picks SDPA, else eager
    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    assert auto_attention("auto", path, "bfloat16") == "flash_attention_2"
    assert auto_attention("auto", path, "float32") is None  # flash-attention needs half precision
    assert auto_attention("auto", path, "auto") is None  # this checkpoint was saved in float32


@pytest.mark.slow
def test_train_py_with_only_name_or_path(tmp_path, cache_dir, held_out):
    r = run_cli("train.py", f"lm.name_or_path={held_out('qwen2')}", *SMALL_NO_BUILD, f"hydra.run.dir={tmp_path / 'run'}",
                cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    printed = [line for line in (r.stdout + r.stderr).splitlines() if "lm.pad_token=auto" in line]
    assert printed and "<|endoftext|>" in printed[0], printed  # the choice is printed
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
