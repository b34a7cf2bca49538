"""The composed config, checked before anything is built: every key known, every value of its kind, nothing missing.

`python train.py trainer.max_epochs=abc` would otherwise build the data and the model and then die in Lightning with
`TypeError: '>' not supported between 'int' and 'str'`; `+trainer.max_epoch=1` (a typo) with `Trainer.__init__() got
an unexpected keyword argument`; `data=custom` without `data.root` with a traceback about `data.annotation`. The
entry points (`r2gen.boundary.run_cli`) call `check_config` first, so each is one line naming the key, the value and the
fix. The Python API (`r2gen.train.train(cfg)`) does not check unless the caller does.

The schema is the shipped YAML itself (one fact in one place): a group's keys are the union of its options' keys
(`conf/data/*.yaml` for `data.*`) and of the bases in its subfolders they extend (`conf/lm/_base/`; an option's
`defaults` list is Hydra's, not a key), a key's kinds (bool, int, float, str, list, mapping, null) the union of its
defaults there; only where no default can say it (null, `???`, a value of several kinds) does `KINDS` below name
the kinds. `trainer.*` is checked against `pytorch_lightning.Trainer.__init__`: its argument names and, where the
annotation is simple, its types. Groups whose keys belong to another library (`generate`: GenerationConfig,
`quant`: BitsAndBytesConfig, `logger` and `callbacks`: `_target_` classes) and the free-form mappings in `OPEN` may
hold keys the YAML does not name; a key they do name still has its kind checked.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path, PurePath
from typing import Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
)

from r2gen.conf import CONF_DIR
from r2gen.errors import ConfigError

# Nodes that may hold keys no shipped YAML names (checked by the library they are handed to, or free-form).
OPEN = {"generate", "quant", "logger", "callbacks", "hydra", "encoder.kwargs", "lm.build", "lm.device_map",
        "monitor.weights", "trainer.strategy"}
# Kinds the shipped defaults cannot say (their default is null or `???`, or the key takes several kinds of value).
KINDS = {
    "ckpt_path": {"str", "null"}, "ckpt": {"str"}, "predictions": {"str", "null"}, "input": {"str", "list"},
    "output": {"str", "null"}, "indication": {"str", "null"}, "comparison": {"str", "null"},
    "prior": {"str", "list", "null"}, "prior_report": {"str", "null"}, "out": {"str"}, "split": {"str", "null"}, "a": {"str"}, "b": {"str"},
    "eval.chexbert": {"str", "null"}, "eval.chexbert_tokenizer": {"str", "null"},
    "eval.bertscore": {"str", "null"}, "eval.bertscore_layer": {"int", "null"}, "eval.protocol": {"str", "null"},
    "eval.bertscore_rescale": {"bool", "null"}, "eval.radgraph": {"str", "null"},
    "data.root": {"str"}, "data.train_file": {"str", "null"}, "data.val_file": {"str", "null"},
    "data.test_file": {"str", "null"}, "data.augment": {"str", "bool"}, "data.feature_cache": {"str", "bool", "null"},
    "data.r2gen_annotation": {"str", "null"},
    "encoder.pretrained": {"bool", "str"}, "lm.pad_token": {"str", "int"}, "lm.add_bos": {"str", "bool"},
    "lm.device_map": {"any"}, "lm.convert": {"str", "null"},
    "lm.unsupported": {"str", "null"},  # set only to mark a known breakage (r2gen.models.lm): no shipped yaml has it
}
# Trainer arguments r2gen passes itself: where a user sets them instead.
TRAINER_OWN = {"callbacks": "the callbacks group (callbacks.<name>=..., ~callbacks.<name>)",
               "logger": "the logger group (logger=default|wandb|mlflow|null, ~logger.<name>)",
               "default_root_dir": "paths.output_dir (hydra.run.dir=<folder>)"}
ACCEPTS = {"bool": {"bool"}, "int": {"int"}, "float": {"int", "float"}, "str": {"str", "int", "float"},
           "list": {"list"}, "dict": {"dict"}, "null": {"null"}}  # a number is a fine name; true/false is not
DESCRIBE = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "list": "a list [...]",
            "dict": "a mapping {...}", "null": "null"}
PURE_INTERPOLATION = re.compile(r"\$\{[^${}]*\}")


class Schema:
    """What the shipped YAML says about one config node: its keys' schemas, its own kinds, whether it is closed."""

    def __init__(self, path: str):
        self.path, self.keys, self.kinds, self.examples = path, {}, set(), []

    @property
    def closed(self) -> bool:
        return self.path not in OPEN and not any(self.path.startswith(p + ".") for p in ("generate", "quant",
                                                                                           "logger", "callbacks"))

    def add(self, value: Any) -> None:
        """Fold one shipped default (a YAML value, unresolved) into this schema."""
        if isinstance(value, dict):
            self.kinds.add("dict")
            for k, v in value.items():
                if k != "defaults":
                    self.child(str(k)).add(v)
        elif isinstance(value, str) and value == "???":
            pass
        elif isinstance(value, str) and "${" in value:
            self.kinds.add("any" if PURE_INTERPOLATION.fullmatch(value) else "str")
        else:
            self.kinds.add(kind(value))
            if value is not None and not isinstance(value, (list, dict)):
                self.examples.append(value)

    def child(self, key: str) -> Schema:
        if key not in self.keys:
            self.keys[key] = Schema(f"{self.path}.{key}" if self.path else key)
        return self.keys[key]


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "dict"
    return "any"


def _load(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


@functools.cache
def schema(config_name: str | None = None) -> Schema:
    """The schema of a composed config: `config_name`'s own keys (evaluate, predict, ...: all build on `config`; None:
    any of them) at the top, every group's options below; `KINDS` where the defaults cannot tell."""
    root = Schema("")
    names = {"config", config_name} if config_name else {p.stem for p in CONF_DIR.glob("*.yaml")}
    for name in sorted(names):
        if (CONF_DIR / f"{name}.yaml").is_file():
            root.add(_load(CONF_DIR / f"{name}.yaml"))
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if group.name in ("experiment", "hydra"):  # global overlays / Hydra's own: not a node of the config
            continue
        node = root.child(group.name)
        for option in sorted(group.rglob("*.yaml")):  # its options and the bases they extend (lm/_base/)
            node.add(_load(option))
    for key, kinds in KINDS.items():
        node = root
        for part in key.split("."):
            node = node.child(part)
        node.kinds = set(kinds)
    root.child("hydra")
    return root


@functools.lru_cache(maxsize=1)
def trainer_arguments() -> dict[str, Any]:
    """`pytorch_lightning.Trainer.__init__`'s arguments and their annotations (Any where they cannot be read)."""
    import inspect
    import typing

    import pytorch_lightning as pl

    params = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    try:
        hints = typing.get_type_hints(pl.Trainer.__init__)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate: names only
        hints = {}
    return {p: hints.get(p, Any) for p in params}


def fits(value: Any, annotation: Any) -> bool | None:
    """Does `value` (a config value) fit `annotation`? None where the annotation is not simple enough to tell."""
    origin = get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Union or type(annotation).__name__ == "UnionType":
        results = [fits(value, a) for a in get_args(annotation)]
        return True if True in results else (None if None in results else False)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation in (bool, int, float, str):
        return kind(value) in {bool: {"bool"}, int: {"int"}, float: {"int", "float"}, str: {"str"}}[annotation]
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return isinstance(value, str)
    if origin in (list, tuple) or annotation in (list, tuple) or str(origin) in ("<class 'collections.abc.Iterable'>",
                                                                                  "<class 'collections.abc.Sequence'>"):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or annotation is dict:
        return isinstance(value, (dict, DictConfig))
    if isinstance(annotation, type):  # a class (Strategy, Profiler, ...): only a `_target_` mapping builds one
        return isinstance(value, DictConfig) and "_target_" in value
    return None


def describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Union or type(annotation).__name__ == "UnionType":
        members = get_args(annotation)
        literals = [str(v) for a in members if get_origin(a) is Literal for v in get_args(a)]
        others = [describe(a) for a in members if get_origin(a) is not Literal]
        choices = [f"one of {', '.join(dict.fromkeys(literals))}"] if literals else []
        return " or ".join(dict.fromkeys(choices + others))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    if annotation is type(None):
        return "null"
    for t, k in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if annotation is t:
            return DESCRIBE[k]
    if origin in (list, tuple) or annotation in (list, tuple):
        return DESCRIBE["list"]
    if origin is dict:
        return DESCRIBE["dict"]
    return getattr(annotation, "__name__", str(annotation))


def missing_message(key: str, via: str | None = None) -> str:
    """A required key left at `???` (`via`: the key whose interpolation reached it): what to set."""
    used = f" ({via} is built from it)" if via and via != key else ""
    return f"{key} is required and has no value{used}: set it on the command line ({key}=...)"


def interpolation_message(e: InterpolationResolutionError, raw: Any = None) -> str:
    """One line for an interpolation that cannot be resolved: a missing value it reaches, or what else is wrong."""
    key = getattr(e, "full_key", None) or "?"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, InterpolationToMissingValueError):
        m = re.search(r"Missing mandatory value: (\S+)", str(e))
        return missing_message(m.group(1) if m else key, key)
    shown = f"={raw}" if raw is not None else ""
    return (f"{key}{shown}: cannot be resolved ({first}); give {key} a value on the command line ({key}=...) or "
            f"set the key its interpolation names")


def check_config(cfg: DictConfig, config_name: str | None = None) -> None:
    """Raise `ConfigError` on the first key of `cfg` that no shipped config names (where the node is closed), that
    holds a value of the wrong kind, or that is missing (`???`, also when reached through an interpolation).
    `config_name`: the config `cfg` was composed from (config, evaluate, predict, export, app); by default the one
    Hydra composed, else any. A top-level key left at `???` (ckpt, input, out: the command's own argument) is left
    to the command, which knows when it needs it."""
    if config_name is None:
        from hydra.core.hydra_config import HydraConfig

        config_name = HydraConfig.get().job.config_name if HydraConfig.initialized() else None
    # `evaluate.py predictions=<file>` reads the data block only when `data.root` is given (a split to match the file
    # against), and `r2gen-compare a=... b=...` only its cleaning and labeler: without it, `data.*` values left at
    # `???` are not needed.
    reads_files = OmegaConf.select(cfg, "predictions", default=None) or config_name == "compare"
    optional = ("data",) if reads_files else ()
    _check_node(cfg, schema(config_name), "", optional)


def _check_node(node: DictConfig, spec: Schema | None, path: str, optional: tuple[str, ...] = ()) -> None:
    """Check `node` (at `path`) against `spec`; below a top-level key in `optional`, missing values are allowed."""
    for key in list(node.keys()):
        key = str(key)
        full = f"{path}.{key}" if path else key
        if full == "hydra":
            continue
        if path == "trainer":
            _check_trainer(node, key)
            continue
        child = spec.keys.get(key) if spec is not None else None
        if spec is not None and child is None and spec.closed:
            raise ConfigError(unknown_message(node, key, full, spec))
        lenient = full.split(".")[0] in optional
        if OmegaConf.is_missing(node, key):
            if path and not lenient:  # a top-level key at ??? is the command's own argument: it asks when it needs it
                raise ConfigError(missing_message(full))
            continue
        try:
            value = _value(node, key)
        except ConfigError:
            if lenient:
                continue
            raise
        if isinstance(value, DictConfig):
            if child is not None and child.kinds and not child.kinds & {"dict", "any"}:
                raise ConfigError(kind_message(full, "{...}", child))
            _check_node(value, child, full, optional)
        elif child is not None and child.kinds and "any" not in child.kinds:
            if not any(kind(value) in ACCEPTS[k] for k in child.kinds):
                raise ConfigError(kind_message(full, _shown(value), child))


def _value(node: DictConfig, key: str) -> Any:
    """`node[key]`, resolved; an interpolation that does not resolve is a ConfigError."""
    try:
        return node[key]
    except MissingMandatoryValue as e:  # a nested `???` reached by resolving
        raise ConfigError(missing_message(getattr(e, "full_key", None) or key)) from None
    except InterpolationResolutionError as e:
        raw = node._get_node(key)._value() if node._get_node(key) is not None else None
        raise ConfigError(interpolation_message(e, raw)) from None


def _shown(value: Any) -> str:
    if isinstance(value, (ListConfig, DictConfig)):
        return str(OmegaConf.to_container(value, resolve=False))
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) or value is None \
        else str(value)


def kind_message(full: str, shown: str, spec: Schema) -> str:
    kinds = [k for k in ("bool", "int", "float", "str", "list", "dict", "null") if k in spec.kinds]
    want = " or ".join(DESCRIBE[k] for k in kinds)
    example = f", e.g. {full}={_shown(spec.examples[0]).strip(chr(39))}" if spec.examples else ""
    return f"{full}={shown}: expected {want} (the kind of its value in the shipped config){example}"


def unknown_message(node: DictConfig, key: str, full: str, spec: Schema) -> str:
    parent = full.rpartition(".")[0]
    close = difflib.get_close_matches(key, list(spec.keys), n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    where = f"conf/{parent.split('.')[0]}/*.yaml" if parent else "conf/*.yaml"
    try:
        shown = _shown(node[key])
    except Exception:  # noqa: BLE001 - the value itself may not resolve; the key is what is wrong
        shown = "..."
    return (f"{full}={shown}: {parent or 'the config'} has no key {key!r} ({hint}its keys are those in {where}); "
            f"remove it or correct its name")


def _check_trainer(node: DictConfig, key: str) -> None:
    args = trainer_arguments()
    full = f"trainer.{key}"
    if OmegaConf.is_missing(node, key):
        raise ConfigError(missing_message(full))
    value = _value(node, key)
    if key in TRAINER_OWN:
        raise ConfigError(f"{full}: r2gen passes Trainer's {key} itself; set it through {TRAINER_OWN[key]}")
    if key not in args:
        close = difflib.get_close_matches(key, [a for a in args if a not in TRAINER_OWN], n=1)
        hint = f" (did you mean trainer.{close[0]}?)" if close else ""
        raise ConfigError(f"{full}={_shown(value)}: pytorch_lightning.Trainer has no argument {key!r}{hint}; remove "
                          f"it, or name one of Trainer's arguments")
    if key == "strategy" and isinstance(value, DictConfig):
        _check_node(value, None, full)  # a strategy's own arguments: its class checks them; interpolations here
    if fits(value, args[key]) is False:
        raise ConfigError(f"{full}={_shown(value)}: pytorch_lightning.Trainer takes {describe(args[key])} for {key}")
