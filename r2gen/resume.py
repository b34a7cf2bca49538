"""Exact resume: a run stopped by `kill -9`, Ctrl-C or a crash, resumed with `ckpt_path=<run>/checkpoints/last.ckpt`,
ends as the uninterrupted run would have, and its logs continue rather than repeat.

What Lightning restores by itself (weights, optimizer, LR schedule, loop counters, callback states) is not enough:
the training shuffle, the image augmentation and dropout all draw from the global RNGs (python, numpy, torch, CUDA),
so `ResumeState` stores them in every checkpoint and restores them in `on_train_start`. Hook order relied on
(Lightning 2.6: `Trainer._run`, `_FitLoop`, `_TrainingEpochLoop`):
  1. callbacks' `load_state_dict` (the saved RNG states are kept for later);
  2. `configure_optimizers`, which asks for `trainer.estimated_stepping_batches`, which runs `FitLoop.setup_data`:
     the train loader and its iterator are made here, the iterator drawing one base seed from torch's RNG, before
     the loops are restored, so Lightning never hands the loader its saved state (its later `setup_data` is a no-op);
  3. `on_fit_start`; the loops' state is restored; the sanity check (inside `isolate_rng`: draws nothing);
  4. `on_train_start`: `ResumeState` hands the loader its saved state, makes the iterator again and restores the
     RNGs; then `on_train_epoch_start` (only if a new epoch starts) and the first batch fetch.
An uninterrupted run draws nothing between a save and its next iterator creation or batch fetch, so:
  * mid-epoch checkpoint (`every_n_train_steps`, Ctrl-C): the iterator continues the epoch (the loader,
    `r2gen.data.resumable.ResumableLoader`, replays the epoch's permutation and skips the batches already trained
    on); the uninterrupted run made no iterator there, so the RNG is restored after the iterator is made again;
  * epoch-end checkpoint (`last.ckpt` after each epoch): the iterator serves the next epoch, so the RNG is restored
    first and the iterator made from it, drawing its base seed exactly as the uninterrupted run did at that epoch.
The private Lightning attributes used (`fit_loop._data_fetcher`, `_load_combined_loader_states`) are checked by the
tests in tests/test_resume.py, which compare a resumed run with an uninterrupted one bit for bit.

Ctrl-C while training does not stop mid-step: the first press asks for a stop, the current step finishes, `last.ckpt`
is written at that batch boundary (or by the epoch-end checkpoint if the epoch was ending), the step's logs are
flushed, and the run ends before fetching the next batch, with the command to resume. A second press stops at once
without saving (the previous `last.ckpt` stays).

`continue_logs` makes `csv/metrics.csv` and TensorBoard continue from the checkpoint: rows logged after it by the
stopped run are dropped, rows before it are kept.
"""

from __future__ import annotations

import csv
import logging
import random
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from r2gen.data.resumable import ResumableLoader

log = logging.getLogger(__name__)
EXIT_INTERRUPTED = 130  # what a shell reports for a program stopped by Ctrl-C


# --- RNG states as plain tensors and numbers (checkpoints are loaded with weights_only=True) ---------------------
def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device (each rank stores its own)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- the callback --------------------------------------------------------------------------------------------------
class ResumeState(Checkpoint):
    """RNG states in every checkpoint, restored on resume; Ctrl-C as a clean stop with `last.ckpt` written.

    A `Checkpoint` so that Lightning orders it with (and, placed after them in the config, after) the
    `ModelCheckpoint` callbacks: its epoch-end hook must see their saves done.
    """

    def __init__(self, every_n_train_steps: int = 0) -> None:
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self._saved_step = -1  # global step of this callback's latest save
        self._restore: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None
        self._requested = False  # Ctrl-C pressed (this process)
        self._stop = False  # last.ckpt is written: stop before the next batch
        self.stopped = False  # the run ended on Ctrl-C (train.py: exit code 130, not Lightning's 1)
        self._previous_handler: Any = None

    # state: the global RNGs, one entry per rank
    def state_dict(self) -> dict[str, Any]:
        mine = rng_state()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)  # every rank saves collectively
            return {"rng": ranks}
        return {"rng": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if trainer.callbacks[-1] is not self:  # after every ModelCheckpoint (see the class docstring); a new list,
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not self] + [self]  # as this hook iterates

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = _train_loaders(trainer)
        self._resume_data_and_rng(trainer, loaders, (self._restore or {}).get("rng") or [])
        self._restore = None
        for loader in loaders:
            loader.before_batch = self._before_batch
        self._install_handler()

    @staticmethod
    def _resume_data_and_rng(trainer: pl.Trainer, loaders: list[ResumableLoader], ranks: list[dict]) -> None:
        """Hand the train loader its saved state, make its iterator again and restore the RNGs, in the order an
        uninterrupted run drew from them (see the module docstring).

        Lightning built the train iterator in `FitLoop.setup_data` before the checkpoint was restored (our
        `configure_optimizers` asks for `trainer.estimated_stepping_batches`, which sets the data up early), so it
        neither handed the loader its saved state nor drew the iterator's base seed from the restored RNG."""
        fit_loop = trainer.fit_loop
        fetcher = fit_loop._data_fetcher
        if loaders and fit_loop.restarting and fit_loop._combined_loader_states_to_load:
            fit_loop._load_combined_loader_states()  # the loop restarts inside the checkpoint's epoch: the loader
            if fetcher is not None:  # replays it, skipping what was served
                iter(fetcher)
        loaded = any(dl.served > 0 for dl in loaders)  # (also when Lightning handed the state over itself)
        if not ranks:  # a fresh run (or a checkpoint without RNG states): nothing else to restore
            return
        set_rng_state(ranks[trainer.global_rank] if len(ranks) == trainer.world_size else ranks[0])
        if not loaded and loaders and fetcher is not None:
            iter(fetcher)  # this iterator serves the next epoch: its base seed comes from the restored RNG

    # Ctrl-C
    def _install_handler(self) -> None:
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            self._previous_handler = None

    def _uninstall_handler(self) -> None:
        if self._previous_handler is not None:
            try:
                signal.signal(signal.SIGINT, self._previous_handler)
            except ValueError:
                pass
            self._previous_handler = None

    def _on_sigint(self, signum, frame) -> None:
        if self._requested:  # a second Ctrl-C: stop at once
            self._uninstall_handler()
            raise KeyboardInterrupt
        self._requested = True
        if rank_zero_only.rank == 0:
            print("\nCtrl-C: finishing this training step, then writing last.ckpt and stopping "
                  "(Ctrl-C again stops at once, without saving)", file=sys.stderr, flush=True)

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        if trainer.world_size > 1:  # every rank stops at the same batch, or the others would hang
            return trainer.strategy.reduce_boolean_decision(self._requested, all=False)
        return self._requested

    def _before_batch(self) -> None:
        if self._stop:
            raise KeyboardInterrupt("stop requested (Ctrl-C); last.ckpt is written")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch-end checkpoint follows (after validation); a stop waits for it
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # gradients still accumulating: a checkpoint here would lose them
        n = self.every_n_train_steps
        if n > 0 and trainer.global_step % n == 0:
            self._save_last(trainer)
        if not self._stop and self._stop_requested(trainer):
            self._save_last(trainer)
            self._stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stop or not self._stop_requested(trainer):
            return
        self._save_last(trainer)  # a no-op when the last checkpoint callback has just saved this step
        self._stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._uninstall_handler()
        if self._stop:  # the stop came with the last epoch: end as a stop (no test run), not as a finished fit
            raise KeyboardInterrupt("stop requested (Ctrl-C); last.ckpt is written")

    def _save_last(self, trainer: pl.Trainer) -> None:
        """Write last.ckpt now, unless this step is saved already (by us, or by the last checkpoint callback)."""
        cb = last_checkpoint_callback(trainer)
        if cb is None or trainer.fast_dev_run or self._saved_step == trainer.global_step:
            return
        if getattr(cb, "_last_global_step_saved", None) == trainer.global_step and Path(cb.last_model_path or "").is_file():
            return
        trainer.save_checkpoint(last_checkpoint_path(cb), weights_only=False)
        self._saved_step = trainer.global_step

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            self._uninstall_handler()
            return
        self._previous_handler = None  # Lightning now ignores SIGINT until it exits: leave that in place
        self.stopped = True
        cb = last_checkpoint_callback(trainer)
        path = last_checkpoint_path(cb) if cb is not None else None
        run = Path(trainer.default_root_dir)
        if self._stop and path is not None:
            _say(f"Stopped by Ctrl-C at epoch {trainer.current_epoch}, global step {trainer.global_step}; saved {path}. "
                 f"Resume exactly where it stopped with the same overrides plus: ckpt_path={path} hydra.run.dir={run}")
        elif path is not None and path.is_file():
            _say(f"Stopped at once by Ctrl-C: nothing was saved now; {path} holds the last saved state. Resume with "
                 f"the same overrides plus: ckpt_path={path} hydra.run.dir={run}")
        else:
            _say("Stopped by Ctrl-C before any checkpoint was written; nothing to resume from.")


@rank_zero_only
def _say(message: str) -> None:
    log.warning(message)  # Hydra's console handler shows it; without Hydra, logging's last resort prints it


def _train_loaders(trainer: pl.Trainer) -> list[ResumableLoader]:
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return [dl for dl in loaders if isinstance(dl, ResumableLoader)]


def last_checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The callback that writes last.ckpt: the ModelCheckpoint without a monitor (conf/callbacks: last_checkpoint)."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is None:
            return cb
    return None


def last_checkpoint_path(cb: ModelCheckpoint) -> Path:
    return Path(cb.dirpath or ".") / f"{cb.filename or 'last'}{cb.FILE_EXTENSION}"


def find(trainer: pl.Trainer) -> ResumeState | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, ResumeState)), None)


# --- logs ------------------------------------------------------------------------------------------------------------
def continue_logs(trainer: pl.Trainer, step: int, ckpt_path: str | Path, out_dir: str | Path) -> None:
    """Before `trainer.fit(ckpt_path=...)`: make the loggers continue from the checkpoint (its `global_step`).

    CSV: Lightning's CSVLogger deletes an existing metrics.csv when it starts. The rows logged before the checkpoint
    (logger step < the checkpoint's global step) are kept, from this run folder's metrics.csv or, resuming into a new
    folder, from the checkpoint's run folder; rows the stopped run logged after the checkpoint are dropped.
    TensorBoard: the writer starts with `purge_step` = the checkpoint's global step, so TensorBoard hides the stopped
    run's events from that step on.
    """
    out_dir = Path(out_dir).resolve()
    ckpt_run = Path(ckpt_path).resolve().parent.parent  # <run>/checkpoints/last.ckpt
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger._kwargs["purge_step"] = step  # SummaryWriter(purge_step=...): created lazily, with these kwargs
        elif isinstance(logger, CSVLogger) and trainer.is_global_zero:
            _continue_csv(logger, step, out_dir, ckpt_run)


def _continue_csv(logger: CSVLogger, step: int, out_dir: Path, ckpt_run: Path) -> None:
    target = Path(logger.log_dir).resolve() / "metrics.csv"
    source = target
    if not target.is_file() and target.is_relative_to(out_dir):
        source = ckpt_run / target.relative_to(out_dir)
    header: list[str] = []
    rows: list[list[str]] = []
    if source.is_file():
        with open(source, newline="") as f:
            table = list(csv.reader(f))
        header = table[0] if table else []
        at = header.index("step") if "step" in header else None
        # a row cut short by a kill has fewer fields: dropped with the rows logged after the checkpoint
        rows = [r for r in table[1:] if len(r) == len(header) and at is not None and _step(r[at]) < step]
    with warnings.catch_warnings():  # "Previous log files in this directory will be deleted": we put them back
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # created now: it deletes the old metrics.csv
    if not header:
        return
    with open(target, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    writer.metrics_keys = header  # appended rows use this header; a new key rewrites the file with all rows


def _step(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")
