"""The configuration of an exported r2gen report generator (`python -m r2gen.export`): everything that rebuilds the
model without r2gen, the checkpoint or the LM's original folder.

This file is copied into the exported folder and runs there with `trust_remote_code=True`; it imports only
transformers.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# `R2GenModel.generate_reports`' keywords -> the part of a study's context each gives (r2gen's context.* switches)
CONTEXT_KEYWORDS = {"indications": "indication", "comparisons": "comparison", "prior_reports": "prior_report",
                    "prior_studies": "prior_images"}


class R2GenConfig(PretrainedConfig):
    """
    encoder: {"name": timm model, "kwargs": its create_model arguments, "image_size": the side it was built for
        (None: its own), "fusion": "mean" | "concat" (how a study's views become one token sequence)}
    num_views: images per study the encoder reads (the first ones; fewer are masked out)
    image: {"size": side images are resized to, "mean", "std": per-channel normalisation}
    prompt: {"prefix", "suffix"}: the LM token ids before and after the image tokens
    clean: the report cleaning applied to generated text ("iu_xray" | "mimic_cxr" | "whitespace")
    generate: the generation config (`GenerationConfig.to_dict()`): the run's `generate.*` and the LM's stop tokens;
        `generate_reports(**kwargs)` overrides keys
    sampling: the LM checkpoint's own sampling values (temperature, top_p, ...), used when `generate_reports` is asked
        `do_sample=True` and the stored config does not sample (a key passed to it still wins)
    lm_config: the LM's own config (`to_dict()`, with its `model_type`): built with `from_config` (of
        `AutoModelForSeq2SeqLM` where it `is_encoder_decoder`)
    lm_attn_implementation: the attention the run's LM config named (None: transformers' default, e.g. sdpa)
    batch_size: studies per generation batch (the run's `data.eval_batch_size`: batches pad alike)
    context: what of a study's context the LM reads (the run's `context.*`; empty: none): {"parts": the texts it
        reads after the prompt's prefix, in order ("indication", "comparison", "prior_report"), "max_tokens": the
        most tokens of them it reads, "prior_images": whether the prior study's images go before the current
        study's as their own span (with the learned `study_marker`)}
    """

    model_type = "r2gen"
    _auto_class = "AutoConfig"  # save_pretrained copies this file and writes the auto_map entry

    def __init__(self, encoder: dict | None = None, num_views: int = 1, image: dict | None = None,
                 prompt: dict | None = None, clean: str = "whitespace", generate: dict | None = None,
                 sampling: dict | None = None, lm_config: dict | None = None, lm_attn_implementation: str | None = None,
                 batch_size: int = 8, context: dict | None = None, **kwargs):
        self.encoder = encoder or {}
        self.num_views = num_views
        self.image = image or {}
        self.prompt = prompt or {"prefix": [], "suffix": []}
        self.clean = clean
        self.generate = generate or {}
        self.sampling = sampling or {}
        self.lm_config = lm_config or {}
        self.lm_attn_implementation = lm_attn_implementation
        self.batch_size = batch_size
        self.context = context or {}  # a folder exported before context was carried: none
        super().__init__(**kwargs)
