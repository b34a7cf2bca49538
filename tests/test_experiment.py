"""Experiment files (`conf/experiment/`) are deltas of existing keys: each composes, and sets nothing the base
config lacks (a misspelt key would otherwise be added silently and read by nothing)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from .helpers.config import compose_cfg
from .helpers.paths import ROOT

EXPERIMENTS = sorted(p.stem for p in (ROOT / "r2gen" / "conf" / "experiment").glob("*.yaml"))


def leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_experiment_composes_and_only_changes_existing_keys(name, tmp_path):
    cfg = compose_cfg("config", [f"experiment={name}", "data.root=/data/iu_xray"], tmp_path / "run", tmp_path / "cache")
    own = OmegaConf.to_container(OmegaConf.load(ROOT / "r2gen" / "conf" / "experiment" / f"{name}.yaml"))
    own.pop("defaults", None)
    for key in leaves(own):
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
        assert OmegaConf.select(cfg, key) == OmegaConf.select(OmegaConf.create(own), key), key  # the experiment's value wins


def test_the_r2gengpt_recipe_is_r2gengpt_s_shape(tmp_path):
    cfg = compose_cfg("config", ["experiment=r2gengpt_iu_xray_shallow", "data.root=/d"], tmp_path / "r", tmp_path / "c")
    assert cfg.align.encoder == "frozen" and cfg.lm.freeze and cfg.lm.lora.r == 0  # only the projection trains
    assert cfg.encoder.name.startswith("swin_base") and cfg.data.name == "iu_xray" and cfg.trainer.strategy == "ddp"


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_logger_adds_to_csv_and_tensorboard_or_names_its_extra(tracker, make_cfg):
    import importlib.util

    from r2gen import build
    from r2gen.errors import ConfigError

    cfg = make_cfg(f"logger={tracker}")
    assert {"csv", tracker} <= set(cfg.logger) and cfg.logger[tracker].log_model is False  # never uploads a model
    if importlib.util.find_spec(tracker) is None:
        with pytest.raises(ConfigError, match=rf'pip install -e "\.\[{tracker}\]"'):
            build.trainer(cfg)
    else:  # offline / local file store: nothing leaves the machine
        assert any(tracker in type(lg).__name__.lower() for lg in build.trainer(cfg).loggers)
