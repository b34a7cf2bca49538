"""Reports for new studies: `python predict.py ckpt=<run>/checkpoints/best.ckpt input=<folder|table|[a.png,b.dcm]>`."""

import os
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from r2gen.boundary import run_cli
    from r2gen.predict import predict

    run_cli(predict, cfg)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
