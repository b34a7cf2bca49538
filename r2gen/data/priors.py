"""The prior study of each study: the latest earlier study of the same subject, in the same split.

A radiologist reads today's film beside the last one ("new left effusion", "unchanged cardiomegaly"), so a study
that carries `subject_id` and `study_time` (r2gen.data.splits: the official layouts fill them, `data=custom` takes
them as optional columns) gets `prior_id`, the id of its prior, or None. The rules:

- only studies of the same split: a prior never comes from another split (no test report leaks into training,
  and a test study's prior is a test study);
- only earlier studies: never a later one, never the study itself;
- times are ISO 8601 (`YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS]`); two studies of one day are ordered by their times
  when both have one; two that cannot be ordered (the same time, or a day without a time) are not each other's
  prior, and when the latest earlier study cannot be told (two such candidates), the study gets none;
- a study without a subject or a time gets none.

Links are among the studies as read (a study a reader left out, e.g. one without the target section, is nobody's
prior).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime, time
from typing import Any

from r2gen.data.splits import Studies
from r2gen.errors import InputError

log = logging.getLogger(__name__)

Moment = tuple[date, time | None]


def parse_time(value: Any, where: str) -> str | None:
    """`value` (a study time as a table gives it) as ISO 8601, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS`; None for an
    empty cell. Anything else is an InputError naming `where`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text.replace(" ", "T", 1)).replace(tzinfo=None, microsecond=0).isoformat()
    except ValueError:
        raise InputError(f"{where}: study_time={text!r} is not an ISO 8601 date or time; write it as 2180-07-15 or "
                         f"2180-07-15T10:42:00") from None


def _moment(value: str) -> Moment:
    if len(value) == 10:
        return date.fromisoformat(value), None
    t = datetime.fromisoformat(value)
    return t.date(), t.time()


def _earlier(a: Moment, b: Moment) -> bool:
    """a is surely before b."""
    return a[0] < b[0] or (a[0] == b[0] and a[1] is not None and b[1] is not None and a[1] < b[1])


def _prior(study: Moment, others: Iterable[tuple[Moment, str]]) -> tuple[str | None, bool]:
    """(the id of the latest of `others` surely before `study`, or None; whether that latest was ambiguous)."""
    before = [(m, i) for m, i in others if _earlier(m, study)]
    if not before:
        return None, False
    day = max(m[0] for m, _ in before)
    last = [(m, i) for m, i in before if m[0] == day]  # the latest day's: the latest, unless two cannot be ordered
    if len(last) > 1:
        if any(m[1] is None for m, _ in last):
            return None, True
        hour = max(m[1] for m, _ in last)
        last = [(m, i) for m, i in last if m[1] == hour]
    return (last[0][1], False) if len(last) == 1 else (None, True)


def link_priors(studies: Studies) -> Studies:
    """Every study with a subject and a time gets `prior_id` (module docstring: None when it has none; a study
    without a subject or a time gets no key); studies are changed in place and returned. Logs, per split with subjects, how many studies have a prior."""
    for split, entries in studies.items():
        subjects: dict[str, list[tuple[Moment, str, dict]]] = defaultdict(list)
        for e in entries:
            if e.get("subject_id") in (None, "") or not e.get("study_time"):
                continue
            try:
                moment = _moment(str(e["study_time"]))
            except ValueError:  # a reader's time that is no calendar date (2180-02-31): no order to link by
                continue
            subjects[str(e["subject_id"])].append((moment, str(e["id"]), e))
        if not subjects:
            continue
        linked = ambiguous = 0
        for rows in subjects.values():
            for moment, _, e in rows:
                e["prior_id"], unclear = _prior(moment, ((m, i) for m, i, _ in rows))
                linked += e["prior_id"] is not None
                ambiguous += unclear
        timed = sum(len(r) for r in subjects.values())
        log.info("%s: %d of %d studies have a prior study (%d subjects)%s", split, linked, timed, len(subjects),
                 f"; {ambiguous} whose latest earlier study cannot be told (same day, no time) have none"
                 if ambiguous else "")
    return studies


def shuffle_priors(entries: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The split's studies with every prior given to a study of another subject (evaluate.py shuffle_priors=true:
    a model that reads the prior loses what it gained from it; one that ignores it keeps its scores). The studies
    that have a prior trade them along a random cycle; a study whose new prior is its own subject's swaps with the
    next one where that makes both differ. The other studies are left as they are."""
    has = [k for k, e in enumerate(entries) if e.get("prior_id") is not None]
    if len(has) < 2:
        return list(entries)
    order = list(has)
    random.Random(seed).shuffle(order)
    given = [entries[order[(j + 1) % len(order)]]["prior_id"] for j in range(len(order))]
    owner = {str(e["id"]): str(e.get("subject_id")) for e in entries}
    subject = [str(entries[k].get("subject_id")) for k in order]

    def own(j: int) -> bool:
        return owner.get(str(given[j])) == subject[j]

    for j in range(len(order)):
        for t in range(1, len(order)):
            if not own(j):
                break
            m = (j + t) % len(order)
            given[j], given[m] = given[m], given[j]
            if own(j) or own(m):
                given[j], given[m] = given[m], given[j]  # no better: undo, try the next
    out = list(entries)
    for j, k in enumerate(order):
        out[k] = {**entries[k], "prior_id": given[j]}
    return out
