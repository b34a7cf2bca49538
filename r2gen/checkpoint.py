"""Read an r2gen checkpoint and rebuild its model: the resolved config inside rebuilds every frozen part,
the stored weights fill in what trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from r2gen.models.module import CKPT_FORMAT, R2GenModule


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    if path in (None, "", "???"):
        raise ValueError("ckpt is not set: pass ckpt=<run>/checkpoints/best.ckpt")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"ckpt={path}: no such file (train.py writes <run>/checkpoints/best.ckpt and last.ckpt)")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated file, a text file, a foreign pickle
        raise ValueError(f"ckpt={path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or "r2gen" not in ck or "cfg" not in ck.get("hyper_parameters", {}):
        raise ValueError(f"ckpt={path}: not an r2gen checkpoint (no r2gen config inside); pass a .ckpt written by train.py")
    if ck["r2gen"].get("format", 0) > CKPT_FORMAT:
        raise ValueError(f"ckpt={path}: written by a newer r2gen (format {ck['r2gen']['format']}); upgrade r2gen")
    return ck


def load_weights(model: R2GenModule, ck: dict[str, Any]) -> None:
    """Load the stored weights; everything the config trains must be there, and nothing foreign."""
    model.on_load_checkpoint(ck)
    result = model.load_state_dict(ck["state_dict"], strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint has {len(result.unexpected_keys)} weights this model lacks "
                           f"(e.g. {result.unexpected_keys[:3]}): was it trained with another encoder or lm?")
