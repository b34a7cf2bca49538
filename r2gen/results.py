"""Write what an evaluation produced: `metrics.json`, `predictions.jsonl`, and a table on the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r2gen.metrics import METRIC_NAMES


def format_table(scores: dict[str, float]) -> str:
    keys = [k for k in METRIC_NAMES if k in scores] + sorted(k for k in scores if k not in METRIC_NAMES)
    width = max(len(k) for k in keys)
    return "\n".join(f"  {k:<{width}}  {scores[k]:.4f}" for k in keys)


def write_results(out_dir: str | Path, records: list[dict[str, str]], scores: dict[str, float],
                  meta: dict[str, Any]) -> Path:
    """`out_dir/metrics.json` (scores at the top level, plus meta and the number of studies) and
    `out_dir/predictions.jsonl` (one `{"id", "prediction", "reference"}` per study)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"id": r["id"], "prediction": r["prediction"], "reference": r["reference"]}) + "\n")
    body = {**scores, "n_studies": len(records), **meta}
    (out / "metrics.json").write_text(json.dumps(body, indent=2) + "\n")
    print(f"\n{meta.get('split', '')} scores over {len(records)} studies ({out}):\n{format_table(scores)}\n")
    return out / "metrics.json"
