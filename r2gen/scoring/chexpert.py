"""A rule-based labeler of the 14 CheXpert observations, and clinical-efficacy (CE) scores built on it.

Written for r2gen in the spirit of the NIH/Stanford CheXpert labeler (mention extraction, then negation and
uncertainty detection, then aggregation) as pure-Python regular expressions: no model, no download, well under
1 ms a report. It reads raw reports and reports cleaned the R2Gen way (lower-cased, punctuation stripped,
sentences joined with " . ").

Pipeline, per report:

1. Text. Lower-case; "-" and "/" become spaces, and words R2Gen's cleaning glued by deleting "/"
   ("atelectasisscarring", "xxxxgranulomas") are split again after common finding words. Sentences split on "."
   (not a decimal point), newlines, ";", "?", "!"; a sentence is cut into clauses at "but", "however",
   "although", "though", "whereas", "while", "except", "other than", "aside from", "apart from", "and there",
   "and the". Commas do not cut (R2Gen strips them, and "no pneumothorax, effusion or consolidation" is a
   list). `MASKS` blank out look-alikes first: "pericardial effusion", "bone density", "osseous lesion",
   "mass effect", "granulomatous infection", "vertebral collapse", "breast prosthesis", "age indeterminate",
   and "no (interval) change" / "not changed" (no negation).
2. Mentions: the regular expressions in `MENTIONS`, one list per observation, plurals and inflections included.
   Cardiomegaly and Enlarged Cardiomediastinum need an enlargement word ("heart size is mildly enlarged",
   "enlarged cardiac silhouette", "widening of the mediastinum"), so "heart size is normal" mentions nothing;
   "the cardiomediastinal silhouette is enlarged" counts for both. Edema includes vascular congestion,
   engorged / prominent pulmonary vessels, CHF and venous hypertension, not interstitial prominence alone.
   Lung Lesion includes granulomas; Pleural Other is pleural thickening / scarring / plaques / calcification
   (not lung fibrosis, not blunting of a costophrenic angle, which names no single observation). Support Devices
   are named devices (tubes, lines, catheters, pacemakers, leads, wires, clips, ports, stents, valves, hardware,
   ...), not "sternotomy" alone. Bone statements ("no acute osseous abnormality") mention no Fracture.
3. Each mention is classified by cues in its clause:
   * before it, or inside it as in "the heart is not enlarged": negation `PRE_NEG` (no, not, without, free of,
     negative for, absence of, clear of, resolution of, removal of, ...) reaches back to the clause start, so
     "no pneumothorax or effusion" negates both while "no effusion but there is atelectasis" leaves
     atelectasis POSITIVE; uncertainty `PRE_UNC` (may, could, possible, probable, likely, suggest, suspicious
     for, concerning for, questionable, equivocal, rule out, correlate, ...) reaches 8 words; `FAR_UNC`
     (versus, differential) the whole clause; "borderline" 3 words, so "borderline cardiomegaly" is UNCERTAIN
     (CheXpert's choice; "borderline heart size" too) while "mildly enlarged heart" stays POSITIVE;
   * after it, up to 6 words: `POST_NEG` ("is not seen", "within normal limits", "absent", "has resolved",
     "removed"), `POST_UNC` ("is possible", "suspected", "is in the differential"); "versus" right after it;
   * `STRONG_UNC` ("cannot be excluded", "cannot exclude", "not excluded", "difficult to exclude") on either
     side, so the "not" of "not excluded" is no negation.
   Before the mention a negation beats the uncertainty cues in its scope ("no suspicious opacity, effusion or
   pneumothorax" is NEGATIVE for all) unless a strong one is nearer, and a mention with its own verb ("the heart
   is enlarged") is negated only from inside it; a cue after the mention reaches across another mention only in
   a list ("effusion or pneumothorax is not seen", not "cardiomegaly, effusion not seen"); between the two
   sides the nearer cue wins.
   No cue: POSITIVE (1); negation: NEGATIVE (0); uncertainty: UNCERTAIN (-1).
4. Normal statements (`NORMALS`) give NEGATIVE: "heart size is normal" / "normal heart size" / "heart size is
   at the upper limits of normal" / "cardiomediastinal silhouette is within normal limits" -> Cardiomegaly
   (and Enlarged Cardiomediastinum where the mediastinum is named); "the lungs are clear" -> Lung Opacity;
   "pleural spaces are clear" -> Pleural Effusion and Pneumothorax; "costophrenic angles are sharp" -> Pleural
   Effusion; "pulmonary vascularity is normal" -> Edema.
5. Aggregation over the mentions of a label in the report: POSITIVE beats UNCERTAIN beats NEGATIVE (as the
   CheXpert labeler does); a label never mentioned is None (absent).
6. No Finding = POSITIVE iff no label other than Support Devices is POSITIVE or UNCERTAIN (CheXpert's rule,
   so an empty report is No Finding too); otherwise None.

Binary mapping (`to_binary`, used by `ce_scores`): POSITIVE -> 1; NEGATIVE and absent -> 0; UNCERTAIN -> 0 under
`uncertain="negative"` (the default, as most report-generation papers do) or 1 under `uncertain="positive"`.

Against the human MeSH labels of IU-Xray's 3,832 indexed reports (benchmarks/labeler_vs_mesh.py), F1 is 0.93
for Cardiomegaly, 0.94 for Pleural Effusion, 0.90 for Pneumothorax, 0.98 for No Finding under CheXpert's rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np

from r2gen.scoring.additive import Family, label_family, prf, ratio, split_counts

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
COMMON5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# ------------------------------------------------------------------------------------------ phrase lists (data)
_HEART = r"(?:heart|cardiac|cardiomediastinal)(?: (?:size|silhouette|shadow|contours?))?"
_MEDIA = r"(?:superior |upper )?(?:cardio)?mediastin(?:um|al)(?: (?:silhouette|contours?|width))?"
_DEGREE = (r"(?: (?:is|are|appears?|remains?|again|now|still|stable|borderline|somewhat|at|least|quite|very|"
           r"overall|not|xxxx|\w+ly))*")  # "heart size is again mildly enlarged", "heart is not enlarged"
_VESSELS = r"(?:vasculature|vascularity|vessels|vascular markings|pulmonary xxxx)"
_EFF_OR_THICK = r"(?:effusions?|fluid) (?:or|versus|vs) (?:pleural )?thickening"

MENTIONS: dict[str, tuple[str, ...]] = {
    "Atelectasis": (r"atelecta(?:sis|ses|tic)", r"volume loss", r"collapsed?"),
    "Cardiomegaly": (
        r"cardiomegaly", r"(?:cardiac|heart) enlargement", r"increased? (?:in )?(?:the )?(?:heart|cardiac) size",
        r"enlarge(?:d|ment)(?: of)?(?: the)? (?:heart|cardiac|cardiomediastinal)",
        _HEART + _DEGREE + r" (?:enlarged|large|larger|increased|prominent)",
    ),
    "Consolidation": (r"consolidat(?:ion|ions|ed|ive)",),
    "Edema": (
        r"edema", r"(?:pulmonary |vascular |venous |central |interstitial )*congestion", r"chf",
        r"(?:congestive )?heart failure", r"cephalization", r"kerley", r"(?:pulmonary )?venous hypertension",
        r"vascular (?:prominence|engorgement|indistinctness|redistribution|margination)",
        r"(?:prominen(?:t|ce)|engorge(?:d|ment)|increased|indistinct)(?: of)?(?: the)? (?:central |pulmonary |lung )*"
        + _VESSELS, _VESSELS + _DEGREE + r" (?:prominent|engorged|increased|indistinct)",
    ),
    "Enlarged Cardiomediastinum": (
        r"(?:widen(?:ed|ing)|enlarged?|enlargement|prominen(?:t|ce))(?: of)?(?: the)? " + _MEDIA,
        _MEDIA + _DEGREE + r" (?:widen(?:ed|ing)|enlarged|enlargement|prominen(?:t|ce))",
    ),
    "Fracture": (r"fractur(?:e|es|ed)", r"fx"),
    "Lung Lesion": (
        r"nodules?", r"nodular (?:opacit\w+|densit\w+|lesions?)", r"masse?s?", r"lesions?",
        r"granulomas?", r"granulomata", r"tumou?rs?", r"neoplasms?", r"carcinomas?", r"malignanc(?:y|ies)",
        r"metastas[ie]s",
    ),
    "Lung Opacity": (
        r"opaci(?:ty|ties|fication|fications|fied)", r"infiltrat(?:e|es|ion|ions|ive)",
        r"air ?space (?:disease|opacit\w+|process|filling)", r"haziness", r"hazy", r"streakiness", r"densit(?:y|ies)",
        r"ground ?glass",
    ),
    "Pleural Effusion": (r"effusions?", r"pleural fluid"),
    "Pleural Other": (
        r"pleural (?:\w+ )?thickening", r"thickening of the (?:\w+ )?pleura", r"fissural thickening",
        r"thickening (?:of|in) the (?:\w+ )?fissures?", r"fibrothorax",
        r"pleural (?:and parenchymal |parenchymal |based )?scar(?:s|ring)?", r"pleuroparenchymal scar\w*",
        r"(?:calcified )?pleural (?:plaques?|calcifications?)", r"apical (?:pleural )?capping", _EFF_OR_THICK,
    ),
    "Pneumonia": (r"(?:broncho)?pneumonias?", r"pneumonitis", r"infections?", r"infectious", r"infected"),
    "Pneumothorax": (r"(?:hydro|hemo)?pneumothora(?:x|xes|ces)", r"pleural air"),
    "Support Devices": (
        r"tubes?", r"catheters?", r"picc", r"(?:central|venous|arterial|midline|ij|jugular|subclavian|dialysis)"
        r" (?:venous )?(?:lines?|catheters?)", r"pacemakers?", r"pacers?", r"defibrillators?", r"aicd", r"icd",
        r"(?:pacemaker|pacer|pacing|cardiac|transvenous|ekg|ecg|monitor|monitoring|defibrillator) (?:leads?|wires?)",
        r"leads", r"tips?", r"wires?", r"clips?", r"ports?", r"port\w*cath\w*", r"port a cath",
        r"mediport", r"stents?", r"shunt", r"(?:neuro)?stimulator", r"tracheostomy", r"anchors?", r"markers?",
        r"prosthetic", r"(?:replacement|mechanical|artificial) (?:\w+ )?valves?", r"valve (?:replacement|prosthesis)",
        r"hardware", r"screws?", r"(?:fixation|surgical|metallic|orthopedic) plates?", r"prosthes[ie]s",
        r"arthroplasty", r"staples", r"sutures?", r"coils?", r"drains?", r"devices?", r"electrodes?",
        r"generator", r"ivc filter", r"loop recorder", r"cerclage",
    ),
}
# Mentions that are UNCERTAIN by themselves.
UNCERTAIN_MENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (r"borderline " + _HEART,),
}
# Normal statements -> NEGATIVE.
_NORMAL = r"(?:normal|within normal limits|unremarkable|not enlarged)"
NORMALS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (_HEART + r"\W+(?:\w+\W+){0,6}?" + _NORMAL,
                     r"normal (?:\w+ ){0,2}(?:heart|cardiac|cardiomediastinal)"),
    "Enlarged Cardiomediastinum": (r"mediastin\w*\W+(?:\w+\W+){0,5}?" + _NORMAL,
                                   r"normal (?:\w+ ){0,3}(?:cardio)?mediastin\w*"),
    "Lung Opacity": (r"lungs? (?:\w+ ){0,3}?(?:clear|normal|unremarkable)", r"clear (?:\w+ )?lungs?"),
    "Pleural Effusion": (r"pleural spaces? (?:\w+ ){0,2}?(?:clear|normal)",
                         r"costophrenic (?:angles?|sulci|recess(?:es)?|xxxx) (?:\w+ ){0,2}?(?:sharp|clear|normal)"),
    "Pneumothorax": (r"pleural spaces? (?:\w+ ){0,2}?(?:clear|normal)",),
    "Edema": (r"vascularity\W+(?:\w+\W+){0,3}?" + _NORMAL, r"normal (?:pulmonary )?vascularity"),
}
# Masked before mention search: look-alikes of a mention, and phrases that look like a cue but are none.
MASKS = (
    r"pericardial effusions?", r"(?:bone|bony|osseous) (?:mineral )?density", r"density of the (?:bones|osseous)",
    r"(?:osseous|bone|bony|lytic|sclerotic|blastic|skin|breast) (?:lesions?|masse?s?)", r"mass effect",
    r"scapular tip", r"age indeterminate", r"breast (?:prosthes[ie]s|implants?)",
    r"(?:granulomatous|tuberculous|tuberculosis|tb) infections?",
    r"(?:vertebral|vertebra|vertebrae)(?: body)?(?: height)? (?:collapse|loss)", r"soft tissue edema",
    r"no (?:significant |interval |appreciable |substantial |definite |other )*changes?",
    r"not (?:significantly )?changed", r"without (?:significant |interval )*change",
)
CLAUSE_BREAKS = r"\b(?:but|however|although|though|whereas|while|except|other than|aside from|apart from|and there|and the)\b"

STRONG_UNC = (r"cannot be (?:entirely |completely |totally )?(?:excluded|ruled out)", r"can not be excluded",
              r"cannot (?:exclude|rule out)", r"can not (?:exclude|rule out)", r"(?:difficult|hard) to exclude",
              r"not (?:be )?(?:entirely |completely |totally )?(?:excluded|ruled out)")
PRE_NEG = (r"no", r"not", r"without", r"free of", r"negative for", r"absence of", r"absent", r"clear of",
           r"resolution of", r"resolved", r"removal of", r"removed", r"nor", r"neither", r"none", r"rather than")
PRE_UNC = (r"may", r"might", r"could", r"possible", r"possibly", r"probable", r"probably", r"likely", r"unlikely",
           r"suggest\w*", r"suspicious", r"suspicion", r"suspect\w*", r"concern(?:ing)?(?: for)?", r"worrisome",
           r"question(?:able|ed)?", r"equivocal", r"consider(?:ed)?",
           r"indeterminate", r"uncertain", r"unclear", r"presum\w+", r"potential(?:ly)?", r"rule out", r"r o",
           r"exclude", r"correlat\w*", r"evaluation (?:for|of)")
FAR_UNC = (r"versus", r"vs", r"differential")  # reach the whole clause forward
NEAR_UNC = (r"borderline",)  # reaches only 3 words forward
POST_NEG = (r"(?:is |are |was |were |has been |have been )?(?:not|no longer) (?:\w+ )?(?:seen|identified|"
            r"visualized|present|appreciated|demonstrated|evident|noted|detected|visible|apparent)",
            r"(?:appears? |is |are )?within (?:normal )?limits(?: of normal)?",
            r"(?:has |have )?resolved", r"absent", r"(?:has |have )?(?:been )?removed")
POST_UNC = (r"(?:is|are|be|was) (?:also )?(?:possible|questioned|favored|considered)", r"suspected",
            r"(?:is|are) (?:not )?(?:likely|probable)", r"(?:is |are )?in the differential",
            r"(?:is|are|be) (?:a |another )?(?:\w+ )?considerations?")
POST_NEAR_UNC = (r"versus", r"vs")  # only right after the mention: "atelectasis versus scarring"
PRE_WINDOW, NEAR_WINDOW, POST_WINDOW = 8, 3, 6


# ------------------------------------------------------------------------------------------------ machinery
def _rx(patterns: Sequence[str]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b")


_MENTION_RX = {k: _rx(v) for k, v in MENTIONS.items()}
_UNC_MENTION_RX = {k: _rx(v) for k, v in UNCERTAIN_MENTIONS.items()}
_NORMAL_RX = {k: _rx(v) for k, v in NORMALS.items()}
_MASK_RX = _rx(MASKS)
_BREAK_RX = re.compile(CLAUSE_BREAKS)
_SENT_RX = re.compile(r"(?<!\d)\.|\.(?!\d)|[\n;?!]")
_CUES = [  # (regex, value, reach before the mention in words, reach after it, strong)
    (_rx(STRONG_UNC), UNCERTAIN, PRE_WINDOW, POST_WINDOW, True), (_rx(PRE_NEG), NEGATIVE, 10**6, 0, False),
    (_rx(FAR_UNC), UNCERTAIN, 10**6, 0, False), (_rx(PRE_UNC), UNCERTAIN, PRE_WINDOW, 0, False),
    (_rx(NEAR_UNC), UNCERTAIN, NEAR_WINDOW, 0, False), (_rx(POST_NEG), NEGATIVE, 0, POST_WINDOW, False),
    (_rx(POST_UNC), UNCERTAIN, 0, POST_WINDOW, False), (_rx(POST_NEAR_UNC), UNCERTAIN, 0, 1, False),
]
_WORD_RX = re.compile(r"\w+")
_COPULA_RX = re.compile(r"\b(?:is|are|appears?|remains?)\b")
_LIST_RX = re.compile(r"\b(?:or|and|nor)\b")
# R2Gen cleaning deletes "/", gluing "atelectasis/scarring" into "atelectasisscarring": split after such words.
_GLUE_RX = re.compile(r"(xxxx|\b(?:atelectasis|scarring|pacemaker|effusions?|infiltrates?|opacity|opacities|"
                      r"consolidation|edema|nodules?|airspace disease))(?=[a-z])|(?<=[a-z])(?=xxxx)")


def _nwords(text: str) -> int:
    return len(_WORD_RX.findall(text))


def _classify(clause: str, start: int, end: int, spans: list[tuple[int, int]]) -> int:
    """Label of the mention clause[start:end] from the cues around it in its clause (`spans`: all its mentions).

    Before the mention, a negation cue wins over the uncertainty cues in its scope ("no ... suspicious opacity,
    effusion or pneumothorax"), unless a strong one ("cannot exclude") is nearer; a mention that holds its own
    verb ("the heart is enlarged") takes negation only from inside. After the mention, the nearest cue counts,
    across another mention only in a list ("effusion or pneumothorax is not seen", not "cardiomegaly, effusion
    not seen"). Between the two sides the nearer cue wins (ties: the one before).
    """
    own_verb = _COPULA_RX.search(clause, start, end) is not None
    pre: list[tuple[int, int, bool]] = []  # (distance in words, value, strong)
    post: list[tuple[int, int]] = []
    for rx, value, pre_window, post_window, strong in _CUES:
        for m in rx.finditer(clause):
            if m.end() <= end and pre_window:  # before the mention, or inside it ("the heart is not enlarged")
                dist = _nwords(clause[m.end():start]) if m.end() <= start else 0
                if dist < pre_window and not (own_verb and value == NEGATIVE and m.end() <= start):
                    pre.append((dist, value, strong))
            elif m.start() >= end and post_window:
                dist = _nwords(clause[end:m.start()])
                between = any(end <= a and b <= m.start() for a, b in spans)
                if dist < post_window and (not between or _LIST_RX.search(clause, end, m.start())):
                    post.append((dist, value))
    decision = None
    negations = [d for d, v, _ in pre if v == NEGATIVE]
    if negations:
        strong = [d for d, _, s in pre if s and d < min(negations)]
        decision = (min(strong), UNCERTAIN) if strong else (min(negations), NEGATIVE)
    elif pre:
        decision = (min(d for d, _, _ in pre), UNCERTAIN)
    if post and (decision is None or min(post)[0] < decision[0]):
        decision = min(post)
    return POSITIVE if decision is None else decision[1]


def _clauses(text: str, masked: bool = True) -> list[str]:
    """The clauses of a normalised report; `masked=False`: the same clauses (cut where the masked ones are) with
    the masked phrases shown."""
    text = _GLUE_RX.sub(lambda m: (m.group(1) or "") + " ", re.sub(r"[-/]", " ", text.lower()))
    out = []
    for sentence in _SENT_RX.split(text):
        hidden = _MASK_RX.sub(lambda m: "#" * len(m.group()), sentence)  # same length: offsets hold in both
        cuts = [0, *(i for m in _BREAK_RX.finditer(hidden) for i in m.span()), len(hidden)]
        out.extend((hidden if masked else sentence)[a:b] for a, b in zip(cuts[::2], cuts[1::2], strict=True)
                   if hidden[a:b].strip())
    return out


def mentions(text: str, masked: bool = True) -> Iterator[tuple[str, int, str, int, int]]:
    """Every mention in one report, as `(label, value, clause, start, end)`: the observation, its value (1 / 0 /
    -1), and where it sits in its clause (the text as the labeler normalised it). Normal statements are mentions
    of value 0 spanning their match (pipeline steps 1-4). `masked=False` gives the clause as it was before `MASKS`
    blanked out look-alikes (same length, same offsets: "no interval change" kept, r2gen.scoring.temporal)."""
    clauses = _clauses(text or "")
    for clause, shown in zip(clauses, clauses if masked else _clauses(text or "", masked=False), strict=True):
        found = [(label, m.start(), m.end(), unc) for unc, table in ((False, _MENTION_RX), (True, _UNC_MENTION_RX))
                 for label, rx in table.items() for m in rx.finditer(clause)]
        spans = [(a, b) for _, a, b, _ in found]
        for label, a, b, unc in found:
            value = _classify(clause, a, b, spans)
            yield label, UNCERTAIN if unc and value == POSITIVE else value, shown, a, b
        for label, rx in _NORMAL_RX.items():
            if m := rx.search(clause):
                yield label, NEGATIVE, shown, m.start(), m.end()


def label_report(text: str) -> dict[str, int | None]:
    """One report -> {label: 1 (positive) / 0 (negative) / -1 (uncertain) / None (not mentioned)}."""
    found: dict[str, list[int]] = {}
    for label, value, *_ in mentions(text):
        found.setdefault(label, []).append(value)
    labels: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
    for label, values in found.items():
        labels[label] = POSITIVE if POSITIVE in values else UNCERTAIN if UNCERTAIN in values else NEGATIVE
    findings = [k for k in CHEXPERT_LABELS if k not in ("No Finding", "Support Devices")]
    if not any(labels[k] in (POSITIVE, UNCERTAIN) for k in findings):
        labels["No Finding"] = POSITIVE
    return labels


def label_reports(texts: Sequence[str]) -> list[dict[str, int | None]]:
    """`label_report` over many reports."""
    return [label_report(t) for t in texts]


def to_binary(labels: dict[str, int | None], uncertain: str = "negative") -> dict[str, int]:
    """1/0 per label: positive -> 1; negative and absent -> 0; uncertain -> 0 ("negative") or 1 ("positive")."""
    if uncertain not in ("negative", "positive"):
        raise ValueError(f"uncertain={uncertain!r}: choose 'negative' or 'positive'")
    unc = 1 if uncertain == "positive" else 0
    return {k: 1 if labels.get(k) == POSITIVE else unc if labels.get(k) == UNCERTAIN else 0 for k in CHEXPERT_LABELS}


def ce_scores(predictions: Sequence[str], references: Sequence[str], uncertain: str = "negative") -> dict[str, float]:
    """Clinical-efficacy scores: both sides labelled with `label_report`, then `ce_scores_from_labels`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return ce_scores_from_labels(label_reports(predictions), label_reports(references), uncertain)


def ce_scores_from_labels(predicted: Sequence[dict[str, int | None]], reference: Sequence[dict[str, int | None]],
                          uncertain: str = "negative") -> dict[str, float]:
    """Clinical-efficacy scores of label sets from any CheXpert-style labeler (this one, or CheXbert), each
    mapped with `to_binary(uncertain=...)`: `ce_family(...).scores()` (its docstring lists the keys)."""
    return ce_family(predicted, reference, uncertain).scores()


def ce_family(predicted: Sequence[dict[str, int | None]], reference: Sequence[dict[str, int | None]],
              uncertain: str = "negative") -> Family:
    """The clinical-efficacy scores as per-study counts that add up (r2gen.scoring.additive), so a bootstrap
    resample or a paired swap recomputes them exactly.

    Keys, as the field reports them: "ce_{precision,recall,f1}_micro" (TP/FP/FN pooled over the 14 labels, No
    Finding included) and "..._micro_5" (pooled over `COMMON5`); "..._macro" and "..._macro_5" (unweighted means
    of the per-label precision, recall and F1 over the 14 / the 5 labels); "..._example" (example-based, as
    CvT2DistilGPT2 and PromptMRG: per study, precision, recall and F1 of its positive labels, then the mean over
    studies); "ce_{precision,recall,f1}/<Label>" per label. Zero division gives 0, as scikit-learn's
    `zero_division=0` (the CheXbert-style evaluation): a label with no true and no predicted positive scores
    precision = recall = F1 = 0 and still counts in the macro means, so identical predictions and references
    reach macro F1 = 1 only when every label occurs; a study with no positive on either side scores 0 in the
    example-based means.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions but {len(reference)} references")
    def matrix(label_sets) -> np.ndarray:  # [N, 14] 1/0
        rows = [to_binary(x, uncertain) for x in label_sets]
        return np.array([[r[k] for k in CHEXPERT_LABELS] for r in rows], dtype=bool).reshape(len(rows), -1)

    pred, true = matrix(predicted), matrix(reference)
    # per study: its own precision, recall, F1 over the labels, and a 1 to count it
    example = np.stack([*prf((pred & true).sum(1), (pred & ~true).sum(1), (~pred & true).sum(1)),
                        np.ones(len(pred))], axis=1)
    n = len(CHEXPERT_LABELS)
    five = [CHEXPERT_LABELS.index(k) for k in COMMON5]
    names = [f"ce_{m}_{a}" for a in ("micro", "macro", "micro_5", "macro_5", "example") for m in _PRF] + \
        [f"ce_{m}/{k}" for m in _PRF for k in CHEXPERT_LABELS]

    def combine(t: np.ndarray) -> dict[str, np.ndarray]:
        tp, fp, fn = split_counts(t, n)
        per = prf(tp, fp, fn)  # each [..., 14]
        out: dict[str, np.ndarray] = {}
        for suffix, idx in (("", slice(None)), ("_5", five)):
            pooled = prf(tp[..., idx].sum(-1), fp[..., idx].sum(-1), fn[..., idx].sum(-1))
            for m, v, pl in zip(_PRF, pooled, per, strict=True):
                out[f"ce_{m}_micro{suffix}"] = v
                out[f"ce_{m}_macro{suffix}"] = pl[..., idx].mean(-1)
        for i, m in enumerate(_PRF):
            out[f"ce_{m}_example"] = ratio(t[..., 3 * n + i], t[..., 3 * n + 3])
            out.update({f"ce_{m}/{k}": per[i][..., j] for j, k in enumerate(CHEXPERT_LABELS)})
        return out

    return label_family(pred, true, combine, names, extra=example)


_PRF = ("precision", "recall", "f1")
