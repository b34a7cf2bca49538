"""The first thing to run on a GPU: every path no CPU can show, each in its own process, in under 8 minutes.

    python benchmarks/gpu_check.py [--quick] [--out benchmarks/results/gpu_check] [--budget 480] [--timeout 150]
                                   [--cases fp32,bf16,...]

Cases (the demo data, `data=demo`, made offline; the LM is `lm=tiny` built from `lm.build.*`: on a CUDA device
8 x 1024 with a 32k vocabulary, ~170M parameters, so the timings mean something; on a CPU a few MB):
  fp32          training steps at 32-true (everywhere: the smoke test that this script works)
  bf16          training steps at trainer.precision=bf16-mixed (CUDA)
  qlora-4bit    quant=4bit + lm.lora.r=8, frozen LM (CUDA, bitsandbytes with CUDA support)
  qlora-8bit    quant=8bit + lm.lora.r=8 (likewise)
  sdpa          lm.attn_implementation=sdpa, bf16-mixed (CUDA)
  flash-attn-2  lm.attn_implementation=flash_attention_2 (CUDA, and only if `flash_attn` imports)
  shallow-cache align=shallow with data.feature_cache=<fresh folder>, the encoder on the device building it
  beam-generate num_beams=3, batches of 8: seconds per study (everywhere)
  resume        exact resume: a run crashed mid-epoch and resumed from last.ckpt ends with the very weights of the
                uninterrupted run (the check of tests/test_resume.py, small; everywhere)
  loss-report / loss-full  lm.loss_logits=report against full: the peak memory of training steps (everywhere)

Each case runs in a child process (`--one NAME`) with its own timeout, so an OOM or a crash fails that case only and
its peak memory (r2gen.models.memory.PeakMemory: `torch.cuda.max_memory_allocated` on CUDA, VmHWM on a CPU) is its
own. A case that cannot run here is `skipped` with the reason; a case not reached within `--budget` seconds is
`skipped` too. Written: `<out>.json` (device, versions, every case: status, reason, seconds, peak MB, figures) and
`<out>.md` (a table). Exit status 1 if any case failed (skips are not failures).

Without a CUDA device the default out is `benchmarks/results/gpu_check_cpu`, so a CPU run never overwrites the
figures of a real GPU run (`benchmarks/results/gpu_check`); `--out` always wins.
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

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
RESULTS = ROOT / "benchmarks" / "results"
CASES = ["fp32", "bf16", "qlora-4bit", "qlora-8bit", "sdpa", "flash-attn-2", "shallow-cache", "beam-generate",
         "resume", "loss-report", "loss-full"]
NEEDS_CUDA = {"bf16", "qlora-4bit", "qlora-8bit", "sdpa", "flash-attn-2"}
GPU_LM = ["lm.build.hidden_size=1024", "lm.build.intermediate_size=2816", "lm.build.num_hidden_layers=8",
          "lm.build.num_attention_heads=16", "lm.build.num_key_value_heads=16", "lm.build.vocab_size=32000"]
CPU_LM = ["lm.build.hidden_size=64", "lm.build.intermediate_size=128", "lm.build.num_hidden_layers=2",
          "lm.build.num_attention_heads=2", "lm.build.num_key_value_heads=2", "lm.build.vocab_size=500"]
QUICK_LM = ["lm.build.hidden_size=32", "lm.build.intermediate_size=64", "lm.build.num_hidden_layers=2",
            "lm.build.num_attention_heads=2", "lm.build.num_key_value_heads=2", "lm.build.vocab_size=300"]
CASE_OVERRIDES = {
    "fp32": [], "bf16": [],
    "qlora-4bit": ["quant=4bit", "lm.lora.r=8", "lm.freeze=true"],
    "qlora-8bit": ["quant=8bit", "lm.lora.r=8", "lm.freeze=true"],
    "sdpa": ["lm.attn_implementation=sdpa"], "flash-attn-2": ["lm.attn_implementation=flash_attention_2"],
    "shallow-cache": ["align=shallow"],  # + data.feature_cache=<fresh folder>, set per run
    "loss-report": ["lm.loss_logits=report"], "loss-full": ["lm.loss_logits=full"],
}
PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "sdpa": "bf16-mixed", "flash-attn-2": "bf16-mixed",
             "qlora-4bit": "bf16-mixed", "qlora-8bit": "bf16-mixed"}  # else bf16-mixed on CUDA, 32-true on a CPU


class Skip(Exception):
    """A case that cannot run on this machine; its message is the reason."""


def compose(overrides: list[str], out: Path):
    """The real config as train.py's CLI composes it (with the hydra node for ${hydra:...}), in a fresh folder."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(out / "cache")
        del cfg["hydra"]
    return cfg


def base_overrides(quick: bool, cuda: bool, batch: int, n_train: int) -> list[str]:
    lm = GPU_LM if cuda else QUICK_LM if quick else CPU_LM
    size = 64 if cuda else 32
    return ["data=demo", "lm=tiny", *lm, f"data.image_size={size}", f"data.batch_size={batch}",
            f"data.eval_batch_size={batch}", f"data.demo.n_train={n_train}", "data.demo.n_val=4", "data.demo.n_test=8",
            "data.num_workers=0", f"trainer.accelerator={'gpu' if cuda else 'cpu'}", "trainer.enable_progress_bar=false",
            "trainer.num_sanity_val_steps=0", "~logger.tensorboard", "generate.max_new_tokens=8"]


def check_available(case: str, cuda: bool) -> None:
    """Raise Skip where `case` cannot run on this machine."""
    if case in NEEDS_CUDA and not cuda:
        raise Skip("needs a CUDA device (torch.cuda.is_available() is False)")
    if case.startswith("qlora"):
        try:
            import bitsandbytes as bnb
            import torch

            layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.bfloat16).cuda()  # quantized on .cuda()
            layer(torch.randn(2, 64, device="cuda", dtype=torch.bfloat16))
        except ImportError as e:
            raise Skip(f"bitsandbytes is not installed ({e}); pip install bitsandbytes") from e
        except Exception as e:  # noqa: BLE001 - any failure here means bitsandbytes cannot run on this CUDA device
            raise Skip(f"bitsandbytes lacks CUDA support here: {type(e).__name__}: {str(e)[:200]}") from e
    if case == "flash-attn-2":
        try:
            import flash_attn  # noqa: F401
        except ImportError as e:
            raise Skip(f"flash_attn is not installed ({e}); pip install flash-attn --no-build-isolation") from e


def train_steps(case: str, args, cuda: bool, tmp: Path) -> dict:
    """Build the case's model and fit `warmup + steps` batches; the median step time, the losses, the peak memory."""
    import pytorch_lightning as pl
    import torch

    from r2gen import build
    from r2gen.models.memory import PeakMemory

    n = args.warmup + args.steps
    extra = [f"data.feature_cache={tmp}/features"] if case == "shallow-cache" else []
    cfg = compose(base_overrides(args.quick, cuda, args.batch_size, args.batch_size * n) + CASE_OVERRIDES[case]
                  + extra, tmp)
    build.prepare_data(cfg.data)
    pl.seed_everything(cfg.seed)
    device = "cuda" if cuda else "cpu"
    peak = PeakMemory(device)
    model = build.model(cfg)
    dm = build.datamodule(cfg, model)
    dm.setup()
    figures: dict = {"lm_params_m": round(sum(p.numel() for p in model.lm_model.parameters()) / 1e6, 3)}
    if dm.features is not None:
        model.to(device)  # the encoder on the device builds the cache
        t = time.perf_counter()
        dm.features.dataset("train", dm.splits["train"])
        figures["cache_build_s"] = round(time.perf_counter() - t, 2)
    elif case == "shallow-cache":
        raise RuntimeError("align=shallow with data.feature_cache=<folder> built no feature cache")
    ends: list[float] = []
    losses: list[float] = []

    class Timer(pl.Callback):
        def on_train_epoch_start(self, *a) -> None:
            ends.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, *a) -> None:
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss))

    precision = PRECISION.get(case, "bf16-mixed" if cuda else "32-true")
    trainer = pl.Trainer(**{**cfg.trainer, "precision": precision, "max_epochs": 1, "limit_train_batches": n,
                            "limit_val_batches": 0}, callbacks=[Timer()], logger=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=str(tmp))
    trainer.fit(model, datamodule=dm)
    steps = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)][args.warmup:] or [0.0]
    if not losses or not all(torch.isfinite(torch.tensor(losses))):
        raise RuntimeError(f"losses not finite: {losses}")
    return {**figures, "precision": precision, "steps": len(losses), "step_s": round(statistics.median(steps), 4),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4), "peak_mb": peak.read()}


def beam_generate(args, cuda: bool, tmp: Path) -> dict:
    """num_beams=3 over batches of 8 test studies: seconds per study (the first batch is a warm-up, not timed)."""
    import pytorch_lightning as pl
    import torch

    from r2gen import build
    from r2gen.models.lm import generation_config
    from r2gen.models.memory import PeakMemory

    tokens = 8 if args.quick else 32
    cfg = compose(base_overrides(args.quick, cuda, 8, 8) + ["data.demo.n_test=24"], tmp)
    build.prepare_data(cfg.data)
    pl.seed_everything(cfg.seed)
    device = "cuda" if cuda else "cpu"
    model = build.model(cfg).eval().to(device)
    model.gen_config = generation_config(model.lm_model, model.tokenizer, {
        **cfg.generate, "num_beams": 3, "max_new_tokens": tokens, "min_new_tokens": tokens})
    dm = build.datamodule(cfg, model)
    batches = list(dm.test_dataloader())
    # fp32 weights under bf16 autocast on CUDA, as a bf16-mixed run's validation generates
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
        model.generate(batches[0]["images"].to(device), batches[0]["view_mask"].to(device))
        peak = PeakMemory(device)
        t = time.perf_counter()
        reports = [r for b in batches[1:] for r in model.generate(b["images"].to(device), b["view_mask"].to(device))]
        if cuda:
            torch.cuda.synchronize()
        s = time.perf_counter() - t
    if not reports:
        raise RuntimeError("no reports generated")
    return {"num_beams": 3, "precision": "bf16 autocast" if cuda else "32-true", "batch_size": 8, "tokens": tokens, "studies": len(reports),
            "s_per_study": round(s / len(reports), 4), "peak_mb": peak.read()}


def exact_resume(args, cuda: bool, tmp: Path) -> dict:
    """tests/test_resume.py's check, small: crash mid-epoch after a step checkpoint, resume from last.ckpt, compare."""
    import pytorch_lightning as pl
    import torch

    from r2gen import build
    from r2gen.models.memory import PeakMemory
    from r2gen.train import train

    # 4 steps per epoch (16 studies, batches of 4), 2 epochs; align=deep has augmentation, so RNGs must be restored.
    over = base_overrides(True, False, 4, 16) + ["trainer.max_epochs=2", "test_after_fit=false",
                                                  "callbacks.resume.every_n_train_steps=2"]
    peak = PeakMemory("cpu")  # exactness is checked on the CPU (32-true); the GPU run's numerics are not bitwise
    t = time.perf_counter()
    train(compose(over, tmp / "uninterrupted"))

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, *a) -> None:
            if trainer.global_step == 7:  # epoch 1, its third batch; the step checkpoint holds step 6
                raise RuntimeError("simulated crash")

    real = build.trainer

    def crashing(cfg, *a, **kw):
        trainer = real(cfg, *a, **kw)
        trainer.callbacks.insert(0, Crash())
        return trainer

    build.trainer = crashing
    try:
        train(compose(over, tmp / "resumed"))
        raise RuntimeError("the simulated crash did not happen")
    except RuntimeError as e:
        if "simulated crash" not in str(e):
            raise
    finally:
        build.trainer = real
    saved = torch.load(tmp / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    crash_step = saved["global_step"]
    train(compose(over + [f"ckpt_path={tmp}/resumed/checkpoints/last.ckpt"], tmp / "resumed"))
    a, b = (torch.load(tmp / r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            for r in ("uninterrupted", "resumed"))
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"].get(k, torch.empty(0)))]
    if (a["global_step"], a["epoch"]) != (b["global_step"], b["epoch"]) or differ:
        raise RuntimeError(f"resumed run differs: steps {a['global_step']} vs {b['global_step']}, "
                           f"{len(differ)} weight tensors differ, e.g. {differ[:3]}")
    return {"resumed_from_step": crash_step, "final_step": b["global_step"], "tensors_equal": len(a["state_dict"]),
            "run_s": round(time.perf_counter() - t, 1), "peak_mb": peak.read()}


def run_one(case: str, args) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix=f"r2gen-gpucheck-{case}-"))
    try:
        check_available(case, cuda)
    except Skip as e:
        return {"status": "skipped", "reason": str(e)}
    if case == "beam-generate":
        figures = beam_generate(args, cuda, tmp)
    elif case == "resume":
        figures = exact_resume(args, cuda, tmp)
    else:
        figures = train_steps(case, args, cuda, tmp)
    return {"status": "ok", "reason": "", **figures}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"CPU: {model} x{os.cpu_count()}"


def table(rows: list[dict]) -> str:
    lines = ["| case | status | seconds | peak MB | figures / reason |", "| --- | --- | ---: | ---: | --- |"]
    skip = {"case", "status", "reason", "seconds", "peak_mb"}
    for r in rows:
        figures = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip and v is not None)
        peak = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.1f}"
        lines.append(f"| {r['case']} | {r['status']} | {r.get('seconds', 0):.1f} | {peak} | "
                     f"{r['reason'] or figures} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 steps: the CPU smoke test")
    ap.add_argument("--out", type=Path, help="writes <out>.json and <out>.md (default: benchmarks/results/gpu_check,"
                                             " or gpu_check_cpu without a CUDA device)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--steps", type=int, help="training steps measured per case (default 6, --quick 2)")
    ap.add_argument("--warmup", type=int, help="steps run first and not measured (default 2, --quick 1)")
    ap.add_argument("--batch-size", type=int, default=8, help="studies per training step")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all cases; later ones are skipped")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds for one case")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: the case run in this child process
    args = ap.parse_args()
    args.steps = args.steps if args.steps is not None else 2 if args.quick else 6
    args.warmup = args.warmup if args.warmup is not None else 1 if args.quick else 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return

    import torch
    import transformers

    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    cuda = torch.cuda.is_available()
    out = args.out or RESULTS / ("gpu_check" if cuda else "gpu_check_cpu")
    if not cuda:
        print("no CUDA device: the CUDA cases are skipped (" + ", ".join(c for c in cases if c in NEEDS_CUDA) + ")",
              file=sys.stderr)
    start = time.monotonic()
    rows = []
    for case in cases:
        left = args.budget - (time.monotonic() - start)
        if left < 5:
            rows.append({"case": case, "status": "skipped", "reason": f"--budget {args.budget:.0f} s spent",
                         "seconds": 0.0})
            continue
        if case in NEEDS_CUDA and not cuda:  # said here: a child process would only import torch to say it
            rows.append({"case": case, "status": "skipped", "seconds": 0.0,
                         "reason": "needs a CUDA device (torch.cuda.is_available() is False)"})
            print(f"  {case:14} skipped  {rows[-1]['reason']}", file=sys.stderr, flush=True)
            continue
        cmd = [sys.executable, __file__, "--one", case, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size), *(["--quick"] if args.quick else [])]
        t = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=min(args.timeout, left))
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode == 0 and line:
                row = json.loads(line[-1][7:])
            else:
                err = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
                row = {"status": "failed", "reason": f"exit {r.returncode}: {err[:300]}", "log": r.stderr[-4000:]}
        except subprocess.TimeoutExpired:
            row = {"status": "failed", "reason": f"timed out after {min(args.timeout, left):.0f} s"}
        row = {"case": case, **row, "seconds": round(time.monotonic() - t, 1)}
        rows.append(row)
        print(f"  {case:14} {row['status']:8} {row['seconds']:6.1f} s  {row['reason']}", file=sys.stderr, flush=True)

    report = {"device": device_name(), "cuda": cuda, "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(), "quick": args.quick,
              "argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cases": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = (f"# GPU check\n\n{report['device']}; torch {report['torch']}, transformers {report['transformers']}; "
          f"{report['date']}{' (--quick)' if args.quick else ''}\n\n{table(rows)}\n")
    Path(f"{out}.md").write_text(md)
    print("\n" + table(rows))
    print(f"written: {out}.json, {out}.md")
    failed = [r["case"] for r in rows if r["status"] == "failed"]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
