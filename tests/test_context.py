"""A study's context in the prompt (context.indication, context.comparison, context.prior_report): the texts, their
tokens in the LM's input before the image, the report target untouched, and a run that trains, evaluates, exports
and refuses what cannot give the context yet."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from r2gen.data.clean import clean_report_iu_xray, get_cleaner
from r2gen.data.context import Context
from r2gen.data.synthetic import generate_demo
from r2gen.errors import ConfigError, InputError
from r2gen.models.prompt import ContextTokens, Prompt, assemble

from .helpers.config import SMALL, compose_cfg


def test_context_texts_name_each_part_and_say_none():
    ctx = Context.from_config({"indication": True, "prior_report": True})
    entries = [{"id": "a", "report": "Heart size is normal.", "indication": "Cough.", "prior_id": None},
               {"id": "b", "report": "New small left effusion.", "prior_id": "a"},
               {"id": "c", "report": "x", "indication": "Dyspnea", "prior_id": "gone"}]  # a prior the check dropped
    assert ctx.texts(entries, clean_report_iu_xray) == [
        "indication: cough. prior report: none.",
        "indication: none. prior report: heart size is normal.",
        "indication: dyspnea. prior report: none."]
    assert not Context.from_config(None).enabled and Context.from_config({}).parts == ()
    with pytest.raises(ConfigError, match=r"context has unknown key\(s\) \['view_markers'\]"):
        Context.from_config({"view_markers": True})
    with pytest.raises(ConfigError, match=r"context.indication='yes': choose true or false"):
        Context.from_config({"indication": "yes"})
    with pytest.raises(ConfigError, match=r"context.max_tokens=0"):
        Context.from_config({"indication": True, "max_tokens": 0})


class _Tok:
    """Whitespace 'tokenizer': id = 10 + position of the word in a fixed list."""
    words = "human: assistant: indication: cough. none. prior report: a b c d e f".split()
    bos_token_id, eos_token_id, chat_template = 1, 2, None

    def __call__(self, text, add_special_tokens=False):
        texts = [text] if isinstance(text, str) else text
        ids = [[10 + self.words.index(w) for w in t.split()] for t in texts]
        return type("E", (), {"input_ids": ids[0] if isinstance(text, str) else ids})()


def test_context_tokens_go_between_the_prefix_and_the_image_and_leave_the_report_alone():
    tok = _Tok()
    prompt = Prompt(tok, "human: <image> assistant:", add_bos=False)
    embed = lambda ids: torch.nn.functional.one_hot(ids, 40).float()  # noqa: E731 - id readable from the vector
    img = torch.zeros(2, 3, 40)
    img[..., 39] = 1  # image tokens: id 39
    mask = torch.tensor([[True, True, False], [True, True, True]])
    targets = torch.tensor([[5, 6, 2], [7, 2, 2]])
    lengths = torch.tensor([3, 2])
    ctx = ContextTokens(tok, max_tokens=4).tensors(["indication: cough. prior report: a b c", "indication: none."])
    assert ctx["context_lengths"].tolist() == [4, 2]  # cut to context.max_tokens
    inputs, attn, labels = assemble(embed, prompt, img, mask, targets, lengths, context=(ctx["context_ids"],
                                                                                          ctx["context_lengths"]))
    plain_inputs, _, plain_labels = assemble(embed, prompt, img, mask, targets, lengths)
    ids = inputs.argmax(-1)
    w = {x: 10 + i for i, x in enumerate(tok.words)}
    assert ids[0, :9].tolist() == [w["human:"], w["indication:"], w["cough."], w["prior"], w["report:"], 39, 39,
                                   w["assistant:"], 5]
    assert ids[1, :5].tolist() == [w["human:"], w["indication:"], w["none."], 39, 39]
    for i in range(2):  # the same report and eos learned, only shifted by the context
        assert labels[i][labels[i] != -100].tolist() == plain_labels[i][plain_labels[i] != -100].tolist()
    assert attn.sum(1).tolist() == [1 + 4 + 2 + 1 + 3, 1 + 2 + 3 + 1 + 2]  # prefix, context, image, suffix, report
    assert inputs.shape[1] == plain_inputs.shape[1] + 4


@pytest.fixture(scope="module")
def longitudinal_table(tmp_path_factory):
    """A custom table over a tiny demo set's images: every subject has two studies a day apart, with indications."""
    root = tmp_path_factory.mktemp("ctx")
    demo = json.loads(generate_demo(root / "demo", n_train=16, n_val=4, n_test=4, image_size=32).read_text())
    rows = []
    for split, entries in demo.items():
        for k, e in enumerate(entries):
            rows.append({"id": e["id"], "report": e["report"], "image_path": ";".join(e["image_path"]),
                         "split": split, "subject_id": f"{split}{k // 2}", "study_time": f"2180-01-0{1 + k % 2}",
                         "indication": "cough" if k % 3 else "", "comparison": ""})
    with open(root / "studies.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def _overrides(root: Path) -> list[str]:
    small = [o for o in SMALL if not o.startswith("data.demo.")]
    return ["data=custom", f"data.root={root}", f"data.annotation={root / 'studies.csv'}",
            f"data.image_dir={root / 'demo' / 'images'}", "data.image_size=32", "data.num_workers=0",
            "data.labeler=demo", "context.indication=true", "context.prior_report=true", *small]


def test_a_run_with_context_trains_evaluates_predicts_and_exports(longitudinal_table, tmp_path,
                                                                                   cache_dir):
    from r2gen import build
    from r2gen.evaluate import evaluate
    from r2gen.export import export
    from r2gen.predict import predict
    from r2gen.train import train

    root = longitudinal_table
    cfg = compose_cfg("config", [*_overrides(root), "context.prior_images=true"], tmp_path / "run", cache_dir)
    model = build.model(cfg)
    dm = build.datamodule(cfg, model)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    texts = model.tokenizer.batch_decode([ids[:n] for ids, n in zip(batch["context_ids"],
                                                                     batch["context_lengths"], strict=True)])
    assert all(t.startswith("indication:") and "prior report:" in t for t in texts)
    val = dm.splits["val"]
    first, second = val.entries[0], val.entries[1]  # subject val0: a first study, then its follow-up
    assert val.context[0].endswith("prior report: none.")
    assert val.context[1].endswith(f"prior report: {first['report'].rstrip(' .')}.") and second["id"] != first["id"]

    metrics = train(cfg)
    assert "test/Bleu_4" in metrics
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ev = [f"ckpt={best}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
    scores = evaluate(compose_cfg("evaluate", ev, tmp_path / "ev", cache_dir), overrides=ev)
    assert "Bleu_4" in scores  # the checkpoint's context settings came with it
    files, context, expected = predict_with_context(predict, best, root, tmp_path, cache_dir, tmp_path / "ev",
                                                    get_cleaner(cfg.data.clean))
    ex = [f"ckpt={best}", f"out={tmp_path / 'export'}"]  # the folder carries the context settings (test_export.py)
    export(compose_cfg("export", ex, tmp_path / "ex", cache_dir), overrides=ex)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["context"] == {"parts": ["indication", "prior_report"], "max_tokens": 128, "prior_images": True}
    if importlib.util.find_spec("fastapi") is not None:  # the app serving the export writes predict.py's report
        from r2gen.app.reporter import Reporter

        o = [f"ckpt={tmp_path / 'export'}", "port=0"]
        served = Reporter.load(compose_cfg("app", o, tmp_path / "app_export", cache_dir), overrides=o)
        assert served.kind == "export" and served.describe()["context"] == ["indication", "prior_report",
                                                                             "prior_images"]
        assert served.report(files, context)["report"] == expected


def predict_with_context(predict, best: Path, root: Path, tmp_path: Path, cache_dir: Path, scores_dir: Path,
                         clean) -> tuple[list[str], dict, str]:
    """predict.py gives each study its indication and prior study in each of its input forms, and writes the reports
    evaluate.py wrote for the same studies with the same context; what it cannot use is named. Returns one study's
    image files, its context (as the app takes it) and its report."""
    rows = list(csv.DictReader(open(root / "studies.csv")))
    by_id = {r["id"]: r for r in rows}
    test = [r for r in rows if r["split"] == "test"]
    evaluated = {json.loads(line)["id"]: json.loads(line)["prediction"]
                 for line in (scores_dir / "predictions.jsonl").read_text().splitlines()}
    images = root / "demo" / "images"
    table = []
    for k, r in enumerate(test):  # each subject's second study has the first as its prior (the fixture's dates)
        prior = by_id[test[k - 1]["id"]] if k % 2 else None
        table.append({"id": r["id"], "image_path": r["image_path"], "indication": r["indication"],
                      "prior_image_path": prior["image_path"] if prior else "",
                      "prior_report": prior["report"] if prior else ""})
    with open(tmp_path / "new.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    common = [f"ckpt={best}", f"data.image_dir={images}", "trainer.enable_progress_bar=false"]
    pr = [*common, f"input={tmp_path / 'new.csv'}"]
    out = predict(compose_cfg("predict", pr, tmp_path / "pr", cache_dir), overrides=pr)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in test]
    assert {g["id"]: clean(g["report"]) for g in got} == {r["id"]: evaluated[r["id"]] for r in test}
    n = len(got[0]["images"])  # data.num_views: the prior's first images too
    assert got[1]["prior_images"] == [str(images / p) for p in test[0]["image_path"].split(";")][:n]
    assert "prior_images" not in got[0] and got[1]["context"].startswith(f"indication: {test[1]['indication'] or 'none'}.")
    assert got[0]["context"].endswith("prior report: none.")

    # a folder of studies: indication.txt, prior/ with the prior's images and report.txt
    second, first = test[1], test[0]
    study = tmp_path / "folder" / second["id"]
    (study / "prior").mkdir(parents=True)
    for p in second["image_path"].split(";"):
        (study / Path(p).name).write_bytes((images / p).read_bytes())
    for p in first["image_path"].split(";"):
        (study / "prior" / Path(p).name).write_bytes((images / p).read_bytes())
    (study / "prior" / "report.txt").write_text(first["report"])
    if second["indication"]:
        (study / "indication.txt").write_text(second["indication"])
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "folder").rglob("*"))
    pr = [*common, f"input={tmp_path / 'folder'}"]
    out = predict(compose_cfg("predict", pr, tmp_path / "pr2", cache_dir), overrides=pr)
    (folder_got,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert folder_got["report"] == got[1]["report"] and folder_got["context"] == got[1]["context"]
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "folder").rglob("*")) == before  # only read

    # image files, the context on the command line
    files = [str(study / Path(p).name) for p in second["image_path"].split(";")]
    prior = [str(study / "prior" / Path(p).name) for p in first["image_path"].split(";")]
    pr = [*common, f"input=[{','.join(files)}]", f"prior=[{','.join(prior)}]", f"prior_report='{first['report']}'",
          *([f"indication={second['indication']}"] if second["indication"] else [])]
    out = predict(compose_cfg("predict", pr, tmp_path / "pr3", cache_dir), overrides=pr)
    (listed,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert listed["report"] == got[1]["report"] and listed["context"] == got[1]["context"]

    if importlib.util.find_spec("fastapi") is not None:  # the app extra
        app_with_context(best, cache_dir, tmp_path, files[:n], prior[:n], second["indication"], first["report"],
                         got[1]["report"])

    pr = [*common, f"input={tmp_path / 'folder'}", "indication=cough"]
    with pytest.raises(ConfigError, match=r"indication=: these give the context of the one study of an image-file "
                                          r"input .*indication.txt"):
        predict(compose_cfg("predict", pr, tmp_path / "pr4", cache_dir), overrides=pr)
    pr = [*common, f"input=[{','.join(files)}]", f"prior=[{study / 'prior' / 'missing.png'}]"]
    with pytest.raises(InputError, match=r"missing.png \(its prior's image: no such file\)"):
        predict(compose_cfg("predict", pr, tmp_path / "pr5", cache_dir), overrides=pr)
    context = {"prior_report": first["report"], "prior_image_path": prior[:n],
               **({"indication": second["indication"]} if second["indication"] else {})}
    return files[:n], context, got[1]["report"]


def app_with_context(best: Path, cache_dir: Path, tmp_path: Path, files: list[str], prior: list[str], indication: str,
                     prior_report: str, expected: str) -> None:
    """The app takes a study's indication and prior study as form fields and writes predict.py's report."""
    from r2gen.app.reporter import Reporter
    from r2gen.app.server import create_app, settings

    from .helpers.serving import Running, get, post

    o = [f"ckpt={best}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "port=0"]
    cfg = compose_cfg("app", o, tmp_path / "app_run", cache_dir)
    running = Running(create_app(Reporter.load(cfg, overrides=o), settings(cfg)))
    try:
        health = json.loads(get(running.url + "/health")[2])
        assert health["context"] == ["indication", "prior_report", "prior_images"]
        read = lambda paths: [(Path(p).name, Path(p).read_bytes()) for p in paths]  # noqa: E731
        texts = {"prior_report": prior_report, **({"indication": indication} if indication else {})}
        code, body = post(running.url, read(files), prior=read(prior), texts=texts)
        assert code == 200, body
        assert body["report"] == expected and body["prior_files"] == [f"prior {Path(p).name}" for p in prior]
        assert len(body["prior_images"]) == len(prior)
        code, body = post(running.url, read(files), texts={"history": "x"})
        assert code == 400 and "unknown form field 'history'" in body["error"]
        code, body = post(running.url, read(files), texts={"indication": "x" * 9000})
        assert code == 413 and "indication: 9,000 characters" in body["error"]
        code, body = post(running.url, read(files), prior=read(prior) * 5)
        assert code == 400 and "prior study files (field prior) uploaded" in body["error"]
    finally:
        running.stop()


def test_context_with_the_feature_cache(longitudinal_table, tmp_path, cache_dir):
    """align=shallow serves the frozen encoder's cached features, in batches grouped by report length; each study
    still carries its context."""
    from r2gen import build

    cfg = compose_cfg("config", [*_overrides(longitudinal_table), "align=shallow", "data.feature_cache=auto",
                                 "encoder.pretrained=false", "data.group_by_length=true"], tmp_path / "run", cache_dir)
    model = build.model(cfg)
    dm = build.datamodule(cfg, model)
    batch = next(iter(dm.train_dataloader()))
    assert "features" in batch and "context_ids" in batch
    loss = model.losses(batch)["loss"]
    assert torch.isfinite(loss)


def test_prior_images_are_their_own_masked_span_with_a_study_marker(longitudinal_table, tmp_path, cache_dir):
    from r2gen import build

    cfg = compose_cfg("config", [*_overrides(longitudinal_table), "context.prior_images=true"], tmp_path / "run",
                      cache_dir)
    model = build.model(cfg)
    dm = build.datamodule(cfg, model)
    dm.setup()
    val = dm.splits["val"]
    assert val.prior_index.tolist() == [-1, 0, -1, 1 + 1]  # subjects val0 (studies 0, 1) and val1 (2, 3)
    batch = next(iter(dm.val_dataloader()))
    assert batch["prior_images"].shape == batch["images"].shape
    assert batch["prior_view_mask"].any(1).tolist() == [False, True, False, True]
    assert torch.equal(batch["prior_view_mask"][1], batch["view_mask"][0])
    assert torch.equal(batch["prior_images"][1], batch["images"][0])  # study 1's prior is study 0
    tokens, mask = model.image_tokens(batch["images"], batch["view_mask"])
    img, img_mask = model.visual_tokens(batch, tokens, mask)
    n = tokens.shape[1]
    assert img.shape[1] == 2 * n and img_mask[:, :n].tolist() == [[False] * n, [True] * n, [False] * n, [True] * n]
    assert img_mask[:, n:].all()
    assert model.persistent_keys() >= {"study_marker.weight"}
    loss = model.losses({**batch, **model_targets(model, batch)})["loss"]
    loss.backward()
    assert model.study_marker.weight.grad is not None and model.study_marker.weight.grad.abs().sum() > 0


def model_targets(model, batch):
    from r2gen.models.prompt import ReportTargets

    return ReportTargets(model.tokenizer, 16).tensors(batch["reports"])


def test_shuffled_priors_come_from_another_subject():
    from r2gen.data.priors import shuffle_priors

    entries = [{"id": f"s{s}_{k}", "subject_id": str(s), "prior_id": f"s{s}_{k - 1}" if k else None}
               for s in range(6) for k in range(3)]
    out = shuffle_priors(entries, seed=0)
    subject = {e["id"]: e["subject_id"] for e in entries}
    moved = [(e, o) for e, o in zip(entries, out, strict=True) if e["prior_id"] is not None]
    assert all(subject[o["prior_id"]] != e["subject_id"] for e, o in moved)
    assert sorted(o["prior_id"] for _, o in moved) == sorted(e["prior_id"] for e, _ in moved)  # the same priors, traded
    assert [o["prior_id"] for e, o in zip(entries, out, strict=True) if e["prior_id"] is None] == [None] * 6
    assert shuffle_priors(entries, seed=0) == out and shuffle_priors(entries, seed=1) != out


def test_evaluate_with_shuffled_priors(longitudinal_table, tmp_path, cache_dir):
    from r2gen.evaluate import evaluate
    from r2gen.train import train

    cfg = compose_cfg("config", [*_overrides(longitudinal_table), "context.prior_images=true",
                                 "test_after_fit=false"], tmp_path / "run", cache_dir)
    train(cfg)
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ev = [f"ckpt={best}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "shuffle_priors=true",
          "eval.bootstrap.resamples=0"]
    evaluate(compose_cfg("evaluate", ev, tmp_path / "ev", cache_dir), overrides=ev)
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["shuffle_priors"] is True and m["n_studies"] == 4


def test_predict_gives_each_new_study_its_prior_and_view_positions():
    """predict.py's studies as a dataset: each prior an entry of its own after the studies, a prior given by its
    report alone has no image span, and the view positions of a table's rows reach the view marker's ids."""
    from r2gen.data.context import prior_index
    from r2gen.data.datamodule import StudyDataset
    from r2gen.data.view_positions import VIEW_POSITIONS
    from r2gen.predict import study_entries

    ctx = Context.from_config({"prior_images": True, "prior_report": True, "view_positions": True})
    studies = [{"id": "a", "image_path": ["/x/a.png"], "view_positions": ["PA"], "prior_image_path": ["/x/p.png"],
                "prior_view_positions": ["LATERAL"], "prior_report": "Old effusion."},
               {"id": "b", "image_path": ["/x/b.png"], "prior_report": "Only its text."},
               {"id": "c", "image_path": ["/x/c.png"], "indication": "cough"}]  # a first study
    entries = study_entries(studies, ctx)
    assert [e["id"] for e in entries] == ["a", "b", "c", "\0prior\0a", "\0prior\0b"]
    assert prior_index(entries) == [3, -1, -1, -1, -1]
    assert ctx.texts(entries, str.lower)[:3] == ["prior report: old effusion.", "prior report: only its text.",
                                                 "prior report: none."]
    ds = StudyDataset(entries, Path(), None, 1, str.lower)
    ds.attach_context(ctx, entries, str.lower)
    ids = {name: k for k, name in enumerate(VIEW_POSITIONS)}
    assert ds.view_positions[:, 0].tolist() == [ids["PA"], ids["unknown"], ids["unknown"], ids["LATERAL"],
                                                ids["unknown"]]
    assert ds.extras(0)["prior_view_positions"].tolist() == [ids["LATERAL"]]
