"""Temporal: does a generated report state the same change for a finding as the reference?

A report read against the prior study says how each finding changed: new, worse, better, unchanged or resolved.
Neither the NLG scores nor the CE F1 see it ("new left effusion" and "unchanged left effusion" label alike). This
is a keyword method, offline and deterministic: RadEval's Temporal F1 finds temporal entities with a downloaded NER
model; here the change words are the regular expressions in `CHANGE_WORDS`, read around the mentions a rule-based
labeler finds (r2gen.scoring.chexpert.mentions for data.labeler=chexpert, its 14 observations;
r2gen.scoring.demo_labeler.mentions for data.labeler=demo, its findings without their side).

A mention takes the change words that qualify it in its clause, as laterality takes side words: before it, back
to the previous mention or a conjunction ("new small left pleural effusion", "interval increase in bilateral
effusions"), and after it, up to the next mention or a conjunction ("the right pneumothorax has resolved",
"effusion, unchanged"); the nearest word wins (ties: the one before). Inside a mention only `unchanged` words
count ("the heart is again enlarged"). Mentions in a list share the words of their neighbours ("stable
cardiomegaly and effusion", "cardiomegaly and effusions are unchanged"). The labeler's value decides what a
mention may take: a negative mention ("no new consolidation", "no increase in effusion", "no pneumothorax") takes
only `resolved` ("the pneumothorax has resolved", "resolution of the effusion", "no longer seen", "interval
removal of the tube", which the labeler reads as negative) and partial resolution, `better` ("partially resolved
effusion"); any other change word next to it sits in a negative statement, which states no change: "no new
effusion" counts as none, not as `new` or `unchanged`. `NOT_CHANGE` blanks phrases that hold a change word but
state none ("follow up to resolution"). Positive and uncertain
mentions take any class ("possible new opacity" is new). A report's class for a finding is the first of
`CLASSES`, in that order, among its mentions' classes: a change beats no change.

Scores over the (study, finding) pairs where the reference states a change class (a generated report's change
where the reference states none is not counted): `temporal_acc` (the generated report states the same class),
`temporal_f1/<class>` (F1 of that class, the generated report's class, or none, as the prediction) for each class
the references state, `temporal_f1_macro` (their mean: a class no reference states is left out, not scored 0),
and `temporal_n` (the number of pairs). With no pair only `temporal_n` (0) is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from r2gen.scoring import chexpert, demo_labeler
from r2gen.scoring.additive import Family, ratio, ratio_or_nan

CLASSES = ("new", "worse", "better", "resolved", "unchanged")  # also the precedence among a report's mentions
# Change words, as regular expressions on the labeler's lower-cased text (R2Gen-cleaned or raw; "-" is a space).
# At one place the first listed class that matches wins, so phrases holding another class's word come early
# ("no longer seen" is resolved, "no interval change" unchanged); partial resolution, better, comes before all.
PARTIAL_RESOLUTION = (r"(?:partial(?:ly)?|near(?:ly)?|almost|incomplete(?:ly)?|not completely) (?:resolved|"
                      r"resolution|cleared|clearing)",)
CHANGE_WORDS: dict[str, tuple[str, ...]] = {
    "better": (r"resolving", r"improv(?:e|ed|es|ing|ement)", r"decreas(?:e|ed|es|ing)",
               r"smaller", r"less (?:\w+ )?(?:prominent|extensive|conspicuous|pronounced|dense|confluent|apparent|"
               r"evident|marked|severe|opacified)", r"diminish(?:ed|es|ing)?", r"reduc(?:ed|tion|ing)",
               r"clearing", r"lessen(?:ed|ing)", r"regress(?:ed|ing|ion)"),
    "resolved": (r"resol(?:ved?|ution)", r"cleared", r"no longer (?:\w+ )?(?:seen|visualized|visible|present|"
                 r"evident|identified|demonstrated|appreciated|noted|apparent|detected)", r"remov(?:ed|al)",
                 r"withdrawn", r"disappear(?:ed|ance)"),
    "unchanged": (r"unchanged", r"stable", r"stably", r"persist(?:s|ed|ing|ent|ently|ence)?", r"similar",
                  r"no (?:significant |interval |appreciable |substantial |definite )*changes?",
                  r"not (?:significantly )?changed", r"without (?:significant |interval )*change", r"again",
                  r"re ?demonstrat(?:ed|es|ion)", r"remain(?:s|ed)?", r"still", r"constant", r"unaltered"),
    "new": (r"new(?:ly)?", r"interval (?:development|appearance)", r"(?:has |have )?developed"),
    # "increased" alone before an opacity word describes the image, not a change: "increased opacity at the base"
    "worse": (r"interval increase\w*", r"increased(?! (?:\w+ ){0,2}?(?:opaci|densit|interstitial|lucen|attenuation|"
              r"markings|air ?space|radiodens|radiopac))", r"increas(?:e|es|ing)", r"wors(?:e|en|ens|ened|ening)",
              r"progress(?:ed|es|ing|ion|ive|ively)", r"larger", r"bigger", r"enlarging", r"grow(?:n|s|ing|th)",
              r"more (?:\w+ )?(?:prominent|extensive|conspicuous|pronounced|dense|confluent|apparent|evident|"
              r"marked|severe|opacified)"),
}
# Phrases with a change word that state no change: blanked out first.
NOT_CHANGE = (r"(?:to|until|document|confirm|ensure|assess|evaluate)(?: for)? (?:complete |the )?resolution",
              r"remainder", r"new(?:ly)? (?:onset|symptoms?|complaints?|pain)")
_STOP_RX = re.compile(r"\b(?:and|with|or|as well as|also|plus|nor)\b|,")
_LIST_WORDS = {"and", "or", "nor", "as well as", ","}


def _rx(patterns: Iterable[str]) -> str:
    return r"\b(?:" + "|".join(patterns) + r")\b"


# A regex group per class, partial resolution first (its own group: a negative mention may take it, as it may take
# resolved, since the labeler reads "resolved" and "resolution of" as negations)
_GROUPS = {"partial": PARTIAL_RESOLUTION, **CHANGE_WORDS}
_CLASS_OF = {"partial": "better", **{c: c for c in CHANGE_WORDS}}
_ON_NEGATIVE = ("partial", "resolved")
_CHANGE_RX = re.compile("|".join(f"(?P<{c}>{_rx(p)})" for c, p in _GROUPS.items()))
_NOT_CHANGE_RX = re.compile(_rx(NOT_CHANGE))
_WORD_RX = re.compile(r"\w+")


def _blank(text: str) -> str:
    return _NOT_CHANGE_RX.sub(lambda m: "#" * len(m.group()), text)


def _is_list(gap: str) -> bool:
    """Whether the text between two mentions only joins them in a list: a list word or comma, no other stop, and a
    few words at most ("cardiomegaly and pleural effusions are unchanged")."""
    stops = [m[0] for m in _STOP_RX.finditer(gap)]
    return bool(stops) and set(stops) <= _LIST_WORDS and len(_WORD_RX.findall(gap)) - len(stops) <= 3


def _clause_changes(clause: str, found: list[tuple[str, int, int, int]]) -> list[str | None]:
    """The change class of each mention `(label, value, start, end)` of one clause (None: none stated)."""
    words = [(m.start(), m.end(), m.lastgroup) for m in _CHANGE_RX.finditer(clause)]  # whole clause: lookaheads
    order = sorted(range(len(found)), key=lambda i: found[i][2:])
    spans = [found[i][2:] for i in order]
    own: list[tuple[str | None, str | None]] = []  # per mention in clause order: (group, "before" | "after")
    for k, (a, b) in enumerate(spans):
        prev_end = max([e for j, (s, e) in enumerate(spans) if j != k and e <= a], default=0)
        next_start = min([s for j, (s, e) in enumerate(spans) if j != k and s >= b], default=len(clause))
        stops = list(_STOP_RX.finditer(clause, prev_end, a))
        lo = stops[-1].end() if stops else prev_end
        stop = next((m for m in _STOP_RX.finditer(clause, b, next_start)  # "effusion, unchanged." at the end
                     if m[0] != "," or next_start < len(clause)), None)
        hi = stop.start() if stop else next_start
        pre = [(len(_WORD_RX.findall(clause, e, a)), g) for s, e, g in words if lo <= s and e <= a]
        post = [(len(_WORD_RX.findall(clause, b, s)), g) for s, e, g in words if b <= s and e <= hi]
        if not pre:  # inside the mention only unchanged words: "the heart is again enlarged"
            pre = [(0, g) for s, e, g in words if a <= s and e <= b and g == "unchanged"]
        if pre and (not post or min(pre)[0] <= min(post)[0]):
            own.append((min(pre)[1], "before"))
        else:
            own.append((min(post)[1], "after") if post else (None, None))
    groups = [g for g, _ in own]
    for k in range(len(spans)):  # a list shares its members' words: "stable cardiomegaly and effusion"
        for step, side in ((-1, "before"), (1, "after")):
            j = k
            while groups[k] is None and 0 <= j + step < len(spans) and _is_list(
                    clause[spans[min(j, j + step)][1]:spans[max(j, j + step)][0]]):
                j += step
                if own[j][1] is not None:
                    groups[k] = own[j][0] if own[j][1] == side else None
                    break
    out: list[str | None] = [None] * len(found)
    for k, i in enumerate(order):
        if groups[k] is not None and (found[i][1] != 0 or groups[k] in _ON_NEGATIVE):  # "no new effusion": none
            out[i] = _CLASS_OF[groups[k]]
    return out


def _changes(mentions: Iterable[tuple[str, int, str, int, int]]) -> dict[str, str]:
    by_clause: dict[str, list[tuple[str, int, int, int]]] = {}
    for label, value, clause, a, b in mentions:
        by_clause.setdefault(clause, []).append((label, value, a, b))
    stated: dict[str, set[str]] = {}
    for clause, found in by_clause.items():
        for (label, *_), cls in zip(found, _clause_changes(_blank(clause), found), strict=True):
            if cls is not None:
                stated.setdefault(label, set()).add(cls)
    return {label: next(c for c in CLASSES if c in found) for label, found in stated.items()}


def _mentions_of(labeler: str) -> Callable[[str], Iterable[tuple[str, int, str, int, int]]]:
    if labeler == "chexpert":
        return lambda text: chexpert.mentions(text, masked=False)  # "no interval change" shown, not blanked
    if labeler == "demo":
        return demo_labeler.mentions
    raise ValueError(f"labeler={labeler!r}: choose chexpert or demo")


def report_changes(text: str, labeler: str = "chexpert") -> dict[str, str]:
    """{finding: change class} for the findings the report states a change for (see the module docstring); the
    findings are CheXpert observations (labeler="chexpert") or the demo's findings without side ("demo")."""
    return _changes(_mentions_of(labeler)(text))


def temporal_scores(predictions: Sequence[str], references: Sequence[str], labeler: str = "chexpert"
                    ) -> dict[str, float]:
    """`temporal_acc`, `temporal_f1_macro`, `temporal_f1/<class>` and `temporal_n` of a corpus (module docstring)."""
    return temporal_family(predictions, references, labeler).scores()


def temporal_family(predictions: Sequence[str], references: Sequence[str], labeler: str = "chexpert") -> Family:
    """Per study, the confusion counts of its (finding, reference class) pairs: reference class x generated class
    (or none), which add up (r2gen.scoring.additive). A score with no pair to count is undefined (NaN: left out)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    k = len(CLASSES)
    stats = np.zeros((len(predictions), k, k + 1))  # [N, reference class, generated class | none]
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        ref_changes = report_changes(ref, labeler)
        if not ref_changes:
            continue
        pred_changes = report_changes(pred, labeler)
        for finding, cls in ref_changes.items():
            stats[i, CLASSES.index(cls), CLASSES.index(pred_changes[finding]) if finding in pred_changes else k] += 1

    def combine(t: np.ndarray) -> dict[str, np.ndarray]:
        conf = t.reshape(*t.shape[:-1], k, k + 1)
        n = conf.sum((-2, -1))
        tp = np.diagonal(conf[..., :k], axis1=-2, axis2=-1)  # [..., k]
        stated = conf.sum(-1)  # pairs per reference class: tp + fn
        predicted = conf.sum(-2)[..., :k]  # pairs per generated class: tp + fp
        f1 = ratio(2 * tp, stated + predicted)
        present = stated > 0
        per = np.where(present, f1, np.nan)
        return {"temporal_n": n, "temporal_acc": ratio_or_nan(tp.sum(-1), n),
                "temporal_f1_macro": ratio_or_nan((f1 * present).sum(-1), present.sum(-1)),
                **{f"temporal_f1/{c}": per[..., j] for j, c in enumerate(CLASSES)}}

    names = ("temporal_n", "temporal_acc", "temporal_f1_macro", *(f"temporal_f1/{c}" for c in CLASSES))
    return Family(names, stats.reshape(len(predictions), k * (k + 1)), combine)
