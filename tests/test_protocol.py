"""The protocol in metrics.json: what was scored and how, and the named protocols (conf/protocol/) with the keys a
run changed of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2gen.errors import ConfigError
from r2gen.evaluate import evaluate
from r2gen.scoring.policy import Scoring
from r2gen.scoring.protocol import deviations, fixed_by, names, protocol


def test_every_shipped_protocol_composes_and_follows_itself(make_cfg):
    assert names() == ["r2gengpt_iu_xray", "r2gengpt_mimic_cxr", "rexrank_mimic_cxr"]
    for name in names():
        cfg = make_cfg(f"protocol={name}", small=False)
        assert cfg.eval.protocol == name and deviations(cfg, name) == {}
        assert fixed_by(name)["data.name"] == cfg.data.name
        p = protocol(cfg, Scoring.from_config(cfg), "test")
        assert p["name"] == name and p["deviations"] == {} and p["clean"] == cfg.data.clean
    rex = make_cfg("protocol=rexrank_mimic_cxr", small=False)
    p = protocol(rex, Scoring.from_config(rex), "test")
    assert p["layout"] == "mimic_cxr_jpg" and p["release"] == "2.0.0" and p["target"] == "findings"
    assert p["split"]["scheme"].startswith("official") and p["labeler"] == "chexpert"
    assert p["uncertain"] == "negative"
    assert p["images"] == {"views": ["PA", "AP", "LATERAL", "LL"], "per_study": 1,
                           "chosen": "the first in that order (frontal first)"}


def test_a_run_that_changes_a_protocol_key_is_listed_not_claimed(make_cfg, caplog):
    cfg = make_cfg("protocol=rexrank_mimic_cxr", "data.target=impression", "eval.ce_uncertain=positive", small=False)
    with caplog.at_level("WARNING"):
        p = protocol(cfg, Scoring.from_config(cfg), "test")
    assert p["deviations"] == {"data.target": {"protocol": "findings", "run": "impression"},
                               "eval.ce_uncertain": {"protocol": "negative", "run": "positive"}}
    assert "protocol=rexrank_mimic_cxr" in caplog.text and "data.target" in caplog.text
    other = make_cfg("protocol=r2gengpt_iu_xray", "data=openi", small=False)  # the command line's data set wins
    assert deviations(other, "r2gengpt_iu_xray")["data.name"] == {"protocol": "iu_xray", "run": "openi"}


def test_an_unknown_protocol_is_one_line_before_anything_runs(make_cfg):
    cfg = make_cfg("eval.protocol=rexrank", small=False)
    with pytest.raises(ConfigError, match=r"eval.protocol='rexrank': no such protocol; choose protocol=<name> "
                                          r"with one of r2gengpt_iu_xray, r2gengpt_mimic_cxr, rexrank_mimic_cxr"):
        Scoring.from_config(cfg)


def test_evaluating_predictions_writes_the_protocol(make_cfg, tmp_path):
    rows = [{"id": f"s{i}", "prediction": "No acute disease.", "reference": "Heart size normal. No effusion."}
            for i in range(3)]
    f = tmp_path / "preds.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate(make_cfg(f"predictions={f}", "protocol=r2gengpt_iu_xray", config_name="evaluate", small=False))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    p = m["protocol"]
    assert p["name"] == "r2gengpt_iu_xray" and p["deviations"] == {}
    assert p["data"] == "iu_xray" and p["layout"] == "r2gen" and p["references"] == "full"
    assert p["split"]["scored"] == "the predictions file's own references"  # data.root unset: the file's own
    assert p["images"] == {"views": "as the annotation lists them", "per_study": 2, "chosen": "up to 2, fused by mean"}
    assert p["labeler"] == "chexpert" and p["uncertain"] == "negative" and "bertscore" not in p
    page = (tmp_path / "run" / "report.html").read_text()
    assert "protocol.name" in page and "r2gengpt_iu_xray" in page


def test_a_checkpoint_evaluated_under_a_protocol_it_was_not_trained_for(demo_run, make_cfg, tmp_path):
    """The demo checkpoint (two views concatenated, 96 tokens) scored with protocol=r2gengpt_iu_xray: the protocol's
    name is recorded with every key the run differs on."""
    ckpt = next(Path(demo_run).rglob("last.ckpt"))
    evaluate(make_cfg(f"ckpt={ckpt}", "protocol=r2gengpt_iu_xray", "eval.bootstrap.resamples=0",
                      "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", config_name="evaluate",
                      small=False), overrides=[])
    p = json.loads((tmp_path / "run" / "metrics.json").read_text())["protocol"]
    assert p["data"] == "demo" and p["split"]["scored"] == "test"
    assert set(p["deviations"]) == {"data.name", "data.view_fusion", "data.max_report_tokens"}
    assert p["deviations"]["data.name"] == {"protocol": "iu_xray", "run": "demo"}


def test_the_split_scheme_is_named_for_each_layout(make_cfg, tmp_path):
    want = {("data=openi", "data.split=random"): "random 70/10/20 (data.split_seed=0)",
            ("data=openi",): "R2Gen's (data.r2gen_annotation)",
            ("data=mimic_cxr_jpg",): "official (PhysioNet's split file)",
            ("data=iu_xray",): "as the annotation file gives it"}
    for overrides, scheme in want.items():
        cfg = make_cfg(*overrides, f"data.root={tmp_path}", small=False)  # only the config is read
        assert protocol(cfg, Scoring.from_config(cfg), "test")["split"]["scheme"] == scheme
