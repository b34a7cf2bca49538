"""The source formats r2gen converts (`lm.convert`), each one module: another remote-code family (InternLM2,
Baichuan2 -> llama) is its module plus one entry of `CONVERTERS`. A converter module has:

  NAME, VERSION       the family, and a number to bump when its output changes (cached conversions are redone)
  SOURCE_FILES        the non-weight files it reads (hub download patterns)
  matches(config)     whether a config.json dict is this family's
  convert(src, out)   write the native folder of the checkpoint in `src` into the empty folder `out`

(r2gen.convert.chatglm3 is one, built on the shared r2gen.convert.weights and r2gen.convert.sentencepiece.)
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from r2gen.errors import ConfigError, InputError, MissingFileError

# source format (lm.convert) -> its converter module, imported only when that format is used
CONVERTERS = {"chatglm3": "r2gen.convert.chatglm3", "internlm2": "r2gen.convert.internlm2",
              "baichuan2": "r2gen.convert.baichuan2"}


def family(name: str) -> ModuleType:
    """The converter module of source format `name` (lm.convert)."""
    if name not in CONVERTERS:
        raise ConfigError(f"lm.convert={name!r}: not a source format r2gen converts; choose {', '.join(CONVERTERS)} "
                          "(or null for a model transformers loads natively)")
    return importlib.import_module(CONVERTERS[name])


def detect(folder: str | Path) -> str | None:
    """The source format of the checkpoint in `folder` (from its config.json), or None if no converter knows it."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; a model folder needs its config.json")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); copy the model's own config.json there") from None
    return next((name for name in CONVERTERS if isinstance(config, dict) and family(name).matches(config)), None)
