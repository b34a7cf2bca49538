"""BERTScore through the real bert-score package, from a tiny random BERT folder, with the network closed."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import sys

import pytest

from r2gen.scoring.bertscore import (
    BASELINE_FILE,
    METRIC_NAMES,
    BERTScore,
    bertscore_per_study,
    corpus_means,
    describe,
)

from .helpers.text_models import REPORTS, bert_folder

needs_package = pytest.mark.skipif(importlib.util.find_spec("bert_score") is None,
                                   reason='bert-score not installed: pip install "r2gen[bertscore]"')

PREDS = [REPORTS[0], REPORTS[1], "the heart is normal .", "", "lungs are clear . " * 40]
REFS = [REPORTS[0], REPORTS[1], REPORTS[0], REPORTS[2], REPORTS[2]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return bert_folder(tmp_path_factory.mktemp("bertscore") / "tiny-bert")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@needs_package
def test_per_study_scores_from_a_local_folder(folder, no_network):
    scores = bertscore_per_study(PREDS, REFS, folder, device="cpu")
    assert tuple(scores) == METRIC_NAMES and all(len(v) == len(PREDS) for v in scores.values())
    assert all(math.isfinite(x) and -1.0 <= x <= 1.0 + 1e-6 for v in scores.values() for x in v)
    for name in METRIC_NAMES:  # identical texts: every token matches itself, cosine 1
        assert scores[name][0] == pytest.approx(1.0, abs=1e-5) and scores[name][1] == pytest.approx(1.0, abs=1e-5)
        assert scores[name][3] == 0.0  # an empty prediction: bert_score's raw 0
        assert scores[name][2] < 1.0
    means = corpus_means(scores)
    assert means == {k: pytest.approx(sum(v) / len(v)) for k, v in scores.items()}


@needs_package
def test_same_numbers_as_bert_score_itself(folder):
    """Our wiring (layer, idf over the references, batching) against `bert_score.score` on the same pairs."""
    from bert_score import score

    preds, refs = PREDS[:3], REFS[:3]
    for layer, idf in ((None, False), (1, True)):
        ours = BERTScore(folder, layer=layer, idf=idf, batch_size=2, device="cpu").per_study(preds, refs)
        p, r, f = score(preds, refs, model_type=str(folder), num_layers=layer or 2, idf=idf, nthreads=0,
                        device="cpu")
        for name, theirs in zip(METRIC_NAMES, (p, r, f), strict=True):
            assert ours[name] == pytest.approx(theirs.tolist(), abs=1e-6)


@needs_package
def test_rescaling_with_the_folders_baseline(folder, tmp_path):
    raw = BERTScore(folder, device="cpu").per_study(PREDS, REFS)
    d = tmp_path / "with-baseline"
    d.mkdir()
    for f in folder.iterdir():
        (d / f.name).symlink_to(f)
    (d / BASELINE_FILE).write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n1,0.2,0.2,0.2\n2,0.5,0.4,0.3\n")
    scorer = BERTScore(d, device="cpu")  # the folder's baseline file turns rescaling on
    assert scorer.describe()["rescaled"] and scorer.describe()["hash"].endswith("-custom-rescaled")
    rescaled = scorer.per_study(PREDS, REFS)
    for name, b in zip(METRIC_NAMES, (0.5, 0.4, 0.3), strict=True):
        assert rescaled[name] == pytest.approx([(x - b) / (1 - b) for x in raw[name]], abs=1e-5)
        assert rescaled[name][0] == pytest.approx(1.0, abs=1e-5)  # still the maximum
    off = BERTScore(d, rescale=False, device="cpu").per_study(PREDS, REFS)
    assert all(off[name] == pytest.approx(raw[name], abs=1e-6) for name in METRIC_NAMES)


@needs_package
def test_describe_names_the_choices(folder, tmp_path):
    d = describe(folder)
    assert d["model"] == "tiny-bert" and d["layer"] == 2 and d["layer_from"] == "the model's last layer"
    assert (d["idf"], d["rescaled"], d["baseline"], d["batch_size"]) == (False, False, None, 64)
    assert d["package"].startswith("bert-score ")
    # a folder named like a model of bert_score's table gets its tuned layer, and rescale=true its baseline
    known = tmp_path / "roberta-large"
    known.mkdir()
    (known / "config.json").write_text(json.dumps({"model_type": "roberta", "num_hidden_layers": 24}))
    (known / "tokenizer.json").write_text("{}")
    (known / "model.safetensors").write_bytes(b"")
    d = describe(known, rescale=True)
    assert d["layer"] == 17 and d["layer_from"] == "bert_score's tuned layer for roberta-large"
    assert d["baseline"] == "bert_score's English baseline for roberta-large"
    assert d["hash"].startswith("roberta-large_L17_no-idf_") and d["hash"].endswith("-rescaled")


@needs_package
def test_bad_folders_and_keys_are_one_line(folder, tmp_path):
    cases = [(lambda: describe(tmp_path / "none"), FileNotFoundError, r"eval\.bertscore=.*no config\.json"),
             (lambda: describe(folder, layer=3), ValueError, r"eval\.bertscore_layer=3: choose 0 .* to 2"),
             (lambda: describe(folder, rescale=True), ValueError, r"eval\.bertscore_rescale=true: no baseline"),
             (lambda: describe(folder, batch_size=0), ValueError, r"eval\.bertscore_batch_size=0")]
    for call, kind, message in cases:
        with pytest.raises(kind, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        BERTScore(folder, device="cpu").per_study(["a", "b"], ["a"])


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "bert_score", None)  # import bert_score now fails as when it is not installed
    message = r'eval\.bertscore needs the bert-score package .*pip install "r2gen\[bertscore\]"'
    with pytest.raises(ValueError, match=message) as e:
        bertscore_per_study(["a"], ["a"], tmp_path)
    assert "\n" not in str(e.value)
