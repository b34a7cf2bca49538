"""The LM's training loss computed where the report is: logits only at the positions that predict a report token.

A decoder-only LM's `forward(labels=...)` computes logits for every position, image tokens and prompt included, as a
`[batch, sequence, vocab]` tensor (and a float32 copy inside its loss): for a 152k vocabulary at batch 8 and ~400
positions, about 2 GB, most of it at positions without a label. transformers 5's causal LMs take `logits_to_keep`;
a boolean `[batch, sequence]` mask keeps exactly the marked positions, packed to `[kept, vocab]`, with the family's
own output processing (tied embeddings, Gemma's soft-capping, Cohere's logit scale) left to the model. Position t
predicts token t+1, so the positions kept are those whose next label is a report token.

`lm.loss_logits` chooses: `report` (this; the default) or `full` (the LM's own loss over all logits, R2GenGPT's
way). `report` falls back to `full`, with one log line, for an LM whose `forward` takes no `logits_to_keep` (a
remote-code family, an encoder-decoder, whose decoder positions all carry labels anyway). The cross-entropy then
runs over `lm.loss_chunk` kept rows at a time, each chunk recomputed in the backward pass instead of kept, so the
float32 copy the loss needs is never more than one chunk. The loss is the mean over the report tokens, as the
LM's own: the same value to float tolerance, and the same gradients.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from r2gen.errors import ConfigError
from r2gen.models.prompt import IGNORE

log = logging.getLogger(__name__)
MODES = ("report", "full")


def takes_logits_to_keep(lm) -> bool:
    """Does the LM's own `forward` (under any PEFT wrapper) take `logits_to_keep`?"""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature Python can read
        return False


def loss_path(lm, mode: str, encoder_decoder: bool) -> str:
    """`report` (logits at the report positions only) or `full`: which path `lm.loss_logits=mode` takes for `lm`."""
    if mode not in MODES:
        raise ConfigError(f"lm.loss_logits={mode!r}: choose report (logits only where the report is) or full (the "
                          f"LM's own loss over every position)")
    if mode == "report" and (encoder_decoder or not takes_logits_to_keep(lm)):
        return "full"
    return mode


def chunk_size(value) -> int:
    """`lm.loss_chunk`, checked: report tokens per cross-entropy chunk, 0 for one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"lm.loss_chunk={value!r}: the report tokens the cross-entropy takes at a time, a "
                          f"non-negative integer (e.g. 1024; 0: all at once)")
    return value


def describe(path: str, mode: str) -> str:
    """One line saying which path the loss takes (verify, the training log)."""
    if path == "report":
        return "report positions only (logits_to_keep, chunked cross-entropy)"
    if mode == "report":
        return "full logits (the LM's forward takes no logits_to_keep)"
    return "full logits (lm.loss_logits=full)"


def report_loss(lm, inputs: dict[str, torch.Tensor], path: str, chunk: int) -> torch.Tensor:
    """The mean next-token cross-entropy of the report tokens (`inputs["labels"]`, IGNORE elsewhere), by `path`."""
    if path == "full":
        return lm(**inputs).loss
    labels = inputs["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE  # position t predicts token t+1
    targets = labels[:, 1:][keep[:, :-1]]
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    logits = lm(**rest, logits_to_keep=keep, use_cache=False).logits
    if logits.shape[:-1] != targets.shape:  # a forward that took the mask but did not pack by it
        raise RuntimeError(f"the LM returned logits of shape {tuple(logits.shape)} for logits_to_keep with "
                           f"{targets.numel()} kept positions; set lm.loss_logits=full")
    return chunked_cross_entropy(logits, targets, chunk)


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean cross-entropy of `logits` [N, V] against `targets` [N], in float32, `chunk` rows at a time (0: all at
    once); each chunk is recomputed in backward (torch.utils.checkpoint), so at most one chunk's float32 copy and
    softmax are alive."""
    n = targets.numel()
    if chunk <= 0 or n <= chunk or not torch.is_grad_enabled():
        return F.cross_entropy(logits.float(), targets, reduction="sum") / max(n, 1)
    total = logits.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        total = total + checkpoint(_summed_ce, logits[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
    return total / n


def _summed_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum")
