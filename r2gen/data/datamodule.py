"""Studies as batches of multi-view images and cleaned reports: the LightningDataModule.

Studies come from `r2gen.data.annotations.read_studies` (R2Gen `annotation.json`, JSONL or CSV), image paths
relative to `data.image_dir`, and pass the set-up check (`r2gen.data.checks`) before any loader is built. A
study's first `data.num_views` images are used; a study with fewer views gets zero images and a view mask, so the
encoder ignores them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from r2gen.data.annotations import SPLITS, read_annotation, read_studies  # noqa: F401 (read_annotation: re-export)
from r2gen.data.checks import check_studies
from r2gen.data.clean import get_cleaner
from r2gen.data.collate import Collator
from r2gen.data.context import Context, prior_index
from r2gen.data.demos import prepare_demo
from r2gen.data.images import load_image
from r2gen.data.packed import Strings, StudyTable
from r2gen.data.priors import shuffle_priors
from r2gen.data.resumable import ResumableLoader, ResumableRandomSampler, SkippingBatchSampler, worker_init
from r2gen.data.sampler import length_grouped
from r2gen.data.transform import image_transform
from r2gen.data.view_positions import UNKNOWN, view_ids
from r2gen.errors import InputError
from r2gen.provenance import layout_files

log = logging.getLogger(__name__)


class StudyDataset(Dataset):
    """A split's studies as model inputs. `entries` (dicts with id, report, image_path) are packed into numpy
    buffers (r2gen.data.packed.StudyTable), so DataLoader workers share them instead of copying them; `entries`
    reads them back as dicts (the report cleaned), `reports` gives the cleaned reports."""

    def __init__(self, entries, image_dir: Path, transform, num_views: int, clean, max_pixels: int | None = None):
        self.image_dir, self.transform, self.num_views = image_dir, transform, num_views
        self.max_pixels = max_pixels  # data.max_image_pixels: larger images are refused from their header
        self.table = StudyTable(entries, clean)
        self.token_lengths: np.ndarray | None = None  # [N] target tokens per study, for data.group_by_length
        self.finding_labels: torch.Tensor | None = None  # [N, K] 1/0 labels of each report, for data.finding_loss
        self.context: Strings | None = None  # [N] each study's context text, with context.* on (r2gen.data.context)
        self.prior_index: np.ndarray | None = None  # [N] each study's prior's position (-1: none): context.prior_images
        self.view_positions: np.ndarray | None = None  # [N, V] each view's position id: context.view_positions

    @property
    def entries(self) -> StudyTable:
        return self.table

    @entries.setter
    def entries(self, entries) -> None:
        """Replace the studies (e.g. evaluate.py's shuffle_images); reports are taken as given: already cleaned."""
        self.table = StudyTable(entries)

    @property
    def reports(self) -> Strings:
        return self.table.reports

    def __len__(self) -> int:
        return len(self.table)

    def _load(self, path: Path, study_id) -> Any:
        """The image; one that passed the set-up check but cannot be read now changed on disk during the run."""
        try:
            return load_image(path, self.max_pixels)
        except Exception as e:  # noqa: BLE001 - whatever PIL or pydicom raise for a file that changed on disk
            raise InputError(f"image {path} (study id {study_id}) can no longer be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}): it changed since the set-up check; "
                             f"restore it, or remove it and resume with ckpt_path=<run>/checkpoints/last.ckpt") from None

    def views(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Study `i`'s first `num_views` images [V, 3, H, W] (absent views zero) and their mask [V]."""
        sid = self.table.ids[i]
        views = [self.transform(self._load(self.image_dir / p, sid)) for p in self.table.image_paths(i)[: self.num_views]]
        images = torch.zeros(self.num_views, *views[0].shape)
        images[: len(views)] = torch.stack(views)
        return images, torch.arange(self.num_views) < len(views)

    def __getitem__(self, i: int) -> dict[str, Any]:
        images, mask = self.views(i)
        out = {"id": self.table.ids[i], "images": images, "view_mask": mask, "report": self.table.reports[i],
               **self.extras(i)}
        if self.prior_index is not None:  # the prior study's images; none (all masked) for a first study
            k = int(self.prior_index[i])
            out["prior_images"], out["prior_view_mask"] = self.views(k) if k >= 0 else (
                torch.zeros_like(images), torch.zeros_like(mask))
        return out

    def attach_context(self, context: Context, entries, clean) -> None:
        """What of each study's context the model reads (`context`: r2gen.data.context), from `entries`: the
        dataset's studies in order, each with the context fields and `prior_id` (priors among `entries`)."""
        if context.parts:
            self.context = Strings(context.texts(entries, clean))
        if context.prior_images:
            self.prior_index = np.asarray(prior_index(entries), dtype=np.int64)
        if context.view_positions:  # ids into r2gen.data.view_positions.VIEW_POSITIONS, of the first num_views images
            ids = [view_ids(e.get("view_positions"), self.num_views) for e in entries]
            self.view_positions = np.asarray(ids, dtype=np.int64).reshape(len(entries), self.num_views)

    def extras(self, i: int) -> dict[str, Any]:
        """What study `i` carries besides images and report (also served from a feature cache)."""
        out: dict[str, Any] = {} if self.finding_labels is None else {"finding_labels": self.finding_labels[i]}
        if self.context is not None:
            out["context"] = self.context[i]
        if self.view_positions is not None:  # [V] ids; with prior images also the prior's, which follow its images
            out["view_positions"] = torch.from_numpy(self.view_positions[i].copy())
            if self.prior_index is not None:
                k = int(self.prior_index[i])
                out["prior_view_positions"] = (torch.from_numpy(self.view_positions[k].copy()) if k >= 0 else
                                               torch.full((self.num_views,), UNKNOWN, dtype=torch.int64))
        return out


class ReportDataModule(pl.LightningDataModule):
    """`data.*` config + the encoder's input size and normalisation -> train/val/test loaders.

    `collator` turns studies into batches (r2gen.data.collate; training needs one holding the LM's ReportTargets,
    without one batches carry images and report strings only); `features`, a FeatureCache
    (r2gen.data.feature_cache), serves a frozen encoder's stored outputs instead of images; `finding_labels`
    (reports -> 1/0 per label) gives each training study the labels `data.finding_loss` learns; with
    `check_dir` (r2gen's cache folder), the set-up check remembers the images it found good there. `splits`: the
    splits read, checked and served (training needs all three; evaluation only the one it scores). `clean`: the
    run's report cleaner (r2gen.data.clean; default: `data.clean`'s). `context`: which parts of a study's context
    each study carries (r2gen.data.context; default none); `shuffle_priors`: a seed to give every study another
    subject's prior (r2gen.data.priors.shuffle_priors), None to keep its own."""

    def __init__(self, cfg, image_size: int, mean, std, augment: bool, collator: Collator | None = None,
                 features=None, finding_labels=None, check_dir: str | Path | None = None,
                 splits: tuple[str, ...] = SPLITS, clean: Callable[[str], str] | None = None,
                 context: Context | None = None, shuffle_priors: int | None = None):
        super().__init__()
        self.context = context or Context()
        self.shuffle_priors = shuffle_priors  # a seed: every study gets another subject's prior (evaluate.py)
        self.cfg, self.check_dir, self.needed = cfg, check_dir, tuple(splits)
        self.image_size, self.mean, self.std, self.augment = image_size, tuple(mean), tuple(std), augment
        self.collator, self.features = collator or Collator(), features
        self.label_reports = finding_labels  # reports -> [[1/0 per label]]: training targets of data.finding_loss
        self.clean = clean or get_cleaner(cfg.clean)
        self.max_pixels = cfg.get("max_image_pixels")  # None: a run from before the key (Pillow's limit)
        self.splits: dict[str, StudyDataset] = {}

    def prepare_data(self) -> None:
        if self.cfg.get("demo"):  # the built-in synthetic set is generated on first use
            prepare_demo(self.cfg.root, self.cfg.demo)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        image_dir = Path(self.cfg.image_dir)
        clean = functools.lru_cache(maxsize=None)(self.clean)  # each report cleaned once, by the check and the packing
        studies = read_studies(self.cfg, self.needed)
        studies = {s: studies[s] if s in self.needed else [] for s in SPLITS}  # the others' images are not checked
        ann = check_studies(studies, image_dir, clean, self.cfg.on_bad_sample, source=self._source(),
                            manifest_dir=self.check_dir, splits=self.needed, max_pixels=self.max_pixels)
        for split in self.needed:
            tf = image_transform(self.image_size, self.mean, self.std, self.augment and split == "train")
            self.splits[split] = StudyDataset(ann[split], image_dir, tf, self.cfg.num_views, clean, self.max_pixels)
            studies = ann[split] if self.shuffle_priors is None else shuffle_priors(ann[split], self.shuffle_priors)
            self.splits[split].attach_context(self.context, studies, clean)
        if self.cfg.group_by_length and "train" in self.splits:
            if self.collator.targets is None:
                raise ValueError("data.group_by_length needs a collator with the LM's ReportTargets")
            train = self.splits["train"]
            train.token_lengths = np.asarray(self.collator.targets.lengths(train.reports), dtype=np.int32)

    def _source(self) -> str:
        """Where the studies come from, for messages and the set-up check's manifest key."""
        files = [self.cfg.get(f"{s}_file") for s in SPLITS]
        if any(files):
            return ", ".join(map(str, files))
        if self.cfg.get("annotation") is not None:
            return str(self.cfg.annotation)
        return ", ".join(map(str, layout_files(self.cfg)))  # an official layout (data.format) read from its files

    def train_reports(self) -> list[str]:
        self.setup()
        return self.splits["train"].reports

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        self.setup()
        n = self.cfg.num_workers
        ds = self.splits[split]
        if shuffle and self.label_reports is not None and ds.finding_labels is None:  # training only: labelled once
            ds.finding_labels = torch.tensor(self.label_reports(ds.reports), dtype=torch.float32)
        if self.features is not None:  # built here, when the encoder's weights are final (after a checkpoint load)
            ds = self.features.dataset(split, ds)
        batching: dict[str, Any] = {"batch_size": batch_size, "shuffle": False}
        loader = DataLoader
        if shuffle:  # training: shuffled as RandomSampler shuffles, and resumable mid-epoch (r2gen.data.resumable)
            loader = ResumableLoader
            batching = {"batch_sampler": SkippingBatchSampler(ResumableRandomSampler(ds), batch_size, False)}
            if self.cfg.group_by_length:
                batching = {"batch_sampler": length_grouped(ds, self.splits[split].token_lengths, batch_size)}
        return loader(ds, **batching, num_workers=n, collate_fn=self.collator, persistent_workers=n > 0,
                      worker_init_fn=worker_init if n > 0 else None, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.cfg.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.cfg.eval_batch_size)
