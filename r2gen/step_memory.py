"""The memory one training step of a run needs, measured on the device it will run on: what `python -m r2gen.verify`
reports to plan a run with ("does it fit on my card?").

The whole model is built as training builds it (`r2gen.build.model`: the encoder with align.*, the LM with quant=,
lm.lora and gradient checkpointing, the projection, the context parts), placed on the device as Lightning places it,
and given the worst batch the config allows: `data.batch_size` studies, each with all `data.num_views` views at the
encoder's input size, a report of `data.max_report_tokens` tokens, and, where the model reads them, the context text
at `context.max_tokens`, the prior study's views and the view positions. Two steps run as `trainer.precision` runs
them (Lightning's own precision plugin: autocast for `*-mixed`, the module converted for `*-true`), each a forward,
a backward and an AdamW step over the trainable weights. The figures:

- `model weights`: the parameters and buffers as stored (a 4-bit LM's packed weights at their real size);
- `optimizer state`: AdamW's moments of the trainable weights, allocated by the first step;
- `peak memory of a training step`: the most memory the second step held beyond what was held before it (weights,
  optimizer state), measured (`r2gen.models.memory.PeakMemory`: `max_memory_allocated` on a CUDA device, the
  process's peak RSS on a CPU): activations, logits, gradients. The first step is not the one measured: it allocates
  the optimizer state and, on a CPU, pages in the memory-mapped weights, which would count them twice;
- `peak memory in all`: the three summed, what the device must hold; and the second step's wall time.

One device, as `trainer.devices=1` trains: DDP holds the same on each device; FSDP and DeepSpeed shard the weights,
gradients and optimizer state, and need less per device. The images go through the encoder even where training
would read a feature cache (data.feature_cache with align=shallow), which skips the frozen encoder's pass.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig

from r2gen import build
from r2gen.data.view_positions import UNKNOWN
from r2gen.errors import ConfigError
from r2gen.models.lm import quantization_name
from r2gen.models.memory import PeakMemory
from r2gen.models.module import R2GenModule
from r2gen.models.prompt import ContextTokens, ReportTargets

FILLER = "the heart size is normal and the lungs are clear without effusion or pneumothorax ."


def precision_plugin(precision: str | int, device: torch.device):
    """Lightning's precision plugin for `trainer.precision` on `device`, as the Trainer picks it for one device."""
    from pytorch_lightning.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    p = str(precision)
    if p in ("16-mixed", "bf16-mixed", "16", "bf16"):  # "16" and "bf16": Lightning's old names of the mixed ones
        return MixedPrecision(p if p.endswith("-mixed") else f"{p}-mixed", device=device.type)
    if p in ("16-true", "bf16-true"):
        return HalfPrecision(p)
    if p in ("64-true", "64"):
        return DoublePrecision()
    if p in ("32-true", "32"):
        return Precision()
    raise ConfigError(f"trainer.precision={precision!r}: choose 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true or "
                      f"64-true (Lightning's precisions that one device trains with)")


def long_text(tokenizer, n_tokens: int) -> str:
    """Report-like text of at least `n_tokens` tokens of `tokenizer` (cut to length by the caller's truncation)."""
    text = FILLER
    while len(tokenizer(text, add_special_tokens=False).input_ids) < n_tokens:
        text = f"{text} {text}"
    return text


def worst_batch(module: R2GenModule, cfg: DictConfig) -> dict[str, Any]:
    """The largest training batch `cfg` allows for `module`, on the CPU (see the module's docstring)."""
    n, views = int(cfg.data.batch_size), int(cfg.data.num_views)
    size = tuple(module.encoder.data_config()["input_size"])
    gen = torch.Generator().manual_seed(0)
    targets = ReportTargets(module.tokenizer, cfg.data.max_report_tokens)
    batch: dict[str, Any] = {
        "ids": [f"step-{i}" for i in range(n)], "reports": [long_text(module.tokenizer, cfg.data.max_report_tokens)] * n,
        "images": torch.randn(n, views, *size, generator=gen), "view_mask": torch.ones(n, views, dtype=torch.bool),
    }
    batch.update(targets.tensors(batch["reports"]))
    if module.context.parts:
        text = long_text(module.tokenizer, module.context.max_tokens)
        batch.update(ContextTokens(module.tokenizer, module.context.max_tokens).tensors([text] * n))
    if module.study_marker is not None:  # context.prior_images: every study has a prior with all its views
        batch["prior_images"] = torch.randn(n, views, *size, generator=gen)
        batch["prior_view_mask"] = torch.ones(n, views, dtype=torch.bool)
    if module.view_marker is not None:
        batch["view_positions"] = torch.full((n, views), UNKNOWN, dtype=torch.long)
        if module.study_marker is not None:
            batch["prior_view_positions"] = torch.full((n, views), UNKNOWN, dtype=torch.long)
    if module.finding_head is not None:
        batch["finding_labels"] = torch.zeros(n, module.finding_head.out_features)
    return batch


def stored_mb(module: torch.nn.Module) -> float:
    """The module's parameters and buffers as stored, in MB."""
    tensors = [*module.parameters(), *module.buffers()]
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def optimizer_state_mb(optimizer: torch.optim.Optimizer) -> float:
    """The optimizer's state tensors (AdamW: two moments per trainable weight), in MB."""
    tensors = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def step_memory(cfg: DictConfig, lm_folder: str, device: str | torch.device | None = None) -> dict[str, Any]:
    """Build the run's model with its LM from `lm_folder` (`r2gen.build.lm_path`, where training loads it from), run
    two training steps on the worst batch `cfg` allows, and report what the second held (see the module's
    docstring). `device`: default cuda if available, else cpu."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.random.fork_rng(devices=[]):  # seeded as a run is (its weights, the batch), the caller's stream kept
        torch.manual_seed(int(cfg.get("seed") or 0))
        module = build.model(cfg, lm_folder=lm_folder)
    plugin = precision_plugin(cfg.trainer.precision, device)
    module = plugin.convert_module(module)
    if cfg.lm.get("device_map") is None:
        module.to(device)  # as Lightning moves it (a quantized LM's weights included)
    else:  # the LM stays where lm.device_map placed it; the rest goes to the device
        for name, child in module.named_children():
            if name != "lm_model":
                child.to(device)
    module.train()
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in worst_batch(module, cfg).items()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad])

    def step() -> float:
        with plugin.forward_context():
            loss = module(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return float(loss.detach())

    loss = step()  # allocates the AdamW state, and on a CPU pages in the memory-mapped weights
    peak = PeakMemory(device)
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    held = peak.read()
    weights, state = stored_mb(module), optimizer_state_mb(optimizer)
    n, views = len(batch["ids"]), batch["view_mask"].shape[1]
    side = "x".join(str(s) for s in batch["images"].shape[-2:])
    report = {
        "training step": f"batch {n}, {views} views at {side}, reports of {batch['target_ids'].shape[1]} tokens, "
                         f"align.encoder={cfg.align.encoder}, quantization {quantization_name(module.lm_model)}, "
                         f"precision={cfg.trainer.precision}, on {device}",
        "training step loss": round(loss, 4),
        "model weights (MB)": weights,
        "optimizer state (MB)": state,
        "peak memory of a training step (MB)": held,
        "peak memory in all (MB)": None if held is None else round(weights + state + held, 1),
        "training step time (s)": round(seconds, 3),
    }
    return report
