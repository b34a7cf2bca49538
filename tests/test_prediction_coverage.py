"""`evaluate.py predictions=<file>` with a data split: the file must cover the split, each line must hold a report,
and what was scored (how many of how many studies, which were missing) is said in metrics.json and on the terminal."""

import json
import logging
import signal

import pytest

from r2gen import build
from r2gen.data.annotations import read_studies
from r2gen.errors import InputError
from r2gen.evaluate import evaluate

from .helpers.cli import run_cli
from .helpers.config import SMALL, compose_cfg


def demo_test_split(cfg) -> list[dict]:
    """The demo's test split as the tests' config makes it (6 studies)."""
    build.prepare_data(cfg.data)
    return read_studies(cfg.data)["test"]


def write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def predicted(studies, reports=None) -> list[dict]:
    """A prediction per study: its own report unless `reports` gives another (which the demo labeler reads)."""
    return [{"id": e["id"], "prediction": (reports or {}).get(e["id"], e["report"])} for e in studies]


@pytest.fixture
def demo(make_cfg, tmp_path):
    """(config maker for evaluate.py predictions=<tmp_path/p.jsonl>, the demo's test studies)."""
    def cfg(*overrides, out: str = "run"):
        c = make_cfg(f"predictions={tmp_path / 'p.jsonl'}", *overrides, config_name="evaluate")
        c.paths.output_dir = str(tmp_path / out)
        return c

    return cfg, demo_test_split(cfg())


def test_a_file_missing_studies_of_the_split_is_one_error_and_nothing_is_written(demo, tmp_path):
    cfg, studies = demo
    write(tmp_path / "p.jsonl", predicted(studies[:3]))
    with pytest.raises(InputError) as e:
        evaluate(cfg(), overrides=[])
    msg = str(e.value)
    assert "\n" not in msg and f"predictions={tmp_path / 'p.jsonl'} does not match data=demo's test split" in msg
    assert f"3 of the split's {len(studies)} studies are not in the file ({studies[3]['id']!r}" in msg
    assert "eval.allow_partial=true" in msg
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_allow_partial_scores_the_subset_and_metrics_json_and_the_summary_say_so(demo, tmp_path, capsys):
    cfg, studies = demo
    part = studies[:3]
    write(tmp_path / "p.jsonl", predicted(part))
    scores = evaluate(cfg("eval.allow_partial=true"), overrides=[])
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_studies"] == 3 and m["split"] == "test"
    assert m["coverage"] == {"split": "test", "scored": 3, "studies": len(studies),
                             "missing": [e["id"] for e in studies[3:]]}
    out = capsys.readouterr().out
    assert f"partial: 3 of the {len(studies)} test studies scored; 3 not in the predictions file (eval.allow_partial=true)" in out
    assert repr(studies[3]["id"]) in out
    # the same three studies scored against references written into the file, with no data split, score alike
    write(tmp_path / "p.jsonl", [{**p, "reference": e["report"]} for p, e in zip(predicted(part), part, strict=True)])
    alone = evaluate(cfg("split=null", out="alone"), overrides=[])
    assert scores == pytest.approx(alone, abs=1e-12)
    assert json.loads((tmp_path / "alone" / "metrics.json").read_text())["split"] == "predictions file"


@pytest.mark.parametrize("allow_partial", ["false", "true"])
def test_ids_the_split_does_not_have_are_an_error_even_with_allow_partial(demo, tmp_path, allow_partial):
    cfg, studies = demo
    write(tmp_path / "p.jsonl", predicted(studies) + [{"id": "val_or_typo_1", "prediction": "no findings ."}])
    with pytest.raises(InputError, match=r"1 of the file's 7 ids are not in the split \('val_or_typo_1'\); check "
                                         r"that the file is for this data set and split"):
        evaluate(cfg(f"eval.allow_partial={allow_partial}"), overrides=[])
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_covering_file_is_scored_against_the_split_s_reports(demo, tmp_path, caplog):
    cfg, studies = demo
    rows = predicted(studies)[::-1]  # any order
    rows[0]["reference"] = "a reference from some other version of the data set ."
    write(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        scores = evaluate(cfg(), overrides=[])
    assert scores["finding_f1_macro"] == pytest.approx(1.0) and scores["Bleu_4"] > 0.99  # each its own report
    assert f"the reference of 1 studies differs from data=demo's test split (first: {studies[-1]['id']})" in caplog.text
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["coverage"]["missing"] == [] and m["coverage"]["scored"] == len(studies)
    written = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [w["id"] for w in written] == [e["id"] for e in studies]  # the split's order, its references


def test_the_fault_three_of_the_split_can_no_longer_inflate_finding_f1(demo, tmp_path):
    """The fault: a file with the 3 studies a model got right scored alone (macro finding F1 up several-fold)."""
    cfg, studies = demo
    wrong = {e["id"]: "the heart is normal in size . the lungs are clear ." for e in studies[3:]}
    write(tmp_path / "p.jsonl", predicted(studies, wrong))
    full = evaluate(cfg(), overrides=[])["finding_f1_macro"]
    write(tmp_path / "p.jsonl", predicted(studies[:3]))
    with pytest.raises(InputError, match="3 of the split's 6 studies are not in the file"):
        evaluate(cfg(out="subset"), overrides=[])
    partial = evaluate(cfg("eval.allow_partial=true", out="subset"), overrides=[])
    assert partial["finding_f1_macro"] > full  # the subset scores higher, and now says it is a subset
    assert json.loads((tmp_path / "subset" / "metrics.json").read_text())["coverage"]["scored"] == 3


def test_a_repeated_id_names_the_id_and_both_lines(demo, tmp_path):
    cfg, studies = demo
    rows = predicted(studies)
    write(tmp_path / "p.jsonl", rows[:2] + [rows[0]] + rows[2:])
    with pytest.raises(InputError, match=rf"line 3: id {studies[0]['id']!r} appears twice \(lines 1 and 3\)"):
        evaluate(cfg(), overrides=[])


@pytest.mark.parametrize("value,said", [
    ("null", "null"), ("3", r"a number \(3\)"), ('["no", "findings"]', "a list"), ('{"text": "x"}', "an object"),
    ("true", r"a boolean \(true\)"),
])
def test_a_prediction_that_is_not_a_string_names_the_line_and_id(demo, tmp_path, value, said):
    cfg, studies = demo
    rows = [json.dumps(r) for r in predicted(studies)]
    rows[1] = f'{{"id": {json.dumps(studies[1]["id"])}, "prediction": {value}}}'
    write(tmp_path / "p.jsonl", rows)
    with pytest.raises(InputError, match=rf"line 2 \(id {studies[1]['id']!r}\): prediction is {said}, not a string"):
        evaluate(cfg(), overrides=[])
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("value,said", [("null", "null"), ('""', "''"), ("[1]", "a list"), ("false", "a boolean")])
def test_an_id_that_is_not_a_study_id_names_the_line(demo, tmp_path, value, said):
    cfg, studies = demo
    write(tmp_path / "p.jsonl", [f'{{"id": {value}, "prediction": "no findings ."}}'])
    with pytest.raises(InputError, match=rf"line 1: id is {said}"):
        evaluate(cfg(), overrides=[])


def test_a_reference_that_is_not_a_string_is_an_error_without_a_data_split(demo, tmp_path):
    cfg, _ = demo
    write(tmp_path / "p.jsonl", [{"id": "a", "prediction": "no findings .", "reference": None}])
    with pytest.raises(InputError, match=r"line 1 \(id 'a'\): reference is null, not a string"):
        evaluate(cfg("split=null"), overrides=[])


def test_empty_and_multi_line_predictions_are_scored_as_reports(demo, tmp_path):
    """"" is a (bad) report, scored, not an error; line breaks must not hang METEOR's line protocol."""
    cfg, studies = demo
    odd = {studies[0]["id"]: "", studies[1]["id"]: "the heart is enlarged .\nthere is a\r\nleft effusion .\u2028ok ."}
    write(tmp_path / "p.jsonl", predicted(studies, odd))

    def hung(*_):
        raise TimeoutError("scoring hung (METEOR and a line break?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        scores = evaluate(cfg(), overrides=[])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert all(scores[k] == scores[k] for k in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"))  # finite, not NaN
    assert 0 < scores["METEOR"] < 1 and scores["finding_f1_macro"] < 1  # the empty report found nothing
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_studies"] == len(studies) and m["coverage"]["missing"] == []  # both odd ones scored, none dropped


@pytest.mark.slow
def test_evaluate_py_with_a_partial_file_is_one_line_then_allow_partial_says_so(tmp_path, cache_dir, make_cfg):
    small = [o for o in SMALL if o.startswith("data.")]
    studies = demo_test_split(make_cfg(config_name="evaluate"))
    f = write(tmp_path / "p.jsonl", predicted(studies[:4]))
    r = run_cli("evaluate.py", f"predictions={f}", *small, f"hydra.run.dir={tmp_path / 'ev'}", cache_dir=cache_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.startswith(f"error: predictions={f} does not match data=demo's test split: 2 of the split's 6")
    assert not (tmp_path / "ev" / "metrics.json").exists()
    r = run_cli("evaluate.py", f"predictions={f}", *small, "eval.allow_partial=true",
                f"hydra.run.dir={tmp_path / 'ev2'}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test scores over 4 studies" in r.stdout and "4 of the 6 test studies scored" in r.stdout
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["coverage"]["missing"] == \
        [e["id"] for e in studies[4:]]


def test_evaluating_a_checkpoint_on_part_of_the_split_says_so(demo_run, tmp_path, cache_dir, capsys):
    """The same fault with a model: `trainer.limit_test_batches` cuts the test loop short; metrics.json says how
    much of the split was scored, and a full evaluation says it scored all of it."""
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    runs = {}
    for name, extra in (("part", ["trainer.limit_test_batches=1", "data.eval_batch_size=2"]), ("all", [])):
        o = [f"ckpt={ckpt}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", *extra]
        evaluate(compose_cfg("evaluate", o, tmp_path / name, cache_dir), overrides=o)
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())["coverage"], capsys.readouterr().out
    (part, out), (full, full_out) = runs["part"], runs["all"]
    assert part["scored"] == 2 and part["studies"] == 6 and len(part["missing"]) == 4 and part["split"] == "test"
    assert "partial: 2 of the 6 test studies scored; 4 not generated in the test loop" in out
    assert full == {"split": "test", "scored": 6, "studies": 6, "missing": []} and "partial" not in full_out
