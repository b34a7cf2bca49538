"""Build a small causal LM and its tokenizer locally, saved as a normal Hugging Face model folder.

The demo (`lm=tiny`) and the tests use this instead of downloading weights: the folder is written with
`save_pretrained` and read back with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`,
the same path a real backbone takes. The tokenizer is a byte-level BPE trained on the given texts, so it
round-trips any text exactly.

A built LM also has an *identity* (`folder_identity`): its tokenizer's JSON, its config, its special-token roles and
its seed, all plain data. A checkpoint stores it (r2gen.checkpoint), so that the very same LM and tokenizer are
rebuilt from the checkpoint alone (`ensure_lm_from_identity`), whatever data set the checkpoint is then used on and
with the cache folder gone: a tokenizer trained on other reports would give the trained weights other ids. An
identity read from a checkpoint is untrusted input: `check_identity` bounds and validates it before anything is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from r2gen.errors import InputError

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int, special: Mapping[str, str | None] = SPECIAL,
                    extra_tokens: Iterable[str] = (), adds_bos: bool = True):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`; `special` maps role -> token (None: absent);
    `extra_tokens` are further special tokens without a role (e.g. a family's prompt markers). `adds_bos`: it starts
    every text with its BOS token (if it has one), as LLaMA's does; false: it names one but never adds it, as
    GPT-2's and BLOOM's do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    roles = {k: v for k, v in special.items() if v is not None}
    tok = Tokenizer(models.BPE(unk_token=roles.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(dict.fromkeys([*roles.values(), *extra_tokens])),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = roles.get("bos_token")
    if adds_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def causal_lm_config(tokenizer, model_type: str = "llama", special: Mapping[str, str | None] = SPECIAL,
                     **config_kwargs: Any):
    """The `model_type` config for `tokenizer`: its vocabulary size and special-token ids, and `config_kwargs`."""
    from transformers import AutoConfig

    # a role the tokenizer lacks is None in the config too, not the family's default id (which may be out of range)
    ids = {f"{role[:-6]}_token_id": None if t is None else tokenizer.convert_tokens_to_ids(t)
           for role, t in special.items() if role != "unk_token"}
    return AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **config_kwargs)


def save_causal_lm(out_dir: str | Path, tokenizer, config, seed: int = 0) -> Path:
    """A randomly initialised model of `config` (seeded with `seed`: the same config and seed give the same
    weights) saved with `tokenizer` to `out_dir` by `save_pretrained`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_causal_lm(out_dir: str | Path, texts: Iterable[str], model_type: str = "llama", vocab_size: int = 1024,
                    special: Mapping[str, str | None] = SPECIAL, seed: int = 0, extra_tokens: Iterable[str] = (),
                    adds_bos: bool = True, **config_kwargs: Any) -> Path:
    """Train a tokenizer, build a randomly initialised `model_type` model from its config, save both to `out_dir`.

    `config_kwargs` are that family's config fields (hidden_size, num_hidden_layers, ...).
    """
    tokenizer = train_tokenizer(texts, vocab_size, special, extra_tokens, adds_bos)
    return save_causal_lm(out_dir, tokenizer, causal_lm_config(tokenizer, model_type, special, **config_kwargs), seed)


def fingerprint(spec: Mapping[str, Any], texts: list[str]) -> str:
    """Short hash of the build spec and the training texts: a changed data set gets its own model folder."""
    h = hashlib.sha256(json.dumps(dict(spec), sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def ensure_tiny_lm(base_dir: str | Path, texts: list[str], spec: Mapping[str, Any]) -> Path:
    """Return `<base_dir>-<fingerprint>`, building it first if absent."""
    spec = dict(spec)
    target = Path(f"{base_dir}-{fingerprint(spec, texts)}")
    _build_once(target, lambda tmp: build_causal_lm(tmp, texts, **spec))
    return target


def _build_once(target: Path, build) -> None:
    """Run `build(folder)` unless `target` holds a model already. Written to a temporary folder and renamed into
    place, so an interrupted build or two runs building the same model at once never leave a half-written folder."""
    if (target / "config.json").exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its folder is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- identity: what a checkpoint stores to rebuild exactly this LM and tokenizer ----------------------------------
IDENTITY_KEYS = ("tokenizer", "config", "special", "seed")
MAX_TOKENIZER_CHARS = 16 * 2**20  # a built tokenizer's JSON: ~60 kB at the demo's 1024 tokens
MAX_CONFIG_CHARS = 64 * 2**10
MAX_PARAMETERS = 2 * 10**9  # r2gen builds small LMs; a recipe beyond this is not one
MAX_VOCAB = 2**20
# config.json keys that describe the saved file rather than the model; `for_model` sets them itself
FILE_KEYS = ("architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path", "model_type")
_IDENTITIES: dict[str, dict[str, Any]] = {}  # folder -> its identity (built folders never change)


def folder_identity(folder: str | Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of the LM built into `folder` from the recipe `spec` (`lm.build`): plain strings and numbers.
    Read once per folder and remembered, so a checkpoint written later needs no file."""
    key = str(Path(folder).resolve())
    if key not in _IDENTITIES:
        folder = Path(folder)
        special = dict(spec.get("special") or SPECIAL)
        _IDENTITIES[key] = {"tokenizer": (folder / "tokenizer.json").read_text(encoding="utf-8"),
                            "config": (folder / "config.json").read_text(encoding="utf-8"),
                            "special": {k: None if v is None else str(v) for k, v in special.items()},
                            "seed": int(spec.get("seed", 0))}
    return _IDENTITIES[key]


def identity_fingerprint(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()[:12]


def ensure_lm_from_identity(base_dir: str | Path, identity: Mapping[str, Any]) -> Path:
    """`<base_dir>-<hash of identity>`: the LM `identity` describes (checked by `check_identity`), built first if
    absent; no tokenizer is trained, and no data is read."""
    target = Path(f"{base_dir}-{identity_fingerprint(identity)}")

    def build(tmp: Path) -> None:
        tokenizer, config = _parts(identity, "the stored LM")
        save_causal_lm(tmp, tokenizer, config, identity["seed"])

    _build_once(target, build)
    _IDENTITIES[str(target.resolve())] = dict(identity)
    return target


def check_identity(identity: Any, where: str) -> dict[str, Any]:
    """`identity` (from a checkpoint: untrusted) if it describes an LM `ensure_lm_from_identity` can rebuild, bounded
    in size; anything else is one `InputError` naming `where` (e.g. `ckpt=<path>`) and the part that is wrong."""
    bad = f"{where}: its stored LM (r2gen.lm)"
    fix = "the file is damaged or was not written by r2gen's train.py: use a checkpoint train.py wrote"
    if not isinstance(identity, dict) or set(identity) != set(IDENTITY_KEYS):
        keys = sorted(map(str, identity)) if isinstance(identity, dict) else type(identity).__name__
        raise InputError(f"{bad} is {keys}, expected the keys {list(IDENTITY_KEYS)}; {fix}")
    for key, limit in (("tokenizer", MAX_TOKENIZER_CHARS), ("config", MAX_CONFIG_CHARS)):
        value = identity[key]
        if not isinstance(value, str) or len(value) > limit:
            size = f"{len(value):,} characters" if isinstance(value, str) else type(value).__name__
            raise InputError(f"{bad}: {key} is {size}, expected a JSON text of at most {limit:,}; {fix}")
    seed = identity["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise InputError(f"{bad}: seed={seed!r}, expected an integer in [0, 2**32); {fix}")
    special = identity["special"]
    if not isinstance(special, dict) or not set(special) <= set(SPECIAL) or \
            not all(v is None or (isinstance(v, str) and 0 < len(v) <= 64) for v in special.values()):
        raise InputError(f"{bad}: special={str(special)[:200]!r}, expected {{role: token or null}} with roles from "
                         f"{list(SPECIAL)}; {fix}")
    _parts(identity, bad, fix)
    return dict(identity)


def _parts(identity: Mapping[str, Any], bad: str, fix: str = ""):
    """(tokenizer, config) of a checked identity; what does not parse or does not fit is an `InputError`."""
    from tokenizers import Tokenizer
    from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedTokenizerFast

    try:
        tok = Tokenizer.from_str(identity["tokenizer"])
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a JSON it cannot read
        raise InputError(f"{bad}: the tokenizer does not load ({str(e).splitlines()[0][:160]}); {fix}") from None
    missing = [t for t in identity["special"].values() if t is not None and tok.token_to_id(t) is None]
    if missing:
        raise InputError(f"{bad}: special tokens {missing} are not in its tokenizer; {fix}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok,
                                        **{k: v for k, v in identity["special"].items() if v is not None})
    try:
        fields = json.loads(identity["config"])
    except json.JSONDecodeError as e:
        raise InputError(f"{bad}: the config is not JSON ({e.msg}); {fix}") from None
    model_type = fields.get("model_type") if isinstance(fields, dict) else None
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise InputError(f"{bad}: the config's model_type={model_type!r} is not a transformers model type; {fix}")
    foreign = [k for k in ("auto_map", "quantization_config") if k in fields]
    if foreign:
        raise InputError(f"{bad}: the config has {foreign}, which a model r2gen builds never has; {fix}")
    try:
        config = AutoConfig.for_model(model_type, **{k: v for k, v in fields.items() if k not in FILE_KEYS})
    except (TypeError, ValueError) as e:
        raise InputError(f"{bad}: the config does not load ({str(e).splitlines()[0][:160]}); {fix}") from None
    text = config.get_text_config()
    sizes = {k: getattr(text, k, None) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes.values()) or \
            sizes["vocab_size"] > MAX_VOCAB:
        raise InputError(f"{bad}: the config has {sizes}, expected positive sizes (vocab_size <= {MAX_VOCAB}); {fix}")
    if sizes["vocab_size"] != len(tokenizer):
        raise InputError(f"{bad}: the config's vocab_size={sizes['vocab_size']} does not match its tokenizer "
                         f"({len(tokenizer)} tokens); {fix}")
    h, inner = sizes["hidden_size"], getattr(text, "intermediate_size", None) or 4 * sizes["hidden_size"]
    n = 2 * sizes["vocab_size"] * h + sizes["num_hidden_layers"] * (4 * h * h + 3 * h * int(inner))
    if n > MAX_PARAMETERS:
        raise InputError(f"{bad}: the config describes a model of ~{n:,} parameters; r2gen builds LMs of at most "
                         f"{MAX_PARAMETERS:,}; {fix}")
    return tokenizer, config
