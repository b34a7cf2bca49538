"""`evaluate(cfg)`: rebuild a model from a checkpoint, generate for a split, score it, write the results.

The checkpoint's own config rebuilds the model; only what the user overrode on the command line changes it, with
train.py's meaning (`r2gen.build.run_config`): `data=iu_xray` or `generate=greedy` replaces that group whole,
`data.root=...` or `generate.num_beams=1` one value. Trainer and paths come from the evaluate config (run folder
`outputs/evaluate/<date>/<time>`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from r2gen import build
from r2gen.data.annotations import read_studies
from r2gen.data.checks import has_words
from r2gen.data.clean import get_cleaner
from r2gen.errors import ConfigError, InputError
from r2gen.provenance import write_provenance
from r2gen.scoring.callback import Evaluation
from r2gen.scoring.policy import Scoring, score_families
from r2gen.scoring.predictions_file import as_scored, match_split, read_predictions, reference_mismatches
from r2gen.scoring.protocol import protocol
from r2gen.scoring.results import write_results

log = logging.getLogger(__name__)


def shuffle_images(dataset, seed: int) -> None:
    """Give every study another study's images (a cyclic shift of a random order): a model that reads the image
    loses its finding scores; one that ignores it keeps them."""
    entries = list(dataset.entries)
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    paths = [entries[i]["image_path"] for i in order]
    given = list(range(len(entries)))  # whose images each study gets
    for k, i in enumerate(order):
        given[i] = order[(k + 1) % len(order)]
        entries[i] = {**entries[i], "image_path": paths[(k + 1) % len(order)]}
    dataset.entries = entries  # packed again (a StudyDataset's studies are read-only numpy buffers)
    if getattr(dataset, "view_positions", None) is not None:  # context.view_positions: the views go with the images
        dataset.view_positions = dataset.view_positions[given]


def split_studies(cfg: DictConfig, clean: Callable[[str], str]) -> list[dict] | None:
    """The studies of `cfg.split` a predictions file is matched to, their reports the references (those whose
    report is empty once cleaned with `clean` are dropped, as for `ckpt=`); None, and the file's own references are scored,
    under `split=null` or a data config that does not say where its data set is (`data.root` unset)."""
    if cfg.split is None or OmegaConf.is_missing(cfg.data, "root"):
        return None
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r}: choose val or test, or null to score the predictions file's own "
                          f"references")
    build.prepare_data(cfg.data)  # data=demo: generated on first use
    studies = read_studies(cfg.data, (cfg.split,))[cfg.split]
    kept = [e for e in studies if has_words(clean(e["report"]))]
    if len(kept) < len(studies):
        log.warning("%s: dropped %d studies whose report is empty once cleaned", cfg.split, len(studies) - len(kept))
    if not kept:
        raise InputError(f"data={cfg.data.name}'s {cfg.split} split has no studies with a report to score "
                         f"predictions={cfg.predictions} against; choose the split the file is for (split=val or "
                         f"test), or split=null to score the file's own references")
    return kept


def score_predictions(cfg: DictConfig) -> dict[str, Any]:
    """Score a predictions file with no model: both sides cleaned with `data.clean`, references as `eval.references`
    says, labelled with `data.labeler`, so any system's output is scored exactly the way ours is. With a data split
    (`split_studies`) the split's reports are the references and the file must cover the split
    (`eval.allow_partial=true`: the studies it has, and metrics.json says which are missing)."""
    scoring = Scoring.from_config(cfg)
    clean = get_cleaner(cfg.data.clean)
    allow_partial = cfg.eval.allow_partial
    if not isinstance(allow_partial, bool):
        raise ConfigError(f"eval.allow_partial={allow_partial!r}: choose true or false")
    studies = split_studies(cfg, clean)
    given = read_predictions(cfg.predictions, references=studies is None)
    meta: dict[str, Any] = {"split": "predictions file", "predictions": str(cfg.predictions), "data": cfg.data.name,
                            "clean": cfg.data.clean}
    coverage = None
    records = given
    if studies is not None:
        records, coverage = match_split(given, studies, path=str(cfg.predictions), data=cfg.data.name,
                                        split=cfg.split, allow_partial=allow_partial)
        meta = {**meta, "split": cfg.split, "coverage": coverage.meta()}
    meta["protocol"] = protocol(cfg, scoring, cfg.split if studies is not None else None)

    records = as_scored(records, clean, scoring)
    if studies is not None and (differ := reference_mismatches(records, given,
                                                               lambda rows: as_scored(rows, clean, scoring))):
        log.warning("predictions=%s: the reference of %d studies differs from data=%s's %s split (first: %s); "
                    "scored against the split's", cfg.predictions, len(differ), cfg.data.name, cfg.split,
                    ", ".join(differ[:5]))
    scores, families = score_families(records, scoring)
    write_results(build.output_dir(cfg), records, scores, meta, scoring, families)
    if coverage is not None and coverage.summary():
        print(coverage.summary() + "\n")
    return scores


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Scores of `cfg.ckpt` on `cfg.split` (or of the file `cfg.predictions`); writes metrics.json,
    predictions.jsonl and report.html into the run folder."""
    if cfg.get("predictions"):
        return score_predictions(cfg)
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r}: choose val or test")
    ck, run = build.rebuild(cfg, overrides)
    scoring = Scoring.from_config(run)  # the run's one
    evaluation = Evaluation(scoring)
    pl.seed_everything(cfg.seed, workers=True)
    out = build.output_dir(run)

    build.prepare_data(run.data)  # data=demo: generated on first use
    model = build.load_model(run, ck)
    write_provenance(out, run, ckpt=str(cfg.ckpt), split=cfg.split)
    dm = build.datamodule(run, model, splits=(cfg.split,), scoring=scoring)  # the other splits may be absent from the data set
    if not isinstance(cfg.get("shuffle_priors", False), bool):
        raise ConfigError(f"shuffle_priors={cfg.shuffle_priors!r}: choose true or false")
    if cfg.get("shuffle_priors"):
        if not model.context.prior_report and not model.context.prior_images:
            raise ConfigError("shuffle_priors=true: this model reads no prior study (context.prior_report and "
                              "context.prior_images are off), so there is nothing to shuffle")
        dm.shuffle_priors = cfg.seed  # every study gets another subject's prior
    dm.setup()
    if cfg.get("shuffle_images"):
        shuffle_images(dm.splits[cfg.split], cfg.seed)
    evaluation.write_test_results(out, {
        "split": cfg.split, "ckpt": str(cfg.ckpt), "data": run.data.name, "shuffle_images": bool(cfg.shuffle_images),
        "shuffle_priors": bool(cfg.get("shuffle_priors")),
        "generate": OmegaConf.to_container(run.generate, resolve=True),
        "protocol": protocol(run, scoring, cfg.split),
    }, dm.splits[cfg.split])
    trainer = build.trainer(run, with_callbacks=False, callbacks=[evaluation])
    loader = dm.test_dataloader() if cfg.split == "test" else dm.val_dataloader()
    trainer.test(model, dataloaders=loader, verbose=False)
    return evaluation.scores
