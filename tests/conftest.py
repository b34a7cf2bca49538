"""Hermetic test setup: no network, the real Hydra config composed and shrunk to seconds on a CPU.

Fixtures only; the helpers they and the tests use live in tests/helpers/.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a failed hub lookup otherwise retries for ~46 s
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from .helpers.config import SMALL, compose_cfg  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One demo set and one tiny LM for the whole session (both are keyed by their parameters)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    def make(*overrides: str, config_name: str = "config", small: bool = True) -> DictConfig:
        return compose_cfg(config_name, (SMALL if small else []) + list(overrides), tmp_path / "run", cache_dir)

    return make


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, cache_dir) -> Path:
    """One tiny demo training run (1 epoch) shared by tests that only read its checkpoints."""
    from r2gen.train import train  # ~9 s of imports (Lightning): paid only by a session that uses this run

    out = tmp_path_factory.mktemp("demo_run")
    train(compose_cfg("config", SMALL + ["test_after_fit=false"], out, cache_dir))
    return out
