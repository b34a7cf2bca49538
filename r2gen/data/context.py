"""A study's context: as text the LM reads before the image, its indication, its comparison line and its prior
study's report, each by config (`context.indication`, `context.comparison`, `context.prior_report`), and its prior
study's images (`context.prior_images`), and a learned marker of each image's view position
(`context.view_positions`: r2gen.data.view_positions); all off by default and in the R2GenGPT recipes, so their
numbers stay comparable.

`Context.from_config(cfg.context)` says which parts are on; `Context.texts(entries, clean)` gives one text per
study of a split, in order: the parts that are on, each as `<name>: <text>` cleaned with the data set's report
cleaner (the prior report is the prior study's report as the model learns to write it) and ended with a full
stop, joined by spaces (written by r2gen.models.prompt.context_text, which an exported model runs too). A part the study does not have is written as `<name>: none.`, so the model can tell a
missing indication or a first study (no prior) from one it was not shown. A prior is the study's `prior_id` in the
same split (r2gen.data.priors); one the set-up check dropped (`data.on_bad_sample=skip`) counts as none.
How many tokens of it the LM reads is `context.max_tokens` (r2gen.models.prompt.ContextTokens); the report target
is never cut for it. `prior_index` gives each study's prior as its position in the split (-1: none), which the
dataset serves the prior's images (or cached features) by.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from r2gen.errors import ConfigError
from r2gen.models.prompt import context_text

PARTS = ("indication", "comparison", "prior_report")  # in the order they are written
SWITCHES = (*PARTS, "prior_images", "view_positions")
KEYS = (*SWITCHES, "max_tokens")


@dataclass(frozen=True)
class Context:
    """`context.*`: the text parts the LM reads (`parts`), and `prior_images`: the prior study's images, through
    the same encoder, as their own span of image tokens before the current study's; `view_positions`: a learned
    marker of each image token's view position (r2gen.models.module)."""

    indication: bool = False
    comparison: bool = False
    prior_report: bool = False
    prior_images: bool = False
    view_positions: bool = False
    max_tokens: int = 128

    @classmethod
    def from_config(cls, node: Mapping | None) -> Context:
        """From the `context` config node (None or absent, e.g. a checkpoint from before it: all off)."""
        node = dict(node or {})
        unknown = sorted(set(node) - set(KEYS))
        if unknown:
            raise ConfigError(f"context has unknown key(s) {unknown}: it takes {', '.join(KEYS)}")
        for k in SWITCHES:
            if not isinstance(node.get(k, False), bool):
                raise ConfigError(f"context.{k}={node[k]!r}: choose true or false")
        budget = node.get("max_tokens", cls.max_tokens)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"context.max_tokens={budget!r}: the most context tokens the LM reads, a positive "
                              f"integer (e.g. 128)")
        return cls(**{k: node.get(k, False) for k in SWITCHES}, max_tokens=budget)

    @property
    def parts(self) -> tuple[str, ...]:
        """The text parts that are on, in the order they are written."""
        return tuple(k for k in PARTS if getattr(self, k))

    @property
    def switched_on(self) -> tuple[str, ...]:
        """Every `context.*` switch that is on (for messages)."""
        return tuple(k for k in SWITCHES if getattr(self, k))

    @property
    def enabled(self) -> bool:
        return bool(self.switched_on)

    def texts(self, entries: Sequence[Mapping[str, Any]], clean: Callable[[str], str]) -> list[str]:
        """One context text per study of `entries` (a split's studies, in order)."""
        reports = {str(e["id"]): e["report"] for e in entries} if self.prior_report else {}
        out = []
        for e in entries:
            values = {part: e.get(part) for part in self.parts}
            if self.prior_report:
                prior = e.get("prior_id")
                values["prior_report"] = reports.get(str(prior)) if prior is not None else None
            out.append(context_text(self.parts, values, clean))  # the format's one writer (r2gen.models.prompt)
        return out


def prior_index(entries: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each study's prior as its position in `entries` (the same split), -1 where it has none (or the set-up check
    dropped it, or it has no images: a prior given by its report alone, predict.py)."""
    where = {str(e["id"]): k for k, e in enumerate(entries) if e.get("image_path")}
    return [where.get(str(e.get("prior_id")), -1) if e.get("prior_id") is not None else -1 for e in entries]
