"""Score a checkpoint on the test split: `python evaluate.py ckpt=<run>/checkpoints/best.ckpt [key=value ...]`."""

import os
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from r2gen.boundary import run_cli
    from r2gen.evaluate import evaluate

    run_cli(evaluate, cfg)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
