"""The longitudinal demo (`data=demo_longitudinal`): subjects with a prior and a current study whose findings change.

Each subject has two studies (sometimes three), days to months apart, drawn as the plain demo draws a study
(r2gen.data.synthetic) but with a size for every finding: cardiomegaly mild / moderate, a pleural effusion small /
moderate / large, an opacity small / large, a pneumothorax small / large. From one study to the next a finding is
new (absent -> present), worse (larger), better (smaller), unchanged (the same size) or resolved (present ->
absent); for two-study subjects each finding is in play with probability `_IN_PLAY` and its change class is drawn
uniformly, so the five classes are about balanced. A subject's first study gets a plain report of what it shows;
a later study's report states each change in radiology wording ("New small left pleural effusion.", "Unchanged
mild cardiomegaly.", "The right pneumothorax has resolved."), and what is absent in both as the plain demo does.
Every report is read right by the demo's labeler (r2gen.scoring.demo_labeler): its labels are the study's own
findings, never the prior's.

annotation.json is R2Gen's layout with the context keys (r2gen.data.splits): `subject_id`, `study_time` (ISO,
strictly increasing per subject), `view_positions` ["PA", "LATERAL"], `indication` (a symptom, a question that
sometimes names a finding, or a follow-up of a finding the prior study showed) and `comparison` ("None." or the
prior's date), so `read_studies` links each later study to its prior (`prior_id`). Besides the plain demo's
`labels`, each entry has `grades` ({finding: size word} of what it shows) and, on a later study, `changes`
({finding: new | worse | better | unchanged | resolved} for every finding present in it or its prior). A subject's
studies are all in one split. Deterministic from the seed: each subject draws from its own generator.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from r2gen.data import synthetic as syn
from r2gen.data.synthetic import FINDINGS

_VERSION = 1  # bump when drawing or reports change, so cached sets are regenerated
CHANGES = ("new", "worse", "better", "unchanged", "resolved")
GRADES = {"cardiomegaly": ("mild", "moderate"), "effusion": ("small", "moderate", "large"),
          "opacity": ("small", "large"), "pneumothorax": ("small", "large")}
_IN_PLAY = 0.22  # chance that a finding is present in a two-study subject's prior or current study
_HEART_W = {None: (0.27, 0.31), "mild": (0.38, 0.41), "moderate": (0.43, 0.47)}  # synthetic._sample_study's
_OPACITY_SCALE = {"small": 0.7, "large": 1.4}  # blob width relative to the plain demo's
_PTX_COLLAPSE = {"small": 1.0, "large": 0.8}  # collapsed-lung size relative to the plain demo's


def _kind(finding: str) -> str:
    return finding.split("_")[0]


def _side(finding: str) -> str | None:
    return finding.split("_")[1] if "_" in finding else None


# ----------------------------------------------------------------------------------------------------- states
def _grades_for(rng, change: str, n: int) -> tuple[int, int]:
    """(prior, current) grade indices for a change class, 0 = absent, 1..n the sizes."""
    if change == "new":
        return 0, int(rng.integers(1, n + 1))
    if change == "resolved":
        return int(rng.integers(1, n + 1)), 0
    if change == "unchanged":
        g = int(rng.integers(1, n + 1))
        return g, g
    lo, hi = sorted(rng.choice(np.arange(1, n + 1), 2, replace=False).tolist())
    return (lo, hi) if change == "worse" else (hi, lo)


def _next(rng, state: dict[str, int]) -> dict[str, int]:
    """A third study's state from the second's: each present finding changes by a class its size allows, an absent
    one is new now and then."""
    out = {}
    for k, g in state.items():
        n = len(GRADES[_kind(k)])
        if g == 0:
            out[k] = int(rng.integers(1, n + 1)) if rng.random() < _IN_PLAY / 3 else 0
            continue
        change = syn._pick(rng, [c for c in CHANGES[1:] if (c != "worse" or g < n) and (c != "better" or g > 1)])
        if change == "worse":
            out[k] = int(rng.integers(g + 1, n + 1))
        elif change == "better":
            out[k] = int(rng.integers(1, g))
        else:
            out[k] = g if change == "unchanged" else 0
    return out


def change_of(prior: int, current: int) -> str | None:
    """The change class from a finding's prior grade to its current one (0 = absent); None: absent in both."""
    if prior == current:
        return "unchanged" if current else None
    return "new" if prior == 0 else "resolved" if current == 0 else "worse" if current > prior else "better"


def _plan(rng, n_studies: int) -> list[dict[str, int]]:
    """The grade of every finding in each of a subject's studies."""
    pairs = {k: (_grades_for(rng, syn._pick(rng, CHANGES), len(GRADES[_kind(k)])) if rng.random() < _IN_PLAY
                 else (0, 0)) for k in FINDINGS}
    states = [{k: p for k, (p, _) in pairs.items()}, {k: c for k, (_, c) in pairs.items()}]
    while len(states) < n_studies:
        states.append(_next(rng, states[-1]))
    return states


def _drawn(state: dict[str, int], latent: dict) -> dict:
    """A state as r2gen.data.synthetic's drawing reads it (the keys `_sample_study` gives, plus sizes)."""
    grade = {k: GRADES[_kind(k)][g - 1] if g else None for k, g in state.items()}
    f = {k: int(g > 0) for k, g in state.items()}
    f["severity"] = grade["cardiomegaly"] or "mild"
    f["heart_w"] = latent["heart_w"][grade["cardiomegaly"]]
    for side in syn._SIDE_X:
        f[f"effusion_{side}_size"] = grade[f"effusion_{side}"] or "small"
        f[f"opacity_{side}_zone"] = latent[f"zone_{side}"]
        f[f"opacity_{side}_scale"] = _OPACITY_SCALE.get(grade[f"opacity_{side}"], 1.0)
        f[f"pneumothorax_{side}_collapse"] = _PTX_COLLAPSE.get(grade[f"pneumothorax_{side}"], 1.0)
    return f


# ----------------------------------------------------------------------------------------------------- reports
# {what}: the finding with its side (and zone), {grade}: its size word; "{Grade}"/"{What}" capitalised.
_WHAT = {"effusion": ["{side} pleural effusion", "{side} effusion"],
         "pneumothorax": ["{side} pneumothorax", "{side} apical pneumothorax"],
         "opacity": ["{side} {zone} opacity", "opacity in the {side} {zone}", "{side} {zone} consolidation",
                     "airspace opacity in the {side} {zone}"]}
_PLAIN = {"effusion": ["{Grade} {what}.", "There is a {grade} {what}.", "A {grade} {what} is seen.",
                       "{Grade} {what} with blunting of the costophrenic angle."],
          "pneumothorax": ["{Grade} {what}.", "There is a {grade} {what}.", "A {grade} {what} is present.",
                           "{Grade} {what} with a visible pleural line."],
          "opacity": ["{Grade} {what}.", "There is a {grade} {what}.", "{Grade} {what}, concerning for pneumonia.",
                      "{Grade} {what}, which may represent infection or aspiration."]}
_CHANGE = {
    "new": ["New {grade} {what}.", "There is a new {grade} {what}.", "Interval development of a {grade} {what}.",
            "A {grade} {what} has developed since the prior study.", "{Grade} {what}, new since the prior examination."],
    "worse": ["Increased {what}, now {grade}.", "The {what} has increased in size, now {grade}.",
              "Enlarging {what}, now {grade}.", "Worsening {what}, now {grade}.",
              "Interval increase in the {what}, which is now {grade}."],
    "better": ["Decreased {what}, now {grade}.", "The {what} has decreased in size and is now {grade}.",
               "Improving {what}, now {grade}.", "Interval decrease in the {what}, now {grade}.",
               "The {what} is smaller, now {grade}."],
    "unchanged": ["Unchanged {grade} {what}.", "Stable {grade} {what}.", "The {grade} {what} is unchanged.",
                  "Persistent {grade} {what}, unchanged from the prior study.",
                  "{Grade} {what}, stable compared with the prior study."],
    "resolved": ["The {what} has resolved.", "Previously seen {what} has resolved.",
                 "The previously noted {what} is resolved.", "The {what} has resolved since the prior study.",
                 "No {what}; the previously seen {noun} has resolved."],
}
_HEART_CHANGE = {
    "new": ["New {grade} cardiomegaly.", "Interval development of {grade} cardiomegaly.",
            "The heart is now {grade}ly enlarged, new since the prior study.", "The cardiac silhouette is newly enlarged."],
    "worse": ["Cardiomegaly has increased, now {grade}.", "Worsening cardiomegaly, now {grade}.",
              "The heart is more enlarged than on the prior study.", "Increased enlargement of the cardiac silhouette."],
    "better": ["Cardiomegaly has decreased, now {grade}.", "Improving cardiomegaly, now {grade}.",
               "The heart is less enlarged than on the prior study, now {grade}ly enlarged."],
    "unchanged": ["Unchanged {grade} cardiomegaly.", "Stable {grade} enlargement of the cardiac silhouette.",
                  "The heart remains {grade}ly enlarged.", "{Grade} cardiomegaly, unchanged from the prior study."],
    "resolved": ["The previously seen cardiomegaly has resolved.", "Heart size is now normal.",
                 "The heart size has returned to normal.", "Cardiomegaly has resolved; the heart is normal in size."],
}
_NOUN = {"effusion": "effusion", "pneumothorax": "pneumothorax", "opacity": "opacity"}
_NO_CHANGE = ["No interval change.", "No significant interval change.", "Unchanged from the prior study."]

_SYMPTOMS = ["Shortness of breath.", "Chest pain.", "Cough.", "Cough and fever.", "Dyspnea.", "Pleuritic chest pain.",
             "Hypoxia.", "Fever.", "Preoperative evaluation.", "Fall."]
_QUESTION = {"effusion": ["Evaluate for effusion.", "Evaluate for pleural effusion.", "Effusion?"],
             "pneumothorax": ["Evaluate for pneumothorax.", "Rule out pneumothorax.", "Pneumothorax?"],
             "opacity": ["Evaluate for pneumonia.", "Rule out pneumonia.", "Pneumonia?"],
             "cardiomegaly": ["Assess heart size.", "Evaluate for cardiomegaly.", "Heart failure?"]}
_FOLLOW_UP = ["Follow-up of {what}.", "{What}, follow-up.", "History of {what}; interval change?",
              "Evaluate {what}."]


def _finding_text(rng, k: str, latent: dict, grade: str | None, templates: list[str]) -> str:
    what = syn._pick(rng, _WHAT[_kind(k)]).format(side=_side(k), zone=syn._pick(rng, syn._ZONES[latent[f"zone_{_side(k)}"]]))
    return syn._fill(syn._pick(rng, templates), what=what, grade=grade or "", noun=_NOUN[_kind(k)])


def _report(rng, state: dict[str, int], prior: dict[str, int] | None, latent: dict) -> str:
    """The report of a study: its findings plainly (first study) or each change from `prior` (a later one), and
    what it does not show as the plain demo words it."""
    grade = {k: GRADES[_kind(k)][g - 1] if g else None for k, g in state.items()}
    change = {k: change_of(prior[k], g) for k, g in state.items()} if prior else {}
    said = {"cardiomegaly": [], "opacity": [], "effusion": [], "pneumothorax": []}
    for k in FINDINGS:
        if k == "cardiomegaly":
            if change.get(k):
                said[k].append(syn._fill(syn._pick(rng, _HEART_CHANGE[change[k]]), grade=grade[k] or ""))
            elif state[k]:
                said[k].append(syn._fill(syn._pick(rng, syn._HEART_POS), sev=grade[k]))
        elif change.get(k):
            said[_kind(k)].append(_finding_text(rng, k, latent, grade[k], _CHANGE[change[k]]))
        elif state[k]:
            said[_kind(k)].append(_finding_text(rng, k, latent, grade[k], _PLAIN[_kind(k)]))
    heart = said["cardiomegaly"] or [syn._pick(rng, syn._HEART_NEG)]
    if rng.random() < 0.2 and "mediastin" not in heart[0]:
        heart.append(syn._pick(rng, syn._MEDIASTINUM))
    lungs = said["opacity"] or [syn._pick(rng, syn._OPAC_NEG)]
    if not said["effusion"] and not said["pneumothorax"] and rng.random() < 0.35:
        pleural = ["No pleural effusion or pneumothorax."]
    else:
        pleural = (said["effusion"] or [syn._pick(rng, syn._EFF_NEG)]) + (said["pneumothorax"] or [syn._pick(rng, syn._PTX_NEG)])
    body = heart + lungs + pleural
    if prior and not any(c and c != "unchanged" for c in change.values()) and rng.random() < 0.6:
        body.append(syn._pick(rng, _NO_CHANGE))
    elif not any(state.values()) and rng.random() < 0.5:
        body.append(syn._pick(rng, syn._NORMAL))
    if len(body) < 5 and rng.random() < 0.4:
        body.append(syn._pick(rng, syn._BONES))
    return " ".join(body)


def _indication(rng, state: dict[str, int], prior: dict[str, int] | None, latent: dict) -> str:
    """A symptom, a question that may name a finding (present or not), or a follow-up of one the prior showed."""
    followable = [k for k in FINDINGS if prior and prior[k] and k != "cardiomegaly"]
    u = rng.random()
    if followable and u < 0.45:
        k = syn._pick(rng, followable)
        what = syn._pick(rng, _WHAT[_kind(k)]).format(side=_side(k), zone=syn._pick(rng, syn._ZONES[latent[f"zone_{_side(k)}"]]))
        return syn._fill(syn._pick(rng, _FOLLOW_UP), what=what)
    symptom = syn._pick(rng, _SYMPTOMS)
    if u < 0.75:
        present = sorted({_kind(k) for k in FINDINGS if state[k]})
        kind = syn._pick(rng, present) if present and rng.random() < 0.5 else syn._pick(rng, list(_QUESTION))
        return f"{symptom} {syn._pick(rng, _QUESTION[kind])}"
    return symptom


# ----------------------------------------------------------------------------------------------------- writing
def _params(n_train, n_val, n_test, image_size, seed, p_third) -> dict:
    return {"kind": "longitudinal", "n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test),
            "image_size": int(image_size), "seed": int(seed), "p_third": float(p_third), "version": _VERSION}


def _subject(p: dict, idx: int, split: str, out: Path) -> list[dict]:
    """Write subject `idx`'s images under out/images and return its studies' annotation entries."""
    rng = np.random.default_rng([p["seed"], idx])
    states = _plan(rng, 3 if rng.random() < p["p_third"] else 2)
    latent = {"heart_w": {g: float(rng.uniform(*r)) for g, r in _HEART_W.items()},
              **{f"zone_{side}": syn._pick(rng, list(syn._ZONE_Y)) for side in syn._SIDE_X}}
    when = datetime(2180, 1, 1, 6) + timedelta(days=int(rng.integers(0, 3650)), minutes=int(rng.integers(0, 900)))
    subject, entries, prior_time = f"subj_{idx:05d}", [], None
    for n, state in enumerate(states):
        srng = np.random.default_rng([p["seed"], idx, n + 1])
        prior = states[n - 1] if n else None
        sid = f"long_{idx:05d}_{n}"
        (out / "images" / sid).mkdir(parents=True)
        for v, arr in enumerate(syn._draw(srng, _drawn(state, latent), p["image_size"])):
            Image.fromarray(arr).save(out / "images" / sid / f"{v}.png", compress_level=1)
        e = {"id": sid, "report": _report(srng, state, prior, latent), "image_path": [f"{sid}/0.png", f"{sid}/1.png"],
             "split": split, "labels": {k: int(state[k] > 0) for k in FINDINGS},
             "grades": {k: GRADES[_kind(k)][g - 1] for k, g in state.items() if g},
             "subject_id": subject, "study_time": when.isoformat(), "view_positions": ["PA", "LATERAL"],
             "indication": _indication(srng, state, prior, latent),
             "comparison": f"Chest radiographs of {prior_time[:10]}." if prior_time else "None."}
        if prior:
            e["changes"] = {k: c for k in FINDINGS if (c := change_of(prior[k], state[k]))}
        entries.append(e)
        prior_time = e["study_time"]
        when += timedelta(days=int(srng.integers(1, 240)), minutes=int(srng.integers(-300, 300)))
    return entries


def _write(out: Path, p: dict) -> None:
    ann: dict[str, list] = {"train": [], "val": [], "test": []}
    splits = ["train"] * p["n_train"] + ["val"] * p["n_val"] + ["test"] * p["n_test"]
    for idx, split in enumerate(splits):
        ann[split] += _subject(p, idx, split, out)
    (out / "annotation.json").write_text(json.dumps(ann, indent=1))
    (out / syn._MARKER_NAME).write_text(json.dumps(p, sort_keys=True))  # last: marks the set complete


def generate_longitudinal(root: str | Path, n_train: int = 500, n_val: int = 50, n_test: int = 150,
                          image_size: int = 64, seed: int = 0, p_third: float = 0.25) -> Path:
    """Write the longitudinal demo set under `root` (annotation.json, images/<id>/{0,1}.png, .demo_params.json):
    `n_train`/`n_val`/`n_test` SUBJECTS per split, each with two studies, or three with probability `p_third`.
    Returns root/annotation.json; a no-op when root holds the set with these parameters; written atomically, and
    never over a user's folder (r2gen.data.synthetic.write_set)."""
    if not 0 <= p_third <= 1:
        raise ValueError(f"data.demo.p_third={p_third}: a probability, between 0 and 1")
    return syn.write_set(root, _params(n_train, n_val, n_test, image_size, seed, p_third), _write)
