"""`train(cfg)`: fit a model as the composed config says, then score the test split with the best checkpoint."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from r2gen import build, resume
from r2gen.checkpoint import read_checkpoint
from r2gen.provenance import write_provenance
from r2gen.resume_check import check_resume
from r2gen.run_folder import keep_earlier_checkpoints
from r2gen.scoring.callback import Evaluation
from r2gen.scoring.policy import Scoring
from r2gen.scoring.protocol import protocol

log = logging.getLogger(__name__)


def monitored_score(cfg: DictConfig, metrics: dict[str, float] | None) -> float | None:
    """What a sweeper optimises: the best `monitor.metric` of the run (its last value if no checkpoint tracked it)."""
    metrics = metrics or {}
    return metrics.get(f"best/{cfg.monitor.metric}", metrics.get(cfg.monitor.metric))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Returns the final metrics (train/val/test, and `best/<monitor.metric>`) as floats."""
    pl.seed_everything(cfg.seed, workers=True)
    # fail now, with a clear message, not after the model is built (nor the LM built into the cache)
    resume_step, lm_identity = None, None
    if cfg.get("ckpt_path"):
        ck = read_checkpoint(cfg.ckpt_path, "ckpt_path")
        check_resume(cfg, ck, cfg.ckpt_path)  # the keys that shape the model are the checkpoint's
        resume_step, lm_identity = int(ck.get("global_step", 0)), ck["r2gen"]["lm"]
        del ck  # Lightning reads it again, into the model built below
    scoring = Scoring.from_config(cfg)  # the run's one: scores validation and the test, labels the finding loss
    evaluation = Evaluation(scoring)  # its config checked now
    out = build.output_dir(cfg)
    keep_earlier_checkpoints(out, cfg.get("ckpt_path"))
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)

    build.prepare_data(cfg.data)
    write_provenance(out, cfg)  # seed, commit, versions, annotation hash: what reproduces this run
    model = build.model(cfg, lm_identity)  # resumed: the checkpoint's own LM
    dm = build.datamodule(cfg, model, scoring=scoring)
    trainer = build.trainer(cfg, callbacks=[evaluation])
    if resume_step is not None:  # logs continue from the checkpoint instead of restarting or repeating
        resume.continue_logs(trainer, resume_step, cfg.ckpt_path, out)
    try:  # weights_only: a resumed checkpoint is read as data, never as code (also r2gen.checkpoint_io)
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except SystemExit:  # Lightning ends a Ctrl-C with sys.exit(1): a user's stop, not a crash, is 130 in a shell
        state = resume.find(trainer)
        if state is not None and state.stopped:
            sys.exit(resume.EXIT_INTERRUPTED)
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ckpt = trainer.checkpoint_callback  # the best-checkpoint callback: its score is the run's best validation
    if ckpt is not None and ckpt.monitor == cfg.monitor.metric and ckpt.best_model_score is not None:
        metrics[f"best/{cfg.monitor.metric}"] = float(ckpt.best_model_score)

    if cfg.get("test_after_fit"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        evaluation.write_test_results(out / "test", {
            "split": "test", "ckpt": best or "final weights", "data": cfg.data.name,
            "generate": OmegaConf.to_container(cfg.generate, resolve=True),
            "protocol": protocol(cfg, scoring, "test")}, dm.splits["test"])
        trainer.test(model, datamodule=dm, ckpt_path=best or None)
        metrics.update({f"test/{k}": v for k, v in evaluation.scores.items()})
    return metrics
