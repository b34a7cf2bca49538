"""Peak memory of one training step's LM loss: logits at every position (`lm.loss_logits=full`, R2GenGPT's way)
against logits at the report positions only (`report`, r2gen's default), for the shipped LM configs' vocabularies.

    python benchmarks/loss_memory.py [--batch 8] [--positions 400] [--report-tokens 100] [--dtype bfloat16]
                                     [--out benchmarks/results/loss_memory]

What grows with the vocabulary is the output layer's logits, `[batch, positions, vocab]`, and what the loss and its
backward keep of them; the transformer layers do not change with it. So each case is a one-layer LLaMA of width 512
with the config's vocabulary size (its embedding and output rows), fed `--positions` input embeddings per study of
which the last `--report-tokens` are the report (the rest: image tokens and prompt, label -100), through
`r2gen.models.report_loss.report_loss` (forward and backward), each case in its own process so its peak is its own:
`max_memory_allocated` on a GPU, peak RSS (VmHWM) on the CPU, above what the model and inputs already held.
The defaults are the issue's example: batch 8, ~400 positions, a MIMIC-length report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from r2gen.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
# lm config -> vocabulary size of its checkpoint (config.json's vocab_size)
VOCABS = {"llama2-7b": 32000, "mistral-7b": 32768, "phi3-mini": 32064, "yi-6b": 64000, "llama3-8b": 128256,
          "glm4-9b": 151552, "qwen2-7b": 152064, "gemma-2b": 256000}


def one(vocab: int, path: str, args) -> dict:
    """One case in this process: the step's peak above the model's and inputs' memory, its time, the loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from r2gen.models.memory import PeakMemory
    from r2gen.models.prompt import IGNORE
    from r2gen.models.report_loss import report_loss

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=args.positions + 8)
    lm = LlamaForCausalLM(cfg).to(dev, getattr(torch, args.dtype))
    lm.requires_grad_(False)  # frozen, as R2GenGPT and align=shallow/delta train it: the gradient flows to the inputs
    b, s, r = args.batch, args.positions, args.report_tokens
    embeds = (torch.randn(b, s, 512, device=dev) * 0.02).to(lm.dtype).requires_grad_(True)
    labels = torch.full((b, s), IGNORE, device=dev)
    labels[:, s - r:] = torch.randint(0, vocab, (b, r), device=dev)
    inputs = {"inputs_embeds": embeds, "attention_mask": torch.ones(b, s, dtype=torch.long, device=dev),
              "labels": labels}
    peak = PeakMemory(dev)
    start = time.perf_counter()
    loss = report_loss(lm, inputs, path, args.chunk)
    loss.backward()
    seconds = time.perf_counter() - start
    return {"vocab": vocab, "path": path, "peak_mb": peak.read(), "seconds": round(seconds, 2),
            "loss": round(loss.item(), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--positions", type=int, default=400)
    ap.add_argument("--report-tokens", type=int, default=100)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--chunk", type=int, default=1024, help="lm.loss_chunk")
    ap.add_argument("--lms", nargs="+", default=list(VOCABS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loss_memory"))
    ap.add_argument("--one", nargs=2, metavar=("VOCAB", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args)))
        return
    rows = []
    common = [f"--batch={args.batch}", f"--positions={args.positions}", f"--report-tokens={args.report_tokens}",
              f"--dtype={args.dtype}", f"--chunk={args.chunk}"]
    for name in args.lms:
        row = {"lm": name, "vocab": VOCABS[name]}
        for path in ("full", "report"):
            r = subprocess.run([sys.executable, __file__, *common, "--one", str(VOCABS[name]), path],
                               capture_output=True, text=True, check=True)
            got = json.loads(r.stdout.strip().splitlines()[-1])
            row |= {f"{path}_peak_mb": got["peak_mb"], f"{path}_seconds": got["seconds"], f"{path}_loss": got["loss"]}
        row["ratio"] = round(row["full_peak_mb"] / max(row["report_peak_mb"], 1e-9), 1)
        rows.append(row)
        print(row, flush=True)
    import torch

    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{cpu_model()} (CPU)"
    result = {"machine": machine, "torch": torch.__version__, "batch": args.batch, "positions": args.positions,
              "report_tokens": args.report_tokens, "dtype": args.dtype, "chunk": args.chunk, "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Peak memory of the LM loss's forward + backward: full logits vs the report positions ({machine})", "",
             f"batch {args.batch}, {args.positions} positions of which {args.report_tokens} are the report, "
             f"{args.dtype}, lm.loss_chunk={args.chunk}; a 1-layer LLaMA of width 512 with each config's vocabulary "
             f"(`python benchmarks/loss_memory.py`). Peak above what the model and inputs hold "
             f"({'max_memory_allocated' if torch.cuda.is_available() else 'peak RSS'}).", "",
             "| lm config | vocabulary | full logits: peak MB | report positions: peak MB | full / report | "
             "loss (full, report) |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['lm']} | {r['vocab']:,} | {r['full_peak_mb']:,.0f} | {r['report_peak_mb']:,.0f} | {r['ratio']}x | "
              f"{r['full_loss']}, {r['report_loss']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
