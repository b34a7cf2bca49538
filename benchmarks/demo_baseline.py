"""Constant-report baselines on the demo's test split: the floor a trained model must clear.

A model that ignores the image can at best write one good generic report. We score three such reports:
the most frequent training report, and among `--candidates` sampled training reports the one that scores best
on the validation split by 0.5*Bleu_4 + 0.5*CIDEr (as checkpoints are chosen) and the one best by finding F1.

    python benchmarks/demo_baseline.py [--candidates 200] [--json outputs/demo_baseline.json]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from hydra import compose, initialize_config_dir

from r2gen.build import prepare_data
from r2gen.data.clean import get_cleaner
from r2gen.data.datamodule import read_annotation
from r2gen.scoring import score_corpus
from r2gen.scoring.policy import Scoring, score_records

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def constant_scores(report: str, refs: list[str], scoring: Scoring) -> dict[str, float]:
    records = [{"id": str(i), "prediction": report, "reference": r} for i, r in enumerate(refs)]
    return score_records(scoring.prepare(records), scoring)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=200, help="training reports tried as the constant report")
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. data.demo.n_test=100")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    prepare_data(cfg.data)
    clean = get_cleaner(cfg.data.clean)
    ann = read_annotation(cfg.data.annotation)
    train = [clean(e["report"]) for e in ann["train"]]
    val = [clean(e["report"]) for e in ann["val"]]
    test = [clean(e["report"]) for e in ann["test"]]
    scoring = Scoring.from_config(cfg)

    most_common = Counter(train).most_common(1)[0][0]
    pool = random.Random(0).sample(sorted(set(train)), min(args.candidates, len(set(train))))
    nlg = {r: score_corpus([r] * len(val), val, metrics=("Bleu_4", "CIDEr")) for r in pool}
    best = max(pool, key=lambda r: 0.5 * nlg[r]["Bleu_4"] + 0.5 * nlg[r]["CIDEr"])
    best_f1 = max(pool, key=lambda r: scoring.labeler_scores([r] * len(val), val)["finding_f1_macro"])
    rows = {
        "most frequent training report": constant_scores(most_common, test, scoring),
        f"best of {len(pool)} by val score": constant_scores(best, test, scoring),
        f"best of {len(pool)} by val finding F1": constant_scores(best_f1, test, scoring),
    }
    keys = ["Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "finding_f1_macro"]
    print(f"{'baseline (test split)':34}" + "".join(f"{k:>17}" for k in keys))
    for name, s in rows.items():
        print(f"{name:34}" + "".join(f"{s.get(k, float('nan')):17.3f}" for k in keys))
    print(f"\nbest constant report by score: {best!r}\nbest constant report by finding F1: {best_f1!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "best_report": best, "best_f1_report": best_f1}, indent=2))


if __name__ == "__main__":
    main()
