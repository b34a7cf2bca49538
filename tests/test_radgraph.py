"""RadGraph F1 through the real radgraph package, from a tiny random RadGraph folder, with the network closed."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sys

import pytest

from r2gen.scoring.radgraph import (
    METRIC_NAMES,
    RadGraphF1,
    corpus_means,
    describe,
    local_transformers,
    model_folder,
    radgraph_per_study,
)

from .helpers.text_models import NER_LABELS, REPORTS, radgraph_folder

needs_package = pytest.mark.skipif(importlib.util.find_spec("radgraph") is None,
                                   reason='radgraph not installed: pip install "r2gen[radgraph]"')

PREDS = [REPORTS[0], "the heart is normal .", "lungs are clear", "", "  ", REPORTS[3] + " " + REPORTS[4]]
REFS = [REPORTS[0], REPORTS[0], REPORTS[2], REPORTS[2], REPORTS[1], REPORTS[3]]
WIDTH = 3  # the tiny model's max_span_width


@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    """Every span of up to 3 words is an entity labelled NER_LABELS[1]; relations random."""
    return radgraph_folder(tmp_path_factory.mktemp("rg") / "tiny-radgraph", entity_label=1)


@pytest.fixture(scope="module")
def package_cache(tmp_path_factory):
    """A random model in the package's own cache layout: <cache>/radgraph/{config.json, vocabulary, weights.th}."""
    cache = tmp_path_factory.mktemp("rg-cache")
    radgraph_folder(cache / "radgraph", seed=1)
    return cache


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _f1(hyp: set, ref: set) -> float:
    p = len(hyp & ref) / len(hyp) if hyp else 0.0
    r = len(hyp & ref) / len(ref) if ref else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def _items(annotation: dict, level: str) -> set:
    """The RadGraph F1 items of one report (Delbrouck et al. 2022), written out from the definition."""
    entities = annotation["entities"]
    if level == "simple":
        return {(e["tokens"], e["label"]) for e in entities.values()}
    if level == "partial":
        return {(e["tokens"], e["label"], True) if e["relations"] else (e["tokens"], e["label"])
                for e in entities.values()}
    return {x for e in entities.values() for x in ([(e["tokens"], e["label"])] if not e["relations"] else
            [(e["tokens"].lower(), e["label"], rel, entities[to]["tokens"].lower()) for rel, to in e["relations"]])}


@needs_package
def test_levels_follow_their_definition(rigged, no_network):
    scorer = RadGraphF1(rigged, device="cpu")
    scores = scorer.per_study(PREDS, REFS)
    assert tuple(scores) == METRIC_NAMES and all(len(v) == len(PREDS) for v in scores.values())
    assert all(0.0 <= x <= 1.0 for v in scores.values() for x in v)
    assert [scores[k][0] for k in METRIC_NAMES] == [1.0, 1.0, 1.0]  # identical texts
    assert [scores[k][i] for k in METRIC_NAMES for i in (3, 4)] == [0.0] * 6  # empty / blank prediction

    def spans(text):  # the rigged model's entities: every span of up to WIDTH words
        w = text.split()
        return {(" ".join(w[i:j]), NER_LABELS[1])
                for i in range(len(w)) for j in range(i + 1, min(i + WIDTH, len(w)) + 1)}

    for i, (p, r) in enumerate(zip(PREDS, REFS, strict=True)):
        if not p.strip():
            continue
        assert scores["RadGraph_F1_simple"][i] == pytest.approx(_f1(spans(p), spans(r)))
        hyp, ref = scorer.annotate([p, r])
        for name, level in (("RadGraph_F1_partial", "partial"), ("RadGraph_F1_complete", "complete")):
            assert scores[name][i] == pytest.approx(_f1(_items(hyp, level), _items(ref, level)))
    assert corpus_means(scores) == {k: pytest.approx(sum(v) / len(v)) for k, v in scores.items()}


@needs_package
def test_same_numbers_as_f1radgraph(package_cache, no_network):
    """The package's own F1RadGraph(reward_level="all") on the same model gives the same per-study lists."""
    from radgraph import F1RadGraph

    ours = radgraph_per_study(PREDS, REFS, package_cache, device="cpu")  # the cache layout: <cache>/radgraph/
    preds = [p if p.strip() else "" for p in PREDS]  # F1RadGraph skips only "" itself
    with local_transformers(model_folder(package_cache).transformers):
        reference = F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=str(package_cache), cuda=-1)
    _, rewards, _, _ = reference(refs=REFS, hyps=preds)
    assert [ours[k] for k in METRIC_NAMES] == [list(r) for r in rewards]
    assert any(a != b for a, b in zip(ours["RadGraph_F1_partial"], ours["RadGraph_F1_complete"], strict=True))


@needs_package
def test_describe_and_the_transformer_from_the_hf_cache(rigged, tmp_path, monkeypatch):
    d = describe(rigged)
    assert (d["model"], d["model_type"], d["transformer"]) == ("tiny-radgraph", "radgraph", ["tiny-org/tiny-bert"])
    assert d["levels"] == {"RadGraph_F1_simple": "simple", "RadGraph_F1_partial": "partial",
                           "RadGraph_F1_complete": "complete"} and d["package"].startswith("radgraph ")
    # without <folder>/<hub id>/, a transformer already in the local Hugging Face cache is used
    import huggingface_hub.constants

    folder = tmp_path / "radgraph-model"
    shutil.copytree(rigged, folder, ignore=shutil.ignore_patterns("tiny-org"))
    hub = tmp_path / "hub"
    snapshot = hub / "models--tiny-org--tiny-bert" / "snapshots" / "abc123"
    shutil.copytree(rigged / "tiny-org" / "tiny-bert", snapshot)
    (hub / "models--tiny-org--tiny-bert" / "refs").mkdir()
    (hub / "models--tiny-org--tiny-bert" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert model_folder(folder).transformers == {"tiny-org/tiny-bert": snapshot}


@needs_package
def test_bad_folders_are_one_line(rigged, package_cache, tmp_path):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(rigged, no_weights, ignore=shutil.ignore_patterns("weights.th"))
    no_bert = tmp_path / "no-bert"
    shutil.copytree(rigged, no_bert, ignore=shutil.ignore_patterns("tiny-org"))
    two = tmp_path / "two"
    two.mkdir()
    (two / "radgraph").symlink_to(package_cache / "radgraph")
    (two / "radgraph-xl").symlink_to(package_cache / "radgraph")
    cases = [(tmp_path / "none", FileNotFoundError, r"eval\.radgraph=.*none: no such folder"),
             (no_weights, FileNotFoundError, r"eval\.radgraph=.*no weights\.th there"),
             (no_bert, FileNotFoundError, r"transformer 'tiny-org/tiny-bert', not found; put .*no-bert/tiny-org"),
             (two, ValueError, r"eval\.radgraph=.*holds radgraph, radgraph-xl; point it at one of them")]
    for folder, kind, message in cases:
        with pytest.raises(kind, match=message) as e:
            describe(folder)
        assert "\n" not in str(e.value)


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "radgraph", None)  # import radgraph now fails as when it is not installed
    message = r'eval\.radgraph needs the radgraph package .*pip install "r2gen\[radgraph\]"'
    with pytest.raises(ValueError, match=message) as e:
        radgraph_per_study(["a"], ["a"], tmp_path)
    assert "\n" not in str(e.value)
