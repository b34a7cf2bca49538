"""Resume checks the config first: a run resumed with `ckpt_path=<run>/checkpoints/last.ckpt` must keep every key
that decides the model's weight shapes, what its checkpoint holds or the optimiser's parameter groups. `check_resume`
compares them with the config the checkpoint was trained with before anything is built (no LM is built into the
cache, no run folder is made), and a difference is one `ConfigError` naming each key and both values, instead of
Lightning's screenful of `size mismatch` or "loaded state dict has a different number of parameter groups".

What must match (`MUST_MATCH`): the LM (its build recipe `lm.build` when r2gen builds it, else `lm.name_or_path` and
`lm.convert`), `lm.pad_token`, `lm.freeze`, LM LoRA (`lm.lora.r`, and its `target_modules` when r > 0), `quant`,
the encoder (`encoder.name`, `encoder.kwargs`, whether `encoder.pretrained` is set), `align.encoder` and, with
`align.encoder=lora`, `align.lora.r` and `align.lora.target_modules`, whether the finding head exists
(`data.finding_loss` zero or not) and, with it, `data.labeler`, and `data.image_size` for an encoder built for one
input size (ViT, Swin: its position embeddings are sized by it; a CNN takes any size).

Everything else may differ on resume: trainer.* (max_epochs to train longer, devices, precision), paths.*, logger.*,
callbacks.*, data.num_workers, where the data lie (data.root, data.annotation or an official layout's data.split_file,
data.metadata_file and data.reports, data.image_dir: the LM r2gen built is rebuilt from the checkpoint, not from these
reports), generate.*, eval.*, monitor.*, optim.* values (the restored optimiser state keeps its own learning rates;
the schedule follows the new values), seed. A resume that should end bit for bit like the uninterrupted run
(r2gen.resume) needs the training keys (data.*, optim.*, seed) unchanged too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from r2gen.build import built_lm
from r2gen.checkpoint import trained_config
from r2gen.errors import ConfigError
from r2gen.models.encoder import native_input_size

ABSENT = "(not set)"


def _both(test: Callable[[DictConfig], bool]) -> Callable[[DictConfig, DictConfig], bool]:
    """A key that only matters where both runs have `test` (a key beneath one that differs is not named too)."""
    return lambda a, b: test(a) and test(b)


def _lm_lora(c: DictConfig) -> bool:
    return int(OmegaConf.select(c, "lm.lora.r", default=0) or 0) > 0


def _encoder_lora(c: DictConfig) -> bool:
    return OmegaConf.select(c, "align.encoder") == "lora"


def _finding_head(c: DictConfig) -> bool:
    return bool(OmegaConf.select(c, "data.finding_loss", default=0))


def _fixed_size(c: DictConfig) -> bool:
    return native_input_size(str(c.encoder.name), dict(c.encoder.get("kwargs") or {}))[1]


def _pretrained(value: Any) -> bool:
    return value not in (None, False, "", "false", "False")


Rule = tuple[str, Callable[[DictConfig, DictConfig], bool] | None, Callable[[Any, Any], bool] | None]
# (key, whether it matters for (trained, this run): None: always, how two values compare: None: equal)
MUST_MATCH: tuple[Rule, ...] = (
    ("lm.build", _both(built_lm), None),  # the recipe of the LM r2gen builds (lm=tiny): vocabulary, width, depth, seed
    ("lm.name_or_path", lambda a, b: not (built_lm(a) and built_lm(b)), None),  # a user's folder, a hub model
    ("lm.convert", None, None),
    ("lm.pad_token", None, None),  # `add` resizes the embeddings
    ("lm.freeze", None, None),  # the LM's weights in the checkpoint, its optimiser groups
    ("lm.lora.r", None, lambda a, b: int(a or 0) == int(b or 0)),
    ("lm.lora.target_modules", _both(_lm_lora), None),
    ("quant", None, None),
    ("encoder.name", None, None),
    ("encoder.kwargs", None, None),
    ("encoder.pretrained", None, lambda a, b: _pretrained(a) == _pretrained(b)),  # random: its weights are saved
    ("align.encoder", None, None),
    ("align.lora.r", _both(_encoder_lora), None),
    ("align.lora.target_modules", _both(_encoder_lora), None),
    ("data.finding_loss", None, lambda a, b: bool(a) == bool(b)),  # the finding head and its optimiser group
    ("data.labeler", _both(_finding_head), None),  # the finding head's size
    ("data.image_size", _both(_fixed_size), None),  # a ViT's or Swin's position embeddings
)


def check_resume(cfg: DictConfig, ck: dict[str, Any], ckpt_path: str | Path) -> None:
    """Raise one `ConfigError` if `cfg` differs from the config checkpoint `ck` was trained with in a key of
    `MUST_MATCH` (see the module docstring); nothing is built or written."""
    trained = trained_config(ck)
    diffs: list[tuple[str, Any, Any]] = []
    for key, when, same in MUST_MATCH:
        if when is not None and not when(trained, cfg):
            continue
        old, new = _leaves(key, _get(trained, key)), _leaves(key, _get(cfg, key))
        if same is not None:
            if not same(old.get(key), new.get(key)):
                diffs.append((key, old.get(key, ABSENT), new.get(key, ABSENT)))
            continue
        for leaf in dict.fromkeys([*old, *new]):
            if old.get(leaf, ABSENT) != new.get(leaf, ABSENT):
                diffs.append((leaf, old.get(leaf, ABSENT), new.get(leaf, ABSENT)))
    if not diffs:
        return
    if len(diffs) == 1:
        key, old, new = diffs[0]
        raise ConfigError(f"ckpt_path={ckpt_path} was trained with {key}={_show(old)}; this run has {_show(new)}: "
                          f"resume with the same value, or start a new run (without ckpt_path)")
    was = ", ".join(f"{k}={_show(o)}" for k, o, _ in diffs)
    now = ", ".join(f"{k}={_show(n)}" for k, _, n in diffs)
    raise ConfigError(f"ckpt_path={ckpt_path} was trained with {was}; this run has {now}: resume with the same "
                      f"values, or start a new run (without ckpt_path)")


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _leaves(key: str, value: Any) -> dict[str, Any]:
    """{dotted key: value} of the non-dict values under `key` (`{key: value}` for a plain value; {} for an empty
    dict or an absent key)."""
    if value is ABSENT or value == ABSENT:
        return {}
    if isinstance(value, dict):
        return {leaf: v for k, sub in value.items() for leaf, v in _leaves(f"{key}.{k}", sub).items()}
    return {key: value}


def _show(value: Any) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)
