"""How corpora are scored: the reference protocol, the CheXpert labeler wired in, the terminal table, report.html."""

from __future__ import annotations

import json
import re

import pytest

from r2gen.data.clean import detokenize, get_cleaner
from r2gen.evaluate import evaluate
from r2gen.scoring import CHEXPERT_LABELS, score_corpus
from r2gen.scoring.policy import Scoring, score_records, truncate_reference
from r2gen.scoring.report_html import render
from r2gen.scoring.results import format_table

from .helpers.config import compose_cfg
from .helpers.page import parse_page

REPORTS = ["heart size is mildly enlarged . small bilateral pleural effusions .",
           "the lungs are clear . no pneumothorax .",
           "right lower lobe pneumonia . the heart is normal in size . no effusion ."]


def test_truncation_keeps_the_first_words_as_r2gen():
    # R2Gen: ids [0] + words + [0] cut to max_seq_length, decoded from index 1 -> max_seq_length - 1 words
    assert truncate_reference("a b c d e .", 3) == "a b c"
    assert truncate_reference("a b", 5) == "a b"
    s = Scoring(references="truncated", truncate_words=2)
    recs = s.prepare([{"id": "1", "prediction": "x y z", "reference": "a b c"}])
    assert recs == [{"id": "1", "prediction": "x y z", "reference": "a b"}]  # predictions are never cut
    assert s.reference_protocol == "truncated(2)" and Scoring().reference_protocol == "full"
    assert Scoring().prepare(recs) == recs


@pytest.mark.parametrize("kwargs,message", [
    ({"references": "cut"}, "eval.references='cut': choose full or truncated"),
    ({"references": "truncated", "truncate_words": 0}, "set data.max_report_tokens to 2 or more"),
    ({"ce_uncertain": "ignore"}, "eval.ce_uncertain='ignore': choose negative or positive"),
    ({"labeler": "chexbert"}, "data.labeler='chexbert': choose demo, chexpert or null"),
    ({"labeler": "demo", "chexbert": "x.pth"}, "set data.labeler=chexpert"),
])
def test_bad_scoring_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Scoring(**kwargs)


def test_config_wires_labelers_and_protocol(tmp_path, cache_dir):
    for data, labeler in (("demo", "demo"), ("iu_xray", "chexpert"), ("mimic_cxr", "chexpert")):
        cfg = compose_cfg("config", [f"data={data}"], tmp_path, cache_dir)
        s = Scoring.from_config(cfg)
        assert s.labeler == labeler and s.references == "full" and s.ce_uncertain == "negative" and not s.chexbert
    cfg = compose_cfg("config", ["data=iu_xray", "eval.references=truncated", "eval.ce_uncertain=positive"],
                      tmp_path, cache_dir)
    s = Scoring.from_config(cfg)
    assert s.reference_protocol == "truncated(59)"  # R2Gen's max_seq_length 60 for IU-Xray, less its start token
    assert s.labeler_name == "chexpert (uncertain -> positive)"


# ------------------------------------------------------------------------------------------ CheXpert scores
def test_chexpert_labeler_scores_records():
    recs = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(REPORTS, REPORTS[::-1], strict=True))]
    s = score_records(recs, Scoring(labeler="chexpert", weights={"Bleu_4": 0.5, "ce_f1_micro": 0.5}))
    for k in ("ce_f1_micro", "ce_f1_macro", "ce_f1_micro_5", "ce_precision_micro", "ce_recall_macro"):
        assert 0.0 <= s[k] <= 1.0, k
    assert {f"ce_{m}/{k}" for m in ("precision", "recall", "f1") for k in CHEXPERT_LABELS} <= set(s)
    assert s["score"] == pytest.approx(0.5 * s["Bleu_4"] + 0.5 * s["ce_f1_micro"])
    same = score_records([{**r, "prediction": r["reference"]} for r in recs], Scoring(labeler="chexpert"))
    assert same["ce_f1_micro"] == 1.0


def test_table_lists_nlg_then_clinical_then_per_label():
    recs = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(REPORTS, REPORTS[::-1], strict=True))]
    table = format_table(score_records(recs, Scoring(labeler="chexpert")))
    lines = [line.split() for line in table.splitlines() if line.strip()]
    order = [line[0] for line in lines]
    assert order.index("CIDEr") < order.index("clinical") < order.index("micro,") < order.index("per")
    assert order.index("per") < order.index("Cardiomegaly")
    assert lines[order.index("per")][-3:] == ["precision", "recall", "f1"]
    assert len(lines[order.index("Cardiomegaly")]) == 4  # label, P, R, F1


# ------------------------------------------------------------------------------------------ predictions= end to end
def test_predictions_mode_truncated_references_and_viewer(tmp_path, cache_dir):
    rows = [{"id": f"s{i}", "prediction": p, "reference": r.upper()} for i, (p, r) in
            enumerate(zip(REPORTS, REPORTS[1:] + REPORTS[:1], strict=True))]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ev"
    cfg = compose_cfg("evaluate", [f"predictions={f}", "data=iu_xray", "eval.references=truncated",
                                   "data.max_report_tokens=5"], out, cache_dir)
    scores = evaluate(cfg)
    m = json.loads((out / "metrics.json").read_text())
    assert m["references"] == "truncated(4)" and m["labeler"] == "chexpert (uncertain -> negative)"
    written = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [w["reference"] for w in written] == [" ".join(r["reference"].lower().split()[:4]) for r in rows]
    # scored: the predictions cleaned; written: those as people read them (detokenized)
    clean = get_cleaner("iu_xray")
    assert [w["prediction"] for w in written] == [detokenize(clean(r["prediction"])) for r in rows]
    want = score_corpus([clean(r["prediction"]) for r in rows], [w["reference"] for w in written])
    for k, v in want.items():
        assert scores[k] == pytest.approx(v, abs=1e-12) and m[k] == pytest.approx(v, abs=1e-12), k
    page = parse_page((out / "report.html").read_text())
    assert page.rows == len(rows) and not page.srcs  # no images in predictions mode, and nothing fetched


def test_viewer_marks_disagreements_and_sorts():
    recs = [{"id": "a", "prediction": REPORTS[0], "reference": REPORTS[1]},
            {"id": "b<&>", "prediction": REPORTS[1], "reference": REPORTS[1]}]
    scoring = Scoring(labeler="chexpert")
    text = render(recs, score_records(recs, scoring), {"split": "test"}, scoring)
    page = parse_page(text)
    assert page.rows == 2
    assert "+Cardiomegaly" in text and "&minus;No Finding" in text  # found only in the prediction / the reference
    assert "b&lt;&amp;&gt;" in text and "b<&>" not in text  # text is escaped
    assert "<svg" in text and "F1 per label" in text and "addEventListener('click'" in text
