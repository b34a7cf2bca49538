"""Nothing of the user's is ever written, moved or deleted, and a checkpoint is rebuilt the way train.py composes.

The two slips this guards against were real: `train.py data.root=/data/mycxr` (forgetting `data=custom`) and
`evaluate.py ckpt=<demo run> data=iu_xray data.root=/data/iu_xray` both used to replace the user's folder with the
synthetic demo set. Each test takes a snapshot (every file's bytes and mode) of the user's folder and compares.
"""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from r2gen.build import run_config
from r2gen.checkpoint import read_checkpoint
from r2gen.errors import InputError, StorageError, UnsafeWriteError
from r2gen.evaluate import evaluate

from .helpers.cli import run_cli
from .helpers.config import SMALL, compose_cfg
from .helpers.files import read_jsonl, snapshot

REPORTS = ["the heart is normal in size . the lungs are clear .", "no pleural effusion . no pneumothorax .",
           "mild cardiomegaly . small left pleural effusion .", "the lungs are clear . no acute disease ."]


def user_tree(root, n=(4, 3, 3)):
    """A user's R2Gen-layout data set (annotation.json + images/) and the same studies as a JSONL table."""
    rng = np.random.default_rng(1)
    ann, rows = {}, []
    for split, count in zip(("train", "val", "test"), n, strict=True):
        ann[split] = []
        for i in range(count):
            sid = f"{split}_{i}"
            (root / "images" / sid).mkdir(parents=True)
            paths = [f"{sid}/{v}.png" for v in range(2)]
            for p in paths:
                Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / "images" / p)
            e = {"id": sid, "report": REPORTS[i % len(REPORTS)], "image_path": paths, "split": split}
            ann[split].append(e)
            rows.append(e)
    (root / "annotation.json").write_text(json.dumps(ann))
    (root / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "notes.txt").write_text("my notes\n")
    return ann


@pytest.fixture
def user_data(tmp_path):
    root = tmp_path / "mycxr"
    return root, user_tree(root)


# --------------------------------------------------------------------------------------------- the two slips
@pytest.mark.slow
def test_train_with_a_user_folder_as_the_demo_root_refuses_and_touches_nothing(user_data, tmp_path, cache_dir):
    root, _ = user_data
    before = snapshot(root)
    r = run_cli("train.py", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}", *SMALL, cache_dir=cache_dir)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"data.root={root} holds files that are not the demo set" in r.stderr
    assert "data=custom" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(root) == before


@pytest.mark.slow
@pytest.mark.parametrize("group", ["iu_xray", "custom"])
def test_a_demo_checkpoint_evaluated_on_user_data_scores_exactly_those_studies(group, demo_run, user_data, tmp_path,
                                                                               cache_dir):
    root, ann = user_data
    before = snapshot(root)
    extra = [f"data.annotation={root}/studies.jsonl"] if group == "custom" else []
    ev = tmp_path / "eval"
    r = run_cli("evaluate.py", f"ckpt={demo_run}/checkpoints/last.ckpt", f"data={group}", f"data.root={root}", *extra,
                "data.num_workers=0", "data.image_size=32", f"hydra.run.dir={ev}", "trainer.enable_progress_bar=false",
                cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((ev / "metrics.json").read_text())
    assert m["data"] == group and m["n_studies"] == len(ann["test"])
    assert sorted(p["id"] for p in read_jsonl(ev / "predictions.jsonl")) == sorted(e["id"] for e in ann["test"])
    assert snapshot(root) == before


# --------------------------------------------------------------------------------------------- other writers
def test_demo_is_written_only_to_a_new_an_empty_or_a_demo_folder(tmp_path, user_data):
    from r2gen.data.synthetic import generate_demo

    small = {"n_train": 2, "n_val": 1, "n_test": 1, "image_size": 16}
    generate_demo(tmp_path / "new", **small)  # does not exist
    (tmp_path / "empty").mkdir()
    generate_demo(tmp_path / "empty", **small)
    generate_demo(tmp_path / "new", **{**small, "n_train": 3})  # a demo set with other parameters: replaced
    assert len(json.loads((tmp_path / "new" / "annotation.json").read_text())["train"]) == 3
    root, _ = user_data
    before = snapshot(root)
    with pytest.raises(UnsafeWriteError, match="not the demo set"):
        generate_demo(root, **small)
    assert snapshot(root) == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UnsafeWriteError, match="is a file"):
        generate_demo(tmp_path / "afile", **small)
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.slow
def test_run_folder_that_holds_other_files_is_refused_before_hydra_writes(user_data, tmp_path, cache_dir):
    root, _ = user_data
    before = snapshot(root)
    r = run_cli("train.py", f"hydra.run.dir={root}", *SMALL, cache_dir=cache_dir)
    assert r.returncode == 2 and "hydra.run.dir" in r.stderr and "not an r2gen run" in r.stderr, r.stderr[-2000:]
    assert snapshot(root) == before  # not even Hydra's .hydra/ folder was written
    r = run_cli("evaluate.py", f"hydra.run.dir={root / 'notes.txt' / 'eval'}", "ckpt=x.ckpt", cache_dir=cache_dir)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(root) == before


def test_a_run_folder_is_reused_by_a_later_run(demo_run):
    from r2gen.run_folder import MARKER, check_run_folder

    assert (demo_run / MARKER).is_file()
    assert check_run_folder(demo_run) == demo_run  # e.g. resuming into it


def test_feature_cache_refuses_a_folder_that_is_not_a_cache(user_data, make_cfg):
    from r2gen.cache import build_cache

    root, _ = user_data
    before = snapshot(root)
    with pytest.raises(UnsafeWriteError, match="not r2gen's feature cache"):
        build_cache(make_cfg("align=shallow", f"data.feature_cache={root}"))
    assert snapshot(root) == before


def test_a_user_lm_folder_is_read_never_written(tmp_path, make_cfg):
    import shutil

    from r2gen import build
    from r2gen.train import train

    mine = tmp_path / "my_lm"  # the user's own model folder (here: a copy of the demo's LM), outside the cache
    shutil.copytree(build.lm_path(make_cfg()), mine)
    before = snapshot(mine)
    train(make_cfg(f"lm.name_or_path={mine}", "test_after_fit=false"))
    assert snapshot(mine) == before


# --------------------------------------------------------------------------------------------- the contract
def eval_cfg(ckpt, *overrides, tmp_path, cache_dir):
    return compose_cfg("evaluate", [f"ckpt={ckpt}", *overrides], tmp_path / "ev", cache_dir)


def test_a_group_override_replaces_the_group_and_a_dotted_key_one_value(demo_run, tmp_path, cache_dir):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    ck = read_checkpoint(ckpt)
    assert ck["hyper_parameters"]["cfg"]["data"]["demo"]  # a demo run

    o = ["data=iu_xray", "data.root=/x/iu"]
    run = run_config(eval_cfg(ckpt, *o, tmp_path=tmp_path, cache_dir=cache_dir), ck, o)
    assert "demo" not in run.data and run.data.name == "iu_xray"
    assert run.data.annotation == "/x/iu/annotation.json" and run.data.image_dir == "/x/iu/images"

    o = ["data.root=/moved/demo"]  # one key, and what the run derived from it follows
    run = run_config(eval_cfg(ckpt, *o, tmp_path=tmp_path, cache_dir=cache_dir), ck, o)
    assert run.data.name == "demo" and run.data.annotation == "/moved/demo/annotation.json"
    assert run.data.batch_size == ck["hyper_parameters"]["cfg"]["data"]["batch_size"]  # the rest is the run's

    o = ["generate=greedy"]
    run = run_config(eval_cfg(ckpt, *o, tmp_path=tmp_path, cache_dir=cache_dir), ck, o)
    greedy = OmegaConf.to_container(OmegaConf.load("conf/generate/greedy.yaml"))
    assert OmegaConf.to_container(run.generate) == greedy  # nothing of the run's beam settings survives

    o = ["generate.num_beams=1"]
    run = run_config(eval_cfg(ckpt, *o, tmp_path=tmp_path, cache_dir=cache_dir), ck, o)
    assert run.generate.num_beams == 1
    assert run.generate.max_new_tokens == ck["hyper_parameters"]["cfg"]["generate"]["max_new_tokens"]


def test_a_format_1_checkpoint_is_migrated_in_one_place(demo_run, tmp_path, cache_dir):
    ck = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    old = ck["hyper_parameters"]["cfg"]
    for key in ("feature_cache", "on_bad_sample", "group_by_length"):
        del old["data"][key]
    del old["encoder"]["gradient_checkpointing"]
    ck["r2gen"] = {"format": 1, "keys": ck["r2gen"]["keys"]}
    path = tmp_path / "old.ckpt"
    torch.save(ck, path)

    migrated = read_checkpoint(path)
    cfg = migrated["r2gen"]["config"]
    assert cfg["data"]["feature_cache"] == "off" and cfg["data"]["on_bad_sample"] == "error"
    assert cfg["encoder"]["gradient_checkpointing"] is False
    assert cfg["data"]["annotation"] == "${.root}/annotation.json"
    o = ["split=val", "generate.max_new_tokens=2"]
    scores = evaluate(eval_cfg(path, *o, tmp_path=tmp_path, cache_dir=cache_dir), overrides=o)
    assert scores["Bleu_1"] >= 0


# --------------------------------------------------------------------------------------------- hostile files
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating the file is the proof that unpickling ran code


def evil_checkpoint(folder):
    marker = folder / "pwned"
    evil = folder / "evil.ckpt"
    torch.save({"r2gen": {"format": 2}, "hyper_parameters": {"cfg": {}}, "payload": _Evil(str(marker))}, evil,
               pickle_module=pickle)
    return evil, marker


def test_a_checkpoint_whose_pickle_runs_code_is_refused_unrun(tmp_path):
    evil, marker = evil_checkpoint(tmp_path)
    with pytest.raises(InputError, match="refused"):
        read_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_evaluate_py_refuses_a_checkpoint_whose_pickle_runs_code(tmp_path, cache_dir):
    evil, marker = evil_checkpoint(tmp_path)
    r = run_cli("evaluate.py", f"ckpt={evil}", f"hydra.run.dir={tmp_path / 'ev'}", cache_dir=cache_dir)
    assert r.returncode == 2 and "refused" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_a_damaged_checkpoint_is_one_line(damage, demo_run, tmp_path):
    good = (demo_run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes({"empty": b"", "truncated": good[: len(good) // 2], "text": b"hello\n"}[damage])
    with pytest.raises(InputError, match=f"ckpt={bad}: "):
        read_checkpoint(bad)


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    from r2gen.boundary import run_cli as boundary

    def user_mistake(cfg):
        raise StorageError("hydra.run.dir=/x: not writable; choose another")

    with pytest.raises(SystemExit) as e:
        boundary(user_mistake, None)
    assert e.value.code == 2 and "hydra.run.dir=/x: not writable" in capsys.readouterr().err

    def bug(cfg):
        raise KeyError("internal")

    with pytest.raises(KeyError):  # not swallowed into a one-liner
        boundary(bug, None)
    assert sys.exc_info()[0] is None


def test_a_new_run_never_overwrites_an_earlier_run_s_checkpoints(demo_run, cache_dir):
    from r2gen.train import train

    before = snapshot(demo_run / "checkpoints")
    with pytest.raises(UnsafeWriteError, match="resume it with ckpt_path="):
        train(compose_cfg("config", SMALL, demo_run, cache_dir))
    assert snapshot(demo_run / "checkpoints") == before


@pytest.mark.slow
def test_a_multirun_sweep_folder_is_checked_too(user_data, cache_dir):
    root, _ = user_data
    before = snapshot(root)
    r = run_cli("train.py", "-m", f"hydra.sweep.dir={root}", "seed=1,2", *SMALL, cache_dir=cache_dir)
    assert r.returncode == 2 and "hydra.sweep.dir" in r.stderr, r.stderr[-2000:]
    assert snapshot(root) == before


def test_a_checkpoint_whose_config_no_longer_resolves_is_one_line(demo_run, tmp_path, cache_dir):
    ck = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ck["r2gen"]["config"]["data"]["annotation"] = "${data.gone}/annotation.json"  # a key this r2gen no longer has
    path = tmp_path / "stale.ckpt"
    torch.save(ck, path)
    with pytest.raises(InputError, match=f"ckpt={path}: its config does not resolve"):
        run_config(eval_cfg(path, tmp_path=tmp_path, cache_dir=cache_dir), read_checkpoint(path), [], path)
