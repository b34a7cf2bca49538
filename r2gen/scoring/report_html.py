"""`report.html`: a self-contained page to read an evaluation study by study (no CDN, no network: inline CSS, JS and
SVG; images embedded as small base64 JPEG thumbnails).

At the top: what was scored and how, the corpus scores, a histogram of the per-study scores and the per-label F1
as bars. Below: one row per study with its thumbnails (when the records carry `image_path`), the generated and
the reference report side by side, per-study BLEU-4 / ROUGE-L / CIDEr and the labels on which the labeler reads
the two reports differently. A click on a column header sorts the rows. Reports are scored and labelled as given
(cleaned) and shown detokenized, as people write them (r2gen.data.clean.detokenize).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r2gen.data.clean import detokenize
from r2gen.data.images import load_image
from r2gen.scoring import per_sample_scores
from r2gen.scoring.laterality import report_sides
from r2gen.scoring.temporal import report_changes

STUDY_SCORES = ("Bleu_4", "ROUGE_L", "CIDEr")  # what per_sample_scores gives
THUMB = 128  # thumbnail side in pixels
PER_LABEL_F1 = re.compile(r"(?:ce_)?f1/(.+)")

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f3f3f3}#studies th{cursor:pointer;user-select:none}#studies th:hover{background:#e4e4ff}
.num{text-align:right;font-variant-numeric:tabular-nums}.txt{max-width:34em}.meta td{border:none;padding:1px 8px}
.plots{display:flex;gap:2em;flex-wrap:wrap;margin:1em 0}.plots svg{background:#fafafa;border:1px solid #ddd}
.fp{background:#fdd;color:#900}.fn{background:#ffe6b3;color:#7a4a00}.chip{display:inline-block;border-radius:3px;
padding:0 4px;margin:1px;font-size:12px}img{margin:1px;border:1px solid #bbb}.none{color:#999}
"""
JS = """
document.querySelectorAll('#studies th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = document.querySelector('#studies tbody'), rows = Array.from(body.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir > 0 ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      return dir * (isNaN(nx) || isNaN(ny) ? String(x).localeCompare(String(y)) : nx - ny);
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def thumbnail(path: str | Path) -> str | None:
    """A data: URI of a small grey JPEG of the image (PNG, JPEG or DICOM, read as the model reads it), or None
    when it cannot be read: a missing thumbnail must not cost the evaluation that just ran."""
    try:
        im = load_image(path).convert("L")
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=70)
    except Exception:  # noqa: BLE001 - any decoder's failure (PIL, pydicom) just leaves the cell empty
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _histogram(values: Sequence[float], title: str, bins: int = 20, w: int = 360, h: int = 180) -> str:
    # scores are >= 0; the axis starts at 0 and spans at least [0, 1] (CIDEr may exceed 1), so a corpus of
    # near-zero scores shows as one bar at 0 rather than spread over a range too small to print
    lo, hi = 0.0, max(1.0, *values) if values else 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top, bw = max(counts) or 1, (w - 40) / bins
    bars = "".join(f'<rect x="{30 + i * bw:.1f}" y="{h - 25 - c / top * (h - 50):.1f}" width="{bw - 1:.1f}" '
                   f'height="{c / top * (h - 50):.1f}" fill="#5b7bd5"><title>{c} studies</title></rect>'
                   for i, c in enumerate(counts))
    return (f'<svg width="{w}" height="{h}" role="img"><text x="{w / 2}" y="15" text-anchor="middle">{_esc(title)} '
            f'per study (n={len(values)})</text>{bars}<text x="30" y="{h - 8}">{lo:.2f}</text>'
            f'<text x="{w - 10}" y="{h - 8}" text-anchor="end">{hi:.2f}</text>'
            f'<text x="5" y="35">{top}</text></svg>')


def _bars(f1: dict[str, float], w: int = 420) -> str:
    row = 18
    h = 30 + row * len(f1)
    bars = "".join(f'<text x="175" y="{38 + i * row}" text-anchor="end">{_esc(k)}</text>'
                   f'<rect x="180" y="{26 + i * row}" width="{v * (w - 230):.1f}" height="{row - 4}" fill="#3a9d5d"/>'
                   f'<text x="{185 + v * (w - 230):.1f}" y="{38 + i * row}">{v:.2f}</text>'
                   for i, (k, v) in enumerate(f1.items()))
    return f'<svg width="{w}" height="{h}" role="img"><text x="{w / 2}" y="15" text-anchor="middle">F1 per label</text>{bars}</svg>'


def _chips(pred: dict[str, int], ref: dict[str, int], sides: Sequence[tuple[str, str, str]] = (),
           changes: Sequence[tuple[str, str, str]] = ()) -> tuple[int, str]:
    """Label disagreements, `sides`: (observation, generated side, reference side) where both differ, and
    `changes`: (finding, generated change class or none, reference class) where they differ."""
    fp = [k for k in ref if pred.get(k) and not ref[k]]
    fn = [k for k in ref if ref[k] and not pred.get(k)]
    chips = "".join(f'<span class="chip fp" title="in the generated report only">+{_esc(k)}</span>' for k in fp)
    chips += "".join(f'<span class="chip fn" title="in the reference only">&minus;{_esc(k)}</span>' for k in fn)
    chips += "".join(f'<span class="chip fp" title="generated side vs the reference\'s">&#8646;{_esc(k)}: '
                     f'{_esc(g)} vs {_esc(r)}</span>' for k, g, r in sides)
    chips += "".join(f'<span class="chip fn" title="generated change since the prior vs the reference\'s">&Delta; '
                     f'{_esc(k)}: {_esc(g)} vs {_esc(r)}</span>' for k, g, r in changes)
    return len(fp) + len(fn) + len(sides) + len(changes), chips or '<span class="none">agree</span>'


def _side_errors(pred: str, ref: str) -> list[tuple[str, str, str]]:
    """Sided observations both reports state with different sides (r2gen.scoring.laterality)."""
    p, r = report_sides(pred), report_sides(ref)
    return [(k, p[k], r[k]) for k in r if k in p and p[k] != r[k]]


def _change_errors(pred: str, ref: str, labeler: str) -> list[tuple[str, str, str]]:
    """Findings whose change the reference states and the generated report states otherwise, or not at all
    (r2gen.scoring.temporal)."""
    p, r = report_changes(pred, labeler), report_changes(ref, labeler)
    return [(k, p.get(k, "none"), r[k]) for k in r if p.get(k) != r[k]]


def render(records: Sequence[dict], scores: dict[str, float], meta: dict[str, Any], scoring=None,
           intervals: dict[str, list[float]] | None = None) -> str:
    """The page, as a string. `records`: `{"id", "prediction", "reference"[, "image_path": [...]]}` as scored;
    `intervals`: {score: [low, high]}, shown beside the corpus scores."""
    intervals = intervals or {}
    preds = [r["prediction"] for r in records]
    refs = [r["reference"] for r in records]
    per = per_sample_scores(preds, refs) if records else []
    labeled = scoring is not None and scoring.labeler
    plabels, rlabels = (scoring.labels(preds), scoring.labels(refs)) if labeled else ([], [])
    summary = "".join(f"<tr><th>{_esc(k)}</th><td class='num'>{v:.4f}</td>" + (
        f"<td class='num'>{_interval(intervals.get(k))}</td>" if intervals else "") + "</tr>"
        for k, v in scores.items() if "/" not in k)  # per-label scores are drawn below
    if intervals:
        level = meta.get("bootstrap", {}).get("level", 0.95)
        summary = f"<tr><th>score</th><th>value</th><th>{level:.0%} interval</th></tr>" + summary
    f1 = {m[1]: v for k, v in scores.items() if (m := PER_LABEL_F1.fullmatch(k))}
    plots = "".join(_histogram([p[k] for p in per], k) for k in STUDY_SCORES) + (_bars(f1) if f1 else "")
    head = ["#", "id", "images", "generated", "reference", *STUDY_SCORES] + (["disagreements"] if labeled else [])
    rows = []
    for i, r in enumerate(records):
        thumbs = [t for t in (thumbnail(p) for p in r.get("image_path") or []) if t]
        imgs = "".join(f'<img src="{t}" alt="view {j}">' for j, t in enumerate(thumbs))
        cells = [(i, i), (r["id"], _esc(r["id"])), (len(thumbs), imgs or '<span class="none">none</span>'),
                 *((t, _esc(t)) for t in (detokenize(r["prediction"]), detokenize(r["reference"])))]
        cells += [(f"{per[i][k]:.6f}", f"{per[i][k]:.3f}") for k in STUDY_SCORES]
        if labeled:
            sides = _side_errors(r["prediction"], r["reference"]) if scoring.labeler == "chexpert" else []
            cells.append(_chips(plabels[i], rlabels[i], sides,
                                _change_errors(r["prediction"], r["reference"], scoring.labeler)))
        tds = "".join(f'<td data-v="{_esc(v)}"{" class=txt" if j in (3, 4) else ""}>{shown}</td>'
                      for j, (v, shown) in enumerate(cells))
        rows.append(f"<tr>{tds}</tr>")
    shown_meta = {k: v for k, v in meta.items() if k != "protocol"}
    shown_meta.update({f"protocol.{k}": v for k, v in (meta.get("protocol") or {}).items()})  # a row each
    info = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>"
                   for k, v in shown_meta.items())
    legend = ('<p><span class="chip fp">+label</span> the labeler finds it in the generated report only; '
              '<span class="chip fn">&minus;label</span> in the reference only; <span class="chip fp">&#8646;label: '
              'left vs right</span> stated on another side than in the reference; <span class="chip fn">&Delta; label: new '
              'vs unchanged</span> another change since the prior study (or none) than the reference states.</p>'
              if labeled else "")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>r2gen report: {_esc(meta.get('split', ''))}"
            f"</title><style>{CSS}</style></head><body><h1>r2gen evaluation: {len(records)} studies</h1>"
            f"<table class='meta'>{info}</table><h2>Corpus scores</h2><table>{summary}</table>"
            f"<div class='plots'>{plots}</div><h2>Studies</h2><p>Click a column header to sort.</p>{legend}"
            f"<table id='studies'><thead><tr>{''.join(f'<th>{_esc(h)}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><script>{JS}</script></body></html>\n")


def _interval(bounds: Sequence[float] | None) -> str:
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else ""


def write_report(path: str | Path, records: Sequence[dict], scores: dict[str, float], meta: dict[str, Any],
                 scoring=None, intervals: dict[str, list[float]] | None = None) -> Path:
    path = Path(path)
    path.write_text(render(records, scores, meta, scoring, intervals), encoding="utf-8")
    return path
