"""Time to score a test set the size of R2GenGPT's MIMIC-CXR test split (3,858 reports) with r2gen's scoring.

    python benchmarks/eval_time.py [--annotation /work/shared/data/iu_xray/annotation.json] [--n 3858]
                                   [--json benchmarks/results/eval_time.json]

Real IU-Xray reports (every split of the annotation file, cleaned the R2Gen way), repeated to `--n`; each study's
prediction is the next study's reference, so the corpus is realistic text that mostly disagrees. Each NLG metric
is timed on its own (`score_corpus(metrics=...)`; METEOR includes starting its JVM), then the CheXpert labeler on
both sides, then `score_records` as validation and evaluate.py call it (NLG + clinical scores together).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from r2gen.data.clean import get_cleaner
from r2gen.data.datamodule import read_annotation
from r2gen.scoring import METRIC_NAMES, close_meteor, score_corpus
from r2gen.scoring.policy import Scoring, score_records

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotation", default=str(ROOT.parent / "shared" / "data" / "iu_xray" / "annotation.json"),
                    help="an R2Gen annotation.json whose reports are scored")
    ap.add_argument("--n", type=int, default=3858, help="reports in the corpus (the reports are repeated to this)")
    ap.add_argument("--labeler", default="chexpert", help="data.labeler for the clinical scores (chexpert | null)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "eval_time.json")
    args = ap.parse_args()
    clean = get_cleaner("iu_xray")
    ann = read_annotation(args.annotation)
    reports = [r for s in ("train", "val", "test") for e in ann[s] if (r := clean(e["report"]))]
    refs = [reports[i % len(reports)] for i in range(args.n)]
    preds = refs[1:] + refs[:1]  # each study gets the next study's reference
    records = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(preds, refs, strict=True))]

    rows: dict[str, float] = {}
    for group in (("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"), ("METEOR",), ("ROUGE_L",), ("CIDEr",)):
        t = time.perf_counter()
        score_corpus(preds, refs, metrics=group)
        rows["BLEU-1..4" if len(group) == 4 else group[0]] = time.perf_counter() - t
    labeler = None if args.labeler in ("null", "none", "") else args.labeler
    scoring = Scoring(labeler=labeler, weights={"Bleu_4": 0.5, "CIDEr": 0.5})
    if labeler:
        t = time.perf_counter()
        scoring.labeler_scores(preds, refs)
        rows[f"{labeler} labeler (both sides)"] = time.perf_counter() - t
    t = time.perf_counter()
    scores = score_records(records, scoring)
    rows["score_records (all together)"] = time.perf_counter() - t
    close_meteor()

    print(f"\nscoring {args.n:,} reports ({len(reports):,} distinct IU-Xray reports, repeated)")
    print(f"{'step':34}{'seconds':>9}")
    for k, v in rows.items():
        print(f"{k:34}{v:9.2f}")
    print("scores: " + ", ".join(f"{k} {scores[k]:.3f}" for k in METRIC_NAMES))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"n": args.n, "seconds": rows, "scores": scores}, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
