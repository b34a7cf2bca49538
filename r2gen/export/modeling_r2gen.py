"""An r2gen report generator as a plain Hugging Face model: chest X-ray studies in, radiology reports out.

Exported by r2gen (`python -m r2gen.export ckpt=... out=...`) and loaded without it:

    from transformers import AutoModel
    model = AutoModel.from_pretrained("<folder>", trust_remote_code=True)
    model.generate_reports([["frontal.png", "lateral.dcm"], ["other_study.jpg"]])   # -> one report per study

A model trained with r2gen's `context.*` also reads each study's context, given as lists aligned with the studies
(None: that study has none, written "none" as r2gen writes a first study or a missing indication):

    model.generate_reports(studies, indications=["cough", None], prior_studies=[["prior.png"], None],
                           prior_reports=["Small left effusion.", None])

The pipeline is r2gen's own, file for file: images are read by `images.py` (PNG, JPEG, DICOM), resized and
normalised by `transform.py`, encoded and their views fused by `encoder.py` (a timm model), projected into the LM's
embedding space (`lm_proj` + `lm_norm`), placed between the prompt's token ids and padded by `prompt.py` (which also writes a study's context text
and puts a prior study's image tokens before its own), and
the LM generates (a causal LM after the prompt; an encoder-decoder such as T5 reads it in its encoder); the text
is decoded without special tokens, cleaned and detokenized by `clean.py` (the report as people read it:
`no pneumothorax.`). Those files are copied verbatim from r2gen; this one holds what r2gen's LightningModule does
around them. LoRA adapters were merged into the weights at export, so neither peft nor r2gen is needed.
"""

from __future__ import annotations

import copy
import logging
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
from .configuration_r2gen import CONTEXT_KEYWORDS, R2GenConfig
from .encoder import ImageEncoder
from .images import load_image, to_rgb
from .prompt import ContextTokens, context_text, decode_reports, lm_inputs, with_prior
from .transform import image_transform

# Arguments of `from_pretrained` that also say where the tokenizer files are.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")

log = logging.getLogger(__name__)


class R2GenModel(PreTrainedModel):
    config_class = R2GenConfig
    base_model_prefix = "r2gen"
    main_input_name = "images"
    _auto_class = "AutoModel"  # save_pretrained copies this code into the folder and writes config.json's auto_map
    # the encoder and projection run in float32 next to a half-precision LM, as they did in r2gen
    _keep_in_fp32_modules_strict = ["encoder", "lm_proj", "lm_norm", "study_marker"]

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
        context = config.context or {}
        self.context_parts = tuple(context.get("parts", ()))  # the texts the LM reads, in the order r2gen wrote them
        unknown = sorted(set(self.context_parts) - set(CONTEXT_KEYWORDS.values()))
        if unknown:
            raise ValueError(f"config.context.parts has {unknown}, which this code cannot give: export the model "
                             f"again with the r2gen that trained it")
        self.context_max_tokens = int(context.get("max_tokens", 128))
        # context.prior_images: the learned marker r2gen adds to the prior (1) and the current (0) study's tokens
        self.study_marker = nn.Embedding(2, hidden) if context.get("prior_images") else None
        self._warned_no_context = False
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

    def visual_tokens(self, images: torch.Tensor, view_mask: torch.Tensor, priors=None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tokens the LM reads [B, T', H] + mask, from `preprocess`'s images and view mask: the study's
        (`forward`); with `config.context["prior_images"]`, its prior study's through the same encoder and
        projection before them, each span plus its study marker, the prior span of a study without one masked out
        (as r2gen's R2GenModule.visual_tokens). `priors`: one prior study (a list of images) or None per study."""
        device, dtype = self.lm_proj.weight.device, self.lm_proj.weight.dtype
        img, mask = self(images.to(device, dtype), view_mask.to(device))
        if self.study_marker is None:
            return img, mask
        prior_images, prior_views = torch.zeros_like(images), torch.zeros_like(view_mask)  # none: all masked
        given = [i for i, p in enumerate(priors or [None] * len(images)) if p is not None]
        if given:
            prior_images[given], prior_views[given] = self.preprocess([priors[i] for i in given])
        prior, prior_mask = self(prior_images.to(device, dtype), prior_views.to(device))
        return with_prior(img, mask, prior, prior_mask, prior_views.to(device), self.study_marker.weight)

    def context_tokens(self, context: dict[str, list], n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The context text's ids [B, C] and lengths [B] of a batch of `n` studies (None for a model that reads no
        text), from `context` (keyword -> one entry per study, as `check_context` gives it): written as r2gen
        writes it (`prompt.context_text`, cleaned with the run's cleaner), cut to `config.context["max_tokens"]`
        tokens."""
        if not self.context_parts:
            return None
        part_of = {part: kw for kw, part in CONTEXT_KEYWORDS.items()}
        texts = [context_text(self.context_parts, {p: context[part_of[p]][i] for p in self.context_parts}, self.clean)
                 for i in range(n)]
        t = ContextTokens(self.tokenizer, self.context_max_tokens).tensors(texts)
        return t["context_ids"], t["context_lengths"]

    @property
    def context_keywords(self) -> tuple[str, ...]:
        """The `generate_reports` keywords for the context this model reads (r2gen's context.* at training)."""
        reads = {*self.context_parts, *(["prior_images"] if self.study_marker is not None else [])}
        return tuple(kw for kw, part in CONTEXT_KEYWORDS.items() if part in reads)

    def check_context(self, studies, given: dict[str, list | None]) -> dict[str, list]:
        """`generate_reports`' context keywords (`given`: keyword -> a list or None) checked against what the model
        reads and the studies, as keyword -> one entry per study for each keyword it reads (None: that study has
        none; a keyword not given: no study has it)."""
        reads = self.context_keywords
        for kw, value in given.items():
            if value is None:
                continue
            if kw not in reads:
                raise ValueError(f"{kw}= was given, but this model does not read a study's {CONTEXT_KEYWORDS[kw]}: "
                                 f"it reads {', '.join(f'{k}=' for k in reads) if reads else 'no context'} (the "
                                 f"context it was trained with, config.context); leave {kw} out")
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise TypeError(f"{kw} is a {type(value).__name__}: give a list, one entry per study (None for a "
                                f"study without one)")
            if len(value) != len(studies):
                raise ValueError(f"{kw} has {len(value)} entries for {len(studies)} studies: give one per study, "
                                 f"None for a study without one")
            for i, x in enumerate(value):
                if x is None:
                    continue
                if kw == "prior_studies" and isinstance(x, (str, os.PathLike, Image.Image)):
                    raise TypeError(f"prior_studies[{i}] is a {type(x).__name__}: a prior study is a list of images "
                                    f"(wrap one image as [image]), or None for a study without a prior")
                if kw == "prior_studies" and not x:
                    raise ValueError(f"prior_studies[{i}] has no image: give None for a study without a prior")
                if kw != "prior_studies" and not isinstance(x, str):
                    raise TypeError(f"{kw}[{i}] is a {type(x).__name__}: give the text, or None for a study "
                                    f"without one")
        if reads and all(given.get(kw) is None for kw in reads) and not self._warned_no_context:
            self._warned_no_context = True
            log.warning("this model reads each study's %s (trained with r2gen's context.*), and generate_reports "
                        "was given none of them: every study is read as having none (as r2gen reads a study without "
                        "an indication, or a first study); pass %s (None for a study without one)",
                        ", ".join(CONTEXT_KEYWORDS[kw] for kw in reads), ", ".join(f"{kw}=" for kw in reads))
        return {kw: list(given[kw]) if given.get(kw) is not None else [None] * len(studies) for kw in reads}

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
    def generate_reports(self, studies, batch_size: int | None = None, *, indications=None, comparisons=None,
                         prior_studies=None, prior_reports=None, **generate_kwargs) -> list[str]:
        """One report per study (cleaned, detokenized); a study is a list of image paths or PIL images. `batch_size`
        studies are generated together (default: as r2gen evaluated); `generate_kwargs` (e.g. `num_beams=1`) change
        the stored generation config for this call; `do_sample=True` samples with the LM checkpoint's own sampling
        values (`config.sampling`) unless a kwarg sets one.

        A model trained with context (`context_keywords` says which) reads each study's: `indications`,
        `comparisons`, `prior_reports` (texts, cleaned as r2gen cleaned them) and `prior_studies` (the prior study's
        images, like a study), each a list with one entry per study, None where a study has none (written "none",
        its prior span masked out: a first study). A keyword left out: no study has it. A keyword the model does not
        read, or a list of another length than `studies`, is a ValueError."""
        context = self.check_context(studies, {"indications": indications, "comparisons": comparisons,
                                               "prior_studies": prior_studies, "prior_reports": prior_reports})
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
            batch = {kw: v[i : i + batch_size] for kw, v in context.items()}
            img, mask = self.visual_tokens(images, view_mask, batch.get("prior_studies"))
            inputs = lm_inputs(embed, prompt, img, mask, encoder_decoder=self.encoder_decoder,
                               context=self.context_tokens(batch, len(images)))
            out = self.lm_model.generate(**inputs, generation_config=gen)
            reports += decode_reports(self.tokenizer, out, self.clean, self.encoder_decoder)
        return reports
