"""Studies from an R2Gen `annotation.json` as batches of multi-view images and cleaned reports.

`annotation.json`: `{"train"|"val"|"test": [{"id", "report", "image_path": [...], ...}]}`, image paths
relative to `data.image_dir`. A study's first `data.num_views` images are used; a study with fewer views gets
zero images and a view mask, so the encoder ignores them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from r2gen.data.clean import get_cleaner

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def read_annotation(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path} (set data.annotation, or data.root for its folder)")
    with open(path) as f:
        ann = json.load(f)
    missing = [s for s in SPLITS if s not in ann]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} split; expected keys {SPLITS} (R2Gen annotation layout)")
    for split in SPLITS:
        for i, e in enumerate(ann[split]):
            for key in ("id", "report", "image_path"):
                if key not in e:
                    raise ValueError(f"{path}: {split}[{i}] has no {key!r} (keys: {sorted(e)})")
    return {s: ann[s] for s in SPLITS}


def image_transform(size: int, mean, std, augment: bool) -> T.Compose:
    """Resize to size x size, optionally a small affine jitter (never a horizontal flip: it swaps left and right)."""
    steps: list = [T.Resize((size, size), antialias=True)]
    if augment:
        steps.append(T.RandomAffine(degrees=5, translate=(0.03, 0.03), scale=(0.95, 1.05)))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class StudyDataset(Dataset):
    def __init__(self, entries: list[dict], image_dir: Path, transform, num_views: int, clean):
        self.entries, self.image_dir, self.transform, self.num_views = entries, image_dir, transform, num_views
        self.reports = [clean(e["report"]) for e in entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.entries[i]
        views = [self.transform(Image.open(self.image_dir / p).convert("RGB")) for p in e["image_path"][: self.num_views]]
        images = torch.zeros(self.num_views, *views[0].shape)
        images[: len(views)] = torch.stack(views)
        mask = torch.arange(self.num_views) < len(views)
        return {"id": str(e["id"]), "images": images, "view_mask": mask, "report": self.reports[i]}


def collate(batch: list[dict]) -> dict[str, Any]:
    return {
        "ids": [b["id"] for b in batch],
        "images": torch.stack([b["images"] for b in batch]),  # [B, V, 3, H, W]
        "view_mask": torch.stack([b["view_mask"] for b in batch]),  # [B, V]
        "reports": [b["report"] for b in batch],
    }


class ReportDataModule(pl.LightningDataModule):
    """`data.*` config + the encoder's input size and normalisation -> train/val/test loaders."""

    def __init__(self, cfg, image_size: int, mean, std, augment: bool):
        super().__init__()
        self.cfg = cfg
        self.image_size, self.mean, self.std, self.augment = image_size, tuple(mean), tuple(std), augment
        self.clean = get_cleaner(cfg.clean)
        self.splits: dict[str, StudyDataset] = {}

    def prepare_data(self) -> None:
        if self.cfg.get("demo"):  # the built-in synthetic set is generated on first use
            from r2gen.data.synthetic import generate_demo

            generate_demo(self.cfg.root, **self.cfg.demo)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        ann = read_annotation(self.cfg.annotation)
        image_dir = Path(self.cfg.image_dir)
        self._check_images(ann, image_dir)
        for split in SPLITS:
            entries = [e for e in ann[split] if e["report"].strip()]
            if len(entries) < len(ann[split]):
                log.warning("%s: dropped %d studies with an empty report", split, len(ann[split]) - len(entries))
            tf = image_transform(self.image_size, self.mean, self.std, self.augment and split == "train")
            self.splits[split] = StudyDataset(entries, image_dir, tf, self.cfg.num_views, self.clean)

    @staticmethod
    def _check_images(ann, image_dir: Path) -> None:
        """Fail at setup, not in epoch 3: every referenced image must exist."""
        missing = [(s, e["id"], p) for s in SPLITS for e in ann[s] for p in e["image_path"]
                   if not (image_dir / p).is_file()]
        if not ann["train"] or not ann["val"] or not ann["test"]:
            empty = [s for s in SPLITS if not ann[s]]
            raise ValueError(f"data split(s) {empty} are empty in {image_dir.parent}; each of train/val/test needs studies")
        if missing:
            first = "; ".join(f"{s} id {i}: {image_dir / p}" for s, i, p in missing[:5])
            raise FileNotFoundError(f"{len(missing)} image(s) not found under data.image_dir={image_dir}: {first}")

    def train_reports(self) -> list[str]:
        self.setup()
        return self.splits["train"].reports

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        self.setup()
        n = self.cfg.num_workers
        return DataLoader(self.splits[split], batch_size=batch_size, shuffle=shuffle, num_workers=n,
                          collate_fn=collate, persistent_workers=n > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.cfg.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.cfg.eval_batch_size)
