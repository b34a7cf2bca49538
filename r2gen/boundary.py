"""The error boundary every entry point runs inside: quiet third-party chatter, the config check, one line per
user error.

A ground-floor module: it imports nothing of r2gen but `errors` and the config check (`config_check`, itself on the
ground floor), so any layer may use it; the console scripts that dispatch to the tools live a floor above everything,
in `r2gen/cli.py`, which nothing imports.

A user's mistake (`r2gen.errors.UserError`, a required config key left at `???`, an interpolation that cannot be
resolved) is printed as one line and exits with code 2; anything else is a bug and keeps its traceback. The config
is checked (`r2gen.config_check`) before the command builds anything, and what the command registered with
`at_user_error` (the run folder it created, r2gen.run_folder) is undone before it exits on a user error.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from r2gen.conf import CONF_DIR
from r2gen.config_check import check_config, interpolation_message, missing_message
from r2gen.errors import UserError

log = logging.getLogger("r2gen")
# Errors whose message already names the key, the bad value and the fix: shown as one line, no traceback.
USER_ERRORS = (UserError, MissingMandatoryValue, InterpolationResolutionError)
# Log lines of third-party libraries that advertise rather than inform (Lightning's cloud-service tips).
ADVERTS = ("💡 Tip:", "litmodels", "litlogger")
_undo: list[Callable[[], object]] = []  # at_user_error's callbacks, run last-registered first


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to drop
            return True
        return not any(a in message for a in ADVERTS)


def quiet_libraries() -> None:
    """Hide third-party chatter: transformers' progress bars and notices, Lightning's advertising tips, and
    deprecation notices of libraries (DeprecationWarning, FutureWarning, PendingDeprecationWarning raised outside
    r2gen: a user cannot act on them). r2gen's own warnings, every other warning and every error still show; a
    `-W` / PYTHONWARNINGS the user gave wins."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
    if not sys.warnoptions:
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=category, module=r"r2gen(\.|$)")  # checked first


def run_cli(fn: Callable[[DictConfig], object], cfg: DictConfig, check: bool = True):
    """`fn(cfg)`, its result returned; the config is checked first (`check`); a user error ends the command with one
    line and exit code 2."""
    quiet_libraries()
    try:
        if check and isinstance(cfg, DictConfig):
            check_config(cfg)
        return fn(cfg)
    except USER_ERRORS as e:
        if os.environ.get("R2GEN_TRACEBACK"):
            undo()
            raise
        exit_with(e)


def at_user_error(callback: Callable[[], object]) -> None:
    """Have `callback()` run if this command ends on a user error (`exit_with`), before it exits."""
    _undo.append(callback)


def undo() -> None:
    """Run the `at_user_error` callbacks (last registered first), once; one that fails does not stop the others."""
    while _undo:
        callback = _undo.pop()
        try:
            callback()
        except Exception as e:  # noqa: BLE001 - cleaning up must not hide the user's error
            log.debug("cleanup after a user error failed: %s", e)


def exit_with(e: BaseException) -> None:
    """End the command on a user error: its message as one line on stderr, exit code 2."""
    undo()
    print(f"error: {one_line(e)}\n(set R2GEN_TRACEBACK=1 for the full traceback)", file=sys.stderr)
    sys.exit(2)


def one_line(e: BaseException) -> str:
    """The message of a user error; OmegaConf's `???` and interpolation errors get the fix added (they only name
    the key)."""
    if isinstance(e, MissingMandatoryValue):
        return missing_message(getattr(e, "full_key", None) or str(e).splitlines()[0])
    if isinstance(e, InterpolationResolutionError):
        return interpolation_message(e)
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

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig):
        out = run_cli(fn, cfg)
        return result(cfg, out) if result else None

    if task_name and not any(a.startswith("task_name=") for a in sys.argv[1:]):
        sys.argv.insert(1, f"task_name={task_name}")
    if not any(a.lstrip("+").startswith("hydra.job.name=") for a in sys.argv[1:]):
        sys.argv.insert(1, "hydra.job.name=cli")  # the job's log is <run>/cli.log, as for every console script
    return main()
