"""One run per folder, and what a killed run leaves: a second command on a folder in use is refused in one line
before it writes anything; temporary checkpoint files of dead processes are removed when a run claims the folder
(a live process's are kept); a refusal to overwrite names a checkpoint that exists."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r2gen.errors import UnsafeWriteError
from r2gen.run_folder import LOCK, MARKER, claim_run_folder, release_run_folder
from r2gen.train import train

from .helpers.cli import cli_env, run_cli
from .helpers.config import SMALL
from .helpers.files import snapshot
from .helpers.paths import ROOT

CLAIM = "import sys; from r2gen.run_folder import claim_run_folder; claim_run_folder(sys.argv[1])"


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow  # two fresh processes, each importing r2gen (the fast tier starts none)
def test_the_python_api_takes_the_run_lock_reentrant_in_its_process(tmp_path):
    run = tmp_path / "run"
    assert claim_run_folder(run) == run and claim_run_folder(run) == run  # the same process may claim it again
    other = subprocess.run([sys.executable, "-c", CLAIM, str(run)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert other.returncode != 0 and "UnsafeWriteError" in other.stderr and "is in use by another r2gen command" in \
        other.stderr, other.stderr[-2000:]
    release_run_folder(run)
    assert subprocess.run([sys.executable, "-c", CLAIM, str(run)], cwd=ROOT, timeout=60).returncode == 0


def test_stale_temporary_checkpoints_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / MARKER).write_text("{}\n")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = run / "checkpoints" / f".best.ckpt.{dead_pid()}.0123abcd.tmp"  # kill -9 during a write
        stale.write_bytes(b"\0" * 1024)
        writing = run / "checkpoints" / f".last.ckpt.{live.pid}.89abcdef.tmp"  # a write still going on
        writing.write_bytes(b"\0" * 1024)
        other = run / "checkpoints" / "notes.tmp"  # not a checkpoint write's name: not ours to judge
        other.write_text("x")
        claim_run_folder(run)
        assert not stale.exists() and writing.exists() and other.exists()
    finally:
        live.kill()
        live.wait()
        release_run_folder(run)


@pytest.mark.parametrize("has_last", [True, False])
def test_the_refusal_to_overwrite_names_a_checkpoint_that_exists(make_cfg, has_last):
    cfg = make_cfg()
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts.parent / MARKER).write_text("{}\n")  # an earlier r2gen run's folder
    (ckpts / "best.ckpt").write_bytes(b"best")
    if has_last:
        (ckpts / "last.ckpt").write_bytes(b"last")
    else:  # killed during the first last.ckpt write: only its temporary file was there
        (ckpts / f".last.ckpt.{dead_pid()}.0123abcd.tmp").write_bytes(b"partial")
    with pytest.raises(UnsafeWriteError) as e:
        train(cfg)
    named = ckpts / ("last.ckpt" if has_last else "best.ckpt")
    assert f"resume it with ckpt_path={named}" in str(e.value)
    assert [p.name for p in ckpts.iterdir()] == [p.name for p in ckpts.iterdir() if not p.name.endswith(".tmp")]
    release_run_folder(cfg.paths.output_dir)


@pytest.mark.slow
def test_train_py_on_a_folder_in_use_is_refused_before_it_writes(tmp_path, cache_dir):
    run = tmp_path / "run"
    claim_run_folder(run)  # a run of this process holds the folder
    before = snapshot(run)
    t0 = time.monotonic()
    r = run_cli("train.py", *SMALL, f"hydra.run.dir={run}", cache_dir=cache_dir, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and err[0].startswith(f"error: hydra.run.dir={run} is in use by another r2gen command"), \
        r.stderr[-2000:]
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 60
    assert snapshot(run) == before  # not a byte written: no .hydra/, no config.yaml
    release_run_folder(run)


@pytest.mark.slow
def test_two_train_py_in_one_folder_the_second_is_refused_the_first_unaffected(tmp_path, cache_dir):
    run = tmp_path / "run"
    args = [*SMALL, "trainer.max_epochs=3", "test_after_fit=false", f"hydra.run.dir={run}"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, "train.py", *args, "seed=1"], cwd=ROOT, env=cli_env(cache_dir),
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.yaml").exists():  # the first has its lock and has started its run
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        t0 = time.monotonic()
        second = run_cli("train.py", *args, "seed=2", cache_dir=cache_dir, timeout=120)
        assert first.poll() is None  # still running: the refusal was about the lock, not leftovers
        assert second.returncode == 2 and time.monotonic() - t0 < 60
        assert f"error: hydra.run.dir={run} is in use by another r2gen command" in second.stderr, second.stderr[-2000:]
        assert f"(pid {first.pid})" in second.stderr
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        first.kill()
        first.wait()
        log.close()
    assert "seed: 1" in (run / "config.yaml").read_text()
    assert "seed=1" in (run / ".hydra" / "overrides.yaml").read_text()
    assert "seed=2" not in (run / ".hydra" / "overrides.yaml").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    steps = [int(r["step"]) for r in rows if r.get("step")]
    assert steps and steps == sorted(steps)  # one run's rows, in order, not two interleaved
    assert (run / LOCK).is_file()
