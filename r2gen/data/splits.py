"""The three splits every data set reader gives, and the names data sets write them under. Below every reader
(r2gen.data.annotations and the official layouts' readers), so they share them without importing each other."""

from __future__ import annotations

from typing import Any

from r2gen.errors import ConfigError

SPLITS = ("train", "val", "test")
# how data sets name their splits (MIMIC-CXR's split.csv says `validate`) -> r2gen's
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}

# {"train"|"val"|"test": [study]}. A study is a dict with at least "id" (str), "report" (the text the model learns
# to write, as read) and "image_path" (a list of paths relative to data.image_dir, in the order the model takes
# them: frontal first where a reader knows the views). Readers of the official layouts keep, where the data set
# gives them, the context of issue 23 under these keys (a key absent or None: not known):
#   "indication", "comparison": texts of those report sections; "view_positions": one per image_path entry
#   ("PA", "AP", "LATERAL", "LL", ...); "subject_id": str; "study_time": ISO 8601 "YYYY-MM-DDTHH:MM:SS";
#   "findings", "impression": the sections the target was chosen from (data.target);
#   "prior_id": the id of the study's prior study in the same split (r2gen.data.priors links them after reading).
Studies = dict[str, list[dict[str, Any]]]
CONTEXT_KEYS = ("indication", "comparison", "view_positions", "subject_id", "study_time", "findings", "impression",
                "prior_id")

# data.target of the official layouts: what the model learns to write
TARGETS = ("findings", "impression", "findings_impression")


def target_choice(cfg) -> str:
    """`data.target` (default findings), checked."""
    target = cfg.get("target") or "findings"
    if target not in TARGETS:
        raise ConfigError(f"data.target={target!r}: choose {', '.join(TARGETS)} (what the model writes)")
    return target


def target_text(findings: str | None, impression: str | None, target: str) -> str | None:
    """The text `target` names (None or "": the report has none): findings_impression joins those present."""
    if target == "findings_impression":
        return " ".join(t for t in (findings, impression) if t) or None
    return findings if target == "findings" else impression
