"""Every corpus score as a function of per-study statistics that add up, so it can be recomputed for any weighting
of the studies: a bootstrap resample (a study drawn k times counts k times), or a paired test's swap of two systems'
outputs study by study (r2gen.scoring.bootstrap).

A `Family` holds `stats`, `[N, K]` (one row per study, in corpus order), and `combine`, which turns column totals
`[..., K]` into the family's scores, each `[...]`: `combine(stats.sum(0))` is the corpus score. BLEU (clipped
n-gram matches, n-gram and length totals), CheXpert-style and demo F1s (TP/FP/FN per label) and laterality are
exact for any weighting; a mean over studies (ROUGE-L, example-based F1, BERTScore, RadGraph) is exact too. Where a
score's per-study parts depend on the corpus (CIDEr-D's idf from the references scored; METEOR's aggregate), the
family says so in `approximation`, and the bootstrap keeps that part fixed at its full-corpus value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Family:
    names: tuple[str, ...]  # the scores `combine` gives
    stats: np.ndarray  # [N, K] float64, one row per study
    combine: Callable[[np.ndarray], dict[str, np.ndarray]]  # totals [..., K] -> {name: [...]}
    approximation: str | None = None  # what a resample keeps fixed at its full-corpus value; None: exact

    def __post_init__(self) -> None:
        if self.stats.ndim != 2:
            raise ValueError(f"Family stats must be [studies, K], got shape {self.stats.shape}")

    def scores(self, totals: np.ndarray | None = None) -> dict[str, float]:
        """The corpus scores (of `totals`, default the plain sum over studies) as python floats; a score that is
        undefined for them (NaN: e.g. an accuracy over no pair) is left out."""
        out = self.combine(self.stats.sum(0) if totals is None else totals)
        return {k: float(out[k]) for k in self.names if np.isfinite(out[k])}


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def ratio_or_nan(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0: a score undefined there (left out, not counted as 0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from counts of any shape; 0 where undefined (no predicted or no true positive)."""
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return p, r, ratio(2 * p * r, p + r)


def mean_family(values: dict[str, Sequence[float]], approximation: str | None = None) -> Family:
    """Scores that are means over studies: columns [value per name..., 1]; the mean of any weighting is exact."""
    names = tuple(values)
    cols = [np.asarray(values[k], dtype=np.float64) for k in names]
    n = len(cols[0]) if cols else 0
    stats = np.stack([*cols, np.ones(n)], axis=1) if cols else np.ones((0, 1))

    def combine(t: np.ndarray) -> dict[str, np.ndarray]:
        return {k: ratio(t[..., i], t[..., -1]) for i, k in enumerate(names)}

    return Family(names, stats, combine, approximation)


def label_family(pred: np.ndarray, true: np.ndarray, combine_counts: Callable[[np.ndarray], dict[str, np.ndarray]],
                 names: Sequence[str], extra: np.ndarray | None = None) -> Family:
    """Scores from per-label TP/FP/FN: `pred`, `true` `[N, L]` 0/1; stats [tp_1..L, fp_1..L, fn_1..L, extra...];
    `combine_counts(totals)` gets totals `[..., 3L + extra]`."""
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    parts = [pred & true, pred & ~true, ~pred & true]
    if extra is not None:
        parts.append(np.asarray(extra, dtype=np.float64).reshape(len(pred), -1))
    stats = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)
    return Family(tuple(names), stats, combine_counts)


def split_counts(t: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (tp, fp, fn) blocks `[..., L]` of `label_family` totals."""
    return t[..., :n_labels], t[..., n_labels:2 * n_labels], t[..., 2 * n_labels:3 * n_labels]
