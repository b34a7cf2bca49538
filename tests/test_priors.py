"""Prior studies: the latest earlier study of the same subject in the same split, from subject and study time; and the
context columns of a custom table."""

from __future__ import annotations

import csv
import json

import pytest

from r2gen.data.annotations import read_studies
from r2gen.data.priors import link_priors, parse_time
from r2gen.errors import InputError


def _study(sid, subject, when, split="train"):
    return {"id": sid, "report": "r", "image_path": [f"{sid}.png"], "subject_id": subject, "study_time": when,
            "split": split}


def test_priors_over_several_subjects_dates_and_splits():
    train = [
        _study("a3", "1", "2180-03-01T09:00:00"), _study("a1", "1", "2180-01-05T08:00:00"),
        _study("a2", "1", "2180-02-10T10:30:00"),
        _study("b2", "2", "2181-06-01T14:00:00"), _study("b1", "2", "2181-06-01T08:15:00"),  # same day, two times
        _study("c1", "3", "2182-01-01"), _study("c2", "3", "2182-01-01"),  # same day, no times: no order
        _study("c3", "3", "2182-01-02"),  # after both of them: its latest earlier study cannot be told
        _study("d1", "4", "2183-05-05T05:05:05"), _study("d2", "4", "2183-05-05T05:05:05"),  # the same time
        _study("e1", None, "2180-01-01"), _study("e2", "5", None),  # no subject, no time
    ]
    test = [_study("f2", "6", "2190-02-01", "test"), _study("g1", "1", "2180-02-20T00:00:00", "test")]
    val = [_study("f1", "6", "2190-01-01", "val")]  # subject 6's earlier study is in another split
    studies = link_priors({"train": train, "val": val, "test": test})
    prior = {e["id"]: e.get("prior_id", "no key") for s in studies.values() for e in s}
    assert prior == {
        "a1": None, "a2": "a1", "a3": "a2",  # the latest earlier one, not just any earlier one; order as read
        "b1": None, "b2": "b1",  # same day: ordered by the times
        "c1": None, "c2": None, "c3": None,
        "d1": None, "d2": None,
        "e1": "no key", "e2": "no key",
        "f1": None, "f2": None,  # never a study of another split
        "g1": None,  # subject 1 is in train too, but the test split has no earlier study of theirs
    }


def test_a_study_is_never_linked_to_a_later_one_or_itself():
    rows = [_study(f"s{i}", "1", f"2180-01-{d:02d}T10:00:00") for i, d in enumerate((9, 3, 27, 14, 1))]
    out = link_priors({"train": rows, "val": [], "test": []})["train"]
    when = {e["id"]: e["study_time"] for e in out}
    for e in out:
        if e["prior_id"] is not None:
            assert when[e["prior_id"]] < e["study_time"] and e["prior_id"] != e["id"]
    assert [e["prior_id"] for e in out] == ["s1", "s4", "s3", "s0", None]  # days 9, 3, 27, 14, 1


@pytest.mark.parametrize("value,want", [("2180-07-15", "2180-07-15"), ("2180-07-15T10:42", "2180-07-15T10:42:00"),
                                        ("2180-07-15 10:42:07", "2180-07-15T10:42:07"), ("", None), (None, None)])
def test_study_times_are_read_as_iso_8601(value, want):
    assert parse_time(value, "x") == want


def test_custom_tables_take_context_columns(make_cfg, tmp_path):
    rows = [
        {"id": "s1", "report": "No effusion.", "image_path": "a.png;b.png", "split": "train", "subject_id": "p7",
         "study_time": "2180-01-01 09:00:00", "indication": "Dyspnea. Evaluate for effusion.", "comparison": "",
         "view_positions": "pa;lateral"},
        {"id": "s2", "report": "New small left effusion.", "image_path": "c.png", "split": "train",
         "subject_id": "p7", "study_time": "2180-01-03", "indication": "", "comparison": "Jan 1.",
         "view_positions": "AP"},
        {"id": "s3", "report": "Normal.", "image_path": "d.png", "split": "test", "subject_id": "", "study_time": "",
         "indication": "", "comparison": "", "view_positions": ""},
    ]
    f = tmp_path / "studies.csv"
    with open(f, "w", newline="") as h:
        w = csv.DictWriter(h, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = make_cfg("data=custom", f"data.root={tmp_path}", f"data.annotation={f}", small=False)
    studies = read_studies(cfg.data)
    s1, s2 = studies["train"]
    assert s1["view_positions"] == ["PA", "LATERAL"] and s1["indication"] == "Dyspnea. Evaluate for effusion."
    assert "comparison" not in s1 and s2["comparison"] == "Jan 1."
    assert (s1["study_time"], s2["study_time"]) == ("2180-01-01T09:00:00", "2180-01-03")
    assert (s1["prior_id"], s2["prior_id"]) == (None, "s1")
    assert studies["test"][0] == {"id": "s3", "report": "Normal.", "image_path": ["d.png"], "split": "test"}

    jl = tmp_path / "studies.jsonl"
    jl.write_text(json.dumps({**rows[0], "image_path": ["a.png", "b.png"], "view_positions": ["PA"]}) + "\n")
    cfg = make_cfg("data=custom", f"data.root={tmp_path}", f"data.annotation={jl}", small=False)
    with pytest.raises(InputError, match=r"studies.jsonl line 1: 1 view_positions for 2 images; give one per image"):
        read_studies(cfg.data)
    jl.write_text(json.dumps({**rows[0], "study_time": "15/07/2180"}) + "\n")
    with pytest.raises(InputError, match=r"line 1: study_time='15/07/2180' is not an ISO 8601 date or time"):
        read_studies(cfg.data)
