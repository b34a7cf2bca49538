"""Everything about scoring generated reports, in one package.

- `nlg`: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, R2Gen's protocol) and per-study scores;
- `chexpert`: the rule-based CheXpert labeler and clinical-efficacy scores; `chexbert`: CheXbert from local weights;
- `laterality`: whether a generated report puts effusion, pneumothorax, opacity, atelectasis on the reference's side;
- `temporal`: whether a generated report states the reference's change since the prior study for each finding;
- `demo_labeler`: the synthetic demo's seven findings and finding F1;
- `policy`: `Scoring`, how a corpus is scored (labeler, reference protocol, checkpoint score), used alike by
  validation, the test after training and evaluate.py;
- `results`, `report_html`: metrics.json, predictions.jsonl, the terminal table and the offline viewer.
"""

from r2gen.scoring.chexpert import (
    CHEXPERT_LABELS,
    COMMON5,
    ce_scores,
    ce_scores_from_labels,
    label_report,
    label_reports,
    to_binary,
)
from r2gen.scoring.nlg import METRIC_NAMES, close_meteor, per_sample_scores, score_corpus

__all__ = ["CHEXPERT_LABELS", "COMMON5", "METRIC_NAMES", "ce_scores", "ce_scores_from_labels", "close_meteor",
           "label_report", "label_reports", "per_sample_scores", "score_corpus", "to_binary"]
