"""Each run folder records what reproduces it: seed, r2gen's commit and whether the tree was dirty, library
versions, the device, and a hash of the annotation file it read."""

import hashlib
import json
import subprocess
from pathlib import Path

import torch
from omegaconf import OmegaConf

from r2gen.provenance import git_state, write_provenance

from .helpers.paths import ROOT


def test_training_run_records_what_reproduces_it(demo_run):
    p = json.loads((demo_run / "provenance.json").read_text())
    cfg = OmegaConf.load(demo_run / "config.yaml")
    assert p["seed"] == cfg.seed
    assert p["libraries"]["torch"] == torch.__version__.split("+")[0] or p["libraries"]["torch"] == torch.__version__
    assert p["libraries"]["transformers"] and p["python"] and p["device"].startswith(("cpu", "cuda"))
    annotation = Path(cfg.data.annotation)
    assert p["annotation_sha256"] == {str(annotation): hashlib.sha256(annotation.read_bytes()).hexdigest()}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI clones one); a wheel install records null
        assert p["r2gen"]["commit"] == head.stdout.strip() and isinstance(p["r2gen"]["dirty"], bool)


def test_dirty_tree_is_seen_and_a_resume_is_added(tmp_path, make_cfg):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, check=True)  # noqa: E731
    git("init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    assert git_state(repo)["dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    assert git_state(repo) == {"commit": git("rev-parse", "HEAD").stdout.strip(), "dirty": True}
    assert git_state(tmp_path / "not_a_repo") == {"commit": None, "dirty": None}

    cfg = make_cfg()
    out = tmp_path / "run"
    out.mkdir()
    write_provenance(out, cfg)
    first = json.loads((out / "provenance.json").read_text())
    resumed = make_cfg("ckpt_path=/some/run/checkpoints/last.ckpt")
    write_provenance(out, resumed)
    both = json.loads((out / "provenance.json").read_text())
    assert {k: v for k, v in both.items() if k != "resumed"} == first and len(both["resumed"]) == 1
