"""Scores of generated reports: NLG metrics (pycocoevalcap)."""

from r2gen.metrics.nlg import METRIC_NAMES, close_meteor, per_sample_scores, score_corpus

__all__ = ["METRIC_NAMES", "close_meteor", "per_sample_scores", "score_corpus"]
