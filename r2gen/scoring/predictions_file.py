"""A predictions file (`evaluate.py predictions=<file>`): read line by line, and matched against a data split.

One JSON object per line, `{"id", "prediction", "reference"}` (r2gen's own `predictions.jsonl` is one). Every line
is checked before anything is scored: `id` a non-empty string or integer, on one line only; `prediction` a string
(an empty string is a legitimate, bad report and is scored as one; null, a number or a list is an error, never the
text "None"); `reference` a string where the file's references are the ones scored.

Given the studies of a data split (`match_split`), the split's reports are the references and the file must cover
the split: studies missing from the file, or ids the split does not have, are one `InputError` that counts them,
names the first few and says the fix. With `allow_partial` the studies the file has are scored, and their
`Coverage` (r2gen.scoring.coverage) says how many of how many, and which are missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from r2gen.data.annotations import jsonl_objects
from r2gen.errors import InputError, MissingFileError
from r2gen.scoring.coverage import Coverage, first_ids


def _what(value: Any) -> str:
    """A JSON value as a message names it: null, a number (3), a list, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else repr(value)


def read_predictions(path: str | Path, references: bool = True, key: str = "predictions") -> list[dict[str, str]]:
    """The file's `{"id", "prediction"[, "reference"]}` records, in file order, ids as strings. `references`: the
    file's references are the ones scored, so every line needs one; without, `reference` may be left out (a
    string one is kept, for `reference_mismatches`). A bad line is an `InputError` naming its number and id, and
    the config key that named the file (`key`: predictions, or compare's a / b)."""
    name = f"{key}={path}"
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise MissingFileError(f"{name}: no such file (expected JSONL: one {{id, prediction, reference}} per line)")
    need = ("id", "prediction", "reference") if references else ("id", "prediction")
    records: list[dict[str, str]] = []
    lines: dict[str, int] = {}  # id -> the line it is on
    for n, r in jsonl_objects(p, name):
        missing = [k for k in need if k not in r]
        if missing:
            raise InputError(f"{name} line {n}: missing {missing}; each line needs {', '.join(need)}")
        sid = r["id"]
        if isinstance(sid, bool) or not isinstance(sid, (str, int)) or not str(sid).strip():
            raise InputError(f"{name} line {n}: id is {_what(sid)}; a study id is a non-empty string (or an integer)")
        sid = str(sid)
        if sid in lines:
            raise InputError(f"{name} line {n}: id {sid!r} appears twice (lines {lines[sid]} and {n}); one "
                             f"prediction per study: remove or rename one")
        lines[sid] = n
        record = {"id": sid}
        for key in ("prediction", "reference"):
            value = r.get(key)
            if key == "reference" and value is None and not references:
                continue  # not needed: the split's report is the reference
            if not isinstance(value, str):
                raise InputError(f"{name} line {n} (id {sid!r}): {key} is {_what(value)}, not a string; write the "
                                 f"report text (\"\" for an empty report)")
            record[key] = value
        records.append(record)
    if not records:
        raise InputError(f"{name}: the file has no predictions")
    return records


def match_split(records: Sequence[dict[str, str]], studies: Sequence[dict[str, Any]], *, path: str, data: str,
                split: str, allow_partial: bool = False) -> tuple[list[dict[str, str]], Coverage]:
    """`{"id", "prediction", "reference"}` per study of the split that the file predicts, in the split's order,
    the reference being the split's report; and their `Coverage`. `studies`: the split's `{"id", "report"}`
    entries; `path`, `data`, `split`: the file, the data set's name and the split's, for messages."""
    reports = {str(e["id"]): e["report"] for e in studies}
    predicted = {r["id"]: r["prediction"] for r in records}
    unknown = [i for i in predicted if i not in reports]
    missing = [i for i in reports if i not in predicted]
    if unknown or (missing and not allow_partial):
        problems = []
        if missing:
            problems.append(f"{len(missing)} of the split's {len(reports)} studies are not in the file "
                            f"({first_ids(missing)})")
        if unknown:
            problems.append(f"{len(unknown)} of the file's {len(predicted)} ids are not in the split "
                            f"({first_ids(unknown)})")
        fixes = []
        if unknown:
            fixes.append("check that the file is for this data set and split (split=val or split=test), or remove "
                         "those lines")
        if missing:
            fixes.append("predict every study of the split, or set eval.allow_partial=true to score only the "
                         "studies the file has (metrics.json then lists the missing ones)")
        raise InputError(f"predictions={path} does not match data={data}'s {split} split: {' and '.join(problems)}; "
                         f"{'; '.join(fixes)}")
    scored = [{"id": i, "prediction": predicted[i], "reference": reports[i]} for i in reports if i in predicted]
    why = "not in the predictions file (eval.allow_partial=true)"
    return scored, Coverage(split, len(reports), tuple(missing), why)


def as_scored(rows: Sequence[dict[str, str]], clean: Callable[[str], str], scoring) -> list[dict[str, str]]:
    """Records of a predictions file as they are scored: `prediction` and `reference` (those present) cleaned with
    the data set's cleaner, then the reference protocol applied (`scoring`: r2gen.scoring.policy.Scoring). How
    `evaluate.py predictions=` and `r2gen-compare` both read a file, so they score it alike."""
    return scoring.prepare([{**r, **{k: clean(r[k]) for k in ("prediction", "reference") if k in r}} for r in rows])


def reference_mismatches(scored: Sequence[dict[str, str]], records: Sequence[dict[str, str]],
                         as_scored: Callable[[list[dict]], list[dict]]) -> list[str]:
    """Ids whose `reference` in the file differs from the reference scored (`scored`, already as scored), the
    file's text taken through `as_scored` (cleaning, then the reference protocol) first."""
    given = as_scored([{"id": r["id"], "reference": r["reference"]} for r in records if "reference" in r])
    theirs = {r["id"]: r["reference"] for r in given}
    return [r["id"] for r in scored if r["id"] in theirs and theirs[r["id"]] != r["reference"]]
