"""A training DataLoader that a mid-epoch checkpoint can resume exactly: same permutation, consumed batches skipped.

Lightning treats a loader with `state_dict`/`load_state_dict` as resumable: it stores the state in every checkpoint
and hands it back before the resumed epoch's iterator is created. The state is the epoch's shuffle seed and the
number of batches already served. The seed is drawn from torch's global RNG exactly as `RandomSampler` draws it
(one int64 at the start of each pass), so an uninterrupted run shuffles exactly as before; on resume the stored seed
replaces the draw, the permutation is rebuilt and the batches already trained on are skipped as indices, without
loading their images.

Under DDP Lightning swaps the sampler for a `DistributedSampler`, whose permutation follows from the seed and the
epoch alone; skipping works the same way. With `data.num_workers>0` the order is still exact, but the workers'
augmentation RNGs are seeded afresh on resume (torch seeds them when they start), so augmented images differ.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler


def worker_init(worker_id: int) -> None:
    """`worker_init_fn` of every r2gen DataLoader with workers. A terminal's Ctrl-C reaches the whole process group;
    torch's workers would exit on it and the next batch would crash the run, while the main process stops cleanly
    by itself (r2gen.resume): workers ignore SIGINT. Then Lightning's own worker seeding, which any worker_init_fn
    replaces (`seed_everything(workers=True)` sets PL_SEED_WORKERS), so workers draw exactly as before.

    `gc.freeze()` first: a forked worker inherits every Python object of the main process (the model's modules, the
    config, ...), and the first full pass of the cyclic GC would write a header in each, copying their pages into
    the worker (~100 MB each in benchmarks/scale.py). Frozen, the inherited objects are never scanned; freezing
    moves them as one list, touching no object; what the worker allocates itself is collected as usual."""
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class ResumableRandomSampler(RandomSampler):
    """`RandomSampler` that remembers each pass's seed and can replay a pass from a stored seed."""

    seed: int | None = None  # the current pass's seed (None: not drawn yet)
    replay: int | None = None  # set by ResumableLoader for the next pass only: use this seed instead of drawing one

    def __iter__(self) -> Iterator[int]:
        if self.generator is not None:  # an explicit generator: RandomSampler's own behaviour, nothing to remember
            yield from super().__iter__()
            return
        seed = self.replay if self.replay is not None else int(torch.empty((), dtype=torch.int64).random_().item())
        self.seed = seed
        g = torch.Generator()
        g.manual_seed(seed)
        n = len(self.data_source)
        if self.replacement:  # as RandomSampler, drawn 32 at a time
            for _ in range(self.num_samples // 32):
                yield from torch.randint(high=n, size=(32,), dtype=torch.int64, generator=g).tolist()
            yield from torch.randint(high=n, size=(self.num_samples % 32,), dtype=torch.int64, generator=g).tolist()
            return
        for _ in range(self.num_samples // n):
            yield from torch.randperm(n, generator=g).tolist()
        yield from torch.randperm(n, generator=g).tolist()[: self.num_samples % n]


class SkippingBatchSampler(BatchSampler):
    """`BatchSampler` whose next pass starts `skip` batches in (set by ResumableLoader; 0 for a fresh epoch)."""

    skip: int = 0

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(self.batches(), self.skip, None)

    def batches(self) -> Iterator[list[int]]:
        return super().__iter__()


class _Served:
    """The loader's iterator: counts batches served, and lets a stop request in before each fetch."""

    def __init__(self, loader: ResumableLoader, it: Iterator):
        self.loader, self.it = loader, it

    def __iter__(self) -> _Served:
        return self

    def __next__(self) -> Any:
        if self.loader.before_batch is not None:
            self.loader.before_batch()  # r2gen.resume: raises KeyboardInterrupt once a requested stop is saved
        batch = next(self.it)
        self.loader.served += 1
        return batch


class ResumableLoader(DataLoader):
    """Training DataLoader with Lightning's resumable-loader interface (`state_dict` / `load_state_dict`)."""

    served: int = 0  # batches of the current pass served so far (including skipped ones after a resume)
    before_batch: Callable[[], None] | None = None
    _resume: dict[str, Any] | None = None

    def _samplers(self) -> tuple[Any, Any]:
        batch_sampler = self.batch_sampler
        return batch_sampler, getattr(batch_sampler, "sampler", self.sampler)

    def state_dict(self) -> dict[str, Any]:
        _, sampler = self._samplers()
        seed = sampler.seed if isinstance(sampler, ResumableRandomSampler) else None  # DistributedSampler: epoch-seeded
        return {"batches": int(self.served), "seed": seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)  # used by the next pass only

    def __iter__(self) -> _Served:  # type: ignore[override]
        state, self._resume = self._resume or {}, None
        skip, seed = int(state.get("batches", 0)), state.get("seed")
        batch_sampler, sampler = self._samplers()
        if skip and not isinstance(batch_sampler, SkippingBatchSampler):
            raise RuntimeError(f"cannot resume mid-epoch: {type(batch_sampler).__name__} cannot skip batches")
        if isinstance(batch_sampler, SkippingBatchSampler):
            batch_sampler.skip = skip
        if isinstance(sampler, ResumableRandomSampler):
            sampler.seed, sampler.replay = None, seed
        self.served = skip
        return _Served(self, super().__iter__())
