"""Hermetic test setup: no network, the real Hydra config composed and shrunk to seconds on a CPU."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a failed hub lookup otherwise retries for ~46 s
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
SHARED_DATA = ROOT.parent / "shared" / "data"

# A demo small enough for seconds: 32 px, a handful of studies, a 2-layer LM.
SMALL = [
    "data.demo.n_train=24", "data.demo.n_val=6", "data.demo.n_test=6", "data.image_size=32",
    "data.batch_size=8", "data.eval_batch_size=8",
    "lm.build.hidden_size=32", "lm.build.intermediate_size=64", "lm.build.num_hidden_layers=2",
    "lm.build.num_attention_heads=2", "lm.build.num_key_value_heads=2", "lm.build.vocab_size=300",
    "generate.max_new_tokens=8", "generate.num_beams=2",
    "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1",
    "~logger.tensorboard",
]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose a real config like Hydra's CLI does (with its hydra node, so ${hydra:...} resolves)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]  # Hydra's CLI hands the app its config without this node
    return cfg


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One demo set and one tiny LM for the whole session (both are keyed by their parameters)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    def make(*overrides: str, config_name: str = "config", small: bool = True) -> DictConfig:
        return compose_cfg(config_name, (SMALL if small else []) + list(overrides), tmp_path / "run", cache_dir)

    return make


def cli_env(cache_dir: Path) -> dict[str, str]:
    """Environment for running train.py / evaluate.py as a user would, in a fresh process."""
    return {**os.environ, "R2GEN_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(script: str, *args: str, cache_dir: Path) -> subprocess.CompletedProcess:
    """Run `train.py` / `evaluate.py` in a fresh process from the repository root, as a user would."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=600)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root` with its bytes' hash and mode: equal snapshots mean the tree is
    byte-identical (nothing written, moved, added or deleted)."""
    import hashlib

    out: dict[str, tuple] = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_mode)
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, cache_dir) -> Path:
    """One tiny demo training run (1 epoch) shared by tests that only read its checkpoints."""
    from r2gen.train import train

    out = tmp_path_factory.mktemp("demo_run")
    train(compose_cfg("config", SMALL + ["test_after_fit=false"], out, cache_dir))
    return out
