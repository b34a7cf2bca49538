"""Batches: images (or cached features), view masks, and the reports as the LM's target token ids.

The collator holds the tokenizer, so report text becomes tensors in the DataLoader workers and the model's
`forward` receives tensors. A batch keeps `ids` and `reports` (strings) for the evaluation callback, which
records each study's generation beside its reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from r2gen.errors import InputError


class ReportTargets:
    """Report text -> what the LM learns to write: the report's tokens, cut to `max_tokens - 1`, then eos."""

    def __init__(self, tokenizer, max_tokens: int):
        if tokenizer.eos_token_id is None:
            raise InputError("the LM's tokenizer has no eos token; a report needs one to end on")
        self.tokenizer, self.max_tokens, self.eos_id = tokenizer, int(max_tokens), tokenizer.eos_token_id

    def __call__(self, reports: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer(list(reports), add_special_tokens=False).input_ids
        return [r[: self.max_tokens - 1] + [self.eos_id] for r in ids]

    def lengths(self, reports: Sequence[str]) -> list[int]:
        """Target tokens per report (eos included): what `data.group_by_length` groups by."""
        return [len(t) for t in self(reports)]

    def tensors(self, reports: Sequence[str]) -> dict[str, torch.Tensor]:
        """`target_ids` [B, R], right-padded with eos (masked by the lengths), and `target_lengths` [B]."""
        ids = self(reports)
        width = max(len(t) for t in ids)
        return {"target_ids": torch.tensor([t + [self.eos_id] * (width - len(t)) for t in ids], dtype=torch.long),
                "target_lengths": torch.tensor([len(t) for t in ids], dtype=torch.long)}


class Collator:
    """Studies -> a batch. `ids` and `reports` (lists), `images` [B, V, 3, H, W] or, from a feature cache,
    `features` [B, V, L, C], `view_mask` [B, V]; with `targets`, also `target_ids` [B, R] (right-padded with eos,
    which the mask hides) and `target_lengths` [B]; `finding_labels` [B, K] when the studies carry them."""

    def __init__(self, targets: ReportTargets | None = None):
        self.targets = targets

    def __call__(self, batch: list[dict]) -> dict[str, Any]:
        pixels = "features" if "features" in batch[0] else "images"
        out = {
            "ids": [b["id"] for b in batch],
            pixels: torch.stack([b[pixels] for b in batch]),
            "view_mask": torch.stack([b["view_mask"] for b in batch]),
            "reports": [b["report"] for b in batch],
        }
        if "finding_labels" in batch[0]:  # training studies, with data.finding_loss on
            out["finding_labels"] = torch.stack([b["finding_labels"] for b in batch])  # [B, K]
        if self.targets is not None:
            out.update(self.targets.tensors(out["reports"]))
        return out


collate = Collator()  # images (or features) and reports only: what the feature cache's encoder pass reads
