"""Write what an evaluation produced: `metrics.json`, `predictions.jsonl`, `report.html`, and a table on the terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from r2gen.data.clean import detokenize
from r2gen.scoring import METRIC_NAMES
from r2gen.scoring.report_html import write_report

_SUMMARY = re.compile(r"ce_(precision|recall|f1)_(micro|macro|micro_5|macro_5|example)")
_PER_LABEL = re.compile(r"(?:ce_)?(precision|recall|f1)/(.+)")
_SUMMARY_ROWS = {"micro": "micro, 14 labels", "macro": "macro, 14 labels", "micro_5": "micro, common 5",
                 "macro_5": "macro, common 5", "example": "example-based"}
_COLS = ("precision", "recall", "f1")


def format_table(scores: dict[str, float], intervals: dict[str, list[float]] | None = None) -> str:
    """NLG scores (and `score`), then the clinical-efficacy summary (micro/macro precision, recall, F1), then one
    precision / recall / F1 row per label; other scores (e.g. the demo's finding_f1_macro) after the NLG ones.
    `intervals` ({score: [low, high]}): printed beside the scores of the first list and under the summary's."""
    intervals = intervals or {}
    nlg = [k for k in (*METRIC_NAMES, "score") if k in scores]
    summary: dict[str, dict[str, float]] = {}
    summary_keys: dict[str, dict[str, str]] = {}  # row -> column -> the score's name, for its interval
    per_label: dict[str, dict[str, float]] = {}
    other = []
    for k, v in scores.items():
        if k in nlg:
            continue
        if m := _SUMMARY.fullmatch(k):
            summary.setdefault(_SUMMARY_ROWS[m[2]], {})[m[1]] = v
            summary_keys.setdefault(_SUMMARY_ROWS[m[2]], {})[m[1]] = k
        elif m := _PER_LABEL.fullmatch(k):
            per_label.setdefault(m[2], {})[m[1]] = v
        else:
            other.append(k)
    names = nlg + other + list(summary) + list(per_label)
    width = max([len(k) for k in names] + [10])
    lines = [f"  {k:<{width}}  {scores[k]:9.4f}" + (f"  [{intervals[k][0]:.4f}, {intervals[k][1]:.4f}]"
                                                     if k in intervals else "") for k in nlg + other]

    def grid(title: str, rows: dict[str, dict[str, float]], keys: dict[str, dict[str, str]] | None = None) -> None:
        lines.extend(["", f"  {title:<{width}}" + "".join(f"  {c:>9}" for c in _COLS)])
        for name, row in rows.items():
            lines.append(f"  {name:<{width}}" + "".join(f"  {row[c]:9.4f}" if c in row else f"  {'-':>9}"
                                                          for c in _COLS))
            shown = [intervals.get((keys or {}).get(name, {}).get(c, "")) for c in _COLS]
            if any(shown):  # the interval of each cell under it
                lines.append(f"  {'':<{width}}" + "".join(f"  {f'{b[0]:.2f}-{b[1]:.2f}' if b else '':>9}"
                                                           for b in shown))

    if summary:
        grid("clinical efficacy", summary, summary_keys)
    if per_label:
        grid("per label", per_label)
    return "\n".join(lines)


def with_image_paths(records: list[dict], dataset) -> list[dict]:
    """The records with `image_path` (absolute paths of the study's images, as the model saw them) looked up by
    id in a `StudyDataset`'s entries, for the report viewer's thumbnails."""
    root = Path(dataset.image_dir)
    paths = {str(e["id"]): [str(root / p) for p in e["image_path"]] for e in dataset.entries}
    return [{**r, "image_path": paths.get(str(r["id"]), [])} for r in records]


def write_results(out_dir: str | Path, records: list[dict], scores: dict[str, float], meta: dict[str, Any],
                  scoring=None, families=()) -> Path:
    """`out_dir/metrics.json` (scores at the top level, plus meta, the number of studies and, given the
    `Scoring`, the reference protocol and labeler), `out_dir/predictions.jsonl` (one `{"id", "prediction",
    "reference"}` per study: the generated report as people read it, detokenized, and the reference as scored;
    `evaluate.py predictions=` cleans both and scores exactly what this evaluation scored) and `out_dir/report.html`
    (the viewer). `records` hold both reports as scored (cleaned). With the scores' `families` (per-study
    statistics, r2gen.scoring.additive) and a `Scoring` whose bootstrap is on, every score gets its interval:
    metrics.json's "intervals" ({score: [low, high]}) and "bootstrap" (how they were drawn)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "prediction": detokenize(r["prediction"]),
                                "reference": r["reference"]}) + "\n")
    intervals: dict[str, list[float]] = {}
    if scoring is not None:
        meta = {**meta, "references": scoring.reference_protocol, "labeler": scoring.labeler_name}
        if families and scoring.bootstrap.enabled:
            intervals = scoring.intervals(families, scores)
            meta = {**meta, "bootstrap": scoring.bootstrap.method(families), "intervals": intervals}
    body = {**scores, "n_studies": len(records), **meta}
    (out / "metrics.json").write_text(json.dumps(body, indent=2) + "\n")
    write_report(out / "report.html", records, scores, {"n_studies": len(records), **{
        k: v for k, v in meta.items() if k != "intervals"}}, scoring, intervals)
    level = f" (with {scoring.bootstrap.level:.0%} bootstrap intervals)" if intervals else ""
    print(f"\n{meta.get('split', '')} scores over {len(records)} studies{level} ({out}):\n"
          f"{format_table(scores, intervals)}\n\n  per-study view: {out / 'report.html'}\n")
    return out / "metrics.json"
