"""The model side of the web page: a model loaded once, and one study's report and labels per call.

`Reporter.load(cfg)` reads `cfg.ckpt`:
  * a `.ckpt` written by train.py: the run is rebuilt as predict.py rebuilds it (`r2gen.build.rebuild`, the
    command line's overrides included, then `load_model`), and a study goes through predict.py's own
    `usable_studies` and `generate`, so its report equals what `predict.py ckpt=... input=[those files]` writes,
    random state included (the one predict.py's seeding leaves after loading the model is restored before each
    generation);
  * a folder written by `python -m r2gen.export` (`config.json` whose `auto_map` names an R2Gen model): loaded with
    `AutoModel.from_pretrained(folder, trust_remote_code=True)` (its code runs: serve only folders you trust) and
    asked `model.generate_reports([[paths]])`.
The labels are the report's CheXpert labels as predict.py's `labels=true` gives them (1, 0, -1, null; CheXbert
when `eval.chexbert` is set). Generations run one at a time (a lock): two browsers never race the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from r2gen import build
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.export.configuration_r2gen import CONTEXT_KEYWORDS
from r2gen.predict import generate, image_list, usable_studies
from r2gen.scoring.policy import Scoring

log = logging.getLogger(__name__)
APP_KEYS = {"host", "port", "max_file_mb", "max_concurrent_decodes", "allowed_hosts"}  # the app's own keys (conf/app.yaml): never part of the rebuilt run
LIGHTNING_INFO = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class Reporter:
    """A loaded model: `report(paths)` -> {"report", "labels"} for one study, its images in order."""

    kind = ""  # checkpoint | export

    def __init__(self, cfg: DictConfig, num_views: int | None, model_name: str):
        self.source = str(cfg.ckpt)
        self.num_views = num_views  # how many images the model reads (the first ones); None: the model decides
        self.model_name = model_name
        e = cfg.eval
        self.labeler = Scoring(labeler="chexpert", ce_uncertain=e.ce_uncertain, chexbert=e.chexbert,
                               chexbert_tokenizer=e.chexbert_tokenizer)
        self.lock = threading.Lock()

    @staticmethod
    def load(cfg: DictConfig, overrides: list[str] | None = None) -> Reporter:
        """The model `cfg.ckpt` names, loaded (slow: once, at start)."""
        if OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt in (None, ""):
            raise ConfigError("ckpt is not set: pass ckpt=<run>/checkpoints/best.ckpt, or a folder written by "
                              "python -m r2gen.export")
        if Path(str(cfg.ckpt)).expanduser().is_dir():
            return ExportReporter(cfg)
        return CheckpointReporter(cfg, build.cli_overrides() if overrides is None else list(overrides))

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    reads: tuple[str, ...] = ()  # the context.* switches the model was trained with (r2gen.data.context)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "ckpt": self.source, "model": self.model_name, "num_views": self.num_views,
                "context": list(self.reads)}

    def report(self, paths: list[str], context: dict[str, Any] | None = None) -> dict[str, Any]:
        """The report and its labels for one study, its image files (absolute paths) in order; `context`: any of
        predict.py's study fields `indication`, `comparison`, `prior_report` and `prior_image_path` (absolute
        paths)."""
        with self.lock:
            start = time.perf_counter()
            text = self.generate(paths, dict(context or {}))
            log.info("report for a %d-image study in %.1f s", len(paths), time.perf_counter() - start)
        return {"report": text, "labels": self.labeler.raw_labels([text])[0]}

    def generate(self, paths: list[str], context: dict[str, Any]) -> str:
        raise NotImplementedError


class CheckpointReporter(Reporter):
    """A train.py checkpoint, rebuilt and generated for exactly as predict.py does."""

    kind = "checkpoint"

    def __init__(self, cfg: DictConfig, overrides: list[str]):
        overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in APP_KEYS]
        ck, run = build.rebuild(cfg, overrides)
        given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        # One small study per request: loader worker processes (forked from a threaded server) or a progress bar
        # per request would only cost time and noise; neither changes a report.
        if "data.num_workers" not in given:
            run.data.num_workers = 0
        if "trainer.enable_progress_bar" not in given:
            run.trainer.enable_progress_bar = False
        self.run = run
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # where predict.py seeds: before the model
        self.model = build.load_model(run, ck)
        self.rng = rng_state()  # the state predict.py's generate starts from
        self.reads = self.model.context.switched_on
        super().__init__(cfg, run.data.num_views, f"{run.encoder.name} + {Path(str(run.lm.name_or_path)).name}")

    def generate(self, paths: list[str], context: dict[str, Any]) -> str:
        studies = usable_studies([{**image_list(paths), **context}], self.run.data.num_views, "error", "upload")
        set_rng_state(self.rng)
        with quiet(LIGHTNING_INFO):  # a Trainer per request: its hardware summary and tips each time
            return generate(self.model, self.run, studies)[0]


class ExportReporter(Reporter):
    """A folder written by `python -m r2gen.export`: a transformers model with r2gen's remote code."""

    kind = "export"

    def __init__(self, cfg: DictConfig):
        folder = Path(str(cfg.ckpt)).expanduser()
        check_export(folder, cfg.ckpt)
        from transformers import AutoModel

        try:
            self.model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"ckpt={cfg.ckpt}: the exported model does not load ({str(e).splitlines()[0]}); "
                             f"export it again with python -m r2gen.export") from None
        if not callable(getattr(self.model, "generate_reports", None)):
            raise InputError(f"ckpt={cfg.ckpt}: the exported model has no generate_reports(); export it again with "
                             f"python -m r2gen.export")
        self.seed = cfg.seed
        c = self.model.config
        encoder = (getattr(c, "encoder", None) or {}).get("name")
        lm = (getattr(c, "lm_config", None) or {}).get("model_type")
        keywords = getattr(self.model, "context_keywords", ())  # an export from before it: none
        self.reads = tuple(CONTEXT_KEYWORDS[k] for k in keywords)
        super().__init__(cfg, getattr(c, "num_views", None), f"{encoder} + {lm}" if encoder and lm else folder.name)

    def generate(self, paths: list[str], context: dict[str, Any]) -> str:
        """`context` as generate_reports takes it, for the parts the model reads (the rest left out with a warning)."""
        given = {"indications": context.get("indication"), "comparisons": context.get("comparison"),
                 "prior_reports": context.get("prior_report"), "prior_studies": context.get("prior_image_path")}
        reads = getattr(self.model, "context_keywords", ())
        unread = [k for k, v in given.items() if v and k not in reads]
        if unread:
            log.warning("the exported model does not read a study's %s: left out", ", ".join(unread))
        kwargs = {k: [v] for k, v in given.items() if k in reads}
        pl.seed_everything(self.seed, verbose=False)
        with torch.inference_mode():
            return self.model.generate_reports([list(paths)], **kwargs)[0]


def check_export(folder: Path, value) -> None:
    """An export folder: `config.json` whose `auto_map` names an R2Gen model class."""
    config = folder / "config.json"
    if not config.is_file():
        raise MissingFileError(f"ckpt={value}: a folder without config.json; pass a .ckpt written by train.py, or a "
                               f"folder written by python -m r2gen.export")
    try:
        auto_map = json.loads(config.read_text()).get("auto_map") or {}
    except (ValueError, AttributeError, OSError) as e:
        raise InputError(f"ckpt={value}: config.json is not a JSON object ({e}); export it again with "
                         f"python -m r2gen.export") from None
    if not any("R2Gen" in str(v) for v in auto_map.values()):
        raise InputError(f"ckpt={value}: config.json's auto_map names no R2Gen model ({auto_map or 'no auto_map'}); "
                         f"pass a .ckpt written by train.py, or a folder written by python -m r2gen.export")


@contextlib.contextmanager
def quiet(names: tuple[str, ...]):
    """The loggers `names` at WARNING for the block (generations hold the lock: no other thread logs there)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def rng_state() -> dict[str, Any]:
    """Every random state generation may draw from: Python's, NumPy's, torch's (CPU and CUDA)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
