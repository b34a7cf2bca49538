"""Turn a composed config into the run's parts: data on disk, the LM folder, the model, the DataModule, the Trainer.

Shared by `train` and `evaluate`, so both rebuild a model the same way.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from r2gen.data.annotations import SPLITS, read_studies
from r2gen.data.clean import get_cleaner
from r2gen.data.collate import Collator, ReportTargets
from r2gen.data.datamodule import ReportDataModule
from r2gen.errors import ConfigError

log = logging.getLogger(__name__)


def prepare_data(data_cfg: DictConfig) -> None:
    """Generate the synthetic demo set on first use (a no-op for real data sets)."""
    if data_cfg.get("demo"):
        from r2gen.data.synthetic import generate_demo

        generate_demo(data_cfg.root, **data_cfg.demo)


def lm_path(cfg: DictConfig, identity: dict | None = None) -> str:
    """The LM folder or hub id to load.

    An LM config with a `build` block (lm=tiny) is a recipe for a model generated under `paths.cache_dir` (`built_lm`):
    built on first use, with a tokenizer trained on this data set's cleaned training reports, into
    `<name_or_path>-<fingerprint>`. With `identity` (what a checkpoint stores of the LM it was trained with:
    r2gen.models.tiny_lm), exactly that LM and tokenizer are built instead, into `<name_or_path>-<its hash>`: no data
    is read and no tokenizer trained, so a checkpoint gives the same token ids on any data set, cache or not. A
    `name_or_path` outside the cache folder is the user's own model (a folder or a hub id) and is loaded as given,
    so `lm.name_or_path=<dir>` works on top of any lm config.

    An LM config with `convert` (lm=chatglm3-6b: `convert: chatglm3`) names a checkpoint whose hub code no longer
    runs: it is converted once into a native folder under `paths.cache_dir/converted` (r2gen.convert), loaded from
    there without remote code.
    """
    name = str(cfg.lm.name_or_path)
    if cfg.lm.get("convert"):
        from r2gen.convert import ensure_converted

        return str(ensure_converted(cfg.lm.convert, name, Path(cfg.paths.cache_dir)))
    if not built_lm(cfg):
        return name
    import torch

    from r2gen.models import tiny_lm

    with torch.random.fork_rng():  # building seeds torch itself: a run that builds the LM must initialise and
        # shuffle exactly like one that finds it built
        if identity is not None:
            return str(tiny_lm.ensure_lm_from_identity(name, identity))
        clean = get_cleaner(cfg.data.clean)
        reports = [clean(e["report"]) for e in read_studies(cfg.data)["train"]]
        path = tiny_lm.ensure_tiny_lm(name, reports, cfg.lm.build)
    tiny_lm.folder_identity(path, cfg.lm.build)  # read now: a checkpoint written later needs no file
    return str(path)


def built_lm(cfg: DictConfig) -> bool:
    """Is the run's LM one r2gen builds (an `lm.build` recipe and `lm.name_or_path` under `paths.cache_dir`)?"""
    if not cfg.lm.get("build") or cfg.lm.get("convert"):
        return False
    return Path(str(cfg.lm.name_or_path)).resolve().is_relative_to(Path(cfg.paths.cache_dir).resolve())


def lm_identity(cfg: DictConfig, folder: str | Path) -> dict | None:
    """What a checkpoint stores to rebuild the run's LM (loaded from `folder`) exactly: its identity when r2gen
    built it (r2gen.models.tiny_lm.folder_identity), None for a user's or a hub model."""
    if not built_lm(cfg):
        return None
    from r2gen.models.tiny_lm import folder_identity

    return folder_identity(folder, cfg.lm.build)


def datamodule(cfg: DictConfig, model, splits: tuple[str, ...] = SPLITS) -> ReportDataModule:
    """The DataModule of a model (an R2GenModule): see `encoder_datamodule`; the collator holds the model's tokenizer
    (reports become target ids in the loader workers), and with `data.finding_loss` training studies carry labels."""
    targets = ReportTargets(model.tokenizer, cfg.data.max_report_tokens)
    return encoder_datamodule(cfg, model.encoder, model.encoder_mode, targets, model.finding_head is not None, splits)


def encoder_datamodule(cfg: DictConfig, encoder, encoder_mode: str, targets: ReportTargets | None = None,
                       finding_labels: bool = False, splits: tuple[str, ...] = SPLITS) -> ReportDataModule:
    """The DataModule for `encoder`: image size and normalisation from its timm data config and, for a frozen encoder
    fed un-augmented images, its feature cache. Without `targets`, batches carry images and report strings only.
    `splits`: the splits it reads and serves (evaluation: only the one it scores; the others may be absent)."""
    dc = encoder.data_config()
    size = cfg.data.image_size or dc["input_size"][-1]
    augment = cfg.data.augment
    if augment == "auto":  # jitter helps an encoder that learns; a frozen one would only see noise
        augment = encoder_mode != "frozen"
    elif not isinstance(augment, bool):
        raise ConfigError(f"data.augment={augment!r}: choose auto, true or false")
    features = None
    cache_dir = feature_cache_dir(cfg, encoder_mode, augment)
    if cache_dir is not None:
        from r2gen.data.feature_cache import FeatureCache

        features = FeatureCache(encoder, cache_dir, cfg.data.eval_batch_size, cfg.data.num_workers,
                                cfg.data.feature_cache_dtype)
    labels = None
    if finding_labels:  # data.finding_loss: the labeler's findings of each training report
        from r2gen.scoring.policy import Scoring

        labels = Scoring.from_config(cfg).label_matrix
    return ReportDataModule(cfg.data, size, dc["mean"], dc["std"], augment, Collator(targets), features, labels,
                            check_dir=Path(cfg.paths.cache_dir) / "setup-check", splits=splits)


def feature_cache_dir(cfg: DictConfig, encoder_mode: str, augment: bool) -> Path | None:
    """Where a frozen encoder's features are cached (`data.feature_cache`), or None when they are not."""
    setting = cfg.data.feature_cache
    if setting in ("off", None, False):
        return None
    usable = encoder_mode == "frozen" and not augment
    if setting == "auto":
        return Path(cfg.paths.cache_dir) / "features" if usable else None
    if not isinstance(setting, str) or setting in ("on", "true", "True"):  # true/on: which folder?
        raise ConfigError(f"data.feature_cache={setting!r}: choose auto, off or a folder")
    if not usable:
        raise ConfigError(f"data.feature_cache={setting}: features can only be cached for a frozen encoder (align=shallow) "
                          f"fed un-augmented images (data.augment=false); this run has align.encoder={encoder_mode}, "
                          f"augment={augment}: set data.feature_cache=off or auto")
    return Path(setting)


def trainer(cfg: DictConfig, with_callbacks: bool = True, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """The Trainer `cfg.trainer` describes, with `callbacks` (the run's own, e.g. r2gen.scoring.callback.Evaluation)
    and, `with_callbacks`, the config's callbacks and loggers (a training run's; evaluate.py runs without)."""
    callbacks = list(callbacks) + ([instantiate(c) for c in (cfg.get("callbacks") or {}).values()] if with_callbacks else [])
    loggers = [logger(name, c) for name, c in (cfg.get("logger") or {}).items()] if with_callbacks else False
    args = dict(cfg.trainer)
    strategy = args.get("strategy")
    if isinstance(strategy, DictConfig):  # a strategy with options (trainer=fsdp): `_target_` + its arguments
        args["strategy"] = instantiate(strategy)
    elif isinstance(strategy, str) and strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"trainer.strategy={strategy} needs DeepSpeed, which is not installed: "
                          'pip install -e ".[deepspeed]" (GPU machines), or choose trainer=ddp or trainer=fsdp')
    plugins = list(args.pop("plugins", None) or []) + checkpoint_io_plugins(args.get("strategy"))
    return pl.Trainer(**args, callbacks=callbacks, logger=loggers, default_root_dir=cfg.paths.output_dir,
                      plugins=plugins or None)


def logger(name: str, node: DictConfig):
    """One `logger.<name>` entry, instantiated; a tracker whose package is missing names the extra to install."""
    try:
        return instantiate(node)
    except Exception as e:  # Hydra wraps the constructor's error in an InstantiationException
        missing = e if isinstance(e, ModuleNotFoundError) else e.__cause__
        if not isinstance(missing, ModuleNotFoundError):
            raise
        raise ConfigError(f"logger.{name} ({node.get('_target_')}) needs a package that is not installed "
                          f"({str(missing).splitlines()[0]}): pip install -e \".[{name}]\", or choose "
                          f"logger=default") from None


def checkpoint_io_plugins(strategy) -> list:
    """r2gen's atomic, weights-only CheckpointIO (r2gen.checkpoint_io), for every strategy that writes checkpoints
    through a CheckpointIO: one device, DDP, FSDP with full state dicts. DeepSpeed writes its own checkpoint folders,
    and a strategy built with its own checkpoint_io keeps it."""
    from r2gen.checkpoint_io import AtomicCheckpointIO

    if isinstance(strategy, str) and strategy.startswith("deepspeed"):
        return []
    if strategy is not None and not isinstance(strategy, str):
        if "deepspeed" in type(strategy).__name__.lower() or getattr(strategy, "_checkpoint_io", None) is not None:
            return []
    return [AtomicCheckpointIO()]


def output_dir(cfg: DictConfig) -> Path:
    """This run's folder (`paths.output_dir`), created and marked as an r2gen run; a folder that holds someone
    else's files is refused (r2gen.run_folder)."""
    from r2gen.run_folder import claim_run_folder

    return claim_run_folder(cfg.paths.output_dir)
