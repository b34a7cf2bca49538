"""r2gen's Hydra configs, shipped with the package (found as `pkg://r2gen.conf`; `conf/` at the repository root links here)."""
