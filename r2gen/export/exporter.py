"""`export(cfg)`: a trained checkpoint as a new folder, written to a temporary sibling and renamed into place, so
`out` (absent or an empty folder) is complete or absent; the checkpoint is only read.

`part=all` writes the Hugging Face folder through the exported classes (`write_model`): `config.json`
(`model_type: r2gen`, an `auto_map` to the code in the folder, the run's `context.*`), the code (`EXPORTED`),
`model.safetensors` (encoder, projection, norm, the study marker of `context.prior_images`, and LM, any LoRA merged)
and the tokenizer. A model trained with context reads each study's from `generate_reports`' keywords
(modeling_r2gen.py), as r2gen's data sets give it. `part=lm` writes the LM alone, LoRA merged,
as a plain folder of its own architecture (`AutoModelForCausalLM`, or for a T5-style LM `AutoModelForSeq2SeqLM`, loads
it without peft or remote code), with its tokenizer. Either gets a model card (r2gen.export.model_card).

Quantized LMs (`quant=4bit|8bit`) are refused: the export holds full-precision weights, which the run never used;
`quant=none` on the command line merges the adapters into the LM's full-precision weights instead (its reports
may then differ slightly from predict.py's on the quantized model).
"""

from __future__ import annotations

import errno
import importlib
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

from r2gen.build import cli_overrides, datamodule, load_model, rebuild
from r2gen.data.context import Context
from r2gen.errors import ConfigError, StorageError, UnsafeWriteError, UserError
from r2gen.export.configuration_r2gen import CONTEXT_KEYWORDS
from r2gen.export.model_card import lm_card, model_card
from r2gen.models.lm import checkpoint_generation

PARTS = ("all", "lm")
HERE = Path(__file__).resolve().parent
R2GEN = HERE.parent
# The exported folder's code: file name -> source, copied verbatim. The folder runs without r2gen, so the r2gen
# modules among them are standalone, as the "Standalone" paragraph of their docstrings says.
EXPORTED = {
    "configuration_r2gen.py": HERE / "configuration_r2gen.py",
    "modeling_r2gen.py": HERE / "modeling_r2gen.py",
    "images.py": R2GEN / "data" / "images.py",
    "transform.py": R2GEN / "data" / "transform.py",
    "clean.py": R2GEN / "data" / "clean.py",
    "encoder.py": R2GEN / "models" / "encoder.py",
    "prompt.py": R2GEN / "models" / "prompt.py",
}
CARRIED = tuple(CONTEXT_KEYWORDS.values())  # the context.* switches the exported generate_reports takes


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
    context = Context.from_config(run.get("context"))
    uncarried = [k for k in context.switched_on if k not in CARRIED]
    if cfg.part == "all" and uncarried:
        raise ConfigError(f"context.{'/'.join(uncarried)}=true: the run's model reads this part of each study's "
                          f"context, which the exported folder's generate_reports does not take yet (it takes "
                          f"{', '.join(CARRIED)}); export part=lm, or use the checkpoint with evaluate.py")
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
            (tmp / "README.md").write_text(lm_card(run, Path(str(cfg.ckpt)), model.encoder_decoder))
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


# --- the model as the exported classes --------------------------------------------------------------------------------
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
    dm = datamodule(run, model)  # the image size and normalisation predict.py uses
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
        "context": {"parts": list(model.context.parts), "max_tokens": int(model.context.max_tokens),
                    "prior_images": bool(model.context.prior_images)},
    }


def write_model(model, lm, run: DictConfig, folder: Path) -> None:
    """config.json, the code, model.safetensors and the tokenizer, through the exported classes' own
    `save_pretrained` (which also copies the code files and writes the `auto_map`)."""
    for m in model.encoder.modules():  # saved with the weights, as the exported encoder keeps them (modeling_r2gen)
        m._non_persistent_buffers_set.clear()
    parts = {"encoder": model.encoder, "lm_proj": model.lm_proj, "lm_norm": model.lm_norm, "lm_model": lm}
    if model.study_marker is not None:  # context.prior_images
        parts["study_marker"] = model.study_marker
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
