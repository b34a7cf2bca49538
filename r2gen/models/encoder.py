"""The image encoder: any timm model, used through timm's own API, turned into a token sequence per study.

Views are encoded one image at a time (all views of the batch in one forward), then fused:
`mean` averages the views' tokens (R2GenGPT), `concat` keeps every view's tokens side by side.

Standalone: this file is copied verbatim into every exported model folder (r2gen.export.exporter.EXPORTED), which
runs without r2gen, so it imports only the standard library, torch, torchvision, timm, transformers, numpy, Pillow,
pydicom and the other exported files (relatively), and r2gen (its error types, another exported file) only inside
`try: ... except ImportError:` with a fallback; tests/test_export.py::test_the_exported_files_are_standalone keeps
it so.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

try:
    from r2gen.errors import ConfigError, MissingFileError
except ImportError:  # standalone (see above)
    ConfigError, MissingFileError = ValueError, FileNotFoundError

FUSIONS = ("mean", "concat")


def create_timm_model(name: str, pretrained: bool | str = False, image_size: int | None = None,
                      **kwargs) -> nn.Module:
    """`timm.create_model(name, num_classes=0)`; `pretrained` is False, True (timm's hub weights) or a local file.

    `image_size` is the side of the square images the model will see (`data.image_size`; None: the model's own). A
    model built for one input size (timm's `fixed_input_size`: ViT, Swin, ...) is built for this one instead
    (`img_size=`; timm resizes the position embeddings / attention windows of pretrained weights), and any model
    fed another size than its own runs one tiny forward now, so a size it cannot take fails here, naming the fix.
    """
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:8]
        raise ConfigError(f"encoder.name={name!r} is not a timm model; close matches: {close or 'none'}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"data.image_size={image_size!r}: give a side in pixels (e.g. 224), or null for the "
                          f"encoder's own input size")
    native, fixed = native_input_size(name, kwargs)
    resize = image_size is not None and image_size != native
    sized = resize and fixed and "img_size" not in kwargs  # else: a CNN takes any size; the user's img_size wins
    fix = (f"set data.image_size={native} or data.image_size=null (the encoder's own size), or pick an encoder "
           f"that takes {image_size} px")
    try:
        model = _create(name, pretrained, **({**kwargs, "img_size": image_size} if sized else kwargs))
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        if not sized:
            raise
        raise ConfigError(f"encoder.name={name} cannot be built for data.image_size={image_size}: it takes "
                          f"{native}x{native} images ({type(e).__name__}: {str(e).splitlines()[0]}); {fix}") from None
    if resize:
        was_training = model.training
        model.eval()  # eval: BatchNorm on one image; no dropout, so no random numbers drawn
        try:
            with torch.no_grad():
                model.forward_features(torch.zeros(1, 3, image_size, image_size))
        except Exception as e:  # noqa: BLE001 - timm models fail a wrong size with RuntimeError, AssertionError, ...
            raise ConfigError(f"encoder.name={name} cannot take data.image_size={image_size} images (its own size is "
                              f"{native}x{native}; {type(e).__name__}: {str(e).splitlines()[0]}); {fix}") from None
        finally:
            model.train(was_training)
    return model


def _create(name: str, pretrained: bool | str, **kwargs) -> nn.Module:
    if isinstance(pretrained, str) and pretrained not in ("", "false", "False"):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise MissingFileError(f"encoder.pretrained={pretrained!r}: no such weights file")
        return timm.create_model(name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    return timm.create_model(name, pretrained=bool(pretrained), num_classes=0, **kwargs)


def native_input_size(name: str, kwargs: dict) -> tuple[int | None, bool]:
    """(side of the input the model is built for, whether it only takes that size), from timm's pretrained config
    (no model is built); an `img_size` in `encoder.kwargs` is the model's size. (None, False) when timm has none."""
    cfg = timm.models.get_pretrained_cfg(name)
    fixed = bool(cfg and cfg.fixed_input_size)
    size = kwargs.get("img_size") or (cfg.input_size[-1] if cfg and cfg.input_size else None)
    if isinstance(size, (list, tuple)):  # img_size=[H, W]
        size = size[-1] if len(set(size)) == 1 else None
    return size, fixed


class ImageEncoder(nn.Module):
    """[B, V, 3, H, W] images + [B, V] view mask -> [B, T, C] tokens + [B, T] token mask."""

    def __init__(self, name: str, pretrained: bool | str = False, fusion: str = "mean",
                 gradient_checkpointing: bool = False, image_size: int | None = None, **timm_kwargs):
        """`image_size`: the side of the images it will see (`data.image_size`); None: the model's own."""
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"data.view_fusion={fusion!r}: choose one of {', '.join(FUSIONS)}")
        if not isinstance(gradient_checkpointing, bool):
            raise ConfigError(f"encoder.gradient_checkpointing={gradient_checkpointing!r}: choose true or false")
        self.model = create_timm_model(name, pretrained, image_size, **timm_kwargs)
        self.image_size = image_size
        if gradient_checkpointing:  # recompute block activations in backward (timm's own switch)
            try:
                self.model.set_grad_checkpointing(True)
            except (AssertionError, NotImplementedError) as e:
                raise ConfigError(f"encoder.gradient_checkpointing=true: timm's {name} does not support it ({e}); "
                                  "set it to false") from None
        self.fusion = fusion
        self.num_features = self.model.num_features

    def data_config(self) -> dict:
        """Input size, mean and std the model expects (timm's resolved data config); the input size is
        `image_size` when one was given (the model was built for it and checked with it)."""
        dc = timm.data.resolve_model_data_config(self.model)
        if self.image_size is not None:
            dc["input_size"] = (dc["input_size"][0], self.image_size, self.image_size)
        return dc

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
