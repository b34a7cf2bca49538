"""`evaluate(cfg)`: rebuild a model from a checkpoint, generate for a split, score it, write the results.

The checkpoint's own config rebuilds the model; only what the user overrode on the command line changes it, with
train.py's meaning (`r2gen.checkpoint.run_config`): `data=iu_xray` or `generate=greedy` replaces that group whole,
`data.root=...` or `generate.num_beams=1` one value. Trainer and paths come from the evaluate config (run folder
`outputs/evaluate/<date>/<time>`).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from r2gen import build
from r2gen.checkpoint import load_model, rebuild
from r2gen.data.annotations import jsonl_objects
from r2gen.data.clean import get_cleaner
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.provenance import write_provenance
from r2gen.scoring.callback import Evaluation
from r2gen.scoring.policy import Scoring, score_records
from r2gen.scoring.results import write_results

log = logging.getLogger(__name__)


def shuffle_images(dataset, seed: int) -> None:
    """Give every study another study's images (a cyclic shift of a random order): a model that reads the image
    loses its finding scores; one that ignores it keeps them."""
    entries = list(dataset.entries)
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    paths = [entries[i]["image_path"] for i in order]
    for k, i in enumerate(order):
        entries[i] = {**entries[i], "image_path": paths[(k + 1) % len(order)]}
    dataset.entries = entries  # packed again (a StudyDataset's studies are read-only numpy buffers)


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """`{"id", "prediction", "reference"}` per line; a bad line is reported with its number."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise MissingFileError(f"predictions={path}: no such file (expected JSONL: one {{id, prediction, reference}} per line)")
    records, seen = [], set()
    for n, r in jsonl_objects(p, f"predictions={path}"):
        missing = [k for k in ("id", "prediction", "reference") if k not in r]
        if missing:
            raise InputError(f"predictions={path} line {n}: missing {missing}; each line needs id, prediction, reference")
        if str(r["id"]) in seen:
            raise InputError(f"predictions={path} line {n}: id {r['id']!r} appears twice")
        seen.add(str(r["id"]))
        records.append({"id": str(r["id"]), "prediction": str(r["prediction"]), "reference": str(r["reference"])})
    if not records:
        raise InputError(f"predictions={path}: the file has no predictions")
    return records


def score_predictions(cfg: DictConfig) -> dict[str, Any]:
    """Score a predictions file with no model: both sides cleaned with `data.clean`, references as `eval.references`
    says, labelled with `data.labeler`, so any system's output is scored exactly the way ours is."""
    scoring = Scoring.from_config(cfg)
    clean = get_cleaner(cfg.data.clean)
    records = scoring.prepare([{"id": r["id"], "prediction": clean(r["prediction"]), "reference": clean(r["reference"])}
                               for r in read_predictions(cfg.predictions)])
    scores = score_records(records, scoring)
    write_results(build.output_dir(cfg), records, scores, {
        "split": "predictions file", "predictions": str(cfg.predictions), "data": cfg.data.name,
        "clean": cfg.data.clean}, scoring)
    return scores


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Scores of `cfg.ckpt` on `cfg.split` (or of the file `cfg.predictions`); writes metrics.json,
    predictions.jsonl and report.html into the run folder."""
    if cfg.get("predictions"):
        return score_predictions(cfg)
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r}: choose val or test")
    ck, run = rebuild(cfg, overrides)
    evaluation = Evaluation(Scoring.from_config(run))
    pl.seed_everything(cfg.seed, workers=True)
    out = build.output_dir(run)

    model = load_model(run, ck)
    write_provenance(out, run, ckpt=str(cfg.ckpt), split=cfg.split)
    dm = build.datamodule(run, model)
    dm.setup()
    if cfg.get("shuffle_images"):
        shuffle_images(dm.splits[cfg.split], cfg.seed)
    evaluation.write_test_results(out, {
        "split": cfg.split, "ckpt": str(cfg.ckpt), "data": run.data.name, "shuffle_images": bool(cfg.shuffle_images),
        "generate": OmegaConf.to_container(run.generate, resolve=True),
    }, dm.splits[cfg.split])
    trainer = build.trainer(run, with_callbacks=False, callbacks=[evaluation])
    loader = dm.test_dataloader() if cfg.split == "test" else dm.val_dataloader()
    trainer.test(model, dataloaders=loader, verbose=False)
    return evaluation.scores
