"""Does a model read the prior study? The longitudinal demo, with and without context, over seeds.

For each seed: `python train.py data=demo_longitudinal seed=<s>` twice, once as R2GenGPT reads a study (the current
images only) and once with `context.prior_images=true context.prior_report=true`; the test split's temporal score
(`temporal_acc`: the share of (study, finding) pairs whose generated report states the reference's change: new,
worse, better, unchanged or resolved; r2gen.scoring.temporal) and the other scores from each run's test/metrics.json.
Then the context model again with `evaluate.py shuffle_priors=true`: every study gets another subject's prior, which
must take the advantage away if the model reads the prior. Writes benchmarks/results/longitudinal.{json,md}.

    python benchmarks/longitudinal.py [--seeds 42 43 44] [--out benchmarks/results/longitudinal] [--add <earlier
        seeds' json>] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_seeds import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("temporal_acc", "temporal_f1_macro", "temporal_n", "finding_f1_macro", "Bleu_4", "CIDEr")
CONTEXT = ["context.prior_images=true", "context.prior_report=true"]


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    log.write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {r.returncode}); see {log}")


def scores(metrics: Path) -> dict[str, float]:
    m = json.loads(metrics.read_text())
    return {k: m[k] for k in SCORES if k in m} | {
        f"{k}_interval": m["intervals"][k] for k in ("temporal_acc",) if k in m.get("intervals", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "longitudinal"))
    ap.add_argument("--add", help="a results JSON of earlier seeds (same overrides) to report beside these")
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. trainer.max_epochs=5")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="r2gen-longitudinal-"))
    cache = work / "cache"
    rows = []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        for name, extra in (("images only", []), ("prior images + prior report", CONTEXT)):
            run_dir = work / f"{seed}-{len(extra)}"
            t = time.time()
            run([sys.executable, "train.py", "data=demo_longitudinal", f"seed={seed}", f"paths.cache_dir={cache}",
                 f"hydra.run.dir={run_dir}", *extra, *args.overrides], work / f"train-{seed}-{len(extra)}.log")
            row[name] = {**scores(run_dir / "test" / "metrics.json"), "train_seconds": round(time.time() - t, 1)}
            print(seed, name, row[name], flush=True)
            if extra:
                ev = work / f"{seed}-shuffled"
                run([sys.executable, "evaluate.py", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}",
                     "shuffle_priors=true", f"paths.cache_dir={cache}", f"hydra.run.dir={ev}"],
                    work / f"eval-{seed}.log")
                row["context, shuffled priors"] = scores(ev / "metrics.json")
                print(seed, "shuffled", row["context, shuffled priors"], flush=True)
        rows.append(row)
    if args.add:
        rows = json.loads(Path(args.add).read_text())["seeds"] + rows
    report(rows, Path(args.out), args.overrides)


def report(rows: list[dict], out: Path, overrides: list[str]) -> None:
    """Write `out`.json (every seed's figures, their median, the machine) and `out`.md (the table)."""
    setups = ("images only", "prior images + prior report", "context, shuffled priors")
    median = {s: {k: statistics.median(r[s][k] for r in rows) for k in SCORES if all(k in r[s] for r in rows)}
              for s in setups}
    cpu = cpu_model()
    result = {"machine": {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version()},
              "overrides": overrides, "seeds": rows, "median": median}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Longitudinal demo: does the model read the prior? ({os.cpu_count()} CPUs, {cpu})", "",
             "Test split of `data=demo_longitudinal` (150 subjects; temporal_acc over the (study, finding) pairs whose "
             "reference states a change), one 10-epoch run per seed and setup; `python benchmarks/longitudinal.py`.", "",
             "| seed | setup | temporal_acc | its 95% interval | temporal_f1_macro | finding_f1_macro | Bleu_4 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for s in setups:
            v = r[s]
            low, high = v.get("temporal_acc_interval", (float("nan"), float("nan")))
            lines.append(f"| {r['seed']} | {s} | {v.get('temporal_acc', float('nan')):.3f} | {low:.3f}-{high:.3f} | "
                         f"{v.get('temporal_f1_macro', float('nan')):.3f} | {v.get('finding_f1_macro', 0):.3f} | "
                         f"{v.get('Bleu_4', 0):.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
