"""Checkpoints whose hub code no longer runs, converted once into native transformers folders: no remote code.

`lm.convert: chatglm3` (conf/lm/chatglm3-6b.yaml; internlm2 and baichuan2 alike) makes `r2gen.build.lm_path`
call `ensure_converted`, which writes `<paths.cache_dir>/converted/<family>-<fingerprint>` on first use (config.json, model*.safetensors, tokenizer.json,
tokenizer_config.json, chat_template.jinja, generation_config.json) and reuses it afterwards; the LM then loads
from there like any native model. `python -m r2gen.convert <family> <source> <out>` writes one by hand.

  registry.py         the source formats (`CONVERTERS`: where a new one is added), `detect` from a config.json
  folder.py           the source's folder (only read), the converted one written whole: `convert`, `ensure_converted`
  chatglm3.py         a converter: ChatGLM3 -> transformers' GLM
  internlm2.py        a converter: InternLM2 -> transformers' LLaMA
  baichuan2.py        a converter: Baichuan2-7B -> transformers' LLaMA (13B, ALiBi, refused)
  weights.py          shared by converters: the weights shard by shard, renamed, as safetensors
  sentencepiece.py    shared by converters: a SentencePiece model as a fast tokenizer
"""

from r2gen.convert.folder import MARKER, convert, ensure_converted
from r2gen.convert.registry import detect

__all__ = ["MARKER", "convert", "detect", "ensure_converted"]
