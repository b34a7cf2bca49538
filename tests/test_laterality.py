"""The laterality score: a generated report's side for effusion, pneumothorax, opacity and atelectasis against the
reference's, on hand-written report pairs, and in metrics.json / report.html of `evaluate.py predictions=...`."""

import json

import pytest

from r2gen.data.clean import clean_report_iu_xray
from r2gen.evaluate import evaluate
from r2gen.scoring.laterality import laterality_scores, report_sides


@pytest.mark.parametrize("text,sides", [
    ("There is a small left pleural effusion.", {"Pleural Effusion": "left"}),
    ("Left greater than right pleural effusions.", {"Pleural Effusion": "bilateral"}),
    ("Bilateral pleural effusions with left basilar atelectasis.",
     {"Pleural Effusion": "bilateral", "Atelectasis": "left"}),
    ("Bibasilar atelectasis.", {"Atelectasis": "bilateral"}),
    ("Effusion on the left and pneumothorax on the right.", {"Pleural Effusion": "left", "Pneumothorax": "right"}),
    ("Small left pleural effusion and right pneumothorax.", {"Pleural Effusion": "left", "Pneumothorax": "right"}),
    ("Opacity in the right lower lobe.", {"Lung Opacity": "right"}),
    ("Stable small right-sided pleural effusion.", {"Pleural Effusion": "right"}),
    ("The heart is normal. The lungs are clear. There is a right apical pneumothorax.", {"Pneumothorax": "right"}),
    ("No pneumothorax. No left effusion.", {}),  # negated: no side to compare
    ("Possible left lower lobe atelectasis.", {}),  # uncertain: not a positive statement
    ("Small pleural effusion.", {}),  # positive, no side stated
    ("Left chest wall pacemaker. Cardiomegaly.", {}),  # sides of other observations do not count
])
def test_sides_read_from_hand_written_reports(text, sides):
    assert report_sides(text) == sides
    assert report_sides(clean_report_iu_xray(text)) == sides  # and after R2Gen's cleaning (lower case, no punctuation)


def test_scores_count_only_pairs_where_both_state_the_finding_and_the_reference_a_side():
    pairs = [
        ("small right pleural effusion .", "small left pleural effusion ."),  # wrong side
        ("left pneumothorax .", "left pneumothorax ."),  # same side
        ("pneumothorax .", "right pneumothorax ."),  # no side named: neither right nor wrong
        ("the lungs are clear .", "right pleural effusion ."),  # finding missed: CE's business, not counted
        ("left pleural effusion .", "pleural effusion ."),  # reference names no side: not counted
        ("bilateral effusions .", "bilateral pleural effusions ."),  # same (bilateral)
    ]
    s = laterality_scores([p for p, _ in pairs], [r for _, r in pairs])
    assert s["laterality_n"] == 4
    assert s["laterality_acc"] == pytest.approx(2 / 4) and s["laterality_wrong_side"] == pytest.approx(1 / 4)
    assert s["laterality_acc/Pleural Effusion"] == pytest.approx(1 / 2)
    assert s["laterality_acc/Pneumothorax"] == pytest.approx(1 / 2)
    assert "laterality_acc/Atelectasis" not in s  # no pair for it
    assert laterality_scores(["no findings ."], ["normal chest ."]) == {"laterality_n": 0.0}


def test_metrics_json_of_iu_xray_predictions_has_the_laterality_score(make_cfg, tmp_path):
    rows = [{"id": "a", "prediction": "Small right pleural effusion.", "reference": "Small left pleural effusion."},
            {"id": "b", "prediction": "Left pneumothorax.", "reference": "Left apical pneumothorax."},
            {"id": "c", "prediction": "No acute disease.", "reference": "No acute cardiopulmonary abnormality."}]
    f = tmp_path / "preds.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(f"predictions={f}", "data=iu_xray", config_name="evaluate", small=False)
    scores = evaluate(cfg, overrides=[])
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["laterality_n"] == 2 and m["laterality_acc"] == 0.5 and m["laterality_wrong_side"] == 0.5
    assert m["laterality_acc"] == scores["laterality_acc"] and "ce_f1_macro" in m  # beside the CE scores
    page = (tmp_path / "run" / "report.html").read_text()
    assert "laterality_acc" in page and "laterality_wrong_side" in page
    assert "Pleural Effusion: right vs left" in page  # study a, flagged in its row
