"""Bootstrap intervals and the paired test (r2gen.scoring.bootstrap) on per-study statistics
(r2gen.scoring.additive): each family recomputes its corpus score exactly, a resample's BLEU/METEOR/CE equal a
fresh scoring of the drawn corpus, a system against itself differs by 0 with p = 1, a degraded copy is
significantly worse, and intervals shrink as the corpus grows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from r2gen.scoring.bootstrap import Bootstrap, intervals, paired
from r2gen.scoring.nlg import score_corpus
from r2gen.scoring.policy import Scoring, score_families

REPORTS = [
    "the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax .",
    "there is a small left pleural effusion . the heart is mildly enlarged .",
    "right lower lobe opacity concerning for pneumonia . no pneumothorax .",
    "mild pulmonary edema . moderate cardiomegaly . small bilateral pleural effusions .",
    "no acute cardiopulmonary process . the lungs are clear .",
    "there is a right pneumothorax . the heart size is normal .",
    "left basilar atelectasis . no focal consolidation .",
    "the cardiomediastinal silhouette is enlarged . there is mild pulmonary edema .",
]


def corpus(n: int, seed: int = 0, noise: float = 0.3) -> tuple[list[str], list[str]]:
    """`n` references and hypotheses that are the reference, another study's report, or a shortened one."""
    rng = np.random.default_rng(seed)
    refs = [REPORTS[i] for i in rng.integers(0, len(REPORTS), n)]
    hyps = []
    for r in refs:
        u = rng.random()
        hyps.append(r if u > noise else REPORTS[rng.integers(0, len(REPORTS))] if u > noise / 2
                    else " ".join(r.split()[: max(1, len(r.split()) // 2)]))
    return hyps, refs


def records(hyps, refs):
    return [{"id": str(i), "prediction": h, "reference": r} for i, (h, r) in enumerate(zip(hyps, refs, strict=True))]


def test_every_family_gives_back_its_corpus_score_exactly():
    hyps, refs = corpus(60)
    scores, families = score_families(records(hyps, refs), Scoring(labeler="chexpert", weights={"Bleu_4": 0.5, "CIDEr": 0.5}))
    rebuilt = {k: v for f in families for k, v in f.scores().items()}
    assert set(rebuilt) == set(scores) - {"score"}
    for k, v in rebuilt.items():
        assert v == pytest.approx(scores[k], abs=1e-12), k
    assert {"ce_f1_macro_5", "ce_f1_example", "ce_precision_example", "ce_recall_macro_5"} <= set(scores)


def test_a_resample_scores_as_the_drawn_corpus_scored_afresh():
    """BLEU, METEOR and ROUGE-L of a resample equal pycocoevalcap / the jar on the drawn corpus itself; CIDEr-D keeps
    the full corpus' idf (the stated approximation) and stays close."""
    hyps, refs = corpus(80, seed=1)
    _, families = score_families(records(hyps, refs))
    rng = np.random.default_rng(5)
    for _ in range(2):
        idx = rng.integers(0, len(refs), len(refs))
        fresh = score_corpus([hyps[i] for i in idx], [refs[i] for i in idx])
        w = np.bincount(idx, minlength=len(refs)).astype(float)
        got = {k: v for f in families for k, v in f.scores(w @ f.stats).items()}
        for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L"):
            assert got[k] == pytest.approx(fresh[k], abs=1e-9), k
        assert got["CIDEr"] == pytest.approx(fresh["CIDEr"], rel=0.1)
    assert [f.approximation is not None for f in families if "CIDEr" in f.names] == [True]


def test_intervals_cover_the_score_shrink_as_the_corpus_grows_and_repeat_with_the_seed():
    how = Bootstrap(resamples=400, seed=3)
    widths = []
    for n in (40, 640):
        hyps, refs = corpus(n, seed=2)
        scores, families = score_families(records(hyps, refs), Scoring(labeler="chexpert"))
        iv = intervals(families, scores, how)
        assert set(iv) >= {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "ce_f1_micro", "ce_f1_example"}
        for k, (lo, hi) in iv.items():
            assert lo <= scores[k] + 1e-9 and scores[k] - 1e-9 <= hi, k
        widths.append({k: iv[k][1] - iv[k][0] for k in ("Bleu_4", "ROUGE_L", "CIDEr", "ce_f1_micro")})
        assert intervals(families, scores, how) == iv  # same seed, same intervals
    for k in widths[0]:
        assert widths[1][k] < widths[0][k] / 2, k  # 16x the studies: about a quarter of the width


def test_a_system_against_itself_differs_by_zero_with_p_one_and_a_degraded_copy_is_worse():
    hyps, refs = corpus(200, seed=4, noise=0.2)
    scoring = Scoring(labeler="chexpert", weights={"Bleu_4": 0.5, "CIDEr": 0.5})
    _, fa = score_families(records(hyps, refs), scoring)
    how = Bootstrap(resamples=500, seed=0)
    same = paired(fa, fa, how, scoring.weights)
    assert {"Bleu_4", "METEOR", "CIDEr", "score", "ce_f1_micro"} <= set(same)
    for k, r in same.items():
        assert r["diff"] == 0 and r["p"] == 1.0 and r["low"] == r["high"] == 0, k
    worse = [" ".join(h.split()[: max(1, len(h.split()) // 3)]) for h in hyps]  # every report cut to a third
    _, fb = score_families(records(worse, refs), scoring)
    diff = paired(fa, fb, how, scoring.weights)
    for k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "score"):
        assert diff[k]["diff"] > 0 and diff[k]["p"] < 0.01 and diff[k]["low"] > 0, (k, diff[k])


def test_bootstrap_settings_are_checked():
    from r2gen.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.bootstrap.resamples"):
        Bootstrap(resamples=10)
    with pytest.raises(ConfigError, match="eval.bootstrap.level"):
        Bootstrap.from_config({"level": 2})
    with pytest.raises(ConfigError, match="unknown key"):
        Bootstrap.from_config({"resample": 100})
    assert not Bootstrap.from_config({"resamples": 0}).enabled


def test_evaluate_predictions_prints_and_writes_each_score_with_its_interval(tmp_path, capsys):
    from r2gen.scoring.results import write_results

    hyps, refs = corpus(50, seed=6)
    scoring = Scoring(labeler="chexpert", bootstrap=Bootstrap(resamples=200))
    scores, families = score_families(records(hyps, refs), scoring)
    write_results(tmp_path, records(hyps, refs), scores, {"split": "test"}, scoring, families)
    body = json.loads((tmp_path / "metrics.json").read_text())
    assert body["bootstrap"]["resamples"] == 200 and body["bootstrap"]["unit"] == "study"
    assert "CIDEr" in body["bootstrap"]["approximations"]
    lo, hi = body["intervals"]["Bleu_4"]
    assert lo <= body["Bleu_4"] <= hi
    out = capsys.readouterr().out
    assert f"[{lo:.4f}, {hi:.4f}]" in out and "95% bootstrap intervals" in out
    assert f"[{lo:.4f}, {hi:.4f}]" in (tmp_path / "report.html").read_text()
