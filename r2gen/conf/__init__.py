"""r2gen's Hydra configs, shipped with the package (found as `pkg://r2gen.conf`; `conf/` at the repository root links here)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent  # the one place that says where the configs are
