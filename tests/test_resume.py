"""Never lose a run: kill -9, Ctrl-C and a crash between checkpoints resume to exactly the uninterrupted run (same
weights bit for bit, same scores, same metrics.csv); a full disk keeps the previous checkpoint; a checkpoint whose
pickle would run code is refused."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from r2gen import build
from r2gen.checkpoint_io import AtomicCheckpointIO
from r2gen.errors import InputError, StorageError
from r2gen.train import train

from .helpers.cli import cli_env, run_cli
from .helpers.config import CONTEXT, SMALL, compose_cfg
from .helpers.paths import ROOT

# 6 training steps per epoch (24 studies, batches of 4), 4 epochs; augmentation on (align=deep), so the shuffle, the
# augmentation and the data order all have to be restored for the weights to match.
RESUME = ["data.batch_size=4", "trainer.max_epochs=4", "test_after_fit=false"]
STEPS_PER_EPOCH = 6


def cli_args(extra: list[str], tensorboard: bool = False) -> list[str]:
    """The overrides of these runs (SMALL drops the TensorBoard logger; `tensorboard=True` keeps it)."""
    return [a for a in SMALL if not (tensorboard and a == "~logger.tensorboard")] + RESUME + extra


_baselines: dict[tuple, Path] = {}


@pytest.fixture
def uninterrupted(tmp_path_factory, cache_dir):
    """The uninterrupted run of a config (in-process; one per config for the whole module)."""

    def get(*extra: str, tensorboard: bool = False) -> Path:
        key = (extra, tensorboard)
        if key not in _baselines:
            out = tmp_path_factory.mktemp("uninterrupted")
            train(compose_cfg("config", cli_args(list(extra), tensorboard), out, cache_dir))
            _baselines[key] = out
        return _baselines[key]

    return get


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # everything r2gen saves is plain data


def metrics_rows(run: Path) -> list[list[str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


def assert_same_run(expected: Path, got: Path) -> None:
    a, b = load(expected / "checkpoints" / "last.ckpt"), load(got / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert set(a["state_dict"]) == set(b["state_dict"])
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{len(different)} weight tensors differ, e.g. {different[:3]}"
    rows_a, rows_b = metrics_rows(expected), metrics_rows(got)
    header = rows_a[0]
    val = [header.index(k) for k in header if k.startswith("val/")]
    last_val = [[r for r in rows if any(r[i] for i in val)][-1] for rows in (rows_a[1:], rows_b[1:])]
    assert last_val[0] == last_val[1]  # the final validation scores
    assert rows_a == rows_b  # every row: the kept ones, none repeated, the resumed ones
    assert_no_metric_logged_twice(rows_b)
    best_a = next(v["best_model_score"] for k, v in a["callbacks"].items() if "val/score" in k)
    best_b = next(v["best_model_score"] for k, v in b["callbacks"].items() if "val/score" in k)
    assert torch.equal(best_a, best_b)


def assert_no_metric_logged_twice(rows: list[list[str]]) -> None:
    header, body = rows[0], rows[1:]
    step = header.index("step")
    for i, name in enumerate(header):
        if name in ("epoch", "step"):
            continue
        steps = [r[step] for r in body if r[i]]
        assert len(steps) == len(set(steps)), f"{name} logged twice at one step"


def no_temp_files(run: Path) -> bool:
    return not list((run / "checkpoints").glob(".*.tmp"))


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended (code {proc.returncode}) before the point to interrupt it")
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out waiting for training to reach the point to interrupt it")
        time.sleep(0.01)


def loss_logged_in_epoch(run: Path, epoch: int):
    """A condition: metrics.csv holds a training loss of `epoch` (that epoch has started)."""

    def check() -> bool:
        try:
            rows = metrics_rows(run)
        except FileNotFoundError:
            return False
        if not rows or "epoch" not in rows[0] or "train/loss" not in rows[0]:
            return False
        e, loss = rows[0].index("epoch"), rows[0].index("train/loss")
        return any(len(r) == len(rows[0]) and r[e] == str(epoch) and r[loss] for r in rows[1:])

    return check


def start_train(args: list[str], cache_dir: Path, log: Path) -> subprocess.Popen:
    """train.py in its own process group, so a signal reaches it and its children as a terminal's would."""
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=cli_env(cache_dir), stdout=out,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


# --- a real run, really killed ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_in_third_epoch_then_resume_equals_uninterrupted(tmp_path, cache_dir, uninterrupted):
    expected = uninterrupted(tensorboard=True)
    run = tmp_path / "run"
    args = cli_args([f"hydra.run.dir={run}"], tensorboard=True)
    proc = start_train(args, cache_dir, tmp_path / "killed.log")
    try:
        wait_for(loss_logged_in_epoch(run, 2), proc)  # the third epoch has started
        signal_group(proc, signal.SIGKILL)  # kill -9: no handler, no flush, no cleanup
    finally:
        signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load(run / "checkpoints" / "last.ckpt")
    assert killed_at["epoch"] == 1 and killed_at["global_step"] == 2 * STEPS_PER_EPOCH  # killed inside epoch 2
    assert no_temp_files(run)

    r = run_cli("train.py", *args, f"ckpt_path={run}/checkpoints/last.ckpt", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(expected, run)
    # TensorBoard: the killed run's events after the checkpoint are purged, so every step shows once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), purge_orphaned_data=True)
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(4 * STEPS_PER_EPOCH))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_writes_last_ckpt_and_resumes_exactly(tmp_path, cache_dir, uninterrupted):
    expected = uninterrupted()
    run = tmp_path / "run"
    args = cli_args([f"hydra.run.dir={run}"])
    proc = start_train(args, cache_dir, tmp_path / "interrupted.log")
    try:
        wait_for(loss_logged_in_epoch(run, 1), proc)
        signal_group(proc, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group (the METEOR JVM too)
        proc.wait(timeout=120)
    finally:
        signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)
    output = (tmp_path / "interrupted.log").read_text()
    assert proc.returncode == 130, output[-3000:]  # a requested stop, not a crash
    assert "Traceback" not in output
    assert "Stopped by Ctrl-C" in output and f"ckpt_path={run}/checkpoints/last.ckpt" in output
    stopped_at = load(run / "checkpoints" / "last.ckpt")  # written at the end of the step Ctrl-C interrupted
    assert STEPS_PER_EPOCH < stopped_at["global_step"] < 2 * STEPS_PER_EPOCH  # inside epoch 1: a mid-epoch checkpoint
    assert stopped_at["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] > 0
    assert no_temp_files(run)

    r = run_cli("train.py", *args, f"ckpt_path={run}/checkpoints/last.ckpt", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(expected, run)


@pytest.mark.slow
def test_ctrl_c_reaches_neither_the_meteor_jvm_nor_loader_workers():
    """A terminal sends Ctrl-C to the whole process group; the JVM that scores METEOR and the DataLoader workers
    ignore it (the main process stops cleanly by itself), so validation and data loading keep working."""
    from torch.utils.data import DataLoader

    from r2gen.data.resumable import worker_init
    from r2gen.scoring import nlg

    meteor = nlg._SharedMeteor()
    try:
        os.kill(meteor.meteor_p.pid, signal.SIGINT)
        time.sleep(1.0)
        assert meteor.meteor_p.poll() is None
        assert meteor.compute_score({1: ["small left effusion"]}, {1: ["small left effusion"]})[0] > 0.9
    finally:
        meteor.close()
    loader = DataLoader(_SigintDisposition(), num_workers=1, worker_init_fn=worker_init)
    assert [bool(x) for x in loader] == [True]


class _SigintDisposition(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


# --- step checkpoints: a crash mid-epoch resumes mid-epoch -------------------------------------------------------------
class Crash(pl.Callback):
    """Dies at the end of a given step, after that step's lr row is logged and before its loss row and any save."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "group_by_length"])
def test_step_checkpoint_resumes_mid_epoch_exactly(tmp_path, cache_dir, uninterrupted, monkeypatch, recwarn, grouped):
    extra = ["data.group_by_length=true"] if grouped else []
    expected = uninterrupted(*extra)
    run = tmp_path / "run"
    steps = ["callbacks.resume.every_n_train_steps=2"]
    real_trainer = build.trainer

    def crashing_trainer(cfg, *args, **kwargs):
        trainer = real_trainer(cfg, *args, **kwargs)
        trainer.callbacks.insert(0, Crash(STEPS_PER_EPOCH + 3))  # epoch 1, its third batch
        return trainer

    monkeypatch.setattr(build, "trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_cfg("config", cli_args(steps + extra), run, cache_dir))
    monkeypatch.setattr(build, "trainer", real_trainer)

    saved = load(run / "checkpoints" / "last.ckpt")  # the step checkpoint: 2 of the epoch's 6 batches done
    assert saved["global_step"] == STEPS_PER_EPOCH + 2
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] < STEPS_PER_EPOCH
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 2

    train(compose_cfg("config", cli_args(steps + extra + [f"ckpt_path={run}/checkpoints/last.ckpt"]), run, cache_dir))
    assert_same_run(expected, run)
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


@pytest.mark.slow
def test_a_context_run_resumes_mid_epoch_exactly(tmp_path, cache_dir, uninterrupted, monkeypatch):
    """The longitudinal demo with every context part on: killed mid-epoch, resumed from the step checkpoint, it
    ends with the uninterrupted run's weights (the study and view markers included) and logged losses."""
    expected = uninterrupted(*CONTEXT)
    run = tmp_path / "run"
    steps = ["callbacks.resume.every_n_train_steps=2"]
    real_trainer = build.trainer

    def crashing_trainer(cfg, *args, **kwargs):
        trainer = real_trainer(cfg, *args, **kwargs)
        trainer.callbacks.insert(0, Crash(9))
        return trainer

    monkeypatch.setattr(build, "trainer", crashing_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_cfg("config", cli_args(steps + CONTEXT), run, cache_dir))
    monkeypatch.setattr(build, "trainer", real_trainer)
    saved = load(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 8 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] > 0
    assert {"study_marker.weight", "view_marker.weight"} <= set(saved["state_dict"])
    train(compose_cfg("config", cli_args(steps + CONTEXT + [f"ckpt_path={run}/checkpoints/last.ckpt"]), run,
                      cache_dir))
    assert_same_run(expected, run)


def _loader(data, sampler=None):
    from r2gen.data.resumable import ResumableLoader, ResumableRandomSampler, SkippingBatchSampler

    return ResumableLoader(data, batch_sampler=SkippingBatchSampler(sampler or ResumableRandomSampler(data), 4, False))


@pytest.mark.parametrize("ddp", [False, True], ids=["one_process", "ddp_shard"])
def test_train_loader_resumes_mid_pass_with_the_same_order(ddp):
    """The loader's state (the pass's seed, batches served) rebuilds the permutation and skips what was served; the
    seed is drawn from torch's RNG exactly as RandomSampler draws it, so an uninterrupted pass is unchanged. Under DDP
    Lightning rebuilds the loader around its DistributedSampler; the loader stays resumable."""
    from lightning_fabric.utilities.data import _replace_dunder_methods
    from pytorch_lightning.trainer.states import RunningStage
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

    data = list(range(30))

    def make():
        with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
            dl = _loader(data)
        if ddp:
            dl = _update_dataloader(dl, DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3),
                                    mode=RunningStage.TRAINING)
        return dl

    if not ddp:  # the same order as torch's own shuffled loader, from the same RNG state
        torch.manual_seed(0)
        reference = [b.tolist() for b in DataLoader(data, batch_size=4, shuffle=True)]
        torch.manual_seed(0)
        assert [b.tolist() for b in make()] == reference
    torch.manual_seed(0)
    first = make()
    it = iter(first)
    served = [next(it).tolist() for _ in range(3)]
    state = first.state_dict()
    rest = [b.tolist() for b in it]
    assert state["batches"] == 3 and (state["seed"] is None) == ddp
    again = make()
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == rest
    seen = sorted(i for b in served + rest for i in b)
    assert seen == data if not ddp else len(set(seen)) == len(seen) == len(data) // 2  # every study once (per shard)
    if not ddp:  # the next pass is a new epoch: a fresh seed, a new order
        assert [b.tolist() for b in again] != served + rest
    assert isinstance(again.batch_sampler.sampler, DistributedSampler if ddp else RandomSampler)


# --- full disk ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where,code", [("write", errno.ENOSPC), ("open", errno.EACCES)])
def test_failed_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch, where, code):
    import r2gen.checkpoint_io as ckio

    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    before = path.read_bytes()

    if where == "write":
        def full_disk(f, data):
            f.write(data[: len(data) // 2])  # half the file reaches the disk, then it is full
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(ckio, "_write_bytes", full_disk)
    else:
        real_open = os.open
        monkeypatch.setattr(os, "open", lambda p, *a, **k: (_ for _ in ()).throw(OSError(code, os.strerror(code)))
                            if str(p).endswith(".tmp") else real_open(p, *a, **k))
    with pytest.raises(StorageError) as e:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 2}, path)
    msg = str(e.value)
    assert str(path) in msg and "unchanged" in msg and "hydra.run.dir=" in msg and f"ckpt_path={path}" in msg
    assert ("no space left on device" if code == errno.ENOSPC else "permission denied") in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


@pytest.mark.slow
def test_full_disk_during_training_keeps_last_good_checkpoints(make_cfg, monkeypatch):
    import r2gen.checkpoint_io as ckio

    cfg = make_cfg("trainer.max_epochs=2", "test_after_fit=false")
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    real_write, snapshot = ckio._write_bytes, {}

    def full_after_first_epoch(f, data):
        if not snapshot and (ckpts / "last.ckpt").is_file() and load(ckpts / "last.ckpt")["epoch"] == 0 \
                and (ckpts / "best.ckpt").is_file():
            snapshot.update({p.name: p.read_bytes() for p in ckpts.glob("*.ckpt")})
        if snapshot:
            f.write(data[:1000])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data)

    monkeypatch.setattr(ckio, "_write_bytes", full_after_first_epoch)
    with pytest.raises(StorageError, match="no space left on device"):
        train(cfg)
    assert snapshot, "the disk never filled up"
    assert {p.name: p.read_bytes() for p in ckpts.glob("*.ckpt")} == snapshot
    assert no_temp_files(Path(cfg.paths.output_dir))


# --- a checkpoint that would run code --------------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_checkpoint_whose_pickle_runs_code_is_refused(tmp_path, make_cfg, cache_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "payload": _RunsCode(marker)}, evil)

    with pytest.raises(InputError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(evil)
    trainer = build.trainer(make_cfg())  # the resume path Lightning takes: strategy -> r2gen's CheckpointIO
    with pytest.raises(InputError, match="refused"):
        trainer.strategy.load_checkpoint(evil, weights_only=False)
    assert not marker.exists()

    r = run_cli("train.py", *SMALL, f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'run'}", cache_dir=cache_dir)
    assert r.returncode == 2 and "refused" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not marker.exists()
