"""The set-up check: find every study that would fail or mislead in epoch 3, before epoch 1.

A study is bad when an image it lists is missing or unreadable (see `images.image_problem`) or it lists none.
`data.on_bad_sample=error` stops with one line that counts them and names the first few; `skip` drops them with
a warning. Studies whose report is empty once cleaned are always dropped (with a warning): there is nothing to
learn or score. A split left with no studies is an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from r2gen.data.annotations import SPLITS, Studies
from r2gen.data.images import image_problem
from r2gen.errors import ConfigError, InputError, MissingFileError

log = logging.getLogger(__name__)
POLICIES = ("error", "skip")
SHOW = 5  # bad images named in the message


def check_studies(ann: Studies, image_dir: Path, clean: Callable[[str], str], on_bad_sample: str,
                  source: str) -> Studies:
    """`ann` without its unusable studies; raises under `on_bad_sample=error` if any image is bad.
    `source` names where the studies came from, for messages."""
    if on_bad_sample not in POLICIES:
        raise ConfigError(f"data.on_bad_sample={on_bad_sample!r}: choose error or skip")
    t0 = time.perf_counter()
    bad = []  # (split, id, path, reason)
    for s in SPLITS:
        for e in ann[s]:
            if not e["image_path"]:
                bad.append((s, e["id"], "-", "the study lists no image"))
            for p in e["image_path"]:
                if reason := image_problem(image_dir / p):
                    bad.append((s, e["id"], image_dir / p, reason))
    n = sum(len(e["image_path"]) for s in SPLITS for e in ann[s])
    log.info("set-up check: %d images, %d bad, in %.2f s", n, len(bad), time.perf_counter() - t0)
    if bad:
        studies = {(s, i) for s, i, _, _ in bad}
        listed = "; ".join(f"{s} id {i}: {p} ({r})" for s, i, p, r in bad[:SHOW])
        more = f"; and {len(bad) - SHOW} more" if len(bad) > SHOW else ""
        summary = (f"{len(bad)} image(s) not found or unreadable, in {len(studies)} studies, under "
                   f"data.image_dir={image_dir}: {listed}{more}")
        if on_bad_sample == "error":
            err = MissingFileError if all(r == "no such file" for *_, r in bad) else InputError
            raise err(f"{summary}. Fix or remove them, or set data.on_bad_sample=skip to train without those studies")
        log.warning("data.on_bad_sample=skip: dropping %s", summary)
        ann = {s: [e for e in ann[s] if (s, e["id"]) not in studies] for s in SPLITS}

    out = {}
    for s in SPLITS:
        out[s] = [e for e in ann[s] if any(c.isalnum() for c in clean(e["report"]))]
        if len(out[s]) < len(ann[s]):
            log.warning("%s: dropped %d studies whose report is empty once cleaned", s, len(ann[s]) - len(out[s]))
    empty = [s for s in SPLITS if not out[s]]
    if empty:
        raise InputError(f"data split(s) {', '.join(empty)} have no usable studies in {source} (after dropping bad "
                         f"images and empty reports); each of train, val and test needs at least one")
    return out
