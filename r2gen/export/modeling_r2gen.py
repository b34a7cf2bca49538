"""An r2gen report generator as a plain Hugging Face model: chest X-ray studies in, radiology reports out.

Exported by r2gen (`python -m r2gen.export ckpt=... out=...`) and loaded without it:

    from transformers import AutoModel
    model = AutoModel.from_pretrained("<folder>", trust_remote_code=True)
    model.generate_reports([["frontal.png", "lateral.dcm"], ["other_study.jpg"]])   # -> one report per study

The pipeline is r2gen's own, file for file: images are read by `images.py` (PNG, JPEG, DICOM), resized and
normalised by `transform.py`, encoded and their views fused by `encoder.py` (a timm model), projected into the LM's
embedding space (`lm_proj` + `lm_norm`), placed between the prompt's token ids and padded by `prompt.py`, and
the LM generates (a causal LM after the prompt; an encoder-decoder such as T5 reads it in its encoder); the text
is decoded without special tokens, cleaned and detokenized by `clean.py` (the report as people read it:
`no pneumothorax.`). Those files are copied verbatim from r2gen; this one holds what r2gen's LightningModule does
around them. LoRA adapters were merged into the weights at export, so neither peft nor r2gen is needed.
"""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
)

from .clean import get_cleaner
from .configuration_r2gen import R2GenConfig
from .encoder import ImageEncoder
from .images import load_image, to_rgb
from .prompt import decode_reports, lm_inputs
from .transform import image_transform

# Arguments of `from_pretrained` that also say where the tokenizer files are.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class R2GenModel(PreTrainedModel):
    config_class = R2GenConfig
    base_model_prefix = "r2gen"
    main_input_name = "images"
    _auto_class = "AutoModel"  # save_pretrained copies this code into the folder and writes config.json's auto_map
    # the encoder and projection run in float32 next to a half-precision LM, as they did in r2gen
    _keep_in_fp32_modules_strict = ["encoder", "lm_proj", "lm_norm"]

    def __init__(self, config: R2GenConfig):
        super().__init__(config)
        e = config.encoder
        self.encoder = ImageEncoder(e["name"], False, e["fusion"], image_size=e.get("image_size"), **e.get("kwargs", {}))
        for m in self.encoder.modules():  # timm's non-persistent buffers are stored with the weights: a meta-device
            m._non_persistent_buffers_set.clear()  # load would otherwise leave them uninitialised
        lm_config = AutoConfig.for_model(**config.lm_config)
        kwargs = {"attn_implementation": config.lm_attn_implementation} if config.lm_attn_implementation else {}
        self.encoder_decoder = bool(getattr(lm_config, "is_encoder_decoder", False))
        auto = AutoModelForSeq2SeqLM if self.encoder_decoder else AutoModelForCausalLM
        self.lm_model = auto.from_config(lm_config, **kwargs)
        self.lm_model.generation_config = GenerationConfig.from_dict(config.generate)
        hidden = self.lm_model.config.get_text_config().hidden_size
        self.lm_proj = nn.Linear(self.encoder.num_features, hidden)
        self.lm_norm = nn.LayerNorm(hidden)
        self.transform = image_transform(config.image["size"], config.image["mean"], config.image["std"], augment=False)
        self.clean = get_cleaner(config.clean)
        self.tokenizer = None  # set by from_pretrained (from the folder's tokenizer files)
        self.post_init()

    # --- loading and saving: the tokenizer travels with the weights ------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        # the LM's config picks the tokenizer class, as when r2gen loaded it from the LM's own folder
        model.tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, config=model.lm_model.config, **hub)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    # --- the model -----------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, view_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens in the LM's embedding space [B, T, H] + mask [B, T], from images [B, V, 3, H, W] and the
        view mask [B, V]."""
        tokens, mask = self.encoder(images, view_mask)  # [B, T, C], [B, T]
        x = self.lm_norm(self.lm_proj(tokens))  # [B, T, H]
        return x.to(self.lm_model.get_input_embeddings().weight.dtype), mask

    def preprocess(self, studies) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, V, 3, H, W] (absent views zero) + view mask [B, V] for studies given as lists of image paths
        (PNG, JPEG, DICOM) or PIL images; a study's first `config.num_views` images are used."""
        v = self.config.num_views
        images, masks = [], []
        for study in studies:
            if isinstance(study, (str, os.PathLike, Image.Image)):
                raise TypeError(f"a study is a list of images, got {type(study).__name__}: wrap one image as [image]")
            if not study:
                raise ValueError("a study has no image")
            views = [self.transform(to_rgb(x) if isinstance(x, Image.Image) else load_image(x)) for x in study[:v]]
            x = torch.zeros(v, *views[0].shape)
            x[: len(views)] = torch.stack(views)
            images.append(x)
            masks.append(torch.arange(v) < len(views))
        return torch.stack(images), torch.stack(masks)

    @torch.no_grad()
    def generate_reports(self, studies, batch_size: int | None = None, **generate_kwargs) -> list[str]:
        """One report per study (cleaned, detokenized); a study is a list of image paths or PIL images. `batch_size`
        studies are generated together (default: as r2gen evaluated); `generate_kwargs` (e.g. `num_beams=1`) change
        the stored generation config for this call; `do_sample=True` samples with the LM checkpoint's own sampling
        values (`config.sampling`) unless a kwarg sets one."""
        gen = copy.deepcopy(self.lm_model.generation_config)
        if generate_kwargs:
            if generate_kwargs.get("do_sample") and not gen.do_sample:
                gen.update(**{k: v for k, v in (self.config.sampling or {}).items() if k not in generate_kwargs})
            unknown = gen.update(**generate_kwargs)
            if unknown:
                raise ValueError(f"not generation options: {', '.join(sorted(unknown))}")
            gen.validate(strict=True)
        batch_size = batch_size or self.config.batch_size
        prompt = SimpleNamespace(prefix=self.config.prompt["prefix"], suffix=self.config.prompt["suffix"])
        embed = self.lm_model.get_input_embeddings()
        reports: list[str] = []
        for i in range(0, len(studies), batch_size):
            images, view_mask = self.preprocess(studies[i : i + batch_size])
            img, mask = self(images.to(self.lm_proj.weight.device, self.lm_proj.weight.dtype),
                             view_mask.to(self.lm_proj.weight.device))
            inputs = lm_inputs(embed, prompt, img, mask, encoder_decoder=self.encoder_decoder)
            out = self.lm_model.generate(**inputs, generation_config=gen)
            reports += decode_reports(self.tokenizer, out, self.clean, self.encoder_decoder)
        return reports
