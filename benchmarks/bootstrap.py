"""Time the study-level bootstrap on a test set the size of MIMIC-CXR's (3,858 studies): scoring with per-study
statistics, the 1,000-resample intervals, the paired test, and `r2gen-compare` end to end on two files.

    python benchmarks/bootstrap.py [--annotation /work/shared/data/iu_xray/annotation.json] [--n 3858]
                                   [--resamples 1000] [--json benchmarks/results/bootstrap.json]

Real IU-Xray reports (every split of the annotation file) are the references, repeated to `--n`; system A gives
each study the next study's report, system B a randomly drawn study's report (two degraded systems of similar
quality). Scored as `evaluate.py predictions=... data=iu_xray` scores (cleaned the R2Gen way, CheXpert labeler):

- `score_families`: BLEU-1..4, METEOR (the jar; its JVM started in this step for A), ROUGE-L, CIDEr-D and the CheXpert
  CE and laterality scores, with their per-study statistics, once per system;
- `Scoring.intervals`: the 95% interval of every score of A from `--resamples` resamples;
- `paired`: A - B, its paired-bootstrap interval and the approximate-randomization p of every score;
- `compare(cfg)` on the two JSONL files (reading, cleaning, scoring both, the paired test, compare.json), with a
  fresh METEOR JVM; and `python -m r2gen.compare` in a fresh process (imports included).

The files and run folders are written to a temporary folder; the shared data is only read. Writes the figures to
`--json` and a table beside it (`.md`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_seeds import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def corpus(annotation: Path, n: int) -> tuple[list[dict], list[dict]]:
    """Systems A and B as predictions files' records over `n` studies whose references are real reports."""
    from r2gen.data.checks import has_words
    from r2gen.data.clean import get_cleaner
    from r2gen.data.datamodule import read_annotation

    clean = get_cleaner("iu_xray")
    ann = read_annotation(str(annotation))
    reports = [e["report"] for s in ("train", "val", "test") for e in ann[s] if has_words(clean(e["report"]))]
    refs = [reports[i % len(reports)] for i in range(n)]
    rng = random.Random(1)
    a = [{"id": f"s{i:05d}", "prediction": refs[(i + 1) % n], "reference": r} for i, r in enumerate(refs)]
    b = [{"id": f"s{i:05d}", "prediction": refs[rng.randrange(n)], "reference": r} for i, r in enumerate(refs)]
    return a, b


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def compose_compare(a: Path, b: Path, out: Path, resamples: int):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "r2gen" / "conf"), version_base="1.3"):
        return compose("compare", overrides=[f"a={a}", f"b={b}", "data=iu_xray", f"paths.output_dir={out}",
                                             f"eval.bootstrap.resamples={resamples}"])


def write_markdown(path: Path, res: dict) -> None:
    m, s = res["machine"], res["seconds"]
    lines = [f"# Bootstrap intervals and the paired test at MIMIC-CXR's test size ({res['n']:,} studies)", "",
             f"`python benchmarks/bootstrap.py` on {m['cores']} cores ({m['cpu']}), {res['date']}: "
             f"{res['distinct_reports']:,} distinct IU-Xray reports repeated to {res['n']:,} studies, "
             f"data.labeler=chexpert, {res['resamples']:,} resamples; load average (1, 5, 15 min) "
             f"{', '.join(f'{x:.1f}' for x in m['load_before'])} before, "
             f"{', '.join(f'{x:.1f}' for x in m['load_after'])} after.", "",
             "| step | seconds |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s.items()]
    lines += ["", "Selected paired results (A: the next study's report; B: a random study's report):", "",
              "| score | A | B | A-B | interval | p |", "| --- | ---: | ---: | ---: | --- | ---: |"]
    for k, r in res["paired_selected"].items():
        lines.append(f"| {k} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | [{r['low']:+.4f}, {r['high']:+.4f}] "
                     f"| {r['p']:.3f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotation", type=Path,
                    default=ROOT.parent / "shared" / "data" / "iu_xray" / "annotation.json",
                    help="an R2Gen annotation.json whose reports are the references")
    ap.add_argument("--n", type=int, default=3858, help="studies in the corpus (the reports are repeated to this)")
    ap.add_argument("--resamples", type=int, default=1000, help="eval.bootstrap.resamples")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bootstrap.json")
    args = ap.parse_args()

    from r2gen.compare import compare
    from r2gen.data.clean import get_cleaner
    from r2gen.scoring import close_meteor
    from r2gen.scoring.bootstrap import Bootstrap, paired
    from r2gen.scoring.policy import Scoring, score_families

    load_before = os.getloadavg()  # the machine may be shared: a load above its cores slows every step
    a, b = corpus(args.annotation, args.n)
    clean = get_cleaner("iu_xray")
    scoring = Scoring(labeler="chexpert", weights={"Bleu_4": 0.5, "CIDEr": 0.5},
                      bootstrap=Bootstrap(resamples=args.resamples))

    def as_scored(rows):
        return [{**r, "prediction": clean(r["prediction"]), "reference": clean(r["reference"])} for r in rows]

    seconds: dict[str, float] = {}
    (scores_a, fa), seconds["score_families A (METEOR JVM start included)"] = timed(score_families, as_scored(a),
                                                                                    scoring)
    (_, fb), seconds["score_families B"] = timed(score_families, as_scored(b), scoring)
    _, seconds[f"Scoring.intervals A ({args.resamples} resamples, {len(scores_a)} scores)"] = timed(
        scoring.intervals, fa, scores_a)
    result, seconds[f"paired A vs B ({args.resamples} resamples + permutations)"] = timed(
        paired, fa, fb, scoring.bootstrap, scoring.weights)
    close_meteor()  # compare starts its own

    with tempfile.TemporaryDirectory(prefix="r2gen-bootstrap-") as tmp:
        tmp = Path(tmp)
        files = {}
        for name, rows in (("a", a), ("b", b)):
            files[name] = tmp / f"{name}.jsonl"
            files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = compose_compare(files["a"], files["b"], tmp / "run", args.resamples)
        end_to_end, seconds["compare(cfg) on two files (fresh JVM)"] = timed(compare, cfg)
        close_meteor()
        cmd = [sys.executable, "-m", "r2gen.compare", f"a={files['a']}", f"b={files['b']}", "data=iu_xray",
               f"eval.bootstrap.resamples={args.resamples}", f"hydra.run.dir={tmp / 'cli'}"]
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds["python -m r2gen.compare (fresh process, imports included)"] = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"python -m r2gen.compare failed ({r.returncode}):\n{r.stderr[-3000:]}")
    assert all(end_to_end[k]["diff"] == result[k]["diff"] for k in result), "compare() and paired() disagree"

    print(f"\n{args.n:,} studies, {args.resamples} resamples, data.labeler=chexpert")
    print(f"{'step':66}{'seconds':>9}")
    for k, v in seconds.items():
        print(f"{k:66}{v:9.2f}")
    selected = {k: result[k] for k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "score", "ce_f1_micro",
                                       "ce_f1_macro_5", "ce_f1_example") if k in result}
    for k, v in selected.items():
        print(f"  {k:14} A {v['a']:.4f}  B {v['b']:.4f}  A-B {v['diff']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]"
              f"  p {v['p']:.3f}")
    res = {"what": "study-level bootstrap intervals and the paired test at MIMIC-CXR's test size "
                   "(benchmarks/bootstrap.py)",
           "date": time.strftime("%Y-%m-%d"),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                       "python": platform.python_version(), "platform": platform.platform(),
                       "load_before": load_before, "load_after": os.getloadavg()},
           "n": args.n, "distinct_reports": len({r["reference"] for r in a}), "resamples": args.resamples,
           "labeler": scoring.labeler_name, "seconds": seconds, "paired_selected": selected,
           "bootstrap": scoring.bootstrap.method(fa)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(args.json.with_suffix(".md"), res)
    print(f"written: {args.json} and {args.json.with_suffix('.md')}")


if __name__ == "__main__":
    main()
