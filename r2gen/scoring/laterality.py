"""Laterality: does a generated report put a finding on the same side as the reference?

A left/right mistake is among the errors radiologists fear most in a generated report, and neither the NLG scores
nor the CheXpert F1 see it ("left pleural effusion" and "right pleural effusion" label identically). For the
sided observations in `SIDED`, each POSITIVE mention found by the rule-based CheXpert labeler
(`r2gen.scoring.chexpert.mentions`) takes the side words that qualify it: before it, back to the previous mention
or a conjunction ("small left pleural effusion", "left greater than right effusions", "bibasilar atelectasis"),
and after it, up to the next mention or a conjunction ("opacity in the right lower lobe", "effusion on the left
and pneumothorax on the right"). A report's side for an observation is the union over its positive mentions:
left, right, or bilateral (both, or a word such as "bilateral", "bibasilar").

Scores over the (study, observation) pairs where both reports are positive for the observation and the reference
names a side: `laterality_acc` (the generated report names the same side), `laterality_wrong_side` (it names a
different one: the dangerous error), the rest named no side; `laterality_n` is the number of such pairs, and
`laterality_acc/<observation>` the accuracy per observation. With no such pair only `laterality_n` (0) is given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from r2gen.scoring.additive import Family, ratio_or_nan
from r2gen.scoring.chexpert import POSITIVE, mentions

SIDED = ("Pleural Effusion", "Pneumothorax", "Lung Opacity", "Atelectasis")
_SIDE_RX = re.compile(r"\b(?:(left)|(right)|(bilateral(?:ly)?|both|bibasilar|bibasal|biapical|bilat))\b")
_STOP_RX = re.compile(r"\b(?:and|with|or|as well as|also|plus)\b|,")


def _sides(segment: str) -> set[str]:
    found: set[str] = set()
    for m in _SIDE_RX.finditer(segment):
        found |= {"left"} if m[1] else {"right"} if m[2] else {"left", "right"}
    return found


def report_sides(text: str) -> dict[str, str]:
    """{observation: "left" | "right" | "bilateral"} for the sided observations the report states positively and
    with a side; observations without a stated side are left out."""
    by_clause: dict[str, list[tuple[str, int, int, int]]] = {}
    for label, value, clause, a, b in mentions(text):
        by_clause.setdefault(clause, []).append((label, value, a, b))
    out: dict[str, set[str]] = {}
    for clause, found in by_clause.items():
        spans = sorted((a, b) for _, _, a, b in found)
        for label, value, a, b in found:
            if label not in SIDED or value != POSITIVE:
                continue
            prev_end = max([e for s, e in spans if e <= a], default=0)
            next_start = min([s for s, e in spans if s >= b], default=len(clause))
            before = clause[prev_end:a]
            stops = list(_STOP_RX.finditer(before))
            before = before[stops[-1].end():] if stops else before
            after = clause[b:next_start]
            stop = _STOP_RX.search(after)
            after = after[: stop.start()] if stop else after
            sides = _sides(before) | _sides(after)
            if sides:
                out.setdefault(label, set()).update(sides)
    return {k: "bilateral" if v == {"left", "right"} else next(iter(v)) for k, v in out.items()}


def laterality_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`laterality_acc`, `laterality_wrong_side`, `laterality_n` and `laterality_acc/<observation>` (see the module
    docstring) of a corpus."""
    return laterality_family(predictions, references).scores()


def laterality_family(predictions: Sequence[str], references: Sequence[str]) -> Family:
    """Per study, for each sided observation: the (pairs, same side, different side) counts that add up
    (r2gen.scoring.additive). A rate with no pair to count is undefined (NaN: left out of the scores)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    k = len(SIDED)
    stats = np.zeros((len(predictions), 3 * k))  # [pairs per observation, same side..., different side...]
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        ref_sides = report_sides(ref)
        if not ref_sides:
            continue
        pred_labels = {label for label, value, *_ in mentions(pred) if value == POSITIVE}
        pred_sides = report_sides(pred)
        for label, side in ref_sides.items():
            if label not in pred_labels:
                continue  # a missed finding is the CE scores' business, not a side error
            j = SIDED.index(label)
            stats[i, j] += 1
            stats[i, k + j] += pred_sides.get(label) == side
            stats[i, 2 * k + j] += label in pred_sides and pred_sides[label] != side

    def combine(t: np.ndarray) -> dict[str, np.ndarray]:
        pairs, same, other = t[..., :k], t[..., k:2 * k], t[..., 2 * k:]
        n = pairs.sum(-1)
        return {"laterality_n": n, "laterality_acc": ratio_or_nan(same.sum(-1), n),
                "laterality_wrong_side": ratio_or_nan(other.sum(-1), n),
                **{f"laterality_acc/{o}": ratio_or_nan(same[..., j], pairs[..., j]) for j, o in enumerate(SIDED)}}

    names = ("laterality_n", "laterality_acc", "laterality_wrong_side", *(f"laterality_acc/{o}" for o in SIDED))
    return Family(names, stats, combine)
