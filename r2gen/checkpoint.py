"""The checkpoint format: what an r2gen checkpoint holds and how an older one is read. It sits below the model
(`R2GenModule.on_save_checkpoint` writes `payload`); rebuilding a model from a checkpoint with the user's overrides
sits with the one function that builds a run's model (`r2gen.build.rebuild`, `r2gen.build.load_model`).

A checkpoint (format 6) holds, besides Lightning's own state:
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
weights then do not fit; `r2gen.build.load_weights` says so in one line). In formats 1 to 5 `lm.add_bos=auto`
prepended the tokenizer's BOS token whenever it named one; since format 6 it follows the tokenizer (GPT-2's and
BLOOM's name one but never add it), so their `auto` reads as `named`, which is what those runs were trained with.

Checkpoints are untrusted input: they are read with `torch.load(weights_only=True)`, which refuses any pickle that
would run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from r2gen.checkpoint_io import load_untrusted
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.models.tiny_lm import check_identity

FORMAT = 6
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


def payload(cfg: DictConfig, keys: set[str], lm_identity: dict[str, Any] | None) -> dict[str, Any]:
    """The `r2gen` block a checkpoint gets (see the module docstring): `keys`, the state-dict keys it holds;
    `lm_identity`, what rebuilds a built LM (None for a user's or a hub LM)."""
    return {"format": FORMAT, "keys": sorted(keys), "config": OmegaConf.to_container(cfg, resolve=False),
            "lm": lm_identity}


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
    if ck["r2gen"]["format"] < 6:  # lm.add_bos=auto meant what `named` means now
        ck["r2gen"] = {**ck["r2gen"], "format": 6, "config": _named_bos(ck["r2gen"]["config"])}
        ck["hyper_parameters"] = {**ck["hyper_parameters"], "cfg": _named_bos(ck["hyper_parameters"]["cfg"])}
    if ck["r2gen"].get("lm") is not None:  # untrusted: bounded and checked before anything is built from it
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


def _named_bos(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` of a format 1-5 checkpoint with `lm.add_bos=auto` as those runs applied it: `named` (see the module
    docstring)."""
    lm = cfg.get("lm") if isinstance(cfg, dict) else None
    if not isinstance(lm, dict) or lm.get("add_bos", "auto") != "auto":
        return cfg
    return {**cfg, "lm": {**lm, "add_bos": "named"}}


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
