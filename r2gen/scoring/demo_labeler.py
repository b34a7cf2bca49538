"""The demo's labeler: which of the synthetic set's seven drawn findings a report names, and finding F1.

A rule-based reader of demo-style reports (negation and laterality aware): `label_report(text)` gives {finding: 0/1}
for every name in `r2gen.data.synthetic.FINDINGS`, and `finding_scores` compares generated reports with the
studies' true labels. `data.labeler: demo` scores with it (r2gen.scoring.policy).
"""

from __future__ import annotations

import re

import numpy as np

from r2gen.data.synthetic import FINDINGS
from r2gen.scoring.additive import Family, label_family, ratio, split_counts

_MENTIONS = {"pneumothorax": "pneumothorax", "pneumothoraces": "pneumothorax", "effusion": "effusion",
             "effusions": "effusion", "opacity": "opacity", "opacities": "opacity", "opacification": "opacity",
             "consolidation": "opacity", "consolidations": "opacity", "infiltrate": "opacity",
             "infiltrates": "opacity", "cardiomegaly": "cardiomegaly"}
_NEG = {"no", "not", "without", "negative", "free"}
_STOP = {"but", "however", "although", "though", "whereas", "except"}
_POST_NEG = re.compile(r"\b(absent|resolved|not (seen|identified|present|visualized|evident))\b")
_SIDES = {"left": ("left",), "right": ("right",), "bilateral": ("left", "right"), "bilaterally": ("left", "right"),
          "both": ("left", "right")}
_HEART_WORDS = {"heart", "cardiac", "cardiomediastinal"}


def _sentence_mentions(sentence: str) -> tuple[list[str], list[tuple[int, int, str, bool]]]:
    """The tokens of one lower-cased sentence, and its mentions as (token index, index of the next mention's token
    or the end, kind, negated): kind is pneumothorax / effusion / opacity / cardiomegaly."""
    tokens = re.findall(r"[a-z]+", sentence)
    heart = bool(_HEART_WORDS & set(tokens))
    found = [(i, _MENTIONS.get(t) or "cardiomegaly") for i, t in enumerate(tokens)
             if t in _MENTIONS or (heart and t in ("enlarged", "enlargement"))]
    negated, neg = [], False
    for t in tokens:  # a cue negates up to the sentence end or a but/however
        neg = (neg or t in _NEG) and t not in _STOP
        negated.append(neg)
    out = []
    for j, (i, kind) in enumerate(found):
        nxt = found[j + 1][0] if j + 1 < len(found) else len(tokens)
        out.append((i, nxt, kind, bool(negated[i] or _POST_NEG.search(" ".join(tokens[i + 1:nxt])))))
    return tokens, out


def mentions(text: str):
    """Every mention in a demo-style report, as `(kind, value, sentence, start, end)` (the shape of
    r2gen.scoring.chexpert.mentions): kind pneumothorax / effusion / opacity / cardiomegaly, value 1 or 0 (negated,
    as `label_report` reads it), and the mention's word in its lower-cased sentence."""
    for sentence in re.split(r"[.;!?\n]", (text or "").lower()):
        spans = [m.span() for m in re.finditer(r"[a-z]+", sentence)]
        for i, _, kind, negated in _sentence_mentions(sentence)[1]:
            yield kind, 0 if negated else 1, sentence, *spans[i]


def label_report(text: str) -> dict[str, int]:
    """{finding: 0/1} for every name in FINDINGS, from a demo-style report (raw or R2Gen-cleaned).

    Per sentence (split on . ; ! ? and newlines): a mention after a negation cue (no/not/without/negative/free,
    up to but/however/... or the sentence end) or followed by 'not seen'/'absent'/... before the next mention is
    negative; cardiomegaly is 'cardiomegaly' or 'enlarged/enlargement' in a sentence about the heart ('heart size
    is normal' mentions nothing). A mention's side comes from the nearest left/right/bilateral/both words
    since the previous mention, else the first one after it; a positive mention with no side counts for both sides.
    """
    out = {k: 0 for k in FINDINGS}
    for sentence in re.split(r"[.;!?\n]", text.lower()):
        tokens, found = _sentence_mentions(sentence)
        for j, (i, nxt, kind, negated) in enumerate(found):
            if negated:
                continue
            if kind == "cardiomegaly":
                out[kind] = 1
                continue
            sides: set[str] = set()  # the nearest side words before it ("left and right" counts as one)
            for t in reversed(tokens[found[j - 1][0] + 1 if j else 0:i]):
                if t in _SIDES:
                    sides.update(_SIDES[t])
                elif sides and t not in ("and", "or"):
                    break
            if not sides:
                after = [_SIDES[t] for t in tokens[i + 1:nxt] if t in _SIDES]
                sides = set(after[0]) if after else {"left", "right"}
            for s in sides:
                out[f"{kind}_{s}"] = 1
    return out


def finding_scores(predictions: list[str], references_labels: list[dict[str, int]]) -> dict[str, float]:
    """Finding F1 of generated reports: label each prediction with `label_report`, compare with the true labels.

    Returns `finding_f1_macro` (mean of the per-finding F1s), `finding_f1_micro` (F1 of all findings' counts
    pooled), `finding_acc_exact` (share of studies with every finding right) and `f1/<finding>` for each finding.
    A finding with no positives in both predictions and truth has F1 1.0 (nothing to find, nothing wrongly found);
    the same holds for the micro F1.
    """
    return finding_family(predictions, references_labels).scores()


def finding_family(predictions: list[str], references_labels: list[dict[str, int]]) -> Family:
    """`finding_scores` as per-study counts that add up (r2gen.scoring.additive)."""
    if len(predictions) != len(references_labels):
        raise ValueError(f"{len(predictions)} predictions but {len(references_labels)} reference label sets")
    if not predictions:
        raise ValueError("finding_scores needs at least one prediction")
    pred = np.array([[label_report(p)[k] for k in FINDINGS] for p in predictions], dtype=bool)
    true = np.array([[int(r.get(k, 0)) for k in FINDINGS] for r in references_labels], dtype=bool)
    exact = np.stack([(pred == true).all(1), np.ones(len(pred))], axis=1)  # [N, 2]
    n = len(FINDINGS)

    def f1(tp, fp, fn) -> np.ndarray:
        return np.where(tp + fp + fn == 0, 1.0, ratio(2 * tp, 2 * tp + fp + fn))

    def combine(t: np.ndarray) -> dict[str, np.ndarray]:
        tp, fp, fn = split_counts(t, n)
        per = f1(tp, fp, fn)  # [..., n]
        return {"finding_f1_macro": per.mean(-1), "finding_f1_micro": f1(tp.sum(-1), fp.sum(-1), fn.sum(-1)),
                "finding_acc_exact": ratio(t[..., 3 * n], t[..., 3 * n + 1]),
                **{f"f1/{k}": per[..., i] for i, k in enumerate(FINDINGS)}}

    names = ["finding_f1_macro", "finding_f1_micro", "finding_acc_exact", *(f"f1/{k}" for k in FINDINGS)]
    return label_family(pred, true, combine, names, extra=exact)
