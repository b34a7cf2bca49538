"""benchmarks/lm_bound.py on its quick shapes: R2GenGPT's computation (PeerR2GenGPT) and r2gen's give the same loss
on the same weights and batch, and the results have the fields the report reads."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("lm_bound", ROOT / "benchmarks" / "lm_bound.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_sides_give_the_same_loss_and_the_results_have_their_fields(tmp_path):
    bench = load_benchmark()
    args = argparse.Namespace(quick=True, steps=1, warmup=1, cache=tmp_path)
    rows = [bench.run_one(side, "llama3-128k", "shallow", args) for side in bench.SIDES]
    for r in rows:
        assert {"loss", "step_s", "peak_mem_mb", "generate_greedy_s", "generate_beam3_s"} <= set(r)
    assert rows[0]["loss_path"] == "report" and rows[0]["vocab_size"] == 128256
    s = bench.summary(rows)["llama3-128k/shallow"]
    assert s["losses_match"], s
    result = {"device": bench.machine(), "quick": True, "steps": 1, "warmup": 1, "rows": rows,
              "summary": {"llama3-128k/shallow": s}}
    json.dumps(result)  # serialisable as the script writes it
    assert "llama3-128k/shallow" in bench.markdown(result)
