"""A NaN/inf loss or gradient stops training with TrainingDiverged, naming the step and the likely causes, and never
reaches the weights or a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r2gen.checkpoint_io import AtomicCheckpointIO
from r2gen.errors import TrainingDiverged
from r2gen.guards import NonFiniteGuard
from r2gen.models.module import R2GenModule
from r2gen.train import train

from .helpers.cli import run_cli
from .helpers.config import SMALL

NAN_STEP = 7  # 3 steps per epoch (SMALL): epoch 2, its second batch


def poison(monkeypatch, ckpts: Path, how: str) -> dict[str, bytes]:
    """From NAN_STEP on, the loss (or only the gradients) become NaN; the checkpoint files as they were just before."""
    before: dict[str, bytes] = {}
    real_losses = R2GenModule.losses  # what training_step computes its loss with

    def losses(self, batch):
        out = real_losses(self, batch)
        if self.trainer.global_step < NAN_STEP:
            return out
        if not before:
            before.update({p.name: p.read_bytes() for p in ckpts.glob("*.ckpt")})
        if how == "loss":
            return {**out, "loss": out["loss"] * float("nan")}
        w = self.lm_norm.weight  # sqrt'(0) is inf: the loss stays finite, this weight's gradient becomes NaN
        return {**out, "loss": out["loss"] + 0.0 * torch.sqrt(w - w.detach()).sum()}

    monkeypatch.setattr(R2GenModule, "losses", losses)
    return before


def finite(path: Path) -> bool:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("how,what", [("loss", "the training loss is nan"), ("grad", "the gradients hold NaN/inf")])
def test_nonfinite_training_stops_and_keeps_checkpoints(make_cfg, monkeypatch, how, what):
    cfg = make_cfg("trainer.max_epochs=3", "test_after_fit=false")
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    before = poison(monkeypatch, ckpts, how)
    with pytest.raises(TrainingDiverged) as e:
        train(cfg)
    msg = str(e.value)
    assert what in msg and f"global step {NAN_STEP} (epoch 2, batch 1;" in msg
    assert f"optim.lr={cfg.optim.lr}" in msg and "optim.encoder_lr=" in msg and "optim.lm_lr=" in msg
    assert "bad input data" in msg and "last.ckpt" in msg
    assert sorted(before) == ["best.ckpt", "last.ckpt"]
    assert {p.name: p.read_bytes() for p in ckpts.glob("*.ckpt")} == before  # byte-identical: nothing saved after
    assert all(finite(ckpts / name) for name in before)


def test_checkpoint_io_refuses_nonfinite_weights(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "epoch": 0}, path)
    before = path.read_bytes()
    with pytest.raises(TrainingDiverged, match=r"refusing to write .*last.ckpt.*NaN/inf \(e.g. w\)"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.inf])}, "global_step": 4, "epoch": 0}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def fake_trainer(precision: str) -> SimpleNamespace:
    return SimpleNamespace(precision=precision, global_step=5, current_epoch=1, world_size=1, checkpoint_callbacks=[])


def test_fp16_mixed_leaves_inf_gradients_to_the_grad_scaler():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, math.inf])
    optimizer = torch.optim.SGD([p], lr=0.1)
    guard = NonFiniteGuard()
    guard.on_before_optimizer_step(fake_trainer("16-mixed"), None, optimizer)  # GradScaler skips this step itself
    with pytest.raises(TrainingDiverged, match="gradients"):
        guard.on_before_optimizer_step(fake_trainer("bf16-mixed"), None, optimizer)
    with pytest.raises(TrainingDiverged, match="fp16 overflow.*bf16-mixed or 32-true"):  # a NaN loss still stops it
        guard.on_before_backward(fake_trainer("16-mixed"), None, torch.tensor(float("nan")))


@pytest.mark.slow
def test_divergence_is_one_line_from_the_command_line(tmp_path, cache_dir):
    lrs = ["optim.lr=1e30", "optim.encoder_lr=1e30", "optim.lm_lr=1e30", "optim.warmup_ratio=0"]  # really diverges
    r = run_cli("train.py", *SMALL, *lrs, f"hydra.run.dir={tmp_path / 'run'}", cache_dir=cache_dir)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error: training diverged: the training loss is nan at global step" in r.stderr
    assert "optim.lr=1e+30" in r.stderr and "Traceback" not in r.stderr
