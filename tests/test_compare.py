"""`r2gen-compare a=... b=...`: a paired test between two systems, scored exactly as evaluate.py scores each."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from r2gen.boundary import run_cli
from r2gen.compare import compare
from r2gen.config_check import check_config
from r2gen.data.synthetic import _report, _sample_study
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.scoring import METRIC_NAMES

from .helpers.cli import cli_env
from .helpers.config import compose_cfg
from .helpers.paths import ROOT, SHARED_DATA

IU = SHARED_DATA / "iu_xray" / "annotation.json"
NORMAL = "Heart size is normal. The lungs are clear. No pleural effusion. No pneumothorax."


def demo_reports(n: int, seed: int = 7) -> list[str]:
    """`n` reports of the built-in demo's kind (r2gen.data.synthetic), which data=demo's labeler reads."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out.append(_report(rng, _sample_study(rng)))
    return out


def write(path: Path, refs: list[str], preds: list[str], ids: list[str] | None = None) -> Path:
    ids = ids or [f"s{i:04d}" for i in range(len(refs))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "prediction": p, "reference": r}) + "\n"
                            for i, p, r in zip(ids, preds, refs, strict=True)))
    return path


def good_and_bad(refs: list[str]) -> tuple[list[str], list[str]]:
    """A good system (the reference for 2 of 3 studies, the next study's report for the third) and a degraded one
    (one fixed normal report for every study)."""
    good = [r if i % 3 else refs[(i + 1) % len(refs)] for i, r in enumerate(refs)]
    return good, [NORMAL] * len(refs)


def cfg_for(tmp_path: Path, cache_dir: Path, a, b, *overrides: str, run: str = "cmp"):
    return compose_cfg("compare", [f"a={a}", f"b={b}", *overrides], tmp_path / run, cache_dir)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory) -> dict[str, Path]:
    """240 demo studies: a good system's file, a degraded one's, and the good one with its lines shuffled."""
    root = tmp_path_factory.mktemp("demo_files")
    refs = demo_reports(240)
    good, bad = good_and_bad(refs)
    ids = [f"s{i:04d}" for i in range(len(refs))]
    order = list(range(len(refs)))
    random.Random(0).shuffle(order)
    return {"good": write(root / "good.jsonl", refs, good, ids),
            "bad": write(root / "bad.jsonl", refs, bad, ids),
            "shuffled": write(root / "shuffled.jsonl", [refs[i] for i in order], [good[i] for i in order],
                              [ids[i] for i in order])}


def test_a_file_against_itself_differs_by_nothing(tmp_path, cache_dir, demo_files):
    result = compare(cfg_for(tmp_path, cache_dir, demo_files["good"], demo_files["good"]))
    assert {*METRIC_NAMES, "score", "finding_f1_macro"} <= set(result)
    for k, r in result.items():
        assert r["diff"] == 0 and r["p"] == 1, (k, r)
        assert r["low"] == pytest.approx(0, abs=1e-12) and r["high"] == pytest.approx(0, abs=1e-12), (k, r)


def test_a_degraded_copy_is_worse_with_p_below_0_01(tmp_path, cache_dir, demo_files):
    """Studies paired by id: b's lines in another order than a's change nothing."""
    result = compare(cfg_for(tmp_path, cache_dir, demo_files["shuffled"], demo_files["bad"]))
    assert list(result)[:len(METRIC_NAMES) + 1] == [*METRIC_NAMES, "score"]
    for k in ("Bleu_4", "CIDEr", "finding_f1_macro", "score"):
        r = result[k]
        assert r["diff"] == pytest.approx(r["a"] - r["b"]) and r["diff"] > 0, (k, r)
        assert 0 < r["low"] <= r["diff"] <= r["high"] and r["p"] < 0.01, (k, r)
    written = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert written["a"] == str(demo_files["shuffled"]) and written["b"] == str(demo_files["bad"])
    assert written["n_studies"] == 240 and written["bootstrap"]["resamples"] == 1000
    assert written["scores"]["CIDEr"] == pytest.approx(result["CIDEr"])
    # the same comparison with a's lines in file order: the same numbers
    same = compare(cfg_for(tmp_path, cache_dir, demo_files["good"], demo_files["bad"], run="cmp2"))
    for k in ("Bleu_4", "METEOR", "CIDEr", "finding_f1_macro"):
        assert same[k]["a"] == pytest.approx(result[k]["a"], abs=1e-12), k
        assert same[k]["diff"] == pytest.approx(result[k]["diff"], abs=1e-12), k


def test_a_column_is_what_evaluate_prints_for_the_file(tmp_path, cache_dir, demo_files):
    from r2gen.evaluate import evaluate

    result = compare(cfg_for(tmp_path, cache_dir, demo_files["good"], demo_files["bad"], "eval.references=truncated",
                             "data.max_report_tokens=20"))
    for side in ("good", "bad"):
        scores = evaluate(compose_cfg("evaluate", [f"predictions={demo_files[side]}", "split=null",
                                                   "eval.references=truncated", "data.max_report_tokens=20"],
                                      tmp_path / f"ev-{side}", cache_dir))
        column = "a" if side == "good" else "b"
        assert set(scores) == set(result)
        for k, v in scores.items():
            assert result[k][column] == pytest.approx(v, rel=1e-9, abs=1e-12), (side, k)


@pytest.mark.skipif(not IU.is_file(), reason="real IU-Xray reports not present (../shared/data)")
def test_real_iu_xray_reports_with_the_chexpert_labeler(tmp_path, cache_dir):
    test = json.loads(IU.read_text())["test"]
    refs, ids = [e["report"] for e in test], [e["id"] for e in test]
    good = [r if i % 3 else refs[(i + 7) % len(refs)] for i, r in enumerate(refs)]
    bad = refs[1:] + refs[:1]  # every study gets the next study's report
    a, b = write(tmp_path / "a.jsonl", refs, good, ids), write(tmp_path / "b.jsonl", refs, bad, ids)
    result = compare(cfg_for(tmp_path, cache_dir, a, b, "data=iu_xray"))
    for k in ("Bleu_4", "CIDEr", "ce_f1_micro", "ce_f1_example"):
        assert result[k]["diff"] > 0 and result[k]["low"] > 0 and result[k]["p"] < 0.01, (k, result[k])


def test_run_folders_resolve_to_their_predictions_and_are_only_read(tmp_path, cache_dir):
    refs = demo_reports(30)
    good, bad = good_and_bad(refs)
    ev = tmp_path / "evaluate-run"  # evaluate.py's run folder: predictions.jsonl at the top
    write(ev / "predictions.jsonl", refs, good)
    (ev / "metrics.json").write_text("{}\n")
    tr = tmp_path / "train-run"  # a training run's folder: its test's predictions under test/
    write(tr / "test" / "predictions.jsonl", refs, bad)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = compare(cfg_for(tmp_path, cache_dir, ev, tr))
    assert result["Bleu_4"]["diff"] > 0
    written = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert written["a"] == str(ev / "predictions.jsonl") and written["b"] == str(tr / "test" / "predictions.jsonl")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "cmp" not in p.parts} == before

    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(MissingFileError, match="looked for .*not-a-run/predictions.jsonl and "
                                               ".*not-a-run/test/predictions.jsonl"):
        compare(cfg_for(tmp_path, cache_dir, ev, empty, run="cmp2"))
    with pytest.raises(MissingFileError, match="b=.*nowhere.jsonl: no such file or folder"):
        compare(cfg_for(tmp_path, cache_dir, ev, tmp_path / "nowhere.jsonl", run="cmp3"))
    assert not empty.exists() or not any(empty.iterdir())


def test_different_study_sets_are_one_error_counting_and_naming_them(tmp_path, cache_dir):
    refs = demo_reports(12)
    a = write(tmp_path / "a.jsonl", refs, refs)
    b = write(tmp_path / "b.jsonl", refs[:9] + ["x"], refs[:9] + ["x"], [f"s{i:04d}" for i in range(9)] + ["new"])
    with pytest.raises(InputError) as e:
        compare(cfg_for(tmp_path, cache_dir, a, b))
    msg = str(e.value)
    assert "\n" not in msg
    assert "3 ids only in a ('s0009', 's0010', 's0011')" in msg and "1 ids only in b ('new')" in msg
    assert "the same studies" in msg


def test_a_different_reference_for_the_same_study_is_an_error(tmp_path, cache_dir):
    refs = demo_reports(12)
    other = list(refs)
    other[4] = other[4] + " Small left pleural effusion."
    other[7] = "Cardiomegaly."
    a, b = write(tmp_path / "a.jsonl", refs, refs), write(tmp_path / "b.jsonl", other, refs)
    with pytest.raises(InputError, match=r"the reference of 2 of 12 studies differs .*'s0004', 's0007'.*same "
                                         r"references"):
        compare(cfg_for(tmp_path, cache_dir, a, b))
    # only a difference the cleaning removes: the same reference
    same = list(refs)
    same[3] = "  " + same[3].upper() + "  "
    compare(cfg_for(tmp_path, cache_dir, a, write(tmp_path / "c.jsonl", same, refs), run="cmp2"))


def test_no_resamples_is_an_error(tmp_path, cache_dir, demo_files):
    with pytest.raises(ConfigError, match="eval.bootstrap.resamples=0: compare"):
        compare(cfg_for(tmp_path, cache_dir, demo_files["good"], demo_files["bad"], "eval.bootstrap.resamples=0"))


def test_a_different_study_set_ends_the_command_with_one_line(tmp_path, cache_dir, capsys):
    refs = demo_reports(8)
    a = write(tmp_path / "a.jsonl", refs, refs)
    b = write(tmp_path / "b.jsonl", refs[:5], refs[:5])
    with pytest.raises(SystemExit) as e:
        run_cli(compare, cfg_for(tmp_path, cache_dir, a, b), check=False)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("error: a=") and "3 ids only in a" in first


def test_the_config_check_knows_a_and_b(tmp_path, cache_dir):
    """data=iu_xray without data.root: compare reads no data set, only its cleaning and labeler."""
    check_config(cfg_for(tmp_path, cache_dir, "a.jsonl", "b.jsonl", "data=iu_xray"), "compare")
    with pytest.raises(ConfigError, match="eval.bootstrap has no key 'resampels'"):
        check_config(cfg_for(tmp_path, cache_dir, "a.jsonl", "b.jsonl", "+eval.bootstrap.resampels=10"), "compare")
    with pytest.raises(ConfigError, match=r"a=\[1, 2\]: expected a string"):
        check_config(cfg_for(tmp_path, cache_dir, "[1,2]", "b.jsonl"), "compare")


@pytest.mark.slow
def test_python_m_r2gen_compare_prints_the_table(tmp_path, cache_dir, demo_files):
    import subprocess

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "r2gen.compare", f"a={demo_files['good']}", f"b={demo_files['bad']}",
                        f"hydra.run.dir={out}"], cwd=ROOT, env=cli_env(cache_dir), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line.split() for line in r.stdout.splitlines() if line.startswith("  ") and line.strip()]
    assert lines[0][:3] == ["A", "B", "A-B"] and lines[0][-1] == "p", r.stdout
    rows = {line[0]: line for line in lines[1:]}
    for k in (*METRIC_NAMES, "score", "finding_f1_macro"):
        assert k in rows, (k, r.stdout)
    assert float(rows["Bleu_4"][-1]) < 0.01  # p
    assert json.loads((out / "compare.json").read_text())["n_studies"] == 240
