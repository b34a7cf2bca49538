"""Turn a composed config into the run's parts: data on disk, the LM folder, the model, the DataModule, the Trainer.

`model` is the one function that builds a run's model: `train.py` calls it, and `load_model` (evaluate, predict,
the export, the app) calls it with a checkpoint's weights, after `rebuild` has read the checkpoint and applied the
command line's overrides to its config (`run_config`). The checkpoint format itself is `r2gen.checkpoint`, below
the model; `r2gen.models.module.R2GenModule` takes what this module composes as arguments.

Overrides mean what they mean to `train.py`: a group (`data=iu_xray`, `generate=greedy`, `lm=...`) replaces that
group as a whole; a dotted key (`data.root=...`) changes one value; `~key` deletes one. How to score (`eval.*`),
the trainer and the folders come from the evaluate command, never from the checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from r2gen.checkpoint import read_checkpoint
from r2gen.checkpoint_io import AtomicCheckpointIO
from r2gen.conf import CONF_DIR
from r2gen.convert import ensure_converted
from r2gen.data.annotations import SPLITS, read_studies
from r2gen.data.clean import get_cleaner
from r2gen.data.collate import Collator
from r2gen.data.context import Context
from r2gen.data.datamodule import ReportDataModule
from r2gen.data.demos import prepare_demo
from r2gen.data.feature_cache import FeatureCache
from r2gen.errors import ConfigError, InputError
from r2gen.models import tiny_lm
from r2gen.models.finding_loss import finding_labels
from r2gen.models.lm import check_supported
from r2gen.models.module import R2GenModule
from r2gen.models.prompt import ContextTokens, ReportTargets
from r2gen.run_folder import claim_run_folder
from r2gen.scoring.policy import Scoring

log = logging.getLogger(__name__)


def prepare_data(data_cfg: DictConfig) -> None:
    """Generate the synthetic demo set on first use (a no-op for real data sets)."""
    if data_cfg.get("demo"):
        prepare_demo(data_cfg.root, data_cfg.demo)


def lm_path(cfg: DictConfig, identity: dict | None = None, clean: Callable[[str], str] | None = None) -> str:
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

    `clean`: the run's report cleaner (default: the data set's, `data.clean`), which the tokenizer is trained on.
    """
    name = str(cfg.lm.name_or_path)
    check_supported(cfg.lm)  # before a download or a conversion
    if cfg.lm.get("convert"):
        return str(ensure_converted(cfg.lm.convert, name, Path(cfg.paths.cache_dir)))
    if not built_lm(cfg):
        return name
    with torch.random.fork_rng():  # building seeds torch itself: a run that builds the LM must initialise and
        # shuffle exactly like one that finds it built
        if identity is not None:
            return str(tiny_lm.ensure_lm_from_identity(name, identity))
        clean = clean or get_cleaner(cfg.data.clean)
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
    return tiny_lm.folder_identity(folder, cfg.lm.build)


def model(cfg: DictConfig, identity: dict | None = None, lm_folder: str | None = None,
          clean: Callable[[str], str] | None = None) -> R2GenModule:
    """The run's model, as `cfg` describes it: the one place a model is built. `identity`: a checkpoint's own LM
    (`lm_path`); `lm_folder`: load the LM from this folder instead (tests, benchmarks); `clean`: the run's report
    cleaner, built once and passed on (default: `data.clean`'s)."""
    clean = clean or get_cleaner(cfg.data.clean)
    folder = lm_folder or lm_path(cfg, identity, clean)
    return R2GenModule(cfg, lm_path=folder, clean=clean, lm_identity=lm_identity(cfg, folder),
                       finding_labels=finding_labels(cfg))


def datamodule(cfg: DictConfig, model: R2GenModule, splits: tuple[str, ...] = SPLITS,
               scoring: Scoring | None = None) -> ReportDataModule:
    """The DataModule of a model: see `encoder_datamodule`; the collator holds the model's tokenizer (reports become
    target ids in the loader workers), the reports are cleaned with the model's cleaner, and with
    `data.finding_loss` training studies carry the labels `scoring` (the run's, default `Scoring.from_config`)
    gives them."""
    targets = ReportTargets(model.tokenizer, cfg.data.max_report_tokens)
    labels = None
    if model.finding_head is not None:  # data.finding_loss: the labeler's findings of each training report
        labels = (scoring or Scoring.from_config(cfg)).label_matrix
    context = ContextTokens(model.tokenizer, model.context.max_tokens) if model.context.parts else None
    return encoder_datamodule(cfg, model.encoder, model.encoder_mode, targets, labels, splits, model.clean,
                              model.context, context)


def encoder_datamodule(cfg: DictConfig, encoder, encoder_mode: str, targets: ReportTargets | None = None,
                       finding_labels: Callable[[Sequence[str]], list[list[int]]] | None = None,
                       splits: tuple[str, ...] = SPLITS, clean: Callable[[str], str] | None = None,
                       context: Context | None = None, context_tokens: ContextTokens | None = None) -> ReportDataModule:
    """The DataModule for `encoder`: image size and normalisation from its timm data config and, for a frozen encoder
    fed un-augmented images, its feature cache. Without `targets`, batches carry images and report strings only;
    `finding_labels`: reports -> 1/0 per label, for the training studies. `splits`: the splits it reads and serves
    (evaluation: only the one it scores; the others may be absent). `clean`: the run's report cleaner (default:
    `data.clean`'s). `context` / `context_tokens`: the study context each study carries and how the collator
    tokenizes it (r2gen.data.context; default none)."""
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
        features = FeatureCache(encoder, cache_dir, cfg.data.eval_batch_size, cfg.data.num_workers,
                                cfg.data.feature_cache_dtype)
    return ReportDataModule(cfg.data, size, dc["mean"], dc["std"], augment, Collator(targets, context_tokens),
                            features, finding_labels, check_dir=Path(cfg.paths.cache_dir) / "setup-check",
                            splits=splits, clean=clean or get_cleaner(cfg.data.clean), context=context)


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
    if isinstance(strategy, str) and strategy.startswith("deepspeed"):
        return []
    if strategy is not None and not isinstance(strategy, str):
        if "deepspeed" in type(strategy).__name__.lower() or getattr(strategy, "_checkpoint_io", None) is not None:
            return []
    return [AtomicCheckpointIO()]


def output_dir(cfg: DictConfig) -> Path:
    """This run's folder (`paths.output_dir`), created and marked as an r2gen run; a folder that holds someone
    else's files is refused (r2gen.run_folder)."""
    return claim_run_folder(cfg.paths.output_dir)


# --- a run rebuilt from a checkpoint ---------------------------------------------------------------------------
# Keys an evaluation or prediction sets itself: how to score, what to read and write, on what hardware; never read
# from a checkpoint.
EVAL_ONLY = {"ckpt", "predictions", "split", "shuffle_images", "shuffle_priors", "task_name", "trainer", "paths",
             "hydra", "logger", "callbacks", "experiment", "seed", "ckpt_path", "test_after_fit", "eval", "input",
             "output", "labels", "out", "part", "host", "port", "max_file_mb", "indication", "comparison", "prior",
             "prior_report"}


def is_group(key: str) -> bool:
    """Is `key` a config group (`data`, `lm`, `generate`, ...) rather than a key?"""
    return "." not in key and (CONF_DIR / key).is_dir()


def run_config(cfg: DictConfig, ck: dict[str, Any], overrides: list[str], ckpt: str | Path = "") -> DictConfig:
    """The run to rebuild: the checkpoint's config with `overrides` (the command line's `key=value`s, their values
    taken from the composed `cfg`) applied as train.py would apply them, then resolved."""
    run = OmegaConf.create(ck["r2gen"]["config"])
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key.split(".")[0] in EVAL_ONLY or o.is_sweep_override():
            continue
        if o.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(run, parent) if parent else run
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        value = OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig) else value
        if is_group(key):
            run[key] = value  # replaced as a whole: nothing of the checkpoint's group survives
        else:
            OmegaConf.update(run, key, value, merge=False, force_add=True)
    run.paths = OmegaConf.to_container(cfg.paths, resolve=True)
    run.trainer = cfg.trainer
    run.eval = cfg.eval
    try:
        return OmegaConf.create(OmegaConf.to_container(run, resolve=True))
    except OmegaConfBaseException as e:
        raise InputError(f"ckpt={ckpt}: its config does not resolve with this r2gen and these overrides "
                         f"({str(e).splitlines()[0]}); set the key it names on the command line "
                         f"(key=value), or evaluate with the r2gen version that wrote it") from None


def cli_overrides() -> list[str]:
    """The `key=value` overrides given on the command line, when running under Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def rebuild(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint `cfg.ckpt` and the run it rebuilds (`run_config`) with `overrides` (default: the command
    line's). Cheap: the weights are memory-mapped, no model is built yet."""
    ck = read_checkpoint(None if OmegaConf.is_missing(cfg, "ckpt") else cfg.ckpt)
    return ck, run_config(cfg, ck, cli_overrides() if overrides is None else overrides, cfg.ckpt)


def load_model(run: DictConfig, ck: dict[str, Any]) -> R2GenModule:
    """The model `run` describes, with the checkpoint's weights. A locally built LM (lm=tiny) is rebuilt from what the
    checkpoint stores of it; a checkpoint older than that (format 4) finds it by its training reports, so the demo
    set is generated first when missing."""
    identity = ck["r2gen"].get("lm")
    if identity is None:
        prepare_data(run.data)
    built = model(run, identity)
    load_weights(built, ck)
    return built


def load_weights(module: R2GenModule, ck: dict[str, Any]) -> None:
    """Load the stored weights; everything the config trains must be there, and nothing foreign."""
    module.on_load_checkpoint(ck)
    state = ck["state_dict"]
    if module.finding_head is None:  # a training aid (data.finding_loss) that generation never uses: a model rebuilt
        # without it (a demo checkpoint evaluated with data=iu_xray) leaves its weights out
        state = {k: v for k, v in state.items() if not k.startswith("finding_head.")}
    own = module.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k, theirs, ours = wrong[0]
        raise InputError(f"checkpoint's {len(wrong)} weights do not fit this model (e.g. {k}: {list(theirs)} in the "
                         f"checkpoint, {list(ours)} here): it was trained with another encoder or lm (a format 4 "
                         f"checkpoint of lm=tiny used on another data set gets another tokenizer: use it on the data "
                         f"it was trained on, or train again with this r2gen, whose checkpoints carry their LM)")
    result = module.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise InputError(f"checkpoint has {len(result.unexpected_keys)} weights this model lacks "
                         f"(e.g. {result.unexpected_keys[:3]}): was it trained with another encoder or lm?")
