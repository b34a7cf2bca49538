"""A tiny random T5 checkpoint laid out as the hub ships Flan-T5: `T5ForConditionalGeneration` weights, a
SentencePiece-style (Unigram, `▁` word boundaries) `tokenizer.json` with T5's special tokens (`<pad>` 0, `</s>` 1,
`<unk>` 2, sentinel `<extra_id_N>` tokens last) that ends every text with `</s>`, and `tokenizer_config.json` naming
`T5Tokenizer`; saved with `save_pretrained` and read back through `from_pretrained`, as a real one is."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast, T5Config

from .lm_families import TEXTS

T5_SPECIAL = ["<pad>", "</s>", "<unk>"]
SENTINELS = 4  # Flan-T5 has 100 <extra_id_N>; a few keep the tiny vocabulary small
# Flan-T5's shape in miniature: gated-GELU feed-forward, untied output layer, relative position buckets
T5_SHAPE = dict(d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=8)


def t5_tokenizer(texts=TEXTS, vocab_size: int = 200) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=T5_SPECIAL, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    sentinels = [f"<extra_id_{i}>" for i in range(SENTINELS)]
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   extra_special_tokens=sentinels)
    return fast


def build_t5(out_dir: str | Path, seed: int = 0, **shape) -> str:
    """A tiny Flan-T5-like checkpoint in `out_dir` (seeded: the same seed gives the same weights)."""
    import torch

    tok = t5_tokenizer()
    config = T5Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id, **{**T5_SHAPE, **shape})
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    config_path = out_dir / "tokenizer_config.json"  # as the hub's: the class transformers maps T5 to
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "tokenizer_class": "T5Tokenizer"}))
    return str(out_dir)
