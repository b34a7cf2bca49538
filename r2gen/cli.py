"""What the entry scripts share: quiet third-party chatter, and the error boundary.

A user's mistake (`r2gen.errors.UserError`, or a required config key left at `???`) is printed as one line and
exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from r2gen.errors import UserError

log = logging.getLogger("r2gen")
# Errors whose message already names the key, the bad value and the fix: shown as one line, no traceback.
USER_ERRORS = (UserError, MissingMandatoryValue)


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_cli(fn: Callable[[DictConfig], object], cfg: DictConfig):
    """`fn(cfg)`, its result returned; a user error ends the command with one line and exit code 2."""
    quiet_libraries()
    try:
        return fn(cfg)
    except USER_ERRORS as e:
        if os.environ.get("R2GEN_TRACEBACK"):
            raise
        exit_with(e)


def exit_with(e: BaseException) -> None:
    """End the command on a user error: its message as one line on stderr, exit code 2."""
    print(f"error: {one_line(e)}\n(set R2GEN_TRACEBACK=1 for the full traceback)", file=sys.stderr)
    sys.exit(2)


def one_line(e: BaseException) -> str:
    """The message of a user error; OmegaConf's `???` error gets the fix added (it only names the key)."""
    if isinstance(e, MissingMandatoryValue):
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        return f"{key} is required and has no value: set it on the command line ({key}=...)"
    text = str(e)
    if "Original Traceback" in text:  # raised in a DataLoader worker: its message is the last line of the report
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if last.startswith(type(e).__module__) else last
    return text


def module_main(fn: Callable[[DictConfig], object], task_name: str | None = None, config_name: str = "config",
                result: Callable[[DictConfig, object], object] | None = None):
    """`python -m r2gen.<tool> key=value ...` and the `r2gen-*` console scripts: compose the package's config
    (`config_name`: the training config, `evaluate` or `predict`; the same overrides as train.py) and run `fn` on it with
    run_cli's error handling, in the run folder `outputs/<task_name>/<date>/<time>`. `result(cfg, fn's return)` is
    what Hydra receives as the job's return value (a sweeper optimises it)."""
    import hydra

    from r2gen.conf import CONF_DIR

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig):
        out = run_cli(fn, cfg)
        return result(cfg, out) if result else None

    if task_name and not any(a.startswith("task_name=") for a in sys.argv[1:]):
        sys.argv.insert(1, f"task_name={task_name}")
    return main()


def train_main():
    """`r2gen-train key=value ...`: train.py for an installed r2gen, from any folder."""
    from r2gen.train import monitored_score, train

    return module_main(train, result=monitored_score)


def evaluate_main():
    """`r2gen-evaluate ckpt=... [key=value ...]`: evaluate.py for an installed r2gen."""
    from r2gen.evaluate import evaluate

    return module_main(evaluate, config_name="evaluate")


def predict_main():
    """`r2gen-predict ckpt=... input=... [output=...]`: predict.py for an installed r2gen."""
    from r2gen.predict import predict

    return module_main(predict, config_name="predict")


def app_main():
    """`r2gen-app ckpt=... [host=127.0.0.1] [port=8000]`: python -m r2gen.app, the local web page."""
    from r2gen.app import serve

    return module_main(serve, config_name="app")


def export_main():
    """`r2gen-export ckpt=... out=... [part=lm]`: python -m r2gen.export."""
    from r2gen.export import export

    return module_main(export, config_name="export")


def verify_main():
    """`r2gen-verify lm=<name> ...`: python -m r2gen.verify."""
    from r2gen.verify import run

    return module_main(run, "verify")


def cache_main():
    """`r2gen-cache align=shallow ...`: python -m r2gen.cache."""
    from r2gen.cache import build_cache

    return module_main(build_cache, "cache")
