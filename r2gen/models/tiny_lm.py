"""Build a small causal LM and its tokenizer locally, saved as a normal Hugging Face model folder.

The demo (`lm=tiny`) and the tests use this instead of downloading weights: the folder is written with
`save_pretrained` and read back with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`,
the same path a real backbone takes. The tokenizer is a byte-level BPE trained on the given texts, so it
round-trips any text exactly.
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

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int, special: Mapping[str, str | None] = SPECIAL,
                    extra_tokens: Iterable[str] = ()):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`; `special` maps role -> token (None: absent);
    `extra_tokens` are further special tokens without a role (e.g. a family's prompt markers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)


def build_causal_lm(out_dir: str | Path, texts: Iterable[str], model_type: str = "llama", vocab_size: int = 1024,
                    special: Mapping[str, str | None] = SPECIAL, seed: int = 0, extra_tokens: Iterable[str] = (),
                    **config_kwargs: Any) -> Path:
    """Train a tokenizer, build a randomly initialised `model_type` model from its config, save both to `out_dir`.

    `config_kwargs` are that family's config fields (hidden_size, num_hidden_layers, ...).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = train_tokenizer(texts, vocab_size, special, extra_tokens)
    # a role the tokenizer lacks is None in the config too, not the family's default id (which may be out of range)
    ids = {f"{role[:-6]}_token_id": None if t is None else tokenizer.convert_tokens_to_ids(t)
           for role, t in special.items() if role != "unk_token"}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def fingerprint(spec: Mapping[str, Any], texts: list[str]) -> str:
    """Short hash of the build spec and the training texts: a changed data set gets its own model folder."""
    h = hashlib.sha256(json.dumps(dict(spec), sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def ensure_tiny_lm(base_dir: str | Path, texts: list[str], spec: Mapping[str, Any]) -> Path:
    """Return `<base_dir>-<fingerprint>`, building it first if absent.

    Written to a temporary folder and renamed into place, so an interrupted build or two runs building the
    same model at once never leave a half-written folder.
    """
    spec = dict(spec)
    target = Path(f"{base_dir}-{fingerprint(spec, texts)}")
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        build_causal_lm(tmp, texts, **spec)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its folder is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
