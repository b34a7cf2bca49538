"""Agreement of r2gen's rule-based CheXpert labeler with the human MeSH labels of IU-Xray (OpenI).

Every report's findings + " " + impression is labelled with `r2gen.scoring.chexpert.label_report`; its MeSH major
terms (indexed by people, per report) are mapped to CheXpert labels with `mesh_to_chexpert` (`MESH_HEADS` and
the rules next to it). Per label we print the MeSH support, the labeler's positives, precision, recall and F1
with the labeler's UNCERTAIN counted as negative (the default CE policy) and the F1 with UNCERTAIN counted as
positive. "No Finding" is scored against the MeSH term "normal", and "No Finding (MeSH rule)" against CheXpert's
rule applied to the mapped MeSH labels (no mapped finding but Support Devices): MeSH calls a report "normal" only
when nothing at all is indexed (no hyperinflation, scoliosis, aortic tortuosity, scarring, ...), which lies
outside the 14 observations and so outside what the CheXpert rule can see. Reports indexed "No Indexing" (no terms
assigned) and reports with neither findings nor impression are left out.

    python benchmarks/labeler_vs_mesh.py [--data ../shared/data/iu_xray/openi_reports.jsonl] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from r2gen.scoring.chexpert import CHEXPERT_LABELS, POSITIVE, UNCERTAIN, label_reports

NF_RULE = "No Finding (MeSH rule)"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu_xray" / "openi_reports.jsonl"

# MeSH head (the part before the first "/") -> CheXpert label. Heads with no CheXpert counterpart are ignored:
# Lung/hypoinflation or hyperdistention, Calcinosis (mostly calcified hilar nodes and aortic knob), Granulomatous
# Disease, Cicatrix (scarring), Markings, Emphysema, Costophrenic Angle/blunted, Heart Failure, spine and aorta
# terms, Foreign Bodies (piercings, bullets), Spinal Fusion, Breast Implants, ...
MESH_HEADS: dict[str, str] = {
    "normal": "No Finding",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Pleural Effusion",
    "Opacity": "Lung Opacity", "Infiltrate": "Lung Opacity", "Airspace Disease": "Lung Opacity",
    "Density": "Lung Opacity",
    "Pulmonary Atelectasis": "Atelectasis", "Atelectasis": "Atelectasis",
    "Nodule": "Lung Lesion", "Mass": "Lung Lesion", "Granuloma": "Lung Lesion", "Calcified Granuloma": "Lung Lesion",
    "Pulmonary Edema": "Edema", "Edema": "Edema", "Pulmonary Congestion": "Edema",
    "Pneumothorax": "Pneumothorax", "Hydropneumothorax": "Pneumothorax", "Hemopneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Fractures, Bone": "Fracture",
    "Catheters, Indwelling": "Support Devices", "Implanted Medical Device": "Support Devices",
    "Surgical Instruments": "Support Devices", "Tube, Inserted": "Support Devices", "Medical Device": "Support Devices",
    "Stents": "Support Devices", "Sutures": "Support Devices",
}


def mesh_to_chexpert(term: str) -> str | None:
    """One MeSH major term ("Cardiomegaly/mild", "Thickening/pleura/right", ...) -> a CheXpert label or None."""
    head, *rest = [t.strip() for t in term.split("/")]
    if head == "Cardiac Shadow" and {"enlarged", "borderline"} & set(rest):
        return "Cardiomegaly"  # "enlarged cardiac silhouette"
    if head == "Mediastinum" and {"enlarged", "prominent"} & set(rest):
        return "Enlarged Cardiomediastinum"
    if head in ("Thickening", "Pleura", "Cicatrix", "Calcinosis") and "pleura" in rest + [head.lower()]:
        return "Pleural Other"  # pleural thickening, scarring or calcification
    if head == "Mass" and "breast" in rest:
        return None
    return MESH_HEADS.get(head)


def evaluate(rows: list[dict]) -> dict:
    rows = [r for r in rows if "No Indexing" not in r["mesh_major"] and (r["findings"] or r["impression"]).strip()]
    t0 = time.perf_counter()
    labels = label_reports([f"{r['findings']} {r['impression']}" for r in rows])
    seconds = time.perf_counter() - t0
    truth = [{mesh_to_chexpert(t) for t in r["mesh_major"]} for r in rows]
    # CheXpert's No Finding rule applied to the MeSH side: no mapped finding other than Support Devices.
    rule = [not (t - {None, "No Finding", "Support Devices"}) for t in truth]
    table = {}
    for label in (*CHEXPERT_LABELS, NF_RULE):
        gold = rule if label == NF_RULE else [label in t for t in truth]
        key = "No Finding" if label == NF_RULE else label
        out = {}
        for name, accept in (("", (POSITIVE,)), ("_unc_pos", (POSITIVE, UNCERTAIN))):
            pred = [lab[key] in accept for lab in labels]
            tp = sum(g and p for g, p in zip(gold, pred, strict=True))
            prec = tp / sum(pred) if sum(pred) else 0.0
            rec = tp / sum(gold) if sum(gold) else 0.0
            f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            out.update({f"predicted{name}": sum(pred), f"precision{name}": prec, f"recall{name}": rec, f"f1{name}": f1})
        out["support"] = sum(gold)
        out["agreement"] = sum(g == (lab[key] == POSITIVE) for g, lab in zip(gold, labels, strict=True)) / len(rows)
        table[label] = out
    return {"reports": len(rows), "seconds": seconds, "labels": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    res = evaluate(rows)
    print(f"{res['reports']} reports labelled in {res['seconds']:.2f} s")
    print(f"{'label':30s} {'support':>7s} {'pred':>5s} {'prec':>6s} {'recall':>6s} {'F1':>6s} {'agree':>6s}"
          f" {'pred_u':>6s} {'F1_u':>6s}")
    for label, m in res["labels"].items():
        print(f"{label:30s} {m['support']:7d} {m['predicted']:5d} {m['precision']:6.3f} {m['recall']:6.3f} "
              f"{m['f1']:6.3f} {m['agreement']:6.3f} {m['predicted_unc_pos']:6d} {m['f1_unc_pos']:6.3f}")
    print("pred/prec/recall/F1: labeler UNCERTAIN counted as negative; pred_u/F1_u: counted as positive;"
          " agree: accuracy of the positive-vs-rest call over all reports")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
