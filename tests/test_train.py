"""End to end through the public entry points: train -> checkpoints -> evaluate.py in a fresh process -> resume."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from r2gen.scoring import METRIC_NAMES
from r2gen.train import train

from .helpers.cli import run_cli
from .helpers.config import SMALL, compose_cfg
from .helpers.files import read_jsonl
from .helpers.page import parse_page

pytestmark = pytest.mark.slow  # multi-epoch runs and fresh evaluate.py processes


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """One tiny run, shared by the tests below: 2 epochs on a few dozen demo studies."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg("config", SMALL + ["trainer.max_epochs=2"], out, cache_dir)
    metrics = train(cfg)
    return cfg, out, metrics


def test_run_folder_holds_what_a_user_expects(trained):
    cfg, out, metrics = trained
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "config.yaml").is_file()
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(r.get("val/score") for r in rows)
    # the test split was scored after training, with every metric present and finite
    m = json.loads((out / "test" / "metrics.json").read_text())
    for k in METRIC_NAMES:
        assert math.isfinite(m[k]), k
    assert m["split"] == "test" and m["n_studies"] == cfg.data.demo.n_test
    preds = read_jsonl(out / "test" / "predictions.jsonl")
    assert len(preds) == cfg.data.demo.n_test and len({p["id"] for p in preds}) == len(preds)
    assert set(preds[0]) == {"id", "prediction", "reference"}


def test_checkpoint_holds_trainable_weights_and_config(trained):
    _, out, _ = trained
    ck = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)  # plain data only
    assert ck["r2gen"]["config"]["data"]["annotation"] == "${.root}/annotation.json"  # kept with interpolations
    assert set(ck["state_dict"]) == set(ck["r2gen"]["keys"])
    assert ck["hyper_parameters"]["cfg"]["lm"]["name_or_path"]  # enough config to rebuild the rest


def test_evaluate_in_fresh_process_matches_training_test_scores(trained, tmp_path, cache_dir):
    _, out, _ = trained
    ev = tmp_path / "eval"
    r = run_cli("evaluate.py", f"ckpt={out}/checkpoints/best.ckpt", f"hydra.run.dir={ev}",
                "trainer.enable_progress_bar=false", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((ev / "metrics.json").read_text())
    first = json.loads((out / "test" / "metrics.json").read_text())
    for k in METRIC_NAMES:  # same weights, same greedy-deterministic beam search: same corpus, same scores
        assert m[k] == pytest.approx(first[k], abs=1e-9), k
    assert m["generate"]["num_beams"] == 2 and m["split"] == "test"
    assert len(read_jsonl(ev / "predictions.jsonl")) == m["n_studies"]
    assert "Bleu_4" in r.stdout and "CIDEr" in r.stdout  # the table a user reads
    assert "per label" in r.stdout and "f1" in r.stdout  # the demo labeler's per-finding F1
    assert m["references"] == first["references"] == "full" and m["labeler"] == "demo"
    page = parse_page((ev / "report.html").read_text())  # the viewer: one row per study, thumbnails embedded
    assert page.rows == m["n_studies"] and len(page.srcs) == 2 * m["n_studies"]


def test_evaluate_overrides_generate_from_command_line(trained, tmp_path, cache_dir):
    _, out, _ = trained
    ev = tmp_path / "eval"
    r = run_cli("evaluate.py", f"ckpt={out}/checkpoints/last.ckpt", f"hydra.run.dir={ev}", "generate=greedy",
                "generate.max_new_tokens=3", "split=val", "trainer.enable_progress_bar=false",
                "eval.references=truncated", "data.max_report_tokens=6", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((ev / "metrics.json").read_text())
    assert m["generate"]["num_beams"] == 1 and m["generate"]["max_new_tokens"] == 3 and m["split"] == "val"
    preds = read_jsonl(ev / "predictions.jsonl")
    assert len(preds) == 6
    # R2Gen's reference protocol: scored against the first max_report_tokens - 1 words of each reference
    assert m["references"] == "truncated(5)" and all(len(p["reference"].split()) == 5 for p in preds)


def test_resume_continues_from_last_checkpoint(trained, make_cfg):
    _, out, _ = trained
    last = out / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=False)
    cfg = make_cfg(f"ckpt_path={last}", "trainer.max_epochs=3", "test_after_fit=false")
    train(cfg)
    after = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    steps_per_epoch = before["global_step"] // 2
    assert before["epoch"] == 1 and after["epoch"] == 2
    assert after["global_step"] == before["global_step"] + steps_per_epoch  # one more epoch, not three


@pytest.mark.parametrize("args,message", [
    (["ckpt=/no/such/file.ckpt"], "ckpt=/no/such/file.ckpt: no such file"),
    ([], "ckpt is not set"),
])
def test_evaluate_bad_checkpoint_is_one_clear_line(tmp_path, cache_dir, args, message):
    r = run_cli("evaluate.py", *args, f"hydra.run.dir={tmp_path}", cache_dir=cache_dir)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_evaluate_rejects_a_foreign_checkpoint(tmp_path, cache_dir):
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    r = run_cli("evaluate.py", f"ckpt={foreign}", f"hydra.run.dir={tmp_path / 'ev'}", cache_dir=cache_dir)
    assert r.returncode == 2 and "not an r2gen checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_unknown_config_choice_names_the_options(tmp_path, cache_dir):
    r = run_cli("train.py", "lm=no_such_lm", f"hydra.run.dir={tmp_path}", cache_dir=cache_dir)
    assert r.returncode != 0
    assert "lm/no_such_lm" in r.stderr and "tiny" in r.stderr  # Hydra lists the available options
