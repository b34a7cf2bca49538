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


def module_main(fn: Callable[[DictConfig], object], task_name: str) -> None:
    """`python -m r2gen.<tool> key=value ...`: compose the training config (same overrides as train.py) and run
    `fn` on it with run_cli's error handling, in its own run folder `outputs/<task_name>/<date>/<time>`."""
    import hydra

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")

    @hydra.main(version_base="1.3", config_path=conf, config_name="config")
    def main(cfg: DictConfig) -> None:
        run_cli(fn, cfg)

    if not any(a.startswith("task_name=") for a in sys.argv[1:]):
        sys.argv.insert(1, f"task_name={task_name}")
    main()
