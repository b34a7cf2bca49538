"""MIMIC-CXR scale (benchmarks/scale.py measures it): studies packed so loader workers share them, a float16 feature
cache that trains like float32 and refuses a disk too small for it, and a set-up check remembered between runs."""

from __future__ import annotations

import gc
import os
import pickle
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from r2gen.data import checks
from r2gen.data.checks import check_studies
from r2gen.data.clean import get_cleaner
from r2gen.data.datamodule import StudyDataset
from r2gen.data.images import load_image
from r2gen.data.packed import Strings, StudyTable
from r2gen.data.transform import image_transform
from r2gen.errors import InputError, StorageError
from r2gen.evaluate import shuffle_images

from .helpers.files import snapshot
from .helpers.models import shallow

CLEAN = get_cleaner("iu_xray")


def write_tree(root, n=6, views=(2, 1)):
    """`n` studies under `root` (study i has views[i % len(views)] PNGs); the annotation split as R2Gen's."""
    rng = np.random.default_rng(0)
    ann = {"train": [], "val": [], "test": []}
    for i in range(n):
        paths = []
        for v in range(views[i % len(views)]):
            p = f"p{i}/s{i}/{v}.png"
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(root / p)
            paths.append(p)
        split = ("train", "train", "val", "test")[i % 4] if i < 4 else "train"
        ann[split].append({"id": i if i % 2 else f"s{i}", "report": f"Heart size normal {i}. No effusion.",
                           "image_path": paths, "split": split, "subject_id": 10 + i})
    return ann


# ----------------------------------------------------------------------------------------- packed studies
def test_packed_dataset_gives_the_items_a_list_of_dicts_gave(tmp_path):
    entries = write_tree(tmp_path, n=7, views=(2, 1, 3))["train"]
    entries.append({"id": "ü-7", "report": "Lungs clear — no pneumothorax.", "image_path": [str(tmp_path / "p0/s0/0.png")]})
    tf = image_transform(16, (0.5,) * 3, (0.5,) * 3, augment=False)
    ds = StudyDataset(entries, tmp_path, tf, 2, CLEAN)
    assert len(ds) == len(entries)
    for i, e in enumerate(entries):  # what StudyDataset returned when it held the dicts
        views = [tf(load_image(tmp_path / p)) for p in e["image_path"][:2]]
        item = ds[i]
        assert item["id"] == str(e["id"]) and item["report"] == CLEAN(e["report"]) == ds.reports[i]
        assert torch.equal(item["images"][: len(views)], torch.stack(views))
        assert item["view_mask"].tolist() == [k < len(views) for k in range(2)]
        assert not item["images"][len(views):].any()
        assert ds.entries[i] == {"id": str(e["id"]), "report": CLEAN(e["report"]), "image_path": e["image_path"]}
    assert list(ds.reports) == [CLEAN(e["report"]) for e in entries]
    assert [e["id"] for e in ds.entries[-2:]] == [str(entries[-2]["id"]), "ü-7"] and ds.entries[-1]["id"] == "ü-7"
    with pytest.raises(IndexError):
        ds.entries[len(entries)]
    with pytest.raises(IndexError):
        ds.reports[-len(entries) - 1]


def test_packed_studies_hold_no_python_object_per_study():
    """What keeps a forked worker's memory flat: reading study i writes no shared object (no per-study dict,
    list or str exists to have its refcount or GC header written), and a spawned worker gets bytes."""
    n = 20_000
    entries = [{"id": f"{i:08x}", "report": "the heart is normal in size . no effusion .",
                "image_path": [f"p1{i % 10}/p{i}/s{i}/{i:040x}.jpg"] * (1 + i % 2)} for i in range(n)]
    gc.collect()
    before = len(gc.get_objects())
    table = StudyTable(entries)
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # a few arrays, not 20,000 dicts
    arrays = [table.ids.data, table.ids.offsets, table.reports.data, table.reports.offsets, table.paths.data,
              table.paths.offsets, table.starts]
    assert all(isinstance(a, np.ndarray) for a in arrays) and table.nbytes() == sum(a.nbytes for a in arrays)
    assert len(pickle.dumps(table)) < table.nbytes() + 4096  # pickled: the buffers, nothing per study
    assert table[n - 1] == entries[n - 1] and list(table) == entries


class _ScannedInWorker(torch.utils.data.Dataset):
    """Whether the cyclic GC of a loader worker still scans an object the main process made."""

    def __init__(self):
        self.inherited = [[] for _ in range(3)]  # containers: tracked by the GC

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return any(o is self.inherited for o in gc.get_objects())  # frozen objects are not listed


def test_loader_workers_leave_inherited_objects_to_the_main_process():
    """r2gen's worker_init freezes what a forked worker inherits, so its GC never writes into those pages (the
    ~100 MB per worker benchmarks/scale.py measured)."""
    from torch.utils.data import DataLoader

    from r2gen.data.resumable import worker_init

    ds = _ScannedInWorker()
    assert ds[0]  # here, in the main process, it is scanned
    frozen = DataLoader(ds, num_workers=1, worker_init_fn=worker_init, multiprocessing_context="fork")
    assert [bool(x) for x in frozen] == [False]
    plain = DataLoader(ds, num_workers=1, multiprocessing_context="fork")
    assert [bool(x) for x in plain] == [True]  # without it, scanned


def test_strings_round_trip_and_slices():
    items = ["", "a", "ünïcode", "x" * 1000, ""]
    s = Strings(items)
    assert list(s) == items and s[1:3] == items[1:3] and s[-1] == "" and len(s) == 5 and "a" in s
    assert list(Strings([])) == []


def test_shuffle_images_repacks_the_studies(tmp_path):
    entries = write_tree(tmp_path, n=8)["train"]
    ds = StudyDataset(entries, tmp_path, image_transform(16, (0.5,) * 3, (0.5,) * 3, False), 2, CLEAN)
    before = list(ds.entries)
    shuffle_images(ds, seed=0)
    after = list(ds.entries)
    assert [e["id"] for e in after] == [e["id"] for e in before] and list(ds.reports) == [e["report"] for e in before]
    assert sorted(map(tuple, (e["image_path"] for e in after))) == sorted(map(tuple, (e["image_path"] for e in before)))
    assert all(a["image_path"] != b["image_path"] for a, b in zip(after, before, strict=True))


# ------------------------------------------------------------------------------------------ feature cache
def test_float16_features_train_like_float32(make_cfg, tmp_path):
    cfg, model, dm = shallow(make_cfg, f"data.feature_cache={tmp_path}/f", "data.feature_cache_dtype=float32")
    assert any((Path(cfg.paths.cache_dir) / "setup-check").glob("*.npz"))  # the set-up check remembered
    _, _, dm16 = shallow(make_cfg, f"data.feature_cache={tmp_path}/f")  # float16: the default
    assert dm16.features.dtype == "float16" and dm.features.dtype == "float32"
    f32 = dm.features.dataset("train", dm.splits["train"])
    f16 = dm16.features.dataset("train", dm16.splits["train"])
    assert f32.path != f16.path  # the dtype is part of the file's key
    a32, a16 = np.load(f32.path, mmap_mode="r"), np.load(f16.path, mmap_mode="r")
    assert (a32.dtype, a16.dtype) == (np.float32, np.float16) and a16.nbytes * 2 == a32.nbytes
    assert isinstance(f16.view_rows, np.ndarray) and f16[0]["features"].dtype == torch.float32
    idx = range(cfg.data.batch_size)
    model.train()
    losses, grads = [], []
    for ds in (f32, f16):
        model.zero_grad()
        loss = model(dm.collator([ds[i] for i in idx]))
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.lm_proj.weight.grad.clone())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=0)  # the stated tolerance: 0.1% of the loss
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-2, atol=1e-4)


def test_a_bad_feature_cache_dtype_is_a_config_error(make_cfg):
    with pytest.raises(ValueError, match="data.feature_cache_dtype='bfloat16': choose float16 or float32"):
        shallow(make_cfg, "data.feature_cache_dtype=bfloat16")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_cache_the_disk_cannot_hold_is_refused_and_nothing_is_left(make_cfg, tmp_path, monkeypatch, dtype):
    _, _, dm = shallow(make_cfg, f"data.feature_cache={tmp_path}/f", f"data.feature_cache_dtype={dtype}")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("r2gen.data.feature_cache.shutil.disk_usage", lambda p: usage(10**12, 10**12 - 5000, 5000))
    with pytest.raises(StorageError) as e:
        dm.features.dataset("val", dm.splits["val"])
    msg = str(e.value)
    assert "\n" not in msg and "needs" in msg and "0.0 MB free" in msg and f"{tmp_path}/f" in msg
    assert "data.feature_cache=off" in msg and "data.feature_cache=<a folder" in msg
    assert ("feature_cache_dtype=float16" in msg) == (dtype == "float32")  # only suggested when it would help
    left = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert not [n for n in left if n.endswith((".npy", ".json", ".tmp"))], left  # no partial file
    monkeypatch.undo()
    assert dm.features.dataset("val", dm.splits["val"]).path.is_file()  # with room, it builds


# --------------------------------------------------------------------------------------- set-up manifest
@pytest.fixture
def count_opens(monkeypatch):
    opened = []
    real = checks.image_problem

    def counting(path, *args):
        opened.append(str(path))  # list.append: atomic under the check's threads
        return real(path, *args)

    monkeypatch.setattr(checks, "image_problem", counting)
    return opened


def test_the_set_up_check_is_remembered_and_invalidated_by_a_change(tmp_path, count_opens):
    data, cache = tmp_path / "data", tmp_path / "cache"
    ann = write_tree(data, n=8)
    n_images = sum(len(e["image_path"]) for s in ann.values() for e in s)
    before = snapshot(data)

    def check(policy="error"):
        count_opens.clear()
        return check_studies(ann, data, CLEAN, policy, "annotation.json", manifest_dir=cache)

    check()
    assert len(count_opens) == n_images
    assert len(list(cache.glob("*.npz"))) == 1 and snapshot(data) == before  # r2gen's folder, never the data's
    check()
    assert count_opens == []  # nothing opened: every image unchanged
    touched = data / ann["train"][0]["image_path"][0]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
    check()
    assert count_opens == [str(touched)]
    check()
    assert count_opens == []
    broken = data / ann["train"][1]["image_path"][0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image any more")  # size and content change
    with pytest.raises(InputError, match=r"1 image\(s\) not found or unreadable.*train id 1: .*p1/s1/0.png \(unreadable"):
        check()
    assert count_opens == [str(broken)]
    out = check("skip")  # a bad image is never remembered: checked again, and dropped
    assert count_opens == [str(broken)] and [e["id"] for e in out["train"]] == [e["id"] for e in ann["train"] if e["id"] != 1]
    Image.new("L", (8, 8), 3).save(broken)  # fixed
    check()
    assert count_opens == [str(broken)]
    check()
    assert count_opens == []


def test_a_damaged_manifest_means_a_full_check(tmp_path, count_opens):
    data, cache = tmp_path / "data", tmp_path / "cache"
    ann = write_tree(data, n=4)
    n_images = sum(len(e["image_path"]) for s in ann.values() for e in s)
    check_studies(ann, data, CLEAN, "error", "a.json", manifest_dir=cache)
    (manifest,) = cache.glob("*.npz")
    manifest.write_bytes(b"garbage")
    count_opens.clear()
    check_studies(ann, data, CLEAN, "error", "a.json", manifest_dir=cache)
    assert len(count_opens) == n_images
    count_opens.clear()
    check_studies(ann, data, CLEAN, "error", "other.json", manifest_dir=cache)  # another annotation: its own
    assert len(count_opens) == n_images and len(list(cache.glob("*.npz"))) == 2


# ------------------------------------------------------------------------------------------------ checkpoints
def test_a_format_3_checkpoint_reads_as_a_float32_cache(demo_run, tmp_path):
    from r2gen.checkpoint import FORMAT, read_checkpoint

    ck = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["r2gen"]["format"] == FORMAT == 6 and ck["r2gen"]["config"]["data"]["feature_cache_dtype"] == "float16"
    del ck["r2gen"]["config"]["data"]["feature_cache_dtype"]  # written before the key existed
    del ck["hyper_parameters"]["cfg"]["data"]["feature_cache_dtype"]
    ck["r2gen"] = {**ck["r2gen"], "format": 3}
    path = tmp_path / "format3.ckpt"
    torch.save(ck, path)
    migrated = read_checkpoint(path)
    assert migrated["r2gen"]["format"] == 6
    assert migrated["r2gen"]["config"]["data"]["feature_cache_dtype"] == "float32"  # what those runs cached


# -------------------------------------------------------------------------------------------------- benchmark
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "nih_cxr14_sample").is_dir(), reason="../shared/data not present")
def test_the_scale_benchmark_runs_on_a_small_tree(tmp_path):
    """benchmarks/scale.py end to end on a 300-study tree: every figure present, and train.py's second run opens
    no image (the set-up manifest)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "scale.json"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "benchmarks/scale.py", "--studies", "300,20,20", "--steps", "12",
                        "--cache-studies", "64", "--workdir", str(tmp_path), "--json", str(out)],
                       cwd=root, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["tree"]["studies"] == {"train": 300, "val": 20, "test": 20}
    first, second, workers = (res["train"][k] for k in ("first run", "second run", "second run, 2 workers"))
    assert " 0 opened " in second["setup_check_log"] and f" {res['tree']['images']} opened " in first["setup_check_log"]
    assert all(r["first_step_s"] > 0 for r in (first, second, workers)) and workers["num_workers"] == 2
    assert res["cache"]["float16"]["bytes_per_image"] * 2 == res["cache"]["float32"]["bytes_per_image"]
    assert res["score"]["reports"] == 20 and not list(tmp_path.glob("r2gen-scale-*"))  # the tree is removed
