"""The rule-based CheXpert labeler and the clinical-efficacy scores (r2gen.scoring.chexpert)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from r2gen.data.clean import clean_report_iu_xray
from r2gen.scoring.chexpert import (
    CHEXPERT_LABELS,
    COMMON5,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    ce_scores,
    label_report,
    label_reports,
    to_binary,
)

IU_XRAY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu_xray"
P, N, U = POSITIVE, NEGATIVE, UNCERTAIN

# (report, expected labels: only these are checked; "No Finding" is checked where given)
CASES: list[tuple[str, dict[str, int | None]]] = [
    # --- real-looking IU-Xray reports
    ("The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
     {"No Finding": P, "Cardiomegaly": N, "Enlarged Cardiomediastinum": N, "Lung Opacity": N}),
    ("Heart size is mildly enlarged. Small bilateral pleural effusions.",
     {"Cardiomegaly": P, "Pleural Effusion": P, "No Finding": None}),
    ("No focal airspace disease. No pneumothorax or pleural effusion.",
     {"Lung Opacity": N, "Pneumothorax": N, "Pleural Effusion": N, "No Finding": P}),
    ("Stable calcified granuloma in the right upper lobe.", {"Lung Lesion": P, "No Finding": None}),
    ("Degenerative changes of the thoracic spine.", {**dict.fromkeys(CHEXPERT_LABELS), "No Finding": P}),
    ("Possible mild interstitial edema.", {"Edema": U, "No Finding": None}),
    ("The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema. "
     "There is no focal consolidation. There are no XXXX of a pleural effusion. There is no evidence of "
     "pneumothorax.",
     {"Cardiomegaly": N, "Edema": N, "Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N,
      "No Finding": P}),
    ("No displaced rib fractures, pneumothorax, or pleural effusion identified. Well-expanded and clear lungs.",
     {"Fracture": N, "Pneumothorax": N, "Pleural Effusion": N, "Lung Opacity": N, "No Finding": P}),
    ("Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary arteries. Clear lungs.",
     {"Cardiomegaly": U, "Support Devices": None, "No Finding": None}),
    # --- mentions: plural forms and inflections
    ("Bibasilar atelectasis.", {"Atelectasis": P}),
    ("Atelectatic changes at the left base.", {"Atelectasis": P}),
    ("Scattered calcified granulomas.", {"Lung Lesion": P}),
    ("Multiple pulmonary nodules and masses.", {"Lung Lesion": P}),
    ("Patchy opacities in both lung bases.", {"Lung Opacity": P}),
    ("Right lower lobe infiltrate.", {"Lung Opacity": P}),
    ("Left lower lobe consolidation.", {"Consolidation": P}),
    ("Small right pneumothorax.", {"Pneumothorax": P}),
    ("Healed left rib fractures.", {"Fracture": P}),
    ("Right upper lobe pneumonia.", {"Pneumonia": P}),
    ("Pulmonary vascular congestion.", {"Edema": P}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": P}),
    ("Enlarged cardiac silhouette.", {"Cardiomegaly": P}),
    ("The cardiomediastinal silhouette is enlarged.", {"Cardiomegaly": P, "Enlarged Cardiomediastinum": P}),
    ("Apical pleural thickening.", {"Pleural Other": P}),
    # --- false hits avoided
    ("Heart size is normal.", {"Cardiomegaly": N, "No Finding": P}),
    ("No acute osseous abnormality.", {"Fracture": None, "No Finding": P}),
    ("Small pericardial effusion.", {"Pleural Effusion": None}),
    ("Decreased bone density.", {"Lung Opacity": None}),
    ("No change in mild cardiomegaly.", {"Cardiomegaly": P}),
    ("Evidence of prior granulomatous infection.", {"Pneumonia": None}),
    # --- negation and its scope
    ("No pneumothorax or effusion.", {"Pneumothorax": N, "Pleural Effusion": N}),
    ("No effusion but there is atelectasis.", {"Pleural Effusion": N, "Atelectasis": P}),
    ("The heart is not enlarged.", {"Cardiomegaly": N}),
    ("Pneumothorax is not seen.", {"Pneumothorax": N}),
    ("The previously seen left effusion has resolved.", {"Pleural Effusion": N}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N, "Lung Opacity": N}),
    ("No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax is identified.",
     {"Consolidation": N, "Lung Opacity": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P}),
    ("Negative for pneumothorax. Interval removal of the right chest tube.",
     {"Pneumothorax": N, "Support Devices": N}),
    ("No focal airspace disease to suggest pneumonia.", {"Lung Opacity": N, "Pneumonia": N}),
    ("Cardiomegaly, effusion not seen.", {"Cardiomegaly": P, "Pleural Effusion": N}),
    ("pleural effusion or pneumothorax is not seen .", {"Pleural Effusion": N, "Pneumothorax": N}),
    ("no pneumothorax the heart is enlarged .", {"Pneumothorax": N, "Cardiomegaly": P}),
    ("No pleural effusion, however there is a small left pneumothorax.", {"Pleural Effusion": N, "Pneumothorax": P}),
    # --- uncertainty
    ("Left basilar opacity, likely atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
    ("Atelectasis versus pneumonia.", {"Atelectasis": U, "Pneumonia": U}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": U}),
    ("Cannot exclude a small left effusion.", {"Pleural Effusion": U}),
    ("Findings concerning for pneumonia.", {"Pneumonia": U}),
    ("Heart is borderline enlarged.", {"Cardiomegaly": U}),
    ("Borderline heart size.", {"Cardiomegaly": U}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": N}),
    ("Questionable small nodule in the right upper lobe.", {"Lung Lesion": U}),
    # --- multi-sentence aggregation: positive > uncertain > negative
    ("No pleural effusion. Small left pleural effusion.", {"Pleural Effusion": P}),
    ("Possible small effusion. No large effusion.", {"Pleural Effusion": U}),
    ("No pneumothorax. Possible right pneumothorax. Right apical pneumothorax.", {"Pneumothorax": P}),
    # --- No Finding rule and Support Devices
    ("Right IJ central venous catheter tip in the SVC. Lungs are clear.",
     {"Support Devices": P, "No Finding": P}),
    ("Left chest wall pacemaker with leads in the right atrium and ventricle.", {"Support Devices": P}),
    ("Endotracheal tube 4 cm above the carina. NG tube in the stomach.", {"Support Devices": P}),
    ("Cholecystectomy clips. Sternotomy wires are intact.", {"Support Devices": P, "No Finding": P}),
    ("Possible small left effusion.", {"No Finding": None}),
    ("", {**dict.fromkeys(CHEXPERT_LABELS), "No Finding": P}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] or "empty" for c in CASES])
def test_label_report(text, expected):
    got = label_report(text)
    assert list(got) == list(CHEXPERT_LABELS)
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(("text", "expected"), CASES[:12], ids=[c[0][:40] or "empty" for c in CASES[:12]])
def test_cleaned_text_labels_alike(text, expected):
    cleaned = clean_report_iu_xray(text)  # lower-cased, punctuation stripped, sentences joined with " . "
    assert "," not in cleaned
    got = label_report(cleaned)
    assert {k: got[k] for k in expected} == expected


def test_cleaned_text_examples():
    assert label_report("the heart is enlarged . no pleural effusion or pneumothorax .") | {} == {
        **dict.fromkeys(CHEXPERT_LABELS), "Cardiomegaly": P, "Pleural Effusion": N, "Pneumothorax": N}
    # R2Gen deletes "/" and glues the words around it
    assert label_report("bibasilar atelectasisscarring .")["Atelectasis"] == P
    assert label_report("left chest wall pacemakerdefibrillator .")["Support Devices"] == P


def test_constants_and_label_reports():
    assert CHEXPERT_LABELS[0] == "Atelectasis" and len(CHEXPERT_LABELS) == 14
    assert CHEXPERT_LABELS == tuple(sorted(CHEXPERT_LABELS))
    assert set(COMMON5) < set(CHEXPERT_LABELS)
    texts = [c[0] for c in CASES[:5]]
    assert label_reports(texts) == [label_report(t) for t in texts]


def test_to_binary():
    labels = {**dict.fromkeys(CHEXPERT_LABELS), "Edema": P, "Atelectasis": U, "Pneumothorax": N}
    neg, pos = to_binary(labels), to_binary(labels, uncertain="positive")
    assert neg["Edema"] == pos["Edema"] == 1
    assert neg["Atelectasis"] == 0 and pos["Atelectasis"] == 1
    assert neg["Pneumothorax"] == pos["Pneumothorax"] == 0 and neg["Fracture"] == 0
    assert set(neg) == set(CHEXPERT_LABELS)
    with pytest.raises(ValueError):
        to_binary(labels, uncertain="ignore")


def test_ce_scores_identical():
    reports = ["Heart size is mildly enlarged. Small bilateral pleural effusions.",
               "The lungs are clear. No pneumothorax.", "Right lower lobe pneumonia."]
    s = ce_scores(reports, reports)
    present = {k for r in reports for k, v in to_binary(label_report(r)).items() if v}
    assert present == {"Cardiomegaly", "Pleural Effusion", "No Finding", "Pneumonia"}
    assert s["ce_f1_micro"] == s["ce_precision_micro"] == s["ce_recall_micro"] == 1.0
    assert s["ce_f1_micro_5"] == 1.0
    for k in CHEXPERT_LABELS:
        assert s[f"ce_f1/{k}"] == (1.0 if k in present else 0.0)  # zero_division=0 for absent classes
    assert s["ce_f1_macro"] == pytest.approx(4 / 14)


def test_ce_scores_hand_computed():
    refs = ["Cardiomegaly. Small left pleural effusion.",  # Cardiomegaly, Pleural Effusion
            "Left lower lobe atelectasis.",  # Atelectasis
            "The lungs are clear."]  # No Finding
    preds = ["Cardiomegaly.",  # Cardiomegaly: TP; Pleural Effusion: FN
             "Left lower lobe atelectasis. Small right pneumothorax.",  # Atelectasis: TP; Pneumothorax: FP
             "Left lower lobe consolidation."]  # Consolidation: FP; No Finding: FN
    s = ce_scores(preds, refs)
    # pooled over 14 labels: TP 2, FP 2, FN 2
    assert s["ce_precision_micro"] == pytest.approx(0.5)
    assert s["ce_recall_micro"] == pytest.approx(0.5)
    assert s["ce_f1_micro"] == pytest.approx(0.5)
    # COMMON5: TP 2 (Cardiomegaly, Atelectasis), FP 1 (Consolidation), FN 1 (Pleural Effusion)
    assert s["ce_precision_micro_5"] == pytest.approx(2 / 3)
    assert s["ce_recall_micro_5"] == pytest.approx(2 / 3)
    assert s["ce_f1_micro_5"] == pytest.approx(2 / 3)
    # per label: Cardiomegaly and Atelectasis F1 1; all others 0 (FP only, FN only, or absent)
    assert s["ce_f1/Cardiomegaly"] == s["ce_f1/Atelectasis"] == 1.0
    assert s["ce_f1/Pneumothorax"] == s["ce_f1/No Finding"] == s["ce_f1/Fracture"] == 0.0
    assert s["ce_f1_macro"] == pytest.approx(2 / 14)
    assert s["ce_precision_macro"] == pytest.approx(2 / 14)
    assert s["ce_recall_macro"] == pytest.approx(2 / 14)


def test_ce_scores_uncertain_policy():
    refs = ["Left basilar atelectasis."]
    preds = ["Possible left basilar atelectasis."]  # UNCERTAIN
    neg = ce_scores(preds, refs)  # uncertain -> 0: a missed finding; the prediction is "No Finding"
    pos = ce_scores(preds, refs, uncertain="positive")  # uncertain -> 1: a hit
    assert neg["ce_f1/Atelectasis"] == 0.0 and neg["ce_recall_micro_5"] == 0.0
    assert pos["ce_f1/Atelectasis"] == 1.0 and pos["ce_f1_micro"] == 1.0
    with pytest.raises(ValueError):
        ce_scores(["a"], ["a", "b"])


# Floors a little below what the labeler reaches against IU-Xray's human MeSH labels (benchmarks/labeler_vs_mesh.py;
# reached: Cardiomegaly 0.93, Pleural Effusion 0.94, Pneumothorax 0.90, Atelectasis 0.93, Edema 0.94, Lung Opacity
# 0.97, Lung Lesion 0.92, Support Devices 0.96, Fracture 0.90, No Finding under CheXpert's rule 0.98).
MESH_FLOORS = {"Cardiomegaly": 0.90, "Pleural Effusion": 0.90, "Pneumothorax": 0.85, "Atelectasis": 0.90,
               "Edema": 0.90, "Lung Opacity": 0.94, "Lung Lesion": 0.88, "Support Devices": 0.92, "Fracture": 0.85,
               "Consolidation": 0.80, "Pleural Other": 0.80, "Pneumonia": 0.70, "No Finding (MeSH rule)": 0.95}


def test_iu_xray_agreement_with_mesh():
    path = IU_XRAY / "openi_reports.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from labeler_vs_mesh import evaluate
    finally:
        sys.path.pop(0)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(rows) == 3955
    t0 = time.perf_counter()
    label_reports([f"{r['findings']} {r['impression']}" for r in rows])
    assert time.perf_counter() - t0 < 10  # ~1 s on one core
    res = evaluate(rows)
    f1 = {k: v["f1"] for k, v in res["labels"].items()}
    low = {k: round(f1[k], 3) for k, floor in MESH_FLOORS.items() if f1[k] < floor}
    assert not low, f"F1 against MeSH below the floor: {low}"
    # "normal" in MeSH -> No Finding: the labeler misses few normal reports
    assert res["labels"]["No Finding"]["recall"] > 0.95
