"""MIMIC-CXR scale: start-up time, memory with loader workers, the set-up check, the feature cache and an epoch's cost
at R2Gen's MIMIC-CXR split size, on the machine that runs it.

    python benchmarks/scale.py [--studies 270790,2130,3858] [--workdir /tmp] [--steps 40] [--cache-studies 4000]
                               [--threads 1] [--json benchmarks/results/scale.json] [--keep]

The tree: an R2Gen-layout `annotation.json` with 270,790 / 2,130 / 3,858 studies (MIMIC-CXR's split in R2Gen),
one image for 64% of studies and two for 36% (MIMIC's 368,960 / 270,790 images per training study), paths shaped
like MIMIC's (`p1X/p<subject>/s<study>-<dicom id>.jpg`). Reports are real IU-Xray reports (`../shared/data`),
one or two joined (MIMIC's are longer), ids unique. Every image is a hard link to one of ~680 small real files:
the 621 NIH ChestX-ray14 JPEGs, plus PNGs and DICOMs written from them (96% / 3% / 1% of the studies' images), so
the tree costs ~100 MB but the code sees ~376k files.

Model settings are small so that it runs on a CPU: `encoder=resnet10t lm=tiny align=shallow data.image_size=64`
(batch 16), one torch thread per process (`--threads`). Every figure is measured in its own process:

  datasets   read the annotation, the set-up check (first run: every image opened; second run: the manifest),
             pack train/val/test into StudyDatasets; the studies' size as Python dicts vs packed; a forked worker
             that touches every study: its private memory with dicts vs packed
  train.py   three real runs (`python train.py data=mimic_cxr ...`, `data.feature_cache=off`, `--steps` steps):
             a first run (no manifest, no demo LM yet), a second run, and the second again with
             `data.num_workers=2`. Time to the first training step: a callback added on the command line
             (`+callbacks.step_clock._target_=benchmarks.scale.step_clock`) prints the wall clock at steps 1, 10,
             20, ... (Lightning logs no line at the first step, and its Rich progress bar draws nothing when not on
             a terminal); the set-up check's own log line gives its time. RSS and private memory (USS) of the main
             process and each loader worker are sampled from /proc (psutil) while it runs
  cache      the feature cache built for the first `--cache-studies` training studies in float32 and float16
             (images/s, bytes on disk), then training steps reading it vs encoding images (steps/s); both
             extrapolated to the full split
  score      NLG + CheXpert scores of the 3,858 test studies (`score_records`)

Figures are written to `benchmarks/results/scale.json` with the machine's load (`os.getloadavg`) before and after:
another job on the machine slows every timing.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MIMIC = (270_790, 2_130, 3_858)  # R2Gen's MIMIC-CXR train / val / test studies
MIMIC_TRAIN_IMAGES = 368_960
SMALL = ["encoder=resnet10t", "lm=tiny", "align=shallow", "data.image_size=64", "data.batch_size=16",
         "data.eval_batch_size=64"]
MB = 2**20


# ------------------------------------------------------------------------------------------------------- the tree
def write_sources(folder: Path) -> dict[str, list[str]]:
    """Small real-format files every image links to: NIH JPEGs (copied), PNGs and DICOMs made from some of them."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    nih = sorted((SHARED / "nih_cxr14_sample" / "images").glob("*.jpg"))
    if not nih:
        sys.exit(f"no NIH images under {SHARED / 'nih_cxr14_sample' / 'images'}: this benchmark needs ../shared/data")
    folder.mkdir(parents=True)
    out: dict[str, list[str]] = {"jpg": [], "png": [], "dcm": []}
    for i, src in enumerate(nih):
        dst = folder / f"{i:04d}.jpg"
        shutil.copyfile(src, dst)  # our own copy: 370k links must not pile onto the shared files' inodes
        out["jpg"].append(str(dst))
    for i, src in enumerate(nih[:48]):
        dst = folder / f"{i:04d}.png"
        Image.open(src).convert("L").save(dst)
        out["png"].append(str(dst))
    for i, src in enumerate(nih[48:56]):
        pixels = (np.asarray(Image.open(src).convert("L"), dtype=np.uint16) * 16)  # 12-bit range
        meta = FileMetaDataset()
        meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CR", "anon"
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        dst = folder / f"{i:04d}.dcm"
        ds.save_as(dst, enforce_file_format=True)
        out["dcm"].append(str(dst))
    return out


def write_tree(root: Path, sizes: tuple[int, ...], seed: int = 0) -> dict:
    """annotation.json + images/ under `root` (see the module docstring); returns counts."""
    rng = random.Random(seed)
    sources = write_sources(root / "sources")
    iu = json.loads((SHARED / "iu_xray" / "annotation.json").read_text())
    reports = [e["report"] for s in ("train", "val", "test") for e in iu[s] if e["report"].strip()]
    images = root / "images"
    ann: dict[str, list] = {}
    n_images, made_dirs, study = 0, set(), 50_000_000
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        ann[split] = []
        for _ in range(n):
            study += 1
            subject = 10_000_000 + study // 4  # ~4 studies per patient, as MIMIC-CXR
            folder = f"p{subject // 1_000_000}/p{subject}"
            if folder not in made_dirs:
                (images / folder).mkdir(parents=True, exist_ok=True)
                made_dirs.add(folder)
            paths, ids = [], []
            for _ in range(1 if rng.random() < 0.64 else 2):
                dicom = "-".join(f"{rng.getrandbits(32):08x}" for _ in range(5))
                kind = rng.choices(("jpg", "png", "dcm"), (96, 3, 1))[0]
                rel = f"{folder}/s{study}-{dicom}.{kind}"
                os.link(rng.choice(sources[kind]), images / rel)
                paths.append(rel)
                ids.append(dicom)
            report = " ".join(rng.sample(reports, 1 if rng.random() < 0.5 else 2))
            ann[split].append({"id": ids[0], "study_id": study, "subject_id": subject, "report": report, "image_path": paths,
                               "split": split})
            n_images += len(paths)
    (root / "annotation.json").write_text(json.dumps(ann))
    return {"studies": {s: len(v) for s, v in ann.items()}, "images": n_images,
            "train_images": sum(len(e["image_path"]) for e in ann["train"]), "folders": len(made_dirs),
            "annotation_mb": (root / "annotation.json").stat().st_size / MB,
            "source_files": sum(map(len, sources.values()))}


# ------------------------------------------------------------------------------------------------------ helpers
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid` in bytes, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def self_peak_mb() -> float:
    return proc_status(os.getpid())["VmHWM"] / MB


def self_rss_mb() -> float:
    return proc_status(os.getpid())["VmRSS"] / MB


def data_cfg(tree: Path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "r2gen" / "conf" / "data" / "mimic_cxr.yaml")
    cfg.root = str(tree)
    return cfg


def python_size(studies: list[dict]) -> int:
    """Bytes of the Python objects holding `studies` (dicts, their strings and lists; ints shared or small)."""
    size = 0
    for e in studies:
        size += sys.getsizeof(e) + sum(sys.getsizeof(v) for v in e.values())
        size += sum(sys.getsizeof(p) for p in e["image_path"])
    return size


def touch_in_fork(studies, freeze: bool) -> dict[str, float]:
    """MB a forked process (as a DataLoader worker is) makes private by reading every study once (`read`: the
    copy-on-access cost per worker once an epoch has touched every study), then by a full pass of the cyclic GC
    (`gc`: it writes a header of every tracked object in the process, the studies' dicts and all else, unless
    `freeze`: r2gen's worker_init calls `gc.freeze()` first, so inherited objects are never scanned)."""
    import psutil

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read every study as StudyDataset.__getitem__ would, then a full GC pass
        os.close(r)
        if freeze:
            gc.freeze()
        uss = [psutil.Process().memory_full_info().uss]
        n = 0
        for e in studies:
            n += len(e["id"]) + len(e["image_path"][0]) + len(e["report"])
        uss.append(psutil.Process().memory_full_info().uss)
        gc.collect()
        uss.append(psutil.Process().memory_full_info().uss)
        os.write(w, json.dumps(uss).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        uss = json.loads(f.read())
    os.waitpid(pid, 0)
    return {"read": (uss[1] - uss[0]) / MB, "gc": (uss[2] - uss[1]) / MB}


# ------------------------------------------------------------------------------------------ child: the datasets
def measure_datasets(tree: Path, cache: Path) -> dict:
    from r2gen.data.annotations import read_studies
    from r2gen.data.checks import check_studies
    from r2gen.data.clean import get_cleaner
    from r2gen.data.datamodule import SPLITS, StudyDataset
    from r2gen.data.transform import image_transform

    cfg = data_cfg(tree)
    clean = get_cleaner(cfg.clean)
    out: dict = {"rss_start_mb": self_rss_mb()}
    t = time.perf_counter()
    ann = read_studies(cfg)
    out["read_annotation_s"] = time.perf_counter() - t
    out["rss_after_read_mb"] = self_rss_mb()
    manifest = cache / "setup-check"
    for run in ("first", "second"):
        t = time.perf_counter()
        checked = check_studies(ann, Path(cfg.image_dir), clean, "error", str(cfg.annotation), manifest_dir=manifest)
        out[f"setup_check_{run}_s"] = time.perf_counter() - t
    out["manifest_mb"] = sum(p.stat().st_size for p in manifest.glob("*.npz")) / MB
    t = time.perf_counter()
    tf = image_transform(64, (0.5,) * 3, (0.5,) * 3, augment=False)
    splits = {s: StudyDataset(checked[s], Path(cfg.image_dir), tf, cfg.num_views, clean) for s in SPLITS}
    out["pack_s"] = time.perf_counter() - t
    out["datasets_s"] = out["read_annotation_s"] + out["setup_check_second_s"] + out["pack_s"]
    out["studies_as_dicts_mb"] = sum(python_size(checked[s]) for s in SPLITS) / MB
    out["studies_packed_mb"] = sum(splits[s].table.nbytes() for s in SPLITS) / MB
    # a forked worker reading every training study: with the dicts StudyDataset used to hold (alive, as they were
    # then), and packed once the dicts are gone (as now, after set-up)
    as_dicts = [dict(e, report=clean(e["report"])) for e in checked["train"]]
    touched = {"dicts (before)": touch_in_fork(as_dicts, freeze=False)}
    del ann, checked, as_dicts
    gc.collect()
    touched["packed, no gc.freeze"] = touch_in_fork(splits["train"].entries, freeze=False)
    touched["packed + gc.freeze (now)"] = touch_in_fork(splits["train"].entries, freeze=True)
    out["worker_private_after_touching_all_train_studies_mb"] = touched
    out["rss_datasets_mb"] = self_rss_mb()
    out["peak_rss_mb"] = self_peak_mb()
    return out


# ------------------------------------------------------------------------------------------ train.py, watched
CLOCK = re.compile(r"^R2GEN-CLOCK (\w+) (\d+) ([\d.]+)$")
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[\w.]+\]\[\w+\] - (.*)$")
# where the start-up time goes: the first log line starting with each of these, seconds from the launch
MILESTONES = {"Seed set": "config_composed_s", "parameters:": "model_built_s", "set-up check: opening": "check_start_s",
              "set-up check: ": "check_done_s", "Loading `train_dataloader`": "datasets_ready_s"}


def step_clock():
    """A Lightning callback (built by Hydra from `+callbacks.step_clock._target_=benchmarks.scale.step_clock`) that
    prints `R2GEN-CLOCK <event> <step> <unix time>` when training starts and at steps 1, 10, 20, ..."""
    import pytorch_lightning as pl

    class StepClock(pl.Callback):
        def on_train_start(self, trainer, *a) -> None:
            print(f"R2GEN-CLOCK start 0 {time.time()}", flush=True)

        def on_train_batch_end(self, trainer, *a) -> None:
            step = trainer.global_step
            if step == 1 or step % 10 == 0:
                print(f"R2GEN-CLOCK step {step} {time.time()}", flush=True)

    return StepClock()


def watch_train(name: str, tree: Path, cache: Path, work: Path, workers: int, steps: int) -> dict:
    """`python train.py data=mimic_cxr ...` in a fresh process: time to its first training step, memory over time."""
    import psutil

    cmd = [sys.executable, "train.py", "data=mimic_cxr", f"data.root={tree}", *SMALL, "data.feature_cache=off",
           f"data.num_workers={workers}", f"+trainer.max_steps={steps}", "trainer.accelerator=cpu",
           "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=true",
           "trainer.log_every_n_steps=50", "test_after_fit=false", "~callbacks.best_checkpoint", "~logger.tensorboard",
           "+callbacks.step_clock._target_=benchmarks.scale.step_clock",
           f"paths.cache_dir={cache}", f"hydra.run.dir={work / 'runs' / name}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0, wall0 = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    events: dict[str, float] = {}
    log: list[str] = []
    mem = {"main_peak_rss": 0, "workers": {}}  # worker pid -> {peak_rss, uss series}

    def read() -> None:
        buf = b""
        while chunk := proc.stdout.read1(65536):
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for p in parts:
                text = p.decode(errors="replace")
                log.append(text)
                m = CLOCK.match(text)
                if m:
                    event, step, at = m.group(1), int(m.group(2)), float(m.group(3)) - wall0
                    if event == "start":
                        events["train_start_s"] = at
                    elif step == 1:
                        events["first_step_s"] = at
                    else:
                        events["last_step"], events["last_step_s"] = step, at
                    continue
                m = LOG_LINE.match(text)
                if m:
                    at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall0
                    msg = m.group(2)
                    key = next((k for prefix, k in MILESTONES.items() if msg.startswith(prefix)), None)
                    if key == "check_done_s" and " opened " not in msg:
                        key = None
                    if key:
                        events.setdefault(key, at)
                    if key == "check_done_s":
                        events["setup_check_log"] = msg
                        events["setup_check_s"] = float(msg.rsplit(" in ", 1)[-1].split()[0])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    main = psutil.Process(proc.pid)
    last_uss = 0.0
    while proc.poll() is None:
        now = time.perf_counter()
        try:
            mem["main_peak_rss"] = max(mem["main_peak_rss"], proc_status(proc.pid).get("VmHWM", 0))
            for child in main.children(recursive=True):
                if child.cmdline() != main.cmdline():  # not a loader worker (git, for the provenance file)
                    continue
                w = mem["workers"].setdefault(child.pid, {"peak_rss": 0, "uss": []})
                w["peak_rss"] = max(w["peak_rss"], proc_status(child.pid).get("VmHWM", 0))
                if now - last_uss > 1.0:  # smaps is slow to read: once a second
                    info = child.memory_full_info()
                    w["uss"].append((round(now - t0, 1), events.get("last_step", 0), info.uss, info.pss))
            if now - last_uss > 1.0:
                last_uss = now
        except (psutil.Error, OSError):  # a process that just ended
            pass
        time.sleep(0.2)
    reader.join(timeout=10)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"train.py ({name}) failed:\n" + "\n".join(log[-40:]))
    workers = [w for w in mem["workers"].values() if w["uss"]]
    out = {"num_workers": len(workers), "wall_s": wall, "steps": steps, **events,
           "main_peak_rss_mb": mem["main_peak_rss"] / MB, "load_after": os.getloadavg()}
    if workers:
        out["worker_peak_rss_mb"] = [w["peak_rss"] / MB for w in workers]
        out["worker_uss_first_mb"] = [w["uss"][0][2] / MB for w in workers]
        out["worker_uss_last_mb"] = [w["uss"][-1][2] / MB for w in workers]
        out["worker_pss_last_mb"] = [w["uss"][-1][3] / MB for w in workers]
        out["worker_uss_series"] = [[(t, step, round(u / MB, 1)) for t, step, u, _ in w["uss"]] for w in workers]
    if "first_step_s" in events and "last_step_s" in events:
        out["steps_per_s"] = (events["last_step"] - 1) / (events["last_step_s"] - events["first_step_s"])
    return out


# ---------------------------------------------------------------------------------- child: the feature cache
def measure_cache(tree: Path, cache: Path, work: Path, n_studies: int, steps: int, warmup: int = 3) -> dict:
    import numpy as np
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir

    from r2gen import build
    from r2gen.data.datamodule import StudyDataset
    from r2gen.data.feature_cache import FeatureCache

    with initialize_config_dir(config_dir=str(ROOT / "r2gen" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data=mimic_cxr", f"data.root={tree}", *SMALL, "data.num_workers=2",
                                           f"paths.cache_dir={cache}", f"paths.output_dir={work / 'runs' / 'cache'}"])
    pl.seed_everything(cfg.seed)
    model = build.model(cfg)
    dm = build.datamodule(cfg, model)
    dm.setup()
    full = dm.splits["train"]
    sub = StudyDataset(full.entries[:n_studies], full.image_dir, full.transform, full.num_views, lambda r: r)
    out: dict = {"studies": len(sub), "num_workers": cfg.data.num_workers, "batch_size": cfg.data.eval_batch_size}
    for dtype in ("float32", "float16"):
        fc = FeatureCache(model.encoder, work / "features", cfg.data.eval_batch_size, cfg.data.num_workers, dtype)
        t = time.perf_counter()
        ds = fc.dataset("train", sub)
        secs = time.perf_counter() - t
        arr = np.load(ds.path, mmap_mode="r")
        out[dtype] = {"images": fc.encoded_images, "build_s": secs, "images_per_s": fc.encoded_images / secs,
                      "bytes_on_disk": ds.path.stat().st_blocks * 512, "bytes_per_image": arr[0].nbytes,
                      "shape": list(arr.shape)}
        dm.features = fc  # the float16 one stays for the steps below

    ends: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_end(self, *a) -> None:
            ends.append(time.perf_counter())

        def on_train_epoch_start(self, *a) -> None:
            ends.append(time.perf_counter())

    dm.splits["train"] = sub
    for label, features in (("cached float16", dm.features), ("images (no cache)", None)):
        dm.features = features
        ends.clear()
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=warmup + steps,
                             limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, logger=False,
                             enable_checkpointing=False, enable_model_summary=False, callbacks=[Timer()],
                             default_root_dir=str(work / "runs" / "cache"))
        trainer.fit(model, train_dataloaders=dm.train_dataloader())
        step = statistics.median([b - a for a, b in zip(ends[:-1], ends[1:], strict=True)][warmup:])
        out[f"steps_{label}"] = {"step_s": step, "steps_per_s": 1 / step, "batch_size": cfg.data.batch_size,
                                 "steps": steps}
    out["full_size_jpeg"] = decode_full_size(work)
    out["peak_rss_mb"] = self_peak_mb()
    return out


def decode_full_size(work: Path, reps: int = 20) -> dict:
    """ms per image for one CPU core to load and transform a MIMIC-CXR-JPG-sized JPEG (2,544 x 3,056 px, ~2 MB:
    an NIH image upsampled, with noise so it compresses like a real one) to 224 px: what bounds building a
    Swin-B cache on a GPU machine."""
    import numpy as np
    from PIL import Image

    from r2gen.data.images import load_image
    from r2gen.data.transform import image_transform

    src = sorted((SHARED / "nih_cxr14_sample" / "images").glob("*.jpg"))[0]
    big = np.asarray(Image.open(src).convert("L").resize((2544, 3056), Image.BICUBIC), dtype=np.float32)
    big += np.random.default_rng(0).normal(0, 2.5, big.shape)
    path = work / "full_size.jpg"
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=95)
    tf = image_transform(224, (0.5,) * 3, (0.5,) * 3, augment=False)
    tf(load_image(path))
    t = time.perf_counter()
    for _ in range(reps):
        tf(load_image(path))
    return {"pixels": [2544, 3056], "bytes": path.stat().st_size, "ms_per_image": (time.perf_counter() - t) / reps * 1e3}


# --------------------------------------------------------------------------------------------- child: scoring
def measure_score(tree: Path) -> dict:
    from omegaconf import OmegaConf

    from r2gen.data.annotations import read_studies
    from r2gen.data.clean import get_cleaner
    from r2gen.scoring import close_meteor
    from r2gen.scoring.policy import Scoring, score_records

    dcfg = data_cfg(tree)
    clean = get_cleaner(dcfg.clean)
    refs = [clean(e["report"]) for e in read_studies(dcfg)["test"]]
    preds = refs[1:] + refs[:1]  # each study gets the next study's reference: realistic text that mostly disagrees
    cfg = OmegaConf.create({"data": OmegaConf.to_container(dcfg), "eval": OmegaConf.load(
        ROOT / "r2gen" / "conf" / "config.yaml").eval, "monitor": {"weights": {"Bleu_4": 0.5, "CIDEr": 0.5}}})
    scoring = Scoring.from_config(cfg)
    records = scoring.prepare([{"id": str(i), "prediction": p, "reference": r}
                               for i, (p, r) in enumerate(zip(preds, refs, strict=True))])
    t = time.perf_counter()
    scores = score_records(records, scoring)
    secs = time.perf_counter() - t
    close_meteor()
    return {"reports": len(records), "score_records_s": secs, "labeler": scoring.labeler,
            "scores": {k: scores[k] for k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr") if k in scores}}


# ------------------------------------------------------------------------------------------------------- driver
def child(what: str, args) -> dict:
    """Run `--one what` in a fresh process: its memory is its own."""
    cmd = [sys.executable, __file__, "--one", what, "--workdir", str(args.work), "--cache-studies",
           str(args.cache_studies), "--steps", str(args.steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        sys.exit(f"{what} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(line[0][7:])


def estimate() -> dict:
    """A full MIMIC-CXR shallow run on one GPU, on paper (every assumption is listed with it)."""
    n_cached = sum(MIMIC)  # data.num_views=1: each study's first image is cached
    swin_b = 49 * 1024  # floats per image: Swin-B at 224 px
    return {
        "images_cached_num_views_1": n_cached,
        "swin_b_224_cache_gb": {"float32": n_cached * swin_b * 4 / 1e9, "float16": n_cached * swin_b * 2 / 1e9},
        "swin_b_224_cache_gb_all_images": {"float32": MIMIC_TRAIN_IMAGES * swin_b * 4 / 1e9,
                                           "float16": MIMIC_TRAIN_IMAGES * swin_b * 2 / 1e9},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", default=",".join(map(str, MIMIC)), help="train,val,test studies in the tree")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary tree goes (default: $TMPDIR)")
    ap.add_argument("--steps", type=int, default=40, help="training steps per train.py run and cache step timing")
    ap.add_argument("--cache-studies", type=int, default=4000, help="training studies the feature cache is built for")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (OMP_NUM_THREADS): on a "
                    "shared machine two spinning OpenMP threads per process can make a step 10-20x slower")
    ap.add_argument("--keep", action="store_true", help="keep the temporary tree (printed) instead of deleting it")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement in a child process
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # every child inherits it
    if args.one:
        args.work = args.workdir
        tree, cache = args.work / "tree", args.work / "cache-datasets"
        result = {"datasets": lambda: measure_datasets(tree, cache),
                  "cache": lambda: measure_cache(tree, args.work / "cache-train", args.work, args.cache_studies,
                                                 max(args.steps // 4, 5)),
                  "score": lambda: measure_score(tree)}[args.one]()
        print("RESULT " + json.dumps({**result, "load_after": os.getloadavg()}))
        return

    args.work = Path(tempfile.mkdtemp(prefix="r2gen-scale-", dir=args.workdir))
    sizes = tuple(int(x) for x in args.studies.split(","))
    res: dict = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
                 "settings": {"overrides": SMALL, "steps": args.steps, "cache_studies": args.cache_studies,
                              "torch_threads": args.threads}}
    t_all = time.perf_counter()
    try:
        t = time.perf_counter()
        res["tree"] = write_tree(args.work / "tree", sizes)
        res["tree"]["write_s"] = time.perf_counter() - t
        print(f"tree: {res['tree']}", file=sys.stderr)
        res["datasets"] = child("datasets", args)
        print(f"datasets: {res['datasets']}", file=sys.stderr)
        tree, cache = args.work / "tree", args.work / "cache-train"
        res["train"] = {}
        for name, workers in (("first run", 0), ("second run", 0), ("second run, 2 workers", 2)):
            res["train"][name] = watch_train(name.replace(" ", "-").replace(",", ""), tree, cache, args.work,
                                             workers, args.steps)
            print(f"train.py {name}: " + json.dumps({k: v for k, v in res["train"][name].items()
                                                     if k != "worker_uss_series"}), file=sys.stderr)
        res["cache"] = child("cache", args)
        print(f"cache: {res['cache']}", file=sys.stderr)
        res["score"] = child("score", args)
        print(f"score: {res['score']}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept: {args.work}", file=sys.stderr)
        else:
            shutil.rmtree(args.work, ignore_errors=True)
    res["machine"]["load_after"] = os.getloadavg()
    res["total_s"] = time.perf_counter() - t_all
    res["extrapolated"] = extrapolate(res, sizes)
    res["estimate"] = estimate()
    report(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    print(f"written: {args.json}")


def extrapolate(res: dict, sizes: tuple[int, ...]) -> dict:
    """The cache subset's figures scaled to the full split (stated as such in the README)."""
    c = res["cache"]
    n_cached = sum(sizes)  # num_views=1: one cached image per study
    steps_epoch = math.ceil(sizes[0] / c["steps_cached float16"]["batch_size"])
    return {
        "cache_images_full": n_cached,
        "cache_build_full_s": n_cached / c["float16"]["images_per_s"],
        "cache_gb_full": {d: n_cached * c[d]["bytes_per_image"] / 1e9 for d in ("float32", "float16")},
        "steps_per_epoch": steps_epoch,
        "epoch_cached_s": steps_epoch / c["steps_cached float16"]["steps_per_s"],
        "epoch_images_s": steps_epoch / c["steps_images (no cache)"]["steps_per_s"],
    }


def report(res: dict) -> None:
    d, t, c, x = res["datasets"], res["train"], res["cache"], res["extrapolated"]
    print(f"\nMIMIC-CXR-sized tree: {res['tree']['studies']} studies, {res['tree']['images']:,} images "
          f"({res['tree']['annotation_mb']:.0f} MB annotation.json); load {res['machine']['load_before']}")
    print(f"read annotation {d['read_annotation_s']:.1f} s; set-up check first {d['setup_check_first_s']:.1f} s, "
          f"second {d['setup_check_second_s']:.1f} s; pack {d['pack_s']:.1f} s; studies as dicts "
          f"{d['studies_as_dicts_mb']:.0f} MB, packed {d['studies_packed_mb']:.0f} MB")
    for name, r in t.items():
        w = f", workers peak RSS {[round(v) for v in r['worker_peak_rss_mb']]} MB, USS first/last " \
            f"{[round(v) for v in r['worker_uss_first_mb']]}/{[round(v) for v in r['worker_uss_last_mb']]} MB" \
            if r.get("num_workers") else ""
        print(f"train.py {name}: first step at {r.get('first_step_s', float('nan')):.1f} s, main peak RSS "
              f"{r['main_peak_rss_mb']:.0f} MB{w}")
    print(f"feature cache ({c['studies']} studies): float32 {c['float32']['images_per_s']:.0f} img/s "
          f"{c['float32']['bytes_on_disk'] / MB:.1f} MB, float16 {c['float16']['images_per_s']:.0f} img/s "
          f"{c['float16']['bytes_on_disk'] / MB:.1f} MB; full split {x['cache_gb_full']} GB in "
          f"{x['cache_build_full_s'] / 60:.1f} min")
    print(f"epoch ({x['steps_per_epoch']} steps): cached {x['epoch_cached_s'] / 60:.1f} min, images "
          f"{x['epoch_images_s'] / 60:.1f} min; scoring {res['score']['reports']} reports "
          f"{res['score']['score_records_s']:.1f} s; total {res['total_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
