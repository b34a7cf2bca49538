"""Running the entry points (`train.py`, `evaluate.py`, ...) in a fresh process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .paths import ROOT


def cli_env(cache_dir: Path) -> dict[str, str]:
    """Environment for running train.py / evaluate.py as a user would, in a fresh process."""
    return {**os.environ, "R2GEN_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(script: str, *args: str, cache_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `train.py` / `evaluate.py` in a fresh process from the repository root, as a user would."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=timeout)
