"""A MIMIC-CXR free-text report split into its sections, as the data set's authors split it.

MIMIC-CXR ships each study's report as one text file (`files/pXX/p<subject>/s<study>.txt`); findings, impression,
indication and the rest are paragraphs under upper-case headers (` FINDINGS:`). Published numbers on MIMIC-CXR take
their reference texts from the authors' parser (MIT-LCP/mimic-cxr, `txt/section_parser.py` and
`txt/create_section_files.py`), so `split_sections` reproduces its behaviour (written anew, same results):

- a header is a line that starts with a space, then upper-case letters, spaces and `()/,-`, then a colon and white
  space (`\\n FINDINGS:  ...`); lower-case or mixed-case headers (`Findings:`) are not headers. After a header the
  next one is looked for only from the following line on, so two "headers" on one line are one section. The text
  before the first header is the `preamble`; a report with no header is one section, `full report`;
- section names are normalised: a table of frequent names and typos (`conclusion`, `findings and impression` ->
  impression; `clinical history` -> history; `reason for exam` -> indication; `comparisons` -> comparison ...), then
  a name containing impression, findings, history, comparison or addendum is that section, then a name that
  describes the views (`chest, pa and lateral`, `portable ap view` ...) is findings;
- empty findings and impression sections are dropped (a title like ` CHEST, PA LATERAL:` is not a findings section);
- a report left with neither findings nor impression gets a `last_paragraph`: the paragraphs of its last section
  after the first (paragraphs are separated by a line holding one space, as MIMIC-CXR writes them);
- a name that appears more than once keeps its *last* section (create_section_files takes the last one);
- per-study rules for 23 reports whose impression sits under another header (`CUSTOM_SECTION_NAMES`: that section
  is the impression) and 31 whose impression is a fixed span of the text (`CUSTOM_INDICES`; [0, 0]: the report has
  no findings or impression at all).

Section texts are returned stripped, with white-space runs (the report's line breaks and indents) made one space.
Standard library only.
"""

from __future__ import annotations

import re

# a header: a line starting with one space, upper-case words, a colon (MIMIC-CXR indents every line by one space)
HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
PARAGRAPH = "\n \n"  # MIMIC-CXR's blank line holds one space

# normalised names of frequent headers and their typos (the authors' table; the numbers are how often they occur)
FREQUENT_SECTIONS = {
    "preamble": "preamble",  # 227885
    "impression": "impression",  # 187759
    "comparison": "comparison",  # 154647
    "indication": "indication",  # 153730
    "findings": "findings",  # 149842
    "examination": "examination",  # 94094
    "technique": "technique",  # 81402
    "history": "history",  # 45624
    "comparisons": "comparison",  # 8686
    "clinical history": "history",  # 7121
    "reason for examination": "indication",  # 5845
    "notification": "notification",  # 5749
    "reason for exam": "indication",  # 4430
    "clinical information": "history",  # 4024
    "exam": "examination",  # 3907
    "clinical indication": "indication",  # 1945
    "conclusion": "impression",  # 1802
    "chest, two views": "findings",  # 1735
    "recommendation(s)": "recommendations",  # 1700
    "type of examination": "examination",  # 1678
    "reference exam": "comparison",  # 347
    "patient history": "history",  # 251
    "addendum": "addendum",  # 183
    "comparison exam": "comparison",  # 163
    "date": "date",  # 108
    "comment": "comment",  # 88
    "findings and impression": "impression",  # 87
    "wet read": "wet read",  # 83
    "comparison film": "comparison",  # 79
    "recommendations": "recommendations",  # 72
    "findings/impression": "impression",  # 47
    "pfi": "history",
    "recommendation": "recommendations",
    "wetread": "wet read",
    "ndication": "impression",  # sic: the authors' table maps this typo to impression
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "findings/ impression": "impression",
    "finding": "findings",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "idication": "indication",
    "reference findings": "findings",
    "comparision": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "comparisions": "comparison",
}
# a name containing one of these is that section (checked in this order)
MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
# a name describing the views of the study is its findings
VIEW_HEADER = re.compile("|".join(re.escape(w) for w in (
    "chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap", "frontal and",
    "two views", "frontal view", "pa view", "ap view", "one view", "lateral view", "bone window", "frontal upright",
    "frontal semi-upright", "ribs", "pa and lat")))

# Per-study rules, data from MIT-LCP/mimic-cxr txt/section_parser.py::custom_mimic_cxr_rules (MIT licence,
# Copyright (c) MIT Laboratory for Computational Physiology). The section of these reports that holds the impression:
CUSTOM_SECTION_NAMES = {
    "s50913680": "recommendations", "s59363654": "examination", "s59279892": "technique",
    "s59768032": "recommendations", "s57936451": "indication", "s50058765": "indication",
    "s53356173": "examination", "s53202765": "technique", "s50808053": "technique", "s51966317": "indication",
    "s50743547": "examination", "s56451190": "note", "s59067458": "recommendations", "s59215320": "examination",
    "s55124749": "indication", "s54365831": "indication", "s59087630": "recommendations",
    "s58157373": "recommendations", "s56482935": "recommendations", "s58375018": "recommendations",
    "s54654948": "indication", "s55157853": "examination", "s51491012": "history",
}
# ... and the character span [start, end) of these reports that is their impression ([0, 0]: none at all)
CUSTOM_INDICES = {
    "s50525523": (201, 349), "s57564132": (233, 554), "s59982525": (313, 717), "s53488209": (149, 475),
    "s54875119": (234, 988), "s50196495": (59, 399), "s56579911": (59, 218), "s52648681": (292, 631),
    "s59889364": (172, 453), "s53514462": (73, 377), "s59505494": (59, 450), "s53182247": (59, 412),
    "s51410602": (47, 320), "s56412866": (522, 822), "s54986978": (59, 306), "s59003148": (262, 505),
    "s57150433": (61, 394), "s56760320": (219, 457), "s59562049": (158, 348), "s52674888": (145, 296),
    "s55258338": (192, 568), "s59330497": (140, 655), "s52119491": (179, 454),
    "s58235663": (0, 0), "s50798377": (0, 0), "s54168089": (0, 0), "s53071062": (0, 0), "s56724958": (0, 0),
    "s54231141": (0, 0), "s53607029": (0, 0), "s52035334": (0, 0),
}
# what create_section_files writes as a study's one section, by priority
CONCLUSION = ("impression", "findings", "last_paragraph", "comparison")


def normalize_name(name: str) -> str:
    """A header as written (`CLINICAL HISTORY`) -> its section's name (`history`); unknown ones lower-cased."""
    name = name.lower().strip()
    if name in FREQUENT_SECTIONS:
        return FREQUENT_SECTIONS[name]
    for main in MAIN_SECTIONS:
        if main in name:
            return main
    return "findings" if VIEW_HEADER.search(name) else name


def section_list(text: str) -> list[tuple[str, str]]:
    """[(normalised name, raw text)] of each section in the order written, with the empty
    findings/impression sections dropped and the `last_paragraph` fallback added."""
    m = HEADER.search(text)
    out = [("full report", text)] if m is None else [("preamble", text[:m.start(1)])]
    while m is not None:
        start = m.end()
        eol = text.find("\n", start)  # the next header is looked for from the next line on
        nxt = HEADER.search(text, eol if eol != -1 else start)
        out.append((normalize_name(m.group(1)), text[start:nxt.start() if nxt else len(text)]))
        m = nxt
    out = [s for s in out if not (s[0] in ("findings", "impression") and not s[1].strip())]
    names = {s[0] for s in out}
    if "findings" not in names and "impression" not in names and PARAGRAPH in out[-1][1]:
        name, body = out[-1]
        first, rest = body.split(PARAGRAPH, 1)
        out[-1:] = [(name, first), ("last_paragraph", rest)]
    return out


def _tidy(text: str) -> str:
    return " ".join(text.split())


def split_sections(text: str, study_id: str | int | None = None) -> dict[str, str]:
    """{section name: its text} of a MIMIC-CXR report (see the module docstring), e.g. `{"preamble": "FINAL
    REPORT", "examination": "CHEST (PA AND LAT)", "indication": "...", "findings": "...", "impression": "..."}`;
    `study_id` (`s50414267` or `50414267`) applies the authors' per-study rules. Line ends are read as the authors'
    text-mode reading does (`\\r\\n` -> `\\n`), so the rules' character offsets point where they did."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    sid = None if study_id is None else f"s{str(study_id).removeprefix('s')}"
    sections = section_list(text)
    out = {name: _tidy(body) for name, body in sections}  # a later section of the same name replaces an earlier
    if sid in CUSTOM_INDICES:
        a, b = CUSTOM_INDICES[sid]
        for key in ("findings", "impression", "last_paragraph"):
            out.pop(key, None)
        if b > a:
            out["impression"] = _tidy(text[a:b])
    elif sid in CUSTOM_SECTION_NAMES and CUSTOM_SECTION_NAMES[sid] in out:
        out["impression"] = out[CUSTOM_SECTION_NAMES[sid]]
    return {k: v for k, v in out.items() if v}


def conclusion(sections: dict[str, str]) -> str | None:
    """The one text create_section_files keeps of a study: its impression, else findings, else the last
    paragraph, else the comparison (where some radiologists wrote the whole report); None if none of them."""
    return next((sections[k] for k in CONCLUSION if sections.get(k)), None)
