"""`Evaluation`: the Lightning callback that turns a validation or test loop's generations into scores.

The module only generates (`validation_step` / `test_step` return a batch's reports). This callback records each
study's generation beside its reference, gathers every rank's records into one corpus (dropping the studies the
distributed sampler repeats to even out shards), scores it once on rank 0 with the run's `Scoring`, shares the
scores with every rank and logs them as `val/<metric>` or `test/<metric>`, which the best-checkpoint callback
monitors. After a test loop it can also write the results files (`write_test_results`), saying how many of
the split's studies were scored (r2gen.scoring.coverage). `train()` and
`evaluate()` both attach it, so validation, the test after training and `evaluate.py` score alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from r2gen.scoring.coverage import Coverage
from r2gen.scoring.policy import Scoring, score_families
from r2gen.scoring.results import with_image_paths, write_results

PROGRESS_BAR = ("score", "Bleu_4", "CIDEr")


class Evaluation(pl.Callback):
    def __init__(self, scoring: Scoring):
        self.scoring = scoring
        self.records: list[dict[str, str]] = []  # the last corpus: gathered, references as scored
        self.scores: dict[str, float] = {}  # its scores (every rank); empty after a sanity check
        self.families: list = []  # its scores as per-study statistics (rank 0), for the test's intervals
        self._batches: list[dict[str, str]] = []
        self._results: tuple[Path, dict[str, Any], Any] | None = None

    def write_test_results(self, out_dir: str | Path, meta: dict[str, Any], dataset=None) -> None:
        """After the next test loop, write metrics.json, predictions.jsonl and report.html into `out_dir` (rank 0);
        `dataset` (a StudyDataset) gives the viewer each study's images."""
        self._results = (Path(out_dir), meta, dataset)

    # --- recording -----------------------------------------------------------------------------------
    def _start(self, trainer, pl_module) -> None:
        self._batches = []

    def _record(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batches += [{"id": i, "prediction": p, "reference": r}
                          for i, p, r in zip(batch["ids"], outputs, batch["reports"], strict=True)]

    on_validation_epoch_start = on_test_epoch_start = _start
    on_validation_batch_end = on_test_batch_end = _record

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._score(trainer, pl_module, "test")
        if self._results is not None and trainer.is_global_zero and self.scores:
            out, meta, dataset = self._results
            coverage = None
            if dataset is not None:  # what of the split was scored (trainer.limit_test_batches can cut it short)
                coverage = Coverage.of(str(meta.get("split", "")), [str(e["id"]) for e in dataset.entries],
                                       [str(r["id"]) for r in self.records], "not generated in the test loop")
                meta = {**meta, "coverage": coverage.meta()}
            records = with_image_paths(self.records, dataset) if dataset is not None else self.records
            write_results(out, records, self.scores, meta, self.scoring, self.families)
            if coverage is not None and coverage.summary():
                print(coverage.summary() + "\n")

    # --- scoring -------------------------------------------------------------------------------------
    def _score(self, trainer, pl_module, split: str) -> None:
        """Gather every rank's records into one corpus, score it once on rank 0, share the scores, log them."""
        records = self._batches
        distributed = trainer.world_size > 1 and torch.distributed.is_initialized()
        if distributed:
            shards: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shards, records)
            seen: dict[str, dict] = {}
            for r in (r for shard in shards for r in shard):  # the distributed sampler repeats studies to even out shards
                seen.setdefault(r["id"], r)
            records = list(seen.values())
        self.records = self.scoring.prepare(records)  # references as scored (eval.references)
        scores: list[dict[str, float] | None] = [None]
        if trainer.is_global_zero and self.records and not trainer.sanity_checking:
            # per-study statistics for the test's intervals; validation needs only the scores
            scores[0], self.families = score_families(self.records, self.scoring, nlg_families=split == "test")
        if distributed:
            torch.distributed.broadcast_object_list(scores, src=0)
        self.scores = scores[0] or {}
        for k, v in self.scores.items():  # none after a sanity check: scoring untrained output tells nothing
            pl_module.log(f"{split}/{k}", v, prog_bar=k in PROGRESS_BAR, sync_dist=False)
