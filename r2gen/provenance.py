"""What reproduces a run, written into its folder as `provenance.json`: the seed, the r2gen version and git commit
(and whether the working tree had uncommitted changes), Python, the platform and device, the versions of the
libraries that decide the numbers, and a sha256 of each annotation file read.

Same seed, same commit, same versions and same annotation hash on the same kind of machine give the same run;
across machines (CPU model, BLAS, GPU) floating-point results differ in the last bits and scores can move a little.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from r2gen import __version__

LIBRARIES = ("torch", "torchvision", "transformers", "tokenizers", "timm", "peft", "pytorch-lightning", "hydra-core",
             "numpy", "pycocoevalcap", "bitsandbytes", "safetensors", "pydicom", "pillow")
PACKAGE_DIR = Path(__file__).resolve().parent


def git_state(folder: Path = PACKAGE_DIR) -> dict[str, Any]:
    """The commit r2gen runs from and whether tracked files differ from it; nulls outside a git checkout (a wheel)."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):  # no git on this machine
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def annotation_files(data: DictConfig) -> list[Path]:
    """The annotation file(s) a data config reads: one per split when a `<split>_file` is set, else `annotation`,
    else (an official layout, data.format=mimic_cxr_jpg ...) its `layout_files`; and the R2Gen annotation whose
    splits an official layout may take (`r2gen_annotation`, data=openi)."""
    if any(data.get(f"{s}_file") for s in ("train", "val", "test")):  # an evaluation may have only test_file
        files = [data.get(f"{s}_file") for s in ("train", "val", "test")]
    elif data.get("annotation") is not None:
        files = [data.get("annotation")]
    else:
        files = layout_files(data)
    files.append(data.get("r2gen_annotation"))
    return [Path(str(f)).expanduser() for f in files if f]


def layout_files(data: DictConfig) -> list:
    """What an official layout's reader reads besides images: its `data.*_file` tables and `data.reports` (a file or
    a folder), in the config's order."""
    return [data.get(k) for k in data if (str(k).endswith("_file") or k == "reports") and data.get(k)]


def device() -> str:
    """The machine that computes: the CUDA device's name, or the CPU's model (Linux's /proc/cpuinfo) and threads."""
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(cfg: DictConfig, **extra: Any) -> dict[str, Any]:
    """What reproduces a run of `cfg` (see the module docstring); `extra` is added as given (e.g. the checkpoint)."""
    return {
        "seed": cfg.get("seed"),
        "r2gen": {"version": __version__, **git_state()},
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device(),
        "libraries": versions(),
        "annotation_sha256": {str(p): sha256(p) for p in annotation_files(cfg.data) if p.is_file()},
        **extra,
    }


def write_provenance(out_dir: Path, cfg: DictConfig, **extra: Any) -> Path:
    """`out_dir/provenance.json`. A run resumed in the same folder keeps the first record and adds one per resume
    under "resumed" (the code or libraries may have changed in between)."""
    path = Path(out_dir) / "provenance.json"
    record = provenance(cfg, **extra)
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:  # a damaged file is replaced, not a reason to stop a run
        earlier = None
    if isinstance(earlier, dict) and cfg.get("ckpt_path"):
        record = {**earlier, "resumed": [*earlier.get("resumed", []), record]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path
