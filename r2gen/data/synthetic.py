"""The built-in synthetic demo: two-view chest X-ray-like studies with findings drawn in and reports describing them.

Each study gets independent findings (cardiomegaly, left/right pleural effusion, left/right focal opacity,
left/right pneumothorax; about a third of studies are normal), a frontal (PA) and a lateral view drawn with numpy,
and a short findings-style report from sentence templates. Everything a report says about a finding is visible in
the images, so a model that looks can learn to name it and one that does not cannot: that is what the demo's
finding F1 (`r2gen.scoring.demo_labeler.finding_scores`, labelling reports with its rule-based `label_report`)
measures.

Sides are always the PATIENT's. Radiological convention: a frontal view is displayed as if facing the patient, so
the patient's LEFT is on the IMAGE RIGHT (+x below). Determinism: every study draws from its own
`numpy.random.Generator` seeded with (seed, study index), so the set is byte-identical for the same parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from r2gen.errors import UnsafeWriteError

FINDINGS: tuple[str, ...] = ("cardiomegaly", "effusion_left", "effusion_right", "opacity_left", "opacity_right",
                             "pneumothorax_left", "pneumothorax_right")
_VERSION = 2  # bump when drawing or reports change, so cached demo sets are regenerated
_MARKER_NAME = ".demo_params.json"  # a demo set's parameters; its presence marks a folder as the demo's own
_SIDE_X = {"right": -1.0, "left": 1.0}  # image-x direction of the patient's side (patient's left = image right)
_ZONE_Y = {"upper": -0.40, "mid": 0.0, "lower": 0.24}  # lung-zone height relative to the lung centre
# How far an effusion's fluid reaches above the costophrenic angle, by size, on the frontal and the lateral view
# (the plain demo draws small and moderate; large is the longitudinal set's, r2gen.data.longitudinal)
_EFF_HEIGHT = {"small": 0.24, "moderate": 0.42, "large": 0.58}
_EFF_HEIGHT_LATERAL = {"small": 0.24, "moderate": 0.40, "large": 0.54}


# ----------------------------------------------------------------------------------------------------- drawing
@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the image right, y down), computed once per size."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2 - 1
    gx, gy = np.meshgrid(t, t)
    gx.flags.writeable = gy.flags.writeable = False  # shared by every study: never drawn into
    return gx, gy


def _soft(d: np.ndarray, w: float) -> np.ndarray:
    """A 0..1 mask from a signed 'inside' distance d, with an edge about w wide (anti-aliased even at 64 px)."""
    return np.clip(d / w + 0.5, 0.0, 1.0)


def _superellipse(x, y, cx, cy, a, b, p=2.0):
    """Normalised radius: < 1 inside the superellipse centred (cx, cy) with half-axes a, b."""
    u, v = (x - cx) / a, (y - cy) / b
    u, v = u * u, v * v
    if p == 2:  # fast paths: fractional powers cost ~20x a multiply
        return np.sqrt(u + v)
    if p == 4:
        return np.sqrt(np.sqrt(u * u + v * v))
    return (u ** (p / 2) + v ** (p / 2)) ** (1.0 / p)


def _pow6(c):
    c = c * c
    return c * c * c


def _blend(img, mask, value):
    img *= 1 - mask
    img += mask * value


def _dome(x, cx, cy, a, b, name):
    """Hemidiaphragm: domes up medially, leaving a sharp lateral costophrenic angle; the patient's right one sits a
    little higher, over the liver."""
    return cy + 0.86 * b - 0.17 * (1 - np.clip((x - cx) / a, -1.3, 1.3) ** 2) - (0.04 if name == "right" else 0.0)


def _frontal(rng, x, y, f) -> np.ndarray:
    """PA view, in the study's own (jittered) coordinates; intensities 0 (air) .. ~1 (bone)."""
    img = np.full(x.shape, 0.05, np.float32)  # air outside the body
    _blend(img, _soft(1 - _superellipse(x, y, 0, 0.22, 0.88, 1.25, 4), 0.06), 0.40)  # soft tissue of the trunk
    cy, a, b = -0.08, 0.30, 0.62
    below = np.where(x < 0, _dome(x, -0.4, cy, a, b, "right"), _dome(x, 0.4, cy, a, b, "left"))
    _blend(img, _soft(y - below, 0.05) * _soft(0.8 - np.abs(x), 0.1), 0.56)  # liver / upper abdomen
    rib_phase = rng.uniform(0, 6.3)
    for name, sx in _SIDE_X.items():
        cx = sx * 0.40
        a_v = a * (0.72 + 0.28 * np.clip((y - cy + b) / (1.2 * b), 0, 1))  # lungs taper towards the apex
        r = _superellipse(x, y, cx, cy, a_v, b, 2.4)
        lung = _soft(1 - r, 0.05) * _soft(_dome(x, cx, cy, a, b, name) - y, 0.04)
        # Vessels fan out from the hilum and fade to the periphery; posterior ribs arch across as faint bands.
        hx, hy = sx * 0.17, -0.02
        theta, rad = np.arctan2(y - hy, (x - hx) * sx), np.sqrt((x - hx) ** 2 + (y - hy) ** 2)
        ph = rng.uniform(0, 6.3, 4).tolist()  # python floats keep the arrays float32
        vessels = (_pow6(0.5 + 0.5 * np.cos(13 * theta + ph[0] + 7 * rad)) * (0.6 + 0.4 * np.cos(5 * theta + ph[1]))
                   + _pow6(0.5 + 0.5 * np.cos(21 * theta + ph[2] - 6 * rad)) * (0.6 + 0.4 * np.cos(7 * theta + ph[3])))
        vessels *= np.exp(-rad / 0.35) * 0.16
        dxl = x - cx
        ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (y + 0.6 * dxl**2 - 0.2 * dxl * sx) / 0.19 + rib_phase)
        ribs = 0.06 * ribs * ribs * ribs
        field = 0.16 + vessels + ribs
        if f[f"pneumothorax_{name}"]:
            # The collapsed lung retracts medially and down; the apical/lateral rim is a vessel-free dark
            # crescent, bounded by the thin bright visceral pleural line.
            # (`pneumothorax_<side>_collapse` < 1, the longitudinal set's larger ones: a smaller lung, a wider rim)
            k = f.get(f"pneumothorax_{name}_collapse", 1.0)
            ca, cb = a * rng.uniform(0.66, 0.74) * k, b * rng.uniform(0.74, 0.80) * k
            ccx, ccy = cx - sx * 0.07, cy + 0.12
            rc = _superellipse(x, y, ccx, ccy, ca * (0.72 + 0.28 * np.clip((y - ccy + cb) / (1.2 * cb), 0, 1)), cb, 2.4)
            ptx = _soft(rc - 1, 0.03)
            facing = _soft((x - ccx) * sx * 0.6 - (y - ccy), 0.1)  # only the apical/lateral part of the line
            field = field * (1 - ptx) + 0.03 * ptx + 0.28 * np.exp(-(((rc - 1) / 0.03) ** 2)) * facing
        _blend(img, lung, field)
        if f[f"opacity_{name}"]:
            oy = cy + _ZONE_Y[f[f"opacity_{name}_zone"]] + rng.uniform(-0.04, 0.04)
            ox = cx + rng.uniform(-0.07, 0.07)
            k = f.get(f"opacity_{name}_scale", 1.0)  # the longitudinal set's small / large opacities
            blob = sum(np.exp(-((x - ox - dx) ** 2 + (y - oy - dy) ** 2) / (2 * (s * k) * (s * k)))
                       for dx, dy, s in rng.uniform([-0.05, -0.05, 0.07], [0.05, 0.05, 0.11], (3, 3)).tolist())
            img += lung * np.clip(blob, 0, 1.2) * rng.uniform(0.30, 0.38)
        size = f[f"effusion_{name}"] and f[f"effusion_{name}_size"]
        if size:
            # Fluid fills the lung base, hiding the diaphragm and the costophrenic angle, with a meniscus that
            # climbs the lateral chest wall.
            level = cy + 0.86 * b - _EFF_HEIGHT[size] + rng.uniform(-0.03, 0.03)
            lat = np.clip(((x - cx) * sx / a + 1) / 2, 0, 1)
            fluid = _soft(1 - _superellipse(x, y, cx, cy + 0.06, a * 1.02, b, 4), 0.05) * _soft(y - (level - 0.26 * lat**2), 0.07)
            _blend(img, fluid, 0.57)
    # Clavicles, the mediastinum with the spine seen through it, the aortic knob on the patient's left, and the heart
    # low and to the patient's left (image right).
    for sx in (-1, 1):
        clav = _soft(0.035 - np.abs(y - (-0.56 - 0.28 * np.abs(x) + 0.2 * (np.abs(x) - 0.35) ** 2)), 0.03)
        img += 0.2 * clav * _soft(0.31 - np.abs(x - sx * 0.39), 0.06)
    _blend(img, _soft(0.10 + 0.06 * np.clip(y + 0.3, 0, 1) - np.abs(x - 0.01), 0.04) * _soft(y + 0.95, 0.1), 0.60)
    _blend(img, _soft(0.05 - np.abs(x), 0.03), 0.66 + 0.03 * np.cos(2 * np.pi * y / 0.16))
    _blend(img, _soft(1 - _superellipse(x, y, 0.11, -0.33, 0.08, 0.07), 0.2), 0.66)
    hw = f["heart_w"]
    _blend(img, _soft(1 - _superellipse(x, y, 0.06 + 0.35 * (hw - 0.29), 0.33, hw, 0.25 + 0.25 * (hw - 0.29)), 0.08), 0.72)
    return img


def _lateral(rng, x, y, f) -> np.ndarray:
    """Lateral view: anterior to the image left, spine posterior (right); left and right lungs superimpose."""
    img = np.full(x.shape, 0.05, np.float32)
    _blend(img, _soft(1 - _superellipse(x, y, 0, 0.15, 0.88, 1.2, 4), 0.06), 0.40)
    cx, cy, a, b = 0.0, -0.06, 0.58, 0.62
    dome = cy + 0.84 * b - 0.22 * (1 - np.clip((x - cx) / a, -1.2, 1.2) ** 2)  # deepest posteriorly
    _blend(img, _soft(y - dome, 0.05) * _soft(0.8 - np.abs(x), 0.1), 0.56)
    lung = _soft(1 - _superellipse(x, y, cx, cy, a, b, 2.4), 0.05) * _soft(dome - y, 0.04)
    ph = rng.uniform(0, 6.3, 2).tolist()
    theta, rad = np.arctan2(y + 0.02, x - 0.05), np.sqrt((x - 0.05) ** 2 + (y + 0.02) ** 2)
    vessels = _pow6(0.5 + 0.5 * np.cos(17 * theta + ph[0] + 6 * rad)) * (0.6 + 0.4 * np.cos(6 * theta + ph[1]))
    _blend(img, lung, 0.16 + 0.14 * vessels * np.exp(-rad / 0.35))
    for name in _SIDE_X:  # a blob at the height it has on the frontal view; side can't be told here
        if f[f"opacity_{name}"]:
            oy, ox = cy + _ZONE_Y[f[f"opacity_{name}_zone"]] + rng.uniform(-0.04, 0.04), rng.uniform(-0.2, 0.3)
            s = rng.uniform(0.09, 0.12) * f.get(f"opacity_{name}_scale", 1.0)
            img += lung * np.exp(-((x - ox) ** 2 + (y - oy) ** 2) / (2 * s * s)) * rng.uniform(0.22, 0.28)
    sizes = [f[f"effusion_{n}_size"] for n in _SIDE_X if f[f"effusion_{n}"]]
    if sizes:  # fluid layers in the posterior costophrenic sulcus (more of it if both sides have some)
        h = sum(_EFF_HEIGHT_LATERAL[s] for s in sizes) * (0.75 if len(sizes) == 2 else 1.0)
        level = cy + 0.84 * b - h + rng.uniform(-0.03, 0.03)
        post = np.clip((x - cx) / a, 0, 1)
        fluid = _soft(1 - _superellipse(x, y, cx, cy + 0.05, a, b, 4), 0.05) * _soft(y - (level - 0.05 + 0.18 * (1 - post)), 0.06)
        _blend(img, fluid * _soft(x + 0.1, 0.2), 0.57)
    # Spine posterior (vertebral bodies with darker disc spaces), sternum anterior, heart anterior-inferior.
    spine = _soft(0.10 - np.abs(x - 0.70 + 0.05 * y), 0.04) * _soft(y + 0.9, 0.1)
    _blend(img, spine, 0.62 - 0.10 * _pow6(0.5 + 0.5 * np.cos(2 * np.pi * y / 0.17)))
    _blend(img, _soft(0.03 - np.abs(x + 0.74 - 0.05 * y), 0.03) * _soft(0.6 - np.abs(y + 0.1), 0.1), 0.58)
    hw = 0.30 + 1.1 * (f["heart_w"] - 0.29)  # an enlarged heart grows back towards the spine
    _blend(img, _soft(1 - _superellipse(x, y, -0.50 + hw, 0.34, hw, 0.26 + 0.3 * (f["heart_w"] - 0.29)), 0.08), 0.68)
    return img


def _finish(rng, img, x, y) -> np.ndarray:
    """Per-study exposure: contrast/brightness/gamma jitter, a smooth shading gradient and quantum noise."""
    phi = rng.uniform(0, 2 * np.pi)
    img = img + 0.05 * (x * float(np.cos(phi)) + y * float(np.sin(phi)))
    img = np.clip(img * rng.uniform(0.9, 1.1) + rng.uniform(-0.03, 0.03), 0, 1) ** rng.uniform(0.85, 1.15)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.012, 0.025))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _draw(rng, f, size: int) -> list[np.ndarray]:
    gx, gy = _grid(size)
    views = []
    for draw in (_frontal, _lateral):
        # Patient positioning jitter: shift and scale (drawing in the study's own coordinates).
        s, dx, dy = rng.uniform(0.93, 1.07), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)
        x, y = (gx - dx) / (s * rng.uniform(0.96, 1.04)), (gy - dy) / s
        views.append(_finish(rng, draw(rng, x, y, f), gx, gy))
    return views


# ----------------------------------------------------------------------------------------------------- reports
def _pick(rng, options):
    return options[rng.integers(len(options))]


def _sample_study(rng) -> dict:
    """Independent findings with their drawing/report attributes (side, zone, size, heart width)."""
    f = {k: 0 for k in FINDINGS}
    f["cardiomegaly"] = int(rng.random() < 0.30)
    f["severity"] = _pick(rng, ["mild", "moderate"])
    lo, hi = (0.27, 0.31) if not f["cardiomegaly"] else ((0.38, 0.41) if f["severity"] == "mild" else (0.43, 0.47))
    f["heart_w"] = float(rng.uniform(lo, hi))  # half-width; thorax ~1.4 wide, so CTR ~0.42 normal, 0.55-0.67 enlarged
    if rng.random() < 0.25:
        u = rng.random()
        for side in (["left"] if u < 0.35 else ["right"] if u < 0.7 else ["left", "right"]):
            f[f"effusion_{side}"] = 1
    size = _pick(rng, ["small", "moderate"])  # bilateral effusions share a size
    for side in _SIDE_X:
        f[f"effusion_{side}_size"] = size
        f[f"opacity_{side}_zone"] = _pick(rng, list(_ZONE_Y))
    if rng.random() < 0.25:
        u = rng.random()
        for side in (["left"] if u < 0.45 else ["right"] if u < 0.9 else ["left", "right"]):
            f[f"opacity_{side}"] = 1
    if rng.random() < 0.12:
        f[f"pneumothorax_{_pick(rng, ['left', 'right'])}"] = 1
    return f


_HEART_POS = ["The heart is enlarged.", "Cardiomegaly.", "The cardiac silhouette is enlarged.", "{Sev} cardiomegaly.",
              "The heart is {sev}ly enlarged.", "There is {sev} enlargement of the cardiac silhouette.",
              "Enlarged cardiac silhouette.", "The heart size is {sev}ly enlarged, compatible with cardiomegaly."]
_HEART_NEG = ["Heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
              "The heart is normal in size.", "Normal heart size.", "The cardiac silhouette is not enlarged.",
              "Heart size and mediastinal contours are normal.", "The heart and mediastinum are unremarkable."]
_MEDIASTINUM = ["The mediastinal contours are normal.", "The mediastinum is unremarkable.", "The trachea is midline.",
                "The hilar contours are normal.", "Pulmonary vascularity is within normal limits."]
_ZONES = {"upper": ["upper lobe", "upper lung zone", "apex"], "mid": ["mid lung zone", "midlung", "perihilar region"],
          "lower": ["lower lobe", "lung base", "lower lung zone"]}
_OPAC_POS = ["Focal opacity in the {side} {zone}.", "There is an airspace opacity in the {side} {zone}.",
             "{Side} {zone} consolidation.", "Patchy opacity in the {side} {zone}, concerning for pneumonia.",
             "Rounded opacity projecting over the {side} {zone}.",
             "Consolidation in the {side} {zone}, which may represent infection or aspiration."]
_OPAC_NEG = ["The lungs are clear.", "No focal consolidation.", "There is no focal airspace opacity.",
             "The lungs are clear without focal consolidation.", "No focal airspace consolidation.",
             "The lungs are well expanded and clear.", "Lungs are clear bilaterally."]
_EFF_POS = ["{Size} {side} pleural effusion.", "There is a {size} {side} pleural effusion.",
            "{Size} {side} pleural effusion with blunting of the costophrenic angle.",
            "A {size} {side} pleural effusion is seen.",
            "Blunting of the {side} costophrenic angle, consistent with a {size} pleural effusion."]
_EFF_BIL = ["Bilateral pleural effusions.", "{Size} bilateral pleural effusions.", "There are {size} bilateral pleural effusions.",
            "{Size} pleural effusions are present bilaterally."]
_EFF_NEG = ["No pleural effusion.", "No effusion.", "There is no pleural effusion.", "No pleural effusions.",
            "The costophrenic angles are sharp."]
_PTX_POS = ["Small {side} apical pneumothorax.", "There is a {side} pneumothorax.",
            "A {side} apical pneumothorax is present.", "{Side} pneumothorax with a visible pleural line.",
            "A thin pleural line at the {side} apex indicates a pneumothorax."]
_PTX_NEG = ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.", "No pneumothorax is identified."]
_BONES = ["The osseous structures are intact.", "Degenerative changes of the thoracic spine.",
          "No acute osseous abnormality.", "The visualized osseous structures are unremarkable.",
          "Mild degenerative changes are seen in the spine.", "No acute bony abnormality.",
          "The soft tissues are unremarkable."]
_NORMAL = ["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
           "No radiographic evidence of acute disease."]


def _fill(template: str, **kw: str) -> str:
    kw.update({k.capitalize(): v.capitalize() for k, v in kw.items()})
    return template.format(**kw)


def _report(rng, f) -> str:
    normal = not any(f[k] for k in FINDINGS)
    heart = [_fill(_pick(rng, _HEART_POS if f["cardiomegaly"] else _HEART_NEG), sev=f["severity"])]
    if rng.random() < 0.2 and "mediastin" not in heart[0]:
        heart.append(_pick(rng, _MEDIASTINUM))
    sides = [s for s in ("right", "left") if f[f"opacity_{s}"]]
    lungs = [_fill(_pick(rng, _OPAC_POS), side=s, zone=_pick(rng, _ZONES[f[f"opacity_{s}_zone"]])) for s in sides]
    other = {"left": "right", "right": "left"}[sides[0]] if len(sides) == 1 else None
    if other and not f[f"effusion_{other}"] and not f[f"pneumothorax_{other}"] and rng.random() < 0.4:
        lungs.append(f"The {other} lung is clear.")
    lungs = lungs or [_pick(rng, _OPAC_NEG)]
    eff = [s for s in ("right", "left") if f[f"effusion_{s}"]]
    size = f["effusion_right_size"]
    if len(eff) == 2:
        pleural = [_fill(_pick(rng, _EFF_BIL), size=size)]
    else:
        pleural = [_fill(_pick(rng, _EFF_POS), size=size, side=s) for s in eff] or [_pick(rng, _EFF_NEG)]
    ptx = [_fill(_pick(rng, _PTX_POS), side=s) for s in ("right", "left") if f[f"pneumothorax_{s}"]]
    if not eff and not ptx and rng.random() < 0.35:
        pleural = ["No pleural effusion or pneumothorax."]
    else:
        ptx = ptx or [_pick(rng, _PTX_NEG)]
        if rng.random() < 0.15:
            pleural, ptx = ptx, pleural
    if rng.random() < 0.1:
        heart, lungs = lungs, heart
    body = heart + lungs + pleural + ptx
    tail = [_pick(rng, _BONES) for _ in range(rng.integers(0, 2) if len(body) < 5 else 0)]
    if normal and rng.random() < 0.5:
        tail.append(_pick(rng, _NORMAL))
    return " ".join((body + tail)[:7])


# ----------------------------------------------------------------------------------------------------- writing
def _params(n_train, n_val, n_test, image_size, seed) -> dict:
    return {"n_train": int(n_train), "n_val": int(n_val), "n_test": int(n_test), "image_size": int(image_size),
            "seed": int(seed), "version": _VERSION}


def _is_current(root: Path, params: dict) -> bool:
    try:
        return (root / "annotation.json").is_file() and json.loads((root / _MARKER_NAME).read_text()) == params
    except (OSError, ValueError):
        return False


def _write(out: Path, p: dict) -> None:
    ann: dict[str, list] = {"train": [], "val": [], "test": []}
    splits = ["train"] * p["n_train"] + ["val"] * p["n_val"] + ["test"] * p["n_test"]
    for idx, split in enumerate(splits):
        rng = np.random.default_rng([p["seed"], idx])
        f = _sample_study(rng)
        sid = f"demo_{idx:05d}"
        (out / "images" / sid).mkdir(parents=True)
        for v, arr in enumerate(_draw(rng, f, p["image_size"])):
            Image.fromarray(arr).save(out / "images" / sid / f"{v}.png", compress_level=1)
        ann[split].append({"id": sid, "report": _report(rng, f), "image_path": [f"{sid}/0.png", f"{sid}/1.png"],
                           "split": split, "labels": {k: int(f[k]) for k in FINDINGS}})
    (out / "annotation.json").write_text(json.dumps(ann, indent=1))
    (out / _MARKER_NAME).write_text(json.dumps(p, sort_keys=True))  # last: marks the set complete (and as the demo's)


def _check_demo_root(root: Path) -> None:
    """The demo is written only where nothing of the user's can be lost: a folder that does not exist, an empty
    one, or one that holds a demo set (its marker, `.demo_params.json`: an older or differently sized set, replaced
    as a whole). Anything else is someone's data, and stays untouched."""
    if not root.exists() or (root.is_dir() and ((root / _MARKER_NAME).is_file() or not any(root.iterdir()))):
        return
    what = "is a file" if not root.is_dir() else "holds files that are not the demo set"
    raise UnsafeWriteError(
        f"data.root={root} {what}, and data=demo would write its synthetic set there; for your own data use "
        f"data=custom data.root=... (a JSONL/CSV table) or data=iu_xray / data=mimic_cxr data.root=... (R2Gen "
        f"annotation.json); for the demo, choose a new or empty data.root")


def generate_demo(root: str | Path, n_train: int = 2000, n_val: int = 200, n_test: int = 300,
                  image_size: int = 96, seed: int = 0) -> Path:
    """Write the demo set under `root` (annotation.json, images/<id>/{0,1}.png, .demo_params.json) and return the
    path of root/annotation.json, as `write_set` does (a no-op when root already holds a set with these parameters;
    a user's folder is never touched)."""
    return write_set(root, _params(n_train, n_val, n_test, image_size, seed), _write)


def write_set(root: str | Path, p: dict, write: Callable[[Path, dict], None]) -> Path:
    """Write a synthetic set with parameters `p` under `root` by `write(folder, p)` (which writes annotation.json,
    the images and, last, the marker `.demo_params.json` holding `p`) and return the path of root/annotation.json.
    A no-op when root already holds a set with these parameters. Otherwise the set is written to a temporary folder
    beside root and renamed into place, replacing root as a whole, so an interrupted or concurrent run never leaves
    a half-written set behind. Only a missing or empty root, or one holding a demo set, is ever replaced
    (`_check_demo_root`); a user's folder raises `UnsafeWriteError` before anything is written."""
    root = Path(root)
    if _is_current(root, p):
        return root / "annotation.json"
    _check_demo_root(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would otherwise become the demo folder's mode
    try:
        write(tmp, p)
        while True:
            try:
                os.replace(tmp, root)  # atomic; fails if root is a non-empty folder
                break
            except OSError:
                if _is_current(root, p):  # a concurrent run with the same parameters got there first
                    break
                _check_demo_root(root)  # again, just before moving it: only a demo set is ever moved aside
                old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
                try:
                    os.replace(root, old / "set")  # move the stale set aside, then retry
                except FileNotFoundError:
                    pass
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "annotation.json"
