"""Tiny random checkpoints of each LM family with the family's special tokens, and the few report texts they are
built from and trained on."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from transformers import AutoTokenizer

from r2gen.conf import CONF_DIR
from r2gen.models.tiny_lm import build_causal_lm

TEXTS = ["the heart is enlarged .", "no pleural effusion .", "small left pneumothorax .", "the lungs are clear .",
         "mild cardiomegaly without edema ."] * 8
LLAMA_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": None, "unk_token": "<unk>"}
NEOX_SPECIAL = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": None, "unk_token": "<|endoftext|>"}
DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=256)
GQA = dict(DECODER, num_key_value_heads=2)
# Phi-3's chat template (an instruct model: its yaml wraps the prompt in it)
PHI3_CHAT = ("{% for message in messages %}{{'<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n'}}"
             "{% endfor %}{% if add_generation_prompt %}{{'<|assistant|>\\n'}}{% endif %}")

# family -> (lm yaml whose settings it is tested with, model_type, tokenizer special tokens, extra tokens, config)
FAMILIES = {
    "llama": ("llama2-7b", "llama", LLAMA_SPECIAL, (), GQA),
    "qwen2": ("qwen2-7b", "qwen2", {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": None,
                                    "unk_token": None}, (), GQA),
    "mistral": ("mistral-7b", "mistral", LLAMA_SPECIAL, (), GQA),
    "stablelm": ("stablelm-3b", "stablelm", NEOX_SPECIAL, (), GQA),
    "gpt_neox": ("pythia-70m", "gpt_neox", NEOX_SPECIAL, (), DECODER),
    "gpt2": ("gpt2", "gpt2", NEOX_SPECIAL, (), dict(n_embd=32, n_layer=1, n_head=2, n_positions=256)),
    "opt": ("opt-125m", "opt", {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
            (), dict(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2, word_embed_proj_dim=32,
                 max_position_embeddings=256)),
    "bloom": ("bloom-560m", "bloom", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                                      "unk_token": "<unk>"}, (), dict(hidden_size=32, n_layer=1, n_head=2)),
    # Gemma scales its input embeddings by sqrt(hidden): the image tokens must go through get_input_embeddings()
    "gemma": ("gemma-2b", "gemma", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                    "unk_token": "<unk>"}, (), dict(GQA, head_dim=16)),
    "phi3": ("phi3-mini", "phi3", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                   "unk_token": "<unk>"}, ("<|user|>", "<|end|>", "<|assistant|>"), GQA),
    # THUDM/glm-4-9b-hf is model_type glm; glm4 is the GLM-4-0414 architecture, which the same yaml settings fit
    "glm": ("glm4-9b", "glm", {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                               "unk_token": None}, ("[gMASK]", "<sop>"), dict(GQA, head_dim=16)),
    "glm4": ("glm4-9b", "glm4", {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                 "unk_token": None}, ("[gMASK]", "<sop>"), dict(GQA, head_dim=16)),
}

# The families whose tokenizer starts every text with its BOS token (add_special_tokens=True), as the real ones do;
# GPT-2, GPT-NeoX, StableLM, BLOOM and Phi-3 (add_bos_token: false) name one but never add it; Qwen2 and GLM have none.
ADDS_BOS = {"llama", "mistral", "gemma", "opt"}


def lm_yaml(name: str) -> DictConfig:
    """`lm=<name>` as Hydra composes it (a family file states only what differs from conf/lm/_base/lm.yaml)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"lm={name}"]).lm


def build_family(out_dir: Path, family: str) -> str:
    """A tiny random checkpoint of `family` in `out_dir`, with the family's special tokens (and chat template)."""
    name, model_type, special, extra, kw = FAMILIES[family]
    path = build_causal_lm(out_dir, TEXTS, model_type=model_type, vocab_size=300, special=special,
                           extra_tokens=extra, adds_bos=family in ADDS_BOS, **kw)
    if lm_yaml(name).prompt.template == "chat":  # an instruct model ships a chat template
        tok = AutoTokenizer.from_pretrained(path)
        tok.chat_template = PHI3_CHAT
        tok.save_pretrained(path)
    return str(path)


def built_once(root: Path, build):
    """`get(name)`: `build(root / name, name)` on first use, its result remembered (tiny checkpoints a module's tests
    share without building the ones a `-k` selection never asks for)."""
    done: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in done:
            done[name] = str(build(root / name, name))
        return done[name]

    return get
