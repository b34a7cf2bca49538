"""The image encoder: any timm model, used through timm's own API, turned into a token sequence per study.

Views are encoded one image at a time (all views of the batch in one forward), then fused:
`mean` averages the views' tokens (R2GenGPT), `concat` keeps every view's tokens side by side.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

FUSIONS = ("mean", "concat")


def create_timm_model(name: str, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """`timm.create_model(name, num_classes=0)`; `pretrained` is False, True (timm's hub weights) or a local file."""
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:8]
        raise ValueError(f"encoder.name={name!r} is not a timm model; close matches: {close or 'none'}")
    if isinstance(pretrained, str) and pretrained not in ("", "false", "False"):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"encoder.pretrained={pretrained!r}: no such weights file")
        return timm.create_model(name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    return timm.create_model(name, pretrained=bool(pretrained), num_classes=0, **kwargs)


class ImageEncoder(nn.Module):
    """[B, V, 3, H, W] images + [B, V] view mask -> [B, T, C] tokens + [B, T] token mask."""

    def __init__(self, name: str, pretrained: bool | str = False, fusion: str = "mean",
                 gradient_checkpointing: bool = False, **timm_kwargs):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"data.view_fusion={fusion!r}: choose one of {', '.join(FUSIONS)}")
        if not isinstance(gradient_checkpointing, bool):
            raise ValueError(f"encoder.gradient_checkpointing={gradient_checkpointing!r}: choose true or false")
        self.model = create_timm_model(name, pretrained, **timm_kwargs)
        if gradient_checkpointing:  # recompute block activations in backward (timm's own switch)
            try:
                self.model.set_grad_checkpointing(True)
            except (AssertionError, NotImplementedError) as e:
                raise ValueError(f"encoder.gradient_checkpointing=true: timm's {name} does not support it ({e}); "
                                 "set it to false") from None
        self.fusion = fusion
        self.num_features = self.model.num_features

    def data_config(self) -> dict:
        """Input size, mean and std the model expects (timm's resolved data config)."""
        return timm.data.resolve_model_data_config(self.model)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, L, C] token features."""
        f = self.model.forward_features(x)
        if f.ndim == 3:  # ViT-like: already [N, L, C]
            return f
        if f.ndim != 4:
            raise ValueError(f"encoder forward_features gave shape {tuple(f.shape)}; expected 3 or 4 dims")
        fmt = getattr(self.model, "output_fmt", None)
        fmt = str(getattr(fmt, "value", fmt) or "")
        if fmt == "NHWC" or (fmt != "NCHW" and f.shape[-1] == self.num_features and f.shape[1] != self.num_features):
            return f.flatten(1, 2)  # Swin: [N, H, W, C] -> [N, H*W, C]
        return f.flatten(2).transpose(1, 2)  # CNN: [N, C, H, W] -> [N, H*W, C]

    def forward(self, images: torch.Tensor, view_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, v = images.shape[:2]
        tok = self.tokens(images.flatten(0, 1))  # [B*V, L, C]
        return self.fuse(tok.unflatten(0, (b, v)), view_mask)

    def fuse(self, tok: torch.Tensor, view_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, V, L, C] per-view tokens (from `tokens`, or a feature cache) -> [B, T, C] tokens + [B, T] mask."""
        b, v = tok.shape[:2]
        m = view_mask.to(tok.dtype)[:, :, None, None]  # [B, V, 1, 1]
        if self.fusion == "mean":
            fused = (tok * m).sum(1) / m.sum(1).clamp_min(1)  # [B, L, C]
            return fused, torch.ones(fused.shape[:2], dtype=torch.bool, device=fused.device)
        # concat: [B, V*L, C]; tokens of absent views are masked out
        tok_mask = view_mask[:, :, None].expand(b, v, tok.shape[2]).flatten(1)
        return tok.flatten(1, 2), tok_mask.bool()
