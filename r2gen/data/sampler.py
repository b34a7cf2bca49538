"""`data.group_by_length=true`: training batches of studies whose reports have similar token counts.

Batches are padded to their longest sequence, and the prompt and image tokens are the same length for every study,
so the only padding left is the report's: grouping similar lengths removes most of it. The order stays random:
the sampler's shuffled indices are cut into groups of `GROUP` batches, each group sorted by length and cut into
batches, and the batches shuffled (as Hugging Face's `LengthGroupedSampler`).

Under DDP, Lightning re-creates this batch sampler around its `DistributedSampler` (it does so for any
`BatchSampler` subclass built in a `*_dataloader` hook), so every rank groups its own shard, every rank gets the
same number of batches, and `set_epoch` reshuffles each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from r2gen.data.resumable import ResumableRandomSampler, SkippingBatchSampler

GROUP = 50  # batches per length-sorted group: big enough to find similar lengths, small enough to stay random


class LengthGroupedBatchSampler(SkippingBatchSampler):  # skips batches on a mid-epoch resume
    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False,
                 lengths: Sequence[int] = (), group: int = GROUP):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths, self.group = list(lengths), group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it on the batch sampler; pass it on to the sampler
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def batches(self) -> Iterator[list[int]]:
        idx = list(self.sampler)
        b, chunk = self.batch_size, self.batch_size * self.group
        batches = []
        for s in range(0, len(idx), chunk):
            part = sorted(idx[s:s + chunk], key=lambda i: self.lengths[i], reverse=True)
            batches += [part[k:k + b] for k in range(0, len(part), b)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches = [x for x in batches if len(x) == b]
        g = torch.Generator().manual_seed(hash(tuple(idx[:64])) & 0xFFFFFFFF)  # follows the sampler's own order
        yield from (batches[i] for i in torch.randperm(len(batches), generator=g).tolist())


def length_grouped(dataset, lengths: Sequence[int], batch_size: int) -> LengthGroupedBatchSampler:
    """A shuffled, length-grouped batch sampler over `dataset` (`lengths[i]`: study i's report tokens)."""
    if len(lengths) != len(dataset):
        raise ValueError(f"data.group_by_length: {len(lengths)} lengths for {len(dataset)} studies")
    return LengthGroupedBatchSampler(ResumableRandomSampler(dataset), batch_size, False, lengths)
