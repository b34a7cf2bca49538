"""r2gen.scoring.nlg: scores identical to pycocoevalcap called the R2Gen way, plus the guards it adds
(whitespace, empty texts, one METEOR JVM). Anything that talks to METEOR runs under a timeout, so a protocol
regression fails the test instead of hanging CI."""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import threading

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from r2gen.scoring import METRIC_NAMES, close_meteor, nlg, per_sample_scores, score_corpus

SENTENCES = [
    "the heart size is normal .", "the cardiomediastinal silhouette is within normal limits .",
    "no pleural effusion or pneumothorax .", "the lungs are clear .", "there is no focal consolidation .",
    "mild cardiomegaly is present .", "there is a small left pleural effusion .",
    "bibasilar atelectasis is noted .", "degenerative changes of the thoracic spine .",
    "no acute cardiopulmonary abnormality .", "the pulmonary vasculature is normal .",
    "a right-sided picc line terminates in the svc .", "median sternotomy wires are intact .",
    "there is mild pulmonary edema .", "no acute osseous abnormality .",
]
TIMEOUT_S = 90  # a JVM start is ~2 s; a hang is forever


def with_timeout(fn, timeout: float = TIMEOUT_S):
    """fn() in a daemon thread; fail (and kill the JVM, which unblocks it) if it does not return in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        close_meteor()
        pytest.fail(f"scoring did not return within {timeout} s (METEOR protocol hang?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n report-like pairs: shuffled sentences, partly overlapping, of varied lengths (one hypothesis verbatim)."""
    rng = random.Random(seed)
    hyps, refs = [], []
    for i in range(n):
        ref = rng.sample(SENTENCES, rng.randint(2, 6))
        hyp = ref[:] if i == 0 else rng.sample(ref, rng.randint(1, len(ref))) + rng.sample(SENTENCES, rng.randint(0, 2))
        hyps.append(" ".join(hyp))
        refs.append(" ".join(ref))
    return hyps, refs


def direct(hyps: list[str], refs: list[str], meteor: Meteor) -> tuple[dict[str, float], dict[str, list[float]]]:
    """R2Gen's compute_scores on the same inputs: gts = {i: [ref]}, res = {i: [hyp]}, no tokenizer."""
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    try:
        met, _ = meteor.compute_score(gts, res)
    finally:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    scores = {f"Bleu_{n + 1}": b for n, b in enumerate(bleu)}
    scores.update(METEOR=met, ROUGE_L=rouge, CIDEr=cider)
    return scores, {"Bleu_4": list(bleu_each[3]), "ROUGE_L": list(rouge_each), "CIDEr": list(cider_each)}


@pytest.mark.slow
def test_scores_equal_direct_pycocoevalcap():
    hyps, refs = corpus(30, seed=0)
    messy = [h.replace(" . ", " .\n", 1) + "  \t" for h in hyps]  # line breaks go; other whitespace is kept
    ours = with_timeout(lambda: score_corpus(messy, refs))
    meteor = Meteor()  # a plain one of our own, as R2Gen builds it
    expected, expected_each = with_timeout(lambda: direct([" ".join(h.splitlines()) for h in messy], refs, meteor))
    assert list(ours) == list(METRIC_NAMES)
    assert all(type(v) is float for v in ours.values())
    for name in METRIC_NAMES:
        if name == "METEOR":
            assert ours[name] == pytest.approx(expected[name], abs=1e-9)
        else:
            assert ours[name] == expected[name], name
    each = per_sample_scores(messy, refs)
    assert len(each) == len(hyps)
    for name in ("Bleu_4", "ROUGE_L", "CIDEr"):
        assert [s[name] for s in each] == expected_each[name], name
    # CIDEr's per-study values are the corpus computation's: their mean is the corpus score.
    assert sum(s["CIDEr"] for s in each) / len(each) == pytest.approx(ours["CIDEr"], rel=1e-12)


def test_known_values_identical_and_disjoint():
    hyps, _ = corpus(12, seed=1)
    same = with_timeout(lambda: score_corpus(hyps, hyps))
    assert same["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert same["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert same["ROUGE_L"] == 1.0
    assert same["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert same["CIDEr"] > 1.0
    other = ["cardiomegaly with pulmonary edema", "bibasilar opacities suggest pneumonia",
             "enlarged mediastinum widened", "left basilar atelectasis seen"]
    mine = ["heart size normal", "lungs clear", "no effusion", "spine intact"]
    apart = with_timeout(lambda: score_corpus(mine, other))
    for name in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "METEOR"):
        assert apart[name] == pytest.approx(0.0, abs=1e-6), name


def test_newlines_do_not_hang_meteor():
    hyps = ["the heart is normal .\nno effusion .", "lungs are clear .\r\nno pneumothorax .\r", "the spine\v."]
    refs = ["the heart is normal . no effusion .", "lungs are clear . no pneumothorax .", "the spine ."]
    got = with_timeout(lambda: score_corpus(hyps, refs))
    flat = with_timeout(lambda: score_corpus([" ".join(h.splitlines()) for h in hyps], refs))
    assert got == flat
    assert got["METEOR"] == pytest.approx(1.0, abs=1e-6) and got["ROUGE_L"] == 1.0


def test_empty_texts_get_a_defined_zero():
    hyps = ["", "  \n ", "no pleural effusion .", ""]
    refs = ["the lungs are clear .", "mild cardiomegaly .", "no pleural effusion .", ""]
    got = with_timeout(lambda: score_corpus(hyps, refs))
    assert all(math.isfinite(v) for v in got.values())
    each = per_sample_scores(hyps, refs)
    for i in (0, 1, 3):  # empty hypothesis: nothing matches, not even an empty reference
        assert each[i]["Bleu_4"] == pytest.approx(0.0, abs=1e-6)
        assert each[i]["ROUGE_L"] == 0.0 and each[i]["CIDEr"] == 0.0
    assert each[2]["ROUGE_L"] == 1.0 and each[2]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    # A corpus of nothing but empty texts (raw, Cider raises on it) scores 0 everywhere.
    none = with_timeout(lambda: score_corpus(["", " "], ["", "\n"]))
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in none.values()), none


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"3 hypotheses but 2 references"):
        score_corpus(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match=r"1 hypotheses but 2 references"):
        per_sample_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty corpus"):
        score_corpus([], [])
    with pytest.raises(ValueError, match="empty corpus"):
        per_sample_scores([], [])
    with pytest.raises(ValueError, match="unknown metric"):
        score_corpus(["a"], ["a"], metrics=("BLEU",))
    with pytest.raises(TypeError):
        score_corpus([None], ["a"])


@pytest.mark.slow
def test_one_meteor_jvm_reused_and_closed():
    hyps, refs = corpus(8, seed=2)
    first = with_timeout(lambda: score_corpus(hyps, refs, metrics=("METEOR",)))
    meteor, pid = nlg._meteor, nlg._meteor.meteor_p.pid
    second = with_timeout(lambda: score_corpus(hyps, refs))
    assert nlg._meteor is meteor and nlg._meteor.meteor_p.pid == pid
    assert first["METEOR"] == second["METEOR"]
    # Concurrent callers share the JVM under the lock and get the same answer.
    results = with_timeout(lambda: _in_threads(lambda: score_corpus(hyps, refs, metrics=("METEOR",)), 3))
    assert results == [first] * 3 and nlg._meteor.meteor_p.pid == pid
    proc = meteor.meteor_p
    close_meteor()
    assert nlg._meteor is None and proc.poll() is not None
    close_meteor()  # idempotent
    assert score_corpus(hyps, refs, metrics=("Bleu_4", "CIDEr")).keys() == {"Bleu_4", "CIDEr"}
    assert nlg._meteor is None  # no METEOR asked for: no JVM started


class FakeMeteor:
    """Stands in for the JVM (each real start costs ~7 s): counts starts and closes, fails on demand."""

    started = closed = 0
    fail = False

    def __init__(self):
        type(self).started += 1
        self._owner_pid = os.getpid()

    def score_with_stats(self, gts, res):
        if self.fail:
            raise ValueError("could not convert string to float: ''")  # what a dead JVM looks like
        return 0.25, [0.25] * len(res), ["1 1 0 0 1 1 0 0" + " 0" * 12 + " 1 1 1"] * len(res)

    def close(self):
        type(self).closed += 1


@pytest.mark.slow
def test_meteor_restarts_after_close_and_after_a_failure(monkeypatch):
    close_meteor()
    monkeypatch.setattr(nlg, "_SharedMeteor", FakeMeteor)
    assert score_corpus(["a"], ["a"], metrics=("METEOR",)) == {"METEOR": 0.25}
    score_corpus(["a"], ["a"], metrics=("METEOR",))
    assert FakeMeteor.started == 1
    close_meteor()
    assert FakeMeteor.closed == 1 and nlg._meteor is None
    score_corpus(["a"], ["a"], metrics=("METEOR",))
    assert FakeMeteor.started == 2  # started again, lazily, after closing
    # A failure mid-protocol leaves pycocoevalcap's Meteor out of step (and its lock held): it is thrown away.
    monkeypatch.setattr(FakeMeteor, "fail", True)
    with pytest.raises(ValueError, match="convert"):
        score_corpus(["a"], ["a"], metrics=("METEOR",))
    assert nlg._meteor is None and FakeMeteor.closed == 2
    monkeypatch.setattr(FakeMeteor, "fail", False)
    assert score_corpus(["a"], ["a"], metrics=("METEOR",)) == {"METEOR": 0.25} and FakeMeteor.started == 3
    close_meteor()


def _in_threads(fn, n: int) -> list:
    out = [None] * n

    def run(i):
        out[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_bleu_prints_nothing(capfd):
    hyps, refs = corpus(5, seed=3)
    score_corpus(hyps, refs, metrics=("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"))
    per_sample_scores(hyps, refs)
    assert capfd.readouterr().out == ""
