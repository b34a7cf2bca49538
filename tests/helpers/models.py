"""Tiny models for unit tests: a shallow-alignment model and its data, a training batch, a few training steps."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from r2gen import build
from r2gen.models.prompt import ReportTargets

from .lm_families import TEXTS


def shallow(make_cfg, *overrides, seed=0):
    """A shallow-alignment model (random frozen encoder, seeded) and its datamodule, set up."""
    return seeded(make_cfg("align=shallow", *overrides), seed)


def seeded(cfg, seed=0):
    """`cfg`, its model (initialised from `seed`) and its datamodule, set up."""
    build.prepare_data(cfg.data)
    path = build.lm_path(cfg)  # building the LM on first use draws random numbers: before the seed
    pl.seed_everything(seed)
    model = build.model(cfg, lm_folder=path)
    dm = build.datamodule(cfg, model)
    dm.setup()
    return cfg, model, dm


def batch(m, b=2, v=2, size=32):
    """A training batch for model `m` as its DataLoader gives one: random images and the reports as `m`'s target ids."""
    return {"ids": [str(i) for i in range(b)], "images": torch.randn(b, v, 3, size, size),
            "view_mask": torch.ones(b, v, dtype=torch.bool), "reports": TEXTS[:b],
            **ReportTargets(m.tokenizer, m.cfg.data.max_report_tokens).tensors(TEXTS[:b])}


def train_steps(m: torch.nn.Module, b: dict, steps: int, lr: float) -> list[float]:
    """`steps` AdamW steps of everything trainable on one batch; the losses."""
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
    m.train()
    losses = []
    for _ in range(steps):
        loss = m(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
