"""The evaluation protocol, written into metrics.json beside the scores it produced: what was scored, against what,
and how, so that two numbers can be told comparable or not.

`protocol(cfg, scoring, split)` describes the run's config as scored: the data set and its layout (and, for
PhysioNet's layout, its release, read from the split file's name), the split scheme and the split scored, the
report section the model writes, the unit (one report per study, ReXrank's and LLaVA-Rad's unit), the images of a
study the model reads (the view positions in order, how many, how they are fused), the reference protocol, the
cleaning, the labeler and its uncertain mapping, and how BERTScore and RadGraph F1 were computed where they were.

A published protocol is a named config (`protocol=<name>`, `conf/protocol/<name>.yaml`, which sets
`eval.protocol: <name>`). Its file is the one place that says what the protocol fixes: every value it sets, and
the data set its defaults choose, is compared with the config as scored, and a key that differs (a command-line
override, or a checkpoint trained otherwise) is listed under `deviations` and logged: the name is never claimed
for a run that does not follow it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from r2gen.conf import CONF_DIR
from r2gen.errors import ConfigError

log = logging.getLogger(__name__)

PROTOCOL_DIR = CONF_DIR / "protocol"
_RELEASE = re.compile(r"mimic-cxr-(\d+\.\d+\.\d+)-split")


def names() -> list[str]:
    """The named protocols shipped in conf/protocol/."""
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def _release(data: DictConfig) -> str | None:
    """The data set's release where its layout names it (PhysioNet's `mimic-cxr-<version>-split.csv.gz`)."""
    try:
        split_file = data.get("split_file")
    except (MissingMandatoryValue, InterpolationResolutionError):  # ${.root}/... with data.root unset
        split_file = OmegaConf.to_container(data, resolve=False).get("split_file")
    m = _RELEASE.search(str(split_file or ""))
    return m[1] if m else None


def _split_scheme(data: DictConfig) -> str:
    fmt = data.get("format")
    if fmt == "mimic_cxr_jpg":
        return "official (PhysioNet's split file)"
    if fmt == "openi":
        return "R2Gen's (data.r2gen_annotation)" if data.get("split") == "r2gen" else \
            f"random 70/10/20 (data.split_seed={data.get('split_seed')})"
    if data.get("train_file"):
        return "one file per split (data.train_file, val_file, test_file)"
    return "as the annotation file gives it"


def _images(data: DictConfig) -> dict[str, Any]:
    views = data.get("views")
    n = int(data.get("num_views") or 1)
    order = list(views) if views is not None else "as the annotation lists them"
    chosen = "the first in that order (frontal first)" if n == 1 and views is not None else \
        "the first one listed" if n == 1 else f"up to {n}, fused by {data.get('view_fusion')}"
    return {"views": order, "per_study": n, "chosen": chosen}


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def check(name: Any) -> None:
    """`eval.protocol` names a shipped protocol (or is null): else one line naming the choices."""
    if name is not None and (not isinstance(name, str) or name not in names()):
        raise ConfigError(f"eval.protocol={name!r}: no such protocol; choose protocol=<name> with one of "
                          f"{', '.join(names())} (conf/protocol/), or leave it null")


def fixed_by(name: str) -> dict[str, Any]:
    """{dotted key: value} that the protocol `name` fixes: the values its file sets, and `data.name` for the data
    set its defaults choose (`override /data: <option>`, whose `name` is the option's)."""
    check(name)
    path = PROTOCOL_DIR / f"{name}.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    fixed: dict[str, Any] = {}
    for entry in raw.pop("defaults", []) or []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                group = str(k).removeprefix("override ").strip().lstrip("/")
                if group == "data":
                    fixed["data.name"] = OmegaConf.load(CONF_DIR / "data" / f"{v}.yaml").name
    fixed.update({k: v for k, v in _leaves(raw).items() if k != "eval.protocol"})
    return fixed


def deviations(cfg: DictConfig, name: str) -> dict[str, dict[str, Any]]:
    """{key: {"protocol": its value, "run": the config's}} for each key the protocol fixes that `cfg` differs on."""
    out = {}
    for key, want in fixed_by(name).items():
        have = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        have = OmegaConf.to_container(have, resolve=True) if OmegaConf.is_config(have) else have
        if have != want:
            out[key] = {"protocol": want, "run": have}
    return out


def protocol(cfg: DictConfig, scoring, split: str | None) -> dict[str, Any]:
    """What metrics.json says under "protocol" for `cfg` (the config as scored: the run's, for a checkpoint) scored
    with `scoring` (r2gen.scoring.policy.Scoring) on `split` (None: a predictions file's own references)."""
    data = cfg.data
    name = scoring.protocol
    out: dict[str, Any] = {
        "name": name,
        "data": data.name, "layout": data.get("format"), "release": _release(data),
        "split": {"scheme": _split_scheme(data), "scored": split or "the predictions file's own references"},
        "target": data.get("target") or "the report as the annotation gives it",
        "unit": "study (one generated report per study, scored against that study's report)",
        "images": _images(data),
        "references": scoring.reference_protocol,
        "clean": data.clean,
        "labeler": scoring.labeler,
        "uncertain": scoring.ce_uncertain if scoring.labeler == "chexpert" else None,
        "chexbert": bool(scoring.chexbert),
        **scoring.model_settings,
    }
    if name:
        differ = deviations(cfg, name)
        out["deviations"] = differ
        if differ:
            log.warning("protocol=%s: this run differs from it on %s (metrics.json lists them under "
                        "protocol.deviations): its scores are not that protocol's", name,
                        ", ".join(f"{k} ({v['run']!r}, not {v['protocol']!r})" for k, v in differ.items()))
    return out
