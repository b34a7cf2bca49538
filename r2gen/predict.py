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

A model trained with a study's context (`context.*`: r2gen.data.context) reads it here too, given per study:
  * a folder: in a study's subfolder, `indication.txt` and `comparison.txt`, and a `prior/` subfolder holding the
    prior study's images (in name order) and, optionally, its report as `prior/report.txt`;
  * a table: the optional columns `indication`, `comparison`, `view_positions` (as in `data=custom`), and for the
    prior study `prior_report`, `prior_<image column>` (e.g. `prior_image_path`, one path or several joined by `;`)
    and `prior_view_positions`; an empty cell is none;
  * image files: `indication=`, `comparison=`, `prior=[a.png,...]` (the prior's images) and `prior_report=` on the
    command line.
What the model does not read is left out with a warning; a part it reads and a study lacks is written "none", as
for a first study, and a view position it lacks is `unknown` (a warning says so when no study gave any). The prior's images pass the same check as the study's.

The model is rebuilt from the checkpoint as evaluate.py rebuilds it (`r2gen.build.rebuild`, command-line
overrides included), and each study is preprocessed and generated for as at evaluation: the encoder's size and
normalisation, `data.image_size`, no augmentation, the first `data.num_views` images with a view mask, batches of
`data.eval_batch_size`, the checkpoint's generate config, through a Lightning `Trainer.predict` (so a GPU is used
when `trainer.accelerator` finds one). A missing, unreadable or too large (`data.max_image_pixels`) image stops the
run with one line naming them (`data.on_bad_sample=skip`: the study is left out, with a warning).

The output is one `{"id", "report", "images"}` line per study (`images`: the absolute paths the model saw, in
order; `prior_images` too where the model read a prior's images, and `context` where it read context text), plus
`"labels"` with `labels=true`: the report's CheXpert labels as the labeler gives them, 1 positive,
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
from torch.utils.data import DataLoader, Subset

from r2gen import build
from r2gen.checkpoint_io import fsync_dir
from r2gen.data.annotations import cell_paths, context, table_rows
from r2gen.data.checks import POLICIES, SHOW, image_problems, pixel_budget
from r2gen.data.context import Context
from r2gen.data.datamodule import StudyDataset, image_transform
from r2gen.data.images import IMAGE_SUFFIXES, is_dicom
from r2gen.data.resumable import worker_init
from r2gen.errors import ConfigError, InputError, MissingFileError, StorageError, UnsafeWriteError, UserError
from r2gen.scoring.policy import Scoring

log = logging.getLogger(__name__)
TABLES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
FORMS = "a folder of studies, a JSONL/CSV table (.jsonl, .csv) or image files (input=[a.png,b.dcm])"

Study = dict[str, Any]  # {"id", "image_path": [absolute paths], "where": what the messages call it}, and any of
# CONTEXT_FIELDS: "indication", "comparison", "view_positions"; the prior's "prior_image_path" (absolute paths),
# "prior_report" and "prior_view_positions"
CONTEXT_FIELDS = ("indication", "comparison", "view_positions", "prior_image_path", "prior_report",
                  "prior_view_positions")
GIVEN = ("indication", "comparison", "prior", "prior_report")  # predict.yaml's context of an image-file study
MAX_TEXT_BYTES = 64 * 1024  # a context text file (indication.txt, ...) larger than this is refused
VIEW_LISTS = ("image_path", "view_positions", "prior_image_path", "prior_view_positions")  # one entry per image
PRIOR_ID = "\0prior\0"  # the ids of the prior studies generate() adds: no user id starts with a NUL


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
    studies = with_given_context(studies, cfg)
    studies = usable_studies(studies, run.data.num_views, run.data.on_bad_sample, cfg.input,
                             max_pixels=run.data.max_image_pixels)
    out_dir = build.output_dir(run)
    path = output_path(cfg.output, out_dir)
    pl.seed_everything(cfg.seed, workers=True)

    model = build.load_model(run, ck)
    reports = generate(model, run, studies)
    texts = context_texts(model.context, studies, model.clean)
    records = []
    for k, (s, r) in enumerate(zip(studies, reports, strict=True)):
        records.append({"id": s["id"], "report": r, "images": s["image_path"]})
        if model.context.prior_images and s.get("prior_image_path"):
            records[-1]["prior_images"] = s["prior_image_path"]
        if texts is not None:
            records[-1]["context"] = texts[k]
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


def image_list(paths: list[str], key: str = "input") -> Study:
    """Image files given by name (`key`: the option that names them, for messages): one study."""
    if not paths:
        raise InputError(f"{key}=[]: the list names no image; give {FORMS if key == 'input' else 'image files'}")
    for p in map(Path, paths):
        if p.is_dir():
            raise InputError(f"{key}=[...]: {p} is a folder; a list names the image files of one study"
                             + (f" (a folder of studies is input={p})" if key == "input" else ""))
        if p.exists() and not is_image_file(p):
            raise InputError(f"{key}=[...]: {p}: unsupported file type ({p.suffix or 'no suffix'}, not a DICOM file); "
                             f"images are {', '.join(sorted(IMAGE_SUFFIXES))} or DICOM")
    return {"id": Path(paths[0]).stem, "image_path": [absolute(p) for p in paths], "where": paths[0]}


def read_folder(root: Path) -> list[Study]:
    """One study per subfolder (its image files in name order) and per image file directly inside `root`."""
    studies, ignored = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            study, skipped = folder_study(p)
            studies.append(study)
            ignored += skipped
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


def folder_study(folder: Path) -> tuple[Study, list[Path]]:
    """One study's subfolder: its images in name order, `indication.txt` and `comparison.txt`, and `prior/` (the
    prior study's images, and its report as `report.txt`); and the files that are none of these."""
    study: Study = {"id": folder.name, "where": f"{folder.name}/"}
    study["image_path"], ignored = folder_images(folder, {f"{k}.txt" for k in ("indication", "comparison")})
    for key in ("indication", "comparison"):
        if (text := read_text(folder / f"{key}.txt")) is not None:
            study[key] = text
    prior = folder / "prior"
    if prior.is_dir():
        study["prior_image_path"], skipped = folder_images(prior, {"report.txt"})
        ignored += skipped
        if (text := read_text(prior / "report.txt")) is not None:
            study["prior_report"] = text
    return study, ignored


def folder_images(folder: Path, texts: set[str]) -> tuple[list[str], list[Path]]:
    """A folder's image files (absolute paths, in name order), and the files that are neither images nor `texts`
    (subfolders and hidden files are passed over)."""
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    images = [f for f in files if is_image_file(f)]
    return [absolute(f) for f in images], [f for f in files if f not in images and f.name not in texts]


def read_text(path: Path) -> str | None:
    """A context text file's text (None: absent or empty); a large or undecodable one is an error naming it."""
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise InputError(f"{path}: {path.stat().st_size:,} bytes, over the {MAX_TEXT_BYTES:,} a context text may "
                         f"have; give the text itself (a few lines)")
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return text or None


def with_given_context(studies: list[Study], cfg: DictConfig) -> list[Study]:
    """The command line's context (`indication=`, `comparison=`, `prior=[...]`, `prior_report=`) for the one study
    of an image-file input; with a folder or a table, a study's context comes with it instead."""
    given = {k: cfg.get(k) for k in GIVEN if cfg.get(k) not in (None, "", [])}
    if not given:
        return studies
    value = cfg.input
    p = Path(str(value)).expanduser()
    if not isinstance(value, (ListConfig, list, tuple)) and (p.is_dir() or p.suffix.lower() in TABLES):
        raise ConfigError(f"{', '.join(f'{k}=' for k in given)}: these give the context of the one study of an "
                          f"image-file input (input=[a.png,b.png]); with a folder or a table, give each study's "
                          f"context with it (indication.txt, comparison.txt and prior/ in its folder; the indication, "
                          f"comparison, prior_report and prior_image_path columns)")
    study = dict(studies[0])
    for key in ("indication", "comparison", "prior_report"):
        if key in given:
            study[key] = str(given[key]).strip()
    if "prior" in given:
        prior = given["prior"]
        paths = [str(v) for v in prior] if isinstance(prior, (ListConfig, list, tuple)) else [str(prior)]
        study["prior_image_path"] = image_list(paths, "prior")["image_path"]
    return [study]


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
        study = {"id": sid, "image_path": images, "where": where, **table_context(row, len(images), where)}
        prior = [absolute(base / Path(p).expanduser()) for c in image_columns for p in cell_paths(row.get(f"prior_{c}"))]
        if prior:
            study["prior_image_path"] = prior
        prior_context = context({"view_positions": row.get("prior_view_positions")}, len(prior), f"{where} (prior)")
        if "view_positions" in prior_context:
            study["prior_view_positions"] = prior_context["view_positions"]
        if row.get("prior_report") is not None and str(row["prior_report"]).strip():
            study["prior_report"] = str(row["prior_report"]).strip()
        studies.append(study)
    if not studies:
        raise InputError(f"input={path}: no studies in it (the file is empty"
                         f"{' or has only a header row' if fmt == 'csv' else ''}); expected one row per study with "
                         f"id and {', '.join(image_columns)}")
    return studies


def table_context(row: dict, n_images: int, where: str) -> dict:
    """A row's indication, comparison and view positions, read as `data=custom` reads them."""
    return {k: v for k, v in context(row, n_images, where).items() if k in CONTEXT_FIELDS}


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
    studies = [{**s, **{k: s[k][:num_views] for k in VIEW_LISTS if k in s}} for s in studies]
    # the set-up check's own reader: every image once, in threads, with a progress bar on a terminal
    paths = list(dict.fromkeys(p for s in studies for p in (*s["image_path"], *s.get("prior_image_path", ()))))
    problems, _ = image_problems(Path("/"), paths, max_pixels=pixel_budget(max_pixels))
    bad = []  # (id, path, reason)
    for s in studies:
        if not s["image_path"]:
            bad.append((s["id"], s["where"], "the study has no image"))
        bad += [(s["id"], p, problems[p]) for p in s["image_path"] if p in problems]
        bad += [(s["id"], p, f"its prior's image: {problems[p]}") for p in s.get("prior_image_path", ()) if p in problems]
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
    check_context(studies, model.context)
    entries = study_entries(studies, model.context)
    ds = StudyDataset(entries, Path(), transform, run.data.num_views, dm.clean, dm.max_pixels)  # paths: absolute
    ds.attach_context(model.context, entries, dm.clean)
    n = run.data.num_workers
    loader = DataLoader(Subset(ds, range(len(studies))), batch_size=run.data.eval_batch_size, shuffle=False,
                        num_workers=n,
                        collate_fn=dm.collator, worker_init_fn=worker_init if n > 0 else None,
                        pin_memory=torch.cuda.is_available())
    trainer = build.trainer(run, with_callbacks=False)
    if trainer.world_size > 1:  # each process would see only its shard of the studies
        raise ConfigError(f"trainer.devices={run.trainer.devices} (world size {trainer.world_size}): predict.py runs "
                          f"on one device; set trainer.devices=1 (and trainer=default)")
    batches = trainer.predict(model, dataloaders=loader)
    return [r for b in batches for r in b]


def study_entries(studies: list[Study], context: Context) -> list[dict[str, Any]]:
    """The studies as a dataset's entries (r2gen.data.datamodule.StudyDataset), in order, then one entry per prior
    study (its images and report), linked by `prior_id`; the context the model does not read is left out, and one a
    study lacks is "none" (`Context.texts`)."""
    entries, priors = [], []
    for s in studies:
        entry = {"id": s["id"], "report": "", **{k: s[k] for k in ("image_path", "indication", "comparison",
                                                                    "view_positions") if k in s}}
        has_prior = (context.prior_images and s.get("prior_image_path")) or (context.prior_report and s.get("prior_report"))
        if has_prior:
            entry["prior_id"] = PRIOR_ID + s["id"]
            prior = {"id": entry["prior_id"], "report": s.get("prior_report") or "",
                     "image_path": s.get("prior_image_path", []) if context.prior_images else []}
            if "prior_view_positions" in s:
                prior["view_positions"] = s["prior_view_positions"]
            priors.append(prior)
        entries.append(entry)
    return entries + priors


def check_context(studies: list[Study], context: Context) -> None:
    """Warn of context the studies give and the model does not read (left out), and of a part the model reads that
    no study gave (each written "none", as for a first study: perhaps forgotten)."""
    reads = {"indication": context.indication, "comparison": context.comparison,
             "prior_report": context.prior_report, "prior_image_path": context.prior_images,
             "view_positions": context.view_positions}
    names = {"prior_image_path": "prior_images"}  # the context.* switch of each study field
    ignored = sorted({k for s in studies for k, on in reads.items() if s.get(k) and not on})
    if ignored:
        log.warning("the model was not trained to read a study's %s (context.%s=false): left out",
                    ", ".join(names.get(k, k) for k in ignored), "/".join(names.get(k, k) for k in ignored))
    missing = [names.get(k, k) for k, on in reads.items() if on and not any(s.get(k) for s in studies)]
    if missing:
        log.warning("the model reads each study's %s, and no study gave any: written as none, as for a first study "
                    "(predict.py's docstring says how to give them)", ", ".join(missing))


def context_texts(context: Context, studies: list[Study], clean) -> list[str] | None:
    """The context text each study's report was written after (None: the model reads none)."""
    if not context.parts:
        return None
    return context.texts(study_entries(studies, context), clean)[: len(studies)]


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
