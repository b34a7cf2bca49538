"""The synthetic demo set: layout, determinism, atomic regeneration, the labeler, and that findings are in the pixels."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2gen.data import synthetic
from r2gen.data.synthetic import FINDINGS, generate_demo
from r2gen.scoring.demo_labeler import finding_scores, label_report

SMALL = dict(n_train=40, n_val=8, n_test=8, image_size=64, seed=0)


def r2gen_clean(report: str) -> str:
    """R2Gen-style cleaning: lower-case, split sentences, strip punctuation, join with ' . '."""
    sentences = [re.sub(r"[.,;:]", "", s).strip() for s in report.lower().split(". ")]
    return " . ".join(s for s in sentences if s) + " ."


def load(root: Path) -> dict:
    return json.loads((root / "annotation.json").read_text())


def frontal(root: Path, entry: dict) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / entry["image_path"][0]), np.float32)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small") / "demo"
    assert generate_demo(root, **SMALL) == root / "annotation.json"
    return root


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Enough studies (64 px) for per-finding statistics; ~1-2 s."""
    root = tmp_path_factory.mktemp("medium") / "demo"
    generate_demo(root, n_train=360, n_val=60, n_test=60, image_size=64, seed=1)
    ann = load(root)
    return root, ann["train"] + ann["val"] + ann["test"]


# ------------------------------------------------------------------------------------------- layout
def test_layout(small):
    ann = load(small)
    assert set(ann) == {"train", "val", "test"}
    assert [len(ann[s]) for s in ("train", "val", "test")] == [40, 8, 8]
    entries = [e for s in ann for e in ann[s]]
    assert len({e["id"] for e in entries}) == len(entries)
    for split, es in ann.items():
        for e in es:
            assert e["split"] == split and e["id"].startswith("demo_")
            assert e["image_path"] == [f"{e['id']}/0.png", f"{e['id']}/1.png"]
            assert set(e["labels"]) == set(FINDINGS) and set(e["labels"].values()) <= {0, 1}
            assert "\n" not in e["report"] and 3 <= e["report"].count(". ") + 1 <= 7
            for p in e["image_path"]:
                with Image.open(small / "images" / p) as im:
                    assert im.format == "PNG" and im.mode == "L" and im.size == (64, 64)
    json.loads((small / ".demo_params.json").read_text())
    # Both views differ (a lateral is not a copy of the frontal).
    e = ann["train"][0]
    views = [np.asarray(Image.open(small / "images" / p)) for p in e["image_path"]]
    assert np.abs(views[0].astype(int) - views[1]).mean() > 5


def test_label_mix(medium):
    _, entries = medium
    y = np.array([[e["labels"][f] for f in FINDINGS] for e in entries])
    normal = (y.sum(1) == 0).mean()
    assert 0.2 < normal < 0.5, normal
    assert 0.2 < y[:, 0].mean() < 0.4  # cardiomegaly ~30%
    assert (y.sum(0) > 0).all()  # every finding occurs


# ------------------------------------------------------------------------------------------- determinism / caching
def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_idempotent(tmp_path, small):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_demo(a, **SMALL)
    generate_demo(b, **SMALL)
    snap = _snapshot(a)
    assert snap == _snapshot(b) == _snapshot(small)
    generate_demo(c, **{**SMALL, "seed": 1})
    assert _snapshot(c)["annotation.json"] != snap["annotation.json"]
    assert _snapshot(c)["images/demo_00000/0.png"] != snap["images/demo_00000/0.png"]

    # Same parameters again: nothing rewritten.
    files = [a / "annotation.json", a / "images/demo_00000/0.png"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    generate_demo(a, **SMALL)
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    # Changed parameters: regenerated in place, old studies gone, no temporary folders left.
    generate_demo(a, **{**SMALL, "n_train": 10, "image_size": 48})
    ann = load(a)
    assert len(ann["train"]) == 10 and not (a / "images" / "demo_00055").exists()
    assert Image.open(a / "images" / ann["val"][0]["image_path"][1]).size == (48, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_interrupted_run_keeps_old_set(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    generate_demo(root, **SMALL)
    before = _snapshot(root)

    def boom(out, params):
        (out / "annotation.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_demo(root, **{**SMALL, "seed": 5})
    assert _snapshot(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_concurrent_runs(tmp_path):
    root = tmp_path / "demo"
    params = [SMALL, SMALL, {**SMALL, "n_train": 12}]
    errors: list[BaseException] = []

    def run(p):
        try:
            generate_demo(root, **p)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in params]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    # Whichever run finished last, the set on disk is complete and matches its own parameters.
    ann, p = load(root), json.loads((root / ".demo_params.json").read_text())
    assert len(ann["train"]) == p["n_train"] and p["n_train"] in (40, 12)
    assert all((root / "images" / q).is_file() for s in ann for e in ann[s] for q in e["image_path"])
    assert [x.name for x in tmp_path.iterdir()] == ["demo"]


# ------------------------------------------------------------------------------------------- labeler
def test_labeler_agrees_with_stored_labels(medium):
    _, entries = medium
    for e in entries:
        assert label_report(e["report"]) == e["labels"], e["report"]
        assert label_report(r2gen_clean(e["report"])) == e["labels"], r2gen_clean(e["report"])
        assert label_report(e["report"].upper()) == e["labels"]


def test_sentences_with_no_carry_no_positive(medium):
    """The generator never says 'no' in a positive sentence, so such sentences label all-negative."""
    _, entries = medium
    for e in entries:
        for sentence in e["report"].split(". "):
            if re.search(r"\bno\b", sentence.lower()):
                assert not any(label_report(sentence).values()), sentence


def pos(*names: str) -> dict[str, int]:
    return {f: int(f in names) for f in FINDINGS}


@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax.", pos()),
    ("no pleural effusion", pos()),
    ("Lungs are clear without effusion.", pos()),
    ("Heart size is normal.", pos()),
    ("The heart is not enlarged. No focal consolidation.", pos()),
    ("There is no consolidation, effusion, or pneumothorax.", pos()),
    ("Pneumothorax is not seen.", pos()),
    ("The heart is enlarged.", pos("cardiomegaly")),
    ("CARDIOMEGALY!", pos("cardiomegaly")),
    ("Small left pleural effusion.", pos("effusion_left")),
    ("There is a moderate right pleural effusion.", pos("effusion_right")),
    ("Bilateral pleural effusions.", pos("effusion_left", "effusion_right")),
    ("Pleural effusions are present bilaterally.", pos("effusion_left", "effusion_right")),
    ("Focal opacity in the right upper lobe.", pos("opacity_right")),
    ("There is an airspace opacity in the left lower lung zone.", pos("opacity_left")),
    ("Small right apical pneumothorax.", pos("pneumothorax_right")),
    ("Small left pleural effusion, no pneumothorax.", pos("effusion_left")),
    ("No effusion but there is a small right pneumothorax.", pos("pneumothorax_right")),
    ("Left pleural effusion and right pneumothorax.", pos("effusion_left", "pneumothorax_right")),
    ("Opacity in the right lower lobe and left pleural effusion.", pos("opacity_right", "effusion_left")),
    ("the heart is enlarged . small left pleural effusion . no pneumothorax .", pos("cardiomegaly", "effusion_left")),
    ("no acute cardiopulmonary process . the lungs are clear .", pos()),
    ("", pos()),
])
def test_label_report_cases(text, expected):
    assert label_report(text) == expected


# ------------------------------------------------------------------------------------------- findings in the pixels
def test_findings_visible_where_expected(medium):
    """Each finding changes the frontal view where the anatomy says it should, on the patient's side
    (patient's left = image right). Findings are independent, so mean(with) - mean(without) isolates each one."""
    root, entries = medium
    x = np.stack([frontal(root, e) for e in entries])
    y = {f: np.array([e["labels"][f] for e in entries], bool) for f in FINDINGS}
    s = x.shape[1]
    img_left, img_right = slice(0, s // 2), slice(s // 2, s)

    def diff(finding, opposite):  # one-sided studies only: the other side's finding would blur the contrast
        keep = ~y[opposite]
        return x[y[finding] & keep].mean(0) - x[~y[finding] & keep].mean(0)

    for side, own, other in (("left", img_right, img_left), ("right", img_left, img_right)):
        opposite = "right" if side == "left" else "left"
        # Effusion: brighter lower lung field on its own side.
        d = diff(f"effusion_{side}", f"effusion_{opposite}")
        lower = [d[s // 2:3 * s // 4, half].mean() for half in (own, other)]
        assert lower[0] > 12 and abs(lower[1]) < lower[0] / 3, lower
        # Opacity: a bright blob on its own side (compare the 100 most brightened pixels of each half).
        d = diff(f"opacity_{side}", f"opacity_{opposite}")
        brightest = [np.sort(d[:, half].ravel())[-100:].mean() for half in (own, other)]
        assert brightest[0] > 25 and brightest[0] > 2 * brightest[1], brightest
        # Pneumothorax: a darker (vessel-free) crescent on its own side.
        d = diff(f"pneumothorax_{side}", f"pneumothorax_{opposite}")
        darkest = [np.sort(d[:, half].ravel())[:100].mean() for half in (own, other)]
        assert darkest[0] < -25 and darkest[0] < 2 * darkest[1], darkest

    # Cardiomegaly: a wider heart shadow -> brighter band beside the normal heart borders at heart height,
    # most on the patient's left (image right).
    d = x[y["cardiomegaly"]].mean(0) - x[~y["cardiomegaly"]].mean(0)
    rows = slice(int(0.6 * s), int(0.7 * s))
    assert d[rows, int(0.72 * s):int(0.78 * s)].mean() > 30
    assert d[rows, int(0.30 * s):int(0.36 * s)].mean() > 5


def test_logistic_regression_reads_findings(medium):
    """Honesty check: a per-pixel logistic regression on 8x8-pooled views (numpy) separates every finding
    on held-out studies; the same model on shuffled labels does not."""
    root, entries = medium
    feats = []
    for e in entries:
        views = [np.asarray(Image.open(root / "images" / p), np.float32) / 255 for p in e["image_path"]]
        feats.append(np.concatenate([v.reshape(8, 8, 8, 8).mean((1, 3)).ravel() for v in views]))
    X = np.array(feats)
    Y = np.array([[e["labels"][f] for f in FINDINGS] for e in entries], float)
    n = 360
    mu, sd = X[:n].mean(0), X[:n].std(0) + 1e-3
    X = (X - mu) / sd

    def fit_auc(Ytr):
        W, b = np.zeros((X.shape[1], Y.shape[1])), np.zeros(Y.shape[1])
        for _ in range(400):
            G = 1 / (1 + np.exp(-(X[:n] @ W + b))) - Ytr
            W -= 0.2 * (X[:n].T @ G / n + 1e-3 * W)
            b -= 0.2 * G.mean(0)
        score = X[n:] @ W + b
        aucs = []
        for i in range(Y.shape[1]):
            pos_s, neg_s = score[Y[n:, i] == 1, i], score[Y[n:, i] == 0, i]
            aucs.append((pos_s[:, None] > neg_s[None]).mean() + 0.5 * (pos_s[:, None] == neg_s[None]).mean())
        return np.array(aucs)

    assert (Y[n:].sum(0) > 0).all()
    auc = fit_auc(Y[:n])
    assert (auc > 0.9).all(), dict(zip(FINDINGS, auc.round(3), strict=True))
    shuffled = fit_auc(np.random.default_rng(0).permutation(Y[:n]))
    assert shuffled.mean() < 0.7, dict(zip(FINDINGS, shuffled.round(3), strict=True))


# ------------------------------------------------------------------------------------------- finding_scores
def test_finding_scores_perfect_and_all_normal(medium):
    _, entries = medium
    reports, labels = [e["report"] for e in entries], [e["labels"] for e in entries]
    perfect = finding_scores(reports, labels)
    assert set(perfect) == {"finding_f1_macro", "finding_f1_micro", "finding_acc_exact"} | {f"f1/{f}" for f in FINDINGS}
    assert all(v == 1.0 for v in perfect.values())
    normal = finding_scores(["Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."] * len(labels), labels)
    assert normal["finding_f1_macro"] == 0.0 and normal["finding_f1_micro"] == 0.0
    assert 0.2 < normal["finding_acc_exact"] < 0.5  # exactly the normal studies are right


def test_finding_scores_hand_computed():
    refs = [pos("cardiomegaly"), pos("effusion_left"), pos(), pos("cardiomegaly", "opacity_right")]
    preds = ["The heart is enlarged. No effusion.",
             "Small right pleural effusion.",  # wrong side: a false positive and a false negative
             "The heart is enlarged.",  # false positive
             "Normal heart size. Focal opacity in the right upper lobe."]  # misses cardiomegaly
    s = finding_scores(preds, refs)
    assert s["f1/cardiomegaly"] == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert s["f1/effusion_left"] == 0.0 and s["f1/effusion_right"] == 0.0
    assert s["f1/opacity_right"] == 1.0
    assert s["f1/opacity_left"] == s["f1/pneumothorax_left"] == s["f1/pneumothorax_right"] == 1.0  # no positives anywhere
    assert s["finding_f1_macro"] == pytest.approx(4.5 / 7)
    assert s["finding_f1_micro"] == pytest.approx(0.5)  # tp 2, fp 2, fn 2
    assert s["finding_acc_exact"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        finding_scores(preds, refs[:3])
