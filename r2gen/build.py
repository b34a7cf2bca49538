"""Turn a composed config into the run's parts: data on disk, the LM folder, the model, the DataModule, the Trainer.

Shared by `train` and `evaluate`, so both rebuild a model the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from r2gen.data.clean import get_cleaner
from r2gen.data.datamodule import ReportDataModule, read_annotation

log = logging.getLogger(__name__)


def prepare_data(data_cfg: DictConfig) -> None:
    """Generate the synthetic demo set on first use (a no-op for real data sets)."""
    if data_cfg.get("demo"):
        from r2gen.data.synthetic import generate_demo

        generate_demo(data_cfg.root, **data_cfg.demo)


def lm_path(cfg: DictConfig) -> str:
    """The LM folder or hub id to load.

    An LM config with a `build` block (lm=tiny) is a recipe for a model generated under `paths.cache_dir`: built on
    first use, with a tokenizer trained on this data set's cleaned training reports, into
    `<name_or_path>-<fingerprint>`. A `name_or_path` outside the cache folder is the user's own model (a folder or
    a hub id) and is loaded as given, so `lm.name_or_path=<dir>` works on top of any lm config.
    """
    name = str(cfg.lm.name_or_path)
    cache = Path(cfg.paths.cache_dir).resolve()
    if not cfg.lm.get("build") or not Path(name).resolve().is_relative_to(cache):
        return name
    from r2gen.models.tiny_lm import ensure_tiny_lm

    clean = get_cleaner(cfg.data.clean)
    reports = [clean(e["report"]) for e in read_annotation(cfg.data.annotation)["train"]]
    return str(ensure_tiny_lm(name, reports, cfg.lm.build))


def datamodule(cfg: DictConfig, model) -> ReportDataModule:
    """The DataModule, with image size and normalisation from the encoder's timm data config."""
    dc = model.encoder.data_config()
    size = cfg.data.image_size or dc["input_size"][-1]
    augment = cfg.data.augment
    if augment == "auto":  # jitter helps an encoder that learns; a frozen one would only see noise
        augment = model.encoder_mode != "frozen"
    elif not isinstance(augment, bool):
        raise ValueError(f"data.augment={augment!r}: choose auto, true or false")
    return ReportDataModule(cfg.data, size, dc["mean"], dc["std"], augment)


def trainer(cfg: DictConfig, with_callbacks: bool = True) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] if with_callbacks else []
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()] if with_callbacks else False
    return pl.Trainer(**cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=cfg.paths.output_dir)


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out
