"""The README.md of an exported folder: what the model is, how it was trained, the run's test scores (`run_scores`
finds them in the run folder), how to use it without r2gen, and whose licence applies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from r2gen import __version__
from r2gen.data.annotations import read_studies
from r2gen.export.configuration_r2gen import CONTEXT_KEYWORDS
from r2gen.scoring.nlg import METRIC_NAMES

SNIPPET = """\
```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{path}", trust_remote_code=True)
reports = model.generate_reports([
    ["study1/frontal.png", "study1/lateral.dcm"],   # a study: its image files (PNG, JPEG, DICOM) or PIL images
    ["study2/frontal.jpg"],
])                                                  # one report per study
reports = model.generate_reports(studies, batch_size=4, num_beams=1)   # generate kwargs change the stored config
```"""

# One study's context in the usage example, by generate_reports keyword (the second study has none of it).
CONTEXT_EXAMPLE = {
    "indications": ('"Cough and fever."', "its indication (the report's INDICATION, else HISTORY)"),
    "comparisons": ('"Chest radiograph of 2180-01-01."', "its comparison line (the report's COMPARISON)"),
    "prior_reports": ('"Mild cardiomegaly. No effusion."', "the report of the subject's prior study"),
    "prior_studies": ('["study1_prior/frontal.png"]', "the prior study's images, like a study"),
}


def _context(config: dict[str, Any]) -> list[str]:
    """The card's lines on the context a model reads (`config["context"]`, r2gen's context.*); none without it."""
    ctx = config.get("context") or {}
    reads = {*ctx.get("parts", ()), *(["prior_images"] if ctx.get("prior_images") else [])}
    keywords = [kw for kw, part in CONTEXT_KEYWORDS.items() if part in reads]
    if not keywords:
        return []
    width = max(len(f"    {kw}=[{CONTEXT_EXAMPLE[kw][0]}, None],") for kw in keywords) + 2
    example = [f"    {kw}=[{CONTEXT_EXAMPLE[kw][0]}, None],".ljust(width) + f"# {CONTEXT_EXAMPLE[kw][1]}"
               for kw in keywords]
    texts = [kw for kw in keywords if kw != "prior_studies"]
    return ["", "### Each study's context", "",
            f"The model was trained reading each study's context (`context.*`), so it takes it too: "
            f"{', '.join(f'`{kw}`' for kw in keywords)}, each a list with one entry per study, `None` where a study "
            f"has none. A missing one is written `none` (as the model saw a study without it at training)"
            + (", and a study without a prior (a first study) has its prior's image span masked out"
               if "prior_studies" in keywords else "") + "."
            + (f" The texts are cleaned as the training reports were (`{config.get('clean')}`) and the model reads "
               f"at most {ctx.get('max_tokens')} tokens of them." if texts else "")
            + " Leaving them all out reads every study as having none (a warning says so); a keyword the model does "
              "not read is an error.", "",
            "```python", "reports = model.generate_reports(",
            '    [["study1/frontal.png", "study1/lateral.png"], ["study2/frontal.png"]],', *example, ")", "```"]


def _names(recorded: Any, ckpt: Path) -> bool:
    """Whether the `ckpt` a metrics.json records (as given on its command line: absolute, or relative to where that
    command ran) is the checkpoint file `ckpt`: the same file, or a relative path whose every part ends its path."""
    if not isinstance(recorded, str) or not recorded.endswith(ckpt.name):
        return False
    r = Path(recorded).expanduser()
    if r.is_absolute() or r.exists():
        try:
            return r.resolve() == ckpt.resolve()
        except OSError:
            return False
    parts = [q for q in r.parts if q not in (".", "")]
    return ".." not in parts and list(ckpt.resolve().parts[-len(parts):]) == parts


def run_scores(ckpt: Path) -> tuple[dict[str, Any] | None, str]:
    """The scores of the run's evaluation (`metrics.json` under the run folder, next to `<run>/checkpoints/`) and
    where they came from, in words: a test evaluation of this very checkpoint first (`test/metrics.json` after
    training, `evaluate/metrics.json` as `make demo` writes it, or any evaluation folder in the run whose metrics.json
    names it), then one on another split, then the run's test scores of another of its checkpoints. An evaluation
    with `shuffle_images=true` (a control) or of a predictions file is not the model's score."""
    run = ckpt.parent.parent
    found = []
    for path in sorted({*run.glob("*/metrics.json"), *run.glob("*/*/metrics.json")}):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(metrics, dict) or metrics.get("shuffle_images") or "ckpt" not in metrics:
            continue
        same = _names(metrics.get("ckpt"), ckpt)
        if not (same or (path.parent == run / "test" and metrics.get("split") == "test")):
            continue
        rank = (same, metrics.get("split") == "test", path.stat().st_mtime)
        found.append((rank, path, metrics))
    if not found:
        return None, ""
    (same, _, _), path, metrics = max(found, key=lambda f: f[0])
    where = f"`{path.relative_to(run)}` of the run"
    if not same:
        scored = Path(str(metrics.get("ckpt", ""))).name
        where += f", of `{scored}` of the same run, not of the exported `{ckpt.name}`"
    return metrics, where


def _lm_name(run: DictConfig) -> str:
    """The run's LM, in words: the demo LM, a local folder or a hub id."""
    if run.lm.get("build"):
        return f"r2gen's demo LM (a {run.lm.build.model_type} built locally by r2gen, lm=tiny)"
    name = str(run.lm.name_or_path)
    return f"`{Path(name).name}` (a local folder)" if Path(name).expanduser().is_dir() else f"`{name}`"


def _training(run: DictConfig) -> list[str]:
    """What trained, in words."""
    mode = run.align.encoder
    enc = f"LoRA r={run.align.lora.r} (merged)" if mode == "lora" else {"frozen": "frozen", "full": "trained fully"}[mode]
    pretrained = "pretrained weights" if run.encoder.pretrained else "random init"
    if not run.lm.freeze:
        lm = "trained fully"
    elif run.lm.lora and int(run.lm.lora.r) > 0:
        lm = f"frozen, LoRA r={run.lm.lora.r} on {', '.join(map(str, run.lm.lora.target_modules))} (merged)"
    else:
        lm = "frozen"
    return [f"- encoder: timm `{run.encoder.name}` ({pretrained}; align.encoder={mode}: {enc})",
            f"- language model: {_lm_name(run)} ({lm})",
            f"- images: the first {run.data.num_views} per study, view fusion `{run.data.view_fusion}`"]


def _n_train(run: DictConfig) -> str:
    """How many studies trained the model, in words (the run's annotation, read again now)."""
    try:
        return f"{len(read_studies(run.data)['train']):,} training studies"
    except Exception:  # noqa: BLE001 - the data may be gone or moved; the card then says nothing about it
        return "training studies: unknown (the annotation could not be read at export)"


def model_card(run: DictConfig, ckpt: Path, folder: Path) -> str:
    """The card of a `part=all` folder, from its written config.json and weights."""
    config = json.loads((folder / "config.json").read_text())
    size = sum(os.path.getsize(f) for f in folder.glob("*.safetensors"))
    lines = ["---", "library_name: transformers", "tags: [radiology-report-generation, chest-x-ray, r2gen]", "---",
             "", f"# Chest X-ray report generator ({run.data.name})", "",
             f"Exported by r2gen {__version__} (`python -m r2gen.export`) from `{ckpt.name}` of the run "
             f"`{ckpt.parent.parent.name}`. Trained on `data={run.data.name}` ({_n_train(run)}; reports cleaned "
             f"with the `{run.data.clean}` policy).", "", *_training(run),
             f"- generation: {json.dumps(OmegaConf.to_container(run.generate, resolve=True))}",
             f"- weights: {size / 2**20:,.1f} MiB of safetensors; LM architecture `{config['lm_config']['model_type']}`",
             "", "## Test scores", ""]
    metrics, where = run_scores(ckpt)
    if metrics is None:
        lines.append(f"No test scores: no metrics.json in the run folder scores `{ckpt.name}` (train with "
                     f"test_after_fit=true, or run `evaluate.py ckpt=<this checkpoint> hydra.run.dir=<run>/evaluate`).")
    else:
        keys = [k for k in (*METRIC_NAMES, "ce_f1_micro", "ce_f1_macro", "finding_f1_macro") if k in metrics]
        lines += [f"On the {metrics.get('split', 'test')} split, {metrics.get('n_studies', '?')} studies (from {where}); "
                  f"references: {metrics.get('references', 'full')}"
                  f"{'; labeler: ' + metrics['labeler'] if metrics.get('labeler') else ''}.", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                  "| " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |"]
    lines += ["", "## Use", "", "Needs torch, torchvision, timm, transformers, numpy, Pillow and pydicom; not r2gen.",
              "", SNIPPET.format(path="<this folder>"), "",
              "The reports are those r2gen writes for the same images with this checkpoint (same preprocessing, "
              "prompt, batching, generation config and cleaning; `predict.py`'s, or for a model that reads context, "
              "`evaluate.py`'s for studies with the same context). `model.save_pretrained(<folder>)` writes a copy "
              "that loads the same way.", *_context(config), "",
              "## Licence", "",
              f"These weights contain the language model {_lm_name(run)}: its licence applies to this folder, as do "
              f"the terms under which the training data ({run.data.name}) may be used (e.g. a data use agreement).",
              ""]
    return "\n".join(lines)


def lm_card(run: DictConfig, ckpt: Path, encoder_decoder: bool = False) -> str:
    """The card of a `part=lm` folder: the LM alone, which writes no report from an image; `encoder_decoder`: a
    T5-style LM, which `AutoModelForSeq2SeqLM` loads."""
    what, auto = ("the encoder-decoder LM", "AutoModelForSeq2SeqLM") if encoder_decoder else \
        ("the causal LM", "AutoModelForCausalLM")
    return "\n".join([
        "---", "library_name: transformers", "---", "",
        f"# The language model of an r2gen report generator ({run.data.name})", "",
        f"Exported by r2gen (`python -m r2gen.export part=lm`) from `{ckpt.name}` of the run `{ckpt.parent.parent.name}`: "
        f"{what} alone, with any LoRA adapters merged; load it with `{auto}.from_pretrained` "
        f"(no peft, no remote code). Without the image encoder and projection it writes no report from an image.", "",
        _training(run)[1], "", "## Licence", "",
        f"This is {_lm_name(run)} after training: its licence applies.", ""])
