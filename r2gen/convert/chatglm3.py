"""ChatGLM3 (THUDM/chatglm3-6b and its fine-tunes) -> transformers' native GLM (`GlmForCausalLM`), no remote code.

ChatGLM3's network is the one transformers ships as `glm`: RMSNorm, SwiGLU, grouped-query attention with bias on
q/k/v, rotary embeddings on the first half of each head with interleaved pairs (`partial_rotary_factor=0.5`),
untied output layer. Only the names and the fused q/k/v differ:

  transformer.embedding.word_embeddings         -> model.embed_tokens
  ...layers.N.self_attention.query_key_value    -> model.layers.N.self_attn.{q,k,v}_proj  (rows: q | k | v)
  ...layers.N.self_attention.dense              -> model.layers.N.self_attn.o_proj
  ...layers.N.mlp.dense_h_to_4h / dense_4h_to_h -> model.layers.N.mlp.gate_up_proj / down_proj
  ...layers.N.{input,post_attention}_layernorm  -> model.layers.N.{input,post_attention}_layernorm
  transformer.encoder.final_layernorm           -> model.norm
  transformer.output_layer                      -> lm_head
  transformer.rotary_pos_emb.inv_freq           -> (recomputed from the rope base; checked, then dropped)

The tokenizer is its SentencePiece model (r2gen.convert.sentencepiece) plus nine special tokens numbered after the
pieces; every input starts with `[gMASK] sop`, and a chat turn is `<|role|>` + encode(metadata + "\\n") +
encode(content), which the chat template below reproduces as text (see `chat_template`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from r2gen.convert.sentencepiece import bpe_tokenizer, read_model
from r2gen.convert.weights import checked_weights, eos_and_pad, native_config, read_json, write_folder
from r2gen.errors import InputError, MissingFileError

NAME = "chatglm3"
VERSION = 1  # bump when the output changes: conversions cached under an older version are redone
SOURCE_FILES = ["config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.model"]
# numbered after the SentencePiece pieces, in this order (ChatGLM3's SPTokenizer)
SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
ROLES = ["system", "user", "assistant", "observation"]
PREFIX = ["[gMASK]", "sop"]  # starts every input
CHAT_ENDS = ["<|user|>", "<|observation|>"]  # besides eos, ChatGLM3's chat() stops when the model starts these turns
KEYS = ["num_layers", "hidden_size", "num_attention_heads", "kv_channels", "multi_query_group_num", "ffn_hidden_size",
        "padded_vocab_size", "layernorm_epsilon", "seq_length"]
# config.json settings the native GLM has no counterpart for: (key, the value ChatGLM3 uses, what else would mean)
FIXED = [("rmsnorm", True, "LayerNorm instead of RMSNorm"), ("add_bias_linear", False, "biases on every Linear"),
         ("post_layer_norm", True, "no final norm"), ("apply_residual_connection_post_layernorm", False,
                                                       "residuals taken after the norm"),
         ("multi_query_attention", True, "per-head interleaved q/k/v"), ("pre_seq_len", None, "a P-tuning prefix"),
         ("quantization_bit", 0, "weights quantized by ChatGLM's own code")]
LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
RENAME = {"transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
          "transformer.encoder.final_layernorm.weight": "model.norm.weight",
          "transformer.output_layer.weight": "lm_head.weight"}
LAYER_RENAME = {"input_layernorm.weight": "input_layernorm.weight",
                "post_attention_layernorm.weight": "post_attention_layernorm.weight",
                "self_attention.dense.weight": "self_attn.o_proj.weight",
                "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
                "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight"}
INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
FIX_FOLDER = "point lm.name_or_path at a ChatGLM3 checkpoint (config.json, tokenizer.model and the weights)"


def matches(config: dict[str, Any]) -> bool:
    """Whether a config.json is ChatGLM3's (ChatGLM2 has the same keys and network)."""
    return config.get("model_type") == "chatglm" and all(k in config for k in KEYS)


def check_config(config: dict[str, Any], path: Path) -> None:
    """ChatGLM3's config.json, in a form the native GLM reproduces; anything else is an InputError naming the key."""
    if not matches(config):
        if config.get("model_type") in ("glm", "glm4"):
            raise InputError(f"{path}: model_type {config['model_type']!r} is already native in transformers: "
                             "load this folder as it is (drop lm.convert)")
        missing = [k for k in KEYS if k not in config]
        raise InputError(f"{path}: not a ChatGLM3 config (model_type={config.get('model_type')!r}"
                         f"{', no ' + ', '.join(missing) if missing else ''}); {FIX_FOLDER}")
    for key, want, other in FIXED:
        if config.get(key, want) not in (want, *(() if want else (None, 0, False))):
            raise InputError(f"{path}: {key}={config[key]!r} ({other}) has no counterpart in transformers' native "
                             f"GLM; only checkpoints with {key}={want!r}, as ChatGLM3 ships, convert")
    if config["kv_channels"] % 4:
        raise InputError(f"{path}: kv_channels={config['kv_channels']} must be a multiple of 4 (rotary pairs on "
                         "half of each head)")


def glm_config(config: dict[str, Any]):
    """The `GlmConfig` of a ChatGLM3 config.json."""
    from transformers import GlmConfig

    return native_config(
        GlmConfig, config, vocab_size=config["padded_vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"], num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_attention_heads"], num_key_value_heads=config["multi_query_group_num"],
        head_dim=config["kv_channels"], hidden_act="silu", attention_dropout=config.get("attention_dropout") or 0.0,
        max_position_embeddings=config["seq_length"], rms_norm_eps=config["layernorm_epsilon"],
        attention_bias=bool(config.get("add_qkv_bias", True)), tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": rope_base(config), "partial_rotary_factor": 0.5},
        pad_token_id=config.get("pad_token_id", 0), eos_token_id=config.get("eos_token_id", 2), bos_token_id=None,
    )


def rope_base(config: dict[str, Any]) -> float:
    return 10000.0 * float(config.get("rope_ratio") or 1)


def source_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a ChatGLM3 checkpoint -> its shape; the rope's inv_freq is the one optional entry."""
    v, h, f = config["padded_vocab_size"], config["hidden_size"], config["ffn_hidden_size"]
    d, heads, groups = config["kv_channels"], config["num_attention_heads"], config["multi_query_group_num"]
    qkv = (heads + 2 * groups) * d
    shapes = {"transformer.embedding.word_embeddings.weight": (v, h), "transformer.output_layer.weight": (v, h),
              "transformer.encoder.final_layernorm.weight": (h,), INV_FREQ: (d // 4,)}
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attention.query_key_value.weight": (qkv, h),
                       p + "self_attention.dense.weight": (h, heads * d),
                       p + "mlp.dense_h_to_4h.weight": (2 * f, h), p + "mlp.dense_4h_to_h.weight": (h, f)})
        if config.get("add_qkv_bias", True):
            shapes[p + "self_attention.query_key_value.bias"] = (qkv,)
    return shapes


def tensor_mapper(config: dict[str, Any]):
    """(ChatGLM3 name, tensor) -> [(GLM name, tensor)]: renamed; the fused q/k/v split along its rows."""
    d = config["kv_channels"]
    q, kv = config["num_attention_heads"] * d, config["multi_query_group_num"] * d
    base, dim = rope_base(config), d // 2  # ChatGLM3 rotates the first half of each head

    def mapper(name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name == INV_FREQ:  # the rope base the weights were trained with must be the one config.json implies
            want = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            if not torch.allclose(t.float(), want, rtol=1e-2, atol=1e-5):  # stored in float16 or bfloat16
                raise InputError(f"{INV_FREQ} does not match the rope base {base:g} that config.json implies "
                                 f"(rope_ratio={config.get('rope_ratio')}): the weights and config.json are from "
                                 "different models")
            return []
        if name in RENAME:
            return [(RENAME[name], t)]
        layer, rest = LAYER.fullmatch(name).groups()
        p = f"model.layers.{layer}."
        if rest.startswith("self_attention.query_key_value."):
            kind = rest.rsplit(".", 1)[1]  # weight [q+2kv, hidden] or bias [q+2kv]: rows are q | k | v
            qt, kt, vt = t.split([q, kv, kv], dim=0)
            return [(p + f"self_attn.q_proj.{kind}", qt), (p + f"self_attn.k_proj.{kind}", kt),
                    (p + f"self_attn.v_proj.{kind}", vt)]
        return [(p + LAYER_RENAME[rest], t)]

    return mapper


# --- tokenizer ------------------------------------------------------------------------------------------------
def chat_template(dummy_prefix: bool) -> str:
    """Jinja that renders ChatGLM3's chat input as text which tokenizes to the same ids as its `build_chat_input`:
    `[gMASK]sop`, then per message `<|role|>` + metadata + "\\n" + content, then `<|assistant|>`.

    ChatGLM3 encodes the role line and the content in two SentencePiece calls, each with a dummy-prefix space; in
    one text after `<|role|>`, the tokenizer's own prefix covers the first call, and the space written before
    the content stands for the second."""
    lead = "' ' + " if dummy_prefix else ""
    return (
        "{{- '" + "".join(PREFIX) + "' -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] not in " + repr(ROLES) + " -%}"
        "{{- raise_exception('ChatGLM3 roles are " + ", ".join(ROLES) + "; got ' + message['role']) -}}"
        "{%- endif -%}"
        "{{- '<|' + message['role'] + '|>' + (message['metadata'] if message['metadata'] is defined else '') + '\\n' -}}"
        "{%- if message['content'] -%}{{- " + lead + "message['content'] -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
    )


def build_tokenizer(folder: Path, config: dict[str, Any]):
    """ChatGLM3's tokenizer as a `PreTrainedTokenizerFast`: its SentencePiece pieces keep their ids, the special
    tokens follow them, `[gMASK] sop` is prepended by the post-processor, and the chat template is set."""
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    path = folder / "tokenizer.model"
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; ChatGLM3's tokenizer is this SentencePiece file: copy it from the "
                               "model's download")
    tok = bpe_tokenizer(path)
    proto = read_model(path)
    n = len(proto.pieces)
    if n + len(SPECIAL) > config["padded_vocab_size"]:
        raise InputError(f"{path}: {n} pieces + {len(SPECIAL)} special tokens exceed padded_vocab_size="
                         f"{config['padded_vocab_size']} in config.json: the tokenizer is from another model")
    # sop / eop are plain words too: match them only when not inside a word ("people", "isoprop")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, single_word=t.isalpha()) for t in SPECIAL])
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    if list(ids.values()) != list(range(n, n + len(SPECIAL))):
        raise InputError(f"{path}: a piece of the SentencePiece model is spelled like a ChatGLM3 special token "
                         f"({ids}); the tokenizer is not ChatGLM3's")
    spec = proto.trainer_spec
    eos, unk = proto.pieces[spec.eos_id].piece, proto.pieces[spec.unk_id].piece
    prefix = " ".join(PREFIX)
    tok.post_processor = TemplateProcessing(single=f"{prefix} $A", pair=f"{prefix} $A $B {eos}",
                                            special_tokens=[(t, tok.token_to_id(t)) for t in (*PREFIX, eos)])
    source = read_json(folder / "tokenizer_config.json", optional=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, unk_token=unk, pad_token=unk,  # ChatGLM3 pads with <unk> (id 0)
        padding_side=source.get("padding_side", "left"), clean_up_tokenization_spaces=False,
        model_max_length=config["seq_length"], chat_template=chat_template(proto.normalizer_spec.add_dummy_prefix),
    )


# --- the whole folder -------------------------------------------------------------------------------------------
def convert(folder: Path, out: Path) -> None:
    """Write the native GLM folder of the ChatGLM3 checkpoint in `folder` into the (empty, existing) folder `out`.

    Everything is checked (config, tokenizer, weight names) before the weights are streamed, shard by shard."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{config_path}: missing; {FIX_FOLDER}")
    config = read_json(config_path)
    check_config(config, config_path)
    glm = glm_config(config)
    tokenizer = build_tokenizer(folder, config)
    shapes = source_shapes(config)
    files = checked_weights(folder, shapes, "ChatGLM3", optional=lambda name: name == INV_FREQ,
                            foreign="a P-tuning prefix or another model")
    # only the token ids: a chat demo's sampling defaults would turn r2gen's beam search into beam sampling
    gen = eos_and_pad(read_json(folder / "generation_config.json", optional=True), config.get("eos_token_id", 2),
                      tokenizer.convert_tokens_to_ids(CHAT_ENDS), tokenizer.pad_token_id)

    write_folder(out, files, tensor_mapper(config), shapes, glm, tokenizer, gen)
