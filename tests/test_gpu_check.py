"""benchmarks/gpu_check.py on a machine without CUDA: the CUDA cases are skipped with the reason, the CPU cases run,
the JSON and the table are written, and the exit status is 0."""

import json
import os
import subprocess
import sys

import pytest

from .helpers.paths import ROOT

CUDA_CASES = {"bf16", "qlora-4bit", "qlora-8bit", "sdpa", "flash-attn-2"}
CPU_CASES = {"fp32", "beam-generate"}  # of the CPU cases, two: the script's own machinery, not the full check


@pytest.mark.slow  # one process per case: ~1 minute on a 2-core CPU (all cases, the resume one included: ~4)
def test_gpu_check_quick_on_the_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU-only fallback")
    out = tmp_path / "gpu_check"
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--quick", "--out", str(out), "--budget", "1200",
                        "--cases", ",".join(sorted(CUDA_CASES | CPU_CASES)),
                        "--timeout", "600"], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    cases = {c["case"]: c for c in report["cases"]}
    assert set(cases) == CUDA_CASES | CPU_CASES
    for name in CUDA_CASES:
        assert cases[name]["status"] == "skipped" and "CUDA" in cases[name]["reason"], cases[name]
    for name in CPU_CASES:
        assert cases[name]["status"] == "ok", cases[name]
    assert cases["beam-generate"]["s_per_study"] > 0
    assert report["device"].startswith("CPU") and report["torch"] and report["transformers"]
    table = out.with_suffix(".md").read_text()
    assert "| case | status |" in table and all(f"| {name} |" in table for name in cases)
