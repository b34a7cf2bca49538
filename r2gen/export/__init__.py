"""`export(cfg)`: a trained checkpoint as a folder a colleague loads without r2gen.

`part=all` (the default) writes a self-contained Hugging Face folder: `config.json` (`model_type: r2gen`, an
`auto_map` to the code in the folder), the modeling code, `model.safetensors` (encoder, projection, norm and LM, any
LoRA merged), the tokenizer and a model card. In a fresh process without r2gen:

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    model.generate_reports([["frontal.png", "lateral.dcm"], ...])   # the reports predict.py writes

The folder's code is r2gen's own: `configuration_r2gen.py` and `modeling_r2gen.py` (this package), and r2gen's
standalone modules copied verbatim (`EXPORTED`: image loading, the image transform, the encoder with its view
fusion, prompt assembly, report cleaning), so preprocessing, fusion, assembly, generation and cleaning are those of
predict.py, not a second implementation of them.

`part=lm` writes the LM alone, LoRA merged, as a plain folder of its own architecture (`AutoModelForCausalLM`
loads it without peft or remote code), with its tokenizer.

Quantized LMs (`quant=4bit|8bit`) are refused: the export holds full-precision weights, which the run never used;
`quant=none` on the command line merges the adapters into the LM's full-precision weights instead (its reports
may then differ slightly from predict.py's on the quantized model).

The checkpoint is only read. `out` must not exist or be an empty folder: the export is written to a temporary
sibling and renamed into place, so `out` is complete or absent.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import sys
import tempfile
import types
import uuid
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from r2gen.build import cli_overrides, load_model, rebuild
from r2gen.errors import ConfigError, StorageError, UnsafeWriteError, UserError

PARTS = ("all", "lm")
HERE = Path(__file__).resolve().parent
R2GEN = HERE.parent
# The exported folder's code: file name -> source. The r2gen modules import only the standard library, torch,
# torchvision, timm, numpy, Pillow and pydicom (r2gen's error classes through a fallback import).
EXPORTED = {
    "configuration_r2gen.py": HERE / "configuration_r2gen.py",
    "modeling_r2gen.py": HERE / "modeling_r2gen.py",
    "images.py": R2GEN / "data" / "images.py",
    "transform.py": R2GEN / "data" / "transform.py",
    "clean.py": R2GEN / "data" / "clean.py",
    "encoder.py": R2GEN / "models" / "encoder.py",
    "prompt.py": R2GEN / "models" / "prompt.py",
}
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


def export(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Write `cfg.part` of checkpoint `cfg.ckpt` into the new folder `cfg.out`; returns its path. `overrides`: as on
    the command line (default: Hydra's); model keys among them change the rebuilt run as in evaluate.py."""
    if cfg.part not in PARTS:
        raise ConfigError(f"part={cfg.part!r}: choose all (the whole model, loaded with AutoModel and "
                          f"trust_remote_code=True) or lm (the language model alone, LoRA merged)")
    if OmegaConf.is_missing(cfg, "out") or cfg.out in (None, ""):
        raise ConfigError("out is not set: pass out=<a new folder> (it must not exist, or be empty)")
    out = Path(str(cfg.out)).expanduser()
    check_out(out)
    overrides = cli_overrides() if overrides is None else list(overrides)
    own = ("out", "part")  # this command's keys, not the run's
    ck, run = rebuild(cfg, [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in own])
    if run.get("quant"):
        which = "8bit" if run.quant.get("load_in_8bit") else "4bit"
        raise ConfigError(f"quant={which}: the run's LM is quantized, and an export holds full-precision weights; add "
                          f"quant=none to merge the adapters into the LM's full-precision weights (its reports may "
                          f"then differ slightly from predict.py's on the quantized LM)")
    if cfg.part == "all" and run.lm.trust_remote_code:
        raise ConfigError(f"lm.trust_remote_code=true: the LM {run.lm.name_or_path} runs its own code, which an "
                          f"exported folder cannot carry next to r2gen's; export part=lm, or train with a native "
                          f"transformers LM")

    model = load_model(run, ck).eval()
    lm = merge_lora(model)
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
        if cfg.part == "lm":
            lm.generation_config = model.gen_config  # how the run decoded, not the checkpoint's own sampling file
            lm.save_pretrained(tmp)
            model.tokenizer.save_pretrained(tmp)
            (tmp / "README.md").write_text(lm_card(run, Path(str(cfg.ckpt))))
        else:
            write_model(model, lm, run, tmp)
            (tmp / "README.md").write_text(model_card(run, Path(str(cfg.ckpt)), tmp))
        umask = os.umask(0o22)
        os.umask(umask)
        for f in tmp.iterdir():  # mkdtemp makes an owner-only folder: give it and its files the usual modes
            f.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        try:
            os.replace(tmp, out)  # onto an absent or empty folder only; fails on one that gained files meanwhile
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise UnsafeWriteError(f"out={out}: files appeared in it during the export; nothing was written: choose a "
                                   f"new folder") from None
    except OSError as e:  # a full disk, no permission: one line, and no half-written folder
        if isinstance(e, UserError):
            raise
        raise StorageError(f"could not write out={out}: {e.strerror or e}; nothing was written: free space or choose "
                           f"another folder") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'the LM' if cfg.part == 'lm' else 'the model'} exported to {out}\n")
    return out


def check_out(out: Path) -> None:
    """`out` must be new or an empty folder: a user's files are never replaced."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise UnsafeWriteError(f"out={out} exists and is not an empty folder; r2gen never writes over a folder: "
                               f"choose a new one (nothing was written)")


# --- weights --------------------------------------------------------------------------------------------------------
def merge_lora(model) -> torch.nn.Module:
    """Merge LoRA adapters into the weights they adapt, on this (export-only) model, and return the LM as a plain
    transformers model: the encoder's adapters (`align=delta`, injected into the timm model) and the LM's (a peft
    model, `lm.lora.r>0`: `merge_and_unload`). In place rather than on a copy: a second copy of a 7B LM would double
    the memory an export needs."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    enc = model.encoder.model
    for name, m in list(enc.named_modules()):
        if isinstance(m, BaseTunerLayer):
            m.merge()
            parent, _, child = name.rpartition(".")
            setattr(enc.get_submodule(parent) if parent else enc, child, m.get_base_layer())
    lm = model.lm_model
    return lm.merge_and_unload() if isinstance(lm, PeftModel) else lm


def import_exported(folder: Path) -> types.ModuleType:
    """The exported `modeling_r2gen` module, imported from `folder` as a package of its own (as transformers imports
    remote code; r2gen's copies of these modules in r2gen/ are not the ones run)."""
    name = f"r2gen_export_{uuid.uuid4().hex[:12]}"
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
    return importlib.import_module(f"{name}.modeling_r2gen")


def hf_config(model, lm, run: DictConfig) -> dict[str, Any]:
    """Everything `R2GenConfig` needs to rebuild the model without r2gen (see configuration_r2gen.py)."""
    from r2gen import build
    from r2gen.models.lm import checkpoint_generation

    dm = build.datamodule(run, model)  # the image size and normalisation predict.py uses
    lm_config = {k: v for k, v in lm.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    generate = model.gen_config.to_diff_dict()  # r2gen's decoding (generate.*), the LM's stop tokens
    generate.pop("transformers_version", None)
    sampling, _ = checkpoint_generation(lm)  # the LM's own sampling values, for generate_reports(do_sample=True)
    # an attention the LM config names (e.g. eager for Gemma-2) is kept; `auto` (flash-attention 2 where the export
    # happens to run on a GPU with flash-attn) becomes transformers' default, so the folder loads anywhere
    attention = run.lm.get("attn_implementation")
    attention = None if attention in (None, "auto") else getattr(lm.config, "_attn_implementation", attention)
    kwargs = OmegaConf.to_container(run.encoder.kwargs) if run.encoder.kwargs else {}
    return {
        "encoder": {"name": run.encoder.name, "kwargs": kwargs, "image_size": run.data.image_size or None,
                    "fusion": run.data.view_fusion},
        "num_views": int(run.data.num_views),
        "image": {"size": int(dm.image_size), "mean": list(dm.mean), "std": list(dm.std)},
        "prompt": {"prefix": list(model.prompt.prefix), "suffix": list(model.prompt.suffix)},
        "clean": run.data.clean,
        "generate": generate,
        "sampling": sampling,
        "lm_config": lm_config,
        "lm_attn_implementation": attention,
        "batch_size": int(run.data.eval_batch_size),
    }


def write_model(model, lm, run: DictConfig, folder: Path) -> None:
    """config.json, the code, model.safetensors and the tokenizer, through the exported classes' own
    `save_pretrained` (which also copies the code files and writes the `auto_map`)."""
    for m in model.encoder.modules():  # saved with the weights, as the exported encoder keeps them (modeling_r2gen)
        m._non_persistent_buffers_set.clear()
    parts = {"encoder": model.encoder, "lm_proj": model.lm_proj, "lm_norm": model.lm_norm, "lm_model": lm}
    state = {f"{p}.{k}": v for p, mod in parts.items() for k, v in mod.state_dict().items()}
    with tempfile.TemporaryDirectory(prefix="r2gen-export-code-") as code:
        for name, src in EXPORTED.items():
            shutil.copyfile(src, Path(code) / name)
        modeling = import_exported(Path(code))
        try:
            config = modeling.R2GenConfig(**hf_config(model, lm, run))
            with torch.device("meta"):  # no second copy of the weights: the trained tensors are assigned below
                hf = modeling.R2GenModel(config)
            hf.load_state_dict(state, strict=True, assign=True)
            hf.tie_weights()
            hf.tokenizer = model.tokenizer
            hf.save_pretrained(folder)
        finally:
            for key in [k for k in sys.modules if k.split(".")[0] == modeling.__package__]:
                del sys.modules[key]


# --- model cards ----------------------------------------------------------------------------------------------------
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
    from r2gen.data.annotations import read_studies

    try:
        return f"{len(read_studies(run.data)['train']):,} training studies"
    except Exception:  # noqa: BLE001 - the data may be gone or moved; the card then says nothing about it
        return "training studies: unknown (the annotation could not be read at export)"


def model_card(run: DictConfig, ckpt: Path, folder: Path) -> str:
    from r2gen import __version__
    from r2gen.scoring.nlg import METRIC_NAMES

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
              "The reports are those r2gen's `predict.py` writes for the same images with this checkpoint (same "
              "preprocessing, prompt, batching, generation config and cleaning). `model.save_pretrained(<folder>)` "
              "writes a copy that loads the same way.", "",
              "## Licence", "",
              f"These weights contain the language model {_lm_name(run)}: its licence applies to this folder, as do "
              f"the terms under which the training data ({run.data.name}) may be used (e.g. a data use agreement).",
              ""]
    return "\n".join(lines)


def lm_card(run: DictConfig, ckpt: Path) -> str:
    return "\n".join([
        "---", "library_name: transformers", "---", "",
        f"# The language model of an r2gen report generator ({run.data.name})", "",
        f"Exported by r2gen (`python -m r2gen.export part=lm`) from `{ckpt.name}` of the run `{ckpt.parent.parent.name}`: "
        f"the causal LM alone, with any LoRA adapters merged; load it with `AutoModelForCausalLM.from_pretrained` "
        f"(no peft, no remote code). Without the image encoder and projection it writes no report from an image.", "",
        _training(run)[1], "", "## Licence", "",
        f"This is {_lm_name(run)} after training: its licence applies.", ""])
