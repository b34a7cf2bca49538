"""The real Hydra config, composed as the CLI does and shrunk to seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from r2gen.conf import CONF_DIR

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
# The longitudinal demo with every part of a study's context on: the prior's images and report, the indication, the
# view positions (with SMALL: 24 subjects, ~54 training studies).
CONTEXT = ["data=demo_longitudinal", "context.prior_images=true", "context.prior_report=true",
           "context.indication=true", "context.view_positions=true"]
# The demo shrink minus its lm.build.* entries, which only lm=tiny has.
SMALL_NO_BUILD = [o for o in SMALL if not o.startswith("lm.build.")]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose a real config like Hydra's CLI does (with its hydra node, so ${hydra:...} resolves)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]  # Hydra's CLI hands the app its config without this node
    return cfg
