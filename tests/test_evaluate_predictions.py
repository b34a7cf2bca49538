"""`evaluate.py predictions=<file> data=...`: score any system's output, with no model, exactly as ours is scored."""

import json
import random

import pytest

from r2gen.data.clean import clean_report_iu_xray
from r2gen.scoring import METRIC_NAMES

from .helpers.cli import run_cli
from .helpers.paths import SHARED_DATA

IU = SHARED_DATA / "iu_xray" / "annotation.json"


def direct_pycocoevalcap(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """R2Gen's compute_scores, verbatim in spirit: the scorers called directly on {i: [text]} dicts."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    out = {}
    for scorer, names in ((Bleu(4), METRIC_NAMES[:4]), (Meteor(), ["METEOR"]), (Rouge(), ["ROUGE_L"]),
                          (Cider(), ["CIDEr"])):
        score, _ = scorer.compute_score(gts, res, verbose=0) if names[0].startswith("Bleu") else \
            scorer.compute_score(gts, res)
        for n, s in zip(names, score if isinstance(score, list) else [score], strict=True):
            out[n] = s
    return out


@pytest.mark.slow
@pytest.mark.skipif(not IU.is_file(), reason="real IU-Xray reports not present (../shared/data)")
def test_scores_real_iu_xray_reports_exactly_as_pycocoevalcap(tmp_path, cache_dir):
    test = json.loads(IU.read_text())["test"][:150]
    rng = random.Random(0)
    others = [e["report"] for e in test]
    rng.shuffle(others)
    rows = [{"id": e["id"], "prediction": o if i % 3 else e["report"], "reference": e["report"]}
            for i, (e, o) in enumerate(zip(test, others, strict=True))]
    f = tmp_path / "preds.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = run_cli("evaluate.py", f"predictions={f}", "data=iu_xray", f"hydra.run.dir={tmp_path / 'ev'}",
                cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    want = direct_pycocoevalcap([clean_report_iu_xray(x["prediction"]) for x in rows],
                                [clean_report_iu_xray(x["reference"]) for x in rows])
    for k in METRIC_NAMES:
        assert m[k] == pytest.approx(want[k], abs=1e-12), k
    assert m["n_studies"] == 150 and m["clean"] == "iu_xray"
    written = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert written[1]["reference"] == clean_report_iu_xray(rows[1]["reference"])


@pytest.mark.parametrize("content,message", [
    ('{"id": 1, "prediction": "a"}\n', "line 1: missing ['reference']"),
    ('{"id": 1, "prediction": "a", "reference": "b"}\nnot json\n', "line 2: not JSON"),
    ('{"id": 1, "prediction": "a", "reference": "b"}\n{"id": 1, "prediction": "a", "reference": "b"}\n',
     "line 2: id '1' appears twice (lines 1 and 2)"),
    ('{"id": 1, "prediction": null, "reference": "b"}\n', "line 1 (id '1'): prediction is null, not a string"),
    ("", "has no predictions"),
])
@pytest.mark.slow
def test_bad_predictions_file_names_the_line(tmp_path, cache_dir, content, message):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    r = run_cli("evaluate.py", f"predictions={f}", "split=null", f"hydra.run.dir={tmp_path / 'ev'}", cache_dir=cache_dir)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
