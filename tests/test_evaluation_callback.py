"""The data pipeline owns the text and a callback owns the scoring: the module's loaders give it target ids, and
`Evaluation` attached to a plain Lightning Trainer scores what the module generates."""

import json

import pytest
import pytorch_lightning as pl
import torch

from r2gen import build
from r2gen.scoring import METRIC_NAMES
from r2gen.scoring.callback import Evaluation
from r2gen.scoring.policy import Scoring, score_records


@pytest.fixture
def parts(make_cfg):
    cfg = make_cfg("data.num_workers=2")
    build.prepare_data(cfg.data)
    model = build.model(cfg)
    return cfg, model, build.datamodule(cfg, model)


def test_loader_workers_turn_reports_into_target_ids(parts):
    cfg, model, dm = parts
    b = next(iter(dm.train_dataloader()))  # two worker processes tokenized these
    tok = model.tokenizer
    for ids, n, report in zip(b["target_ids"], b["target_lengths"], b["reports"], strict=True):
        want = tok(report, add_special_tokens=False).input_ids[: cfg.data.max_report_tokens - 1] + [tok.eos_token_id]
        assert ids[:n].tolist() == want
    assert b["target_ids"].shape == (len(b["reports"]), int(b["target_lengths"].max()))
    model.train()
    assert torch.isfinite(model(b))  # forward needs no tokenizer call: the batch carries the tensors


def test_callback_scores_a_plain_trainers_validation_and_writes_test_results(parts, tmp_path):
    cfg, model, dm = parts
    evaluation = Evaluation(Scoring.from_config(cfg))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[evaluation])
    trainer.validate(model, datamodule=dm, verbose=False)
    val_ids = [str(e["id"]) for e in dm.splits["val"].entries]
    assert [r["id"] for r in evaluation.records] == val_ids  # every study once, in loader order
    assert evaluation.scores == score_records(evaluation.records, evaluation.scoring)  # the corpus it kept
    assert set(METRIC_NAMES) | {"finding_f1_macro", "score"} <= set(evaluation.scores)
    assert float(trainer.callback_metrics["val/Bleu_4"]) == pytest.approx(evaluation.scores["Bleu_4"])

    out = tmp_path / "results"
    evaluation.write_test_results(out, {"split": "test"}, dm.splits["test"])
    trainer.test(model, datamodule=dm, verbose=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_studies"] == len(dm.splits["test"]) and metrics["Bleu_4"] == evaluation.scores["Bleu_4"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(e["id"]) for e in dm.splits["test"].entries]
    assert (out / "report.html").is_file()


def test_module_without_the_callback_only_generates(parts):
    cfg, model, dm = parts
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    assert not any(k.startswith("val/") for k in trainer.callback_metrics)  # scoring lives in the callback
