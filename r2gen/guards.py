"""Stop a run whose training has diverged, before the NaN reaches the weights or a checkpoint.

`NonFiniteGuard` checks the training loss before backward and the gradients before the optimizer step; either being
NaN/inf ends the run with `TrainingDiverged`, naming the step, the batch's studies and the likely causes. Nothing from
that step is applied, so `last.ckpt` and `best.ckpt` keep the last finite weights (and `r2gen.checkpoint_io` refuses
to write non-finite weights, whatever the cause). Under `trainer.precision=16-mixed` the gradients are not checked:
the GradScaler finds inf gradients itself and skips those steps while it lowers its scale. Under DDP the decision is
shared by all ranks (one all-reduce of a flag), so every rank stops at the same step instead of waiting on the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from r2gen.errors import TrainingDiverged


class NonFiniteGuard(Callback):
    def __init__(self) -> None:
        self._batch: tuple[int, list[str]] = (-1, [])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch: Any, batch_idx: int) -> None:
        ids = batch.get("ids", []) if isinstance(batch, dict) else []
        self._batch = (batch_idx, [str(i) for i in ids])

    def on_before_backward(self, trainer: pl.Trainer, pl_module, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not _all_ranks(trainer, finite):
            value = loss.detach().float().mean().item() if not finite else "finite here, NaN/inf on another rank"
            raise TrainingDiverged(self._message(trainer, pl_module, f"the training loss is {value}"))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module, optimizer) -> None:
        if str(trainer.precision) in ("16-mixed", "16"):
            return  # the GradScaler skips inf steps by design
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if not _all_ranks(trainer, finite):
            raise TrainingDiverged(self._message(trainer, pl_module, "the gradients hold NaN/inf"))

    def _message(self, trainer: pl.Trainer, pl_module, what: str) -> str:
        batch_idx, ids = self._batch
        studies = ", ".join(ids[:4]) + (", ..." if len(ids) > 4 else "")
        optim = getattr(getattr(pl_module, "cfg", None), "optim", None)
        lrs = ", ".join(f"optim.{k}={optim[k]}" for k in ("lr", "encoder_lr", "lm_lr") if optim is not None and k in optim)
        causes = [f"a learning rate too high ({lrs or 'optim.*lr'}: lower them, or warm up longer with optim.warmup_ratio)",
                  "bad input data in this batch (an image or report that is empty or corrupt)"]
        precision = str(trainer.precision)
        if precision.startswith("16"):
            causes.insert(0, f"fp16 overflow (trainer.precision={precision}): use trainer.precision=bf16-mixed or 32-true")
        return (f"training diverged: {what} at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                f"{batch_idx}; studies {studies or 'unknown'}). Likely causes: {'; '.join(causes)}. Nothing from this "
                f"step was applied or saved: {_saved(trainer)}")


def _saved(trainer: pl.Trainer) -> str:
    files = sorted({str(Path(cb.dirpath) / f"{cb.filename}{cb.FILE_EXTENSION}") for cb in trainer.checkpoint_callbacks
                    if isinstance(cb, ModelCheckpoint) and cb.dirpath and cb.filename
                    and (Path(cb.dirpath) / f"{cb.filename}{cb.FILE_EXTENSION}").is_file()})
    return f"{' and '.join(files)} hold the last finite weights" if files else "no checkpoint had been written yet"


def _all_ranks(trainer: pl.Trainer, ok: bool) -> bool:
    """`ok` on every rank (under DDP every rank must take the same decision, or the others hang)."""
    if trainer.world_size > 1:
        return trainer.strategy.reduce_boolean_decision(ok, all=True)
    return ok
