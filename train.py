"""Train a report generator: `python train.py [group=option] [key=value ...]` (see conf/config.yaml)."""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored score (`monitor.metric`, val/score by default) of the run's last validation, so a
    Hydra sweeper (`-m`, Optuna) can optimise it."""
    from r2gen.boundary import run_cli
    from r2gen.train import monitored_score, train

    return monitored_score(cfg, run_cli(train, cfg))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
