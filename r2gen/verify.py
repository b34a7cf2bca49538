"""Check an LM config before a long run: `python -m r2gen.verify lm=<name> [lm.name_or_path=<dir>] [quant=4bit]`.

Loads the tokenizer and the LM exactly as training does (`load_lm`, the pad policy, `quant=`, `lm.lora`,
gradient checkpointing), prints what was loaded (class, sizes, special tokens, parameters, memory), then runs one
forward + backward with labels through the real prompt assembly (random image tokens of the LM's width) and one
batched `generate` from `inputs_embeds`; last, the whole model (encoder with align.*, LM, projection, context) as
training builds it takes a training step on the largest batch the config allows, on the device it will train on, and
the table gives its memory: weights, optimizer state, the step's peak, their sum (r2gen.step_memory), the numbers to
plan `data.batch_size`, `quant=` and the card with. Any failure ends the command with one line naming the stage; the table
also lands in `<run folder>/verify.json`.
"""

from __future__ import annotations

import gc
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from r2gen import build
from r2gen.boundary import module_main
from r2gen.errors import UserError
from r2gen.models.lm import (
    generation_config,
    is_encoder_decoder,
    load_lm,
    quantization_config,
    quantization_name,
)
from r2gen.models.prompt import Prompt, ReportTargets, decode_reports, lm_inputs
from r2gen.models.report_loss import chunk_size, loss_path, report_loss
from r2gen.models.report_loss import describe as describe_loss
from r2gen.models.trainable import apply_lm_training
from r2gen.step_memory import step_memory

log = logging.getLogger(__name__)
REPORTS = ["the heart is normal in size . the lungs are clear .", "no acute cardiopulmonary abnormality ."]


class VerifyError(UserError, ValueError):
    """A failed check, reported like a config error: one line, non-zero exit."""


@contextmanager
def stage(name: str):
    try:
        yield
    except VerifyError:
        raise
    except Exception as e:  # verify exists to turn any failure, remote code's included, into one readable line
        lines = str(e).strip().splitlines() or [""]
        msg = lines[0] if isinstance(e, UserError) else f"{type(e).__name__}: {lines[0]}"
        raise VerifyError(f"verify failed while {name}: {msg}") from e


def _token(tok, role: str) -> str:
    tid = getattr(tok, f"{role}_token_id")
    return "none" if tid is None else f"{tid} {getattr(tok, f'{role}_token')!r}"


def verify(cfg: DictConfig, lm_path: str | None = None, max_new_tokens: int = 8,
           device: str | None = None, training_step: bool = True) -> dict[str, Any]:
    """Load and exercise the LM that `cfg` describes; returns the report (also what `main` prints).

    `lm_path`: load from this folder instead of `lm.name_or_path` (a locally built LM); `max_new_tokens` caps the
    generation check; `device`: where to run it (default: cuda if available, else cpu; a model placed at load by
    `lm.device_map` or quantization stays where it is); `training_step`: end with a training step of the whole model
    at the run's batch size, and its memory (r2gen.step_memory).
    """
    with stage("loading the tokenizer and LM"):
        quant = quantization_config(cfg.get("quant"), cfg.lm)
        if lm_path is None:
            if cfg.lm.get("build"):  # lm=tiny trains its tokenizer on the data set's reports
                build.prepare_data(cfg.data)
            lm_path = build.lm_path(cfg)
        model, tok = load_lm(cfg.lm, quant, path=lm_path)
        model = apply_lm_training(model, cfg.lm, quantized=quant is not None)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if quant is None and cfg.lm.get("device_map") is None:
            model.to(device)
        emb = model.get_input_embeddings()
        text_cfg = model.config.get_text_config()
        if len(tok) > emb.num_embeddings:
            raise VerifyError(f"the tokenizer has {len(tok)} tokens but the LM embeds only {emb.num_embeddings}: "
                              "tokenizer and weights do not belong together (check lm.name_or_path)")
    n_params = sum(p.numel() for p in model.parameters())
    report: dict[str, Any] = {
        "name_or_path": str(lm_path), "class": type(model).__name__, "model_type": text_cfg.model_type,
        "kind": "encoder-decoder (the prompt and image in its encoder)" if is_encoder_decoder(model) else "decoder-only",
        "hidden_size": text_cfg.hidden_size, "vocab_size (config)": text_cfg.vocab_size,
        "embedding rows": emb.num_embeddings, "tokenizer size": len(tok),
        "pad": _token(tok, "pad"), "bos": _token(tok, "bos"), "eos": _token(tok, "eos"), "unk": _token(tok, "unk"),
        "dtype": str(emb.weight.dtype).removeprefix("torch."), "device": str(emb.weight.device),
        "quantization": quantization_name(model),
        "parameters": n_params, "trainable parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "memory footprint (MB)": round(model.get_memory_footprint() / 2**20, 1),
    }

    with stage("building the prompt (lm.prompt, lm.add_bos)"):
        encoder_decoder = is_encoder_decoder(model)
        prompt = Prompt(tok, cfg.lm.prompt.text, cfg.lm.prompt.template, cfg.lm.add_bos, encoder_decoder)
        report["prompt tokens"] = f"{len(prompt.prefix)} before the image, {len(prompt.suffix)} after"
        report["prompt starts with bos"] = bool(prompt.prefix[:1]) and prompt.prefix[0] == tok.bos_token_id

    embed = emb  # the LM's input embedding: token ids -> vectors
    dtype, dev = emb.weight.dtype, emb.weight.device
    # two studies, the second with fewer image tokens: ragged batches exercise padding and the attention mask
    scale = emb.weight.float().std().item() if emb.weight.is_floating_point() else 1.0
    img = (torch.randn(2, 4, text_cfg.hidden_size, device=dev) * scale).to(dtype).requires_grad_(True)
    mask = torch.tensor([[True] * 4, [True, True, False, False]], device=dev)
    with stage("running a forward and backward with labels"):
        model.train()
        t = ReportTargets(tok, cfg.data.max_report_tokens).tensors(REPORTS)  # as the collator gives them
        mode = cfg.lm.get("loss_logits", "report")
        path = loss_path(model, mode, encoder_decoder)
        report["loss path"] = describe_loss(path, mode)
        inputs = lm_inputs(embed, prompt, img, mask, t["target_ids"], t["target_lengths"], encoder_decoder)
        loss = report_loss(model, inputs, path, chunk_size(cfg.lm.get("loss_chunk", 1024)))
        if loss is None or not torch.isfinite(loss):
            raise VerifyError(f"verify failed: the LM's loss is {loss}; try lm.dtype=float32 or bfloat16 (float16 overflows)")
        loss.backward()
        if img.grad is None or not torch.isfinite(img.grad).all():
            raise VerifyError("verify failed: no finite gradient reaches the image tokens; the projection could not train")
        report["loss (random image tokens)"] = round(loss.item(), 4)

    with stage("generating from inputs_embeds (generate.*)"):
        model.eval()
        gen = generation_config(model, tok, OmegaConf.to_container(cfg.generate, resolve=True))
        gen.max_new_tokens = min(gen.max_new_tokens or max_new_tokens, max_new_tokens)
        gen.min_new_tokens = min(gen.min_new_tokens or 0, gen.max_new_tokens)
        with torch.no_grad():
            out = model.generate(**lm_inputs(embed, prompt, img.detach(), mask, encoder_decoder=encoder_decoder),
                                 generation_config=gen)
        texts = decode_reports(tok, out, lambda t: t, encoder_decoder)
        if len(texts) != 2 * (gen.num_return_sequences or 1):
            raise VerifyError(f"verify failed: generate returned {len(texts)} sequences for 2 studies")
        report["generate"] = f"num_beams={gen.num_beams}, {out.shape[1] - encoder_decoder} new tokens"
        report["generated (untrained)"] = [t[:60] for t in texts]

    if not training_step:
        return report
    del model, emb, embed, img, inputs, loss, out  # the whole model loads its own LM: not two of them at once
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()  # what the LM held goes back to the card before the whole model loads
    with stage(f"running a training step of the whole model (data.batch_size={cfg.data.batch_size})"):
        try:
            report.update(step_memory(cfg, lm_folder=lm_path, device=device))
        except torch.OutOfMemoryError as e:
            raise VerifyError(
                f"verify failed: a training step at data.batch_size={cfg.data.batch_size} does not fit in the memory "
                f"of {device}: lower data.batch_size (raise trainer.accumulate_grad_batches to keep the effective "
                f"batch), or use quant=4bit, lm.gradient_checkpointing=true, encoder.gradient_checkpointing=true, "
                f"trainer.precision=bf16-mixed") from e
    return report


def format_report(report: dict[str, Any]) -> str:
    width = max(len(k) for k in report)
    rows = [f"{k:<{width}}  {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:<{width}}  {v}"
            for k, v in report.items()]
    return "\n".join(rows)


def run(cfg: DictConfig) -> dict[str, Any]:
    """verify + print the table + write it to the run folder."""
    report = verify(cfg)
    print(format_report(report))
    out = build.output_dir(cfg)
    (Path(out) / "verify.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"ok: lm.name_or_path={cfg.lm.name_or_path} loads, trains and generates")
    return report


def main():
    """`python -m r2gen.verify key=value ...` (and its console script, r2gen.cli)."""
    return module_main(run, "verify")


if __name__ == "__main__":
    main()
