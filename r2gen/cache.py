"""Build the frozen-feature cache ahead of training: `python -m r2gen.cache align=shallow [data=... encoder=...]`.

Takes the same overrides as `train.py` and builds its image encoder the same way (same seed, same encoder weights,
same image transform; the LM is never loaded), then runs every train/val/test image through the frozen encoder
once. A later `train.py` or `evaluate.py` with that config finds the files (their names hash images, encoder
weights, transform and `data.feature_cache_dtype`) and never runs the encoder; runs that share `paths.cache_dir`
(or `data.feature_cache=<folder>`) share them. It also runs the set-up check, whose manifest
(`<paths.cache_dir>/setup-check/`) lets every later run, and every rank of a multi-GPU run, stat the images instead
of opening them. Useful to encode once on one GPU before many runs.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from r2gen import build
from r2gen.boundary import module_main
from r2gen.data.datamodule import SPLITS
from r2gen.errors import ConfigError
from r2gen.models.module import image_encoder
from r2gen.models.trainable import apply_align

log = logging.getLogger(__name__)


def build_cache(cfg: DictConfig) -> dict[str, str]:
    """Encode every image of every split into the cache `cfg` points at; returns split -> feature file. Only the
    encoder is built: the LM (gigabytes to load, or to convert) plays no part in the features or their files' names."""
    pl.seed_everything(cfg.seed, workers=True)  # as train.py: a randomly initialised frozen encoder matches too
    build.prepare_data(cfg.data)
    encoder = image_encoder(cfg)
    mode = apply_align(encoder, cfg.align)
    dm = build.encoder_datamodule(cfg, encoder, mode)
    if dm.features is None:
        raise ConfigError(f"data.feature_cache={cfg.data.get('feature_cache')}: this config caches no features "
                          f"(align.encoder={mode}); the cache serves a frozen encoder on un-augmented "
                          "images: add align=shallow (and data.feature_cache=auto or a folder)")
    if torch.cuda.is_available():
        encoder.cuda()
    dm.setup()
    files = {}
    for split in SPLITS:
        ds = dm.features.dataset(split, dm.splits[split])
        files[split] = str(ds.path)
        print(f"{split:<5}  {len(ds):>6} studies  {ds.path}")
    print(f"encoded {dm.features.encoded_images} images (0: every file was already there)")
    return files


def main():
    """`python -m r2gen.cache key=value ...` (and its console script, r2gen.cli)."""
    return module_main(build_cache, "cache")


if __name__ == "__main__":
    main()
