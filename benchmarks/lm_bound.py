"""r2gen against R2GenGPT on LM-bound shapes: training step time, peak memory and generation time, same weights.

    python benchmarks/lm_bound.py [--quick] [--steps 4] [--warmup 1] [--json benchmarks/results/lm_bound.json]

The peer is `PeerR2GenGPT` below: R2GenGPT's training step and generation as its `models/R2GenGPT.py` computes them
(wang-zhanyu/R2GenGPT at commit fbd6ffd16074f987ac27ccea50679159439166ac, read, not copied): views encoded one at a
time and averaged, `llama_proj` then `layer_norm`, `prompt_wrap` around `<ImageHere>`, `[bos, prompt-before, image,
prompt-after, report + end_sym]` as `inputs_embeds`, targets -100 but on the report (padding masked), and the loss
from `llama_model(..., labels=targets)`: logits at every position. Generation is `llama_model.generate(inputs_embeds=
[bos, wrapped image])` without an attention mask, as there. It runs on the very modules r2gen built (`r2gen.build.
model`: the timm encoder, with align=delta's LoRA injected; the LM; lm_proj + lm_norm), so both sides have the same
weights and read the same batch, and their first-step losses must match (checked). Differences from the peer's own
file, on purpose: the encoder is r2gen's timm Swin (the peer's is HF `SwinModel`; its delta LoRA targets
query/value, here timm's fused qkv), LoRA dropout and the encoder's stochastic depth (timm's Swin drops paths at
0.1 when it trains, as HF's) are 0 on both sides (so the losses compare), and both sides step a plain AdamW over the trainable weights (r2gen's per-component groups and schedule left out).

r2gen runs `lm.loss_logits=report` (logits only at report positions, chunked cross-entropy), its default.

Shapes. The LM is a LLaMA built from a config with `hidden 1024, 8 layers` (frozen), vocabularies 32,000 (LLaMA-2)
and 128,256 (LLaMA-3); the tokenizer is r2gen's tiny BPE trained on the demo reports (a few hundred tokens), and the
LM config gets the full vocabulary's rows (`lm.build` cannot make a 128k tokenizer from the demo's text; the step's
cost is the LM's rows, not the tokenizer's). Swin-Tiny at 224 px, two views fused by mean (R2GenGPT's), batch 8,
align shallow and delta. `--quick`: hidden 64, 2 layers, resnet10t at 64 px, batch 2 (a smoke run, seconds).

Each side x shape x align runs in its own process, so its peak memory is its own (r2gen.models.memory.PeakMemory:
RSS above the start on the CPU, max_memory_allocated on a GPU), measured over the second step (forward, backward,
AdamW step): the first pages in the memory-mapped LM weights (on the CPU, ~1.5 GB of RSS at 128k that stays) and
allocates the AdamW state, both the same on either side and held before the second starts; the peak of a step is
what it needs beyond the weights and optimizer state. Step time: the median of `--steps` steps after `--warmup`.
Generation: the batch, 32 new tokens exactly (min = max), greedy and beam 3, same settings on both sides.

Expected time of the full run on 2 shared CPU cores (estimated, not measured: FLOPs from the quick run's rates).
The 128k LM has ~232M matmul weights (lm_head 131M + 8 layers 101M); a batch-8 step over ~120 positions is ~0.45
TFLOP forward, about as much backward (input gradients only: the LM is frozen) and ~0.2 TFLOP of Swin-Tiny: ~20-40 s
a step at 30-60 GFLOP/s. With the 1.5 GB LM loaded per process, 1 + 3 steps, a greedy and a beam-3 generation (a
prefill each plus 32 cached tokens), ~3-4 min a process, 8 processes: ~30-45 min (the 32k shape is cheaper). Prefer a
GPU where one is lent.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from r2gen.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
SIDES = ("r2gen", "peer")
ALIGNS = ("shallow", "delta")
# R2GenGPT's prompt, exactly (its `prompt_wrap`), with r2gen's image marker where it has <ImageHere>
PROMPT = ("Human: <Img><image></Img> Generate a comprehensive and detailed diagnosis report for this chest xray "
          "image. \nAssistant:")
GEN_TOKENS = 32


def shapes(quick: bool) -> dict[str, dict]:
    """shape name -> LM config fields, encoder, image size, batch size."""
    if quick:
        lm = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4}
        base = {"lm": lm, "encoder": "resnet10t", "image_size": 64, "batch_size": 2}
    else:
        lm = {"hidden_size": 1024, "intermediate_size": 2752, "num_hidden_layers": 8, "num_attention_heads": 16,
              "num_key_value_heads": 16}
        base = {"lm": lm, "encoder": "swin_tiny", "image_size": 224, "batch_size": 8}
    return {"llama2-32k": {**base, "vocab_size": 32000}, "llama3-128k": {**base, "vocab_size": 128256}}


class PeerR2GenGPT:
    """R2GenGPT's training step and generation (models/R2GenGPT.py, commit fbd6ffd: `encode_img`, `prompt_wrap`,
    `forward`, `test_step`) over given modules: `visual_encoder` a timm model, `llama_model` a causal LM."""

    def __init__(self, visual_encoder, llama_model, llama_proj, layer_norm, tokenizer, encoder_trains: bool):
        self.visual_encoder, self.llama_model = visual_encoder, llama_model
        self.llama_proj, self.layer_norm, self.tokenizer = llama_proj, layer_norm, tokenizer
        self.embed_tokens = llama_model.get_input_embeddings()
        self.encoder_trains = encoder_trains
        self.end_sym = tokenizer.eos_token  # R2GenGPT's end_sym is "</s>", LLaMA's eos, appended as text
        self.pad_id = tokenizer.pad_token_id  # R2GenGPT sets pad_token_id = 0 (LLaMA's <unk>); here the pad id

    def encode_img(self, images):  # images: [V] list of [B, 3, H, W]
        embeds = []
        for image in images:  # one view at a time, as R2GenGPT
            f = self.visual_encoder.forward_features(image)
            embeds.append(f.flatten(1, 2) if f.shape[-1] == self.llama_proj.in_features else f.flatten(2).mT)
        x = self.llama_proj(torch.stack(embeds).mean(0))  # [B, N, H]
        return x, torch.ones(x.shape[:-1], dtype=torch.long, device=x.device)

    def prompt_wrap(self, img_embeds, atts_img):
        before, after = PROMPT.split("<image>")
        b = img_embeds.shape[0]
        ids = [self.tokenizer(p, return_tensors="pt", add_special_tokens=False).input_ids.to(img_embeds.device)
               for p in (before, after)]
        pre, post = (self.embed_tokens(i).expand(b, -1, -1) for i in ids)
        wrapped = torch.cat([pre, img_embeds, post], dim=1)
        return wrapped, atts_img[:, :1].expand(-1, wrapped.shape[1])

    def _wrapped(self, images):
        with torch.set_grad_enabled(self.encoder_trains and torch.is_grad_enabled()):
            img, atts = self.encode_img(images)
        img = self.layer_norm(img)
        img, atts = self.prompt_wrap(img, atts)
        bos = torch.full((img.shape[0], 1), self.tokenizer.bos_token_id, dtype=torch.long, device=img.device)
        return torch.cat([self.embed_tokens(bos), img], dim=1), torch.cat([atts[:, :1], atts], dim=1)

    def loss(self, images, reports):
        self.tokenizer.padding_side = "right"
        tok = self.tokenizer([t + self.end_sym for t in reports], return_tensors="pt", padding="longest",
                             add_special_tokens=False)
        targets = tok.input_ids.masked_fill(tok.input_ids == self.pad_id, -100)
        head, atts = self._wrapped(images)
        empty = torch.full(head.shape[:2], -100, dtype=torch.long)  # bos + wrapped image
        inputs = torch.cat([head, self.embed_tokens(tok.input_ids.to(head.device))], dim=1)
        mask = torch.cat([atts, tok.attention_mask.to(head.device)], dim=1)
        out = self.llama_model(inputs_embeds=inputs, attention_mask=mask, return_dict=True,
                               labels=torch.cat([empty, targets], dim=1).to(head.device))
        return out.loss

    @torch.no_grad()
    def generate(self, images, **kwargs):
        inputs, _ = self._wrapped(images)  # R2GenGPT builds an attention mask here but does not pass it
        return self.llama_model.generate(inputs_embeds=inputs, **kwargs)


def lm_folder(shape: dict, reports: list[str], cache: Path) -> Path:
    """A LLaMA of `shape` with r2gen's tiny tokenizer trained on `reports` and `shape["vocab_size"]` rows, saved
    once under `cache` like any local model folder."""
    from r2gen.models import tiny_lm

    key = "-".join(f"{v}" for v in [*shape["lm"].values(), shape["vocab_size"]])
    folder = cache / f"llama-{key}"
    if not (folder / "config.json").exists():
        tok = tiny_lm.train_tokenizer(reports, 1024)
        config = tiny_lm.causal_lm_config(tok, "llama", max_position_embeddings=1024, **shape["lm"])
        config.vocab_size = shape["vocab_size"]  # rows beyond the tokenizer's: the real vocabulary's cost
        tiny_lm.save_causal_lm(folder, tok, config, seed=0)
    return folder


def run_one(side: str, shape_name: str, align: str, args) -> dict:
    """One side, shape and alignment in this process: the first step's loss, the second's peak memory, the median step time,
    generation times."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir

    from r2gen import build
    from r2gen.data.annotations import read_studies
    from r2gen.models.memory import PeakMemory
    from r2gen.models.prompt import ReportTargets

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = shapes(args.quick)[shape_name]
    b = shape["batch_size"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"encoder={shape['encoder']}", f"align={align}", f"data.image_size={shape['image_size']}",
            "data.view_fusion=mean", "data.finding_loss=0", "data.feature_cache=off", "data.demo.n_train=64",
            "data.demo.n_val=4", "data.demo.n_test=4", f"paths.cache_dir={args.cache}", f"paths.output_dir={args.cache}/out",
            "lm.freeze=true", f"lm.dtype={'bfloat16' if cuda else 'float32'}", "lm.attn_implementation=sdpa",
            f"lm.prompt.text='{PROMPT}'", "+encoder.kwargs.drop_path_rate=0.0",
            *(["align.lora.dropout=0"] if align == "delta" else [])])
    build.prepare_data(cfg.data)
    reports = [s["report"] for s in read_studies(cfg.data)["train"]]
    folder = lm_folder(shape, reports, Path(args.cache))
    pl.seed_everything(0)
    model = build.model(cfg, lm_folder=str(folder)).to(device)
    model.train()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(b, 2, 3, shape["image_size"], shape["image_size"], generator=g).to(device)
    view_mask = torch.ones(b, 2, dtype=torch.bool, device=device)
    batch_reports = [model.clean(r) for r in reports[:b]]
    if side == "r2gen":
        batch = {"images": images, "view_mask": view_mask, **{k: v.to(device) for k, v in
                 ReportTargets(model.tokenizer, cfg.data.max_report_tokens).tensors(batch_reports).items()}}
        loss_fn = lambda: model(batch)  # noqa: E731
    else:
        peer = PeerR2GenGPT(model.encoder.model, model.lm_model, model.lm_proj, model.lm_norm, model.tokenizer,
                            encoder_trains=model.encoder_mode != "frozen")
        views = list(images.unbind(1))
        loss_fn = lambda: peer.loss(views, batch_reports)  # noqa: E731
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return float(loss.detach())

    t = time.perf_counter()
    first_loss = step()  # pages in the memory-mapped weights and allocates the AdamW state: not a step's own memory
    first_s = time.perf_counter() - t
    times, peak_mb = [], None
    for i in range(max(1, args.warmup + args.steps - 1)):  # the first step counts as warm-up
        peak = PeakMemory(device) if i == 0 else None
        t = time.perf_counter()
        step()
        if i + 1 >= args.warmup:
            times.append(time.perf_counter() - t)
        if peak is not None:
            peak_mb = peak.read()
    step_s = statistics.median(times) if times else first_s

    model.eval()
    gen = {}
    for name, beams in (("greedy", 1), ("beam3", 3)):
        kw = {"num_beams": beams, "do_sample": False, "min_new_tokens": GEN_TOKENS, "max_new_tokens": GEN_TOKENS,
              "repetition_penalty": 1.0, "length_penalty": 1.0}
        t = time.perf_counter()
        if side == "r2gen":
            model.gen_config = copy.deepcopy(model.gen_config)
            for k, v in kw.items():
                setattr(model.gen_config, k, v)
            model.generate(images, view_mask)
        else:
            peer.generate(views, **kw)
        if cuda:
            torch.cuda.synchronize()
        gen[f"generate_{name}_s"] = time.perf_counter() - t
    return {"side": side, "shape": shape_name, "align": align, "loss": first_loss, "step_s": step_s,
            "first_step_s": first_s, "peak_mem_mb": peak_mb, **gen, "steps": len(times),
            "batch_size": b, "vocab_size": shape["vocab_size"], "encoder": cfg.encoder.name,
            "image_size": shape["image_size"], **{f"lm_{k}": v for k, v in shape["lm"].items()},
            "loss_path": getattr(model, "loss_path", None) if side == "r2gen" else "full (labels=)"}


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_model()} x{os.cpu_count()}"


def summary(rows: list[dict]) -> dict:
    """Per shape and align: peer/r2gen ratios of memory and time, and whether the losses match."""
    out = {}
    for r in rows:
        if r["side"] != "r2gen":
            continue
        p = next(x for x in rows if x["side"] == "peer" and x["shape"] == r["shape"] and x["align"] == r["align"])
        out[f"{r['shape']}/{r['align']}"] = {
            "loss_r2gen": r["loss"], "loss_peer": p["loss"],
            "losses_match": abs(r["loss"] - p["loss"]) <= 1e-4 * max(1.0, abs(p["loss"])) + 1e-5,
            "speedup": p["step_s"] / r["step_s"],
            "memory_ratio": (r["peak_mem_mb"] / p["peak_mem_mb"]) if r["peak_mem_mb"] is not None and p["peak_mem_mb"]
            else None,
            "generate_greedy_ratio": p["generate_greedy_s"] / r["generate_greedy_s"],
            "generate_beam3_ratio": p["generate_beam3_s"] / r["generate_beam3_s"]}
    return out


def markdown(result: dict) -> str:
    lines = ["# r2gen vs R2GenGPT on LM-bound shapes\n", f"device: {result['device']}; "
             f"{'quick shapes' if result['quick'] else 'full shapes'}; median of {result['steps']} steps after "
             f"{result['warmup']}; peak memory over the second step\n",
             "| shape | align | side | loss | step s | peak MB | greedy s | beam3 s |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['align']} | {r['side']} | {r['loss']:.5f} | {r['step_s']:.3f} | "
                     f"{r['peak_mem_mb']} | {r['generate_greedy_s']:.2f} | {r['generate_beam3_s']:.2f} |")
    lines += ["", "| shape/align | losses match | peer/r2gen step time | r2gen/peer peak memory |", "|---|---|---|---|"]
    for k, s in result["summary"].items():
        mem = f"{s['memory_ratio']:.2f}" if s["memory_ratio"] is not None else "-"
        lines.append(f"| {k} | {s['losses_match']} | {s['speedup']:.2f}x | {mem} |")
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    """Every side x shape x align in its own process; the rows, the summary, written to `args.json` and `.md`."""
    rows = []
    for shape in shapes(args.quick):
        for align in ALIGNS:
            for side in SIDES:  # back to back: the same shape, one side after the other
                cmd = [sys.executable, __file__, "--one", f"{side}:{shape}:{align}", "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--cache", str(args.cache), *(["--quick"] if args.quick else [])]
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
                line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
                if r.returncode or not line:
                    sys.exit(f"{side} {shape} {align} failed:\n{r.stderr[-3000:]}")
                rows.append(json.loads(line[0][7:]))
                print(f"  {shape:12} {align:8} {side:6} loss {rows[-1]['loss']:.5f} step {rows[-1]['step_s']:.3f}s "
                      f"peak {rows[-1]['peak_mem_mb']} MB", file=sys.stderr)
    result = {"device": machine(), "quick": args.quick, "steps": args.steps, "warmup": args.warmup,
              "generate_new_tokens": GEN_TOKENS, "rows": rows, "summary": summary(rows), "argv": sys.argv[1:]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    args.json.with_suffix(".md").write_text(markdown(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run)")
    ap.add_argument("--steps", type=int, default=4, help="training steps timed per run")
    ap.add_argument("--warmup", type=int, default=1, help="steps run first and not timed (the first is one)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "r2gen-lm-bound",
                    help="where the demo data and the built LMs are kept between runs")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "lm_bound.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "side:shape:align", run in a child process
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one.split(":"), args)))
        return
    result = run(args)
    print(markdown(result))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
