"""Generation throughput: reports/s against batch size and beams, batched against one study at a time.

    python benchmarks/generation_throughput.py [--studies 32] [--tokens 40] [--batch-sizes 1,4,16] [--beams 1,3]
                                               [--json benchmarks/results/generation_throughput.json] [overrides ...]

The demo model (`python train.py`'s config; any `key=value` override, e.g. `encoder=swin_tiny data.image_size=224`)
is built with `build.model`, its test studies loaded with `build.datamodule` at each batch size, and
`R2GenModule.generate` (left-padded `inputs_embeds`, the run's generation config) timed over `--studies` studies.
Every report is exactly `--tokens` tokens (min = max new tokens), so an untrained model's early EOS cannot flatter
a setting; loading images is not timed. Batch size 1 is the one-by-one baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=32, help="studies generated per setting")
    ap.add_argument("--tokens", type=int, default=40, help="tokens per report (min and max new tokens)")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--beams", default="1,3")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "generation_throughput.json")
    ap.add_argument("overrides", nargs="*", help="config overrides")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir

    from r2gen import build
    from r2gen.models.lm import generation_config

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.output_dir={tempfile.mkdtemp()}",
                                           f"data.demo.n_test={max(args.studies, 4)}", *args.overrides])
    build.prepare_data(cfg.data)
    pl.seed_everything(cfg.seed)
    model = build.model(cfg).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)

    rows = []
    for beams in (int(b) for b in args.beams.split(",")):
        model.gen_config = generation_config(model.lm_model, model.tokenizer, {
            **cfg.generate, "num_beams": beams, "max_new_tokens": args.tokens, "min_new_tokens": args.tokens})
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            cfg.data.eval_batch_size = bs
            dm = build.datamodule(cfg, model)
            batches = []
            for b in dm.test_dataloader():
                batches.append(b)
                if sum(len(x["ids"]) for x in batches) >= args.studies:
                    break
            model.generate(batches[0]["images"][:1].to(device), batches[0]["view_mask"][:1].to(device))  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            n = 0
            for b in batches:
                n += len(model.generate(b["images"].to(device), b["view_mask"].to(device)))
            if device == "cuda":
                torch.cuda.synchronize()
            s = time.perf_counter() - t
            rows.append({"beams": beams, "batch_size": bs, "studies": n, "seconds": s, "reports_per_s": n / s})
            print(f"  beams {beams} batch {bs:3}: {n / s:7.2f} reports/s", flush=True)

    print(f"\n{'beams':>6}{'batch':>7}{'reports/s':>11}{'vs one-by-one':>15}")
    for r in rows:
        one = next((x for x in rows if x["beams"] == r["beams"] and x["batch_size"] == 1), None)
        r["speedup_vs_batch_1"] = r["reports_per_s"] / one["reports_per_s"] if one else None
        sp = f"{r['speedup_vs_batch_1']:.1f}x" if one else "-"
        print(f"{r['beams']:6}{r['batch_size']:7}{r['reports_per_s']:11.2f}{sp:>15}")
    dev = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{os.cpu_count()}"
    print(f"device: {dev}; {args.tokens} tokens per report; encoder {cfg.encoder.name} @{dm.image_size}; "
          f"LM {cfg.lm.name_or_path.rsplit('/', 1)[-1]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": dev, "tokens": args.tokens, "rows": rows,
                                     "overrides": args.overrides}, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
