"""Scores of generated reports: NLG metrics (pycocoevalcap) and clinical efficacy from CheXpert labels."""

from r2gen.metrics.chexpert import (
    CHEXPERT_LABELS,
    COMMON5,
    ce_scores,
    ce_scores_from_labels,
    label_report,
    label_reports,
    to_binary,
)
from r2gen.metrics.nlg import METRIC_NAMES, close_meteor, per_sample_scores, score_corpus

__all__ = ["CHEXPERT_LABELS", "COMMON5", "METRIC_NAMES", "ce_scores", "ce_scores_from_labels", "close_meteor",
           "label_report", "label_reports", "per_sample_scores", "score_corpus", "to_binary"]
