"""Training throughput: samples/s, step time and peak memory per alignment mode, with and without the feature cache.

    python benchmarks/train_throughput.py [--cases demo,demo-swin,paper] [--steps 6] [--batch-size 16]
                                          [--json benchmarks/results/train_throughput.json]

Each case is one real run (`build.model`, `build.datamodule`, a Lightning `Trainer.fit`) in its own process, so
its peak memory is its own: RSS on a CPU, `torch.cuda.max_memory_allocated` on a GPU. A step's time runs from one
`on_train_batch_end` to the next, so it includes loading the batch (decoding and resizing images, or reading
cached features); the first `--warmup` steps are not counted. Building the cache (every training image through the
encoder once) is timed apart: a real run pays it once, then every epoch reads features.

Shapes (the demo's synthetic studies, two views each, reports ~40 tokens):
  demo       resnet10t at 64 px + the demo LM (3 x 192 LLaMA), as `python train.py`
  demo-swin  the same with Swin-Tiny at 224 px (the cache's target case: shallow with cache >= 3x without)
  paper      Swin at 224 px + a frozen LLaMA-shaped LM built from its config, as R2GenGPT trains:
             GPU: Swin-Base + 32 x 4096 (7B-shaped, bf16); CPU: Swin-Tiny + 4 x 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
MODES = {"deep": ["align=deep"], "delta": ["align=delta"], "shallow": ["align=shallow", "data.feature_cache=off"],
         "shallow+cache": ["align=shallow"]}  # shallow+cache: data.feature_cache=<fresh folder>, set per run


def shapes(cuda: bool) -> dict[str, tuple[list[str], list[str]]]:
    """case -> (config overrides, alignment modes run)"""
    llama = (["lm.build.hidden_size=4096", "lm.build.intermediate_size=11008", "lm.build.num_hidden_layers=32",
              "lm.build.num_attention_heads=32", "lm.build.num_key_value_heads=32", "lm.build.vocab_size=32000",
              "lm.dtype=bfloat16", "encoder=swin_base"] if cuda else
             ["lm.build.hidden_size=512", "lm.build.intermediate_size=1376", "lm.build.num_hidden_layers=4",
              "lm.build.num_attention_heads=8", "lm.build.num_key_value_heads=8", "encoder=swin_tiny"])
    return {
        "demo": ([], list(MODES)),
        "demo-swin": (["encoder=swin_tiny", "data.image_size=224"], ["shallow", "shallow+cache"]),
        "paper": (llama + ["data.image_size=224", "lm.freeze=true"], list(MODES)),
    }


def run_one(case: str, mode: str, args) -> dict:
    """One case in this process: build, fit `warmup + steps` batches, return the measurements."""
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir

    from r2gen import build

    cuda = torch.cuda.is_available()
    overrides, _ = shapes(cuda)[case]
    n_batches = args.warmup + args.steps
    tmp = tempfile.mkdtemp(prefix="r2gen-bench-")
    cache = [f"data.feature_cache={tmp}/features"] if mode == "shallow+cache" else []
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            *overrides, *MODES[mode], *cache, f"paths.output_dir={tmp}", f"data.batch_size={args.batch_size}",
            f"data.demo.n_train={args.batch_size * n_batches}", "data.demo.n_val=4", "data.demo.n_test=4",
            f"data.num_workers={args.workers}"])
    build.prepare_data(cfg.data)
    pl.seed_everything(cfg.seed)
    model = build.model(cfg)
    dm = build.datamodule(cfg, model)
    dm.setup()
    cache_s = None
    if dm.features is not None:
        if cuda:
            model.cuda()
        t = time.perf_counter()
        dm.features.dataset("train", dm.splits["train"])  # built now; fit below finds it and only reads it
        cache_s = time.perf_counter() - t

    ends: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_end(self, *a) -> None:
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

        def on_train_epoch_start(self, *a) -> None:
            ends.append(time.perf_counter())

    trainer = pl.Trainer(**{**cfg.trainer, "precision": "bf16-mixed" if cuda else "32-true", "max_epochs": 1,
                            "limit_train_batches": n_batches, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                            "enable_progress_bar": False}, callbacks=[Timer()], logger=False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, datamodule=dm)
    steps = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)][args.warmup:]
    step = statistics.median(steps)
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"case": case, "mode": mode, "device": torch.cuda.get_device_name() if cuda else f"cpu x{os.cpu_count()}",
            "encoder": cfg.encoder.name, "image_size": dm.image_size, "lm_hidden": cfg.lm.build.hidden_size,
            "lm_layers": cfg.lm.build.num_hidden_layers, "batch_size": args.batch_size, "steps": len(steps),
            "step_s": step, "samples_per_s": args.batch_size / step, "peak_mem_gb": peak / 2**30,
            "cache_build_s": cache_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="demo,demo-swin,paper", help="comma-separated: demo, demo-swin, paper")
    ap.add_argument("--steps", type=int, default=6, help="training steps measured per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    ap.add_argument("--batch-size", type=int, default=16, help="studies per step (two views each)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (data.num_workers)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "case:mode", run in a child process
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one.split(":"), args)))
        return

    import torch

    rows = []
    for case in args.cases.split(","):
        for mode in shapes(torch.cuda.is_available())[case][1]:
            cmd = [sys.executable, __file__, "--one", f"{case}:{mode}", "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                sys.exit(f"{case} {mode} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
            print(f"  {case:9} {mode:13} {rows[-1]['samples_per_s']:8.2f} samples/s", file=sys.stderr)
    print(f"\n{'case':10}{'mode':15}{'encoder':32}{'samples/s':>10}{'step s':>9}{'peak GB':>9}{'cache build s':>15}")
    for r in rows:
        build_s = f"{r['cache_build_s']:.1f}" if r["cache_build_s"] is not None else "-"
        print(f"{r['case']:10}{r['mode']:15}{r['encoder'] + ' @' + str(r['image_size']):32}"
              f"{r['samples_per_s']:10.2f}{r['step_s']:9.3f}{r['peak_mem_gb']:9.2f}{build_s:>15}")
    speedups = {}
    for case in {r["case"] for r in rows}:
        by = {r["mode"]: r for r in rows if r["case"] == case}
        if "shallow" in by and "shallow+cache" in by:
            speedups[case] = by["shallow+cache"]["samples_per_s"] / by["shallow"]["samples_per_s"]
            print(f"{case}: shallow with the feature cache = {speedups[case]:.1f}x the samples/s without it")
    print(f"device: {rows[0]['device']}, batch {args.batch_size}, median of {args.steps} steps after {args.warmup}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "cache_speedup": speedups, "argv": sys.argv[1:]}, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
