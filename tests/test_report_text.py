"""Generated reports are written for people (`no pneumothorax.`, not R2Gen's tokenized `no pneumothorax  .`) in
every file and page they read, while scoring still sees R2Gen's cleaned form; and the exported model card finds the
scores wherever the run's evaluation wrote them."""

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from r2gen import build
from r2gen.data.annotations import read_studies
from r2gen.data.clean import CLEANERS, detokenize
from r2gen.evaluate import evaluate
from r2gen.export import export, run_scores
from r2gen.predict import predict
from r2gen.scoring.policy import score_records

from .helpers.config import SMALL, compose_cfg
from .helpers.files import read_jsonl

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
# a double space, a space at either end, or before punctuation: but for the two quirks detokenize keeps (a period
# starting an empty sentence, `a . .`, or after a token ending in a digit R2Gen's cleaning treats as a list number)
UNCLEAN = re.compile(r"\s\s|(?<![.,;:?!\d])\s[.,;:?!]|^\s|\s$")


def readable(text: str) -> bool:
    return not UNCLEAN.search(text)


def test_cleaning_the_readable_text_gives_what_scoring_saw_on_the_demo_reports(make_cfg):
    """The demo LM writes R2Gen-cleaned text (`no pneumothorax .`, what its tokenizer was trained on); cleaning that
    again gave `no pneumothorax  .`, what every report showed and what scoring saw. Now people read `detokenize` of
    it, and cleaning that gives the scored text back: the same tokens, so the same BLEU, METEOR and CIDEr. ROUGE-L
    alone told the double space apart (pycocoevalcap's Rouge splits on " ", so it scored an empty word in every
    report); it is now computed on single-spaced text, as R2Gen's own predictions are."""
    cfg = make_cfg()
    build.prepare_data(cfg.data)
    clean = CLEANERS[cfg.data.clean]
    refs = [clean(s["report"]) for split in read_studies(cfg.data).values() for s in split]
    decoded = refs[1:] + refs[:1]  # what the model writes: cleaned reports (of other studies, so scores are < 1)
    before = [clean(t) for t in decoded]  # what scoring saw, and every file showed
    assert all("  ." in t for t in before)  # the fault: every one of them
    shown = [detokenize(t) for t in before]
    after = [clean(t) for t in shown]
    assert all(readable(t) for t in shown), [t for t in shown if not readable(t)][:3]
    assert after == [" ".join(t.split()) for t in before]  # exactly, up to runs of spaces
    assert [detokenize(t) for t in after] == shown  # and what people read is stable
    records = lambda preds: [{"id": str(i), "prediction": p, "reference": r}  # noqa: E731
                             for i, (p, r) in enumerate(zip(preds, refs, strict=True))]
    old, new = score_records(records(before)), score_records(records(after))
    for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "CIDEr"):
        assert new[k] == old[k], k
    single = score_records(records([" ".join(t.split()) for t in before]))
    assert new["ROUGE_L"] == single["ROUGE_L"] >= old["ROUGE_L"]


@pytest.mark.parametrize("raw, shown", [
    ("No pneumothorax. Heart size normal, lungs clear!", "no pneumothorax. heart size normal lungs clear."),
    ("fracture of t1 . heart normal .", "fracture of t1 . heart normal."),  # R2Gen would delete `1. `
    ("grade 2 . effusion .", "grade 2 . effusion."),  # and turn ` 2. ` into `. `
    ("Normal. . No effusion.", "normal. . no effusion."),  # an empty sentence R2Gen keeps (and scores)
    ("", "."),
])
def test_detokenize_inverts_r2gen_cleaning(raw, shown):
    for clean in (CLEANERS["iu_xray"], CLEANERS["mimic_cxr"]):
        scored = clean(raw)
        assert detokenize(scored) == shown
        assert " ".join(clean(shown).split()) == " ".join(scored.split())


def test_reports_people_read_are_clean_and_rescore_exactly(demo_run, tmp_path, cache_dir):
    """evaluate.py's predictions.jsonl and report.html, predict.py's output: readable reports; scoring the
    predictions file again gives exactly the scores of the evaluation that wrote it."""
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    ev = compose_cfg("evaluate", [f"ckpt={ckpt}", *FAST], tmp_path / "ev", cache_dir)
    scores = evaluate(ev)
    rows = read_jsonl(tmp_path / "ev" / "predictions.jsonl")
    assert rows and all(readable(r["prediction"]) and r["prediction"].endswith(".") for r in rows), rows[:2]
    page = (tmp_path / "ev" / "report.html").read_text()
    shown = [html.unescape(t) for t in re.findall(r"<td [^>]*class=txt>(.*?)</td>", page)]  # generated, reference
    assert len(shown) == 2 * len(rows) and all(readable(t) for t in shown), [t for t in shown if not readable(t)][:2]
    data = [o for o in SMALL if o.startswith("data.")]  # the demo run's data set: its test split is the file's
    again = evaluate(compose_cfg("evaluate", [f"predictions={tmp_path / 'ev' / 'predictions.jsonl'}", *data, *FAST],
                                 tmp_path / "ev2", cache_dir))
    for k, v in scores.items():
        assert again[k] == v, k

    images = sorted(Path(ev.data.image_dir).rglob("*.png"))[:2]
    o = [f"ckpt={ckpt}", f"input=[{images[0]},{images[1]}]", *FAST]
    out = predict(compose_cfg("predict", o, tmp_path / "pred", cache_dir), overrides=o)
    (row,) = read_jsonl(out)
    assert readable(row["report"]) and row["report"].endswith("."), row


# --- the model card -------------------------------------------------------------------------------------------
def copy_run(demo_run: Path, to: Path) -> Path:
    shutil.copytree(demo_run, to, ignore=shutil.ignore_patterns("test", "evaluate"))
    return to


def test_the_model_card_shows_the_scores_make_demo_wrote(demo_run, tmp_path, cache_dir):
    run = copy_run(demo_run, tmp_path / "run")
    ckpt = run / "checkpoints" / "best.ckpt"
    scores = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", *FAST], run / "evaluate", cache_dir))  # make demo
    o = [f"ckpt={ckpt}", f"out={tmp_path / 'export'}"]
    folder = export(compose_cfg("export", o, tmp_path / "export-run", cache_dir), overrides=o)
    card = (folder / "README.md").read_text()
    assert "No test scores" not in card and "from `evaluate/metrics.json` of the run" in card, card
    assert f"{scores['Bleu_4']:.3f}" in card and "not of the exported" not in card


def test_the_card_picks_the_evaluation_that_names_the_checkpoint(demo_run, tmp_path):
    run = copy_run(demo_run, tmp_path / "run")
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"

    def write(folder: str, **m) -> None:
        (run / folder).mkdir(parents=True)
        (run / folder / "metrics.json").write_text(json.dumps({"Bleu_4": 0.1, "split": "test", **m}))

    assert run_scores(best) == (None, "")
    write("test", ckpt=str(last))  # train.py's test after fit, of another checkpoint
    metrics, where = run_scores(best)
    assert where == "`test/metrics.json` of the run, of `last.ckpt` of the same run, not of the exported `best.ckpt`"
    write("evals/val", ckpt=str(best), split="val")  # this checkpoint, but on val
    assert run_scores(best)[1] == "`evals/val/metrics.json` of the run"
    write("shuffled", ckpt=str(best), shuffle_images=True)  # a control, not the model's score
    write("evals/test", ckpt=f"{run.name}/checkpoints/best.ckpt")  # relative to where evaluate.py ran
    assert run_scores(best)[1] == "`evals/test/metrics.json` of the run"
    assert run_scores(last)[1] == "`test/metrics.json` of the run"
