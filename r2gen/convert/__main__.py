"""`python -m r2gen.convert <format> <source> <out>`: write a native transformers folder from a checkpoint whose hub
code no longer runs (see r2gen.convert). Training does this by itself with `lm.convert`; this is for a folder to
keep, share or load elsewhere (`lm.name_or_path=<out>` with `lm.convert=null`)."""

from __future__ import annotations

import argparse
import os
import time

from r2gen.boundary import USER_ERRORS, exit_with, quiet_libraries
from r2gen.convert.folder import convert
from r2gen.convert.registry import CONVERTERS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m r2gen.convert",
        description="Convert a checkpoint whose hub code targets an older transformers into a native folder that "
                    "AutoModelForCausalLM / AutoTokenizer load without trust_remote_code. The source is only read; "
                    "its .py files are never run.")
    parser.add_argument("format", choices=sorted(CONVERTERS), help="the source's format")
    parser.add_argument("source", help="the checkpoint: a folder (config.json, tokenizer.model, weights) or a hub id; "
                                       "offline, a hub id is read from the local Hugging Face cache")
    parser.add_argument("out", help="the folder to write; must not exist, or be empty")
    args = parser.parse_args(argv)

    quiet_libraries()
    start = time.perf_counter()
    try:
        out = convert(args.format, args.source, args.out, what="source")
    except USER_ERRORS as e:
        if os.environ.get("R2GEN_TRACEBACK"):
            raise
        exit_with(e)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s: load it with lm.name_or_path={out} "
          "(and lm.convert=null), or AutoModelForCausalLM.from_pretrained")


if __name__ == "__main__":
    main()
