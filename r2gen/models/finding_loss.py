"""The auxiliary finding loss (`data.finding_loss`): the labeler's findings of each training report, classified from
the mean image token, so the projection learns what the report will have to say.

Its pieces: `finding_labels` (which findings, from `data.labeler`; the head's size), `FindingHead` (the classifier
and its BCE), the training studies' 1/0 targets (`r2gen.scoring.policy.Scoring.label_matrix`, handed to the
DataModule by `r2gen.build.datamodule`) and the weight `data.finding_loss` in `R2GenModule.losses`. Generation never
uses it: a checkpoint's head is left out when a model is rebuilt without it (`r2gen.build.load_weights`).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from r2gen.errors import ConfigError
from r2gen.scoring.policy import label_names


def finding_labels(cfg: DictConfig) -> tuple[str, ...]:
    """The findings the head classifies: the labeler's labels with `data.finding_loss` on, none with it off."""
    weight = cfg.data.finding_loss
    if not weight:
        return ()
    names = label_names(cfg.data.labeler)
    if not names or weight < 0:
        raise ConfigError(f"data.finding_loss={weight} needs a finding labeler (data.labeler=demo|chexpert, now "
                          f"{cfg.data.labeler}) and a weight >= 0; or set data.finding_loss=0")
    return names


class FindingHead(nn.Linear):
    """Image tokens [B, T, C] -> one logit per finding, from the mean over the real views' tokens."""

    def loss(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE of the findings (`labels` [B, K], 1/0) given the image tokens and their mask [B, T]."""
        m = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp(min=1)  # [B, C]: the mean over real views' tokens
        logits = self(pooled.to(self.weight.dtype))
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
