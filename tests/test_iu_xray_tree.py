"""A tree laid out like R2Gen's IU-Xray release, with real report text and generated images, through the public
entry points: `train.py data=iu_xray data.root=<tree>` then `evaluate.py ckpt=<best.ckpt>` in fresh processes;
and the set-up check on the same tree with a missing and a corrupt image. One test study is DICOM.

The report text is the real IU-Xray annotation (shared data, not shipped: the tests skip without it).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict
from PIL import Image

from r2gen.data.clean import clean_report_iu_xray
from r2gen.data.datamodule import ReportDataModule
from r2gen.scoring import METRIC_NAMES

from .helpers.cli import run_cli
from .helpers.config import SMALL
from .helpers.dicom import write_dicom
from .helpers.files import read_jsonl
from .helpers.paths import SHARED_DATA

IU_ANNOTATION = SHARED_DATA / "iu_xray" / "annotation.json"
SIZES = {"train": 24, "val": 6, "test": 6}
# SMALL without the demo's own keys (data=iu_xray has no data.demo block)
OVERRIDES = ["lm=tiny", "data.num_workers=0", *(o for o in SMALL if not o.startswith("data.demo."))]

pytestmark = pytest.mark.skipif(not IU_ANNOTATION.is_file(), reason="real IU-Xray annotation not present")


def build_tree(root: Path) -> dict:
    """`<root>/annotation.json` + `<root>/images/<id>/{0,1}.png`: the first studies of each split, real reports,
    noise images; the first test study's two views are DICOM (MONOCHROME1 with a window, MONOCHROME2)."""
    full = json.loads(IU_ANNOTATION.read_text())
    ann = {s: [dict(e) for e in full[s][:n]] for s, n in SIZES.items()}
    rng = np.random.default_rng(0)
    for s in SIZES:
        for e in ann[s]:
            (root / "images" / e["id"]).mkdir(parents=True)
            for p in e["image_path"]:
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / "images" / p)
    dcm = ann["test"][0]
    for p in dcm["image_path"]:
        (root / "images" / p).unlink()
    dcm["image_path"] = [f"{dcm['id']}/0.dcm", f"{dcm['id']}/1.dcm"]
    pixels = rng.integers(0, 4096, (48, 48)).astype(np.uint16)
    write_dicom(root / "images" / dcm["image_path"][0], pixels, "MONOCHROME1", WindowCenter=2048, WindowWidth=3000)
    write_dicom(root / "images" / dcm["image_path"][1], pixels, "MONOCHROME2")
    (root / "annotation.json").write_text(json.dumps(ann))
    return ann


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("iu_xray")
    return root, build_tree(root)


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory, cache_dir) -> Path:
    root, _ = tree
    run = tmp_path_factory.mktemp("run")
    r = run_cli("train.py", "data=iu_xray", f"data.root={root}", *OVERRIDES, f"hydra.run.dir={run}",
                cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def check_outputs(folder: Path, ann: dict) -> None:
    m = json.loads((folder / "metrics.json").read_text())
    for k in METRIC_NAMES:
        assert math.isfinite(m[k]), k
    assert m["data"] == "iu_xray" and m["n_studies"] == SIZES["test"]
    preds = read_jsonl(folder / "predictions.jsonl")
    assert [p["id"] for p in preds] == [e["id"] for e in ann["test"]]  # the DICOM study included
    assert [p["reference"] for p in preds] == [clean_report_iu_xray(e["report"]) for e in ann["test"]]


@pytest.mark.slow  # two fresh processes, each scoring with METEOR's JVM: ~45 s on 2 CPU cores
def test_train_then_evaluate_on_an_iu_xray_tree(tree, trained, tmp_path, cache_dir):
    _, ann = tree
    check_outputs(trained / "test", ann)
    assert (trained / "checkpoints" / "best.ckpt").is_file()
    ev = tmp_path / "eval"
    r = run_cli("evaluate.py", f"ckpt={trained}/checkpoints/best.ckpt", f"hydra.run.dir={ev}",
                "trainer.enable_progress_bar=false", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    check_outputs(ev, ann)


@pytest.fixture(scope="module")
def broken_tree(tree, tmp_path_factory) -> Path:
    """The same tree with one image missing (train) and one corrupt (val)."""
    root, ann = tree
    broken = tmp_path_factory.mktemp("broken") / "iu_xray"
    shutil.copytree(root, broken)
    (broken / "images" / ann["train"][3]["image_path"][1]).unlink()
    (broken / "images" / ann["val"][2]["image_path"][0]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return broken


@pytest.mark.slow
def test_bad_images_fail_at_set_up_with_one_line(broken_tree, tree, tmp_path, cache_dir):
    _, ann = tree
    r = run_cli("train.py", "data=iu_xray", f"data.root={broken_tree}", *OVERRIDES, f"hydra.run.dir={tmp_path}",
                cache_dir=cache_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("error: "))
    assert "2 image(s) not found or unreadable, in 2 studies" in line
    assert f"{broken_tree}/images/{ann['train'][3]['image_path'][1]} (no such file)" in line
    assert f"val id {ann['val'][2]['id']}: " in line and "data.on_bad_sample=skip" in line
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_skip_trains_without_the_bad_studies(broken_tree, tmp_path, cache_dir):
    # training only: no validation or test (and so no METEOR JVM), so no best checkpoint either
    r = run_cli("train.py", "data=iu_xray", f"data.root={broken_tree}", "data.on_bad_sample=skip", *OVERRIDES,
                "test_after_fit=false", "trainer.limit_val_batches=0", "~callbacks.best_checkpoint",
                f"hydra.run.dir={tmp_path}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "data.on_bad_sample=skip: dropping 2 image(s)" in r.stdout + r.stderr


def test_dicom_study_loads_through_the_datamodule(tree, make_cfg):
    root, ann = tree
    cfg = make_cfg("data=iu_xray", f"data.root={root}", "data.num_workers=0", small=False)
    with open_dict(cfg):
        cfg.data.image_size = 32
    dm = ReportDataModule(cfg.data, 32, (0.5,) * 3, (0.5,) * 3, augment=False)
    dm.setup()
    test = dm.splits["test"]
    assert test.entries[0]["image_path"][0].endswith(".dcm")
    item = test[0]
    assert item["images"].shape == (2, 3, 32, 32) and item["view_mask"].all()
    m1, m2 = item["images"][0, 0], item["images"][1, 0]  # normalised to [-1, 1]
    assert m1.std() > 0.1 and m2.std() > 0.1
    # MONOCHROME1 is inverted: its pixels run against the MONOCHROME2 view's (same stored values)
    assert np.corrcoef(m1.flatten().numpy(), m2.flatten().numpy())[0, 1] < -0.5
    assert item["report"] == clean_report_iu_xray(ann["test"][0]["report"])
