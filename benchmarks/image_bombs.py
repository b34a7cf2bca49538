"""Peak memory of `predict.py` on image decompression bombs, against a normal radiograph-sized image.

    python benchmarks/image_bombs.py [--ckpt <run>/checkpoints/last.ckpt] [--json benchmarks/results/image_bombs.json]

Each input is one `predict.py ckpt=... input=<file>` in a fresh process, its peak RSS read from the kernel when it
exits (`os.wait4`). The bombs (tests/helpers/bombs.py): a deflated DICOM of 16384x16384 8-bit (261 KB, 268 MB of
pixels), a 13000x13000 1-bit PNG (20 KB, 169 M pixels) and an RLE DICOM declaring 65535x65535x16 bit (8 GiB,
under 1 KB). The normal image: a 3000x2500 16-bit DICOM (15 MB). Done when each bomb's peak is within a few hundred
MB of the normal image's (it is refused from its header, so it costs less). Without `--ckpt` a tiny demo
checkpoint is trained first (a minute on a CPU) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the bomb builders the tests use

from tests.helpers import bombs  # noqa: E402
from tests.helpers.config import SMALL  # noqa: E402
from tests.helpers.dicom import write_dicom  # noqa: E402


def run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in MB, seconds, its `error:` line) of `python <args>`."""
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    lines = [s for s in err.splitlines() if s.startswith("error: ")] or [s for s in err.splitlines() if s.strip()]
    return p.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start, lines[0] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, help="a checkpoint to predict with (default: train a tiny demo one)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "image_bombs.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="r2gen-bombs-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "R2GEN_CACHE": str(tmp / "cache")}
        ckpt = args.ckpt
        if ckpt is None:
            code, _, secs, last = run([str(ROOT / "train.py"), *SMALL, "test_after_fit=false",
                                       f"hydra.run.dir={tmp / 'run'}"], tmp, env)
            assert code == 0, last
            ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
            print(f"trained a tiny demo checkpoint in {secs:.0f} s")
        pixels = (np.arange(3000 * 2500, dtype=np.uint32) % 4096).astype(np.uint16).reshape(3000, 2500)
        files = {"normal 3000x2500 16-bit DICOM": write_dicom(tmp / "normal.dcm", pixels),
                 "deflated DICOM 16384x16384x8 bit": bombs.deflated_dicom(tmp / "deflated.dcm"),
                 "1-bit PNG 13000x13000": bombs.one_bit_png(tmp / "bomb.png"),
                 "RLE DICOM 65535x65535x16 bit": bombs.rle_dicom(tmp / "rle.dcm")}
        del pixels
        rows = {}
        for name, path in files.items():
            code, rss, secs, last = run([str(ROOT / "predict.py"), f"ckpt={ckpt}", f"input={path}",
                                         "trainer.accelerator=cpu", f"hydra.run.dir={tmp / 'predict' / path.stem}",
                                         f"paths.cache_dir={tmp / 'cache'}"], tmp, env)
            rows[name] = {"file_bytes": path.stat().st_size, "exit": code, "peak_rss_mb": round(rss, 1),
                          "seconds": round(secs, 2), "says": last if code else "report written"}
    normal = rows["normal 3000x2500 16-bit DICOM"]["peak_rss_mb"]
    print(f"\n{'input':34}{'file':>10}{'exit':>6}{'peak RSS':>11}{'vs normal':>11}{'s':>7}")
    for name, r in rows.items():
        r["vs_normal_mb"] = round(r["peak_rss_mb"] - normal, 1)
        print(f"{name:34}{r['file_bytes']:>10,}{r['exit']:>6}{r['peak_rss_mb']:>8.0f} MB{r['vs_normal_mb']:>+8.0f} MB"
              f"{r['seconds']:>7.1f}")
    for name, r in rows.items():
        print(f"  {name}: {r['says'][:300]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"inputs": rows, "python": sys.version.split()[0]}, indent=2) + "\n")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
