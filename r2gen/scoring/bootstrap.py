"""Confidence intervals on every corpus score, and a paired test between two systems scored on the same studies.

The unit is the study (ReXrank's and LLaVA-Rad's protocol): a resample draws the test set's N studies with
replacement, and every corpus score is recomputed from the drawn studies' statistics (r2gen.scoring.additive:
exact for BLEU, METEOR, ROUGE-L and the label F1s; CIDEr-D keeps the full corpus' idf, as its family states).

- `intervals`: the percentile bootstrap interval (`level`, default 95%) of each score over `resamples` resamples
  drawn from `numpy.random.default_rng(seed)`.
- `paired`: for two systems A and B on the same studies, the difference A - B, its paired-bootstrap interval
  (the same resamples for both systems) and a two-sided approximate-randomization p-value: in each of
  `resamples` permutations every study's two outputs are swapped with probability 1/2, and p = (1 + the number
  of permutations whose |difference| reaches the observed one) / (1 + permutations) (Noreen 1989; as RadEval's
  significance test and sacreBLEU's paired AR). Identical systems give a difference of 0 and p = 1.

Everything is matrix arithmetic on `[resamples, N] @ [N, K]` statistics: MIMIC-CXR's 3,858 test studies with
1,000 resamples take seconds (benchmarks/bootstrap.py measures it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from r2gen.errors import ConfigError
from r2gen.scoring.additive import Family


@dataclass(frozen=True)
class Bootstrap:
    """How intervals and paired tests are drawn: `eval.bootstrap.{resamples,seed,level}` (resamples 0: off)."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 0:
            raise ConfigError(f"eval.bootstrap.resamples={self.resamples!r}: a whole number of resamples "
                              f"(1000 is usual; 0 turns intervals off)")
        if 0 < self.resamples < 100:
            raise ConfigError(f"eval.bootstrap.resamples={self.resamples}: too few for a 95% interval's tails; "
                              f"use 1000 (or 0 to turn intervals off)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"eval.bootstrap.seed={self.seed!r}: an integer")
        if not (isinstance(self.level, float) and 0.5 <= self.level < 1):
            raise ConfigError(f"eval.bootstrap.level={self.level!r}: the interval's coverage, e.g. 0.95")

    @classmethod
    def from_config(cls, node) -> Bootstrap:
        """From `eval.bootstrap` (a config node or dict; None: the defaults)."""
        node = dict(node or {})
        unknown = sorted(set(node) - {"resamples", "seed", "level"})
        if unknown:
            raise ConfigError(f"eval.bootstrap has unknown key(s) {unknown}: it takes resamples, seed and level")
        level = node.get("level", cls.level)
        return cls(resamples=node.get("resamples", cls.resamples), seed=node.get("seed", cls.seed),
                   level=float(level) if isinstance(level, (int, float)) and not isinstance(level, bool) else level)

    @property
    def enabled(self) -> bool:
        return self.resamples > 0

    def method(self, families: Sequence[Family]) -> dict:
        """What metrics.json says under "bootstrap": how the intervals were drawn, and what is approximated."""
        approx = {n: f.approximation for f in families if f.approximation for n in f.names}
        return {"unit": "study", "resamples": self.resamples, "seed": self.seed, "level": self.level,
                "interval": "percentile", "approximations": approx}

    def draws(self, n: int) -> np.ndarray:
        """[resamples, n] how many times each study is drawn in each resample (each row sums to n)."""
        rng = np.random.default_rng(self.seed)
        idx = rng.integers(0, n, size=(self.resamples, n)) + n * np.arange(self.resamples)[:, None]
        return np.bincount(idx.ravel(), minlength=self.resamples * n).reshape(self.resamples, n).astype(np.float64)

    def bounds(self, values: np.ndarray) -> tuple[float, float] | None:
        """The percentile interval of one score's resampled values (resamples where it is undefined left out)."""
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return None
        tail = (1 - self.level) / 2 * 100
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return float(lo), float(hi)


def weighted(families: Sequence[Family], weights: np.ndarray,
             score_weights: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Every family's scores for each row of `weights` ([R, N]: a study's count in each resample), plus `score`
    (the checkpoint score, `monitor.weights`) where its metrics are there."""
    out: dict[str, np.ndarray] = {}
    for f in families:
        out.update(f.combine(weights @ f.stats))
    return with_score(out, score_weights)


def with_score(scores: dict[str, np.ndarray], score_weights: Mapping[str, float] | None) -> dict[str, np.ndarray]:
    if score_weights and all(k in scores for k in score_weights):
        scores = {**scores, "score": sum(w * scores[k] for k, w in score_weights.items())}
    return scores


def intervals(families: Sequence[Family], scores: Mapping[str, float], how: Bootstrap,
              score_weights: Mapping[str, float] | None = None) -> dict[str, list[float]]:
    """{score: [low, high]} for every score in `scores` that the families give (study-level bootstrap)."""
    n = _studies(families)
    if not how.enabled or n == 0:
        return {}
    resampled = weighted(families, how.draws(n), score_weights)
    out = {}
    for k in scores:
        if k in resampled and (b := how.bounds(np.asarray(resampled[k]))) is not None:
            out[k] = list(b)
    return out


def paired(a: Sequence[Family], b: Sequence[Family], how: Bootstrap,
           score_weights: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
    """For every score both systems have: {"a", "b", "diff" (a - b), "low", "high" (its paired-bootstrap
    interval), "p" (two-sided approximate randomization)}. `a` and `b`: the two systems' families over the same
    studies in the same order (same metrics, same labeler)."""
    if [f.names for f in a] != [f.names for f in b]:
        raise ValueError("the two systems were scored with different metrics; score both the same way")
    n = _studies(a)
    if _studies(b) != n:
        raise ValueError(f"{n} studies in one system, {_studies(b)} in the other: a paired test needs the same studies")
    ones = np.ones((1, n))
    sa, sb = weighted(a, ones, score_weights), weighted(b, ones, score_weights)
    names = [k for k in sa if k in sb and np.isfinite(sa[k][0]) and np.isfinite(sb[k][0])]
    draws = how.draws(n)
    ba, bb = weighted(a, draws, score_weights), weighted(b, draws, score_weights)
    rng = np.random.default_rng(how.seed + 1)  # its own stream: the permutations do not reuse the resamples
    swap = (rng.random((how.resamples, n)) < 0.5).astype(np.float64)  # [R, N] 1: this study's outputs swapped
    perm = _permuted(a, b, 1.0 - swap, swap, score_weights)
    out: dict[str, dict[str, float]] = {}
    for k in names:
        diff = float(sa[k][0] - sb[k][0])
        boot = ba[k] - bb[k]
        bounds = how.bounds(np.asarray(boot))
        d_perm = np.asarray(perm[0][k] - perm[1][k])
        d_perm = d_perm[np.isfinite(d_perm)]
        tol = 1e-12 * max(1.0, abs(diff))
        p = (1 + int((np.abs(d_perm) >= abs(diff) - tol).sum())) / (1 + len(d_perm))
        out[k] = {"a": float(sa[k][0]), "b": float(sb[k][0]), "diff": diff,
                  "low": bounds[0] if bounds else float("nan"), "high": bounds[1] if bounds else float("nan"),
                  "p": p}
    return out


def _permuted(a: Sequence[Family], b: Sequence[Family], keep: np.ndarray, swap: np.ndarray,
              score_weights: Mapping[str, float] | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The scores of the two permuted systems: A' takes A's output where kept and B's where swapped, B' the
    opposite; their totals are sums of the two systems' per-study statistics."""
    out_a: dict[str, np.ndarray] = {}
    out_b: dict[str, np.ndarray] = {}
    for fa, fb in zip(a, b, strict=True):
        out_a.update(fa.combine(keep @ fa.stats + swap @ fb.stats))
        out_b.update(fb.combine(keep @ fb.stats + swap @ fa.stats))
    return with_score(out_a, score_weights), with_score(out_b, score_weights)


def _studies(families: Sequence[Family]) -> int:
    sizes = {len(f.stats) for f in families}
    if len(sizes) > 1:
        raise ValueError(f"score families over different numbers of studies: {sorted(sizes)}")
    return sizes.pop() if sizes else 0
