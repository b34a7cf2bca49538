"""What the entry scripts share: quiet third-party chatter, and turn a config or input mistake into one clear line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("r2gen")
# Errors whose message already names the key, the bad value and the fix: shown as one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, OSError, OmegaConfBaseException)


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_cli(fn: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    quiet_libraries()
    try:
        fn(cfg)
    except USER_ERRORS as e:
        if os.environ.get("R2GEN_TRACEBACK"):
            raise
        print(f"error: {e}\n(set R2GEN_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
