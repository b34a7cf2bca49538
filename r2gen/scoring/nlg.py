"""Corpus-level NLG scores of generated reports, computed exactly as R2Gen / R2GenGPT do (`compute_scores`).

Scorers (pycocoevalcap 1.2), fed `gts = {i: [reference]}` and `res = {i: [hypothesis]}`, with NO PTBTokenizer:

* `Bleu(4)` -> Bleu_1..Bleu_4: corpus BLEU from n-gram counts pooled over all studies, brevity penalty with the
  "closest" reference length, and pycocoevalcap's 1e-15 / 1e-9 smoothing constants (so a perfect corpus scores
  0.99999999..., not exactly 1).
* `Meteor()` -> METEOR: the METEOR 1.5 jar (`-l en -norm`, exact/stem/synonym/paraphrase matching). Its corpus
  score is the jar's own aggregate over the statistics of all studies (its "EVAL" line), not a mean of
  per-study scores.
* `Rouge()` -> ROUGE_L: mean over studies of the LCS F-measure (beta 1.2) on space-separated tokens.
* `Cider()` -> CIDEr: pycocoevalcap's `Cider` class, which is CIDEr-D (1- to 4-gram tf-idf cosine, clipped
  hypothesis counts, Gaussian length penalty sigma 6, x10). Its idf comes from the references of the corpus being
  scored, so a study's score depends on the whole corpus (a one-study corpus always scores 0).

Callers pass text already cleaned the data set's way (lower-cased, punctuation split off as its own token):
tokens are whatever lies between spaces. This module only adds two guards the field's scripts lack:

* Line breaks become spaces (other whitespace is kept, as R2Gen scores it). METEOR talks to its JVM one line per
  request, so a "\\n" or "\\r" in a hypothesis desynchronises the protocol and the read blocks forever.
* An empty hypothesis (a model may generate nothing) is scored as the token `EMPTY_HYPOTHESIS`, an empty
  reference as `EMPTY_REFERENCE`: two different nonsense words, so an empty text matches nothing and scores 0
  (a real word counts as a wrong one), even against an empty reference. Raw empty strings are quirky in
  pycocoevalcap: Rouge scores "" against "" as 1.0, Cider raises on a corpus with no tokens, and BLEU silently
  drops an empty hypothesis from the brevity penalty's length.

One METEOR JVM (~2 s to start, ~2 GB heap cap) serves the whole process: started on the first call that asks
for METEOR, shared under a lock, shut down by `close_meteor()` (registered with atexit).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import signal
import threading
from collections.abc import Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from r2gen.scoring.additive import Family, mean_family, ratio

METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
EMPTY_HYPOTHESIS = "xxemptyhypothesisxx"
EMPTY_REFERENCE = "xxemptyreferencexx"


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while a child process starts (only the main thread may change signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:  # None: the handler was not set from Python; Python's own is the best guess
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


class _SharedMeteor(Meteor):
    """pycocoevalcap's Meteor, unchanged (same command, same `compute_score`), with a shutdown that cannot hang,
    and `score_with_stats`, which also returns the jar's per-study statistics."""

    def __init__(self) -> None:
        with _sigint_ignored():  # the JVM inherits SIG_IGN: a terminal's Ctrl-C reaches the whole process group,
            super().__init__()  # and must not kill the JVM while training stops cleanly (r2gen.resume)
        self._owner_pid = os.getpid()
        # Nobody reads the JVM's stderr pipe; drain it so a chatty JVM can never block on a full pipe.
        threading.Thread(target=self.meteor_p.stderr.read, daemon=True, name="meteor-stderr").start()

    def score_with_stats(self, gts: dict, res: dict) -> tuple[float, list[float], list[str]]:
        """`compute_score`'s requests and replies (per study a SCORE line, then one EVAL line of all their
        statistics), also returning each study's statistics line."""
        with self.lock:
            stats = [self._stat(res[i][0], gts[i]) for i in res]
            self.meteor_p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
            self.meteor_p.stdin.flush()
            scores = [float(self.meteor_p.stdout.readline().strip()) for _ in stats]
            return float(self.meteor_p.stdout.readline().strip()), scores, stats

    def close(self) -> None:
        # In a forked child this object is a copy: the JVM belongs to the parent, leave it alone.
        if os.getpid() != self._owner_pid:
            return
        proc = self.meteor_p
        with contextlib.suppress(Exception):
            proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def __del__(self) -> None:
        # Meteor.__del__ takes the lock that compute_score never releases if it raised (a dead JVM): it would
        # block garbage collection forever. Closing needs no lock here; callers hold the module's lock.
        with contextlib.suppress(Exception):
            self.close()


_meteor: _SharedMeteor | None = None
_meteor_lock = threading.Lock()


def _meteor_score(gts: dict, res: dict) -> tuple[float, list[float], list[str]]:
    """The jar's corpus METEOR, its per-study scores and statistics lines, in `res` order."""
    global _meteor
    with _meteor_lock:
        if _meteor is None or _meteor._owner_pid != os.getpid():  # a forked child starts its own JVM
            _meteor = _SharedMeteor()
        meteor = _meteor
        try:
            return meteor.score_with_stats(gts, res)
        except BaseException:
            # The JVM's replies are now out of step with its requests and Meteor's own lock stays held:
            # throw this one away, the next call starts a fresh JVM.
            meteor.close()
            if _meteor is meteor:
                _meteor = None
            raise


def close_meteor() -> None:
    """Shut the shared METEOR JVM down (a later METEOR score starts a new one)."""
    global _meteor
    # A call stuck inside the JVM holds the lock; don't wait for it forever (at exit, say): killing the JVM
    # ends that call's blocked read, so it fails instead of hanging.
    locked = _meteor_lock.acquire(timeout=10)
    try:
        meteor, _meteor = _meteor, None
        if meteor is not None:
            meteor.close()
    finally:
        if locked:
            _meteor_lock.release()


atexit.register(close_meteor)


def _clean(text: str, placeholder: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"reports must be str, got {type(text).__name__}: {text!r}")
    # Only line breaks go (every one str.splitlines knows, a superset of what Java's readLine ends a line on):
    # other whitespace stays exactly as R2Gen scores it, e.g. the double space of an empty cleaned sentence,
    # which Rouge counts as an empty token.
    text = " ".join(text.splitlines())
    return text if text.strip() else placeholder


def _inputs(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[dict, dict]:
    """R2Gen's `gts, res` dicts, keyed 0..n-1 in the given order."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair up")
    if not hypotheses:
        raise ValueError("cannot score an empty corpus: no hypotheses and no references given")
    gts = {i: [_clean(r, EMPTY_REFERENCE)] for i, r in enumerate(references)}
    res = {i: [_clean(h, EMPTY_HYPOTHESIS)] for i, h in enumerate(hypotheses)}
    return gts, res


def _bleu(gts: dict, res: dict) -> tuple[list[float], list[list[float]]]:
    # verbose=0 as R2Gen calls it; the redirect too, because Bleu's default (verbose=1) and other versions print
    # "{'testlen': ...}" and "ratio: ..." on every call, which would litter the trainer's logs.
    with contextlib.redirect_stdout(io.StringIO()):
        return Bleu(4).compute_score(gts, res, verbose=0)


def score_corpus(hypotheses: Sequence[str], references: Sequence[str],
                 metrics: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """Corpus scores of `hypotheses` against one reference each (same order), as python floats keyed by the
    names asked for (pycocoevalcap's, see METRIC_NAMES). Only the scorers needed run: METEOR's JVM starts only
    when "METEOR" is asked for."""
    return score_corpus_families(hypotheses, references, metrics, families=False)[0]


def score_corpus_families(hypotheses: Sequence[str], references: Sequence[str],
                          metrics: Sequence[str] = METRIC_NAMES, families: bool = True
                          ) -> tuple[dict[str, float], list[Family]]:
    """`score_corpus`'s scores and, with `families`, the same scores as per-study statistics that add up
    (r2gen.scoring.additive), for bootstrap intervals and paired tests, from the same scorer calls.

    BLEU's family is exact for any weighting of the studies (pooled clipped n-gram matches, n-gram counts and
    lengths, pycocoevalcap's formula and smoothing); ROUGE-L's is exact (a mean). CIDEr-D's is the mean of the
    per-study scores with the idf of the references scored here: exact for this corpus and for any swap of
    hypotheses between two systems (the references, hence the idf, stay), an approximation for a bootstrap
    resample (whose own idf would count a drawn reference once per draw). METEOR's is exact: the jar's own
    per-study statistics, pooled as the jar pools them (`_meteor_family`)."""
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: choose from {METRIC_NAMES}")
    gts, res = _inputs(hypotheses, references)
    out: dict[str, float] = {}
    fams: list[Family] = []
    bleus = [m for m in metrics if m.startswith("Bleu_")]
    if bleus:
        bleu, _ = _bleu(gts, res)
        out.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
        if families:
            fams.append(_bleu_family(gts, res, bleus))
    if "METEOR" in metrics:
        out["METEOR"], per, lines = _meteor_score(gts, res)
        if families:
            fams.append(_meteor_family(lines, per, out["METEOR"]))
    if "ROUGE_L" in metrics:
        score, per = Rouge().compute_score(gts, res)
        out["ROUGE_L"] = float(score)
        if families:
            fams.append(mean_family({"ROUGE_L": per}))
    if "CIDEr" in metrics:
        score, per = Cider().compute_score(gts, res)
        out["CIDEr"] = float(score)
        if families:
            fams.append(mean_family({"CIDEr": per}, approximation=(
                "CIDEr-D's idf from all references scored, kept for every bootstrap resample (exact for paired "
                "swaps: both systems share the references)")))
    return {m: out[m] for m in metrics}, fams


# METEOR 1.5's parameters for `-l en` (task "default"): alpha, beta, gamma, delta, and the weights of its four
# matching stages (exact, stem, synonym, paraphrase)
_METEOR_ABGD = (0.85, 0.2, 0.6, 0.75)
_METEOR_WEIGHTS = np.array([1.0, 0.6, 0.8, 0.6])


def _meteor_family(lines: Sequence[str], per: Sequence[float], corpus: float) -> Family:
    """METEOR from the jar's 23 statistics per study (test and reference length and function words, per stage
    content and function matches on each side, chunks, matched words on each side), pooled as its
    `MeteorStats.addStats` pools them (a perfect one-chunk study adds no chunk) and scored with its
    `computeMetrics` formula. Checked against the jar on the corpus itself: a jar that pools or scores otherwise
    (another version or language) falls back to the mean of its per-study scores scaled to its corpus score,
    and the family says so."""
    stats = np.array([[float(x) for x in line.split()] for line in lines]).reshape(len(lines), 23)
    stage = stats[:, 4:20].reshape(-1, 4, 4)  # [N, stage, (test content, ref content, test function, ref function)]
    perfect = ((stage[..., [0, 2]].sum((1, 2)) == stats[:, 0]) & (stage[..., [1, 3]].sum((1, 2)) == stats[:, 1])
               & (stats[:, 20] == 1))
    stats[perfect, 20] = 0
    a, b, g, d = _METEOR_ABGD

    def combine(t: np.ndarray) -> dict[str, np.ndarray]:
        st = t[..., 4:20].reshape(t.shape[:-1] + (4, 4))
        p = ratio((_METEOR_WEIGHTS * (d * st[..., 0] + (1 - d) * st[..., 2])).sum(-1),
                  d * (t[..., 0] - t[..., 2]) + (1 - d) * t[..., 2])
        r = ratio((_METEOR_WEIGHTS * (d * st[..., 1] + (1 - d) * st[..., 3])).sum(-1),
                  d * (t[..., 1] - t[..., 3]) + (1 - d) * t[..., 3])
        f_mean = ratio(p * r, a * p + (1 - a) * r)
        frag = ratio(t[..., 20], (t[..., 21] + t[..., 22]) / 2)
        return {"METEOR": f_mean * (1 - g * frag ** b)}

    family = Family(("METEOR",), stats, combine)
    if abs(family.scores()["METEOR"] - corpus) <= 1e-9:
        return family
    mean = sum(per) / len(per)
    scale = corpus / mean if mean else 1.0
    return mean_family({"METEOR": [x * scale for x in per]}, approximation=(
        f"this METEOR jar's aggregate is not the pooled formula: per-study METEOR x {scale:.4f} (its corpus "
        f"score / the mean of its per-study scores), averaged over the resample"))


def _bleu_family(gts: dict, res: dict, names: Sequence[str]) -> Family:
    """Per study: clipped n-gram matches (n = 1..4), hypothesis n-grams, hypothesis and reference lengths; the
    corpus BLEU of any weighting is pycocoevalcap's formula on their totals (its `compute_score`: one reference,
    so its "closest" and "average" reference lengths are that reference's)."""
    rows = []
    for i in res:
        cooked = cook_test(res[i][0], cook_refs(gts[i]))
        rows.append([*cooked["correct"], *cooked["guess"], cooked["testlen"], cooked["reflen"][0]])
    stats = np.asarray(rows, dtype=np.float64)  # [N, 10]
    small, tiny = 1e-9, 1e-15  # pycocoevalcap's

    def combine(t: np.ndarray) -> dict[str, np.ndarray]:
        ratio = (t[..., 8] + tiny) / (t[..., 9] + small)
        bp = np.where(ratio < 1, np.exp(1 - 1 / np.where(ratio < 1, ratio, 1.0)), 1.0)
        out, prod = {}, np.ones(t.shape[:-1])
        for k in range(4):
            prod = prod * (t[..., k] + tiny) / (t[..., 4 + k] + small)
            out[f"Bleu_{k + 1}"] = prod ** (1.0 / (k + 1)) * bp
        return out

    return Family(tuple(names), stats, combine)


def per_sample_scores(hypotheses: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Per-study Bleu_4, ROUGE_L and CIDEr, in input order (e.g. for a report viewer to sort studies).

    Each is the per-study list its scorer returns alongside the corpus score; CIDEr's therefore uses the idf
    of the whole corpus given here, and the mean of its values is the corpus CIDEr."""
    gts, res = _inputs(hypotheses, references)
    _, bleu = _bleu(gts, res)
    _, rouge = Rouge().compute_score(gts, res)
    _, cider = Cider().compute_score(gts, res)
    return [{"Bleu_4": float(bleu[3][i]), "ROUGE_L": float(rouge[i]), "CIDEr": float(cider[i])}
            for i in range(len(res))]
