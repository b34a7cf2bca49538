"""An installed r2gen needs no checkout: a wheel, installed into a fresh environment and run from another folder,
finds its configs in the package (`r2gen/conf`) and trains through the `r2gen-train` console script."""

from __future__ import annotations

import os
import site
import subprocess
import sys

import pytest

from .helpers.cli import cli_env
from .helpers.config import SMALL
from .helpers.paths import ROOT


@pytest.mark.slow
def test_a_wheel_runs_verify_and_r2gen_train_from_another_folder(tmp_path, cache_dir):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("r2gen-*.whl"))
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    # the dependencies (torch, transformers, ...) come from this environment; r2gen itself only from the wheel
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = cli_env(cache_dir)
    where = subprocess.run([str(py), "-c", "import r2gen, r2gen.conf; print(r2gen.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.returncode == 0 and str(env_dir) in where.stdout, where.stderr[-2000:]

    small = [o for o in SMALL if o != "~logger.tensorboard"]
    r = subprocess.run([str(py), "-m", "r2gen.verify", "lm=tiny", *small], cwd=work, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "ok: lm.name_or_path=" in r.stdout, r.stderr[-3000:]
    r = subprocess.run([str(env_dir / "bin" / "r2gen-train"), "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                        "test_after_fit=false", *small], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((work / "outputs" / "train").glob("*/*/checkpoints/last.ckpt"))  # the run folder, under the cwd
