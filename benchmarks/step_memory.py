"""Memory of a whole-model training step for the shipped LM configs that this machine can step at their real shape:
what `python -m r2gen.verify` prints for each (r2gen.step_memory), in one table.

    python benchmarks/step_memory.py [--lms gpt2 bloom-560m] [--loss-logits report full] [--out benchmarks/results/step_memory]

Each LM is built from its published architecture (width, depth, heads, vocabulary: `SHAPES` below) with random
weights and a small BPE tokenizer holding the family's special tokens (the vocabulary's rows are the real count,
as the step's cost is the LM's rows, not the tokenizer's), saved as a model folder, and loaded through `lm=<name>`
with that config's own settings (pad policy, prompt, lm.dtype) as a run would. The rest is R2GenGPT's MIMIC-CXR
setting: Swin-Tiny at 224 px (random: no hub here), align=shallow, batch 8, two views fused by mean, reports of 100
tokens (`data.max_report_tokens`, MIMIC's), 32-true on a CPU and bf16-mixed on a GPU. Each case runs in its own
process. The 3-9B configs (LLaMA, Qwen2, Mistral, ...) need a GPU for a step in reasonable time (float32 weights
alone are 28-36 GB): run this there with `--lms` naming them, or `python -m r2gen.verify lm=<name>` with the
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the families' special tokens the tests build checkpoints with

# lm config -> (family in tests/helpers/lm_families.FAMILIES, published config fields, vocabulary rows)
SHAPES = {
    "pythia-70m": ("gpt_neox", dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                                    max_position_embeddings=2048,
                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                     "partial_rotary_factor": 0.25}), 50304),
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024), 50257),
    "opt-125m": ("opt", dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                             word_embed_proj_dim=768, max_position_embeddings=2048), 50272),
    "bloom-560m": ("bloom", dict(hidden_size=1024, n_layer=24, n_head=16), 250880),
}


def lm_folder(name: str, cache: Path) -> Path:
    """`name`'s architecture with random weights, saved once under `cache`."""
    from r2gen.models import tiny_lm
    from tests.helpers.lm_families import ADDS_BOS, FAMILIES, TEXTS

    family, shape, vocab = SHAPES[name]
    folder = cache / f"{name}-{vocab}"
    if not (folder / "config.json").exists():
        _, model_type, special, extra, _ = FAMILIES[family]
        tok = tiny_lm.train_tokenizer(TEXTS, 300, special, extra, family in ADDS_BOS)
        config = tiny_lm.causal_lm_config(tok, model_type, special, **shape)
        config.vocab_size = vocab
        tiny_lm.save_causal_lm(folder, tok, config, seed=0)
    return folder


def one(name: str, loss_logits: str, cache: Path) -> dict:
    """One case in this process: verify's training-step report for `lm=name`."""
    import torch
    from hydra import compose, initialize_config_dir

    from r2gen.conf import CONF_DIR
    from r2gen.step_memory import step_memory

    folder = lm_folder(name, cache)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"lm={name}", f"lm.loss_logits={loss_logits}", "encoder=swin_tiny", "align=shallow",
            "data.image_size=224", "data.view_fusion=mean", "data.batch_size=8", "data.max_report_tokens=100",
            f"trainer.precision={'bf16-mixed' if torch.cuda.is_available() else '32-true'}",
            f"paths.cache_dir={cache}", f"paths.output_dir={cache}/out"])
    r = step_memory(cfg, lm_folder=str(folder))
    return {"lm": name, "vocab": SHAPES[name][2], "loss_logits": loss_logits, **r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lms", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--loss-logits", nargs="+", default=["report"], choices=["report", "full"])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "r2gen-step-memory")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_memory"))
    ap.add_argument("--one", nargs=2, metavar=("LM", "LOSS_LOGITS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*args.one, args.cache)))
        return
    rows = []
    for name in args.lms:
        for mode in args.loss_logits:
            r = subprocess.run([sys.executable, __file__, "--cache", str(args.cache), "--one", name, mode],
                               capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                sys.exit(f"{name} {mode} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
            print(rows[-1], flush=True)
    import torch

    from r2gen.provenance import device

    result = {"machine": device(), "torch": torch.__version__, "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# A whole-model training step's memory for the shipped LM configs ({result['machine']})", "",
             f"`python benchmarks/step_memory.py`: r2gen.step_memory (what `python -m r2gen.verify` prints) with "
             f"each LM at its published shape; {rows[0]['training step']}.", "",
             "| lm config | vocabulary | loss logits | weights MB | optimizer MB | step peak MB | in all MB | step s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['lm']} | {r['vocab']:,} | {r['loss_logits']} | {r['model weights (MB)']:,.0f} | "
              f"{r['optimizer state (MB)']:,.1f} | {r['peak memory of a training step (MB)']:,.0f} | "
              f"{r['peak memory in all (MB)']:,.0f} | {r['training step time (s)']:.2f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
