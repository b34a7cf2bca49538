"""The longitudinal demo (data=demo_longitudinal): layout and context keys, determinism, prior links, reports the
labeler reads right, every change class in its wording, changes visible in the pixels; and the plain demo unchanged."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from r2gen.data.annotations import read_annotation, read_studies
from r2gen.data.clean import get_cleaner
from r2gen.data.demos import prepare_demo
from r2gen.data.longitudinal import CHANGES, GRADES, change_of, generate_longitudinal
from r2gen.data.synthetic import FINDINGS
from r2gen.errors import ConfigError, InputError, UnsafeWriteError
from r2gen.scoring.demo_labeler import label_report

SMALL = dict(n_train=24, n_val=6, n_test=6, image_size=32, seed=0, p_third=0.3)
# Each class's words; a later study's report uses one of them for each finding that changed that way.
WORDING = {"new": r"\bnew\b|newly|development|developed", "worse": r"increase|enlarging|worsening|more enlarged",
           "better": r"decrease|improving|smaller|less enlarged", "unchanged": r"unchanged|stable|persistent|remains",
           "resolved": r"resolved|returned to normal|now normal"}


def load(root: Path) -> dict:
    return json.loads((root / "annotation.json").read_text())


def entries(root: Path) -> list[dict]:
    return [e for es in load(root).values() for e in es]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("long") / "demo_longitudinal"
    assert generate_longitudinal(root, **SMALL) == root / "annotation.json"
    return root


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Enough subjects (64 px) for every change class of every kind of finding; a few seconds."""
    root = tmp_path_factory.mktemp("long_medium") / "demo_longitudinal"
    generate_longitudinal(root, n_train=120, n_val=10, n_test=10, image_size=64, seed=1)
    return root, entries(root)


# ------------------------------------------------------------------------------------------- layout
def test_layout_and_context_keys(small):
    ann = load(small)
    assert set(ann) == {"train", "val", "test"}
    by_subject = defaultdict(list)
    for split, es in ann.items():
        for e in es:
            assert e["split"] == split and e["view_positions"] == ["PA", "LATERAL"]
            assert [(small / "images" / p).is_file() for p in e["image_path"]] == [True, True]
            assert e["indication"].strip() and e["report"].strip()
            by_subject[e["subject_id"]].append(e)
    assert sum(len(es) for es in ann.values()) == len({e["id"] for es in ann.values() for e in es})
    assert len(by_subject) == 24 + 6 + 6
    for studies in by_subject.values():
        assert len({e["split"] for e in studies}) == 1  # a subject's studies are all in one split
        assert 2 <= len(studies) <= 3
        times = [e["study_time"] for e in studies]
        assert times == sorted(set(times))  # strictly increasing, in the file's order
        assert "changes" not in studies[0] and studies[0]["comparison"] == "None."
        assert all(set(e["changes"]) == {k for k in FINDINGS if e["labels"][k] or p["labels"][k]}
                   for p, e in zip(studies, studies[1:], strict=False))
    assert any(len(s) == 3 for s in by_subject.values())
    assert json.loads((small / ".demo_params.json").read_text())["kind"] == "longitudinal"


def test_changes_follow_the_grades(small):
    """`grades` names what a study shows, `labels` is its presence, `changes` the class from its prior's grade."""
    for studies in _subjects(entries(small)).values():
        for n, e in enumerate(studies):
            assert e["labels"] == {k: int(k in e["grades"]) for k in FINDINGS}
            assert all(g in GRADES[k.split("_")[0]] for k, g in e["grades"].items())
            if n:
                expect = {k: change_of(_rank(k, studies[n - 1]), _rank(k, e)) for k in FINDINGS}
                assert e["changes"] == {k: c for k, c in expect.items() if c}


def _rank(finding: str, study: dict) -> int:
    """0 absent, 1.. the size (GRADES order)."""
    g = study["grades"].get(finding)
    return GRADES[finding.split("_")[0]].index(g) + 1 if g else 0


def test_deterministic_and_cached(small, tmp_path):
    again = generate_longitudinal(tmp_path / "a", **SMALL).parent
    assert tree_digest(again) == tree_digest(small)
    before = (again / "annotation.json").stat().st_mtime_ns
    generate_longitudinal(again, **SMALL)  # same parameters: a no-op
    assert (again / "annotation.json").stat().st_mtime_ns == before
    generate_longitudinal(again, **{**SMALL, "seed": 1})  # others: regenerated in place
    assert load(again) != load(small)
    assert json.loads((again / ".demo_params.json").read_text())["seed"] == 1


def test_never_written_over_a_users_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UnsafeWriteError):
        generate_longitudinal(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# ------------------------------------------------------------------------------------------- priors
def _subjects(es: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for e in es:
        out[e["subject_id"]].append(e)
    return {s: sorted(v, key=lambda e: e["study_time"]) for s, v in out.items()}


def test_read_studies_links_each_study_to_its_subjects_previous_one(small):
    studies = read_studies({"format": "r2gen", "annotation": str(small / "annotation.json")})
    split_of = {e["id"]: s for s, es in studies.items() for e in es}
    flat = [e for es in studies.values() for e in es]
    for chain in _subjects(flat).values():
        assert [e["prior_id"] for e in chain] == [None] + [e["id"] for e in chain[:-1]]
    assert all(split_of[e["prior_id"]] == split_of[e["id"]] for e in flat if e["prior_id"])
    assert sum(e["prior_id"] is None for e in flat) == 36  # one first study per subject


def test_read_annotation_checks_study_time(tmp_path):
    path = tmp_path / "annotation.json"
    entry = {"id": "a", "report": "r", "image_path": ["a.png"], "subject_id": "s1", "indication": "Cough."}
    path.write_text(json.dumps({"train": [{**entry, "study_time": "2180-07-15 10:42"}], "val": [], "test": []}))
    got = read_annotation(path)["train"][0]
    assert got["study_time"] == "2180-07-15T10:42:00" and got["indication"] == "Cough." and got["subject_id"] == "s1"
    path.write_text(json.dumps({"train": [{**entry, "study_time": "last tuesday"}], "val": [], "test": []}))
    with pytest.raises(InputError, match=r"train\[0\] \(id 'a'\): study_time='last tuesday'"):
        read_annotation(path)


# ------------------------------------------------------------------------------------------- reports
def test_the_labeler_reads_each_reports_own_findings(medium):
    clean = get_cleaner("iu_xray")
    for e in medium[1]:
        assert label_report(e["report"]) == e["labels"], (e["report"], e["labels"])
        assert label_report(clean(e["report"])) == e["labels"], clean(e["report"])


def test_every_change_class_of_every_kind_in_its_wording(medium):
    es = medium[1]
    seen = Counter((k.split("_")[0], c) for e in es for k, c in e.get("changes", {}).items())
    assert {(kind, c) for kind in GRADES for c in CHANGES} <= set(seen), seen
    counts = Counter(c for e in es for c in e.get("changes", {}).values())
    assert max(counts.values()) < 1.6 * min(counts.values()), counts  # about balanced
    for e in es:
        for c in set(e.get("changes", {}).values()):
            assert re.search(WORDING[c], e["report"], re.I), (c, e["report"])
        if "changes" not in e:  # a first study's report is a plain one
            assert not re.search("|".join(WORDING.values()) + r"|prior", e["report"], re.I), e["report"]
    reports = [e["report"] for e in es]
    for phrase in (r"New (small|moderate|large) (left|right) (pleural )?effusion", r"Unchanged (mild|moderate) cardiomegaly",
                   r"The (left|right) (apical )?pneumothorax has resolved"):
        assert any(re.search(phrase, r) for r in reports), phrase
    templates = {c: {re.sub(r"\b(left|right|small|moderate|large|mild)\b.*", "", s)  # how each class's sentences open
                     for e in es for s in e["report"].split(". ") if re.search(WORDING[c], s, re.I)} for c in CHANGES}
    assert all(len(t) >= 3 for t in templates.values()), templates  # varied wording


def test_indications_sometimes_name_the_finding_in_question(medium):
    es = medium[1]
    naming = [e for e in es if re.search(r"effusion|pneumothorax|pneumonia|opacity|consolidation|heart|cardiomegaly",
                                         e["indication"], re.I)]
    assert 0.3 * len(es) < len(naming) < 0.9 * len(es)
    prior_of = {e["id"]: p for chain in _subjects(es).values() for p, e in zip(chain, chain[1:], strict=False)}
    follow = [e for e in es if re.search(r"follow-up|history of", e["indication"], re.I)]
    assert follow
    for e in follow:  # a follow-up names a finding its prior showed, with its side
        side = re.search(r"\b(left|right)\b", e["indication"], re.I).group(1).lower()
        kind = re.search(r"effusion|pneumothorax|opacity|consolidation", e["indication"], re.I).group(0).lower()
        kind = "opacity" if kind == "consolidation" else kind
        assert prior_of[e["id"]]["labels"][f"{kind}_{side}"] == 1, (e["indication"], prior_of[e["id"]]["report"])


# ------------------------------------------------------------------------------------------- pixels
def _frontal(root: Path, e: dict) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / e["image_path"][0]), np.float32) / 255


def test_a_changed_effusion_changes_the_lung_base(medium):
    """Fluid is bright: the lung base on the effusion's side (the patient's left is the image right) brightens when
    an effusion appears or grows and darkens when it shrinks or resolves, against the other side as a reference."""
    root, es = medium
    prior_of = {e["id"]: p for chain in _subjects(es).values() for p, e in zip(chain, chain[1:], strict=False)}

    def base(img: np.ndarray, side: str) -> float:
        n = img.shape[0]
        cols = slice(n // 2 + n // 8, n - n // 8) if side == "left" else slice(n // 8, n // 2 - n // 8)
        return float(img[int(0.38 * n):int(0.72 * n), cols].mean())  # from the large one's level to the angle

    right_sign = []
    for e in es:
        for side in ("left", "right"):
            c = e.get("changes", {}).get(f"effusion_{side}")
            other = {"left": "right", "right": "left"}[side]
            others = {k: v for k, v in e.get("changes", {}).items() if k != f"effusion_{side}"}
            if c in ("new", "worse", "better", "resolved") and set(others.values()) <= {"unchanged"}:
                now, then = _frontal(root, e), _frontal(root, prior_of[e["id"]])
                delta = (base(now, side) - base(now, other)) - (base(then, side) - base(then, other))
                right_sign.append(delta > 0 if c in ("new", "worse") else delta < 0)
    assert len(right_sign) >= 10 and np.mean(right_sign) > 0.9, (len(right_sign), np.mean(right_sign))


def test_unchanged_findings_look_alike_changed_ones_do_not(medium):
    """A study's frontal view is closer to its prior's when nothing changed than when a finding came or went."""
    root, es = medium
    prior_of = {e["id"]: p for chain in _subjects(es).values() for p, e in zip(chain, chain[1:], strict=False)}
    dist = defaultdict(list)
    for e in es:
        if e["id"] in prior_of:
            d = float(np.abs(_frontal(root, e) - _frontal(root, prior_of[e["id"]])).mean())
            came_or_went = {"new", "resolved"} & set(e["changes"].values())
            dist["changed" if came_or_went else "same" if set(e["changes"].values()) <= {"unchanged"} else "other"].append(d)
    assert np.median(dist["changed"]) > np.median(dist["same"]), {k: np.median(v) for k, v in dist.items()}


# ------------------------------------------------------------------------------------------- config, plain demo
def test_data_demo_longitudinal_is_generated_on_first_use(make_cfg):
    from r2gen.config_check import check_config

    cfg = make_cfg("data=demo_longitudinal")
    check_config(cfg, "config")
    assert cfg.data.root.endswith("demo_longitudinal") and cfg.data.demo.kind == "longitudinal"
    assert prepare_demo(cfg.data.root, cfg.data.demo) == Path(cfg.data.annotation)
    studies = read_studies(cfg.data)
    assert sum(e["prior_id"] is not None for es in studies.values() for e in es) >= 24 + 6 + 6
    with pytest.raises(ConfigError, match=r"data.demo.kind='serial': choose plain or longitudinal"):
        prepare_demo(cfg.data.root, {**cfg.data.demo, "kind": "serial"})


def test_the_plain_demo_is_unchanged(tmp_path):
    """data=demo writes the very files it wrote before the longitudinal set (digests from that code, commit 834f8c6);
    these parameters draw every finding but a right pneumothorax."""
    root = prepare_demo(tmp_path / "demo", dict(n_train=60, n_val=5, n_test=5, image_size=32, seed=1)).parent
    assert hashlib.sha256((root / "annotation.json").read_bytes()).hexdigest() == (
        "e7d1b0f07466b884be2ec8ee534259ee305210699960ba296b5effe64aada780")
    assert hashlib.sha256((root / ".demo_params.json").read_bytes()).hexdigest() == (
        "acf335635a6a79865eec4c97cc022580789fe7356cb44eb9ccd54c9305157447")
    pixels = hashlib.sha256()  # decoded, so a different zlib build cannot change it
    for p in sorted((root / "images").rglob("*.png")):
        pixels.update(str(p.relative_to(root)).encode() + np.asarray(Image.open(p)).tobytes())
    assert pixels.hexdigest() == "55175aba9ca7ed385750c0224792e5d22ace5b4a6a664ac7e304b048d7ff2492"
