"""Load any causal LM, or any text-to-text encoder-decoder (T5, Flan-T5, BART), and its tokenizer from config:
pad-token policy, dtype, attention, device map, quantization, remote code, generate kwargs.

Which of the two a folder is, is read from its config.json (`lm_kind`) before any weights are loaded: a decoder-only
LM loads with `AutoModelForCausalLM` and writes the report after the prompt; an encoder-decoder loads with
`AutoModelForSeq2SeqLM`, reads the prompt with the image tokens in its encoder and writes the report with its
decoder (r2gen.models.prompt says how each is fed).

Nothing here names a model family: what differs between families is said in `conf/lm/*.yaml`. How reports are decoded
is said by the `generate` group alone: a checkpoint's own `generation_config.json` (a chat model's sampling settings,
its repetition penalty, its max_length) gives only its stop tokens, and its sampling values when `generate.do_sample`
asks for sampling (`generation_config`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import OmegaConf
from pytorch_lightning.utilities import rank_zero_info
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
)

from r2gen.conf import CONF_DIR
from r2gen.convert.registry import detect
from r2gen.errors import ConfigError, InputError

log = logging.getLogger(__name__)

PAD_POLICIES = "auto, keep, eos, unk, add or an integer token id"
CAUSAL, SEQ2SEQ = "causal", "seq2seq"  # the two kinds of LM (`lm_kind`)
AUTO_CLASS = {CAUSAL: AutoModelForCausalLM, SEQ2SEQ: AutoModelForSeq2SeqLM}


def _remote_code_refused(e: ValueError, path: str) -> ConfigError | None:
    """transformers refuses code shipped with a model unless trusted; say which r2gen key turns it on."""
    if "trust_remote_code" not in str(e):
        return None
    return ConfigError(f"lm.name_or_path={path!r} ships its own model/tokenizer code, which runs only with "
                       f"lm.trust_remote_code=true: read that code (or the model card) first, then set it")


def _needs_conversion(path: str) -> ConfigError | None:
    """A folder of a family r2gen converts (r2gen.convert.registry) that this transformers has no class for: its own
    code targets an older transformers, so name the conversion, not the key or package transformers would ask for."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        return None
    try:
        name = detect(path)
    except InputError:  # an unreadable config.json: transformers' own load says what is wrong with it
        return None
    if name is None:
        return None
    config = json.loads(config_path.read_text())
    if config.get("model_type") in CONFIG_MAPPING_NAMES:  # native in this transformers: it loads as it is
        return None
    what = ", ".join(config.get("architectures") or []) or str(config.get("model_type"))
    lm = [f.stem for f in sorted((CONF_DIR / "lm").glob("*.yaml")) if OmegaConf.load(f).get("convert") == name]
    return ConfigError(f"lm.name_or_path={path} is a{'n' if what[0] in 'AEIOUaeiou' else ''} {what} checkpoint "
                       f"(model_type {config.get('model_type')!r}), whose own code does not run under transformers "
                       f"{transformers.__version__.split('.')[0]}: add lm.convert={name}"
                       f"{f' (or use lm={lm[0]})' if lm else ''}, or python -m r2gen.convert {name} {path} <out>")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    if (needed := _needs_conversion(name_or_path)) is not None:
        raise needed
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as e:  # a hub id offline, a typo, a folder without tokenizer files
        raise InputError(f"lm.name_or_path={name_or_path!r}: no tokenizer could be loaded from this folder or hub id "
                      f"(check the path; hub ids need the network or a local copy). Cause: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        refused = _remote_code_refused(e, name_or_path)
        if refused is None and Path(name_or_path).is_dir():  # e.g. a folder with config.json + weights only
            raise InputError(f"lm.name_or_path={name_or_path!r}: no tokenizer could be loaded from this folder; copy "
                             f"the model's tokenizer files into it (tokenizer.json or tokenizer.model, "
                             f"tokenizer_config.json: `tokenizer.save_pretrained(<folder>)`). "
                             f"Cause: {str(e).splitlines()[0]}") from None
        raise (refused or e) from None


def auto_pad_policy(tokenizer) -> str:
    """What `lm.pad_token=auto` does with this tokenizer: keep its own pad token; else pad with unk when unk is a
    token of its own (LLaMA, Mistral: R2GenGPT's choice); else with eos (Qwen2, GPT-2, NeoX, LLaMA-3). Padding is
    masked and never learned, so an existing token serves; a new one is only added when there is none to reuse."""
    if tokenizer.pad_token_id is not None:
        return "keep"
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id not in (tokenizer.eos_token_id,
                                                                             tokenizer.bos_token_id):
        return "unk"
    return "eos" if tokenizer.eos_token_id is not None else "add"


def apply_pad_policy(tokenizer, policy: Any) -> bool:
    """Give the tokenizer a pad token as `lm.pad_token` says. Returns True if a token was added (resize needed)."""
    if isinstance(policy, bool) or not isinstance(policy, (int, str)):
        raise ConfigError(f"lm.pad_token={policy!r}: choose {PAD_POLICIES}")
    if policy == "auto":
        chosen = auto_pad_policy(tokenizer)
        added = apply_pad_policy(tokenizer, chosen)
        why = {"keep": "the tokenizer's own pad token", "unk": "no pad token: padding with unk",
               "eos": "no pad token (nor a separate unk): padding with eos", "add": "no pad, unk or eos token: added"}
        rank_zero_info(f"lm.pad_token=auto: {why[chosen]} {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})")
        return added
    if isinstance(policy, int) or (isinstance(policy, str) and policy.isdigit()):
        pid = int(policy)
        if not 0 <= pid < len(tokenizer):
            raise ConfigError(f"lm.pad_token={pid}: not a token id of this tokenizer (size {len(tokenizer)})")
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pid)
        return False
    if policy == "keep":
        if tokenizer.pad_token_id is None:
            raise ConfigError("lm.pad_token=keep but the tokenizer has no pad token: choose eos, unk, add or an id")
        return False
    if policy in ("eos", "unk"):
        tok = getattr(tokenizer, f"{policy}_token")
        if tok is None:
            raise ConfigError(f"lm.pad_token={policy} but the tokenizer has no {policy} token: choose {PAD_POLICIES}")
        tokenizer.pad_token = tok
        return False
    if policy == "add":
        if tokenizer.pad_token_id is not None:
            return False
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        return True
    raise ConfigError(f"lm.pad_token={policy!r}: choose {PAD_POLICIES}")


def _dtype(name: str | None):
    if name in (None, "auto"):
        return "auto"
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise ConfigError(f"lm.dtype={name!r}: choose auto, float32, bfloat16 or float16")
    return dt


def auto_attention(setting: str | None, path: str, dtype: str | None, trust_remote_code: bool = False) -> str | None:
    """The `attn_implementation` to load with. An explicit `lm.attn_implementation` is passed through (transformers
    validates it against the architecture). `auto`: flash-attention 2 on a GPU when the flash-attn package is
    installed, the architecture supports it and the weights are half precision; otherwise None, with which
    transformers takes SDPA where the architecture has it and eager where it does not (e.g. Gemma-2)."""
    if setting != "auto":
        return setting or None
    if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # the load itself will say what is wrong with the folder
        return None
    mapping = MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING if config.is_encoder_decoder else MODEL_FOR_CAUSAL_LM_MAPPING
    cls = mapping.get(type(config), None)  # None for remote code: its own attention
    resolved = _dtype(dtype)
    if resolved == "auto":
        resolved = getattr(config.get_text_config(), "dtype", None) or getattr(config, "torch_dtype", None)
        resolved = getattr(torch, resolved) if isinstance(resolved, str) else resolved
    if cls is not None and cls._supports_flash_attn and resolved in (torch.bfloat16, torch.float16):
        return "flash_attention_2"
    return None


def quantization_config(quant_cfg, lm_cfg):
    """The `BitsAndBytesConfig` that `quant=` describes, or None for `quant=none`.

    Quantized weights cannot be trained, so quantization needs a frozen LM (LoRA on top is the QLoRA recipe).
    """
    if not quant_cfg:
        return None
    if not lm_cfg.freeze:
        which = ", ".join(f"quant.{k}=true" for k in ("load_in_4bit", "load_in_8bit") if quant_cfg.get(k)) or "quant"
        raise ConfigError(f"{which} with lm.freeze=false: quantized weights cannot be trained; "
                          "set lm.freeze=true (with lm.lora.r>0 to train adapters) or quant=none")
    import inspect

    from hydra.utils import instantiate
    from transformers import BitsAndBytesConfig

    known = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(quant_cfg) - known - {"_target_"})
    if unknown:  # BitsAndBytesConfig would only warn and drop them
        raise ConfigError(f"{', '.join(f'quant.{k}' for k in unknown)}: not a BitsAndBytesConfig option; "
                          f"choose from {', '.join(sorted(known))}")
    return instantiate(quant_cfg)


def lm_kind(path: str, trust_remote_code: bool = False) -> str:
    """`CAUSAL` or `SEQ2SEQ`, read from config.json alone, before any weights; anything else fails naming what the
    folder is. A decoder-only LM is what `AutoModelForCausalLM` loads (or, trusted, one whose own code names it in
    its auto_map); a text-to-text encoder-decoder (T5, BART, Pegasus) is what `AutoModelForSeq2SeqLM` loads. An
    encoder-decoder is never taken as a causal LM even where transformers has a `...ForCausalLM` class for it: that
    class keeps the decoder and drops the encoder's weights. A speech or vision encoder-decoder (Whisper, Donut) is
    refused: its encoder does not read text embeddings."""
    if (needed := _needs_conversion(path)) is not None:
        raise needed
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:  # no config.json, or a hub id offline: the tokenizer's load says the same for a typo
        raise InputError(f"lm.name_or_path={path!r}: no model config (config.json) could be read from this folder or "
                         f"hub id; point it at an LM's save_pretrained folder. Cause: {str(e).splitlines()[0]}"
                         ) from None
    except ValueError as e:  # remote code not trusted, or a model_type this transformers does not know
        refused = _remote_code_refused(e, path)
        if refused is not None:
            raise refused from None
        raise InputError(f"lm.name_or_path={path!r}: transformers cannot read its config.json ({str(e).splitlines()[0]}); "
                         f"r2gen loads an LM that AutoModelForCausalLM or AutoModelForSeq2SeqLM loads (or, with "
                         f"lm.trust_remote_code=true, one whose own code names one of them in its auto_map)") from None
    auto_map = (getattr(config, "auto_map", None) or {}) if trust_remote_code else {}
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    if encoder_decoder and (type(config) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING or "AutoModelForSeq2SeqLM" in auto_map):
        return SEQ2SEQ
    if not encoder_decoder and (type(config) in MODEL_FOR_CAUSAL_LM_MAPPING or "AutoModelForCausalLM" in auto_map):
        return CAUSAL
    archs = ", ".join(getattr(config, "architectures", None) or []) or "no architectures listed"
    kind = ("an encoder-decoder whose encoder does not read text (AutoModelForSeq2SeqLM does not load it)"
            if encoder_decoder else "not an LM that AutoModelForCausalLM loads")
    raise InputError(f"lm.name_or_path={path!r} is a {config.model_type!r} model ({archs}): {kind}. r2gen needs a "
                     f"decoder-only causal LM (llama, qwen2, mistral, gpt2, ...) or a text-to-text encoder-decoder "
                     f"(t5, bart, ...), or one with its own code (auto_map AutoModelForCausalLM or "
                     f"AutoModelForSeq2SeqLM) with lm.trust_remote_code=true; choose such a checkpoint")


def is_encoder_decoder(model) -> bool:
    """Whether a loaded LM (peft-wrapped or not) reads the prompt in an encoder and writes with a decoder."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def check_supported(lm_cfg) -> None:
    """`lm.unsupported` marks a known incompatibility: said before anything is downloaded, converted or loaded."""
    if lm_cfg.get("unsupported"):
        raise ConfigError(f"lm.name_or_path={lm_cfg.name_or_path!r} does not work with this r2gen: {lm_cfg.unsupported} "
                          "(set lm.unsupported=null to try anyway)")


def quantization_name(model) -> str:
    """How `model`'s weights are quantized, as transformers records it (`config.quantization_config`): "none", or
    the method (bitsandbytes: `nf4`, `fp4`, `llm_int8`)."""
    q = getattr(model.config, "quantization_config", None)
    if q is None:
        return "none"
    if isinstance(q, dict):
        return str(q.get("quant_method", "unknown"))
    return q.quantization_method() if hasattr(q, "quantization_method") else type(q).__name__


def load_lm(lm_cfg, quantization_config=None, path: str | None = None):
    """(model, tokenizer) as `lm_cfg` says (from `path` if given), via `AutoModelForCausalLM.from_pretrained` or, for
    an encoder-decoder, `AutoModelForSeq2SeqLM.from_pretrained` (`lm_kind`)."""
    path = str(path or lm_cfg.name_or_path)
    check_supported(lm_cfg)
    kind = lm_kind(path, bool(lm_cfg.trust_remote_code))  # before the tokenizer and the weights
    tokenizer = load_tokenizer(path, bool(lm_cfg.trust_remote_code))
    added = apply_pad_policy(tokenizer, lm_cfg.pad_token)
    if tokenizer.eos_token_id is None:
        raise InputError(f"the tokenizer of lm.name_or_path={path!r} has no eos token; reports need one")
    kwargs: dict[str, Any] = {"dtype": _dtype(lm_cfg.dtype), "trust_remote_code": bool(lm_cfg.trust_remote_code)}
    attention = auto_attention(lm_cfg.get("attn_implementation"), path, lm_cfg.dtype, bool(lm_cfg.trust_remote_code))
    if attention:
        kwargs["attn_implementation"] = attention
    if lm_cfg.get("device_map") is not None:
        kwargs["device_map"] = lm_cfg.device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = AUTO_CLASS[kind].from_pretrained(path, **kwargs)
    except ValueError as e:
        raise (_remote_code_refused(e, path) or e) from None
    if added:
        model.resize_token_embeddings(len(tokenizer))
    if lm_cfg.get("attn_implementation") == "auto":
        rank_zero_info(f"lm.attn_implementation=auto: {getattr(model.config, '_attn_implementation', None)}")
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def stop_ids(model_eos, tokenizer) -> int | list[int]:
    """Where generation stops: the tokenizer's eos (what every report is trained to end on), then the other stops the
    model's generation config names (`model_eos`: an id, a list or None) that are special tokens of the tokenizer: an
    instruct model's end of turn (Llama-3's <|eot_id|>, Qwen2's <|im_end|>, ChatGLM3's <|user|>). A model that emits
    one has finished its answer; without it generation would run on, and decoding (which drops special tokens, not
    what follows them) would append that text to the report. An ordinary token a config lists is left out: it may
    occur inside a report."""
    ids = model_eos if isinstance(model_eos, list | tuple) else [] if model_eos is None else [model_eos]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    extra = [int(i) for i in ids if int(i) in special and int(i) != tokenizer.eos_token_id]
    return [tokenizer.eos_token_id, *dict.fromkeys(extra)] if extra else tokenizer.eos_token_id


# Bookkeeping in a generation_config.json, not a decoding choice: the token ids are r2gen's (the tokenizer's, and the
# stop tokens `stop_ids` keeps), the rest records where the file came from.
_NOT_DECODING = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
                 "_from_model_config"}


def _sampling_only(key: str, value: Any) -> bool:
    """Whether transformers' own check (`GenerationConfig.validate`) accepts `key=value` when sampling and refuses it
    otherwise: temperature, top_p, top_k, min_p, typical_p, epsilon/eta cutoffs, ... as this transformers defines them."""
    def accepted(do_sample: bool) -> bool:
        try:
            GenerationConfig(do_sample=do_sample, **{key: value}).validate(strict=True)
        except (ValueError, TypeError):
            return False
        return True

    return accepted(True) and not accepted(False)


def checkpoint_generation(model) -> tuple[dict[str, Any], dict[str, Any]]:
    """The decoding settings of the model's own generation config (`generation_config.json`), as (sampling values,
    the other settings): what a chat checkpoint ships (do_sample, temperature, top_p, repetition_penalty,
    max_length...). Token ids are left out (`_NOT_DECODING`)."""
    if model.generation_config is None:
        return {}, {}
    own = {k: v for k, v in model.generation_config.to_diff_dict().items() if k not in _NOT_DECODING}
    sampling = {k: v for k, v in own.items() if k != "do_sample" and _sampling_only(k, v)}
    return sampling, {k: v for k, v in own.items() if k not in sampling}


def generation_config(model, tokenizer, kwargs: dict[str, Any]) -> GenerationConfig:
    """The generation config reports are decoded with: `generate.*` (`kwargs`) on transformers' defaults. From the
    model's own generation config only its stop tokens are taken (`stop_ids`), and its sampling values (temperature,
    top_p, ...) when `generate.do_sample=true` asks for sampling (a `generate.*` key still wins); everything else it
    sets (a chat model's do_sample, repetition_penalty, max_length) is not used, said in one log line. An unknown or
    inconsistent `generate.*` kwarg fails here, when the run starts, naming the config key, instead of being dropped
    silently by `generate`."""
    sampling, other = checkpoint_generation(model)
    gen = GenerationConfig()
    sample = bool(kwargs.get("do_sample"))
    if sample:
        gen.update(**sampling)
    unknown = gen.update(**kwargs)
    if unknown:
        keys = ", ".join(f"generate.{k}" for k in unknown)
        raise ConfigError(f"{keys}: not a generation option of transformers' GenerationConfig; remove it or fix the name")
    own_eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = stop_ids(kwargs["eos_token_id"] if "eos_token_id" in kwargs else own_eos, tokenizer)
    gen.bos_token_id = tokenizer.bos_token_id
    if is_encoder_decoder(model):  # where its decoder starts (T5: <pad>, BART: </s>): the model's, not a choice
        start = getattr(model.generation_config, "decoder_start_token_id", None) \
            if model.generation_config is not None else None
        gen.decoder_start_token_id = start if start is not None else model.config.decoder_start_token_id
    defaults = GenerationConfig._get_default_generation_params()  # what `generate` fills in for an unset key

    def used(key: str) -> Any:
        value = getattr(gen, key, None)
        return defaults.get(key, False if key.startswith("output_") else None) if value is None else value

    unused = {k: v for k, v in other.items() if used(k) != v}
    unused_sampling = {} if sample else {**({"do_sample": unused.pop("do_sample")} if "do_sample" in unused else {}),
                                         **sampling}
    if unused_sampling or unused:
        said = lambda d: ", ".join(f"{k}={v!r}" for k, v in d.items())  # noqa: E731
        why = []
        if unused_sampling:
            why.append(f"{said(unused_sampling)} only apply to sampling, and generate.do_sample={kwargs.get('do_sample')} "
                       f"(set generate.do_sample=true to sample with them)")
        if unused:
            why.append(f"{said(unused)}: the generate group decides how reports are decoded (set generate.<key> to "
                       f"change one)")
        rank_zero_info(f"generation: not using these settings of the LM's generation_config.json: {'; '.join(why)}")
    try:
        gen.validate(strict=True)
    except ValueError as e:
        raise ConfigError(f"generate.*: inconsistent generation options: {e}") from None
    return gen
