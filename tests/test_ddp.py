"""Multi-process: evaluate.py on 2 CPU processes (DDP, gloo) scores the same corpus as on 1, and the sharded
strategies' configs build or fail with a clear line."""

import json
import math

import pytest

from r2gen import build
from r2gen.scoring import METRIC_NAMES
from r2gen.train import train

from .helpers.cli import run_cli
from .helpers.config import CONTEXT, SMALL, compose_cfg
from .helpers.files import read_jsonl


@pytest.mark.slow
def test_two_process_evaluation_matches_one(tmp_path, cache_dir):
    # 7 test studies over 2 ranks: DistributedSampler repeats one study to even out the shards, and the module
    # must drop the repeat before scoring
    cfg = compose_cfg("config", SMALL + ["data.demo.n_test=7", "test_after_fit=false"], tmp_path / "run", cache_dir)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"eval{devices}"
        r = run_cli("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={out}", "trainer=ddp", f"trainer.devices={devices}",
                    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", cache_dir=cache_dir)
        assert r.returncode == 0, r.stderr[-3000:]
        if devices == 2:  # really two processes
            assert "MEMBER: 2/2" in r.stdout + r.stderr
        runs[devices] = (json.loads((out / "metrics.json").read_text()), read_jsonl(out / "predictions.jsonl"))
    (m1, p1), (m2, p2) = runs[1], runs[2]
    assert m1["n_studies"] == m2["n_studies"] == 7
    assert sorted(p1, key=lambda r: r["id"]) == sorted(p2, key=lambda r: r["id"])
    for k in METRIC_NAMES:
        assert math.isfinite(m1[k]) and m2[k] == pytest.approx(m1[k], abs=1e-9), k


def test_fsdp_config_builds_its_strategy(make_cfg):
    from pytorch_lightning.strategies import FSDPStrategy

    cfg = make_cfg("trainer=fsdp", "trainer.devices=1", "trainer.accelerator=cpu", "trainer.precision=32-true")
    assert cfg.trainer.strategy._target_.endswith("FSDPStrategy")
    from hydra.utils import instantiate

    assert isinstance(instantiate(cfg.trainer.strategy), FSDPStrategy)


def test_deepspeed_without_deepspeed_is_one_clear_error(make_cfg, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    cfg = make_cfg("trainer=deepspeed_stage2")
    with pytest.raises(ValueError, match=r'trainer.strategy=deepspeed_stage_2 needs DeepSpeed.*pip install -e "\.\[deepspeed\]"'):
        build.trainer(cfg, with_callbacks=False)


@pytest.mark.slow
def test_a_context_run_trains_on_two_ddp_processes(tmp_path, cache_dir):
    """trainer=ddp on 2 CPU processes (gloo) with every context part on: each rank's shard carries its studies'
    priors, and the run trains and tests."""
    out = tmp_path / "ddp"
    r = run_cli("train.py", *SMALL, *CONTEXT, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                "data.batch_size=4", f"hydra.run.dir={out}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 2/2" in r.stdout + r.stderr
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["n_studies"] > 0 and "temporal_acc" in metrics
