"""Baichuan2-7B (baichuan-inc/Baichuan2-7B-Base, -Chat and their fine-tunes) -> transformers' native LLaMA
(`LlamaForCausalLM`), no remote code.

Baichuan2-7B's network is LLaMA's: RMSNorm, SwiGLU, multi-head attention without bias, rotary embeddings on whole
heads in halves (`rotate_half`) with the base 10000 its code fixes (config.json has no key for it). Besides the names
of the fused q/k/v, its output layer differs:

  model.layers.N.self_attn.W_pack              -> model.layers.N.self_attn.{q,k,v}_proj  (rows: q | k | v)
  model.layers.N.self_attn.rotary_emb.inv_freq -> (recomputed from the base: checked, then dropped; most uploads
                                                  do not hold it)
  lm_head (a NormHead)                         -> lm_head holding F.normalize(W, dim=1): the unit-norm rows the
                                                  original multiplies by (it normalises the saved rows on use)
  every other tensor                           -> the same name

So a frozen LM (r2gen's default, with LoRA or without) computes what the original computes. With lm.freeze=false the
head trains as a plain Linear, whose rows may leave unit norm; and the original's z-loss (`z_loss_weight`, 0 in the
published configs) has no counterpart: r2gen's loss is the cross-entropy on the report.

Baichuan2-13B (and Baichuan-13B) replace rotary embeddings by ALiBi, which no native transformers model computes in
this layout, and the first-generation Baichuan-7B has a plain output layer: both are refused by name (`refused`).

The tokenizer is its SentencePiece model (no normalisation, no dummy prefix, byte fallback: r2gen.convert.sentencepiece)
and, as Baichuan2's own, adds no BOS or EOS (unless its tokenizer_config.json says add_bos_token / add_eos_token). Its
chat input (`build_chat_input` of the original) is a system text, then per turn the user or the assistant token
(`user_token_id` / `assistant_token_id` of generation_config.json) followed by the content, then the assistant
token: the chat template below writes the same as text (it keeps every turn, where the original drops the oldest
ones that do not fit model_max_length minus max_new_tokens).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from r2gen.convert.sentencepiece import CONTROL, USER_DEFINED, bpe_tokenizer, read_model
from r2gen.convert.weights import checked_weights, native_llama_config, read_json, write_folder
from r2gen.errors import InputError, MissingFileError

NAME = "baichuan2"
VERSION = 1  # bump when the output changes: conversions cached under an older version are redone
SOURCE_FILES = ["config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.model"]
FIRST_GENERATION = "BaiChuanForCausalLM"  # baichuan-inc/Baichuan-7B: model_type baichuan too
KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
# what Baichuan2-7B's own config class assumes for a key config.json leaves out
DEFAULTS = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0}
ROPE_THETA = 10000.0  # fixed in Baichuan2-7B's RotaryEmbedding
ROLES = {"user_token_id": 195, "assistant_token_id": 196}  # Baichuan2's chat tokens, where generation_config is silent
W_PACK = re.compile(r"model\.layers\.(\d+)\.self_attn\.W_pack\.weight")
INV_FREQ = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
FIX_FOLDER = "point lm.name_or_path at a Baichuan2-7B checkpoint (config.json, tokenizer.model and the weights)"
FIX_7B = "convert a Baichuan2-7B checkpoint instead (baichuan-inc/Baichuan2-7B-Base or -Chat)"


def refused(config: dict[str, Any]) -> str | None:
    """Why a `model_type: baichuan` config is not Baichuan2-7B's network, or None. The 13B models' config.json says
    model_max_length but no max_position_embeddings (their ALiBi has no rope to size); their shape is 5120 x 40."""
    if FIRST_GENERATION in (config.get("architectures") or []):
        return (f"a first-generation Baichuan-7B ({FIRST_GENERATION}), whose output layer is a plain Linear, not "
                f"Baichuan2's row-normalised NormHead; only Baichuan2-7B converts: {FIX_7B}")
    shape = config.get("hidden_size"), config.get("num_hidden_layers")
    if "max_position_embeddings" not in config or shape == (5120, 40):
        return (f"a 13B Baichuan (hidden_size={shape[0]}, num_hidden_layers={shape[1]}, "
                f"{'no max_position_embeddings' if 'max_position_embeddings' not in config else 'the 13B shape'}): "
                "ALiBi attention instead of rotary embeddings, which no native transformers model reproduces; only "
                f"Baichuan2-7B (RoPE) converts: {FIX_7B}")
    return None


def matches(config: dict[str, Any]) -> bool:
    """Whether a config.json is Baichuan2-7B's (model_type baichuan with rotary embeddings and a NormHead)."""
    return config.get("model_type") == "baichuan" and refused(config) is None


def settings(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Baichuan2-7B's config.json with its defaults filled in, checked to be one LLaMA reproduces; anything else is
    an InputError naming the key."""
    if config.get("model_type") != "baichuan":
        raise InputError(f"{path}: not a Baichuan2 config (model_type={config.get('model_type')!r}); {FIX_FOLDER}")
    if (why := refused(config)) is not None:
        raise InputError(f"{path}: {why}")
    missing = [k for k in [*KEYS, "max_position_embeddings"] if not isinstance(config.get(k), int)]
    if missing:
        raise InputError(f"{path}: no integer {', '.join(missing)}; {FIX_FOLDER}")
    c = {**DEFAULTS, **config}
    if c["hidden_size"] % c["num_attention_heads"]:
        raise InputError(f"{path}: hidden_size={c['hidden_size']} is not a multiple of num_attention_heads="
                         f"{c['num_attention_heads']}; copy the model's own config.json")
    if c["tie_word_embeddings"]:
        raise InputError(f"{path}: tie_word_embeddings=true, but Baichuan2's output layer is its own NormHead, never "
                         "the embeddings; copy the model's own config.json (it says false)")
    return c


def llama_config(c: dict[str, Any]):
    """The `LlamaConfig` of Baichuan2-7B settings (`settings`): multi-head attention without bias, an untied head."""
    return native_llama_config(c, num_key_value_heads=c["num_attention_heads"], attention_bias=False,
                               tie_word_embeddings=False,
                               rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA})


def source_shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a Baichuan2-7B checkpoint -> its shape; the per-layer rope inv_freq is optional."""
    v, h, f = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    d = h // c["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.W_pack.weight": (3 * h, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "self_attn.rotary_emb.inv_freq": (d // 2,),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    return shapes


def tensor_mapper(c: dict[str, Any]):
    """(Baichuan2 name, tensor) -> [(LLaMA name, tensor)]: W_pack split along its rows, the head's rows normalised."""
    h, d = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"]
    want = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float) / d))

    def mapper(name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name == "lm_head.weight":  # in the stored dtype, as the original normalises the loaded weights
            return [(name, torch.nn.functional.normalize(t, dim=1))]
        if INV_FREQ.fullmatch(name):  # the rope the weights were trained with must be the one recomputed
            if not torch.allclose(t.float(), want, rtol=1e-2, atol=1e-5):  # stored in float16 or bfloat16
                raise InputError(f"{name} does not match the rope base {ROPE_THETA:g} of Baichuan2-7B's code: the "
                                 "weights are from another model")
            return []
        if m := W_PACK.fullmatch(name):
            q, k, v = t.split(h, dim=0)
            p = f"model.layers.{m.group(1)}.self_attn."
            return [(p + "q_proj.weight", q), (p + "k_proj.weight", k), (p + "v_proj.weight", v)]
        return [(name, t)]

    return mapper


# --- tokenizer ------------------------------------------------------------------------------------------------
def token_text(token: str | dict) -> str:
    """A token as tokenizer_config.json writes it: its text, or an AddedToken's fields."""
    return token["content"] if isinstance(token, dict) else token


def chat_template(user: str, assistant: str) -> str:
    """Jinja that writes Baichuan2's chat input as text which tokenizes to the ids of its `build_chat_input`: the
    system message's content first, then per turn the role token and the content, then the assistant token unless
    the last turn is the assistant's. The role tokens are special, so each content is encoded on its own, as there."""
    role = {"user": user, "assistant": assistant}
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' and loop.first -%}{{- message['content'] -}}"
        "{%- elif message['role'] in " + repr(list(role)) + " -%}"
        "{{- " + json.dumps(role) + "[message['role']] + message['content'] -}}"
        "{%- else -%}"
        "{{- raise_exception('Baichuan2 chat roles are user and assistant, after one optional first system message; "
        "got ' + message['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}{{- " + json.dumps(assistant) +
        " -}}{%- endif -%}"
    )


def build_tokenizer(folder: Path, c: dict[str, Any], gen: dict[str, Any]):
    """Baichuan2's tokenizer as a `PreTrainedTokenizerFast`: its SentencePiece pieces keep their ids, its
    user-defined pieces (the chat role tokens) are special, nothing is added around a text unless its
    tokenizer_config.json says add_bos_token / add_eos_token, and the chat template is set."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    path = folder / "tokenizer.model"
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; Baichuan2's tokenizer is this SentencePiece file: copy it from the "
                               "model's download")
    tok = bpe_tokenizer(path, user_defined=True)
    pieces = read_model(path).pieces
    if len(pieces) > c["vocab_size"]:
        raise InputError(f"{path}: {len(pieces)} pieces exceed vocab_size={c['vocab_size']} in config.json: the "
                         "tokenizer is from another model")
    config_path = folder / "tokenizer_config.json"
    source = read_json(config_path, optional=True)
    names = {key: token_text(source.get(key) or default) for key, default in
             (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<unk>"))}
    for key, token in names.items():
        if tok.token_to_id(token) is None:
            raise InputError(f"{config_path}: {key}={token!r} is not a token of tokenizer.model; the two files are "
                             "from different models")
    roles = {}
    for key, default in ROLES.items():
        rid = gen.get(key, default)
        # a special piece, split out before BPE: the content after it is encoded on its own, as in the original
        if not (isinstance(rid, int) and 0 <= rid < len(pieces) and pieces[rid].type in (USER_DEFINED, CONTROL)):
            raise InputError(f"{folder / 'generation_config.json'}: {key}={rid!r} is not a chat token of "
                             "tokenizer.model (a user-defined piece); the files are from different models")
        roles[key] = pieces[rid].piece
    first = [names["bos_token"]] if source.get("add_bos_token", False) else []
    last = [names["eos_token"]] if source.get("add_eos_token", False) else []
    single = " ".join([*first, "$A", *last])
    tok.post_processor = TemplateProcessing(
        single=single, pair=f"{single} {' '.join([*first, '$B', *last])}",
        special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys([*first, *last])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, **names, padding_side=source.get("padding_side", "right"),
        clean_up_tokenization_spaces=False, model_max_length=c.get("model_max_length", c["max_position_embeddings"]),
        chat_template=chat_template(roles["user_token_id"], roles["assistant_token_id"]),
    )


# --- the whole folder -------------------------------------------------------------------------------------------
def convert(folder: Path, out: Path) -> None:
    """Write the native LLaMA folder of the Baichuan2-7B checkpoint in `folder` into the (empty, existing) folder
    `out`. Everything is checked (config, tokenizer, weight names) before the weights are streamed, shard by shard."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{config_path}: missing; {FIX_FOLDER}")
    c = settings(read_json(config_path), config_path)
    llama = llama_config(c)
    gen = read_json(folder / "generation_config.json", optional=True)
    tokenizer = build_tokenizer(folder, c, gen)
    shapes = source_shapes(c)
    files = checked_weights(folder, shapes, "Baichuan2-7B", optional=INV_FREQ.fullmatch)

    # generation_config.json as the checkpoint ships it (a chat model's sampling settings too: r2gen uses them only
    # when generate.do_sample=true); a checkpoint without one gets its token ids
    ids = {k: c[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    write_folder(out, files, tensor_mapper(c), shapes, llama, tokenizer, gen or ids)
