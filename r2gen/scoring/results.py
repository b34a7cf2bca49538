"""Write what an evaluation produced: `metrics.json`, `predictions.jsonl`, `report.html`, and a table on the terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from r2gen.data.clean import detokenize
from r2gen.scoring import METRIC_NAMES
from r2gen.scoring.report_html import write_report

_SUMMARY = re.compile(r"ce_(precision|recall|f1)_(micro|macro|micro_5)")
_PER_LABEL = re.compile(r"(?:ce_)?(precision|recall|f1)/(.+)")
_SUMMARY_ROWS = {"micro": "micro, 14 labels", "macro": "macro, 14 labels", "micro_5": "micro, common 5"}
_COLS = ("precision", "recall", "f1")


def format_table(scores: dict[str, float]) -> str:
    """NLG scores (and `score`), then the clinical-efficacy summary (micro/macro precision, recall, F1), then one
    precision / recall / F1 row per label; other scores (e.g. the demo's finding_f1_macro) after the NLG ones."""
    nlg = [k for k in (*METRIC_NAMES, "score") if k in scores]
    summary: dict[str, dict[str, float]] = {}
    per_label: dict[str, dict[str, float]] = {}
    other = []
    for k, v in scores.items():
        if k in nlg:
            continue
        if m := _SUMMARY.fullmatch(k):
            summary.setdefault(_SUMMARY_ROWS[m[2]], {})[m[1]] = v
        elif m := _PER_LABEL.fullmatch(k):
            per_label.setdefault(m[2], {})[m[1]] = v
        else:
            other.append(k)
    names = nlg + other + list(summary) + list(per_label)
    width = max([len(k) for k in names] + [10])
    lines = [f"  {k:<{width}}  {scores[k]:9.4f}" for k in nlg + other]

    def grid(title: str, rows: dict[str, dict[str, float]]) -> None:
        lines.extend(["", f"  {title:<{width}}" + "".join(f"  {c:>9}" for c in _COLS)])
        for name, row in rows.items():
            lines.append(f"  {name:<{width}}" + "".join(f"  {row[c]:9.4f}" if c in row else f"  {'-':>9}"
                                                          for c in _COLS))

    if summary:
        grid("clinical efficacy", summary)
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
                  scoring=None) -> Path:
    """`out_dir/metrics.json` (scores at the top level, plus meta, the number of studies and, given the
    `Scoring`, the reference protocol and labeler), `out_dir/predictions.jsonl` (one `{"id", "prediction",
    "reference"}` per study: the generated report as people read it, detokenized, and the reference as scored;
    `evaluate.py predictions=` cleans both and scores exactly what this evaluation scored) and `out_dir/report.html`
    (the viewer). `records` hold both reports as scored (cleaned)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "prediction": detokenize(r["prediction"]),
                                "reference": r["reference"]}) + "\n")
    if scoring is not None:
        meta = {**meta, "references": scoring.reference_protocol, "labeler": scoring.labeler_name}
    body = {**scores, "n_studies": len(records), **meta}
    (out / "metrics.json").write_text(json.dumps(body, indent=2) + "\n")
    write_report(out / "report.html", records, scores, {"n_studies": len(records), **meta}, scoring)
    print(f"\n{meta.get('split', '')} scores over {len(records)} studies ({out}):\n{format_table(scores)}\n"
          f"\n  per-study view: {out / 'report.html'}\n")
    return out / "metrics.json"
