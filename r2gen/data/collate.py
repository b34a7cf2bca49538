"""Batches: images (or cached features), view masks, and the reports as the LM's target token ids.

The collator holds the LM's `ReportTargets` (r2gen.models.prompt, with the rest of the report text), so report
text becomes tensors in the DataLoader workers and the model's `forward` receives tensors. A batch keeps `ids` and `reports` (strings) for the evaluation callback, which
records each study's generation beside its reference.
"""

from __future__ import annotations

from typing import Any

import torch

from r2gen.models.prompt import ContextTokens, ReportTargets


class Collator:
    """Studies -> a batch. `ids` and `reports` (lists), `images` [B, V, 3, H, W] or, from a feature cache,
    `features` [B, V, L, C], `view_mask` [B, V]; with `targets`, also `target_ids` [B, R] (right-padded with eos,
    which the mask hides) and `target_lengths` [B]; `finding_labels` [B, K] when the studies carry them; with
    `context` and studies that carry their context text (r2gen.data.context), `context_ids` [B, C] and
    `context_lengths` [B]; with context.prior_images, `prior_images` (or `prior_features`) and `prior_view_mask`
    [B, V], all False for a study without a prior; with context.view_positions, `view_positions` [B, V] (long ids
    into r2gen.data.view_positions.VIEW_POSITIONS) and, with prior images, `prior_view_positions` [B, V]."""

    def __init__(self, targets: ReportTargets | None = None, context: ContextTokens | None = None):
        self.targets, self.context = targets, context

    def __call__(self, batch: list[dict]) -> dict[str, Any]:
        pixels = "features" if "features" in batch[0] else "images"
        out = {
            "ids": [b["id"] for b in batch],
            pixels: torch.stack([b[pixels] for b in batch]),
            "view_mask": torch.stack([b["view_mask"] for b in batch]),
            "reports": [b["report"] for b in batch],
        }
        if "prior_view_mask" in batch[0]:  # context.prior_images: the prior study's images (or cached features)
            out[f"prior_{pixels}"] = torch.stack([b[f"prior_{pixels}"] for b in batch])
            out["prior_view_mask"] = torch.stack([b["prior_view_mask"] for b in batch])
        for key in ("view_positions", "prior_view_positions"):  # context.view_positions
            if key in batch[0]:
                out[key] = torch.stack([b[key] for b in batch])  # [B, V] long
        if "finding_labels" in batch[0]:  # training studies, with data.finding_loss on
            out["finding_labels"] = torch.stack([b["finding_labels"] for b in batch])  # [B, K]
        if self.targets is not None:
            out.update(self.targets.tensors(out["reports"]))
        if self.context is not None and "context" in batch[0]:
            out.update(self.context.tensors([b["context"] for b in batch]))
        return out


collate = Collator()  # images (or features) and reports only: what the feature cache's encoder pass reads
