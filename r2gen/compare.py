"""`compare(cfg)`: a paired test between two systems' reports for the same studies.

`python -m r2gen.compare a=<run A> b=<run B> data=iu_xray` (or `r2gen-compare ...`): each of `a` and `b` is a
predictions JSONL file (`{"id", "prediction", "reference"}` per line), an evaluate run folder (its
`predictions.jsonl`) or a training run folder (its `test/predictions.jsonl`). Both are cleaned, prepared and scored
exactly as `evaluate.py predictions=<file>` scores one file (`data.clean`, `data.labeler`, `eval.references`,
`eval.ce_uncertain`; `monitor.weights` gives `score`), so compare's A and B columns are what evaluate.py prints for
each. The two files must hold the same studies with the same references; records are paired by id.

For every score: A, B, A - B, the paired-bootstrap interval of A - B and a two-sided approximate-randomization
p-value (`r2gen.scoring.bootstrap.paired`, `eval.bootstrap`). Printed as a table and written to `compare.json` in
the run folder (`outputs/compare/<date>/<time>`); a and b are only read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from r2gen import build
from r2gen.boundary import module_main
from r2gen.data.clean import get_cleaner
from r2gen.errors import ConfigError, InputError, MissingFileError
from r2gen.scoring import METRIC_NAMES
from r2gen.scoring.bootstrap import paired
from r2gen.scoring.coverage import first_ids
from r2gen.scoring.policy import Scoring, score_families
from r2gen.scoring.predictions_file import as_scored, read_predictions
from r2gen.scoring.protocol import protocol

log = logging.getLogger(__name__)
# Where a run folder keeps its predictions: an evaluate run's own, then a training run's test.
RUN_FILES = ("predictions.jsonl", "test/predictions.jsonl")


def resolve(key: str, value: Any) -> Path:
    """The predictions file `key`=`value` names: the file itself, or a run folder's (`RUN_FILES`)."""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        for name in RUN_FILES:
            if (path / name).is_file():
                return path / name
        looked = " and ".join(str(path / n) for n in RUN_FILES)
        raise MissingFileError(f"{key}={value}: a folder with no predictions file (looked for {looked}); give a "
                               f"predictions JSONL file, an evaluate run folder or a training run folder whose test "
                               f"ran")
    if not path.is_file():
        raise MissingFileError(f"{key}={value}: no such file or folder; give a predictions JSONL file ({{id, "
                               f"prediction, reference}} per line) or a run folder holding one")
    return path


def read_side(key: str, path: Path, clean: Callable[[str], str], scoring: Scoring) -> dict[str, dict[str, str]]:
    """id -> the record as scored (both sides cleaned, the reference as `eval.references` says: `as_scored`, as
    evaluate.py reads a predictions file), in file order."""
    return {r["id"]: r for r in as_scored(read_predictions(path, references=True, key=key), clean, scoring)}


def check_same_studies(a: dict[str, dict], b: dict[str, dict], a_path: Path, b_path: Path) -> None:
    """A paired test needs both files to hold the same studies with the same references: one line if not."""
    only_a = [i for i in a if i not in b]
    only_b = [i for i in b if i not in a]
    if only_a or only_b:
        parts = [f"{len(ids)} ids only in {side} ({first_ids(ids)})" for side, ids in (("a", only_a), ("b", only_b))
                 if ids]
        raise InputError(f"a={a_path} and b={b_path} hold different studies: {' and '.join(parts)}; a paired test "
                         f"needs both systems' reports for the same studies: predict the same split with both, "
                         f"or remove the extra lines")
    differ = [i for i in a if a[i]["reference"] != b[i]["reference"]]
    if differ:
        raise InputError(f"a={a_path} and b={b_path}: the reference of {len(differ)} of {len(a)} studies differs "
                         f"between the files once cleaned ({first_ids(differ)}); a paired test needs the same "
                         f"references: score both systems against the same data set and split")


def ordered(names: Sequence[str]) -> list[str]:
    """The NLG scores in METRIC_NAMES order, then `score`, then the rest as given."""
    first = [k for k in (*METRIC_NAMES, "score") if k in names]
    return first + [k for k in names if k not in first]


def format_compare(result: dict[str, dict[str, float]]) -> str:
    """One row per score: A, B, A - B, the paired interval of A - B and p."""
    names = ordered(list(result))
    width = max([len(k) for k in names] + [10])
    lines = [f"  {'':<{width}}  {'A':>9}  {'B':>9}  {'A-B':>9}  {'interval of A-B':>21}  {'p':>7}"]
    for k in names:
        r = result[k]
        lines.append(f"  {k:<{width}}  {r['a']:9.4f}  {r['b']:9.4f}  {r['diff']:+9.4f}  "
                     f"[{r['low']:+9.4f}, {r['high']:+9.4f}]  {r['p']:7.4f}")
    return "\n".join(lines)


def compare(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """{score: {"a", "b", "diff", "low", "high", "p"}} for the systems `cfg.a` and `cfg.b` on their common studies;
    prints the table and writes compare.json into the run folder."""
    scoring = Scoring.from_config(cfg)
    how = scoring.bootstrap
    if not how.enabled:
        raise ConfigError("eval.bootstrap.resamples=0: compare draws its interval and p-value from resamples; set "
                          "eval.bootstrap.resamples=1000 (or leave it at its default)")
    clean = get_cleaner(cfg.data.clean)
    a_path, b_path = resolve("a", cfg.a), resolve("b", cfg.b)
    a = read_side("a", a_path, clean, scoring)
    b = read_side("b", b_path, clean, scoring)
    check_same_studies(a, b, a_path, b_path)
    ids = list(a)  # a's file order; b paired to it by id
    _, fa = score_families([a[i] for i in ids], scoring)
    _, fb = score_families([b[i] for i in ids], scoring)
    result = paired(fa, fb, how, scoring.weights)
    result = {k: result[k] for k in ordered(list(result))}

    out = build.output_dir(cfg)
    body = {"a": str(a_path), "b": str(b_path), "n_studies": len(ids), "data": cfg.data.name,
            "clean": cfg.data.clean, "references": scoring.reference_protocol, "labeler": scoring.labeler_name,
            "protocol": protocol(cfg, scoring, None), "bootstrap": how.method(fa), "scores": result}
    (out / "compare.json").write_text(json.dumps(body, indent=2) + "\n")
    print(f"\nA = {a_path}\nB = {b_path}\n{len(ids)} studies; A-B with its paired-bootstrap {how.level:.0%} interval "
          f"({how.resamples} resamples) and the approximate-randomization p-value ({out / 'compare.json'}):\n"
          f"{format_compare(result)}\n")
    return result


def main():
    """`python -m r2gen.compare a=... b=... [key=value ...]` (and its console script, r2gen.cli)."""
    return module_main(compare, "compare", config_name="compare")


if __name__ == "__main__":
    main()
