"""Report cleaning, reproduced character for character from R2Gen (cuhksz-nlp/R2Gen, modules/tokenizers.py).

Published IU-Xray and MIMIC-CXR numbers were computed on text cleaned this way, so the quirks stay:
the regex character class `[.,?;*!%^&_+():-\\[\\]{}]` contains the range `:-\\[` (which also strips `<=>?@`
and upper-case letters, already lower-cased by then), empty sentences are kept (R2Gen's `!= []` test
compares a string with a list and is always true), and `'1. '` is removed anywhere in the text.

Cleaned text is for scoring (`no pneumothorax .`: punctuation split off as its own token). What people read is that
text detokenized (`detokenize`: `no pneumothorax.`), and cleaning the detokenized text gives the scored text back, so
a predictions file of readable reports scores as the run did.

Standalone: this file is copied verbatim into every exported model folder (r2gen.export.exporter.EXPORTED), which
runs without r2gen, so it imports only the standard library, torch, torchvision, timm, transformers, numpy, Pillow,
pydicom and the other exported files (relatively), and r2gen (its error types, another exported file) only inside
`try: ... except ImportError:` with a fallback; tests/test_export.py::test_the_exported_files_are_standalone keeps
it so.
"""

from __future__ import annotations

import re
from collections.abc import Callable

try:
    from r2gen.errors import ConfigError
except ImportError:  # standalone (see above)
    ConfigError = ValueError

_SENT_RE = re.compile("[.,?;*!%^&_+():-\\[\\]{}]")


def _sent_cleaner(t: str) -> str:
    return _SENT_RE.sub("", t.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower())


def _join(sentences: list[str]) -> str:
    return " . ".join(_sent_cleaner(s) for s in sentences) + " ."


def clean_report_iu_xray(report: str) -> str:
    """R2Gen's `clean_report_iu_xray`."""
    t = report.replace("..", ".").replace("..", ".").replace("..", ".").replace("1. ", "")
    for a in ("2", "3", "4", "5"):
        t = t.replace(f". {a}. ", ". ")
    for a in ("2", "3", "4", "5"):
        t = t.replace(f" {a}. ", ". ")
    return _join(t.strip().lower().split(". "))


def clean_report_mimic_cxr(report: str) -> str:
    """R2Gen's `clean_report_mimic_cxr`."""
    t = report.replace("\n", " ")
    for _ in range(7):
        t = t.replace("__", "_")
    for _ in range(6):
        t = t.replace("  ", " ")
    for _ in range(8):
        t = t.replace("..", ".")
    t = t.replace("1. ", "")
    for a in ("2", "3", "4", "5"):
        t = t.replace(f". {a}. ", ". ")
    for a in ("2", "3", "4", "5"):
        t = t.replace(f" {a}. ", ". ")
    return _join(t.strip().lower().split(". "))


def clean_whitespace(report: str) -> str:
    """No R2Gen policy: only collapse whitespace (newlines included) and lower-case."""
    return " ".join(report.split()).lower()


_PUNCT = frozenset(".,;:?!")


def detokenize(report: str) -> str:
    """The report as people read it: single spaces, none before `. , ; : ? !`, none at either end.

    Made to invert R2Gen's cleaners (iu_xray, mimic_cxr): `clean(detokenize(clean(x)))` equals `clean(x)` up to runs of spaces (which
    no scorer but pycocoevalcap's ROUGE-L tells apart). Two quirks of R2Gen's cleaning keep a space before a
    period where joining would change what scoring sees: after a token ending in `1` or a lone `2`-`5` (the cleaner
    deletes `1. ` anywhere and ` 2. `..` 5. `), and an empty sentence (`a . . b .`: the second period starts one).
    """
    words: list[str] = []
    tokens = report.split()
    for i, w in enumerate(tokens):
        if words and set(w) <= _PUNCT:
            prev, last = words[-1], i == len(tokens) - 1
            keep = w[0] == "." and (prev[-1] == "." or (not last and (prev[-1] == "1" or prev in ("2", "3", "4", "5"))))
            if not keep:
                words[-1] = prev + w
                continue
        words.append(w)
    return " ".join(words)


CLEANERS: dict[str, Callable[[str], str]] = {
    "iu_xray": clean_report_iu_xray,
    "mimic_cxr": clean_report_mimic_cxr,
    "whitespace": clean_whitespace,
}


def get_cleaner(name: str) -> Callable[[str], str]:
    try:
        return CLEANERS[name]
    except KeyError:
        raise ConfigError(f"data.clean={name!r}: choose one of {', '.join(CLEANERS)}") from None
