"""`train.py` hands its monitored score to Hydra, so a sweep (`-m`, or a sweeper such as Optuna) can optimise it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from .helpers.cli import run_cli
from .helpers.config import SMALL
from .helpers.paths import ROOT


@pytest.mark.slow
def test_the_entry_point_returns_the_best_monitored_score(make_cfg):
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    cfg = make_cfg("test_after_fit=false", "trainer.max_epochs=2")
    score = entry.main.__wrapped__(cfg)  # the function @hydra.main wraps: what Hydra receives as the job's return
    best = torch.load(f"{cfg.paths.output_dir}/checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    state = next(v for k, v in best["callbacks"].items() if "ModelCheckpoint" in k and "'val/score'" in k)
    assert isinstance(score, float) and score == pytest.approx(float(state["best_model_score"]))


@pytest.mark.slow
def test_a_two_point_multirun_trains_both_points(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    r = run_cli("train.py", "-m", "optim.lr=1e-3,5e-4", f"hydra.sweep.dir={sweep}", "test_after_fit=false", *SMALL,
                cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "best.ckpt").is_file()
        assert (sweep / job / "csv" / "metrics.csv").is_file()
    lrs = {yaml_lr for job in ("0", "1") for yaml_lr in (sweep / job / ".hydra" / "overrides.yaml").read_text().split()
           if yaml_lr.startswith("optim.lr=")}
    assert lrs == {"optim.lr=0.001", "optim.lr=0.0005"}  # one job per point
