"""The temporal score: the change a report states for each finding (new / worse / better / resolved / unchanged)
read from hand-written sentences, its scores on a corpus counted by hand, its per-study statistics under the
bootstrap, and temporal_acc in metrics.json / report.html of `evaluate.py predictions=...`."""

import json
from pathlib import Path

import numpy as np
import pytest

from r2gen.data.clean import clean_report_iu_xray
from r2gen.evaluate import evaluate
from r2gen.scoring.bootstrap import Bootstrap, intervals
from r2gen.scoring.policy import Scoring
from r2gen.scoring.temporal import CLASSES, report_changes, temporal_family, temporal_scores

IU_XRAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray" / "annotation.json"


@pytest.mark.parametrize("text,changes", [
    ("New small left pleural effusion.", {"Pleural Effusion": "new"}),
    ("Unchanged mild cardiomegaly.", {"Cardiomegaly": "unchanged"}),
    ("The right pneumothorax has resolved.", {"Pneumothorax": "resolved"}),  # the labeler: negative; still found
    ("Interval increase in bilateral effusions.", {"Pleural Effusion": "worse"}),
    ("No new consolidation.", {}),  # a negative statement: states no change (neither new nor unchanged)
    ("No new or worsening effusion.", {}),
    ("Stable appearance of the chest.", {}),  # no finding to qualify
    ("Improving left lower lobe atelectasis.", {"Atelectasis": "better"}),
    ("Heart size is normal.", {}),
    ("Decreased right pneumothorax.", {"Pneumothorax": "better"}),
    ("Partially resolved left effusion.", {"Pleural Effusion": "better"}),  # partial resolution is not resolved
    ("Persistent left basilar atelectasis.", {"Atelectasis": "unchanged"}),
    ("Redemonstrated right pleural effusion.", {"Pleural Effusion": "unchanged"}),
    ("The heart is again mildly enlarged.", {"Cardiomegaly": "unchanged"}),  # inside the mention
    ("No interval change in the left pleural effusion.", {"Pleural Effusion": "unchanged"}),  # masked by the labeler
    ("Left effusion, unchanged.", {"Pleural Effusion": "unchanged"}),
    ("The left pleural effusion is no longer seen.", {"Pleural Effusion": "resolved"}),
    ("Resolution of prior right midlung infiltrate.", {"Lung Opacity": "resolved"}),
    ("Interval removal of right PICC.", {"Support Devices": "resolved"}),
    ("The nodule has increased in size.", {"Lung Lesion": "worse"}),
    ("Possible new opacity at the right base.", {"Lung Opacity": "new"}),  # uncertain mentions count
    ("There is increased opacity in the left upper lobe.", {}),  # describes the image, no change
    ("Right lower lobe pneumonia. Follow up to resolution is recommended.", {}),
    ("Stable cardiomegaly with new left effusion.", {"Cardiomegaly": "unchanged", "Pleural Effusion": "new"}),
    ("Stable cardiomegaly and effusion.", {"Cardiomegaly": "unchanged", "Pleural Effusion": "unchanged"}),
    ("Cardiomegaly and pleural effusions are unchanged.", {"Cardiomegaly": "unchanged", "Pleural Effusion": "unchanged"}),
    ("Stable cardiomegaly. The right pneumothorax has resolved. New left effusion.",
     {"Cardiomegaly": "unchanged", "Pneumothorax": "resolved", "Pleural Effusion": "new"}),
    ("Stable left effusion. New right effusion.", {"Pleural Effusion": "new"}),  # a change beats no change
])
def test_change_read_from_hand_written_reports(text, changes):
    assert report_changes(text) == changes
    assert report_changes(clean_report_iu_xray(text)) == changes  # and after R2Gen's cleaning


@pytest.mark.parametrize("text,changes", [
    ("New small left pleural effusion.", {"effusion": "new"}),
    ("The heart is again enlarged. Stable right pneumothorax.", {"cardiomegaly": "unchanged", "pneumothorax": "unchanged"}),
    ("No new effusion.", {}),
    ("The right pneumothorax has resolved.", {"pneumothorax": "resolved"}),
    ("Heart size is normal. Small bilateral pleural effusions.", {}),
])
def test_change_read_with_the_demo_labeler(text, changes):
    assert report_changes(text, "demo") == changes


PAIRS = [  # (generated, reference)
    ("new small left pleural effusion .", "new left pleural effusion ."),  # new / new
    ("stable cardiomegaly .", "unchanged cardiomegaly ."),  # unchanged / unchanged
    ("unchanged left effusion .", "increased left pleural effusion ."),  # unchanged / worse
    ("the lungs are clear .", "the right pneumothorax has resolved ."),  # none / resolved
    ("new right pneumothorax .", "no pneumothorax ."),  # the reference states no change: not counted
    ("stable cardiomegaly . new left effusion .", "stable cardiomegaly . stable left pleural effusion ."),
]


def test_scores_over_the_pairs_where_the_reference_states_a_change():
    s = temporal_scores([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert s["temporal_n"] == 6 and s["temporal_acc"] == pytest.approx(3 / 6)
    # new: tp 1, 1 stated, 2 predicted; unchanged: tp 2, 3 stated, 3 predicted; worse, resolved: tp 0
    assert s["temporal_f1/new"] == pytest.approx(2 / 3) and s["temporal_f1/unchanged"] == pytest.approx(2 / 3)
    assert s["temporal_f1/worse"] == 0 and s["temporal_f1/resolved"] == 0
    assert "temporal_f1/better" not in s  # no reference states it: left out, and out of the macro
    assert s["temporal_f1_macro"] == pytest.approx((2 / 3 + 2 / 3) / 4)


def test_no_pair_gives_only_the_count():
    assert temporal_scores(["stable cardiomegaly ."], ["no acute disease ."]) == {"temporal_n": 0.0}
    assert temporal_scores([], []) == {"temporal_n": 0.0}
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        temporal_scores(["a"], ["b", "c"])


def test_family_totals_give_the_scores_for_any_weighting():
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    f = temporal_family(preds, refs)
    assert f.stats.shape == (len(PAIRS), len(CLASSES) * (len(CLASSES) + 1))
    assert f.scores() == temporal_scores(preds, refs)
    twice = [2, 1, 1, 1, 1, 1]  # study 0 counted twice = study 0 listed twice
    assert f.scores(np.array(twice, dtype=float) @ f.stats) == pytest.approx(
        temporal_scores([preds[0], *preds], [refs[0], *refs]))
    scores = f.scores()
    bounds = intervals([f], scores, Bootstrap(resamples=200))
    assert set(bounds) == set(scores)
    for k, (lo, hi) in bounds.items():
        assert lo <= hi and (k == "temporal_n" or 0 <= lo <= hi <= 1)


def test_scoring_gives_the_temporal_scores_for_both_labelers():
    chex = Scoring(labeler="chexpert").labeler_scores([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert chex["temporal_n"] == 6 and "ce_f1_macro" in chex and "laterality_n" in chex
    demo = Scoring(labeler="demo").labeler_scores(["new left effusion ."], ["stable left effusion ."])
    assert demo["temporal_n"] == 1 and demo["temporal_acc"] == 0 and "finding_f1_macro" in demo


def test_metrics_json_of_iu_xray_predictions_has_the_temporal_score(make_cfg, tmp_path):
    rows = [{"id": "a", "prediction": "New small left pleural effusion.", "reference": "Unchanged left pleural effusion."},
            {"id": "b", "prediction": "Stable cardiomegaly.", "reference": "Stable mild cardiomegaly."},
            {"id": "c", "prediction": "No acute disease.", "reference": "No acute cardiopulmonary abnormality."}]
    f = tmp_path / "preds.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(f"predictions={f}", "data=iu_xray", config_name="evaluate", small=False)
    scores = evaluate(cfg, overrides=[])
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["temporal_n"] == 2 and m["temporal_acc"] == 0.5 and m["temporal_acc"] == scores["temporal_acc"]
    assert m["temporal_f1/unchanged"] == pytest.approx(2 / 3) and "temporal_acc" in m["intervals"]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "temporal_acc" in page and "temporal_f1_macro" in page
    assert "Pleural Effusion: new vs unchanged" in page  # study a, flagged in its row


@pytest.mark.skipif(not IU_XRAY.is_file(), reason="no ../shared/data/iu_xray (real IU-Xray reports)")
def test_real_iu_xray_reports_state_changes():
    """A sanity figure: IU-Xray findings say "stable", "unchanged" often, other changes seldom (at this writing 42
    of the 590 test reports state a change for 49 findings, mostly unchanged)."""
    test = json.loads(IU_XRAY.read_text())["test"]
    changes = [report_changes(clean_report_iu_xray(e["report"])) for e in test]
    stated = [c for x in changes for c in x.values()]
    assert 20 <= sum(bool(x) for x in changes) <= 100
    assert max(CLASSES, key=stated.count) == "unchanged"
