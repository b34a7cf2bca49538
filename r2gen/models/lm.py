"""Load any causal LM and its tokenizer from config: pad-token policy, dtype, attention, LoRA, generate kwargs.

Nothing here names a model family: what differs between families is said in `conf/lm/*.yaml`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

log = logging.getLogger(__name__)

PAD_POLICIES = "keep, eos, unk, add or an integer token id"


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as e:  # a hub id offline, a typo, a folder without tokenizer files
        raise OSError(f"lm.name_or_path={name_or_path!r}: no tokenizer could be loaded from this folder or hub id "
                      f"(check the path; hub ids need the network or a local copy). Cause: {str(e).splitlines()[0]}") from None


def apply_pad_policy(tokenizer, policy: Any) -> bool:
    """Give the tokenizer a pad token as `lm.pad_token` says. Returns True if a token was added (resize needed)."""
    if isinstance(policy, bool) or not isinstance(policy, (int, str)):
        raise ValueError(f"lm.pad_token={policy!r}: choose {PAD_POLICIES}")
    if isinstance(policy, int) or (isinstance(policy, str) and policy.isdigit()):
        pid = int(policy)
        if not 0 <= pid < len(tokenizer):
            raise ValueError(f"lm.pad_token={pid}: not a token id of this tokenizer (size {len(tokenizer)})")
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pid)
        return False
    if policy == "keep":
        if tokenizer.pad_token_id is None:
            raise ValueError("lm.pad_token=keep but the tokenizer has no pad token: choose eos, unk, add or an id")
        return False
    if policy in ("eos", "unk"):
        tok = getattr(tokenizer, f"{policy}_token")
        if tok is None:
            raise ValueError(f"lm.pad_token={policy} but the tokenizer has no {policy} token: choose {PAD_POLICIES}")
        tokenizer.pad_token = tok
        return False
    if policy == "add":
        if tokenizer.pad_token_id is not None:
            return False
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        return True
    raise ValueError(f"lm.pad_token={policy!r}: choose {PAD_POLICIES}")


def _dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"lm.dtype={name!r}: choose auto, float32, bfloat16 or float16")
    return dt


def load_lm(lm_cfg, quantization_config=None, path: str | None = None):
    """(model, tokenizer) as `lm_cfg` says, via `AutoModelForCausalLM.from_pretrained` (from `path` if given)."""
    path = str(path or lm_cfg.name_or_path)
    tokenizer = load_tokenizer(path, bool(lm_cfg.trust_remote_code))
    added = apply_pad_policy(tokenizer, lm_cfg.pad_token)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of lm.name_or_path={path!r} has no eos token; reports need one")
    kwargs: dict[str, Any] = {"dtype": _dtype(lm_cfg.dtype), "trust_remote_code": bool(lm_cfg.trust_remote_code)}
    if lm_cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = lm_cfg.attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if added:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def generation_config(model, tokenizer, kwargs: dict[str, Any]) -> GenerationConfig:
    """The model's generation config updated with `generate.*`; an unknown or inconsistent kwarg fails here,
    when the run starts, naming the config key, instead of being dropped silently by `generate`."""
    gen = copy.deepcopy(model.generation_config) if model.generation_config is not None else GenerationConfig()
    unknown = gen.update(**kwargs)
    if unknown:
        keys = ", ".join(f"generate.{k}" for k in unknown)
        raise ValueError(f"{keys}: not a generation option of transformers' GenerationConfig; remove it or fix the name")
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    try:
        gen.validate(strict=True)
    except ValueError as e:
        raise ValueError(f"generate.*: inconsistent generation options: {e}") from None
    return gen
