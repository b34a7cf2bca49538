"""BERTScore and RadGraph F1 as part of a run's scores (eval.bertscore, eval.radgraph): through the real packages
from tiny random local models, with intervals, recorded in metrics.json's protocol; without them, nothing changes."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from r2gen.errors import ConfigError, MissingFileError
from r2gen.evaluate import evaluate
from r2gen.scoring.bertscore import METRIC_NAMES as BERTSCORE
from r2gen.scoring.bertscore import bertscore_per_study
from r2gen.scoring.policy import Scoring
from r2gen.scoring.radgraph import METRIC_NAMES as RADGRAPH
from r2gen.scoring.radgraph import radgraph_per_study

from .helpers.text_models import REPORTS, bert_folder, radgraph_folder

needs_packages = pytest.mark.skipif(
    importlib.util.find_spec("bert_score") is None or importlib.util.find_spec("radgraph") is None,
    reason='bert-score or radgraph not installed: pip install "r2gen[bertscore,radgraph]"')

ROWS = [{"id": f"s{i}", "prediction": REPORTS[(i * 3) % 5] if i % 4 else REPORTS[i % 5], "reference": REPORTS[i % 5]}
        for i in range(12)]
ROWS[5]["prediction"] = ""  # an empty report is scored as one


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_scores")
    return bert_folder(root / "tiny-bert"), radgraph_folder(root / "tiny-radgraph", entity_label=1)


def _predictions(tmp_path):
    f = tmp_path / "preds.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return f


@needs_packages
def test_evaluate_scores_bertscore_and_radgraph_with_intervals(make_cfg, tmp_path, folders):
    bert, rg = folders
    f = _predictions(tmp_path)
    scores = evaluate(make_cfg(f"predictions={f}", "data=iu_xray", "data.clean=whitespace", f"eval.bertscore={bert}",
                               f"eval.radgraph={rg}", "eval.bootstrap.resamples=200", config_name="evaluate",
                               small=False))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    preds, refs = [r["prediction"] for r in ROWS], [r["reference"] for r in ROWS]
    want = {**bertscore_per_study(preds, refs, bert), **radgraph_per_study(preds, refs, rg)}
    for name in (*BERTSCORE, *RADGRAPH):  # the packages' own per-study numbers, averaged over the studies
        assert m[name] == pytest.approx(sum(want[name]) / len(ROWS), abs=1e-9) and scores[name] == m[name]
        low, high = m["intervals"][name]
        assert low <= m[name] + 1e-12 and m[name] - 1e-12 <= high and math.isfinite(low)
    assert m["RadGraph_F1_simple"] > 0  # the rigged model finds entities: not an all-zero column
    p = m["protocol"]
    assert p["bertscore"]["model"] == "tiny-bert" and p["bertscore"]["layer"] == 2
    assert p["bertscore"]["package"].startswith("bert-score ")
    assert p["radgraph"]["package"].startswith("radgraph ")
    assert "BERTScore_F1" in (tmp_path / "run" / "report.html").read_text()


def test_without_the_folders_the_scores_are_unchanged(make_cfg, tmp_path):
    f = _predictions(tmp_path)
    scores = evaluate(make_cfg(f"predictions={f}", "data=iu_xray", "data.clean=whitespace",
                               "eval.bootstrap.resamples=0", config_name="evaluate", small=False))
    assert not any(k.startswith(("BERTScore", "RadGraph")) for k in scores)
    p = json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"]
    assert "bertscore" not in p and "radgraph" not in p


@needs_packages
def test_a_training_run_scores_them_at_validation_and_test(make_cfg, tmp_path, folders):
    from r2gen.train import train

    bert, rg = folders
    metrics = train(make_cfg(f"eval.bertscore={bert}", f"eval.radgraph={rg}", "eval.bootstrap.resamples=100"))
    assert {f"val/{k}" for k in (*BERTSCORE, *RADGRAPH)} <= set(metrics)
    m = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
    assert all(k in m and k in m["intervals"] for k in (*BERTSCORE, *RADGRAPH))


def test_a_missing_folder_or_package_stops_before_anything_runs(make_cfg, tmp_path, monkeypatch):
    f = _predictions(tmp_path)
    cfg = make_cfg(f"predictions={f}", "data=iu_xray", f"eval.bertscore={tmp_path / 'nowhere'}",
                   config_name="evaluate", small=False)
    if importlib.util.find_spec("bert_score") is not None:
        with pytest.raises(MissingFileError, match=r"eval.bertscore=.*nowhere: no config.json there"):
            evaluate(cfg)
        assert not (tmp_path / "run" / "metrics.json").exists()
    monkeypatch.setitem(sys.modules, "bert_score", None)  # as when the extra is not installed
    with pytest.raises(ConfigError, match=r'eval\.bertscore needs the bert-score package .*r2gen\[bertscore\]'):
        Scoring.from_config(cfg)
    monkeypatch.setitem(sys.modules, "radgraph", None)
    cfg = make_cfg(f"predictions={f}", "data=iu_xray", f"eval.radgraph={tmp_path}", config_name="evaluate",
                   small=False)
    with pytest.raises(ConfigError, match=r'eval\.radgraph needs the radgraph package .*r2gen\[radgraph\]'):
        Scoring.from_config(cfg)
