"""InternLM2 (internlm/internlm2-7b, -chat-7b and their fine-tunes) -> transformers' native LLaMA
(`LlamaForCausalLM`), no remote code.

InternLM2's network is LLaMA's: RMSNorm, SwiGLU, grouped-query attention, rotary embeddings on whole heads in
halves (`rotate_half`), bias on the attention projections or none (`bias`). Only the names and the fused q/k/v differ:

  model.tok_embeddings                     -> model.embed_tokens
  model.layers.N.attention.wqkv            -> model.layers.N.self_attn.{q,k,v}_proj (rows: per KV head, its
                                              query heads, then its key head, then its value head)
  model.layers.N.attention.wo              -> model.layers.N.self_attn.o_proj
  model.layers.N.feed_forward.w1 / w3 / w2 -> model.layers.N.mlp.gate_proj / up_proj / down_proj
  model.layers.N.attention_norm / ffn_norm -> model.layers.N.input_layernorm / post_attention_layernorm
  model.norm                               -> model.norm
  output                                   -> lm_head

The tokenizer is its SentencePiece model (r2gen.convert.sentencepiece) with the chat tokens (`<|im_start|>` ...)
as special tokens, `<s>` prepended, and the chat template of its tokenizer_config.json kept as it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from r2gen.convert.sentencepiece import bpe_tokenizer, read_model
from r2gen.convert.weights import checked_weights, eos_and_pad, native_llama_config, read_json, write_folder
from r2gen.errors import InputError, MissingFileError

NAME = "internlm2"
VERSION = 1  # bump when the output changes: conversions cached under an older version are redone
SOURCE_FILES = ["config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.model"]
ARCHITECTURE = "InternLM2ForCausalLM"
KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
# what InternLM2's own config class assumes for a key config.json leaves out
DEFAULTS = {"num_key_value_heads": None, "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
            "bias": True, "rope_theta": 10000, "rope_scaling": None, "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
CHAT_END = "<|im_end|>"  # besides eos, InternLM2's chat() stops on the end of the assistant's turn
LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
RENAME = {"model.tok_embeddings.weight": "model.embed_tokens.weight", "model.norm.weight": "model.norm.weight",
          "output.weight": "lm_head.weight"}
LAYER_RENAME = {"attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
                "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj",
                "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
FIX_FOLDER = "point lm.name_or_path at an InternLM2 checkpoint (config.json, tokenizer.model and the weights)"
TIED_OUTPUT = ("holds output.weight, yet config.json says tie_word_embeddings=true (the output layer is the "
               "embeddings); set it to false in config.json if output.weight is the trained output layer")


def matches(config: dict[str, Any]) -> bool:
    """Whether a config.json is InternLM2's (early uploads say `model_type: internlm` with InternLM2's class)."""
    return config.get("model_type") == "internlm2" or config.get("architectures") == [ARCHITECTURE]


def settings(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """InternLM2's config.json with its defaults filled in, checked to be one LLaMA reproduces; anything else is an
    InputError naming the key."""
    if not matches(config):
        raise InputError(f"{path}: not an InternLM2 config (model_type={config.get('model_type')!r}); {FIX_FOLDER}")
    missing = [k for k in KEYS if not isinstance(config.get(k), int)]
    if missing:
        raise InputError(f"{path}: no integer {', '.join(missing)}; {FIX_FOLDER}")
    c = {**DEFAULTS, **config}
    c["num_key_value_heads"] = c["num_key_value_heads"] or c["num_attention_heads"]  # None: one KV head per head
    heads, groups = c["num_attention_heads"], c["num_key_value_heads"]
    if c["hidden_size"] % heads or heads % groups:
        raise InputError(f"{path}: hidden_size={c['hidden_size']}, num_attention_heads={heads} and "
                         f"num_key_value_heads={groups} must divide one another; copy the model's own config.json")
    c["rope_parameters"] = rope_parameters(c, path)
    return c


def rope_parameters(c: dict[str, Any], path: Path) -> dict[str, Any]:
    """InternLM2's `rope_scaling` as LLaMA's `rope_parameters`.

    linear divides the positions by `factor`, as LLaMA's linear type does. dynamic (NTK) raises the rope base for a
    sequence longer than max_position_embeddings, by the formula LLaMA's dynamic type uses; up to that length (32768
    for the 7B models, far beyond a report) both are the plain rope. Past it they part in two ways: InternLM2 keeps
    the raised base for every later, shorter input of the process and counts left padding in the length."""
    theta, scaling = float(c["rope_theta"]), c["rope_scaling"]
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type") if isinstance(scaling, dict) else None
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    if kind not in ("linear", "dynamic"):
        raise InputError(f"{path}: rope_scaling={scaling!r}: InternLM2's code knows only the types linear and "
                         "dynamic, which convert; copy the model's own config.json")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 1:
        raise InputError(f"{path}: rope_scaling factor={factor!r} must be a number >= 1, as InternLM2 requires")
    return {"rope_type": kind, "factor": float(factor), "rope_theta": theta}


def llama_config(c: dict[str, Any]):
    """The `LlamaConfig` of InternLM2 settings (`settings`)."""
    return native_llama_config(c, num_key_value_heads=c["num_key_value_heads"], attention_bias=bool(c["bias"]),
                               tie_word_embeddings=bool(c["tie_word_embeddings"]), rope_parameters=c["rope_parameters"])


def source_shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor name of an InternLM2 checkpoint -> its shape (no `output` when tied to the embeddings)."""
    v, h, f = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    heads, groups = c["num_attention_heads"], c["num_key_value_heads"]
    d = h // heads
    qkv = (heads + 2 * groups) * d
    shapes = {"model.tok_embeddings.weight": (v, h), "model.norm.weight": (h,)}
    if not c["tie_word_embeddings"]:
        shapes["output.weight"] = (v, h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "attention.wqkv.weight": (qkv, h), p + "attention.wo.weight": (h, heads * d),
                       p + "feed_forward.w1.weight": (f, h), p + "feed_forward.w3.weight": (f, h),
                       p + "feed_forward.w2.weight": (h, f), p + "attention_norm.weight": (h,),
                       p + "ffn_norm.weight": (h,)})
        if c["bias"]:
            shapes.update({p + "attention.wqkv.bias": (qkv,), p + "attention.wo.bias": (h,)})
    return shapes


def tensor_mapper(c: dict[str, Any]):
    """(InternLM2 name, tensor) -> [(LLaMA name, tensor)]: renamed; the fused q/k/v split along its rows."""
    groups = c["num_key_value_heads"]
    per_group = c["num_attention_heads"] // groups  # query heads that share one key/value head
    d = c["hidden_size"] // c["num_attention_heads"]

    def mapper(name: str, t: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name in RENAME:
            return [(RENAME[name], t)]
        layer, rest = LAYER.fullmatch(name).groups()
        module, kind = rest.rsplit(".", 1)  # kind: weight or bias
        p = f"model.layers.{layer}."
        if module == "attention.wqkv":  # [groups * (per_group + 2) * d, ...]: per KV head, its q heads, k, v
            blocks = t.reshape(groups, per_group + 2, d, *t.shape[1:])
            q = blocks[:, :per_group].reshape(groups * per_group * d, *t.shape[1:])  # query head g*per_group + j
            k, v = blocks[:, per_group], blocks[:, per_group + 1]
            return [(p + f"self_attn.q_proj.{kind}", q), (p + f"self_attn.k_proj.{kind}", k.reshape(-1, *t.shape[1:])),
                    (p + f"self_attn.v_proj.{kind}", v.reshape(-1, *t.shape[1:]))]
        return [(p + f"{LAYER_RENAME[module]}.{kind}", t)]

    return mapper


# --- tokenizer ------------------------------------------------------------------------------------------------
def token_text(token: str | dict) -> str:
    """A token as tokenizer_config.json writes it: its text, or an AddedToken's fields."""
    return token["content"] if isinstance(token, dict) else token


def build_tokenizer(folder: Path, c: dict[str, Any]):
    """InternLM2's tokenizer as a `PreTrainedTokenizerFast`: its SentencePiece pieces keep their ids, the tokens its
    tokenizer_config.json lists are special (split out before BPE, so the text after each gets its own dummy-prefix
    space, as in InternLM2's tokenizer), `<s>` is prepended as its add_bos_token says, and its chat template is kept."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    path = folder / "tokenizer.model"
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; InternLM2's tokenizer is this SentencePiece file: copy it from the "
                               "model's download")
    tok = bpe_tokenizer(path, user_defined=True)
    pieces = len(read_model(path).pieces)
    if pieces > c["vocab_size"]:
        raise InputError(f"{path}: {pieces} pieces exceed vocab_size={c['vocab_size']} in config.json: the tokenizer "
                         "is from another model")
    config_path = folder / "tokenizer_config.json"
    source = read_json(config_path, optional=True)
    for sid, entry in (source.get("added_tokens_decoder") or {}).items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if tok.token_to_id(str(content)) != int(sid):
            raise InputError(f"{config_path}: token {content!r} has id {sid}, but tokenizer.model gives it "
                             f"{tok.token_to_id(str(content))}: the two files are from different models")
    names = {key: token_text(source.get(key) or default) for key, default in
             (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "</s>"))}
    for key, token in names.items():
        if tok.token_to_id(token) is None:
            raise InputError(f"{config_path}: {key}={token!r} is not a token of tokenizer.model; the two files are "
                             "from different models")
    bos, eos = names["bos_token"], names["eos_token"]
    # InternLM2's tokenizer: bos before a text if add_bos_token, eos after it if add_eos_token
    first = [bos] if source.get("add_bos_token", True) else []
    last = [eos] if source.get("add_eos_token", False) else []
    single = " ".join([*first, "$A", *last])
    tok.post_processor = TemplateProcessing(
        single=single, pair=f"{single} {' '.join([*first, '$B', *last])}",
        special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys([*first, *last])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, **names,
        extra_special_tokens=[token_text(t) for t in source.get("additional_special_tokens") or []],
        padding_side=source.get("padding_side", "left"), clean_up_tokenization_spaces=False,
        model_max_length=c["max_position_embeddings"], chat_template=source.get("chat_template"),
    )


# --- the whole folder -------------------------------------------------------------------------------------------
def convert(folder: Path, out: Path) -> None:
    """Write the native LLaMA folder of the InternLM2 checkpoint in `folder` into the (empty, existing) folder `out`.

    Everything is checked (config, tokenizer, weight names) before the weights are streamed, shard by shard."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{config_path}: missing; {FIX_FOLDER}")
    c = settings(read_json(config_path), config_path)
    llama = llama_config(c)
    tokenizer = build_tokenizer(folder, c)
    shapes = source_shapes(c)
    files = checked_weights(folder, shapes, "InternLM2",
                            explain={"output.weight": TIED_OUTPUT} if c["tie_word_embeddings"] else None)
    end = [tokenizer.convert_tokens_to_ids(CHAT_END)] if CHAT_END in tokenizer.get_vocab() else []
    gen = eos_and_pad(read_json(folder / "generation_config.json", optional=True), c["eos_token_id"], end,
                      tokenizer.pad_token_id)

    write_folder(out, files, tensor_mapper(c), shapes, llama, tokenizer, gen)
