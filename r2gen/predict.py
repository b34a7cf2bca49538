"""`predict(cfg)`: reports for new studies that have none; a folder, a table or a list of images in, one JSON line
per study out.

`input=` is one of:
  * a folder: each subfolder is one study (its image files, in name order), and each image file directly inside
    the folder is a one-image study; the id is the subfolder's name or the file's stem. Hidden files are skipped,
    other files that are not images are skipped with a warning;
  * a JSONL or CSV table in `data=custom`'s format: `id` and the image column(s) `data.image_columns` (a cell holds
    one path, several joined by `;`, or a JSONL list); a `report` or `split` column is ignored. Relative image
    paths are relative to the table's folder, or to `data.image_dir` when that is given on the command line;
  * image files (`input=[a.png,b.dcm]`, or `input=a.png`): one study, its id the first file's stem.
Images are PNG, JPEG (anything Pillow opens) or DICOM (by suffix, or a suffix-less file by its magic bytes).

The model is rebuilt from the checkpoint as evaluate.py rebuilds it (`r2gen.build.rebuild`, command-line
overrides included), and each study is preprocessed and generated for as at evaluation: the encoder's size and
normalisation, `data.image_size`, no augmentation, the first `data.num_views` images with a view mask, batches of
`data.eval_batch_size`, the checkpoint's generate config, through a Lightning `Trainer.predict` (so a GPU is used
when `trainer.accelerator` finds one). A missing, unreadable or too large (`data.max_image_pixels`) image stops the
run with one line naming them (`data.on_bad_sample=skip`: the study is left out, with a warning).

The output is one `{"id", "report", "images"}` line per study (`images`: the absolute paths the model saw, in
order), plus `"labels"` with `labels=true`: the report's CheXpert labels as the labeler gives them, 1 positive,
0 negative, -1 uncertain, null not mentioned (CheXbert instead of the rule-based labeler when `eval.chexbert` is
set). The user's files are only read; the output is written to a temporary file and renamed into place, and a
file named by `output=` that already exists is refused unless it lies inside this run's folder.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from r2gen import build
from r2gen.checkpoint_io import fsync_dir
from r2gen.data.annotations import cell_paths, table_rows
from r2gen.data.checks import POLICIES, SHOW, image_problems, pixel_budget
from r2gen.data.datamodule import StudyDataset, image_transform
from r2gen.data.images import IMAGE_SUFFIXES, is_dicom
from r2gen.data.resumable import worker_init
from r2gen.errors import ConfigError, InputError, MissingFileError, StorageError, UnsafeWriteError, UserError
from r2gen.scoring.policy import Scoring

log = logging.getLogger(__name__)
TABLES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
FORMS = "a folder of studies, a JSONL/CSV table (.jsonl, .csv) or image files (input=[a.png,b.dcm])"

Study = dict[str, Any]  # {"id", "image_path": [absolute paths], "where": what the messages call it}


def predict(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Generate a report with `cfg.ckpt` for every study `cfg.input` names; writes `cfg.output` (null:
    `<run folder>/predictions.jsonl`) and returns its path. `overrides`: as on the command line (default: Hydra's)."""
    if OmegaConf.is_missing(cfg, "input") or cfg.input in (None, ""):
        raise ConfigError(f"input is not set: pass {FORMS}")
    if not isinstance(cfg.labels, bool):
        raise ConfigError(f"labels={cfg.labels!r}: choose true or false")
    overrides = build.cli_overrides() if overrides is None else list(overrides)
    ck, run = build.rebuild(cfg, overrides)
    if run.data.get("max_image_pixels") is None:  # a checkpoint from before the key: this r2gen's budget
        run.data.max_image_pixels = cfg.data.get("max_image_pixels")
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    studies = read_input(cfg.input, list(run.data.get("image_columns") or ["image_path"]),
                         run.data.image_dir if "data.image_dir" in given else None)
    studies = usable_studies(studies, run.data.num_views, run.data.on_bad_sample, cfg.input,
                             max_pixels=run.data.max_image_pixels)
    out_dir = build.output_dir(run)
    path = output_path(cfg.output, out_dir)
    pl.seed_everything(cfg.seed, workers=True)

    model = build.load_model(run, ck)
    reports = generate(model, run, studies)
    records = [{"id": s["id"], "report": r, "images": s["image_path"]} for s, r in zip(studies, reports, strict=True)]
    if cfg.labels:
        e = run.eval
        labeler = Scoring(labeler="chexpert", ce_uncertain=e.ce_uncertain, chexbert=e.chexbert,
                          chexbert_tokenizer=e.chexbert_tokenizer)
        for r, labels in zip(records, labeler.raw_labels(reports), strict=True):
            r["labels"] = labels
    write_jsonl(path, records, out_dir)
    print(f"\nreports for {len(records)} stud{'y' if len(records) == 1 else 'ies'} written to {path}\n")
    return path


# --- what to read ----------------------------------------------------------------------------------------------
def read_input(value, image_columns: list[str], image_dir: str | None = None) -> list[Study]:
    """The studies `input=` names (see the module docstring); ids unique, image paths absolute."""
    if isinstance(value, (ListConfig, list, tuple)):
        return [image_list([str(v) for v in value])]
    p = Path(str(value)).expanduser()
    if p.is_dir():
        studies = read_folder(p)
    elif not p.exists():
        raise MissingFileError(f"input={value}: no such file or folder; give {FORMS}")
    elif p.suffix.lower() in TABLES:
        studies = read_table(p, TABLES[p.suffix.lower()], image_columns, image_dir)
    elif is_image_file(p):
        studies = [image_list([str(value)])]
    else:
        raise InputError(f"input={value}: unsupported file type ({p.suffix or 'no suffix'}, not a DICOM file); give "
                         f"{FORMS}, images being {', '.join(sorted(IMAGE_SUFFIXES))} or DICOM")
    seen: dict[str, str] = {}
    for s in studies:
        if s["id"] in seen:
            raise InputError(f"input={value}: two studies have id {s['id']!r} ({seen[s['id']]} and {s['where']}); "
                             f"ids must be unique: rename one")
        seen[s["id"]] = s["where"]
    return studies


def is_image_file(p: Path) -> bool:
    """An image r2gen reads: by suffix, or a suffix-less (or oddly named) DICOM file by its magic bytes."""
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        return p.is_file() and is_dicom(p)
    except OSError:  # unreadable: not something we can tell is an image
        return False


def absolute(p: str | Path) -> str:
    """`p` made absolute (`..` folded), symlinks kept as the user named them."""
    return os.path.abspath(Path(p).expanduser())


def image_list(paths: list[str]) -> Study:
    """Image files given by name: one study."""
    if not paths:
        raise InputError(f"input=[]: the list names no image; give {FORMS}")
    for p in map(Path, paths):
        if p.is_dir():
            raise InputError(f"input=[...]: {p} is a folder; a list names the image files of one study (a folder of "
                             f"studies is input={p})")
        if p.exists() and not is_image_file(p):
            raise InputError(f"input=[...]: {p}: unsupported file type ({p.suffix or 'no suffix'}, not a DICOM file); "
                             f"images are {', '.join(sorted(IMAGE_SUFFIXES))} or DICOM")
    return {"id": Path(paths[0]).stem, "image_path": [absolute(p) for p in paths], "where": paths[0]}


def read_folder(root: Path) -> list[Study]:
    """One study per subfolder (its image files in name order) and per image file directly inside `root`."""
    studies, ignored = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            files = [f for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")]
            images = [f for f in files if is_image_file(f)]
            ignored += [f for f in files if f not in images]
            studies.append({"id": p.name, "image_path": [absolute(f) for f in images], "where": f"{p.name}/"})
        elif is_image_file(p):
            studies.append({"id": p.stem, "image_path": [absolute(p)], "where": p.name})
        else:
            ignored.append(p)
    if ignored:
        log.warning("input=%s: skipped %d file(s) that are not images: %s", root, len(ignored),
                    ", ".join(str(f.relative_to(root)) for f in ignored[:SHOW]) + (", ..." if len(ignored) > SHOW else ""))
    if not any(s["image_path"] for s in studies):
        raise InputError(f"input={root}: no image files in the folder or its subfolders; expected one subfolder per "
                         f"study holding its images, or image files ({', '.join(sorted(IMAGE_SUFFIXES))} or DICOM)")
    return studies


def read_table(path: Path, fmt: str, image_columns: list[str], image_dir: str | None) -> list[Study]:
    """A `data=custom` table: `id` and the image columns per row; relative paths from `image_dir` or the table's
    folder."""
    base = Path(image_dir).expanduser() if image_dir else path.parent
    studies = []
    for where, row in table_rows(path, fmt):
        missing = [c for c in ("id", *image_columns) if c not in row]
        if missing:
            raise InputError(f"input={path} {where}: no column {', '.join(map(repr, missing))}; its columns: "
                             f"{', '.join(map(str, row))}. A table needs id and the image column(s) "
                             f"data.image_columns={image_columns} (set data.image_columns=[...] for others)")
        sid = "" if row["id"] is None else str(row["id"]).strip()
        if not sid:
            raise InputError(f"input={path} {where}: the id is empty; every study needs an id")
        images = [absolute(base / Path(p).expanduser()) for c in image_columns for p in cell_paths(row[c])]
        studies.append({"id": sid, "image_path": images, "where": where})
    if not studies:
        raise InputError(f"input={path}: no studies in it (the file is empty"
                         f"{' or has only a header row' if fmt == 'csv' else ''}); expected one row per study with "
                         f"id and {', '.join(image_columns)}")
    return studies


def usable_studies(studies: list[Study], num_views: int, on_bad_sample: str, source,
                   max_pixels: int | None = None) -> list[Study]:
    """Each study cut to the `num_views` images the model reads, then the set-up check on those images
    (`r2gen.data.checks`' rule and policy): a missing, unreadable or over-budget (`max_pixels`) one is an error
    naming them, or (`skip`) its study is left out with a warning."""
    if on_bad_sample not in POLICIES:
        raise ConfigError(f"data.on_bad_sample={on_bad_sample!r}: choose error or skip")
    cut = sum(len(s["image_path"]) > num_views for s in studies)
    if cut:
        log.warning("%d studies have more than data.num_views=%d images: the first %d (in name or column order) are "
                    "used", cut, num_views, num_views)
    studies = [{**s, "image_path": s["image_path"][:num_views]} for s in studies]
    # the set-up check's own reader: every image once, in threads, with a progress bar on a terminal
    paths = list(dict.fromkeys(p for s in studies for p in s["image_path"]))
    problems, _ = image_problems(Path("/"), paths, max_pixels=pixel_budget(max_pixels))
    bad = []  # (id, path, reason)
    for s in studies:
        if not s["image_path"]:
            bad.append((s["id"], s["where"], "the study has no image"))
        bad += [(s["id"], p, problems[p]) for p in s["image_path"] if p in problems]
    if not bad:
        return studies
    ids = {i for i, _, _ in bad}
    listed = "; ".join(f"id {i}: {p} ({r})" for i, p, r in bad[:SHOW])
    more = f"; and {len(bad) - SHOW} more" if len(bad) > SHOW else ""
    summary = f"{len(bad)} image(s) not found or unreadable, in {len(ids)} of {len(studies)} studies: {listed}{more}"
    if on_bad_sample == "error":
        err = MissingFileError if all(r == "no such file" for *_, r in bad) else InputError
        raise err(f"input={source}: {summary}. Fix or remove them, or set data.on_bad_sample=skip to leave those "
                  f"studies out")
    log.warning("data.on_bad_sample=skip: leaving out %s", summary)
    kept = [s for s in studies if s["id"] not in ids]
    if not kept:
        raise InputError(f"input={source}: no usable study left ({summary})")
    return kept


# --- generate and write ----------------------------------------------------------------------------------------
def generate(model, run: DictConfig, studies: list[Study]) -> list[str]:
    """The reports, in the studies' order, from the evaluation's image pipeline and collator."""
    dm = build.datamodule(run, model)  # image size and normalisation from the encoder, the collator
    transform = image_transform(dm.image_size, dm.mean, dm.std, augment=False)
    entries = [{"id": s["id"], "report": "", "image_path": s["image_path"]} for s in studies]
    ds = StudyDataset(entries, Path(), transform, run.data.num_views, dm.clean, dm.max_pixels)  # paths: absolute
    n = run.data.num_workers
    loader = DataLoader(ds, batch_size=run.data.eval_batch_size, shuffle=False, num_workers=n,
                        collate_fn=dm.collator, worker_init_fn=worker_init if n > 0 else None,
                        pin_memory=torch.cuda.is_available())
    trainer = build.trainer(run, with_callbacks=False)
    if trainer.world_size > 1:  # each process would see only its shard of the studies
        raise ConfigError(f"trainer.devices={run.trainer.devices} (world size {trainer.world_size}): predict.py runs "
                          f"on one device; set trainer.devices=1 (and trainer=default)")
    batches = trainer.predict(model, dataloaders=loader)
    return [r for b in batches for r in b]


def output_path(output, out_dir: Path) -> Path:
    """Where to write: `output`, refused if it exists outside this run's folder (a user's file is never
    replaced), or `<out_dir>/predictions.jsonl`."""
    if output in (None, ""):
        return out_dir / "predictions.jsonl"
    p = Path(str(output)).expanduser()
    if p.is_dir():
        raise ConfigError(f"output={output} is a folder; name a file, e.g. output={p / 'predictions.jsonl'}")
    if os.path.lexists(p) and not inside(p, out_dir):
        raise UnsafeWriteError(f"output={output} already exists; r2gen never replaces a file outside this run's "
                               f"folder: choose a new name, or delete it first")
    return p


def inside(p: Path, folder: Path) -> bool:
    return p.resolve().is_relative_to(folder.resolve())


def write_jsonl(path: Path, records: list[dict], out_dir: Path) -> None:
    """`records` as JSON lines at `path`, atomically: a temporary file in the same folder, fsynced, renamed over
    `path`; an interrupted or failed write leaves no file behind (and the previous one, if any, intact)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if os.path.lexists(path) and not inside(path, out_dir):  # appeared while the model ran
            raise UnsafeWriteError(f"output={path} appeared while predicting; r2gen never replaces a file it did "
                                   f"not write: choose a new name")
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, Ctrl-C, anything: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, UserError):
            raise StorageError(f"could not write output={path}: {e.strerror or e}; nothing was written: free space "
                               f"or choose another output=<file>") from None
        raise
    fsync_dir(path.parent)
