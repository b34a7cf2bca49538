"""Resume checks the config first: a key that shapes the model differs from the checkpoint's -> one line naming it
and both values, before anything is built (no LM into the cache, no run folder); keys that may differ still resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from r2gen.errors import ConfigError
from r2gen.train import train

from .helpers.cli import run_cli
from .helpers.config import SMALL


def lm_folders(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "lm").iterdir()} if (cache_dir / "lm").is_dir() else set()


@pytest.mark.parametrize("overrides,message", [
    (["lm.build.hidden_size=128"], "was trained with lm.build.hidden_size=32; this run has 128: resume with the "
                                   "same value, or start a new run"),
    (["lm.build.vocab_size=512"], "was trained with lm.build.vocab_size=300; this run has 512"),
    (["align=shallow"], "was trained with align.encoder=full; this run has frozen"),
    (["align=delta"], "was trained with align.encoder=full; this run has lora: resume with the same value"),
    (["encoder.name=resnet14t"], "was trained with encoder.name=resnet10t; this run has resnet14t"),
    (["data.finding_loss=0"], "was trained with data.finding_loss=1.0; this run has 0"),
    (["lm.freeze=true", "lm.lora.r=4"], "was trained with lm.freeze=false, lm.lora.r=0; this run has "
                                        "lm.freeze=true, lm.lora.r=4: resume with the same values"),
])
def test_a_resume_that_does_not_match_is_one_line_and_builds_nothing(demo_run, make_cfg, cache_dir, overrides,
                                                                     message):
    last = demo_run / "checkpoints" / "last.ckpt"
    before = lm_folders(cache_dir)
    cfg = make_cfg(f"ckpt_path={last}", *overrides)
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert str(e.value).startswith(f"ckpt_path={last} ") and message in str(e.value) and "\n" not in str(e.value)
    assert lm_folders(cache_dir) == before  # checked before the LM is built into the cache
    assert not Path(cfg.paths.output_dir).exists()  # and before the run folder is made


def test_another_lm_is_named_by_its_name_or_path(demo_run, make_cfg, cache_dir):
    last = demo_run / "checkpoints" / "last.ckpt"
    before = lm_folders(cache_dir)
    cfg = make_cfg(f"ckpt_path={last}", "lm=gpt2", *(o for o in SMALL if "lm.build" not in o), small=False)
    with pytest.raises(ConfigError, match=f"was trained with lm.name_or_path={cache_dir}/lm/tiny-llama; this run "
                                          f"has openai-community/gpt2: resume with the same value"):
        train(cfg)
    assert lm_folders(cache_dir) == before


def test_keys_that_may_differ_still_resume(demo_run, make_cfg, cache_dir, tmp_path):
    """Train longer, with other workers and generation, on the data moved elsewhere: the LM is the checkpoint's."""
    last = demo_run / "checkpoints" / "last.ckpt"
    cfg = make_cfg(f"ckpt_path={last}", "trainer.max_epochs=2", "data.num_workers=0", "generate.num_beams=1",
                   f"data.root={tmp_path / 'moved'}", "test_after_fit=false", "optim.lr=0.002")
    train(cfg)
    after = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    before = torch.load(last, map_location="cpu", weights_only=True)
    assert after["epoch"] == before["epoch"] + 1
    assert after["r2gen"]["lm"] == before["r2gen"]["lm"]  # the LM travels with the run, unchanged


@pytest.mark.slow
def test_mismatched_resume_cli_is_one_line_exit_2(demo_run, cache_dir, tmp_path):
    last = demo_run / "checkpoints" / "last.ckpt"
    before = lm_folders(cache_dir)
    r = run_cli("train.py", *SMALL, f"ckpt_path={last}", "lm.build.hidden_size=128",
                f"hydra.run.dir={tmp_path / 'run'}", cache_dir=cache_dir)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: ckpt_path={last} was trained with lm.build.hidden_size=32; this run has 128: "
                      f"resume with the same value, or start a new run (without ckpt_path)"]
    assert "Traceback" not in r.stderr and "size mismatch" not in r.stderr
    assert lm_folders(cache_dir) == before
