"""Score a corpus of generated reports: NLG metrics (pycocoevalcap) and, where the data set has a labeler,
finding F1 from labelling predictions and references alike."""

from __future__ import annotations

from collections.abc import Mapping


def labeler_scores(name: str | None, predictions: list[str], references: list[str]) -> dict[str, float]:
    if not name:
        return {}
    if name == "demo":
        from r2gen.data.synthetic import finding_scores, label_report

        return finding_scores(predictions, [label_report(r) for r in references])
    raise ValueError(f"data.labeler={name!r}: choose demo or null")


def score_records(records: list[dict[str, str]], labeler: str | None = None,
                  weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Corpus scores of `[{"id", "prediction", "reference"}]`, plus `score`, the weighted sum used to pick the
    best checkpoint (`monitor.weights`, e.g. 0.5*Bleu_4 + 0.5*CIDEr as R2GenGPT)."""
    from r2gen.metrics import score_corpus

    preds = [r["prediction"] for r in records]
    refs = [r["reference"] for r in records]
    scores = score_corpus(preds, refs)
    scores.update(labeler_scores(labeler, preds, refs))
    if weights:
        unknown = [k for k in weights if k not in scores]
        if unknown:
            raise ValueError(f"monitor.weights names {unknown}, not among the scores {sorted(scores)}")
        scores["score"] = float(sum(w * scores[k] for k, w in weights.items()))
    return scores
