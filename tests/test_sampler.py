"""data.group_by_length: every study once per epoch, batches of similar length, a new order each epoch, and a
DDP shard per rank when Lightning swaps in its DistributedSampler."""

import random

import pytest
from lightning_fabric.utilities.data import _replace_dunder_methods
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from r2gen import build
from r2gen.data.sampler import LengthGroupedBatchSampler, length_grouped

_rng = random.Random(0)
LENGTHS = [_rng.randint(5, 90) for _ in range(1000)]


def spread(batches) -> float:
    """Mean (longest - shortest) report length within a batch: the padding a batch carries."""
    return sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches) / len(batches)


def test_batches_are_grouped_shuffled_and_complete():
    s = length_grouped(range(1000), LENGTHS, 16)
    first = list(s)
    assert sorted(i for b in first for i in b) == list(range(1000)) and len(first) == len(s) == 63
    random_batches = [list(range(1000))[k:k + 16] for k in range(0, 1000, 16)]
    assert spread(first) < 0.25 * spread(random_batches)  # the padding mostly gone
    s.set_epoch(1)
    assert list(s) != first  # still shuffled: another order every epoch
    assert len({len(b) for b in first}) <= 2  # every batch full but the last


def test_lightning_shards_it_across_ranks():
    """What Lightning does under DDP: re-create the batch sampler around a DistributedSampler."""
    shards = []
    for rank in range(2):
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            dl = DataLoader(range(1000), batch_sampler=length_grouped(range(1000), LENGTHS, 16))
        ddp = DistributedSampler(range(1000), num_replicas=2, rank=rank, shuffle=True, seed=3)
        new = _update_dataloader(dl, ddp, mode=RunningStage.TRAINING)
        assert isinstance(new.batch_sampler, LengthGroupedBatchSampler) and new.batch_sampler.sampler is ddp
        shards.append([i for b in new.batch_sampler for i in b])
        assert len(list(new.batch_sampler)) == len(new.batch_sampler) == 32  # same count on every rank
    assert set(shards[0]).isdisjoint(shards[1]) and len(set(shards[0]) | set(shards[1])) == 1000


def test_train_loader_groups_by_report_tokens(make_cfg):
    cfg = make_cfg("data.group_by_length=true", "data.feature_cache=off")
    build.prepare_data(cfg.data)
    model = build.model(cfg)
    dm = build.datamodule(cfg, model)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, LengthGroupedBatchSampler)
    lengths = loader.batch_sampler.lengths
    tok = model.tokenizer  # the report's tokens, cut to max_report_tokens - 1, plus eos
    want = [min(len(tok(r, add_special_tokens=False).input_ids), cfg.data.max_report_tokens - 1) + 1
            for r in dm.splits["train"].reports]
    assert lengths == want and len(set(want)) > 1
    assert not isinstance(dm.val_dataloader().batch_sampler, LengthGroupedBatchSampler)  # eval keeps its order


def test_lengths_must_match_the_dataset():
    with pytest.raises(ValueError, match="data.group_by_length"):
        length_grouped(range(10), [1, 2], 4)
