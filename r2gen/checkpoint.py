"""The checkpoint contract: what an r2gen checkpoint holds, how an older one is read, and how a run is rebuilt
from one with the user's overrides. Everything that rebuilds a model from a checkpoint (`evaluate.py`, `predict.py`,
...) goes through here (`rebuild`, then `load_model`), so the format version, the migrations and the override
rules live in one place.

A checkpoint (format 5) holds, besides Lightning's own state:
  * `state_dict`: only what the config cannot rebuild (`R2GenModule.persistent_keys`);
  * `r2gen.config`: the run's config as composed, interpolations kept (`annotation: ${.root}/annotation.json`),
    so that `data.root=/moved` moves the annotation and image folder with it;
  * `r2gen.lm`: for an LM r2gen built (lm=tiny: `r2gen.build.built_lm`), what rebuilds exactly that LM and its
    tokenizer (the tokenizer's JSON, the LM config, its special tokens and seed: r2gen.models.tiny_lm), so the
    checkpoint needs neither the cache folder nor the data it was trained on; None for a user's or a hub LM;
  * `hyper_parameters.cfg`: the same config resolved, as the run saw it.
Older formats are migrated when read: format 1 kept only the resolved config; formats 1 to 3 lack keys added since
(`FORMAT_1_ADDED`, `FORMAT_2_ADDED`, `FORMAT_3_ADDED`), which get the value that reproduces how those runs behaved;
formats 1 to 4 hold no `r2gen.lm`, so their built LM is built again from its recipe and the training reports of the
data set named (right only on the data set the run was trained on: another one gives another tokenizer, and the
weights then do not fit; `load_weights` says so in one line).

Overrides mean what they mean to `train.py`: a group (`data=iu_xray`, `generate=greedy`, `lm=...`) replaces that
group as a whole; a dotted key (`data.root=...`) changes one value; `~key` deletes one. How to score (`eval.*`),
the trainer and the folders come from the evaluate command, never from the checkpoint.

Checkpoints are untrusted input: they are read with `torch.load(weights_only=True)`, which refuses any pickle that
would run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from r2gen import build
from r2gen.checkpoint_io import load_untrusted
from r2gen.conf import CONF_DIR
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.models.tiny_lm import check_identity

if TYPE_CHECKING:
    from r2gen.models.module import R2GenModule

FORMAT = 5
# Keys an evaluation or prediction sets itself: how to score, what to read and write, on what hardware; never read
# from a checkpoint.
EVAL_ONLY = {"ckpt", "predictions", "split", "shuffle_images", "task_name", "trainer", "paths", "hydra", "logger",
             "callbacks", "experiment", "seed", "ckpt_path", "test_after_fit", "eval", "input", "output", "labels",
             "out", "part", "host", "port", "max_file_mb"}
# Format 1 checkpoints predate these keys; each value is the behaviour such a run had (not today's default).
FORMAT_1_ADDED = {
    "data.format": "auto", "data.image_columns": ["image_path"], "data.on_bad_sample": "error",
    "data.feature_cache": "off", "data.group_by_length": False, "data.labeler": None,
    "encoder.kwargs": {}, "encoder.gradient_checkpointing": False, "quant": {},
    "lm.gradient_checkpointing": False, "lm.device_map": None, "lm.unsupported": None,
}
# Format 2 checkpoints predate these keys (format 3: the auxiliary finding loss).
FORMAT_2_ADDED = {"data.finding_loss": 0.0}
# Format 3 checkpoints predate these keys (format 4: the feature cache's dtype; those runs cached float32).
FORMAT_3_ADDED = {"data.feature_cache_dtype": "float32"}


def payload(module: R2GenModule, keys: set[str]) -> dict[str, Any]:
    """The `r2gen` block a checkpoint gets (see the module docstring)."""
    return {"format": FORMAT, "keys": sorted(keys), "config": OmegaConf.to_container(module.cfg, resolve=False),
            "lm": build.lm_identity(module.cfg, module.tokenizer.name_or_path)}


def read_checkpoint(path: str | Path | None, key: str = "ckpt") -> dict[str, Any]:
    """The checkpoint at `path` (given as `key`: `ckpt`, or `ckpt_path` for a resume), checked and migrated to the
    current format; any problem is one clear error."""
    if path in (None, "", "???"):
        raise ConfigError(f"{key} is not set: pass {key}=<run>/checkpoints/best.ckpt")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise MissingFileError(f"{key}={path}: no such file (train.py writes <run>/checkpoints/best.ckpt and "
                               f"last.ckpt)")
    ck = load_untrusted(p, key, mmap=True)  # train.py checks a resume checkpoint here before Lightning loads it
    if not isinstance(ck, dict) or not isinstance(ck.get("r2gen"), dict) or \
            "cfg" not in (ck.get("hyper_parameters") or {}):
        raise InputError(f"{key}={path}: not an r2gen checkpoint (no r2gen config inside); pass a .ckpt written by "
                         f"train.py")
    fmt = ck["r2gen"].get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise InputError(f"{key}={path}: written by a newer r2gen (checkpoint format {fmt}, this r2gen reads up to "
                         f"{FORMAT}); upgrade r2gen")
    if fmt < 2:
        ck["r2gen"] = {**ck["r2gen"], "format": 2, "config": _from_format_1(ck["hyper_parameters"]["cfg"])}
    if ck["r2gen"]["format"] < 3:
        ck["r2gen"] = {**ck["r2gen"], "format": 3, "config": _add_keys(ck["r2gen"]["config"], FORMAT_2_ADDED)}
    if ck["r2gen"]["format"] < 4:
        ck["r2gen"] = {**ck["r2gen"], "format": 4, "config": _add_keys(ck["r2gen"]["config"], FORMAT_3_ADDED)}
    if ck["r2gen"]["format"] < 5:  # format 4 stored no LM identity: its built LM is built from recipe and data
        ck["r2gen"] = {**ck["r2gen"], "format": 5, "lm": None}
    elif ck["r2gen"].get("lm") is not None:  # untrusted: bounded and checked before anything is built from it
        ck["r2gen"] = {**ck["r2gen"], "lm": check_identity(ck["r2gen"]["lm"], f"{key}={path}")}
    return ck


def trained_config(ck: dict[str, Any]) -> DictConfig:
    """The config the checkpoint's run trained with, resolved as that run saw it, with the keys older formats lack
    set to how those runs behaved."""
    added = {**FORMAT_1_ADDED, **FORMAT_2_ADDED, **FORMAT_3_ADDED}
    return OmegaConf.create(_add_keys(ck["hyper_parameters"]["cfg"], added))


def _add_keys(cfg: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with each key of `added` that it lacks set to the value that reproduces how the older run behaved."""
    run = OmegaConf.create(cfg)
    for key, value in added.items():
        if OmegaConf.select(run, key, default="<absent>") == "<absent>":
            OmegaConf.update(run, key, value, force_add=True)
    return OmegaConf.to_container(run, resolve=False)


def _from_format_1(cfg: dict[str, Any]) -> dict[str, Any]:
    """A format 1 checkpoint kept only the resolved config: add the keys it predates, and tie the annotation and
    image folder back to `data.root` where they were derived from it, so `data.root=...` moves them again."""
    run = OmegaConf.create(_add_keys(cfg, FORMAT_1_ADDED))
    data = run.get("data") or {}
    root = data.get("root")
    if root is not None:
        for key, tail in (("annotation", "annotation.json"), ("image_dir", "images")):
            if data.get(key) == f"{root}/{tail}":
                data[key] = f"${{.root}}/{tail}"
    return OmegaConf.to_container(run, resolve=False)


def is_group(key: str) -> bool:
    """Is `key` a config group (`data`, `lm`, `generate`, ...) rather than a key?"""
    return "." not in key and (CONF_DIR / key).is_dir()


def run_config(cfg: DictConfig, ck: dict[str, Any], overrides: list[str], ckpt: str | Path = "") -> DictConfig:
    """The run to rebuild: the checkpoint's config with `overrides` (the command line's `key=value`s, their values
    taken from the composed `cfg`) applied as train.py would apply them, then resolved."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

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
    from hydra.core.hydra_config import HydraConfig

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
    from r2gen.models.module import R2GenModule

    identity = ck["r2gen"].get("lm")
    if identity is None:
        build.prepare_data(run.data)
    model = R2GenModule(run, lm_path=build.lm_path(run, identity))
    load_weights(model, ck)
    return model


def load_weights(model: R2GenModule, ck: dict[str, Any]) -> None:
    """Load the stored weights; everything the config trains must be there, and nothing foreign."""
    model.on_load_checkpoint(ck)
    state = ck["state_dict"]
    if model.finding_head is None:  # a training aid (data.finding_loss) that generation never uses: a model rebuilt
        # without it (a demo checkpoint evaluated with data=iu_xray) leaves its weights out
        state = {k: v for k, v in state.items() if not k.startswith("finding_head.")}
    own = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k, theirs, ours = wrong[0]
        raise InputError(f"checkpoint's {len(wrong)} weights do not fit this model (e.g. {k}: {list(theirs)} in the "
                         f"checkpoint, {list(ours)} here): it was trained with another encoder or lm (a format 4 "
                         f"checkpoint of lm=tiny used on another data set gets another tokenizer: use it on the data "
                         f"it was trained on, or train again with this r2gen, whose checkpoints carry their LM)")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise InputError(f"checkpoint has {len(result.unexpected_keys)} weights this model lacks "
                         f"(e.g. {result.unexpected_keys[:3]}): was it trained with another encoder or lm?")
