"""The demo's figures over seeds, each from a fresh clone: what `make demo` gives a new user, and how much it varies.

For each seed: `git clone` this repository's HEAD into a temporary folder, run `python train.py seed=<s>` there
(its own cache: the demo set and the demo LM are generated as on a first run), then
`python evaluate.py ckpt=<best> shuffle_images=true` (the image-shuffle check). Records the test scores, every
finding's F1, the training time (Lightning's fit, from the run's log) and the wall time, and the run's
provenance.json (commit, versions). Writes `benchmarks/results/demo_seeds.json` with the per-seed figures, their
median and range, and the machine.

    python benchmarks/demo_seeds.py [--seeds 42 43 44] [--json benchmarks/results/demo_seeds.json] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from r2gen.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
SCORES = ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "finding_f1_macro", "finding_f1_micro")


def fit_seconds(log: str) -> float | None:
    """Seconds from the first training log line after the model summary to Lightning's `Trainer.fit stopped`."""
    start = end = None
    for line in log.splitlines():
        m = STAMP.match(line)
        if not m:
            continue
        t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if "Loading `train_dataloader`" in line or ("set-up check" in line and start is None):
            start = t
        if "`Trainer.fit` stopped" in line:
            end = t
    return None if start is None or end is None else round(end - start, 1)


def run(cmd: list[str], cwd: Path, log: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("R2GEN_CACHE", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    log.write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {r.returncode}); see {log}")
    return r.stdout + r.stderr


def train_demo(clone: Path, out: Path, seed: int, overrides: list[str], log: Path) -> tuple[float, float, dict]:
    """`python train.py seed=<seed> <overrides>` in `clone` into `out`: (Lightning's fit seconds, train.py's wall
    seconds, the test split's metrics.json)."""
    t0 = time.perf_counter()
    text = run([sys.executable, "train.py", f"seed={seed}", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false",
                *overrides], clone, log)
    wall = round(time.perf_counter() - t0, 1)
    return fit_seconds(text), wall, json.loads((out / "test" / "metrics.json").read_text())


def per_finding(test: dict) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in test.items() if k.startswith("f1/")}


def one_seed(seed: int, overrides: list[str], work: Path) -> dict:
    clone = work / f"r2gen-seed{seed}"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    out = clone / "outputs" / "demo"
    fit, wall, test = train_demo(clone, out, seed, overrides, work / f"train-{seed}.log")
    shuffled_dir = clone / "outputs" / "shuffled"
    run([sys.executable, "evaluate.py", f"ckpt={out / 'checkpoints' / 'best.ckpt'}", "shuffle_images=true",
         f"hydra.run.dir={shuffled_dir}", "trainer.enable_progress_bar=false"], clone, work / f"shuffle-{seed}.log")
    shuffled = json.loads((shuffled_dir / "metrics.json").read_text())
    provenance = json.loads((out / "provenance.json").read_text())
    return {
        "seed": seed,
        "fit_seconds": fit,
        "train_py_wall_seconds": wall,
        "test": {k: test[k] for k in SCORES},
        "f1_per_finding": per_finding(test),
        "shuffled_images_finding_f1_macro": shuffled["finding_f1_macro"],
        "commit": provenance["r2gen"]["commit"],
        "dirty": provenance["r2gen"]["dirty"],
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "demo_seeds.json")
    ap.add_argument("overrides", nargs="*", help="train.py overrides applied to every seed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="r2gen-seeds-") as tmp:
        runs = []
        for s in args.seeds:
            runs.append(one_seed(s, args.overrides, Path(tmp)))
            print(json.dumps(runs[-1]), flush=True)
    per_finding = {k: summary([r["f1_per_finding"][k] for r in runs]) for k in runs[0]["f1_per_finding"]}
    result = {
        "what": "make demo's training and test scores per seed, each from a fresh clone (benchmarks/demo_seeds.py)",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "overrides": args.overrides,
        "runs": runs,
        "summary": {
            "fit_seconds": summary([r["fit_seconds"] for r in runs if r["fit_seconds"] is not None]),
            **{k: summary([r["test"][k] for r in runs]) for k in SCORES},
            "min_f1_per_finding": summary([min(r["f1_per_finding"].values()) for r in runs]),
            "shuffled_images_finding_f1_macro": summary([r["shuffled_images_finding_f1_macro"] for r in runs]),
            "f1_per_finding": per_finding,
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
