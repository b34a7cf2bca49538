"""Family files say only what differs: every `conf/lm/*.yaml` extends `conf/lm/_base/lm.yaml`, composes with
all of its keys, and states no key at the base's own value, so a family that differs only in its hub id is a file of
a few lines."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from r2gen.conf import CONF_DIR

from .helpers.paths import ROOT

LM_DIR = CONF_DIR / "lm"
BASE = LM_DIR / "_base" / "lm.yaml"
LM_NAMES = sorted(p.stem for p in LM_DIR.glob("*.yaml"))  # the lm= choices; the base lies in a subfolder
EXTENDS = ["_base/lm@_here_", "_self_"]  # the base's keys into lm, then the family's own on top
FEW_LINES = 6  # header comments (what it is, its command, its tokenizer), the defaults line, name_or_path


def raw(path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"lora.target_modules": [...], ...}`: every value that is not a mapping, by its dotted key."""
    out = {}
    for k, v in node.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_the_base_is_no_lm_choice():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        choices = GlobalHydra.instance().config_loader().get_group_options("lm")
    assert choices == LM_NAMES and "tiny" in choices


@pytest.mark.parametrize("name", LM_NAMES)
def test_family_composes_with_every_key_of_the_base(make_cfg, name):
    lm = OmegaConf.to_container(make_cfg(f"lm={name}", small=False).lm, resolve=False)
    assert "defaults" not in lm
    missing = set(leaves(raw(BASE))) - set(leaves(lm))
    assert not missing, f"lm={name} lacks {sorted(missing)}"
    own = leaves({k: v for k, v in raw(LM_DIR / f"{name}.yaml").items() if k != "defaults"})
    composed = leaves(lm)
    assert all(composed[k] == v for k, v in own.items())  # what the family states wins over the base


@pytest.mark.parametrize("name", LM_NAMES)
def test_family_states_only_what_differs_from_the_base(name):
    family, base = raw(LM_DIR / f"{name}.yaml"), leaves(raw(BASE))
    assert family.get("defaults") == EXTENDS, f"{name}.yaml: start with `defaults: [{', '.join(EXTENDS)}]`"
    same = [k for k, v in leaves({k: v for k, v in family.items() if k != "defaults"}).items()
            if k in base and base[k] == v]
    assert not same, f"{name}.yaml states {same} at the base's value: remove them"


def test_hub_id_only_families_are_a_few_lines():
    hub_only = [n for n in LM_NAMES if set(raw(LM_DIR / f"{n}.yaml")) == {"defaults", "name_or_path"}]
    assert len(hub_only) >= 7, hub_only  # llama2-7b, llama3-8b, mistral-7b, qwen2(.5)-7b, yi-6b, gemma-2b
    long = {n: k for n in hub_only if (k := len((LM_DIR / f"{n}.yaml").read_text().splitlines())) > FEW_LINES}
    assert not long, f"hub-id-only families longer than {FEW_LINES} lines: {long}"


def test_the_readme_backbone_table_names_every_config():
    """Each `lm=` choice has its row (how it was tested) in the README's backbone table, and the table names none
    that does not exist."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Language models", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and "`lm=`" not in line]
    named = {name for row in rows for name in re.findall(r"`([\w.-]+)`", row[2])}
    assert named == set(LM_NAMES) and all(row[6].strip() for row in rows)
