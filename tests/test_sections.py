"""r2gen.data.sections: MIMIC-CXR reports split into sections as the data set's authors split them (their header
rule, name normalisation, empty-section and last-paragraph rules, and per-study tables)."""

from __future__ import annotations

import pytest

from r2gen.data.sections import CUSTOM_INDICES, conclusion, normalize_name, section_list, split_sections

from .helpers.mimic_cxr import FULL, report


def test_a_complete_final_report_gives_every_section():
    assert split_sections(FULL) == {
        "preamble": "FINAL REPORT", "examination": "CHEST (PA AND LAT)",
        "indication": "___F with cough // eval for pneumonia", "technique": "Chest PA and lateral",
        "comparison": "Chest radiograph ___.", "findings": "The lungs are clear. The heart size is normal.",
        "impression": "No acute cardiopulmonary process."}


def test_header_on_its_own_line_with_the_text_below():
    text = " FINAL REPORT\n FINDINGS: \n \n There is no focal consolidation.\n \n IMPRESSION: \n \n Normal.\n"
    assert split_sections(text) == {"preamble": "FINAL REPORT", "findings": "There is no focal consolidation.",
                                    "impression": "Normal."}


@pytest.mark.parametrize("header, name", [
    ("FINDINGS AND IMPRESSION", "impression"), ("FINDINGS/IMPRESSION", "impression"), ("CONCLUSION", "impression"),
    ("IMPRESSON", "impression"), ("CLINICAL HISTORY", "history"), ("HISTORY", "history"), ("PFI", "history"),
    ("CLINICAL INDICATION", "indication"), ("REASON FOR EXAM", "indication"), ("COMPARISONS", "comparison"),
    ("REFERENCE EXAM", "comparison"), ("EXAM", "examination"), ("RECOMMENDATION(S)", "recommendations"),
    ("WET READ", "wet read"), ("ADDENDUM", "addendum"), ("FINDING", "findings"),
    ("PRELIMINARY IMPRESSION", "impression"),  # a name holding a main section's name is that section
    ("HISTORY OF PRESENT ILLNESS", "history"), ("COMPARISON TO PRIOR", "comparison"),
    ("CHEST, PA AND LATERAL", "findings"), ("PORTABLE SEMI-UPRIGHT", "findings"),  # the views: findings
    ("AP VIEW", "findings"), ("NOTE", "note"), ("DATE", "date"),
])
def test_header_names_are_normalised(header, name):
    assert normalize_name(header) == name
    assert name in split_sections(f" FINAL REPORT\n INDICATION:  cough\n {header}:  some text.\n")


def test_lower_case_headers_are_not_headers():
    """The authors' header rule is upper case only: the report is one section, split by the fallback into its first
    paragraph and the rest."""
    text = " FINAL REPORT\n Findings:  Heart size is normal.\n \n Impression:  No pneumonia.\n"
    assert split_sections(text) == {"full report": "FINAL REPORT Findings: Heart size is normal.",
                                    "last_paragraph": "Impression: No pneumonia."}


def test_no_findings_or_impression_falls_back_to_the_last_paragraphs():
    text = " FINAL REPORT\n INDICATION:  Dyspnea.\n \n Mild cardiomegaly.\n \n No consolidation.\n"
    assert split_sections(text) == {"preamble": "FINAL REPORT", "indication": "Dyspnea.",
                                    "last_paragraph": "Mild cardiomegaly. No consolidation."}
    # with a findings or impression section there is no fallback
    assert "last_paragraph" not in split_sections(text.replace("INDICATION", "IMPRESSION"))
    # one paragraph, no header: nothing to fall back to
    assert split_sections("Heart size normal.") == {"full report": "Heart size normal."}


def test_an_empty_title_like_header_is_dropped():
    """`CHEST, PA LATERAL:` with nothing under it is a title, not a findings section (p10/p10103318/s57408307)."""
    text = " FINAL REPORT\n CHEST, PA LATERAL:\n \n INDICATION:  Cough.\n \n Lungs clear.\n"
    names = [n for n, _ in section_list(text)]
    assert names == ["preamble", "indication", "last_paragraph"]
    assert split_sections(text)["last_paragraph"] == "Lungs clear."


def test_the_header_after_a_header_that_ends_its_line_is_part_of_its_text():
    """After a header the next one is looked for from the next line on (the authors' guard against bad parses), so
    a header whose colon ends the line swallows the header right below it."""
    text = " FINAL REPORT\n FINDINGS:\n IMPRESSION:  Normal.\n \n COMPARISON:  None.\n"
    assert split_sections(text) == {"preamble": "FINAL REPORT", "findings": "IMPRESSION: Normal.",
                                    "comparison": "None."}


def test_a_repeated_section_keeps_the_last():
    text = FULL + " ADDENDUM:  Reviewed.\n \n IMPRESSION:  Small effusion on review.\n"
    s = split_sections(text)
    assert s["impression"] == "Small effusion on review." and s["addendum"] == "Reviewed."


def test_a_wet_read_above_the_final_report():
    """MIMIC-CXR's preliminary reads come first: on the file's first line it is preamble (a header needs a line
    break before it); on a later line it is the `wet read` section."""
    text = report(("FINDINGS", "Lungs clear."), ("IMPRESSION", "Normal."), wet_read="No acute process.")
    s = split_sections(text)
    assert s["preamble"].startswith("WET READ: ___ ___ 2:05 PM No acute process. ___") and "wet read" not in s
    assert s["findings"] == "Lungs clear." and s["impression"] == "Normal."
    s = split_sections("\n" + text)
    assert s["wet read"].startswith("___ ___ 2:05 PM No acute process.") and s["impression"] == "Normal."


def test_windows_line_ends_split_the_same():
    assert split_sections(FULL.replace("\n", "\r\n")) == split_sections(FULL)


def test_custom_section_names_take_the_impression_from_the_named_section():
    text = report(("INDICATION", "Nodule."), ("FINDINGS", "A 5 mm nodule."), ("RECOMMENDATION(S)", "CT in 3 months."))
    assert "impression" not in split_sections(text)
    for sid in ("s50913680", "50913680", 50913680):  # the authors' table: s50913680 -> recommendations
        s = split_sections(text, sid)
        assert s["impression"] == "CT in 3 months." and s["findings"] == "A 5 mm nodule."
    assert "impression" not in split_sections(text, "s50000001")  # another study: no rule


def test_custom_indices_take_a_fixed_span_or_nothing():
    start, end = CUSTOM_INDICES["s50525523"]
    text = " FINAL REPORT\n" + "x" * (start - 14) + " The span\n is the impression. " + "y" * 400
    s = split_sections(text, "s50525523")
    assert s["impression"] == " ".join(text[start:end].split()) and s["impression"].startswith("The span is the")
    assert "findings" not in s and "last_paragraph" not in s
    # [0, 0]: the report has no findings or impression at all
    s = split_sections(FULL, "s58235663")
    assert "findings" not in s and "impression" not in s and s["indication"].startswith("___F with cough")


def test_conclusion_is_what_the_authors_keep_of_a_study():
    assert conclusion(split_sections(FULL)) == "No acute cardiopulmonary process."
    assert conclusion({"findings": "F", "comparison": "C"}) == "F"
    assert conclusion({"last_paragraph": "L", "comparison": "C"}) == "L"
    assert conclusion({"comparison": "C", "indication": "I"}) == "C"
    assert conclusion({"indication": "I"}) is None
